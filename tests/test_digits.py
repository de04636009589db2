"""The bundled digits model and the digit:N reward: sample quality, contracts, errors."""

from __future__ import annotations

import pytest
import torch

from noisealign.engine import sample_ode
from noisealign.errors import NoiseAlignError
from noisealign.models.base import DiffusionModel, make_denoiser
from noisealign.models.digits import DigitsModel
from noisealign.rewards.digit import DigitLogOdds
from noisealign.rewards.digit_judge import DigitJudge
from noisealign.rewards.registry import parse_reward


@pytest.fixture(scope="module")
def model() -> DigitsModel:
    return DigitsModel.load()


@pytest.fixture(scope="module")
def classifier():
    return DigitLogOdds.from_argument("0").classifier


def _samples(model: DigitsModel, prompt: str, n: int, seed: int) -> torch.Tensor:
    """n images of the default plain sampler (Heun PF-ODE, default steps and guidance)."""
    sigmas = model.sigmas(model.default_steps)
    x_T = model.prior_std(float(sigmas[0])) * torch.randn(n, *model.sample_shape,
                                                          generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return model.decode(sample_ode(make_denoiser(model, prompt), x_T, sigmas, model.default_solver))


def test_follows_the_protocol(model):
    assert isinstance(model, DiffusionModel)
    assert model.sample_shape == (1, 8, 8) and model.default_solver == "heun"
    sigmas = model.sigmas(model.default_steps)
    assert sigmas[0] == pytest.approx(model.sigma_max) and sigmas[-2] == pytest.approx(model.sigma_min)
    assert sigmas[-1] == 0 and model.prior_std(3.0) == 3.0


def test_conditional_samples_show_the_asked_digit(model, classifier):
    per_digit = 20
    rates = []
    for digit in range(10):
        images = _samples(model, str(digit), per_digit, seed=100 + digit)
        with torch.inference_mode():
            rates.append((classifier(images).argmax(1) == digit).float().mean().item())
    overall = sum(rates) / len(rates)
    print("recognition per digit:", [f"{r:.2f}" for r in rates], f"overall {overall:.3f}")
    assert overall >= 0.8, f"only {overall:.2f} of guided samples recognised; per digit {rates}"


def test_unconditional_samples_mix_the_digits(model, classifier):
    images = _samples(model, "", 200, seed=7)
    with torch.inference_mode():
        counts = torch.bincount(classifier(images).argmax(1), minlength=10)
    print("unconditional class counts:", counts.tolist())
    assert (counts > 0).sum() >= 8, f"unconditional samples cover too few digits: {counts.tolist()}"
    assert counts.max() <= 60, f"unconditional samples collapse onto one digit: {counts.tolist()}"


def test_decoded_samples_are_images(model):
    images = _samples(model, "5", 4, seed=0)
    assert images.shape == (4, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("prompt", ["10", "a", " 3", "three", "-1"])
def test_bad_prompt_names_the_valid_ones(model, prompt):
    with pytest.raises(NoiseAlignError, match='"0".."9"'):
        model.encode_prompt(prompt)


def test_prompts_encode_to_one_label(model):
    assert model.encode_prompt("7").tolist() == [7]
    null = model.encode_prompt("")
    assert null.shape == (1,) and null.dtype == torch.long and null.item() not in range(10)


def test_denoise_shape_dtype_and_sigma_broadcast(model):
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = model.encode_prompt("4")
    with torch.inference_mode():
        scalar = model.denoise(x, torch.tensor(2.5), cond)
        per_sample = model.denoise(x, torch.full((5,), 2.5), cond)
        labels = model.denoise(x, torch.tensor(2.5), cond.expand(5))
    assert scalar.shape == x.shape and scalar.dtype == torch.float32
    torch.testing.assert_close(scalar, per_sample)
    torch.testing.assert_close(scalar, labels)


def test_denoise_is_differentiable_in_x(model):
    """DNO back-propagates through the sampler: gradients reach x, never the frozen weights."""
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5)).requires_grad_()
    model.denoise(x, torch.tensor(1.0), model.encode_prompt("1")).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.net.parameters())


def test_denoise_tends_to_identity_at_low_noise(model):
    """EDM preconditioning: c_skip -> 1 and c_out -> 0 as sigma -> 0, so D(x, sigma) ~ x."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        denoised = model.denoise(x, torch.tensor(model.sigma_min), model.encode_prompt(""))
    assert (denoised - x).abs().max() < 0.01


def test_guidance_wrapper_accepts_batch_one_labels(model):
    """make_denoiser stacks (1,) labels for [x; x] with CFG; rows must not depend on their batch."""
    denoiser = make_denoiser(model, "2")
    assert denoiser.evaluations_per_call == 2
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    sigmas = torch.tensor([5.0, 1.0, 0.3])
    with torch.inference_mode():
        batched = denoiser(x, sigmas)
        single = torch.cat([denoiser(x[i:i + 1], sigmas[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert make_denoiser(model, "").evaluations_per_call == 1


@pytest.mark.parametrize("argument", [None, "", "x", "10", "3.0"])
def test_digit_reward_needs_a_digit(argument):
    with pytest.raises(NoiseAlignError, match="digit:3"):
        DigitLogOdds.from_argument(argument)


def test_digit_reward_from_spec():
    reward = parse_reward("digit:3")
    assert reward.name == "digit:3" and reward.differentiable
    with pytest.raises(NoiseAlignError, match="digit"):
        parse_reward("digit")


def test_digit_reward_is_the_log_odds():
    reward = DigitLogOdds.from_argument("6")
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        scores = reward(images, [""] * 4)
        p = reward.classifier(images).softmax(1)[:, 6].double()
    assert scores.shape == (4,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), (p / (1 - p)).log(), atol=1e-4, rtol=1e-4)


def test_digit_reward_ranks_real_digits(model):
    """A guided 3 scores higher on digit:3 than a guided 8 does, and vice versa."""
    threes, eights = _samples(model, "3", 8, seed=5), _samples(model, "8", 8, seed=6)
    reward3, reward8 = DigitLogOdds.from_argument("3"), DigitLogOdds.from_argument("8")
    with torch.inference_mode():
        assert reward3(threes, []).mean() > reward3(eights, []).mean() + 2
        assert reward8(eights, []).mean() > reward8(threes, []).mean() + 2


def test_digit_reward_gradient_reaches_the_input():
    reward = DigitLogOdds.from_argument("1")
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(8)).requires_grad_()
    reward(images, ["", ""]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.classifier.parameters())


def test_digit_reward_rows_are_independent():
    reward = DigitLogOdds.from_argument("9")
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        pair = reward(images, ["", ""])
        ones = torch.cat([reward(images[:1], [""]), reward(images[1:], [""])])
    torch.testing.assert_close(pair, ones, atol=1e-5, rtol=1e-5)


# ---- digit_judge:N, the independent judge ------------------------------------------------------

def test_the_judge_is_the_share_of_the_k_nearest_examples_showing_the_digit():
    examples = torch.tensor([[0] * 64, [16] * 64, [15] * 64, [1] * 64], dtype=torch.uint8).view(4, 8, 8)
    judge = DigitJudge(target=5, examples=examples, labels=torch.tensor([5, 2, 5, 5]), k=2)
    dark, bright = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
    # dark's nearest two are the 0 and 1 images (both 5s); bright's the 16 (a 2) and 15 (a 5) images
    assert judge(torch.cat([dark, bright]), ["", ""]).tolist() == [1.0, 0.5]


def test_the_judge_recognises_the_digits_the_classifier_learned(model):
    """On the digits that are not among its examples (the classifier's half) the judge's vote is
    the label for over 95% of the images, and guided samples of a digit get that digit's vote."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    judges = [parse_reward(f"digit_judge:{d}") for d in range(10)]
    assert all(j.name == f"digit_judge:{d}" and not j.differentiable for d, j in enumerate(judges))
    unseen = torch.cdist(images.flatten(1), judges[0].examples).min(dim=1).values > 0   # not among its examples
    images, labels = images[unseen], torch.tensor(digits.target)[unseen]
    assert len(images) > 800
    votes = torch.stack([judge(images, [""] * len(images)) for judge in judges], dim=1)
    assert ((votes >= 0) & (votes <= 1)).all() and torch.allclose(votes.sum(1), torch.ones(len(images)))
    assert (votes.argmax(1) == labels).float().mean() > 0.95
    threes = _samples(model, "3", 10, seed=11)
    assert judges[3](threes, [""] * 10).mean() > 0.8 and judges[8](threes, [""] * 10).mean() < 0.2


@pytest.mark.parametrize("argument", [None, "", "x", "10"])
def test_the_judge_needs_a_digit(argument):
    with pytest.raises(NoiseAlignError, match="digit_judge:3"):
        DigitJudge.from_argument(argument)
