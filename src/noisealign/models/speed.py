"""Speed options of a loaded diffusers pipeline, for GPUs first: memory format and torch.compile.

- memory_format "channels_last" stores the denoising network's and the VAE's 4-D tensors NHWC,
  the layout cuDNN's (tensor-core) and oneDNN's convolution kernels prefer; "contiguous" (the
  default) keeps them as loaded. The outputs agree to float rounding (tests/test_model_options.py).
- compile: a `torch.compile` mode for the denoising network ("default", "reduce-overhead":
  CUDA graphs, "max-autotune"), or "off" (the default). The network compiles on its first
  call (tens of seconds to minutes; on a CPU inductor also needs a C++ compiler) and again
  for each new batch size.

Two related settings need no option: diffusers runs attention through torch's
scaled_dot_product_attention (AttnProcessor2_0: flash / memory-efficient kernels on a GPU)
by default, and `--dtype fp16 | bf16` casts the networks while the sampler's state, the
decoded images and so the rewards stay float32 (diffusers_base).
"""

from __future__ import annotations

import torch

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def apply_speed_options(network: torch.nn.Module, vae: torch.nn.Module, memory_format: str, compile: str) -> None:
    """Set the network's and the VAE's memory format, and compile the network, in place."""
    for module in (network, vae):
        module.to(memory_format=MEMORY_FORMATS[memory_format])
    if compile != "off":
        network.compile(mode=compile)
