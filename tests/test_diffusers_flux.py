"""Flow models in the EDM engine, FLUX's packing and guidance, and each family's spec.

The stochastic flow sampler is the engine's ancestral step on x = x_t / (1 - t) (see
models/diffusers_flow.py). Proven two ways: with an exact Gaussian denoiser wrapped as a flow
model, the ODE and the ancestral sampler (and Demon's beta-SDE) reach the data's marginals;
and on a tiny FLUX pipeline, one ancestral step is the flow's own DDPM step, computed here in
flow coordinates with diffusers' packing and the transformer called directly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers_tiny as tiny  # noqa: E402
from diffusers_tiny import load, one_thread, saved  # noqa: E402, F401 (one_thread: an autouse fixture)
from noisealign.budget import CountedDenoiser, Ledger  # noqa: E402
from noisealign.engine import (ancestral_sigmas, ancestral_step, karras_sigmas, sample_ancestral,  # noqa: E402
                               sample_beta_sde, sample_ode)
from noisealign.errors import NoiseAlignError  # noqa: E402
from noisealign.methods.demon import DemonConfig  # noqa: E402
from noisealign.models.base import make_denoiser  # noqa: E402
from noisealign.models.diffusers_base import FamilyDefaults  # noqa: E402
from noisealign.models.diffusers_flow import FlowDiffusersModel  # noqa: E402
from noisealign.models.diffusers_flux import pack_latents, token_positions, unpack_latents  # noqa: E402
from noisealign.models.diffusers_loading import inspect_pipeline  # noqa: E402

PROMPT = "a cat"
FLUX_DEV_SCHEDULE = dict(use_dynamic_shifting=True, shift=3.0, base_shift=0.5, max_shift=1.15,
                         base_image_seq_len=256, max_image_seq_len=4096)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved tiny pipelines, one per flow family and SD for contrast."""
    pipes = {"flux-dev": tiny.flux_pipeline("dev"), "flux-schnell": tiny.flux_pipeline("schnell"),
             "sd3": tiny.sd3_pipeline(), "sd3.5": tiny.sd3_pipeline(sd35=True), "sd": tiny.sd_pipeline()}
    return {name: saved(pipe, tmp_path_factory, name) for name, pipe in pipes.items()}


def gaussian_flow_model(mean: float, std: float) -> FlowDiffusersModel:
    """FLUX.1-dev's flow wrapper around the exact velocity of data N(mean, std^2) per element.

    Under x_t = (1 - t) x0 + t eps, x_t ~ N((1 - t) mean, (1 - t)^2 std^2 + t^2), and the
    network returns v = E[eps | x_t] - E[x0 | x_t] at its timestep t (FLUX's units).
    """
    def velocity(x_t, timestep, cond):
        t = timestep.reshape(-1, 1, 1, 1)
        variance = (1 - t) ** 2 * std ** 2 + t ** 2
        centred = x_t - (1 - t) * mean
        return t / variance * centred - (mean + (1 - t) * std ** 2 / variance * centred)

    return FlowDiffusersModel("gaussian", velocity, lambda prompt: {}, lambda x0: x0, (1, 8, 8),
                              FamilyDefaults(28, 1.0), torch.device("cpu"), torch.float32,
                              scheduler_config=FLUX_DEV_SCHEDULE, scheduler="euler", image_tokens=16,
                              timestep_scale=1.0, linspace_times=True)


def run_sampler(model, sampler: str, sigmas, batch: int, generator, check_step) -> torch.Tensor:
    """A batch from x_T = prior_std z along `sigmas`; check_step(sigma, x_t) at every grid point."""
    denoiser = make_denoiser(model, "")
    x = model.prior_std(float(sigmas[0])) * torch.randn(batch, *model.sample_shape, generator=generator)

    def callback(i, sigma, x_i, denoised):
        check_step(sigma, x_i / (1 + sigma))

    noises = [torch.randn(batch, *model.sample_shape, generator=generator) for _ in range(len(sigmas) - 1)]
    if sampler == "ode":
        return sample_ode(denoiser, x, sigmas, solver="euler", callback=callback)
    if sampler == "ancestral":
        return sample_ancestral(denoiser, x, sigmas, noises, eta=1.0, callback=callback)
    return sample_beta_sde(denoiser, x, sigmas, noises, DemonConfig().beta_for(model), callback=callback)


@pytest.mark.parametrize("sampler", ["ode", "ancestral"])
def test_flow_samplers_are_exact_on_a_point_mass(sampler):
    """Data at one point M: D = M exactly at every t, so both samplers must give the flow's
    marginal x_t = (1 - t) M + t eps at every grid point, however few the steps. A wrong time
    conversion (0.95 t: caught), prior scale or sigma grid breaks it (2048 x 64 draws:
    standard errors 0.003 in the mean, 0.2% in the std)."""
    model, generator = gaussian_flow_model(mean=0.3, std=0.0), torch.Generator().manual_seed(0)

    def check_step(sigma, x_t):
        t = sigma / (1 + sigma)
        assert abs(float(x_t.mean()) - (1 - t) * 0.3) < 0.012 and abs(float(x_t.std()) / t - 1) < 0.01

    sample = run_sampler(model, sampler, model.sigmas(4), 2048, generator, check_step)
    assert torch.allclose(sample, torch.full_like(sample, 0.3), atol=1e-5)


@pytest.mark.parametrize("sampler, step_tolerance", [("ode", 0.03), ("ancestral", 0.03), ("beta-sde", 0.05)])
def test_flow_samplers_keep_the_data_marginals(sampler, step_tolerance):
    """Data N(0.3, 0.5^2): the Euler ODE and the ancestral sampler on the model's own (shifted)
    grid, and Demon's beta-SDE on its Karras grid, all stay on the flow's marginals and end at
    the data's; first-order samplers, so 200 steps leave about 1.5% of the std. A mis-scaled
    x_t, which the point mass cannot see, breaks it (1.02 x_t: caught). Euler-Maruyama
    on the beta-SDE's Langevin part inflates the high-sigma marginals most (2.5% here; 35% on
    a 20-point grid, 19% on SD's range: docs/models.md)."""
    model, generator = gaussian_flow_model(mean=0.3, std=0.5), torch.Generator().manual_seed(1)
    sigmas = (karras_sigmas(200, model.sigma_min, model.sigma_max) if sampler == "beta-sde"
              else model.sigmas(200))

    def check_step(sigma, x_t):
        t = sigma / (1 + sigma)
        assert abs(float(x_t.std()) / math.sqrt((1 - t) ** 2 * 0.25 + t ** 2) - 1) < step_tolerance

    sample = run_sampler(model, sampler, sigmas, 512, generator, check_step)
    assert abs(float(sample.mean()) - 0.3) < 0.012 and abs(float(sample.std()) - 0.5) < 0.015


def test_ancestral_step_is_the_flows_ddpm_step(folders):
    """One engine ancestral step (eta 1) on x = x_t / (1 - t), mapped back, is the flow's DDPM
    step x_t' = (1 - t') x0 + t' (sqrt(1 - c^2) eps + c z), c^2 = 1 - (sigma' / sigma)^2, with
    x0 and eps from the FLUX transformer called as FluxPipeline calls it."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folders["flux-dev"])
    model = load(folders["flux-dev"])
    t, t_next = 0.8, 0.5
    sigma, sigma_next = t / (1 - t), t_next / (1 - t_next)
    generator = torch.Generator().manual_seed(0)
    x_t, z = (torch.randn(1, *model.sample_shape, generator=generator) for _ in range(2))
    with torch.no_grad():
        x = x_t * (1 + sigma)
        denoised = model.denoise(x, torch.tensor(sigma), make_denoiser(model, PROMPT, 3.5).cond)
        ours = ancestral_step(x, sigma, sigma_next, denoised, z, eta=1.0) / (1 + sigma_next)

        embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, None, max_sequence_length=512)
        channels, rows, columns = model.sample_shape
        velocity = pipe.transformer(
            hidden_states=pipe._pack_latents(x_t, 1, channels, rows, columns), timestep=torch.tensor([t]),
            guidance=torch.tensor([3.5]), pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
            img_ids=pipe._prepare_latent_image_ids(1, rows // 2, columns // 2, "cpu", torch.float32),
            return_dict=False)[0]
        velocity = pipe._unpack_latents(velocity, tiny.SIZE, tiny.SIZE, pipe.vae_scale_factor)
    x0, eps = x_t - t * velocity, x_t + (1 - t) * velocity
    c = math.sqrt(1 - (sigma_next / sigma) ** 2)
    assert c == pytest.approx(ancestral_sigmas(sigma, sigma_next, 1.0)[1] / sigma_next)
    reference = (1 - t_next) * x0 + t_next * (math.sqrt(1 - c ** 2) * eps + c * z)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_packing_and_positions_match_diffusers():
    """Our 2x2 packing, its inverse and the token positions are FluxPipeline's."""
    from diffusers import FluxPipeline

    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    assert torch.equal(token_positions(3, 4), FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))


def test_guidance_belongs_to_the_model(folders):
    """SD: classifier-free guidance, two evaluations; FLUX.1-dev: the scale is an input of one
    evaluation; FLUX.1-schnell: no guidance. Negative prompts only where there is CFG."""
    dev, schnell, sd = (load(folders[name]) for name in ("flux-dev", "flux-schnell", "sd"))
    ledger = Ledger()
    x = torch.randn(2, *dev.sample_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        low, high = (CountedDenoiser(make_denoiser(dev, PROMPT, g), ledger)(x, 2.0) for g in (1.0, 5.0))
        default = make_denoiser(dev, PROMPT)(x, 2.0)
    assert ledger.network_evaluations == ledger.nfe == 4 and (low - high).abs().max() > 1e-3
    assert torch.equal(default, dev.denoise(x, torch.tensor(2.0), dev.encode_prompt(PROMPT)))  # 3.5 by default
    assert make_denoiser(sd, PROMPT, 5.0, "blurry").evaluations_per_call == 2
    assert make_denoiser(schnell, PROMPT).evaluations_per_call == 1
    for model, options, message in [(dev, {"negative_prompt": "blurry"}, "no negative prompt"),
                                    (schnell, {"negative_prompt": "blurry"}, "no negative prompt"),
                                    (schnell, {"guidance": 3.5}, "takes no guidance")]:
        with pytest.raises(NoiseAlignError, match=message):
            make_denoiser(model, PROMPT, **options)


@pytest.mark.parametrize("family, spec, steps, guidance, kind, few_step", [
    ("flux-dev", "flux-dev", 28, 3.5, "distilled", False),
    ("flux-schnell", "flux-schnell", 4, 1.0, "none", True),
    ("sd3", "sd3", 28, 7.0, "cfg", False),
    ("sd3.5", "sd3.5-medium", 40, 4.5, "cfg", False),
])
def test_family_is_read_from_the_configs(family, spec, steps, guidance, kind, few_step, folders):
    """FLUX.1-schnell is few-step by its spec (no guidance embedding; no "turbo" in its name);
    SD3.5 by its transformer's qk-norm and dual-attention layers; each has its defaults."""
    info = inspect_pipeline(folders[family])
    model = load(folders[family])
    assert info.spec.name == spec and info.few_step == few_step and model.supports_consistency == few_step
    assert (model.default_steps, model.default_guidance, model.guidance_kind) == (steps, guidance, kind)
    assert model.sample_shape == (4, 8, 8)


def test_sd35_large_and_the_few_step_override(folders, tmp_path):
    """qk-norm without dual attention is SD3.5 Large; an explicit few_step overrides the spec
    and the name (schnell treated as a base model, a Turbo-less SD3.5 as a Turbo)."""
    large = tmp_path / "sd3.5-large"
    large.mkdir()
    for part in ("model_index.json", "scheduler/scheduler_config.json", "vae/config.json"):
        (large / part).parent.mkdir(exist_ok=True)
        (large / part).write_text((Path(folders["sd3.5"]) / part).read_text())
    config = json.loads((Path(folders["sd3.5"]) / "transformer/config.json").read_text())
    (large / "transformer").mkdir()
    (large / "transformer/config.json").write_text(json.dumps({**config, "dual_attention_layers": []}))
    assert inspect_pipeline(str(large)).spec.name == "sd3.5-large"
    assert inspect_pipeline(str(large)).defaults == FamilyDefaults(28, 3.5)
    assert inspect_pipeline(str(large), few_step=True).defaults == FamilyDefaults(4, 1.0)
    schnell = load(folders["flux-schnell"], few_step=False)
    assert not schnell.supports_consistency and schnell.default_steps == 4
