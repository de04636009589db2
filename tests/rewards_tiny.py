"""Tiny random reward models and tokenizers, saved as their hub repositories hold them, and a
Hugging Face cache laid out as huggingface_hub writes it (no tests here).

transformers is imported inside the functions: tests/upstream_rewards.py imports `perturb` from
here in an environment with another transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

LETTERS = "abcdefghijklmnopqrstuvwxyz"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def perturb(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    """Random weights everywhere: initializations leave biases at 0 and norms at 1, which a
    comparison would then not exercise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def hub_snapshot(home: Path, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the hub cache under HF_HOME=`home` (refs/main points at it)."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def save_clip_tokenizer(folder: Path):
    """A byte-level BPE vocabulary of letters, like CLIP's in miniature (end-of-text is the largest id)."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tokens = list(LETTERS) + [c + "</w>" for c in LETTERS] + ["th", "the</w>", "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_clip(tokenizer, seed: int, image_size: int = 32, patch_size: int = 8, context: int = 16):
    """A random transformers CLIPModel for `tokenizer`'s vocabulary (initialization only: see perturb)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=context, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=patch_size),
        projection_dim=16)
    return transformers.CLIPModel(config).eval()


def save_tiny_clip(folder: Path, tokenizer, seed: int):
    """tiny_clip's defaults, saved as CLIPModel.save_pretrained writes them."""
    model = tiny_clip(tokenizer, seed)
    model.save_pretrained(folder)
    return model


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head as its authors (and trl's DDPO scorer) define it."""

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                    nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                    nn.Linear(16, 1))

    def forward(self, embed: torch.Tensor) -> torch.Tensor:
        return self.layers(embed)


def aesthetic_head(features: int, seed: int) -> AestheticMLP:
    torch.manual_seed(seed)
    return AestheticMLP(features).eval()


def save_bert_tokenizer(folder: Path, words: list[str]):
    """A WordPiece vocabulary: BERT's special tokens, letters, `##` letters (any word splits) and `words`."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS),
                  *dict.fromkeys(w for w in words if w not in LETTERS)]
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_tiny_dino(folder: Path, seed: int = 0):
    """A random transformers Dinov2Model and the image processor config of facebook/dinov2-base."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                       patch_size=14, image_size=518)  # dinov2-base's 518 (37 x 37 positions)
    model = transformers.Dinov2Model(config).eval()
    perturb(model, seed)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(DINOV2_PROCESSOR, indent=2))
    return model


DINOV2_PROCESSOR = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "BitImageProcessor", "image_std": [0.229, 0.224, 0.225], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256}}
"""preprocessor_config.json of facebook/dinov2-base."""
