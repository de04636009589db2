"""The engine against closed forms and against diffusers' own scheduler."""

import math

import pytest
import torch

from noisealign.engine import (ancestral_sigmas, ancestral_step, beta_sde_step, euler_step, karras_sigmas,
                               ode_lookahead, sample_ancestral, sample_beta_sde, sample_ode,
                               vp_sigmas_from_alphas_cumprod)
from noisealign.engine.lookahead import ode_lookahead_evaluations
from noisealign.engine.noise import NoiseStreams, sample_generator
from noisealign.models.gmm import GaussianMixture


def test_karras_grid_endpoints_and_order():
    sigmas = karras_sigmas(10, 0.002, 80.0)
    assert len(sigmas) == 11 and sigmas[-1] == 0
    assert math.isclose(float(sigmas[0]), 80.0) and math.isclose(float(sigmas[-2]), 0.002, rel_tol=1e-9)
    assert (sigmas[:-1].diff() < 0).all()


def test_ancestral_split_keeps_total_variance():
    for sigma, sigma_next, eta in [(10.0, 5.0, 1.0), (1.0, 0.3, 0.5), (2.0, 1.9, 3.0)]:
        down, up = ancestral_sigmas(sigma, sigma_next, eta)
        assert math.isclose(down ** 2 + up ** 2, sigma_next ** 2, rel_tol=1e-12)
        assert up <= sigma_next
    assert ancestral_sigmas(1.0, 0.0, 1.0) == (0.0, 0.0)


def test_beta_sde_with_zero_beta_is_euler_step():
    g = torch.Generator().manual_seed(0)
    x, denoised, noise = (torch.randn(3, 5, generator=g) for _ in range(3))
    assert torch.equal(beta_sde_step(x, 2.0, 1.5, denoised, noise, beta=0.0), euler_step(x, 2.0, 1.5, denoised))


def test_ancestral_with_zero_eta_is_euler_step():
    g = torch.Generator().manual_seed(1)
    x, denoised, noise = (torch.randn(4, 2, generator=g) for _ in range(3))
    assert torch.allclose(ancestral_step(x, 3.0, 1.0, denoised, noise, eta=0.0), euler_step(x, 3.0, 1.0, denoised))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_eta_step_equals_diffusers(eta):
    """Our ancestral step in sigma space is DDIMScheduler.step(eta) in VP space, same noise."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              set_alpha_to_one=False, clip_sample=False)
    scheduler.set_timesteps(20)
    abar = scheduler.alphas_cumprod.double()
    g = torch.Generator().manual_seed(2)
    timesteps = scheduler.timesteps.tolist()
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        a, a_prev = abar[t], (abar[prev] if prev is not None else scheduler.final_alpha_cumprod.double())
        x_vp, eps, z = (torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
        expected = scheduler.step(eps, t, x_vp, eta=eta, variance_noise=z).prev_sample

        sigma, sigma_next = (float(vp_sigmas_from_alphas_cumprod(v.reshape(1))) for v in (a, a_prev))
        x = x_vp / a.sqrt()                        # EDM state: x = x_vp * sqrt(1 + sigma^2)
        denoised = x - sigma * eps
        ours = ancestral_step(x, sigma, sigma_next, denoised, z, eta) * a_prev.sqrt()
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)  # diffusers keeps abar in float32


def _mixture_statistics(model: GaussianMixture, x: torch.Tensor):
    labels = model.component_log_densities(x.double(), 0.0).argmax(dim=1)
    return x.double().mean(0), torch.bincount(labels, minlength=len(model.weights)).double() / len(x)


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_ode_sampling_reproduces_the_mixture(solver):
    model = GaussianMixture.default()
    n, steps = 4000, (32 if solver == "heun" else 128)
    denoiser = lambda x, sigma: model.denoise(x, torch.tensor(sigma), None)
    x_T = model.sigma_max * torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    samples = sample_ode(denoiser, x_T, model.sigmas(steps), solver=solver)
    mean, weights = _mixture_statistics(model, samples)
    true_mean = (model.weights[:, None] * model.means).sum(0)
    # Sampling error: 4 standard errors of the mean and of each weight.
    spread = model.sample_exact(100_000, torch.Generator().manual_seed(4)).std(0)
    assert ((mean - true_mean).abs() < 4 * spread / math.sqrt(n)).all(), (mean, true_mean)
    weight_error = 4 * (model.weights * (1 - model.weights) / n).sqrt()
    assert ((weights - model.weights).abs() < weight_error).all(), (weights, model.weights)


def test_stochastic_samplers_reproduce_the_mixture_and_are_functions_of_their_noise():
    model = GaussianMixture.default()
    denoiser = lambda x, sigma: model.denoise(x, torch.tensor(sigma), None)
    sigmas = model.sigmas(64)
    streams = NoiseStreams(5, range(3000), (2,), dtype=torch.float64)
    x_T = model.sigma_max * streams.draw()
    noises = [streams.draw() for _ in range(len(sigmas) - 1)]
    for sampler in (lambda n: sample_ancestral(denoiser, x_T, sigmas, n, eta=1.0),
                    lambda n: sample_beta_sde(denoiser, x_T, sigmas, n, beta=0.5)):
        samples = sampler(noises)
        _, weights = _mixture_statistics(model, samples)
        assert ((weights - model.weights).abs() < 4 * (model.weights * (1 - model.weights) / 3000).sqrt()).all()
        assert torch.equal(sampler(noises), samples)
        assert not torch.equal(sampler([n.flip(0) for n in noises]), samples)


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    model = GaussianMixture.default()
    denoiser = lambda x, sigma: model.denoise(x, torch.tensor(sigma), None)
    x_T = model.sigma_max * torch.randn(256, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    reference = sample_ode(denoiser, x_T, model.sigmas(512), solver="heun")
    heun_error = (sample_ode(denoiser, x_T, model.sigmas(16), "heun") - reference).norm(dim=1).mean()
    euler_error = (sample_ode(denoiser, x_T, model.sigmas(16), "euler") - reference).norm(dim=1).mean()
    assert heun_error < euler_error / 2


def test_ode_lookahead_matches_a_fine_ode_solve_and_counts_its_calls():
    model = GaussianMixture.default()
    calls = []

    def denoiser(x, sigma):
        calls.append(len(x))
        return model.denoise(x, torch.tensor(sigma), None)

    x = 5.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    estimate = ode_lookahead(denoiser, x, 5.0, model.sigma_min, model.sigma_max, max_steps=20)
    assert len(calls) == ode_lookahead_evaluations(5.0, model.sigma_min, model.sigma_max, 20)
    from noisealign.engine import karras_sigmas as grid
    fine = sample_ode(lambda y, s: model.denoise(y, torch.tensor(s), None), x, grid(400, model.sigma_min, 5.0))
    finer = ode_lookahead(denoiser, x, 5.0, model.sigma_min, model.sigma_max, max_steps=80)
    error, finer_error = ((e - fine).norm(dim=1).mean() for e in (estimate, finer))
    assert error < 0.05 and finer_error < error / 4


def test_sample_generator_zero_is_the_plain_torch_generator():
    assert torch.equal(torch.randn(5, generator=sample_generator(42)),
                       torch.randn(5, generator=torch.Generator().manual_seed(42)))
    assert not torch.equal(torch.randn(5, generator=sample_generator(42, 1)),
                           torch.randn(5, generator=sample_generator(43, 0)))


def test_noise_streams_do_not_depend_on_batch_composition():
    both = NoiseStreams(0, [0, 1], (3,)).draw()
    alone = NoiseStreams(0, [1], (3,)).draw()
    assert torch.equal(both[1], alone[0])
