"""Which sampler steps of a gradient pass through the sampler recompute their denoiser call in
the backward pass (gradient checkpointing): all, none, or as few as a memory budget allows.

Checkpointing a call keeps only its input and recomputes it during the backward pass: memory
for its activations traded for one more forward evaluation. The values and gradients are the
same either way (the RNG state is restored for the recomputation), so the setting moves only
time and memory.

- all:  every call and the decode (memory flat in the number of steps; 2 x steps NFE).
- none: no call (every step's activations kept; steps NFE, the fastest).
- auto: the first call of the first gradient pass runs plain while a saved-tensor hook adds
  up the bytes autograd keeps for its backward (`saved_bytes`); from then on the first
  floor(budget / those bytes) calls of every pass keep their graph and the rest (and then
  the decode) are checkpointed. The budget is `--memory-budget` GB, by default 80% of the
  device's free memory on CUDA (`torch.cuda.mem_get_info` at that first call), half of
  MemAvailable on a Linux CPU (/proc/meminfo), and unbounded where neither can be read.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

SETTINGS = ("auto", "all", "none")
CUDA_FREE_FRACTION = 0.8
"""auto's default budget on CUDA: this fraction of the free device memory (the rest is the
working memory of one call and of the backward pass)."""
CPU_AVAILABLE_FRACTION = 0.5
"""auto's default budget on a CPU: this fraction of the memory the kernel reports available."""


def setting_of(value: bool | str) -> str:
    """The setting of a config value; a bool (ReNO's option, DNO's in older runs) is all or none."""
    if isinstance(value, bool):
        return "all" if value else "none"
    return value


def checkpointed(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """fn recomputed in the backward pass. The RNG state is saved and restored around the
    recomputation (checkpoint's default), so a denoiser or decoder that draws random numbers is
    recomputed exactly; on CPU that costs about 1 us per call (`benchmarks/dno.py overhead`)."""
    def call(*args: Any) -> Tensor:
        return checkpoint(fn, *args, use_reentrant=False)
    return call


class CheckpointPlan:
    """One run's checkpointing: `wrap` the denoiser and decode of each pass through the sampler.

    setting: all | none | auto. budget_gb: auto's memory budget for kept activations (None: the
    device's default, see the module docstring). After auto's first gradient pass, `report`
    says what it measured and chose.
    """

    def __init__(self, setting: bool | str = "all", budget_gb: float | None = None):
        self.setting, self.budget_gb = setting_of(setting), budget_gb
        self.step_bytes: int | None = None
        self.budget_bytes: float | None = None
        self.steps: int | None = None

    def kept_steps(self, steps: int) -> int:
        """Calls per pass that keep their graph (the first ones); the others are checkpointed."""
        if self.setting != "auto":
            return steps if self.setting == "none" else 0
        if self.step_bytes is None or self.step_bytes * steps <= self.budget_bytes:
            return steps
        return int(self.budget_bytes // self.step_bytes)

    def wrap(self, denoiser: Callable[[Tensor, float], Tensor], decode: Callable[[Tensor], Tensor],
             steps: int) -> tuple[Callable[[Tensor, float], Tensor], Callable[[Tensor], Tensor]]:
        """(denoiser, decode) for one pass of `steps` calls; unchanged when no graph is built."""
        if not torch.is_grad_enabled():
            return denoiser, decode
        self.steps = steps
        if self.setting != "auto":
            return (denoiser, decode) if self.setting == "none" else (checkpointed(denoiser), checkpointed(decode))
        calls = iter(range(steps + 1))
        recomputed = checkpointed(denoiser)

        def step(x: Tensor, sigma: float) -> Tensor:
            if self.step_bytes is None:
                output, self.step_bytes = saved_bytes(denoiser, x, sigma)
                self.budget_bytes = budget_bytes(self.budget_gb, x.device)
                next(calls)
                return output
            return (denoiser if next(calls) < self.kept_steps(steps) else recomputed)(x, sigma)

        def final(x0: Tensor) -> Tensor:
            return (decode if self.kept_steps(steps) == steps else checkpointed(decode))(x0)

        return step, final

    def report(self, seeds: int = 1) -> dict[str, Any]:
        """What result.json records once a gradient pass ran: the denoiser calls checkpointed per
        pass and, for auto, the bytes one call keeps per seed (the pass ran `seeds` seeds at once)."""
        if self.steps is None:
            return {}
        measured = {} if self.step_bytes is None else {"activation_bytes_per_step": round(self.step_bytes / seeds)}
        return {"checkpointed_steps": self.steps - self.kept_steps(self.steps), **measured}


def saved_bytes(fn: Callable[..., Tensor], *args: Any) -> tuple[Tensor, int]:
    """(fn(*args), the bytes autograd saved for fn's backward): tensors computed in the graph
    (not weights or other leaves), each storage counted once."""
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        if tensor.grad_fn is not None:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = fn(*args)
    return output, sum(storages.values())


def budget_bytes(budget_gb: float | None, device: torch.device) -> float:
    """The memory budget in bytes: the given GB, else the device's default (math.inf if unknown)."""
    if budget_gb is not None:
        return budget_gb * 1e9
    if device.type == "cuda":
        return CUDA_FREE_FRACTION * torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        available = available_memory()
        return math.inf if available is None else CPU_AVAILABLE_FRACTION * available
    return math.inf


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
