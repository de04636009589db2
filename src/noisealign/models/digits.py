"""The bundled digits model: class-conditional EDM diffusion over scikit-learn's 8 x 8 digits.

States are 1 x 8 x 8 images in [-1, 1]; prompts are "0".."9" or "" (unconditional, the
null label the network was trained with for classifier-free guidance). The default run of
the CLI aligns this model, so it loads in milliseconds and runs well under 0.1 ms per
sample and evaluation on a CPU. Weights: weights/digits_diffusion.pt, written by
scripts/train_digits.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine import karras_sigmas
from ..errors import NoiseAlignError
from ..weights import load_bundled_weights
from .digits_net import DigitsDenoiserNet, DigitsNetConfig

PROMPTS = tuple(str(d) for d in range(10))


class DigitsModel:
    """DiffusionModel over 8 x 8 digits; conditioning is a (1,) long tensor holding the label."""

    name = "digits"
    sample_shape = (1, 8, 8)
    sigma_min = 0.002
    sigma_max = 80.0
    # 18 Heun steps (35 evaluations) stay within 0.005 mean pixel error of a 128-step solve and
    # keep 99% of samples' classes; 12 steps keep 95%.
    default_steps = 18
    # CFG scale for "0".."9": every guided sample is recognised at 2, about 96% at 1 (none).
    default_guidance = 2.0
    default_solver = "heun"

    def __init__(self, net: DigitsDenoiserNet, device: torch.device | str = "cpu"):
        # channels_last spares oneDNN a layout reorder around every convolution: ~30% faster on CPU.
        self.net = net.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self.device = torch.device(device)

    @classmethod
    def load(cls, device: torch.device | str = "cpu") -> "DigitsModel":
        """The bundled weights (package data, so this works offline and from a wheel)."""
        checkpoint = load_bundled_weights("digits_diffusion.pt")
        net = DigitsDenoiserNet(DigitsNetConfig(**checkpoint["config"]))
        net.load_state_dict(checkpoint["state_dict"])
        return cls(net, device)

    def encode_prompt(self, prompt: str) -> Tensor:
        if prompt == "":
            label = self.net.config.null_label
        elif prompt in PROMPTS:
            label = int(prompt)
        else:
            raise NoiseAlignError(f"the digits model takes a prompt \"0\"..\"9\" or \"\" (unconditional), "
                                  f"got {prompt!r}; pass e.g. --prompt 3")
        return torch.tensor([label], dtype=torch.long, device=self.device)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        """D(x, sigma, y): sigma 0-d or (B,), cond (1,) or (B,) labels, both broadcast to x's batch."""
        batch = len(x)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)
        labels = cond.to(x.device).reshape(-1).expand(batch)
        return self.net(x.to(torch.float32), sigma, labels).to(x.dtype)

    def decode(self, x0: Tensor) -> Tensor:
        """[-1, 1] states to [0, 1] images, (B, 1, 8, 8)."""
        return ((x0 + 1) / 2).clamp(0, 1)

    def sigmas(self, steps: int) -> Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max)

    def prior_std(self, sigma: float) -> float:
        return sigma

