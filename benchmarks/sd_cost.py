"""What a Demon step and a DNO iteration cost on Stable Diffusion 1.5's networks (random weights).

Cost depends on the architecture and resolution, not on the weights, so an SD 1.5-shaped
UNet (block_out_channels 320/640/1280/1280, cross-attention 768) and VAE are built from
their configs with random weights and driven through noisealign's own wrapper
(VPDiffusersModel) and engine. The text encoder is replaced by fixed random embeddings of
CLIP's shape (1, 77, 768); guidance 7.5, so every denoiser call is two UNet evaluations.

- Demon step: noisealign's own `DemonSession` (propose, score, choose) at its first grid point
  sigma_max, where the ODE look-ahead is longest (c_steps = 20: 21 Heun points, 41 denoiser
  calls per candidate); with the `tweedie` look-ahead one call per candidate. K candidates,
  K VAE decodes. The reward is `brightness`, so the reward model's own cost is not included.
- DNO iteration: noisealign's own `Dno` (grad mode, DDIM eta = 1, `--dno-steps` steps, each
  denoiser call and the VAE decode checkpointed): the time of a 3-iteration run minus a
  1-iteration run, over 2, so set-up and the final regeneration cancel out.

    python benchmarks/sd_cost.py                                  # CPU, reduced size
    python benchmarks/sd_cost.py --device cuda --dtype fp16       # 512 px, 50 DDIM steps

Peak memory is the CUDA allocator's peak on a GPU and the process's peak RSS on a CPU
(weights included). On a shared CPU, wall seconds include waiting for other processes;
CPU seconds (process time) do not.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from noisealign.budget import Ledger  # noqa: E402
from noisealign.methods.base import Problem, RunContext  # noqa: E402
from noisealign.methods.demon import DemonConfig, DemonSession  # noqa: E402
from noisealign.methods.dno import Dno, DnoConfig  # noqa: E402
from noisealign.models.base import Denoiser  # noqa: E402
from noisealign.rewards.simple import Brightness  # noqa: E402

SD15_SCHEDULER = dict(_class_name="PNDMScheduler", num_train_timesteps=1000, beta_start=0.00085,
                      beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                      set_alpha_to_one=False, skip_prk_steps=True)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sd15_model(size: int, device: str, dtype: torch.dtype):
    """noisealign's VP wrapper around an SD 1.5-shaped UNet and VAE with random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from noisealign.models.diffusers_base import FamilyDefaults, LatentDecoder
    from noisealign.models.diffusers_vp import VPDiffusersModel, unet_network

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.5's config otherwise default
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512, scaling_factor=0.18215)
    for module in (unet, vae):
        module.to(device=device, dtype=dtype).requires_grad_(False).eval()
    text = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    blank = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(2)).to(device, dtype)

    def encoder(prompt: str) -> dict:
        return {"encoder_hidden_states": blank if prompt == "" else text}

    return VPDiffusersModel("sd15-shaped-random", unet_network(unet), encoder, LatentDecoder(vae),
                            (4, size // 8, size // 8), FamilyDefaults(50, 7.5), torch.device(device), dtype,
                            scheduler_config=SD15_SCHEDULER, scheduler="ddim")


class Meter:
    """Wall seconds and peak memory of a block (synchronizing CUDA)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start
        if self.cuda:
            self.peak_gb = torch.cuda.max_memory_allocated() / 2 ** 30
        else:  # ru_maxrss is in KiB on Linux
            self.peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _context(model) -> RunContext:
    return RunContext(Problem(model, Brightness(), "prompt", "", 7.5), seed=0, ledger=Ledger())


def demon_step(model, K: int, lookahead: str) -> Ledger:
    """Demon's first step (sigma_max): K candidates, their look-aheads and decodes, the choice."""
    context = _context(model)
    session = DemonSession(context, DemonConfig(K=K, lookahead=lookahead, candidate_batch=K))
    with torch.inference_mode():
        session.choose(context.score(session.propose()))
    return context.ledger


def dno_run(model, steps: int, iterations: int) -> Ledger:
    """A whole DNO run of `iterations` gradient steps (plus its set-up and final regeneration)."""
    context = _context(model)
    Dno(DnoConfig(mode="grad", steps=steps, iterations=iterations)).run(context)
    return context.ledger


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=DTYPES)
    parser.add_argument("--size", type=int, default=None, help="pixels (default 512 on GPU, 128 on CPU)")
    parser.add_argument("--K", type=int, default=16, help="Demon candidates per step")
    parser.add_argument("--dno-steps", type=int, default=None, help="DDIM steps (default 50 on GPU, 4 on CPU)")
    parser.add_argument("--decode-chunk", type=int, default=4, help="VAE decodes per batch")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs, the fastest reported (default 3 after a warm-up on GPU, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--lookaheads", nargs="+", choices=["tweedie", "ode"], default=["tweedie", "ode"],
                        help="Demon look-aheads to time (the ODE one costs ~40x Tweedie's at sigma_max)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    size = args.size or (512 if gpu else 128)
    dno_steps = args.dno_steps or (50 if gpu else 4)
    repeats = args.repeats or (3 if gpu else 1)

    model = sd15_model(size, args.device, DTYPES[args.dtype])
    model.decoder.chunk = args.decode_chunk
    denoiser = Denoiser(model, model.encode_prompt("prompt"), model.encode_prompt(""), guidance=7.5)
    K = args.K

    def latents(batch: int):
        return torch.randn(batch, *model.sample_shape, device=model.device)

    jobs = [
        ("denoiser call, batch 1 (CFG)", lambda: denoiser(latents(1), 1.0)),
        (f"VAE decode, batch {K}", lambda: model.decode(latents(K))),
        *[(f"Demon step, K={K}, {name}" + (" (sigma_max)" if name == "ode" else ""),
           lambda name=name: demon_step(model, K, name)) for name in args.lookaheads],
        (f"DNO run, {dno_steps} steps, 1 iteration", lambda: dno_run(model, dno_steps, 1)),
        (f"DNO run, {dno_steps} steps, 3 iterations", lambda: dno_run(model, dno_steps, 3)),
    ]
    print(f"SD 1.5-shaped UNet + VAE, random weights | device {args.device} | {args.dtype} | {size} px "
          f"(latent {model.sample_shape}) | torch threads {torch.get_num_threads()}")
    print(f"{'phase':<38} {'UNet evals':>10} {'seconds':>9} {'CPU s':>9} {'peak GB':>8}")
    results = {}
    for label, job in jobs:
        if gpu:
            job()  # warm-up (kernel selection, allocator)
        meters = []
        for _ in range(repeats):
            with Meter(args.device) as meter:
                ledger = job()
            meters.append(meter)
        best = min(meters, key=lambda m: m.seconds)
        results[label] = best
        evals = ledger.network_evaluations if isinstance(ledger, Ledger) else (2 if "denoiser" in label else 0)
        print(f"{label:<38} {evals:>10} {best.seconds:>9.2f} {best.cpu_seconds:>9.2f} {best.peak_gb:>8.2f}", flush=True)
    one, three = (results[f"DNO run, {dno_steps} steps, {n}"] for n in ("1 iteration", "3 iterations"))
    print(f"{'=> DNO seconds per iteration':<38} {'':>10} {(three.seconds - one.seconds) / 2:>9.2f}")
    print("UNet evals: network evaluations the ledger counted (CFG counts two; DNO's include the "
          "checkpoint recomputation); CPU s: process CPU time (host side on a GPU)")


if __name__ == "__main__":
    main()
