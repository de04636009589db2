"""Train the bundled digits diffusion model and the digit classifier behind the `digit:N` reward.

    make train        # or: PYTHONPATH=src python scripts/train_digits.py

Data: scikit-learn's 1797 handwritten 8 x 8 digits (values 0..16), shuffled once by the seed
and cut into two disjoint halves. The diffusion model learns the first half; the classifier
learns the second half except a held-out test part, so the reward judges digits the
diffusion model never trained on. Everything random draws from generators seeded by --seed:
the same seed and --threads (1 by default, whatever the core count) on the same machine and
torch version write the same weights.
The independent judge `digit_judge:N` keeps the diffusion half as its examples (k nearest
neighbours: no training), so it shares neither weights nor data with the classifier.
Writes src/noisealign/weights/{digits_diffusion,digit_classifier,digit_judge}.pt and prints the figures
(classifier accuracy, per-digit recognition of guided samples, speed, time).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from noisealign.engine import sample_ode
from noisealign.models.base import make_denoiser
from noisealign.models.digits import DigitsModel
from noisealign.models.digits_net import DigitsDenoiserNet, DigitsNetConfig
from noisealign.rewards.digit_classifier import DigitClassifier, DigitClassifierConfig

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "noisealign" / "weights"


def load_splits(seed: int, test_fraction: float = 0.2) -> dict[str, tuple[Tensor, Tensor]]:
    """Images in [-1, 1] (N, 1, 8, 8) and labels: 'diffusion', 'classifier' and 'test' parts."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16 * 2 - 1
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    half = len(order) // 2
    n_test = round(test_fraction * (len(order) - half))
    parts = {"diffusion": order[:half], "classifier": order[half:len(order) - n_test],
             "test": order[len(order) - n_test:]}
    return {name: (images[index], labels[index]) for name, index in parts.items()}


def random_shift(images: Tensor, generator: torch.Generator, max_shift: int = 1) -> Tensor:
    """Move each image by up to max_shift pixels in each direction, filling with background (-1)."""
    batch, size = len(images), images.shape[-1]
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, batch, 1), generator=generator)
    rows = (torch.arange(size) + dy)[:, :, None]
    cols = (torch.arange(size) + dx)[:, None, :]
    return padded[torch.arange(batch)[:, None, None], 0, rows, cols][:, None]


def cosine_lr(step: int, steps: int, warmup: int = 200) -> float:
    """Learning-rate factor: linear warm-up, then a cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def train_diffusion(images: Tensor, labels: Tensor, args: argparse.Namespace) -> DigitsDenoiserNet:
    """EDM training (Karras et al. 2022, sec. 5): ln sigma ~ N(P_mean, P_std^2), loss weight
    lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, labels dropped to the null class with
    probability `label_dropout` so one network also serves as the unconditional model (CFG)."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    torch.manual_seed(args.seed + 1)
    config = DigitsNetConfig(channels=args.channels, blocks=args.blocks)
    net = DigitsDenoiserNet(config)
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, args.steps))
    sd, p_mean, p_std = config.sigma_data, -1.2, 1.2
    for step in range(args.steps):
        index = torch.randint(0, len(images), (args.batch,), generator=generator)
        x0, y = images[index], labels[index]
        dropped = torch.rand(args.batch, generator=generator) < args.label_dropout
        y = torch.where(dropped, config.null_label, y)
        sigma = (p_mean + p_std * torch.randn(args.batch, generator=generator)).exp()
        noise = torch.randn(x0.shape, generator=generator)
        denoised = net(x0 + sigma[:, None, None, None] * noise, sigma, y)
        weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        loss = (weight[:, None, None, None] * (denoised - x0) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1 - args.ema)
        if step % 1000 == 0 or step == args.steps - 1:
            print(f"  diffusion step {step:5d}  loss {loss.item():.4f}", flush=True)
    return ema.eval()


def train_classifier(images: Tensor, labels: Tensor, args: argparse.Namespace) -> DigitClassifier:
    """Cross-entropy on [0, 1] images with shifts, contrast changes and Gaussian pixel noise;
    label smoothing (0.05) keeps the logits, and so the digit:N log-odds, on a moderate scale."""
    generator = torch.Generator().manual_seed(args.seed + 2)
    torch.manual_seed(args.seed + 2)
    classifier = DigitClassifier(DigitClassifierConfig())
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=2e-3, weight_decay=1e-3)
    steps = args.classifier_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, warmup=50))
    classifier.train()
    for step in range(steps):
        index = torch.randint(0, len(images), (128,), generator=generator)
        x = (random_shift(images[index], generator) + 1) / 2
        contrast = 0.7 + 0.5 * torch.rand(len(x), 1, 1, 1, generator=generator)
        noise_std = 0.15 * torch.rand(len(x), 1, 1, 1, generator=generator)
        x = (x * contrast + noise_std * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        loss = F.cross_entropy(classifier(x), labels[index], label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return classifier.eval()


@torch.inference_mode()
def accuracy(classifier: DigitClassifier, images: Tensor, labels: Tensor) -> float:
    return (classifier((images + 1) / 2).argmax(1) == labels).float().mean().item()


@torch.inference_mode()
def recognition(model: DigitsModel, classifier: DigitClassifier, per_digit: int, seed: int) -> list[float]:
    """Share of guided samples of each digit (default sampler) that the classifier calls that digit."""
    sigmas = model.sigmas(model.default_steps)
    generator = torch.Generator().manual_seed(seed)
    rates = []
    for digit in range(10):
        x = model.prior_std(float(sigmas[0])) * torch.randn(per_digit, 1, 8, 8, generator=generator)
        x0 = sample_ode(make_denoiser(model, str(digit)), x, sigmas, model.default_solver)
        rates.append((classifier(model.decode(x0)).argmax(1) == digit).float().mean().item())
    return rates


@torch.inference_mode()
def ms_per_evaluation(model: DigitsModel, batch: int = 256, repeats: int = 50) -> float:
    """Milliseconds per sample and denoiser evaluation at `batch` (median of `repeats` calls)."""
    x, sigma, cond = torch.randn(batch, 1, 8, 8), torch.tensor(1.0), model.encode_prompt("")
    for _ in range(5):
        model.denoise(x, sigma, cond)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.denoise(x, sigma, cond)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3 / batch


JUDGE_NEIGHBOURS = 7


def save_judge(images: Tensor, labels: Tensor, path: Path) -> None:
    """The examples of `digit_judge:N` (k nearest neighbours): the diffusion half, as sklearn's 0..16 integers."""
    examples = ((images + 1) / 2 * 16).round().to(torch.uint8)[:, 0]
    torch.save({"config": {"k": JUDGE_NEIGHBOURS}, "state_dict": {"examples": examples, "labels": labels}}, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


def save(module: torch.nn.Module, config: dict, path: Path) -> None:
    torch.save({"config": config, "state_dict": module.state_dict()}, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="diffusion training steps")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    parser.add_argument("--channels", type=int, default=DigitsNetConfig.channels)
    parser.add_argument("--blocks", type=int, default=DigitsNetConfig.blocks)
    parser.add_argument("--label-dropout", type=float, default=0.15)
    parser.add_argument("--classifier-steps", type=int, default=800)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; the weights' bits depend on it, so it is fixed, not the core count")
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="folder the three .pt files go to")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    splits = load_splits(args.seed)
    print({name: len(part[0]) for name, part in splits.items()})

    classifier = train_classifier(*splits["classifier"], args)
    print(f"classifier: accuracy {accuracy(classifier, *splits['test']):.4f} on the {len(splits['test'][0])} "
          f"held-out images, {accuracy(classifier, *splits['diffusion']):.4f} on the diffusion half "
          f"({time.perf_counter() - start:.0f} s)")

    net = train_diffusion(*splits["diffusion"], args)
    train_seconds = time.perf_counter() - start
    print(f"training took {train_seconds:.0f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    save(net, net.config.to_dict(), args.out / "digits_diffusion.pt")
    save(classifier, classifier.config.to_dict(), args.out / "digit_classifier.pt")
    save_judge(*splits["diffusion"], args.out / "digit_judge.pt")

    model = DigitsModel(net)
    rates = recognition(model, classifier, per_digit=50, seed=args.seed + 3)
    print("recognised as the asked digit:", " ".join(f"{d}:{r:.2f}" for d, r in enumerate(rates)),
          f"mean {sum(rates) / len(rates):.3f}")
    print(f"denoiser: {ms_per_evaluation(model):.4f} ms per sample-evaluation at batch 256 "
          f"on {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
