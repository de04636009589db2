"""The regularizer family: ReNO's chi-norm against the chi distribution, every floor on Gaussian
noise, and what each sees of the drifts optimized noise takes."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from noisealign.methods.dno_regularizer import PENALTY_FLOOR
from noisealign.methods.regularizers import (
    NAMES, chi_norm, chi_norm_floor, moment_scores, moments, regularizers, wilson_hilferty,
)

NOISES = (51, 64)
"""z_T and 50 injected noises of the 64-D mixture: the shape DNO optimizes in the hacking benchmark."""


def gaussian(shape=NOISES, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("N", [1, 2, 64, 3264])
def test_chi_norm_is_the_chi_distributions_negative_log_likelihood_and_its_gradient(N):
    z = gaussian((N,), seed=N).mul(1.3).requires_grad_(True)
    value = chi_norm(z)
    r = float(z.detach().norm())
    assert float(value.detach()) == pytest.approx(-stats.chi(N).logpdf(r), rel=1e-10, abs=1e-10)
    (gradient,) = torch.autograd.grad(value, z)
    # d/dz [r^2 / 2 - (N - 1) log r] = (r - (N - 1) / r) z / r
    torch.testing.assert_close(gradient, (r - (N - 1) / r) * z.detach() / r, rtol=1e-10, atol=1e-12)
    if N > 1:
        assert chi_norm_floor(N) == pytest.approx(-stats.chi(N).logpdf(math.sqrt(N - 1)), rel=1e-10)


def test_wilson_hilferty_scores_chi_square_quantiles_as_normal_ones():
    for k, ps, tolerance in [(2, (0.5, 0.99, 0.9999), 0.1), (51, (0.0001, 0.01, 0.5, 0.99, 0.9999), 0.03),
                             (3264, (0.0001, 0.5, 0.9999), 0.001)]:
        for p in ps:                            # for k = 2 the lower tail is cut off (WH >= -2.67)
            q = torch.tensor(stats.chi2(k).ppf(p), dtype=torch.float64)
            assert float(wilson_hilferty(q, k)) == pytest.approx(stats.norm.ppf(p), abs=tolerance)


@pytest.mark.parametrize("shape", [(51, 2), NOISES, (11, 4, 16, 16)])
def test_every_regularizer_sits_at_its_floor_on_gaussian_noise(shape):
    z = gaussian(shape)
    values = {name: float(fn(z)) for name, fn in regularizers().items()}
    assert PENALTY_FLOOR - 1e-9 <= values["concentration"] < PENALTY_FLOOR + 0.5
    assert chi_norm_floor(z.numel()) <= values["chi-norm"] < chi_norm_floor(z.numel()) + 3   # within ~2.4 std of ||z||
    assert values["moments"] == 0.0


def test_moments_leaves_its_floor_on_fewer_than_alpha_of_gaussian_draws():
    generator = torch.Generator().manual_seed(1)
    draws = [torch.randn(*NOISES, generator=generator, dtype=torch.float64) for _ in range(100)]
    assert sum(float(moments(z)) > 0 for z in draws) <= 3                     # alpha = 1%, conservative
    scores = torch.cat([moment_scores(z)[0] for z in draws])
    assert abs(float(scores.mean())) < 0.05 and float(scores.std()) == pytest.approx(1.0, abs=0.05)


def drifts(z):
    """The drifts of the issue, on n noises x D coordinates, and the one only `moments` sees."""
    coordinate, aligned = z.clone(), z.clone()
    coordinate[:, 0] += 5                       # one coordinate of every noise five standard deviations off
    aligned[:, 0] = aligned[:, 0].abs()         # one coordinate's signs aligned: every norm and pooled moment kept
    return {"coordinate": coordinate, "scale": 1.1 * z, "mean": z + 0.2, "aligned": aligned}


def test_each_regularizer_grows_on_the_drifts_it_sees():
    z = gaussian()
    floor = {name: float(fn(z)) for name, fn in regularizers().items()}
    grown = {drift: {name: float(fn(x)) - floor[name] for name, fn in regularizers().items()}
             for drift, x in drifts(z).items()}
    # ours sees every drift, and the coordinate drift by far the most
    assert all(grown[drift]["moments"] > 1 for drift in grown)
    assert grown["coordinate"]["moments"] > 10 * max(grown["coordinate"]["concentration"], grown["coordinate"]["chi-norm"])
    # the paper's pooled statistic sees scale and mean only weakly, the aligned signs not at all
    assert grown["coordinate"]["concentration"] > 10 and grown["mean"]["concentration"] > 5
    assert grown["scale"]["concentration"] > 1 and abs(grown["aligned"]["concentration"]) < 0.1
    # ReNO's sees the norm: scale and the coordinate drift, hardly the mean, never the aligned signs
    assert grown["scale"]["chi-norm"] > 20 and grown["coordinate"]["chi-norm"] > 50
    assert grown["mean"]["chi-norm"] < 2 and grown["aligned"]["chi-norm"] == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("drift, sizes", [
    ("coordinate", (2, 5, 10)),                 # one coordinate of every noise, in standard deviations
    ("shift", (0.2, 0.5, 1.0)),                 # every element
    ("scale", (1.1, 1.2, 1.5)),
    ("shrink", (0.9, 0.8, 0.5)),
])
def test_every_regularizer_grows_with_the_size_of_each_drift(drift, sizes):
    """From Gaussian noise (size 0) every regularizer rises strictly with the drift, and far: these
    are the drifts all three see, unlike the aligned signs above."""
    z = gaussian()

    def drifted(size):
        x = z.clone()
        if drift == "coordinate":
            x[:, 0] += size
            return x
        return x + size if drift == "shift" else x * size

    for name, fn in regularizers().items():
        values = [float(fn(z))] + [float(fn(drifted(size))) for size in sizes]
        assert all(a < b for a, b in zip(values, values[1:])), (name, values)
        assert values[-1] > values[0] + 20, (name, values)


def test_moments_sees_a_direction_the_noises_share_with_alternating_signs():
    """A reward gradient's direction with signs that cancel in every mean: the top singular value."""
    z = gaussian()
    u = gaussian((64,), seed=5)
    u = u / u.norm()
    signs = torch.tensor([(-1.0) ** i for i in range(len(z))], dtype=torch.float64)
    shared = z + 3 * signs[:, None] * u
    _, top = moment_scores(shared)
    assert float(top) > 5 and float(moments(shared)) > 1 and float(moments(z)) == 0


def test_regularizers_are_differentiable_and_named():
    assert NAMES == ("concentration", "chi-norm", "moments")
    x = (gaussian() + 0.3).requires_grad_(True)
    for name, fn in regularizers(permutations=2).items():
        (gradient,) = torch.autograd.grad(fn(x), x)
        assert torch.isfinite(gradient).all() and float(gradient.sum()) > 0, name   # shifting back lowers it
