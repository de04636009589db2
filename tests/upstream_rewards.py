"""Score images with the upstream reward packages themselves, on tiny random weights (run by
tests/test_reward_conformance.py in a subprocess, never imported by the test session).

    python tests/upstream_rewards.py WORKDIR      # with PYTHONPATH=<venv>/upstream, HF_HOME=<a hub cache>

WORKDIR/inputs.json names the images (PNG files in WORKDIR) and one prompt per image. For each
reward this builds the upstream model in the upstream module structure, with small random
weights, saves its checkpoint as upstream publishes it, and scores every (image, prompt) pair
with the upstream scoring code, tokenizer and PIL preprocessing included:

- hpsv2: open_clip_torch's CLIP from ViT-H-14's own config with smaller widths and depths,
  scored as `hpsv2.score` does (cosine of the output-dict features); `HPS_v2.1_compressed.pt`
  holds {"state_dict": ...}. open_clip's tokenizer BPE is exported as vocab.json / merges.txt,
  the files of a transformers CLIPTokenizer (those of laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
- imagereward: the image-reward package's `ImageReward` class (BLIP_Pretrain + MLP) scored by
  its own `score(prompt, image)`; `ImageReward.pt` is its state_dict. The BERT tokenizer is
  upstream's `init_tokenizer()`, reading bert-base-uncased from HF_HOME.

Writes WORKDIR/<reward>/ (checkpoint files) and WORKDIR/scores.json, WORKDIR/pixels.pt
(upstream's preprocessed image tensors) and WORKDIR/tokens.pt (open_clip's token ids).

Environment (<venv>/upstream, see the Makefile): the upstream packages, installed without their
dependencies beside the venv's CPU torch and kept off the venv's own path, with transformers
4.55.4 there because BLIP's med.py imports helpers that transformers 5 removed. Two
workarounds, both outside the code under test: torchvision 0.28.0 from PyPI is a CUDA build
whose C extension cannot load beside CPU torch (its Python transforms need none), but its import
registers fake kernels for the extension's nms and qnms ops, so those two op schemas are
defined first; and ImageReward/__init__.py imports its training script (accelerate, datasets)
and its CLIP-package scorers, so `ImageReward` and `ImageReward.models` are bare namespace
packages here and only the reward model's own modules are imported.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from PIL import Image

from rewards_tiny import perturb  # tests/ is this script's folder, first on sys.path

TINY_OPEN_CLIP = {"embed_dim": 16, "vision_cfg": {"layers": 2, "width": 32, "head_width": 2},
                  "text_cfg": {"layers": 2, "width": 32}}
"""ViT-H-14 with these sizes changed (16 heads in both towers, as ViT-H-14)."""

MED_CONFIG = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 64,
              "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
              "num_attention_heads": 4, "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
              "encoder_width": 1024, "add_cross_attention": True}
"""ImageReward's med_config.json with a smaller BERT (hidden 768 stays: ImageReward's MLP reads 768);
vocab_size is the tokenizer's, with BLIP's two added tokens."""

VIT_WIDTH, VIT_DEPTH = 32, 2  # BLIP's ViT-L keeps its 16 heads, patch 16 and 224 px


def define_torchvision_extension_ops() -> torch.library.Library | None:
    """The two op schemas whose fake kernels torchvision registers at import (see the module docstring);
    they last as long as the returned Library."""
    if torch.version.cuda is not None:   # a CUDA torch (TORCH= in the Makefile) loads the extension itself
        return None
    library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return library


def hpsv2(images: list[Image.Image], prompts: list[str], out: Path) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    import open_clip

    config = open_clip.get_model_config("ViT-H-14")
    config["embed_dim"] = TINY_OPEN_CLIP["embed_dim"]
    for tower in ("vision_cfg", "text_cfg"):
        config[tower].update(TINY_OPEN_CLIP[tower])
    (out / "ViT-H-14-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(out / "ViT-H-14-tiny.json")
    torch.manual_seed(0)
    model, _, preprocess_val = open_clip.create_model_and_transforms(
        "ViT-H-14-tiny", precision="fp32", device="cpu", jit=False, force_quick_gelu=False, output_dict=True)
    perturb(model, seed=1)
    model.eval()
    torch.save({"state_dict": model.state_dict()}, out / "HPS_v2.1_compressed.pt")

    tokenizer = open_clip.get_tokenizer("ViT-H-14")
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # the vocab files' spelling
    vocabulary = {special.get(token, token): i for token, i in tokenizer.encoder.items()}
    (out / "vocab.json").write_text(json.dumps(vocabulary))
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")

    scores, pixels, tokens = [], [], []
    with torch.no_grad():                           # hpsv2.score, one image and its prompt at a time
        for pil, prompt in zip(images, prompts):
            image = preprocess_val(pil).unsqueeze(0)
            text = tokenizer([prompt])
            outputs = model(image, text)
            image_features, text_features = outputs["image_features"], outputs["text_features"]
            logits_per_image = image_features @ text_features.T
            scores.append(float(torch.diagonal(logits_per_image)[0]))
            pixels.append(image[0])
            tokens.append(text[0])
    return scores, torch.stack(pixels), torch.stack(tokens)


def imagereward(images: list[Image.Image], prompts: list[str], out: Path) -> tuple[list[float], torch.Tensor]:
    location = importlib.util.find_spec("ImageReward").submodule_search_locations[0]
    for name, folder in (("ImageReward", location), ("ImageReward.models", f"{location}/models")):
        package = types.ModuleType(name)
        package.__path__ = [folder]
        sys.modules[name] = package
    from ImageReward import ImageReward as image_reward
    from ImageReward.models.BLIP import blip_pretrain, vit

    def create_vit(kind, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        assert kind == "large"   # what ImageReward asks for; its ViT-L arguments with a smaller width and depth
        return vit.VisionTransformer(img_size=image_size, patch_size=16, embed_dim=VIT_WIDTH, depth=VIT_DEPTH,
                                     num_heads=16, use_grad_checkpointing=use_grad_checkpointing,
                                     ckpt_layer=ckpt_layer, drop_path_rate=0.1), VIT_WIDTH

    blip_pretrain.create_vit = create_vit
    tokenizer = blip_pretrain.init_tokenizer()          # bert-base-uncased from HF_HOME, plus [DEC] and [ENC]
    med = {**MED_CONFIG, "vocab_size": len(tokenizer), "encoder_width": VIT_WIDTH}
    (out / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.manual_seed(0)
    model = image_reward.ImageReward(med_config=str(out / "med_config.json"), device="cpu")
    perturb(model, seed=2)
    model.eval()
    torch.save(model.state_dict(), out / "ImageReward.pt")
    with torch.no_grad():
        scores = [model.score(prompt, pil) for pil, prompt in zip(images, prompts)]
        pixels = torch.stack([model.preprocess(pil) for pil in images])
    return scores, pixels


def main(workdir: Path) -> None:
    inputs = json.loads((workdir / "inputs.json").read_text())
    images = [Image.open(workdir / name).convert("RGB") for name in inputs["images"]]
    extension_ops = define_torchvision_extension_ops()  # noqa: F841  (kept until the scores are written)
    results, pixels = {}, {}
    for name in ("hpsv2", "imagereward"):
        (workdir / name).mkdir(exist_ok=True)
    results["hpsv2"], pixels["hpsv2"], tokens = hpsv2(images, inputs["prompts"], workdir / "hpsv2")
    results["imagereward"], pixels["imagereward"] = imagereward(images, inputs["prompts"], workdir / "imagereward")
    (workdir / "scores.json").write_text(json.dumps(results))
    torch.save(pixels, workdir / "pixels.pt")
    torch.save(tokens, workdir / "tokens.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
