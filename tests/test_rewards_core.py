"""Reward specs, weighted sums and the model-free rewards."""

import pytest
import torch

from noisealign.errors import NoiseAlignError
from noisealign.rewards.base import WeightedSum
from noisealign.rewards import registry
from noisealign.rewards.registry import parse_reward
from noisealign.rewards.simple import Brightness, JpegCompressibility


def _images(n=3, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_single_reward_spec_returns_that_reward():
    assert isinstance(parse_reward("brightness"), Brightness)
    assert isinstance(parse_reward("jpeg"), JpegCompressibility)


def test_weighted_sum_spec_combines_terms_with_signs():
    images = _images()
    combined = parse_reward("brightness-0.5*jpeg+2*coordinate:4")
    assert isinstance(combined, WeightedSum) and not combined.differentiable
    expected = (Brightness()(images, [""] * 3) - 0.5 * JpegCompressibility()(images, [""] * 3)
                + 2 * images.flatten(1)[:, 4])
    torch.testing.assert_close(combined(images, [""] * 3), expected)


def test_weights_in_scientific_notation():
    assert parse_reward("1e-1*brightness").terms[0][0] == pytest.approx(0.1)


@pytest.mark.parametrize("spec", ["", "   ", "brightness+", "2*", "brightness jpeg", "bright ness", "+*jpeg",
                                  "brightness++jpeg"])
def test_malformed_specs_are_one_clear_error(spec):
    with pytest.raises(NoiseAlignError) as error:
        parse_reward(spec)
    assert "\n" not in str(error.value)


def test_unknown_reward_names_the_choices():
    with pytest.raises(NoiseAlignError, match="unknown reward 'aesthetics'.*brightness"):
        parse_reward("aesthetics")


def test_argument_errors():
    with pytest.raises(NoiseAlignError, match="takes no argument"):
        parse_reward("jpeg:90")
    with pytest.raises(NoiseAlignError, match="coordinate needs an index"):
        parse_reward("coordinate")


def test_jpeg_prefers_flat_images_and_is_not_differentiable():
    reward = JpegCompressibility()
    flat, noisy = torch.full((1, 3, 64, 64), 0.5), torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    scores = reward(torch.cat([flat, noisy]), ["", ""])
    assert scores.dtype == torch.float32 and scores[0] > scores[1] and (scores < 0).all()
    assert not reward.differentiable


def test_brightness_is_differentiable():
    images = _images().requires_grad_()
    Brightness()(images, [""] * 3).sum().backward()
    assert torch.allclose(images.grad, torch.full_like(images, 1 / (3 * 16 * 16)))


def test_quoted_arguments_may_hold_dashes_and_plus_signs(monkeypatch):
    seen = []
    monkeypatch.setitem(registry.REWARDS, "probe", lambda argument: seen.append(argument) or Brightness())
    parse_reward("probe:'/m/models--org--x/a+b.pth'-0.5*probe:\"~/y-z\"")
    assert seen == ["/m/models--org--x/a+b.pth", "~/y-z"]
