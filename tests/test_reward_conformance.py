"""Each learned reward against its upstream package, on tiny random weights.

For each reward the upstream model is built in the upstream module structure, saved as upstream
publishes it (file names, state-dict keys, hub repository), loaded by noisealign from a Hugging
Face cache laid out like the hub's (the default, no-argument path of each reward), and both score
the same images and prompts, tokenizers included:

- hpsv2 against open_clip_torch and imagereward against the image-reward package, run in a
  subprocess on <venv>/upstream (tests/upstream_rewards.py says why there);
- pickscore, aesthetic, clipscore and dino against transformers' own pipelines (processor + model),
  as their authors score them.

Preprocessing: upstream resizes with PIL, noisealign in torch (differentiable). Images already at
the network's input size (224 px; 256 for DINOv2, which crops 224) go through both unresized, so
there the two see the same pixels (checked) and must agree within 1e-4. Other sizes measure the
end-to-end difference of the two resizers; it is bounded here and recorded as the
`end_to_end_max_abs` property of each test, beside the scores' standard deviation (pytest
--junitxml=FILE -o junit_family=xunit1 writes them; docs/rewards.md quotes them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from noisealign.rewards import aesthetic, clip_common, dino, hpsv2, imagereward, pickscore
from noisealign.rewards.clip_common import model_pixels
from noisealign.rewards.registry import parse_reward
from rewards_tiny import (DINOV2_PROCESSOR, aesthetic_head, hub_snapshot, perturb, save_bert_tokenizer,
                          save_clip_tokenizer, save_tiny_dino, tiny_clip)

transformers = pytest.importorskip("transformers")

UPSTREAM = Path(sys.prefix) / "upstream"
SCRIPT = Path(__file__).with_name("upstream_rewards.py")
SAME, TOLERANCE = 3, 1e-4   # the first SAME images are at the network's input size
SIZES = [(224, 224)] * SAME + [(512, 512), (320, 256), (288, 384)]
DINO_SIZES = [(256, 256)] * SAME + [(512, 512), (320, 256), (224, 224)]
PROMPTS = ["a photo of a cat sat on the red mat", "the dog, at night!", "an oil painting of a lighthouse",
           "a cat", "a red dog and a cat on the grass by the sea in the morning light, with a lighthouse far "
           "away, a boat, a bird, a tree, two clouds and the sun, painted in oil in the style of an old "
           "master, very detailed, sharp focus, warm colors, high contrast, award winning, trending",
           "lighthouse"]
CLIP_PROCESSOR = {"crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
                  "do_normalize": True, "do_rescale": True, "do_resize": True,
                  "image_mean": list(clip_common.CLIP_MEAN), "image_std": list(clip_common.CLIP_STD),
                  "image_processor_type": "CLIPImageProcessor", "resample": 3,
                  "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}}
"""preprocessor_config.json of openai/clip-vit-large-patch14 and laion/CLIP-ViT-H-14-laion2B-s32B-b79K."""


def sample_images(sizes, seed=0):
    """Smooth random images with sharp rectangles, on the 8-bit grid (PNG holds them exactly)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for height, width in sizes:
        image = F.interpolate(torch.rand(1, 3, 6, 6, generator=generator), size=(height, width), mode="bicubic",
                              align_corners=False)[0]
        for _ in range(3):
            top, left = (torch.rand(2, generator=generator) * torch.tensor([height, width]) * 0.7).long().tolist()
            image[:, top:top + height // 4, left:left + width // 4] = torch.rand(3, 1, 1, generator=generator)
        out.append((image.clamp(0, 1) * 255).round() / 255)
    return out


def pil(image):
    return Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy())


def ours(reward, images, prompts=PROMPTS):
    """noisealign's scores, one image at a time (the sizes differ)."""
    with torch.no_grad():
        return torch.cat([reward(image[None], [prompt]) for image, prompt in zip(images, prompts)])


def compare(request, mine, theirs):
    """Same pixels: within TOLERANCE; other sizes: measured (returned, and recorded with the scores' spread)."""
    theirs = torch.as_tensor(theirs, dtype=torch.float32)
    spread = float(theirs.std())
    assert spread > 100 * TOLERANCE   # scores that differ between images: the comparison means something
    torch.testing.assert_close(mine[:SAME], theirs[:SAME], rtol=0, atol=TOLERANCE)
    end_to_end = float((mine[SAME:] - theirs[SAME:]).abs().max())
    request.node.user_properties += [("same_pixels_max_abs", float((mine[:SAME] - theirs[:SAME]).abs().max())),
                                     ("end_to_end_max_abs", end_to_end), ("score_std", spread)]
    return end_to_end


@pytest.fixture(autouse=True)
def fresh_loaders(monkeypatch, tmp_path):
    """Each test loads from its own cache: no model cached by another test, no download."""
    for module, cache in ((clip_common, "_ENCODERS"), (hpsv2, "_ENCODERS"), (imagereward, "_MODELS"),
                          (aesthetic, "_HEADS"), (dino, "_MODELS")):
        monkeypatch.setattr(module, cache, {})
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("NOISEALIGN_OFFLINE", "1")


def use_cache(monkeypatch, home):
    monkeypatch.setenv("HF_HOME", str(home))


# ---------------------------------------------------------------- open_clip and image-reward (subprocess)

@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Checkpoints, scores and preprocessed pixels from tests/upstream_rewards.py, and the hub cache."""
    if not (UPSTREAM / "open_clip").is_dir() or not (UPSTREAM / "ImageReward").is_dir():
        reason = f"the upstream reward packages are not installed in {UPSTREAM} (make venv installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    workdir, home = tmp_path_factory.mktemp("upstream"), tmp_path_factory.mktemp("hf")
    images = sample_images(SIZES)
    for i, image in enumerate(images):
        pil(image).save(workdir / f"{i}.png")
    (workdir / "inputs.json").write_text(json.dumps({"images": [f"{i}.png" for i in range(len(images))],
                                                     "prompts": PROMPTS}))
    words = sorted({w.strip(",!") for p in PROMPTS for w in p.split()}) + [",", "!"]
    bert = hub_snapshot(home, "bert-base-uncased")
    save_bert_tokenizer(bert, words)
    transformers.AutoConfig.for_model("bert").save_pretrained(bert)   # AutoTokenizer reads a hub id's config.json
    environment = {**os.environ, "PYTHONPATH": str(UPSTREAM), "HF_HOME": str(home), "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, str(SCRIPT), str(workdir)], env=environment, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return SimpleNamespace(dir=workdir, home=home, images=images,
                           scores=json.loads((workdir / "scores.json").read_text()), pixels=torch.load(workdir / "pixels.pt"), tokens=torch.load(workdir / "tokens.pt"))


def test_hpsv2_matches_open_clip(upstream, monkeypatch, request):
    shutil.copy(upstream.dir / "hpsv2" / "HPS_v2.1_compressed.pt", hub_snapshot(upstream.home, hpsv2.HPS_REPO))
    tokenizer = transformers.CLIPTokenizer(str(upstream.dir / "hpsv2" / "vocab.json"),
                                           str(upstream.dir / "hpsv2" / "merges.txt"), model_max_length=77)
    laion = hub_snapshot(upstream.home, hpsv2.TOKENIZER)
    tokenizer.save_pretrained(laion)                    # laion's CLIPTokenizer files, and its config.json
    transformers.CLIPConfig().save_pretrained(laion)
    use_cache(monkeypatch, upstream.home)
    reward = parse_reward("hpsv2")

    ids = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    for mine, theirs in zip(ids, upstream.tokens):   # open_clip pads with 0 after end-of-text, transformers with it
        end = int(theirs.argmax()) + 1
        assert mine[:end].tolist() == theirs[:end].tolist()
    for image, theirs in zip(upstream.images[:SAME], upstream.pixels["hpsv2"]):
        torch.testing.assert_close(model_pixels(image[None], 224)[0], theirs, rtol=0, atol=1e-5)
    assert compare(request, ours(reward, upstream.images), upstream.scores["hpsv2"]) < 2e-3        # measured 3.4e-4


def test_imagereward_matches_the_image_reward_package(upstream, monkeypatch, request):
    snapshot = hub_snapshot(upstream.home, imagereward.REPO)
    for name in (imagereward.CHECKPOINT, imagereward.MED_CONFIG):
        shutil.copy(upstream.dir / "imagereward" / name, snapshot)
    use_cache(monkeypatch, upstream.home)
    reward = parse_reward("imagereward")

    for image, theirs in zip(upstream.images[:SAME], upstream.pixels["imagereward"]):
        torch.testing.assert_close(model_pixels(image[None], 224)[0], theirs, rtol=0, atol=1e-5)
    assert compare(request, ours(reward, upstream.images), upstream.scores["imagereward"]) < 0.02  # measured 5.1e-3


# ---------------------------------------------------------------- transformers (this process)

@pytest.fixture(scope="module")
def clip_hub(tmp_path_factory):
    """openai/clip-vit-large-patch14 (also aesthetic's backbone), PickScore_v1 and its processor repo,
    and the aesthetic head, as tiny random models in a hub cache."""
    home = tmp_path_factory.mktemp("hf")
    openai, processor = hub_snapshot(home, aesthetic.CLIP_L14), hub_snapshot(home, pickscore.PROCESSOR)
    tokenizer = save_clip_tokenizer(openai)
    save_clip_tokenizer(processor)
    transformers.CLIPConfig().save_pretrained(processor)
    for folder, seed in ((openai, 0), (hub_snapshot(home, pickscore.PICKSCORE), 1)):
        model = tiny_clip(tokenizer, seed, image_size=224, patch_size=32, context=77)
        perturb(model, seed)
        model.save_pretrained(folder)
    for folder in (openai, processor):
        (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PROCESSOR))
    head = aesthetic_head(16, seed=3)
    perturb(head, seed=3)
    torch.save(head.state_dict(), hub_snapshot(home, aesthetic.HEAD_REPO) / aesthetic.HEAD_FILE)
    return SimpleNamespace(home=home, openai=openai, processor=processor, head=head, images=sample_images(SIZES))


def _features(output):
    """transformers 5 returns an output holding the projected embedding as pooler_output, 4 the tensor."""
    return F.normalize(output if isinstance(output, torch.Tensor) else output.pooler_output, dim=-1)


def _clip_embeddings(model_folder, processor_folder, images):
    """PickScore's published scoring code (and trl's DDPO aesthetic scorer's): processor, then model."""
    processor = transformers.AutoProcessor.from_pretrained(processor_folder)
    model = transformers.AutoModel.from_pretrained(model_folder).eval()
    image_inputs = processor(images=[pil(image) for image in images], return_tensors="pt")
    text_inputs = processor(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        return (model, _features(model.get_image_features(**image_inputs)),
                _features(model.get_text_features(**text_inputs)), image_inputs["pixel_values"])


def _same_pixels(images, theirs):
    torch.testing.assert_close(model_pixels(torch.stack(images[:SAME]), 224), theirs[:SAME], rtol=0, atol=1e-5)


def test_pickscore_matches_transformers(clip_hub, monkeypatch, request):
    use_cache(monkeypatch, clip_hub.home)
    model, image, text, pixels = _clip_embeddings(hub_snapshot(clip_hub.home, pickscore.PICKSCORE),
                                                  clip_hub.processor, clip_hub.images)
    _same_pixels(clip_hub.images, pixels)
    theirs = model.logit_scale.exp().detach() * (text * image).sum(-1)
    assert compare(request, ours(parse_reward("pickscore"), clip_hub.images), theirs) < 0.03  # measured 7.9e-3


def test_aesthetic_matches_transformers(clip_hub, monkeypatch, request):
    use_cache(monkeypatch, clip_hub.home)
    _, image, _, _ = _clip_embeddings(clip_hub.openai, clip_hub.openai, clip_hub.images)
    with torch.no_grad():
        theirs = clip_hub.head(image).squeeze(1)
    assert compare(request, ours(parse_reward("aesthetic"), clip_hub.images), theirs) < 3e-3  # measured 7.6e-4


def test_clipscore_matches_transformers(clip_hub, monkeypatch, request):
    use_cache(monkeypatch, clip_hub.home)
    _, image, text, _ = _clip_embeddings(clip_hub.openai, clip_hub.openai, clip_hub.images)
    cosine = (image * text).sum(-1)
    assert (cosine[:SAME] > 0).any() and (cosine < 0).any()   # both sides of CLIPScore's floor
    theirs = 2.5 * cosine.clamp(min=0)
    assert compare(request, ours(parse_reward("clipscore"), clip_hub.images), theirs) < 1e-3  # measured 1.9e-4


def test_dino_matches_transformers(tmp_path, monkeypatch, request):
    home = tmp_path / "hf"
    folder = hub_snapshot(home, dino.DEFAULT_MODEL)
    save_tiny_dino(folder, seed=4)
    assert json.loads((folder / "preprocessor_config.json").read_text()) == DINOV2_PROCESSOR
    images = sample_images(DINO_SIZES, seed=1)
    reference = sample_images([(256, 256)], seed=2)[0]
    pil(reference).save(tmp_path / "reference.png")
    use_cache(monkeypatch, home)
    reward = parse_reward(f"dino:'{tmp_path / 'reference.png'}'")

    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    model = transformers.Dinov2Model.from_pretrained(folder).eval()
    inputs = processor(images=[pil(image) for image in [reference, *images]], return_tensors="pt")
    with torch.no_grad():
        features = F.normalize(model(**inputs).pooler_output, dim=-1)
    torch.testing.assert_close(model_pixels(torch.stack([reference, *images[:SAME]]), 256, dino.IMAGENET_MEAN,
                                            dino.IMAGENET_STD, crop=224), inputs["pixel_values"][:SAME + 1],
                               rtol=0, atol=1e-5)
    theirs = features[1:] @ features[0]
    assert compare(request, ours(reward, images), theirs) < 1e-3  # measured 9.8e-5
