"""noisealign beside the official Demon / DNO code on one tiny random SD 1.x pipeline.

    python benchmarks/peer_compare.py demon --official PATH   # a checkout of the Demon paper's code (rareone0602/demon)
    python benchmarks/peer_compare.py dno --official PATH     # a checkout of TZW1998/Direct-Noise-Optimization
    python benchmarks/peer_compare.py allocator               # ours only: glibc's malloc defaults vs pinned thresholds
    python benchmarks/peer_compare.py profile                 # ours only: where one Demon step / DNO iteration goes

The pipeline is tests/diffusers_tiny.py's SD 1.x (UNet 32/64 channels, CLIP text encoder, VAE),
random weights, 32 px (latent 4 x 16 x 16), saved once to a temp folder that both sides load.
Every measured run is a fresh process (so its peak RSS is its own), the sides alternate
(A B B A ...), and each line gives the medians over the repeats and ours / official:
seconds of the method's own work (model loading excluded), UNet forward calls (a forward
hook on every UNet2DConditionModel, so checkpoint recomputation counts) and samples through
the UNet, peak RSS of the process (weights included) and minor page faults.

Settings (the issue's): Demon tanh, adaptive tau, ODE look-ahead of 20 steps, beta 0.1, CFG 2,
K 16, T 16, ode_after 0.11, reward = brightness of the decoded image; ours runs twice, with the
official look-ahead (Heun, 20 steps) and with our default (UniPC, 15 steps). DNO grad mode, eta 1,
CFG 5, gamma 0 (the official default: no regularizer), lr 0.01; the official code checkpoints
every UNet call ("official"), and runs again with its checkpoint.checkpoint call replaced by a
direct call ("official-nockpt", a monkeypatch in the shim); ours runs with checkpointing all
and none, eagerly and with --compile trace (the UNet call replayed by torch.jit.trace: "-trace"
arms; Demon's "ours-unipc15-trace" likewise), and with auto at each `--budgets-mb` (the steps
a budget keeps: floor(budget / the bytes one step keeps); 6.4 MB a step on this pipeline). A traced UNet skips its module's forward hooks, so
its calls are counted at the model's network call instead;
seconds, UNet calls and faults per iteration are (run of 3 iterations - run of 1) / 2 on both sides,
after a warm-up run (the first checkpointed call of a process imports torch._dynamo).
Unless --allocator default, both sides run with glibc's thresholds pinned through the
environment (MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296).

Only shims live here: the official code is imported from the checkout given, never copied. Its
Demon assumes Stable Diffusion's 8x VAE and a GPU: the shim hands it a `config` module (this
pipeline's folder, CPU, float32, an "image size" of 128 so that its latent is 16 x 16), stubs
torchvision (imported, not used on this path) and its consistency model (not used by the ODE
look-ahead; it would download LCM weights at import). Its DNO hard-codes 512 px noise in
main(): the shim runs main()'s optimization loop (AdamW, the official SequentialDDIM,
sequential_sampling and decode_latent, clipping at 1) on 16 x 16 noise, in float32 without
autocast, as main() does with --precision fp32.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a cat"
PINNED = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
ALLOCATOR_VARIABLES = (*PINNED, "NOISEALIGN_MALLOPT")


# ---- what one measured process does ---------------------------------------------------------

class UNetMeter:
    """Counts forward calls and samples of every UNet2DConditionModel alive in the process."""

    def __init__(self) -> None:
        from diffusers import UNet2DConditionModel

        self.calls = self.samples = 0
        for module in gc.get_objects():
            if isinstance(module, UNet2DConditionModel):
                module.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        import torch

        if torch.jit.is_tracing():          # recording a trace: count_traced_calls counts this call
            return
        self.calls += 1
        self.samples += len(args[0])


def count_traced_calls(model, meter: UNetMeter) -> None:
    """A traced network (compile "trace") runs no UNet forward hook after its trace: count its
    calls where the model calls the network (checkpoint recomputation included)."""
    traced = model.network

    def network(x_in, timestep, cond):
        meter.calls += 1
        meter.samples += len(x_in)
        return traced(x_in, timestep, cond)

    model.network = network


def _rusage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024, usage.ru_minflt        # MiB (ru_maxrss is KiB on Linux), faults


def measure(run, meter: UNetMeter) -> dict:
    """Seconds, UNet calls / samples and page faults of run(); peak RSS of the process so far."""
    calls, samples = meter.calls, meter.samples
    _, faults = _rusage()
    start = time.perf_counter()
    reward = run()
    seconds = time.perf_counter() - start
    peak, faults_after = _rusage()
    return {"seconds": seconds, "unet_calls": meter.calls - calls, "unet_samples": meter.samples - samples,
            "peak_rss_mb": peak, "minor_faults": faults_after - faults, "reward": reward}


def ours_demon(folder: str, solver: str = "heun", steps: int = 20, compile: str = "off") -> tuple:
    """noisealign's Demon with the issue's settings and the look-ahead given (the official code's:
    Heun, 20 steps; our default: UniPC, 15) and the compile mode; returns (run, meter)."""
    import torch

    from noisealign.budget import Ledger
    from noisealign.methods.base import Problem, RunContext
    from noisealign.methods.demon import Demon, DemonConfig
    from noisealign.models.diffusers_loading import load_diffusers_model
    from noisealign.rewards.simple import Brightness

    model = load_diffusers_model(folder, height=32, width=32, scheduler="karras", compile=compile)
    meter = UNetMeter()
    if compile == "trace":
        count_traced_calls(model, meter)
    problem = Problem(model, Brightness(), PROMPT, "", 2.0)
    config = DemonConfig(demon="tanh", K=16, beta=0.1, tau="adaptive", lookahead="ode", lookahead_solver=solver,
                         lookahead_steps=steps, ode_after=0.11, grid_points=16)

    def run() -> float:
        outcome = Demon(config).run(RunContext(problem, seed=0, ledger=Ledger()))
        return float(Brightness()(outcome.output, [PROMPT])[0])

    with torch.inference_mode():
        model.denoise(torch.zeros(1, *model.sample_shape), torch.tensor(1.0), model.encode_prompt(PROMPT))  # warm-up
    return run, meter


def official_demon(folder: str, official: str) -> tuple:
    """The official demon_sampling with the same settings, through its documented entry point."""
    import torch

    sys.modules["config"] = types.SimpleNamespace(
        FILE_PATH=folder, C_FILE_PATH=None, DTYPE=torch.float32, DEVICE=torch.device("cpu"), IMAGE_DIMENSION=128)
    _stub_torchvision()
    sys.path.insert(0, str(Path(official) / "src"))
    import karras

    karras.LatentConsistencyModel = lambda *args, **kwargs: None   # not used by the ODE look-ahead
    import api
    import utils

    def brightness(latents) -> list[float]:
        return utils.decode(latents).mean(dim=(1, 2, 3)).tolist()

    def run() -> float:
        torch.manual_seed(0)
        x = torch.randn(1, 4, 16, 16) * api.latent_sde.sigma_score.scheduler.init_noise_sigma
        sample = api.demon_sampling(x, brightness, {"prompts": [PROMPT], "cfgs": [2.0]}, beta=0.1, tau="adaptive",
                                    action_num=16, weighting="spin", sample_step=16, r_of_c="baseline", c_steps=20,
                                    ode_after=0.11)
        return brightness(sample)[0]

    with torch.inference_mode():
        api.get_f_g(torch.tensor(1.0), torch.zeros(1, 4, 16, 16),
                    {"conditions": utils.get_condition([PROMPT, ""]), "cfgs": [2.0]})   # warm-up
    return run, UNetMeter()


def ours_dno(folder: str, steps: int, checkpointing: str = "all", compile: str = "off",
             memory_budget: float | None = None) -> tuple:
    """noisealign's DNO (grad; checkpointing "all", "none" or "auto" with `memory_budget` GB; compile
    "off" or "trace"); run(iterations) returns the best reward."""
    import dataclasses

    from noisealign.budget import Ledger
    from noisealign.methods.base import Problem, RunContext
    from noisealign.methods.dno import Dno, DnoConfig
    from noisealign.models.diffusers_loading import load_diffusers_model
    from noisealign.rewards.simple import Brightness

    model = load_diffusers_model(folder, height=32, width=32, scheduler="ddim", compile=compile)
    meter = UNetMeter()
    if compile == "trace":
        count_traced_calls(model, meter)
    problem = Problem(model, Brightness(), PROMPT, "", 5.0)
    kind = {field.name: field.type for field in dataclasses.fields(DnoConfig)}["checkpointing"]
    if kind in (bool, "bool"):                    # before --checkpointing auto|all|none
        checkpointing = checkpointing == "all"

    def run(iterations: int) -> float:
        budget = {} if memory_budget is None else {"memory_budget": memory_budget}
        config = DnoConfig(mode="grad", steps=steps, eta=1.0, gamma=0.0, lr=0.01, iterations=iterations,
                           checkpointing=checkpointing, **budget)
        return Dno(config).run(RunContext(problem, seed=0, ledger=Ledger())).reward

    return run, meter


def official_dno(folder: str, official: str, steps: int, checkpointing: bool = True) -> tuple:
    """main()'s loop of the official dno_stable_diffusion.py on this pipeline's 16 x 16 latent; without
    checkpointing, its `checkpoint.checkpoint(unet, ...)` becomes a direct call `unet(...)`."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    _stub_torchvision()
    sys.modules["rewards"] = types.SimpleNamespace(RFUNCTIONS={})      # reward models with hard-coded paths
    sys.path.insert(0, official)
    import dno_stable_diffusion as dno

    if not checkpointing:           # the module's `import torch.utils.checkpoint as checkpoint`, shimmed here only
        dno.checkpoint = types.SimpleNamespace(checkpoint=lambda function, *args, use_reentrant=None: function(*args))
    pipeline = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    for part in (pipeline.vae, pipeline.text_encoder, pipeline.unet):
        part.requires_grad_(False)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.scheduler.set_timesteps(steps)
    prompt_embeds = pipeline._encode_prompt(PROMPT, "cpu", 1, True)

    def run(iterations: int) -> float:
        torch.manual_seed(0)
        noise_vectors = torch.randn(steps + 1, 4, 16, 16, requires_grad=True)
        optimizer = torch.optim.AdamW([{"params": noise_vectors, "lr": 0.01}])
        best = -float("inf")
        for _ in range(iterations):
            optimizer.zero_grad()
            sampler = dno.SequentialDDIM(timesteps=steps, scheduler=pipeline.scheduler, eta=1.0, cfg_scale=5.0,
                                         device="cpu", opt_timesteps=steps)
            sample = dno.sequential_sampling(pipeline, pipeline.unet, sampler, prompt_embeds=prompt_embeds,
                                             noise_vectors=noise_vectors)
            image = dno.decode_latent(pipeline.vae, sample)
            loss = -(image / 2 + 0.5).clamp(0, 1).mean()                 # brightness, as ours scores it
            best = max(best, -loss.item())
            loss.backward()
            torch.nn.utils.clip_grad_norm_([noise_vectors], 1.0)
            optimizer.step()
        return best

    return run, UNetMeter()


def _stub_torchvision() -> None:
    """torchvision is imported by the official modules, not used on the measured path. diffusers and
    transformers look for it when imported, so they are imported first and see it absent."""
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    torchvision, transforms = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    transforms.ToPILImage = transforms.ToTensor = lambda: None
    torchvision.transforms = transforms
    sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms})


def worker(spec: dict) -> dict:
    """One measured process: build the side's runner, time it, report."""
    if spec.get("mallopt"):                 # first, as the CLI would: before torch allocates
        from noisealign.cpu import tune_malloc

        tune_malloc()
    import torch

    torch.set_num_threads(spec["threads"])
    side, folder = spec["side"], spec["folder"]
    if spec["method"] == "demon":
        run, meter = (ours_demon(folder, *spec.get("lookahead", ("heun", 20)), spec.get("compile", "off"))
                      if side == "ours"
                      else official_demon(folder, spec["official"]))
        return measure(run, meter)
    if spec["method"] == "digits-demon":
        return measure(*ours_digits_demon())
    steps = spec["steps"]
    run, meter = (ours_dno(folder, steps, spec.get("checkpointing", "all"), spec.get("compile", "off"),
                           spec.get("memory_budget"))
                  if side == "ours" else official_dno(folder, spec["official"], steps, spec.get("checkpointing", True)))
    loaded = _resident_mb()                 # the pipeline loaded, no iteration run yet
    run(1)                                  # warm-up: the first checkpointed call imports torch._dynamo
    one, three = measure(lambda: run(1), meter), measure(lambda: run(3), meter)
    return {"seconds": (three["seconds"] - one["seconds"]) / 2,
            "unet_calls": (three["unet_calls"] - one["unet_calls"]) / 2,
            "unet_samples": (three["unet_samples"] - one["unet_samples"]) / 2,
            "peak_rss_mb": three["peak_rss_mb"], "above_load_mb": three["peak_rss_mb"] - loaded,
            "minor_faults": (three["minor_faults"] - one["minor_faults"]) / 2, "reward": three["reward"]}


def _resident_mb() -> float:
    """The process's resident memory now, in MiB (/proc/self/statm: pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2 ** 20


def ours_digits_demon() -> tuple:
    """Demon on the bundled digits model at budget 256 (digit:3): the allocator's second workload."""
    from noisealign.align import align
    from noisealign.methods.base import Problem
    from noisealign.methods.demon import Demon, DemonConfig
    from noisealign.models.registry import load_model
    from noisealign.rewards.registry import parse_reward

    problem = Problem(load_model("digits"), parse_reward("digit:3"))

    def run() -> float:
        return sum(align(problem, Demon(DemonConfig()), seed=seed, budget=256).final_reward for seed in range(4)) / 4

    return run, types.SimpleNamespace(calls=0, samples=0)          # no UNet in the digits model


# ---- the profile -----------------------------------------------------------------------------

class Phases:
    """Wall seconds inside the networks (forward hooks), the reward, backward passes and optimizer
    steps; UNet time inside a backward pass (checkpoint recomputation) is booked apart."""

    def __init__(self, models: list, reward) -> None:
        import torch
        from diffusers import UNet2DConditionModel
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        from transformers import CLIPTextModel

        self.seconds: dict[str, float] = {}
        self.in_backward = False
        for module in gc.get_objects():
            if isinstance(module, UNet2DConditionModel):
                self._time(module, lambda: "UNet (backward recompute)" if self.in_backward else "UNet forward")
            elif isinstance(module, CLIPTextModel):
                self._time(module, lambda: "prompt encoding")
        for model in models:
            self._time(model.decoder.vae.decoder, lambda: "VAE decode (backward recompute)" if self.in_backward
                       else "VAE decode")
        backward = torch.autograd.backward

        def timed_backward(*args, **kwargs):
            if self.in_backward:        # a reentrant checkpoint's backward inside the outer one
                return backward(*args, **kwargs)
            self.in_backward, start = True, time.perf_counter()
            try:
                return backward(*args, **kwargs)
            finally:
                self.in_backward = False
                self.add("backward pass (all of it)", time.perf_counter() - start)

        torch.autograd.backward = timed_backward
        starts = {}
        register_optimizer_step_pre_hook(lambda *a: starts.update(step=time.perf_counter()))
        register_optimizer_step_post_hook(
            lambda *a: self.add("optimizer step", time.perf_counter() - starts["step"]))
        call = reward.__call__

        def timed_reward(outputs, prompts):
            start = time.perf_counter()
            try:
                return call(outputs, prompts)
            finally:
                self.add("reward", time.perf_counter() - start)

        self.reward = _CallableReward(reward, timed_reward)

    def _time(self, module, name) -> None:
        starts = []
        module.register_forward_pre_hook(lambda *a: starts.append(time.perf_counter()))
        module.register_forward_hook(lambda *a: self.add(name(), time.perf_counter() - starts.pop()))

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


class _CallableReward:
    """A reward with the same name and differentiability whose calls are timed."""

    def __init__(self, reward, call) -> None:
        self.name, self.differentiable, self._call = reward.name, reward.differentiable, call

    def __call__(self, outputs, prompts):
        return self._call(outputs, prompts)


class OpCounter:
    """Counts the aten ops a block dispatches: all, and outside the networks those on float64 and the
    reads of a tensor's value (.item(), float(t): a device sync on a GPU unless the tensor is on the
    CPU, as the float64 sigma grids are)."""

    def __init__(self) -> None:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.counts = dict.fromkeys(("ops", "outside", "float64", "reads", "float64 reads"), 0)
        self.depth = 0          # > 0 inside a network's forward
        reads = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)  # item: in inference mode

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
                counter.counts["ops"] += 1
                if counter.depth == 0:
                    tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
                    double = any(t.dtype == torch.float64 for t in tensors)
                    read = func in reads
                    for key, hit in (("outside", True), ("float64", double), ("reads", read),
                                     ("float64 reads", read and double)):
                        counter.counts[key] += hit
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    def watch(self, module) -> None:
        module.register_forward_pre_hook(lambda *a: setattr(self, "depth", self.depth + 1))
        module.register_forward_hook(lambda *a: setattr(self, "depth", self.depth - 1))


def profile(folder: str, threads: int) -> None:
    """Shares of one Demon step (the first, sigma_max: its look-ahead is the longest; Heun 20 and UniPC
    15) and one DNO iteration (50 steps, checkpointed and not; the difference of a 2- and a
    1-iteration run) on the tiny pipeline."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from noisealign.budget import Ledger
    from noisealign.methods.base import Problem, RunContext
    from noisealign.methods.demon import DemonConfig, DemonSession
    from noisealign.methods.dno import Dno, DnoConfig
    from noisealign.models.diffusers_loading import load_diffusers_model
    from noisealign.rewards.simple import Brightness

    torch.set_num_threads(threads)
    demon_model = load_diffusers_model(folder, height=32, width=32, scheduler="karras")
    dno_model = load_diffusers_model(folder, height=32, width=32, scheduler="ddim")
    phases = Phases([demon_model, dno_model], Brightness())
    def demon_step(solver: str = "heun", steps: int = 20) -> None:
        config = DemonConfig(demon="tanh", K=16, beta=0.1, lookahead_solver=solver, lookahead_steps=steps,
                             ode_after=0.11, grid_points=16)
        context = RunContext(Problem(demon_model, phases.reward, PROMPT, "", 2.0), seed=0, ledger=Ledger())
        with torch.inference_mode():
            session = DemonSession(context, config)
            session.choose(context.score(session.propose()))

    def dno_run(iterations: int, checkpointing: bool = True) -> None:
        context = RunContext(Problem(dno_model, phases.reward, PROMPT, "", 5.0), seed=0, ledger=Ledger())
        config = DnoConfig(mode="grad", steps=50, gamma=0.0, iterations=iterations, checkpointing=checkpointing)
        Dno(config).run(context)

    demon_step()                                   # warm-up
    rows = []
    for label, block in (("Demon step (K 16, look-ahead 20 Heun steps)", [demon_step]),
                         ("Demon step (K 16, look-ahead 15 UniPC steps)", [lambda: demon_step("unipc", 15)]),
                         ("DNO iteration (50 steps, checkpointed)", [lambda: dno_run(2), lambda: dno_run(1)]),
                         ("DNO iteration (50 steps, no checkpointing)",
                          [lambda: dno_run(2, False), lambda: dno_run(1, False)])):
        totals, parts = [], []
        for run in block:
            phases.seconds = {}
            start = time.perf_counter()
            run()
            totals.append(time.perf_counter() - start)
            parts.append(dict(phases.seconds))
        total = totals[0] - (totals[1] if len(totals) > 1 else 0)
        shares = {k: parts[0].get(k, 0) - (parts[1].get(k, 0) if len(parts) > 1 else 0)
                  for k in set().union(*parts)}
        counter = OpCounter()
        for module in gc.get_objects():
            if isinstance(module, (UNet2DConditionModel, AutoencoderKL, CLIPTextModel)):
                counter.watch(module)
        counts = []
        for run in block:
            counter.counts = dict.fromkeys(counter.counts, 0)
            with counter.mode:
                run()
            counts.append(dict(counter.counts))
        ops = {k: v - (counts[1][k] if len(counts) > 1 else 0) for k, v in counts[0].items()}
        rows.append((label, total, shares, ops))
    print(f"profile: tiny SD 1.x pipeline, 32 px, {threads} thread(s); wall seconds (shared machine)")
    for label, total, shares, ops in rows:
        print(f"\n{label}: {total:.3f} s")
        backward = shares.pop("backward pass (all of it)", 0.0)
        recompute = sum(v for k, v in shares.items() if "recompute" in k)
        for name, seconds in sorted(shares.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<34} {seconds:8.3f} s  {100 * seconds / total:5.1f}%")
        if backward:
            print(f"  {'backward (autograd, w/o recompute)':<34} {backward - recompute:8.3f} s  "
                  f"{100 * (backward - recompute) / total:5.1f}%")
        rest = total - sum(shares.values()) - (backward - recompute if backward else 0)
        print(f"  {'everything else (ours + glue)':<34} {rest:8.3f} s  {100 * rest / total:5.1f}%")
        print(f"  aten ops {ops['ops']}, outside the networks {ops['outside']}, of them on float64 {ops['float64']}; "
              f"reads of a value (.item / float()) {ops['reads']}, {ops['float64 reads']} of them float64")


# ---- the orchestrating process -----------------------------------------------------------------

def spawn(spec: dict, environ: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
    env.update(environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(spec["threads"]))
    out = subprocess.run([sys.executable, __file__, "_worker", json.dumps(spec)], env=env, capture_output=True,
                         text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"{spec['side']} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def alternate(arms: dict[str, tuple[dict, dict]], repeats: int) -> dict[str, list[dict]]:
    """Run each arm `repeats` times, the order of the arms reversed every other round."""
    names, results = list(arms), {name: [] for name in arms}
    for round_ in range(repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            spec, environ = arms[name]
            results[name].append(spawn(spec, environ))
            print(f"  round {round_ + 1} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[name][-1].items()),
                  flush=True)
    return results


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def report(label: str, results: dict[str, list[dict]], baseline: str, other: str) -> str:
    """A markdown row: medians of both arms and the ratios other / baseline."""
    cells = [label]
    for key, fmt in COLUMNS:
        if key not in results[baseline][0]:
            continue
        a, b = median(results[baseline], key), median(results[other], key)
        ratio = f" ({b / a:.2f})" if a > 0 and b >= 0 else ""     # DNO's per-iteration faults can be < 0: noise
        cells.append(f"{fmt.format(a)} / {fmt.format(b)}{ratio}")
    return "| " + " | ".join(cells) + " |"


COLUMNS = (("seconds", "{:.3f}"), ("unet_calls", "{:.0f}"), ("unet_samples", "{:.0f}"), ("peak_rss_mb", "{:.0f}"),
           ("above_load_mb", "{:.0f}"), ("minor_faults", "{:.0f}"), ("reward", "{:.5f}"))
HEADER = ("| run | seconds {0} | UNet calls {0} | UNet samples {0} | peak RSS MB {0} | minor faults {0} "
          "| reward {0} |\n|---|---|---|---|---|---|---|")
DNO_HEADER = ("| run | seconds {0} | UNet calls {0} | UNet samples {0} | peak RSS MB {0} | peak RSS above the loaded "
              "pipeline MB {0} | minor faults {0} | reward {0} |\n|---|---|---|---|---|---|---|---|")


def save_pipeline(folder: str) -> str:
    """tests/diffusers_tiny.py's SD 1.x pipeline, saved to `folder` for both sides to load."""
    sys.path.insert(0, str(ROOT / "tests"))
    import diffusers_tiny as tiny

    tiny.sd_pipeline().save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["demon", "dno", "allocator", "profile", "_worker"])
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--official", help="path of a local checkout of the official code")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads of every run")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50], help="DNO sampler steps")
    parser.add_argument("--budgets-mb", type=float, nargs="*", default=[],
                        help="DNO: also ours with --checkpointing auto --memory-budget B MB for each B (the "
                             "time / memory curve between all and none)")
    parser.add_argument("--allocator", choices=["pinned", "default"], default="pinned",
                        help="glibc's malloc thresholds for both sides (demon, dno)")
    args = parser.parse_args(argv)
    if args.what == "_worker":
        print("RESULT " + json.dumps(worker(json.loads(args.spec))), flush=True)
        return
    if args.what in ("demon", "dno") and not args.official:
        parser.error(f"{args.what} needs --official PATH (a checkout of the official code)")
    with tempfile.TemporaryDirectory(prefix="noisealign-peer-sd-") as folder:
        if args.what == "profile":
            profile(save_pipeline(folder), args.threads)
        else:
            compare(args, save_pipeline(folder))


def compare(args: argparse.Namespace, folder: str) -> None:
    """The alternating runs of `args.what` and their table."""
    environ = PINNED if args.allocator == "pinned" else {}
    base = {"folder": folder, "threads": args.threads, "official": args.official}
    rows = []
    if args.what == "demon":
        lookaheads = {"ours-heun20": ("heun", 20), "ours-unipc15": ("unipc", 15)}   # official's; our default
        arms = {"official": ({**base, "method": "demon", "side": "official"}, environ),
                **{name: ({**base, "method": "demon", "side": "ours", "lookahead": lookahead}, environ)
                   for name, lookahead in lookaheads.items()},
                "ours-unipc15-trace": ({**base, "method": "demon", "side": "ours", "lookahead": ("unipc", 15),
                                        "compile": "trace"}, environ)}
        results = alternate(arms, args.repeats)
        rows.append(report("Demon K 16, T 16, one image: ours look-ahead Heun 20", results, "official", "ours-heun20"))
        rows.append(report("Demon K 16, T 16, one image: ours look-ahead UniPC 15", results, "official",
                           "ours-unipc15"))
        rows.append(report("Demon K 16, T 16, one image: ours look-ahead UniPC 15, compile trace", results, "official",
                           "ours-unipc15-trace"))
        rows.append(report("(ours UniPC 15 against ours Heun 20)", results, "ours-heun20", "ours-unipc15"))
        rows.append(report("(ours UniPC 15 traced against eager)", results, "ours-unipc15", "ours-unipc15-trace"))
    elif args.what == "dno":
        for steps in args.steps:
            dno = {**base, "method": "dno", "steps": steps}
            arms = {"official": ({**dno, "side": "official"}, environ),
                    "official-nockpt": ({**dno, "side": "official", "checkpointing": False}, environ),
                    **{f"ours-{mode}{suffix}": ({**dno, "side": "ours", "checkpointing": mode, "compile": compile},
                                                environ)
                       for mode in ("all", "none") for suffix, compile in (("", "off"), ("-trace", "trace"))},
                    **{f"ours-auto-{budget:g}MB": ({**dno, "side": "ours", "checkpointing": "auto",
                                                    "memory_budget": budget / 1000}, environ)
                       for budget in args.budgets_mb}}
            results = alternate(arms, args.repeats)
            label = f"DNO {steps} steps, per iteration"
            rows.append(report(f"{label}, official without checkpointing", results, "official", "official-nockpt"))
            for mode in ("all", "none"):
                for suffix, compiled in (("", ""), ("-trace", ", compile trace")):
                    rows.append(report(f"{label}, ours checkpointing {mode}{compiled}", results,
                                       "official", f"ours-{mode}{suffix}"))
            for budget in args.budgets_mb:
                rows.append(report(f"{label}, ours checkpointing auto, --memory-budget {budget / 1000:g}", results,
                                   "official", f"ours-auto-{budget:g}MB"))
            for suffix, compiled in (("", ""), ("-trace", ", compile trace")):
                rows.append(report(f"{label}, ours checkpointing none{compiled} against official-nockpt", results,
                                   "official-nockpt", f"ours-none{suffix}"))
            for mode in ("all", "none"):
                rows.append(report(f"({label}, ours checkpointing {mode}: traced against eager)", results,
                                   f"ours-{mode}", f"ours-{mode}-trace"))
    else:
        for method, label in (("demon", "Demon K 16, T 16, SD tiny"), ("digits-demon", "Demon B 256, digits, 4 seeds")):
            spec = {**base, "method": method, "side": "ours"}
            arms = {"default": (spec, {"NOISEALIGN_MALLOPT": "0"}), "environment": (spec, PINNED),
                    "mallopt": ({**spec, "mallopt": True}, {})}
            results = alternate(arms, args.repeats)
            rows.append(report(f"{label}: environment", results, "default", "environment"))
            rows.append(report(f"{label}: mallopt", results, "default", "mallopt"))
    print(f"\n{args.what}: medians of {args.repeats} alternating runs, {args.threads} thread(s), "
          f"allocator {args.allocator if args.what != 'allocator' else 'as labelled'}; in each row A is the "
          f"baseline arm (the official code, or the arm a row says 'against'; glibc's defaults for the "
          f"allocator), B the row's arm")
    print((DNO_HEADER if args.what == "dno" else HEADER).format("A / B (B / A)"))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
