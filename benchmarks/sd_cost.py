"""What a Demon step and a DNO iteration cost on Stable Diffusion 1.5's networks (random weights).

Cost depends on the architecture and resolution, not on the weights, so an SD 1.5-shaped
UNet (block_out_channels 320/640/1280/1280, cross-attention 768) and VAE are built from
their configs with random weights and driven through noisealign's own wrapper
(VPDiffusersModel) and engine. The text encoder is replaced by fixed random embeddings of
CLIP's shape (1, 77, 768); guidance 7.5, so every denoiser call is two UNet evaluations.

- Demon step (algorithms.md, section 2, `tweedie` look-ahead): D(x) once at batch 1, K
  candidates by the beta-SDE step, D at sigma_next on the K candidates as one batch, K VAE
  decodes; the reward model's own cost is not included (it depends on the reward).
- DNO iteration (section 3): forward through a DDIM(eta=1) chain of `--dno-steps` steps from
  (z_T, z_1..z_n), each denoiser call and the VAE decode under gradient checkpointing, then
  backward to all noises; the loss is the mean pixel (a stand-in for a differentiable reward).

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
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from noisealign.engine import beta_sde_step, karras_sigmas, sample_ancestral, tweedie_lookahead  # noqa: E402
from noisealign.models.base import Denoiser  # noqa: E402

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


def demon_step(model, denoiser: Denoiser, K: int, beta: float = 0.1) -> None:
    """One Demon step at a mid-grid sigma of the paper's Karras grid (T = 64), tweedie look-ahead."""
    sigmas = karras_sigmas(64, model.sigma_min, model.sigma_max)
    sigma, sigma_next = float(sigmas[20]), float(sigmas[21])
    x = sigma * torch.randn(1, *model.sample_shape, device=model.device)
    denoised = denoiser(x, sigma)                                     # 1 call, batch 1
    z = torch.randn(K, *model.sample_shape, device=model.device)
    candidates = beta_sde_step(x, sigma, sigma_next, denoised, z, beta)
    clean = tweedie_lookahead(denoiser, candidates, sigma_next)       # K calls as one batch
    model.decode(clean)                                               # K decodes (chunked)


def dno_iteration(model, denoiser: Denoiser, steps: int) -> None:
    """Forward through DDIM(eta=1) with checkpointed denoiser calls and decode, then backward."""
    sigmas = model.sigmas(steps)
    shape = (1, *model.sample_shape)
    z_T = torch.randn(shape, device=model.device, requires_grad=True)
    noises = [torch.randn(shape, device=model.device, requires_grad=True) for _ in range(steps)]

    def checkpointed(x, sigma):
        return checkpoint(denoiser, x, sigma, use_reentrant=False)

    x0 = sample_ancestral(checkpointed, model.prior_std(float(sigmas[0])) * z_T, sigmas, noises, eta=1.0)
    image = checkpoint(model.decode, x0, use_reentrant=False)
    (-image.mean()).backward()


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
        ("denoiser call, batch 1 (CFG)", 2, lambda: denoiser(latents(1), 1.0)),
        (f"VAE decode, batch {K}", 0, lambda: model.decode(latents(K))),
        (f"Demon step, K={K}, tweedie", 2 + 2 * K, lambda: demon_step(model, denoiser, K)),
        (f"DNO iteration, {dno_steps} DDIM steps", 2 * dno_steps, lambda: dno_iteration(model, denoiser, dno_steps)),
    ]
    print(f"SD 1.5-shaped UNet + VAE, random weights | device {args.device} | {args.dtype} | {size} px "
          f"(latent {model.sample_shape}) | torch threads {torch.get_num_threads()}")
    print(f"{'phase':<34} {'UNet evals':>10} {'seconds':>9} {'CPU s':>9} {'peak GB':>8}")
    for label, evals, job in jobs:
        grad = label.startswith("DNO")
        with torch.set_grad_enabled(grad):
            if gpu:
                job()  # warm-up (kernel selection, allocator)
            meters = []
            for _ in range(repeats):
                with Meter(args.device) as meter:
                    job()
                meters.append(meter)
        best = min(meters, key=lambda m: m.seconds)
        print(f"{label:<34} {evals:>10} {best.seconds:>9.2f} {best.cpu_seconds:>9.2f} {best.peak_gb:>8.2f}", flush=True)
    print("UNet evals: forward evaluations (CFG counts two); CPU s: process CPU time (host side on a GPU)")


if __name__ == "__main__":
    main()
