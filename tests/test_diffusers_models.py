"""The diffusers family wrappers against diffusers' own pipelines, on tiny random weights.

Each tiny pipeline is saved to a temp folder and loaded by load_diffusers_model, the path a
hub id takes once resolved. `plain` (our engine on model.sigmas, x_T = prior_std * z with z
from torch.Generator().manual_seed(seed), guidance by models.base) must give diffusers' image.
For FLUX, z is the unpacked latent diffusers draws before packing it, so no latents are
handed to diffusers: both draw them from the same seed.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusers_tiny as tiny  # noqa: E402
from diffusers_tiny import load, one_thread, saved  # noqa: E402, F401 (one_thread: an autouse fixture)
from noisealign.budget import Ledger  # noqa: E402
from noisealign.engine import karras_sigmas, sample_ancestral, sample_ode  # noqa: E402
from noisealign.errors import NoiseAlignError  # noqa: E402
from noisealign.methods.base import Problem, RunContext  # noqa: E402
from noisealign.methods.plain import Plain, PlainConfig  # noqa: E402
from noisealign.models.base import make_denoiser  # noqa: E402
from noisealign.models.diffusers_loading import load_diffusers_model  # noqa: E402
from noisealign.models.registry import load_model  # noqa: E402
from noisealign.models import diffusers_base  # noqa: E402
from noisealign.rewards.registry import parse_reward  # noqa: E402

TOLERANCE = 2 / 255
PROMPT = "a cat"
SEED = 3


@pytest.fixture(scope="module")
def pipelines():
    """One tiny pipeline per architecture, built once; tests never modify them."""
    built = {"sd": tiny.sd_pipeline("epsilon"), "sd-v": tiny.sd_pipeline("v_prediction"),
             "sdxl": tiny.sdxl_pipeline(), "sdxl-stats": tiny.sdxl_pipeline(latents_stats=True),
             "sdxl-turbo": tiny.sdxl_pipeline(timestep_spacing="trailing"),
             "sd3": tiny.sd3_pipeline(), "sd3.5": tiny.sd3_pipeline(sd35=True),
             "flux-dev": tiny.flux_pipeline("dev"), "flux-schnell": tiny.flux_pipeline("schnell")}
    for pipe in built.values():
        pipe.set_progress_bar_config(disable=True)
    return built


def with_scheduler(pipe, scheduler_class: str, **overrides):
    """A copy of the pipeline whose scheduler is swapped as a diffusers user does it:
    SchedulerClass.from_config(pipe.scheduler.config)."""
    import diffusers

    scheduler = getattr(diffusers, scheduler_class).from_config(pipe.scheduler.config, **overrides)
    assert all(scheduler.config[key] == value for key, value in overrides.items())
    copy = type(pipe)(**{**pipe.components, "scheduler": scheduler})
    copy.set_progress_bar_config(disable=True)
    return copy


def guidance_for(model, guidance: float) -> float:
    """`guidance`, or 1 for a model that takes none (FLUX.1-schnell)."""
    return 1.0 if model.guidance_kind == "none" else guidance


def ours(model, steps: int, guidance: float, eta: float = 0.0) -> torch.Tensor:
    """`plain`: x_T then (for eta > 0) one noise per step from the seed's generator, as diffusers draws them."""
    sigmas = model.sigmas(steps)
    generator = torch.Generator().manual_seed(SEED)
    shape = (1, *model.sample_shape)
    x = model.prior_std(float(sigmas[0])) * torch.randn(shape, generator=generator)
    denoiser = make_denoiser(model, PROMPT, guidance)
    with torch.no_grad():
        if eta == 0:
            x0 = sample_ode(denoiser, x, sigmas, solver="euler")
        else:
            noises = [torch.randn(shape, generator=generator) for _ in range(len(sigmas) - 1)]
            x0 = sample_ancestral(denoiser, x, sigmas, noises, eta)
        return model.decode(x0)


def theirs(pipe, steps: int, guidance: float, **kwargs) -> torch.Tensor:
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=tiny.SIZE, width=tiny.SIZE,
                generator=torch.Generator().manual_seed(SEED), output_type="pt", **kwargs).images


PIPELINE_OPTIONS = {"flux-schnell": {"max_sequence_length": 256}}
"""diffusers' call options that differ from its defaults where a spec follows the model card:
FLUX.1-schnell encodes 256 T5 tokens, the pipeline 512 by default."""

# (pipeline, diffusers scheduler class, config overrides, our scheduler): every prediction type,
# both VP grids (integer and fractional Euler timesteps, zero terminal SNR), SDXL's added
# conditioning and VAE latent statistics, the flows of SD3, SD3.5 (qk-norm, dual attention)
# and FLUX (packed latents; dev's guidance embedding and resolution shift, schnell's neither).
CASES = {
    "sd-eps-ddim": ("sd", "DDIMScheduler", {}, "ddim"),
    "sd-eps-ddim-alpha-one": ("sd", "DDIMScheduler", {"set_alpha_to_one": True}, "ddim"),
    "sd-v-ddim": ("sd-v", "DDIMScheduler", {}, "ddim"),
    "sd-v-ddim-zero-snr": ("sd-v", "DDIMScheduler", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
                           "ddim"),
    "sd-eps-euler-leading": ("sd", "EulerDiscreteScheduler", {"timestep_spacing": "leading"}, "euler"),
    "sd-v-euler-linspace": ("sd-v", "EulerDiscreteScheduler", {"timestep_spacing": "linspace"}, "euler"),
    "sdxl-euler": ("sdxl", "EulerDiscreteScheduler", {}, "euler"),
    "sdxl-ddim": ("sdxl", "DDIMScheduler", {}, "ddim"),
    "sdxl-vae-latents-stats": ("sdxl-stats", "EulerDiscreteScheduler", {}, "euler"),
    "sd3-flow-euler": ("sd3", "FlowMatchEulerDiscreteScheduler", {}, "euler"),
    "sd3.5-flow-euler": ("sd3.5", "FlowMatchEulerDiscreteScheduler", {}, "euler"),
    "flux-dev-flow-euler": ("flux-dev", "FlowMatchEulerDiscreteScheduler", {}, "euler"),
    "flux-schnell-flow-euler": ("flux-schnell", "FlowMatchEulerDiscreteScheduler", {}, "euler"),
}


@pytest.mark.parametrize("case", CASES)
def test_plain_equals_diffusers(case, pipelines, tmp_path_factory):
    family, scheduler_class, overrides, scheduler = CASES[case]
    pipe = with_scheduler(pipelines[family], scheduler_class, **overrides)
    model = load(saved(pipe, tmp_path_factory, case), scheduler=scheduler)
    expected = theirs(pipe, steps=3, guidance=5.0, **PIPELINE_OPTIONS.get(family, {}))
    got = ours(model, steps=3, guidance=guidance_for(model, 5.0))
    assert got.shape == expected.shape == (1, 3, tiny.SIZE, tiny.SIZE)
    assert (got - expected).abs().max() <= TOLERANCE


@pytest.mark.parametrize("family", ["sd", "flux-dev"])
def test_tolerance_discriminates(family, pipelines, tmp_path_factory):
    """The tiny models are sensitive enough: guidance 1 instead of 5 already fails the check
    (classifier-free for SD, the guidance embedding for FLUX.1-dev)."""
    pipe = pipelines[family]
    model = load(saved(pipe, tmp_path_factory, family + "-guidance"))
    assert (ours(model, steps=3, guidance=1.0) - theirs(pipe, steps=3, guidance=5.0)).abs().max() > 2 * TOLERANCE


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_plain_method_equals_diffusers(eta, pipelines, tmp_path_factory):
    """The `plain` method itself (noise streams, counted denoiser); eta = 1 is DDIM(eta=1) with
    its per-step noises drawn from the seed's generator after x_T, as diffusers draws them."""
    pipe = with_scheduler(pipelines["sd"], "DDIMScheduler")
    model = load_model(saved(pipe, tmp_path_factory, "sd-plain"), scheduler="ddim")
    problem = Problem(model, parse_reward("brightness"), PROMPT, guidance=5.0)
    result = Plain(PlainConfig(steps=3, eta=eta)).run(RunContext(problem, SEED, Ledger()))
    expected = theirs(pipe, steps=3, guidance=5.0, eta=eta)
    assert (result.output - expected).abs().max() <= TOLERANCE


def test_turbo_ancestral_equals_diffusers(pipelines, tmp_path_factory):
    """SDXL-Turbo's own sampler (Euler ancestral, trailing spacing, guidance_scale 0 = no CFG)."""
    pipe = with_scheduler(pipelines["sdxl-turbo"], "EulerAncestralDiscreteScheduler")
    model = load_diffusers_model(saved(pipe, tmp_path_factory, "sdxl-turbo"))
    assert model.default_steps == 1 and model.default_guidance == 1.0 and model.scheduler == "euler"
    expected = theirs(pipe, steps=2, guidance=0.0)
    assert (ours(model, steps=2, guidance=model.default_guidance, eta=1.0) - expected).abs().max() <= TOLERANCE
    one_step = theirs(pipe, steps=1, guidance=0.0)  # the default: one step, whose noise is multiplied by 0
    assert (ours(model, steps=1, guidance=model.default_guidance) - one_step).abs().max() <= TOLERANCE


@pytest.mark.parametrize("few_step, base", [("sdxl-turbo", "sdxl"), ("flux-schnell", "flux-dev")])
def test_consistency_estimate_only_for_few_step_models(few_step, base, pipelines, tmp_path_factory):
    """SDXL-Turbo is few-step by its name, FLUX.1-schnell by its spec (no "turbo" in its name)."""
    turbo = load(saved(pipelines[few_step], tmp_path_factory, few_step + "-c"))
    base = load(saved(pipelines[base], tmp_path_factory, base + "-base"))
    x = torch.randn(2, *turbo.sample_shape)
    sigma = torch.tensor(3.0)
    cond = turbo.encode_prompt(PROMPT)
    assert turbo.supports_consistency and not base.supports_consistency
    assert torch.equal(turbo.consistency_estimate(x, sigma, cond), turbo.denoise(x, sigma, cond))
    with pytest.raises(NoiseAlignError, match="tweedie"):
        base.consistency_estimate(x, sigma, base.encode_prompt(PROMPT))


@pytest.mark.parametrize("family", ["sd", "flux-dev"])
def test_a_prompt_is_encoded_once_for_the_runs_that_use_it(family, pipelines, tmp_path_factory):
    """Baseline and method, grid and sweep cells: each run asks for its prompt's encoding; the
    model keeps the last PROMPT_CACHE prompts', the same tensors a fresh encoding gives."""
    model = load(saved(pipelines[family], tmp_path_factory, family + "-prompts"))
    encoded, encoder = [], model.encoder
    model.encoder = lambda prompt: encoded.append(prompt) or encoder(prompt)
    fresh = {k: v.clone() for k, v in model.encode_prompt(PROMPT).items()}
    for _ in range(3):
        assert all(torch.equal(v, fresh[k]) for k, v in model.encode_prompt(PROMPT).items())
    assert encoded == [PROMPT]
    others = [f"prompt {i}" for i in range(diffusers_base.PROMPT_CACHE)]
    for prompt in others:
        model.encode_prompt(prompt)
    model.encode_prompt(others[-1])                       # still kept
    model.encode_prompt(PROMPT)                           # the least recent: dropped, encoded again
    assert encoded == [PROMPT, *others, PROMPT]


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux-dev"])
def test_batch_rows_are_independent(family, pipelines, tmp_path_factory):
    """A batch with per-sample sigmas (Demon's K candidates) equals its rows run one at a time."""
    model = load(saved(pipelines[family], tmp_path_factory, family + "-batch"))
    cond = model.encode_prompt(PROMPT)
    x = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([5.0, 0.5])
    with torch.no_grad():
        batch = model.denoise(x, sigma, cond)
        rows = torch.cat([model.denoise(x[i:i + 1], sigma[i], cond) for i in range(2)])
        assert (batch - rows).abs().max() <= 1e-5 * batch.abs().max()     # float rounding of another batch size
        model.decoder.chunk = 1
        assert torch.allclose(model.decode(batch), torch.cat([model.decode(b[None]) for b in batch]), atol=1e-6)


@pytest.mark.parametrize("family", ["sd", "sd3", "flux-dev"])
def test_karras_grid_and_bfloat16(family, pipelines, tmp_path_factory):
    """The Karras grid spans the model's sigma range; bf16 networks keep the state and images float32."""
    folder = saved(pipelines[family], tmp_path_factory, family + "-bf16")
    exact, half = (load(folder, dtype=d, scheduler="karras") for d in ("fp32", "bf16"))
    sigmas = half.sigmas(4)
    assert torch.allclose(sigmas, karras_sigmas(4, half.sigma_min, half.sigma_max))
    assert half.sigma_min < 0.05 and half.sigma_max > 14
    got, expected = ours(half, steps=3, guidance=5.0), ours(exact, steps=3, guidance=5.0)
    assert got.dtype == torch.float32 and (got - expected).abs().max() < 0.1


def test_gradient_reaches_the_noise_through_the_vae(pipelines, tmp_path_factory):
    """DNO's path: d reward(decode(sample(x_T))) / d x_T, with no gradient kept for the weights."""
    model = load_diffusers_model(saved(pipelines["sd"], tmp_path_factory, "sd-grad"))
    sigmas = model.sigmas(2)
    x_T = (model.prior_std(float(sigmas[0])) * torch.randn(1, *model.sample_shape)).requires_grad_()
    image = model.decode(sample_ode(make_denoiser(model, PROMPT, 5.0), x_T, sigmas, solver="euler"))
    image.mean().backward()
    assert torch.isfinite(x_T.grad).all() and x_T.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder.vae.parameters())


def test_hub_id_resolves_to_its_cached_folder(pipelines, tmp_path, monkeypatch):
    """A hub id is looked up in the HF cache (offline here) and loads like a folder; 'turbo' in it marks few-step."""
    import huggingface_hub.constants as hub

    repo = tmp_path / "models--tiny--sd-turbo"
    pipelines["sd"].save_pretrained(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    model = load_model("tiny/sd-turbo", scheduler="euler")
    assert model.name == "tiny/sd-turbo" and model.supports_consistency and model.default_steps == 1
    with pytest.raises(NoiseAlignError, match="'tiny/sd-base'.*HF_HOME.*local folder"):
        load_model("tiny/sd-base")


@pytest.mark.parametrize("name, options, message", [
    ("digts", {}, "unknown model 'digts'"),
    ("weights.safetensors", {}, "single-file checkpoint"),
    ("{empty}", {}, "model_index.json"),
    ("{img2img}", {}, "a FluxImg2ImgPipeline pipeline; noisealign runs .*FluxPipeline"),
    ("{flux}", {"height": 18}, "divisible by 4"),
    ("{lcm}", {}, "guidance-embedded"),
    ("{sd}", {"dtype": "fp8"}, "unknown dtype"),
    ("{sd}", {"scheduler": "pndm"}, "unknown scheduler 'pndm'"),
    ("{sd}", {"height": 20}, "divisible by 8"),
])
def test_bad_input_is_one_clear_error(name, options, message, pipelines, tmp_path_factory):
    folders = {"empty": tmp_path_factory.mktemp("empty"), "img2img": tmp_path_factory.mktemp("img2img"),
               "lcm": tmp_path_factory.mktemp("lcm")}
    (folders["img2img"] / "model_index.json").write_text(json.dumps({"_class_name": "FluxImg2ImgPipeline"}))
    for file, config in [("model_index.json", {"_class_name": "StableDiffusionPipeline"}),
                         ("scheduler/scheduler_config.json", {}), ("vae/config.json", {}),
                         ("unet/config.json", {"time_cond_proj_dim": 256})]:
        (folders["lcm"] / file).parent.mkdir(exist_ok=True)
        (folders["lcm"] / file).write_text(json.dumps(config))
    for family in ("sd", "flux"):
        if "{%s}" % family in name:
            folders[family] = saved(pipelines["flux-dev" if family == "flux" else family], tmp_path_factory,
                                    family + "-bad")
    with pytest.raises(NoiseAlignError, match=message):
        load_model(name.format(**folders), **options)


LOOKAHEADS = {"sd": "ode", "sdxl": "tweedie", "sdxl-turbo": "consistency", "sd3": "tweedie", "sd3.5": "ode",
              "flux-dev": "ode", "flux-schnell": "consistency"}
"""Demon's look-ahead per family: the few-step models' consistency estimate, and the ODE
look-ahead on one VP and two flow families."""


@pytest.mark.parametrize("family", LOOKAHEADS)
def test_every_method_runs_on_every_family(family, pipelines, tmp_path_factory):
    """plain (the stochastic sampler, eta 1), best-of-n, Demon (its beta-SDE), DNO (DDIM eta 1),
    guidance and ReNO (their gradients through the VAE; ReNO at the model's own steps if few-step,
    else 2), FK, SVDD, beam, zo-search and path-search, within budget; each regenerates its image
    exactly, plain by running again, the others from their saved noises."""
    from noisealign.align import align
    from noisealign.methods.best_of_n import BestOfN, BestOfNConfig
    from noisealign.methods.demon import Demon, DemonConfig
    from noisealign.methods.beam import Beam, BeamConfig
    from noisealign.methods.candidates import ValueConfig
    from noisealign.methods.dno import Dno, DnoConfig
    from noisealign.methods.fk import FeynmanKac, FkConfig
    from noisealign.methods.guidance import Guidance, GuidanceConfig
    from noisealign.methods.path_search import PathSearch, PathSearchConfig
    from noisealign.methods.reno import Reno, RenoConfig
    from noisealign.methods.svdd import Svdd, SvddConfig
    from noisealign.methods.zo_search import ZoSearch, ZoSearchConfig

    model = load(saved(pipelines[family], tmp_path_factory, family + "-methods"))
    few_step = family in ("sdxl-turbo", "flux-schnell")
    assert model.supports_consistency == few_step
    problem = Problem(model, parse_reward("brightness"), PROMPT, guidance=None if few_step else 3.0)
    demon = DemonConfig(K=2, grid_points=4, lookahead=LOOKAHEADS[family], lookahead_steps=2, ode_after=0.0)
    # best-of-n one candidate per batch: its regeneration samples the kept candidate alone, and a
    # network's float rounding may differ between batch sizes.
    methods = [(Plain(PlainConfig(steps=3, eta=1.0)), 0),
               (BestOfN(BestOfNConfig(batch_size=1, sampler=PlainConfig(steps=3))), 2), (Demon(demon), 4),
               (Dno(DnoConfig(mode="grad", steps=2, iterations=1)), 2),
               (Guidance(GuidanceConfig(steps=2, recurrence=1)), 2),
               (Reno(RenoConfig(steps=None if few_step else 2, iterations=1)), 2)]
    value = ValueConfig(lookahead=LOOKAHEADS[family], lookahead_steps=2)   # FK, SVDD, beam, path-search
    methods += [(FeynmanKac(FkConfig(particles=2, steps=2, resample_every=1, value=value)), 4),
                (Svdd(SvddConfig(candidates=2, steps=2, value=value)), 2),
                (Beam(BeamConfig(beams=2, candidates=2, steps=2, value=value)), 4),
                (ZoSearch(ZoSearchConfig(neighbours=1, steps=1)), 2),
                (PathSearch(PathSearchConfig(paths=1, branches=2, steps=2, value=value)), 2)]
    for method, budget in methods:
        outcome = align(problem, method, SEED, budget)
        assert outcome.ledger.reward_queries == budget
        assert torch.isfinite(outcome.result.output).all() and outcome.result.output.shape[1] == 3
        if method.name == "guidance":                          # the reward's gradient came back through the VAE
            assert outcome.result.noises["guidance"].abs().sum() > 0
        context = RunContext(problem, SEED, Ledger())
        again = method.regenerate(context, outcome.result.noises) if outcome.result.noises else method.run(context)
        assert torch.equal(again.output, outcome.result.output), method.name
