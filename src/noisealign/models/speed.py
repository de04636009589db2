"""Speed options of a loaded diffusers pipeline: memory format, torch.compile and tracing.

- memory_format "channels_last" stores the denoising network's and the VAE's 4-D tensors NHWC,
  the layout cuDNN's (tensor-core) and oneDNN's convolution kernels prefer; "contiguous" (the
  default) keeps them as loaded. The outputs agree to float rounding (tests/test_model_options.py).
- compile: a `torch.compile` mode for the denoising network ("default", "reduce-overhead":
  CUDA graphs, "max-autotune"), or "off" (the default). The network compiles on its first
  call (tens of seconds to minutes; on a CPU inductor also needs a C++ compiler) and again
  for each new batch size. "trace" instead wraps the network call in `TracedNetwork`
  (torch.jit.trace, one trace per input signature): no compile time, the same kernels, so
  the same numbers, minus diffusers' Python overhead per call.

Two related settings need no option: diffusers runs attention through torch's
scaled_dot_product_attention (AttnProcessor2_0: flash / memory-efficient kernels on a GPU)
by default, and `--dtype fp16 | bf16` casts the networks while the sampler's state, the
decoded images and so the rewards stay float32 (diffusers_base).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "trace")


def apply_speed_options(network: torch.nn.Module, vae: torch.nn.Module, memory_format: str, compile: str) -> None:
    """Set the network's and the VAE's memory format, and compile the network, in place
    ("trace" wraps the network's call instead: `TracedNetwork`)."""
    for module in (network, vae):
        module.to(memory_format=MEMORY_FORMATS[memory_format])
    if compile not in ("off", "trace"):
        network.compile(mode=compile)


class TracedNetwork:
    """A network call `network(x_in, timestep, cond) -> Tensor` run through torch.jit.trace.

    Why: a small or mid-sized UNet spends much of its time in diffusers' Python (module calls,
    hooks, config checks, dict plumbing) rather than in its kernels; a traced graph replays only
    the tensor ops (the tiny SD denoiser, batch 2, one CPU thread: forward 7 -> 4.5 ms,
    forward+backward 14 -> 11 ms; bit-identical outputs and gradients). Unlike torch.compile it takes no compile time (one
    eager-speed run to trace) and no C++ compiler, and it runs the same kernels.

    A trace bakes in shapes and Python control flow, so there is one per input signature: the
    pytree structure of (x_in, timestep, cond), each tensor's shape, dtype and device, and the
    other leaves' values (e.g. FLUX's guidance=None); a new batch size traces again. The trace
    is recorded under no_grad on the network's frozen weights and replays under autograd (DNO
    back-propagates through it, checkpointed or not), no_grad and inference_mode. It replays
    with TorchScript's graph optimizations off (torch.jit.optimized_execution(False)): op by op,
    as eager autograd records them. The optimizing executor profiles the first calls, then runs
    another graph, so a checkpoint's recomputation saved other tensors than its forward
    (torch.utils.checkpoint raised), and a FLUX trace profiled with gradients then failed under
    inference_mode; it was barely faster here. Where tracing raises, that signature runs the
    eager call, after one warning. Weights are the module's own tensors, not copies (moving or
    casting the network afterwards needs a new TracedNetwork), but each trace holds host memory
    for its graph (the tiny test UNet's: 12-19 MB, not returned when a trace is dropped), so a
    run with many batch sizes (Demon: a few) pays it per size.
    """

    def __init__(self, network: Callable[..., Tensor]):
        self.eager = network
        self.traces: dict = {}     # signature -> traced function (or the eager call where tracing failed)

    def __call__(self, x_in: Tensor, timestep: Tensor, cond) -> Tensor:
        leaves, spec = tree_flatten((x_in, timestep, cond))
        tensors = [leaf for leaf in leaves if isinstance(leaf, Tensor)]
        signature = (spec, tuple((tuple(leaf.shape), leaf.dtype, leaf.device) if isinstance(leaf, Tensor)
                                 else (type(leaf), leaf) for leaf in leaves))
        function = self.traces.get(signature)
        if function is None:
            function = self.traces[signature] = self._trace(leaves, spec, tensors)
        if function is self.eager:
            return self.eager(x_in, timestep, cond)
        with torch.jit.optimized_execution(False):
            return function(*tensors)

    def _trace(self, leaves: list, spec, tensors: list[Tensor]):
        def flat(*inputs: Tensor) -> Tensor:
            supply = iter(inputs)
            rebuilt = [next(supply) if isinstance(leaf, Tensor) else leaf for leaf in leaves]
            return self.eager(*tree_unflatten(rebuilt, spec))

        try:
            # outside inference_mode, so that no inference tensor becomes a constant of the graph
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks, baked per signature
                warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)  # torch 2.10+; still works
                examples = tuple(t.clone() if t.is_inference() else t for t in tensors)
                return torch.jit.trace(flat, examples, check_trace=False)
        except Exception as error:  # noqa: BLE001 (any tracing failure: run this signature eagerly)
            detail = (str(error).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"compile 'trace': cannot trace the network for inputs {[tuple(t.shape) for t in tensors]} "
                          f"({type(error).__name__}: {detail}); running it eagerly", RuntimeWarning, stacklevel=3)
            return self.eager
