"""Which sampler steps of a gradient pass through the sampler recompute their denoiser call in
the backward pass (gradient checkpointing): all, none, or as few as a memory budget allows.

Checkpointing a call keeps only its input and recomputes it during the backward pass: memory
for its activations traded for one more forward evaluation. The values and gradients are the
same either way (the RNG state is restored for the recomputation), so the setting moves only
time and memory.

A plan checkpoints the reentrant way (`torch.utils.checkpoint`'s use_reentrant=True): the
forward runs with autograd off, so it records no graph, and the backward pass recomputes the
call with autograd on and back-propagates through it. The non-reentrant way (the official DNO
code's, and `checkpointed`'s default) records the graph in the forward and drops its saved
tensors through a Python hook per tensor, and recovers them through another: on the tiny SD
pipeline a DNO iteration of 20 steps took 1.09 s that way and 0.80 s reentrant, at a lower
peak (docs/performance.md). Reentrant checkpointing supports only `.backward()`, which DNO and
ReNO call; guidance takes `torch.autograd.grad` and keeps the non-reentrant way.

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


def checkpointed(fn: Callable[..., Tensor], reentrant: bool = False) -> Callable[..., Tensor]:
    """fn recomputed in the backward pass. The RNG state is saved and restored around the
    recomputation (checkpoint's default), so a denoiser or decoder that draws random numbers is
    recomputed exactly; on CPU that costs about 1 us per call (`benchmarks/dno.py overhead`).
    reentrant: record no graph in the forward (faster; only `.backward()` reaches the inputs'
    gradients, not `torch.autograd.grad`, and some input must require grad)."""
    def call(*args: Any) -> Tensor:
        return checkpoint(fn, *args, use_reentrant=reentrant)
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

    def wrap(self, step: Callable[..., Tensor], decode: Callable[[Tensor], Tensor],
             steps: int) -> tuple[Callable[..., Tensor], Callable[[Tensor], Tensor]]:
        """(step, decode) for one pass of `steps` sampler steps; unchanged when no graph is built.

        step(x, *args) -> x_next is a whole sampler step, not just its denoiser call: x's every
        use then lies inside the checkpoint, so the recomputed backward sums x's gradient in the
        order the plain backward does, and all settings give the same bits."""
        if not torch.is_grad_enabled():
            return step, decode
        self.steps = steps
        if self.setting != "auto":
            if self.setting == "none":
                return step, decode
            return checkpointed(step, reentrant=True), checkpointed(decode, reentrant=True)
        calls = iter(range(steps + 1))
        recomputed = checkpointed(step, reentrant=True)

        def planned(x: Tensor, *args: Any) -> Tensor:
            if self.step_bytes is None:
                output, self.step_bytes = saved_bytes(step, x, *args)
                self.budget_bytes = budget_bytes(self.budget_gb, x.device)
                next(calls)
                return output
            return (step if next(calls) < self.kept_steps(steps) else recomputed)(x, *args)

        def final(x0: Tensor) -> Tensor:
            return (decode if self.kept_steps(steps) == steps else checkpointed(decode, reentrant=True))(x0)

        return planned, final

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
