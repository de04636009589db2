"""Higher-order ODE solvers and the stochastic Heun SDE step against closed forms."""

import math

import pytest
import torch

from noisealign.engine import (ODE_SOLVERS, beta_sde_heun_correct, beta_sde_step, dpmpp_2m_step, euler_step,
                               heun_correct, karras_sigmas, ode_evaluations, ode_lookahead, sample_beta_sde,
                               sample_ode, unipc_correct)
from noisealign.engine.lookahead import lookahead_steps, ode_lookahead_evaluations
from noisealign.models.gmm import GaussianMixture

MIXTURE = GaussianMixture.default()


def mixture_denoiser(x, sigma):
    return MIXTURE.denoise(x, torch.tensor(sigma), None)


def polynomial_ode_solution(x, sigma, sigma_next, coefficients):
    """Exact x(sigma_next) of dx/dsigma = (x - D) / sigma when D = sum_k a_k u^k, u = lambda - lambda(sigma),
    lambda = -log sigma: x' = (sigma'/sigma) (x + int_0^h e^u D(u) du), h = log(sigma / sigma')."""
    h = math.log(sigma / sigma_next)
    a0, a1, a2 = coefficients
    integral = (a0 * math.expm1(h) + a1 * (math.exp(h) * (h - 1) + 1)
                + a2 * (math.exp(h) * (h * h - 2 * h + 2) - 2))
    return sigma_next / sigma * (x + integral)


def polynomial_denoised(sigma_at, sigma, coefficients):
    u = math.log(sigma / sigma_at)
    return torch.tensor([sum(a * u ** k for k, a in enumerate(coefficients))], dtype=torch.float64)


@pytest.mark.parametrize("coefficients", [(0.7, 0.0, 0.0), (0.7, -1.3, 0.0), (0.7, -1.3, 0.4)])
def test_ddim_and_unic_are_exact_up_to_their_degree_for_a_polynomial_denoiser(coefficients):
    """DDIM (2M without a previous point) is exact for constant D, UniC for D linear in lambda
    (end point) or quadratic (with the previous point); a non-uniform grid makes r != -1."""
    sigma_prev, sigma, sigma_next = 9.0, 5.0, 2.0
    x = torch.tensor([1.5], dtype=torch.float64)
    d_prev, d, d_next = (polynomial_denoised(s, sigma, coefficients) for s in (sigma_prev, sigma, sigma_next))
    exact = polynomial_ode_solution(1.5, sigma, sigma_next, coefficients)
    degree = max(k for k, a in enumerate(coefficients) if a)
    results = {0: dpmpp_2m_step(x, sigma, sigma_next, d),
               1: unipc_correct(x, sigma, sigma_next, d, d_next),
               2: unipc_correct(x, sigma, sigma_next, d, d_next, sigma_prev, d_prev)}
    for exact_up_to, value in results.items():
        error = abs(float(value) - exact)
        assert (error < 1e-12) == (degree <= exact_up_to), (exact_up_to, degree, error)


def test_dpmpp_2m_local_error_is_third_order():
    """With D linear in lambda, 2M's extrapolated D is right to O(h): a step's error falls 8x per halving of h."""
    coefficients = (0.7, -1.3, 0.0)
    errors = []
    for h in (0.4, 0.2, 0.1):
        sigma = 5.0
        sigma_prev, sigma_next = sigma * math.exp(1.5 * h), sigma * math.exp(-h)     # r = 1.5
        x = torch.tensor([1.5], dtype=torch.float64)
        d_prev, d = (polynomial_denoised(s, sigma, coefficients) for s in (sigma_prev, sigma))
        step = dpmpp_2m_step(x, sigma, sigma_next, d, sigma_prev, d_prev)
        errors.append(abs(float(step) - polynomial_ode_solution(1.5, sigma, sigma_next, coefficients)))
    for coarse, fine in zip(errors, errors[1:]):
        assert 2.7 < math.log2(coarse / fine) < 3.3, errors


def test_first_order_step_is_ddim_and_the_step_into_zero_is_the_denoised_state():
    g = torch.Generator().manual_seed(0)
    x, d, d_prev = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(dpmpp_2m_step(x, 3.0, 1.0, d), euler_step(x, 3.0, 1.0, d), rtol=1e-14, atol=1e-14)
    assert torch.equal(dpmpp_2m_step(x, 0.5, 0.0, d, 0.9, d_prev), d)


def test_stochastic_heun_with_zero_beta_is_heun_and_uses_one_noise():
    g = torch.Generator().manual_seed(1)
    x, d, d_next, z = (torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(4))
    x_next = beta_sde_step(x, 2.0, 1.2, d, z, beta=0.0)
    torch.testing.assert_close(beta_sde_heun_correct(x, 2.0, 1.2, d, x_next, d_next, z, beta=0.0),
                               heun_correct(x, 2.0, 1.2, d, x_next, d_next), rtol=1e-14, atol=1e-14)
    # The noise term is the average of both ends' diffusion sqrt(2 beta) sigma over one Brownian increment.
    beta, zero = 0.3, torch.zeros_like(x)
    noise_only = beta_sde_heun_correct(zero, 2.0, 1.2, zero, zero, zero, z, beta)
    torch.testing.assert_close(noise_only, math.sqrt(2 * beta * 0.8) * 1.6 * z)


def _max_slope_window(solver, reference, x, sigma):
    """(NFE, error) on Karras grids of 33 and 129 points against the reference."""
    rows = []
    for points in (33, 129):
        grid = karras_sigmas(points, MIXTURE.sigma_min, sigma)
        error = float((sample_ode(mixture_denoiser, x, grid, solver) - reference).norm(dim=1).mean())
        rows.append((ode_evaluations(grid, solver), error))
    (n1, e1), (n2, e2) = rows
    return math.log(e1 / e2) / math.log(n2 / n1), rows


@pytest.mark.parametrize("solver, low, high", [("euler", 0.8, 1.4), ("heun", 1.7, 2.4), ("dpmpp-2m", 1.7, 2.4),
                                               ("unipc", 2.4, 3.6)])
def test_each_solver_converges_to_a_fine_solve_at_its_order(solver, low, high):
    """Error against a 1000-step Heun solve of the same PF-ODE on the exact mixture denoiser,
    from sigma_max: log-log slope of error against model evaluations (1, 2, 2, 3)."""
    x = MIXTURE.sigma_max * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reference = sample_ode(mixture_denoiser, x, karras_sigmas(1000, MIXTURE.sigma_min, MIXTURE.sigma_max), "heun")
    slope, rows = _max_slope_window(solver, reference, x, MIXTURE.sigma_max)
    assert low < slope < high, (solver, slope, rows)


def test_multistep_solvers_beat_heun_at_equal_evaluations():
    x = 10.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reference = sample_ode(mixture_denoiser, x, karras_sigmas(1000, MIXTURE.sigma_min, 10.0), "heun")

    def error(solver, points):
        estimate = sample_ode(mixture_denoiser, x, karras_sigmas(points, MIXTURE.sigma_min, 10.0), solver)
        return float((estimate - reference).norm(dim=1).mean())

    heun = error("heun", 21)                          # 41 evaluations
    assert error("dpmpp-2m", 41) < heun and error("unipc", 41) < error("dpmpp-2m", 41) / 2


@pytest.mark.parametrize("solver", ODE_SOLVERS)
def test_evaluation_counts_match_the_calls(solver):
    calls = []

    def counted(x, sigma):
        calls.append(sigma)
        return mixture_denoiser(x, sigma)

    x = 5.0 * torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ode_lookahead(counted, x, 5.0, MIXTURE.sigma_min, MIXTURE.sigma_max, 20, solver=solver)
    assert len(calls) == ode_lookahead_evaluations(5.0, MIXTURE.sigma_min, MIXTURE.sigma_max, 20, solver)
    points = lookahead_steps(5.0, MIXTURE.sigma_min, MIXTURE.sigma_max, 20)
    assert len(calls) == (2 * points - 1 if solver == "heun" else points)
    calls.clear()
    grid = torch.tensor([5.0, 2.0, 0.5], dtype=torch.float64)       # ends above 0, as diffusers' DDIM grid does
    sample_ode(counted, x, grid, solver)
    assert len(calls) == ode_evaluations(grid, solver)


def test_default_solver_is_unchanged_heun():
    """Existing callers (no solver argument) keep producing the same bits."""
    x = 3.0 * torch.randn(8, 2, generator=torch.Generator().manual_seed(5))
    grid = karras_sigmas(12, MIXTURE.sigma_min, 3.0)
    expected = x
    for i in range(len(grid) - 1):           # EDM Algorithm 1 written out
        sigma, sigma_next = float(grid[i]), float(grid[i + 1])
        d = mixture_denoiser(expected, sigma)
        euler = euler_step(expected, sigma, sigma_next, d)
        expected = heun_correct(expected, sigma, sigma_next, d, euler, mixture_denoiser(euler, sigma_next)) \
            if sigma_next > 0 else euler
    assert torch.equal(sample_ode(mixture_denoiser, x, grid), expected)
    points = lookahead_steps(3.0, MIXTURE.sigma_min, MIXTURE.sigma_max, 20)
    assert torch.equal(ode_lookahead(mixture_denoiser, x, 3.0, MIXTURE.sigma_min, MIXTURE.sigma_max, 20),
                       sample_ode(mixture_denoiser, x, karras_sigmas(points, MIXTURE.sigma_min, 3.0)))


def test_unknown_solvers_are_refused():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="unknown ODE solver"):
        sample_ode(mixture_denoiser, x, karras_sigmas(3, 0.1, 1.0), "rk4")
    with pytest.raises(ValueError, match="unknown SDE solver"):
        sample_beta_sde(mixture_denoiser, x, karras_sigmas(3, 0.1, 1.0), [x] * 3, 0.1, solver="milstein")


def gaussian_variance_after(solver, points, s=1.0, beta=0.1, sigma_max=14.648, sigma_min=0.002):
    """Exact variance of one coordinate after the beta-SDE integrator on data N(0, s^2), from the
    exact marginal N(0, s^2 + sigma_max^2): D = s^2 x / (s^2 + sigma^2) is linear, so each step is
    x' = A x + B z and Var' = A^2 Var + B^2, with A and B read off the step applied to (1, 0), (0, 1)."""
    def denoiser(x, sigma):
        return s * s / (s * s + sigma * sigma) * x

    grid = karras_sigmas(points, sigma_min, sigma_max)[:-1]      # stop at sigma_min: no step into 0
    variance = s * s + sigma_max ** 2
    unit, noise = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    for i in range(len(grid) - 1):
        a, b = sample_beta_sde(denoiser, unit, grid[i:i + 2], [noise], beta, solver=solver).tolist()
        variance = a * a * variance + b * b
    return variance


def test_stochastic_heun_keeps_the_marginal_at_second_order_and_euler_maruyama_at_first():
    """On Gaussian data the beta-SDE's marginal at sigma_min is N(0, s^2 + sigma_min^2) exactly;
    the integrators' variance error shrinks as 1/N (Euler-Maruyama) and 1/N^2 (stochastic Heun)."""
    exact = 1.0 + 0.002 ** 2

    def error(solver, points):
        return abs(math.sqrt(gaussian_variance_after(solver, points)) / math.sqrt(exact) - 1)

    em = [error("euler", n) for n in (64, 256)]
    heun = [error("heun", n) for n in (64, 256)]
    assert 0.8 < math.log(em[0] / em[1]) / math.log(4) < 1.3, em
    assert 1.7 < math.log(heun[0] / heun[1]) / math.log(4) < 2.4, heun
    assert error("heun", 32) < error("euler", 63) / 2        # equal evaluations: 62 each


def test_stochastic_heun_sampler_is_a_function_of_its_noise_and_costs_two_calls_a_step():
    calls = []

    def counted(x, sigma):
        calls.append(sigma)
        return mixture_denoiser(x, sigma)

    sigmas = MIXTURE.sigmas(8)
    g = torch.Generator().manual_seed(6)
    x_T = MIXTURE.sigma_max * torch.randn(16, 2, generator=g, dtype=torch.float64)
    noises = [torch.randn(16, 2, generator=g, dtype=torch.float64) for _ in range(len(sigmas) - 1)]
    first = sample_beta_sde(counted, x_T, sigmas, noises, 0.05, solver="heun")
    assert len(calls) == 2 * (len(sigmas) - 1) - 1
    assert torch.equal(sample_beta_sde(mixture_denoiser, x_T, sigmas, noises, 0.05, solver="heun"), first)
    assert not torch.equal(sample_beta_sde(mixture_denoiser, x_T, sigmas, noises, 0.05), first)
