"""The real reward models on tiny random weights, saved in each checkpoint's real on-disk format and
loaded through the same code path as the hub files (a local path in place of the hub id): the
contract every reward keeps (batches, gradients, gray images, one-line errors). Their values are
compared with the upstream packages themselves in tests/test_reward_conformance.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from noisealign.errors import NoiseAlignError
from noisealign.rewards.clip_common import model_pixels
from noisealign.rewards.registry import REWARDS, parse_reward
from rewards_tiny import aesthetic_head, save_bert_tokenizer, save_clip_tokenizer, save_tiny_clip, save_tiny_dino

transformers = pytest.importorskip("transformers")

PROMPTS = ["the cat sat", "a red dog"]


# ---------------------------------------------------------------- tiny checkpoints in their real formats

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


MED = dict(vocab_size=62, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
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
             **{"mlp." + k: v for k, v in aesthetic_head(h, seed=5).state_dict().items()}}
    return state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each reward's spec argument: one folder per reward, laid out as its argument expects (dino: a
    reference image and a model folder)."""
    root = tmp_path_factory.mktemp("rewards")
    folders = {name: root / name for name in REWARD_NAMES}
    tokenizer = save_clip_tokenizer(folders["clipscore"])
    save_tiny_clip(folders["clipscore"], tokenizer, seed=0)
    save_clip_tokenizer(folders["pickscore"])
    save_tiny_clip(folders["pickscore"], tokenizer, seed=1)
    save_tiny_clip(folders["aesthetic"], tokenizer, seed=2)
    torch.save(aesthetic_head(16, seed=6).state_dict(), folders["aesthetic"] / "aesthetic-model.pth")
    save_clip_tokenizer(folders["hpsv2"])
    torch.save({"state_dict": open_clip_state(vocab=len(tokenizer))}, folders["hpsv2"] / "HPS_v2.1_compressed.pt")
    save_bert_tokenizer(folders["imagereward"], ["the", "cat", "sat", "red", "dog"])
    (folders["imagereward"] / "med_config.json").write_text(json.dumps(MED))
    torch.save(imagereward_state(), folders["imagereward"] / "ImageReward.pt")
    save_tiny_dino(root / "dinov2")
    reference = root / "reference.png"
    Image.fromarray((images(1, 24, 20, seed=3)[0].permute(1, 2, 0) * 255).byte().numpy()).save(reference)
    arguments = {name: str(folder) for name, folder in folders.items()}
    arguments["dino"] = f"{reference},model={root / 'dinov2'}"
    return arguments


REWARD_NAMES = ["aesthetic", "pickscore", "hpsv2", "imagereward", "clipscore", "dino"]


def images(batch=2, height=40, width=48, seed=7):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the contract, for every reward

@pytest.mark.parametrize("name", REWARD_NAMES)
def test_batch_equals_single_float32_and_gradient_reaches_the_image(checkpoints, name):
    reward = REWARDS[name](checkpoints[name])
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
    reward = REWARDS[name](checkpoints[name])
    gray = images()[:, :1]
    torch.testing.assert_close(reward(gray, PROMPTS), reward(gray.repeat(1, 3, 1, 1), PROMPTS))


MISSING = {"aesthetic": "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
           "pickscore": "yuvalkirstain/PickScore_v1", "hpsv2": "xswu/HPSv2/HPS_v2.1_compressed.pt",
           "imagereward": "THUDM/ImageReward/ImageReward.pt", "clipscore": "openai/clip-vit-large-patch14",
           "dino": "facebook/dinov2-base"}
"""What each reward's default spec loads first from the hub (dino: its model; the reference is a local file)."""


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_missing_weights_offline_is_one_line_naming_the_checkpoint(checkpoints, tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = checkpoints["dino"].partition(",")[0]
    spec, local = (f"dino:'{reference}'", "dino:'REF,model=/path'") if name == "dino" else (name, f"{name}:/path")
    with pytest.raises(NoiseAlignError) as caught:
        parse_reward(spec)
    message = str(caught.value)
    assert "\n" not in message and MISSING[name] in message
    assert str(tmp_path) in message and "hf download" in message and local in message


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
    reward = REWARDS[name](checkpoints[name])
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


def test_dino_scores_its_reference_one_and_refuses_bad_arguments(checkpoints, tmp_path):
    reward = REWARDS["dino"](checkpoints["dino"])
    with torch.inference_mode():   # the reference's features, first computed here, still serve gradients below
        assert reward(reward.reference[None], [""]).item() == pytest.approx(1.0, abs=1e-5)
    x = images().requires_grad_(True)
    reward(x, PROMPTS).sum().backward()
    assert x.grad.abs().sum() > 0
    (tmp_path / "notes.txt").write_text("not an image")
    reference = checkpoints["dino"].partition(",")[0]
    for argument, message in ((None, "needs a reference image"), (str(tmp_path / "notes.txt"), "not an image"),
                              (f"{reference},model=", "is not REF or REF,model=M")):
        with pytest.raises(NoiseAlignError, match=message):
            REWARDS["dino"](argument)


# ---------------------------------------------------------------- CLIPScore's floor

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
