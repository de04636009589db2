"""The real reward models on tiny random weights, saved in each checkpoint's real on-disk format and
loaded through the same code path as the hub files (a local path in place of the hub id).

Where weights are renamed from a foreign layout (open_clip for HPSv2, BLIP for ImageReward), the
reward is compared with an independent reference forward written here from that layout with
torch.nn.functional (the attention is torch's multi_head_attention_forward, which open_clip's
nn.MultiheadAttention runs).
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noisealign.errors import NoiseAlignError
from noisealign.rewards import imagereward as imagereward_module
from noisealign.rewards.clip_common import CLIP_MEAN, CLIP_STD, model_pixels
from noisealign.rewards.registry import REWARDS, parse_reward

transformers = pytest.importorskip("transformers")

PROMPTS = ["the cat sat", "a red dog"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------- tiny checkpoints in their real formats

def save_clip_tokenizer(folder):
    """A byte-level BPE vocabulary of letters, like CLIP's in miniature (end-of-text is the largest id)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(LETTERS) + [c + "</w>" for c in LETTERS] + ["th", "the</w>", "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_tiny_clip(folder, tokenizer, seed):
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(folder)
    return model


def aesthetic_head_state(features, seed):
    """The head as improved-aesthetic-predictor defines it (Dropouts included), state dict only."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(features, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
    return OrderedDict(("layers." + k, v) for k, v in mlp.state_dict().items())


def open_clip_state(width=32, text_width=32, layers=2, patch=8, grid=4, context=16, vocab=56, embed=16):
    """Random weights in open_clip's CLIP key layout (OpenAI names), as HPSv2 checkpoints store them."""
    torch.manual_seed(3)
    r = lambda *shape: torch.randn(*shape) * 0.2  # noqa: E731
    state = {"visual.class_embedding": r(width), "visual.conv1.weight": r(width, 3, patch, patch),
             "visual.positional_embedding": r(grid * grid + 1, width), "visual.proj": r(width, embed),
             "token_embedding.weight": r(vocab, text_width), "positional_embedding": r(context, text_width),
             "text_projection": r(text_width, embed), "logit_scale": torch.tensor(4.6)}
    for name, w in (("visual.ln_pre", width), ("visual.ln_post", width), ("ln_final", text_width)):
        state.update({f"{name}.weight": 1 + r(w), f"{name}.bias": r(w)})
    for tower, w in (("visual.", width), ("", text_width)):
        for i in range(layers):
            p = f"{tower}transformer.resblocks.{i}."
            state.update({p + "ln_1.weight": 1 + r(w), p + "ln_1.bias": r(w), p + "ln_2.weight": 1 + r(w),
                          p + "ln_2.bias": r(w), p + "attn.in_proj_weight": r(3 * w, w),
                          p + "attn.in_proj_bias": r(3 * w),
                          p + "attn.out_proj.weight": r(w, w), p + "attn.out_proj.bias": r(w),
                          p + "mlp.c_fc.weight": r(4 * w, w), p + "mlp.c_fc.bias": r(4 * w),
                          p + "mlp.c_proj.weight": r(w, 4 * w), p + "mlp.c_proj.bias": r(w)})
    return state


MED = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=40, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0,
           add_cross_attention=True, encoder_width=32, model_type="bert")


def imagereward_state(width=32, layers=2, patch=8, grid=4):
    """Random weights in ImageReward.pt's layout: BLIP ViT (timm names), BLIP med BERT, head under mlp."""
    torch.manual_seed(4)
    r = lambda *shape: torch.randn(*shape) * 0.2  # noqa: E731
    h, i_size = MED["hidden_size"], MED["intermediate_size"]
    vit = {"cls_token": r(1, 1, width), "pos_embed": r(1, grid * grid + 1, width),
           "patch_embed.proj.weight": r(width, 3, patch, patch), "patch_embed.proj.bias": r(width),
           "norm.weight": 1 + r(width), "norm.bias": r(width)}
    for i in range(layers):
        shapes = {"norm1": (width,), "norm2": (width,), "attn.qkv": (3 * width, width), "attn.proj": (width, width),
                  "mlp.fc1": (4 * width, width), "mlp.fc2": (width, 4 * width)}
        for name, shape in shapes.items():
            vit[f"blocks.{i}.{name}.weight"] = (1 + r(*shape)) if name.startswith("norm") else r(*shape)
            vit[f"blocks.{i}.{name}.bias"] = r(shape[0])
    bert = {"embeddings.word_embeddings.weight": r(MED["vocab_size"], h),
            "embeddings.position_embeddings.weight": r(MED["max_position_embeddings"], h),
            "embeddings.LayerNorm.weight": 1 + r(h), "embeddings.LayerNorm.bias": r(h),
            "embeddings.position_ids": torch.arange(MED["max_position_embeddings"]).unsqueeze(0)}
    for i in range(MED["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        shapes = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
                  "attention.output.dense": (h, h), "crossattention.self.query": (h, h),
                  "crossattention.self.key": (h, width), "crossattention.self.value": (h, width),
                  "crossattention.output.dense": (h, h), "intermediate.dense": (i_size, h),
                  "output.dense": (h, i_size)}
        for name, shape in shapes.items():
            bert.update({p + name + ".weight": r(*shape), p + name + ".bias": r(shape[0])})
        for name in ("attention.output.LayerNorm", "crossattention.output.LayerNorm", "output.LayerNorm"):
            bert.update({p + name + ".weight": 1 + r(h), p + name + ".bias": r(h)})
    state = {**{"blip.visual_encoder." + k: v for k, v in vit.items()},
             **{"blip.text_encoder." + k: v for k, v in bert.items()},
             "blip.vision_proj.weight": r(8, width), "blip.vision_proj.bias": r(8),  # unused by the reward
             **{"mlp." + k: v for k, v in aesthetic_head_state(h, seed=5).items()}}
    return state


def save_bert_tokenizer(folder):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, "the", "cat", "sat", "red", "dog"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One folder per reward, each laid out as its argument expects."""
    root = tmp_path_factory.mktemp("rewards")
    folders = {name: root / name for name in REWARD_NAMES}
    tokenizer = save_clip_tokenizer(folders["clipscore"])
    save_tiny_clip(folders["clipscore"], tokenizer, seed=0)
    save_clip_tokenizer(folders["pickscore"])
    save_tiny_clip(folders["pickscore"], tokenizer, seed=1)
    save_tiny_clip(folders["aesthetic"], tokenizer, seed=2)
    torch.save(aesthetic_head_state(16, seed=6), folders["aesthetic"] / "aesthetic-model.pth")
    save_clip_tokenizer(folders["hpsv2"])
    torch.save({"state_dict": open_clip_state(vocab=len(tokenizer))}, folders["hpsv2"] / "HPS_v2.1_compressed.pt")
    folders["imagereward"].mkdir()
    save_bert_tokenizer(folders["imagereward"])
    (folders["imagereward"] / "med_config.json").write_text(json.dumps(MED))
    torch.save(imagereward_state(), folders["imagereward"] / "ImageReward.pt")
    return folders


REWARD_NAMES = ["aesthetic", "pickscore", "hpsv2", "imagereward", "clipscore"]


def images(batch=2, height=40, width=48, seed=7):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the contract, for every reward

@pytest.mark.parametrize("name", REWARD_NAMES)
def test_batch_equals_single_float32_and_gradient_reaches_the_image(checkpoints, name):
    reward = REWARDS[name](str(checkpoints[name]))
    x = images().requires_grad_(True)
    batch = reward(x, PROMPTS)
    assert batch.dtype == torch.float32 and batch.shape == (2,)
    assert reward.name == name and reward.differentiable
    singles = torch.cat([reward(x[i:i + 1], PROMPTS[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-5)
    batch.sum().backward()
    assert torch.isfinite(x.grad).all()
    reached = x.grad.flatten(1).abs().sum(dim=1) > 0
    assert reached.tolist() == (batch != 0).tolist()  # zero only on CLIPScore's floor, see the test below


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_single_channel_images_score_as_their_gray_rgb(checkpoints, name):
    reward = REWARDS[name](str(checkpoints[name]))
    gray = images()[:, :1]
    torch.testing.assert_close(reward(gray, PROMPTS), reward(gray.repeat(1, 3, 1, 1), PROMPTS))


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_missing_weights_offline_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NoiseAlignError) as caught:
        parse_reward(name)
    message = str(caught.value)
    hub_ids = {"aesthetic": "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
               "pickscore": "yuvalkirstain/PickScore_v1", "hpsv2": "xswu/HPSv2/HPS_v2.1_compressed.pt",
               "imagereward": "THUDM/ImageReward/ImageReward.pt", "clipscore": "openai/clip-vit-large-patch14"}
    assert "\n" not in message and hub_ids[name] in message
    assert str(tmp_path) in message and "hf download" in message and f"{name}:/path" in message


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_a_path_that_does_not_exist_is_named(tmp_path, name):
    with pytest.raises(NoiseAlignError, match="no file or folder"):
        REWARDS[name](str(tmp_path / "absent"))


def test_bad_images_and_prompt_counts_are_refused(checkpoints):
    reward = REWARDS["pickscore"](str(checkpoints["pickscore"]))
    with pytest.raises(NoiseAlignError, match="images shaped"):
        reward(torch.rand(2, 4, 32, 32), PROMPTS)
    with pytest.raises(NoiseAlignError, match="one prompt per image"):
        reward(images(), PROMPTS[:1])


def test_scores_first_taken_in_inference_mode_still_give_gradients(checkpoints):
    """Demon scores under inference mode, DNO differentiates later in the same process."""
    reward = REWARDS["hpsv2"](str(checkpoints["hpsv2"]))
    with torch.inference_mode():
        reward(images(), ["an ox", "an ox"])
    x = images().requires_grad_(True)
    reward(x, ["an ox", "an ox"]).sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", REWARD_NAMES)
def test_rewards_follow_the_images_device(checkpoints, name):
    """The cached model moves to the images' device; a move made under inference mode (Demon) must still
    leave weights that a later differentiable call (DNO) can use."""
    reward = REWARDS[name](str(checkpoints[name]))
    on_cpu = reward(images(), PROMPTS)
    with torch.inference_mode():
        reward(images().cuda(), PROMPTS)
    x = images().cuda().requires_grad_(True)
    score = reward(x, PROMPTS)
    assert score.device.type == "cuda" and score.dtype == torch.float32
    torch.testing.assert_close(score.cpu(), on_cpu, rtol=1e-3, atol=1e-3)  # cuDNN convolutions may use TF32
    score.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(reward(images(), PROMPTS), on_cpu)


# ---------------------------------------------------------------- values against independent references

def test_transform_matches_transformers_clip_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(0)
    smooth = F.interpolate(torch.rand(1, 3, 6, 7), size=(60, 72), mode="bilinear", align_corners=False)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pil = (smooth[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    expected = torch.as_tensor(processor(images=pil, return_tensors="np")["pixel_values"])
    ours = model_pixels(torch.as_tensor(pil).permute(2, 0, 1)[None].float() / 255, 32)
    assert ours.shape == (1, 3, 32, 32)
    assert (ours - expected).abs().mean() < 0.02  # PIL's and torch's bicubic kernels differ slightly
    constant = model_pixels(torch.full((1, 3, 40, 48), 0.5), 32)
    torch.testing.assert_close(constant[0, :, 0, 0], (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))


def _projected(features):
    """transformers 4 returns the projected embedding, transformers 5 an output holding it as pooler_output."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def _clip_reference(folder):
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokens = tokenizer(PROMPTS, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        image = F.normalize(_projected(model.get_image_features(pixel_values=model_pixels(images(), 32))), dim=-1)
        text = F.normalize(_projected(model.get_text_features(**tokens)), dim=-1)
    return model, (image * text).sum(-1)


def test_pickscore_and_clipscore_values(checkpoints):
    model, cosine = _clip_reference(checkpoints["pickscore"])
    torch.testing.assert_close(REWARDS["pickscore"](str(checkpoints["pickscore"]))(images(), PROMPTS),
                               model.logit_scale.exp().detach() * cosine)
    _, cosine = _clip_reference(checkpoints["clipscore"])
    torch.testing.assert_close(REWARDS["clipscore"](str(checkpoints["clipscore"]))(images(), PROMPTS),
                               2.5 * cosine.clamp(min=0))


def test_clipscore_floor_zero_value_and_gradient_below_it(checkpoints, tmp_path):
    """The tiny CLIP's cosines are negative; negating its text projection gives a CLIP with cos' = -cos."""
    folder = checkpoints["clipscore"]
    _, cosine = _clip_reference(folder)
    assert (cosine < 0).all()
    model = transformers.CLIPModel.from_pretrained(folder)
    with torch.no_grad():
        model.text_projection.weight.neg_()
    model.save_pretrained(tmp_path)
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path)
    for source, expected in ((folder, torch.zeros(2)), (tmp_path, -2.5 * cosine)):
        x = images().requires_grad_(True)
        score = REWARDS["clipscore"](str(source))(x, PROMPTS)
        torch.testing.assert_close(score, expected)
        score.sum().backward()
        assert (x.grad.flatten(1).abs().sum(dim=1) > 0).tolist() == (expected > 0).tolist()


def test_aesthetic_value(checkpoints):
    folder = checkpoints["aesthetic"]
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    head = torch.load(folder / "aesthetic-model.pth")
    with torch.no_grad():
        x = F.normalize(_projected(model.get_image_features(pixel_values=model_pixels(images(), 32))), dim=-1)
        for i in (0, 2, 4, 6, 7):
            x = F.linear(x, head[f"layers.{i}.weight"], head[f"layers.{i}.bias"])
    torch.testing.assert_close(REWARDS["aesthetic"](str(folder / "aesthetic-model.pth"))(images(), PROMPTS), x[:, 0])


def _ln(x, state, name, eps):
    return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], eps)


def _attention(query, memory, heads, in_weights, in_bias, out_weight, out_bias, mask=None, padding=None):
    """torch's multi-head attention on (B, L, W) inputs; in_weights is one fused (3W, W) or three matrices."""
    fused = isinstance(in_weights, torch.Tensor)
    out, _ = F.multi_head_attention_forward(
        query.transpose(0, 1), memory.transpose(0, 1), memory.transpose(0, 1), query.shape[-1], heads,
        in_weights if fused else None, in_bias, None, None, False, 0.0, out_weight, out_bias, training=False,
        key_padding_mask=padding, need_weights=False, attn_mask=mask, use_separate_proj_weight=not fused,
        q_proj_weight=None if fused else in_weights[0], k_proj_weight=None if fused else in_weights[1],
        v_proj_weight=None if fused else in_weights[2])
    return out.transpose(0, 1)


def _prenorm_blocks(x, state, prefix, names, heads, eps, mask=None):
    """Pre-LayerNorm residual blocks (open_clip ResidualAttentionBlock, timm/BLIP Block)."""
    ln1, ln2, qkv_weight, qkv_bias, proj, fc1, fc2 = names
    i = 0
    while f"{prefix}{i}.{ln1}.weight" in state:
        p = f"{prefix}{i}."
        h = _ln(x, state, p + ln1, eps)
        x = x + _attention(h, h, heads, state[p + qkv_weight], state[p + qkv_bias], state[p + proj + ".weight"],
                           state[p + proj + ".bias"], mask=mask)
        h = F.gelu(F.linear(_ln(x, state, p + ln2, eps), state[p + fc1 + ".weight"], state[p + fc1 + ".bias"]))
        x = x + F.linear(h, state[p + fc2 + ".weight"], state[p + fc2 + ".bias"])
        i += 1
    return x


def _vit_tokens(pixels, cls, pos, conv_weight, conv_bias=None):
    """[class token; patch embeddings] + positions."""
    patches = F.conv2d(pixels, conv_weight, conv_bias, stride=conv_weight.shape[-1]).flatten(2).transpose(1, 2)
    tokens = torch.cat([cls.reshape(1, 1, -1).expand(len(pixels), 1, -1), patches], dim=1)
    return tokens + pos.reshape(1, tokens.shape[1], -1)


OPEN_CLIP_BLOCK = ("ln_1", "ln_2", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj", "mlp.c_fc",
                   "mlp.c_proj")
BLIP_VIT_BLOCK = ("norm1", "norm2", "attn.qkv.weight", "attn.qkv.bias", "attn.proj", "mlp.fc1", "mlp.fc2")


def test_hpsv2_equals_an_open_clip_forward(checkpoints):
    folder = checkpoints["hpsv2"]
    state = torch.load(folder / "HPS_v2.1_compressed.pt")["state_dict"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        x = _vit_tokens(model_pixels(images(), 32), state["visual.class_embedding"],
                        state["visual.positional_embedding"], state["visual.conv1.weight"])
        x = _prenorm_blocks(_ln(x, state, "visual.ln_pre", 1e-5), state, "visual.transformer.resblocks.",
                            OPEN_CLIP_BLOCK, 16, 1e-5)
        image = _ln(x[:, 0], state, "visual.ln_post", 1e-5) @ state["visual.proj"]
        causal = torch.full((16, 16), float("-inf")).triu(1)
        t = state["token_embedding.weight"][ids] + state["positional_embedding"]
        t = _ln(_prenorm_blocks(t, state, "transformer.resblocks.", OPEN_CLIP_BLOCK, 16, 1e-5, mask=causal),
                state, "ln_final", 1e-5)
        text = t[torch.arange(len(ids)), ids.argmax(dim=-1)] @ state["text_projection"]  # open_clip pools at argmax
    expected = (F.normalize(image, dim=-1) * F.normalize(text, dim=-1)).sum(-1)
    torch.testing.assert_close(REWARDS["hpsv2"](str(folder))(images(), PROMPTS), expected, rtol=1e-4, atol=1e-5)


def test_imagereward_equals_a_blip_forward(checkpoints):
    folder = checkpoints["imagereward"]
    state = torch.load(folder / "ImageReward.pt")
    vit = {k[len("blip.visual_encoder."):]: v for k, v in state.items() if k.startswith("blip.visual_encoder.")}
    bert = {k[len("blip.text_encoder."):]: v for k, v in state.items() if k.startswith("blip.text_encoder.")}
    tokens = transformers.AutoTokenizer.from_pretrained(folder)(
        PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    eps = MED["layer_norm_eps"]
    with torch.no_grad():
        v = _vit_tokens(model_pixels(images(), 32), vit["cls_token"], vit["pos_embed"],
                        vit["patch_embed.proj.weight"], vit["patch_embed.proj.bias"])
        v = _ln(_prenorm_blocks(v, vit, "blocks.", BLIP_VIT_BLOCK, 16, 1e-6), vit, "norm", 1e-6)
        ids = tokens["input_ids"]
        t = _ln(bert["embeddings.word_embeddings.weight"][ids] + bert["embeddings.position_embeddings.weight"][:35],
                bert, "embeddings.LayerNorm", eps)
        padding = tokens["attention_mask"] == 0
        for i in range(MED["num_hidden_layers"]):  # post-LayerNorm BERT layer with cross-attention (BLIP med.py)
            for kind, memory, mask in (("attention", t, padding), ("crossattention", v, None)):
                p = f"encoder.layer.{i}.{kind}."
                weights = [bert[p + f"self.{n}.weight"] for n in ("query", "key", "value")]
                bias = torch.cat([bert[p + f"self.{n}.bias"] for n in ("query", "key", "value")])
                a = _attention(t, memory, MED["num_attention_heads"], weights, bias, bert[p + "output.dense.weight"],
                               bert[p + "output.dense.bias"], padding=mask)
                t = _ln(t + a, bert, p + "output.LayerNorm", eps)
            p = f"encoder.layer.{i}."
            h = F.gelu(F.linear(t, bert[p + "intermediate.dense.weight"], bert[p + "intermediate.dense.bias"]))
            t = _ln(t + F.linear(h, bert[p + "output.dense.weight"], bert[p + "output.dense.bias"]), bert,
                    p + "output.LayerNorm", eps)
        r = t[:, 0]
        for i in (0, 2, 4, 6, 7):
            r = F.linear(r, state[f"mlp.layers.{i}.weight"], state[f"mlp.layers.{i}.bias"])
    expected = (r[:, 0] - imagereward_module.MEAN) / imagereward_module.STD
    reward = REWARDS["imagereward"](str(folder / "ImageReward.pt"))
    with torch.no_grad():
        vision = reward.model.vision(pixel_values=model_pixels(images(), 32)).last_hidden_state
    torch.testing.assert_close(vision, v, rtol=1e-5, atol=1e-5)  # the image tokens the text attends to
    torch.testing.assert_close(reward(images(), PROMPTS), expected, rtol=1e-4, atol=1e-7)
