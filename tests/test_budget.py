"""The ledger and the methods' spending."""

import math

import pytest
import torch

from noisealign.budget import Ledger
from noisealign.errors import BudgetExhausted, NonFiniteReward
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.best_of_n import BestOfN, BestOfNConfig
from noisealign.methods.plain import Plain, PlainConfig
from noisealign.models.gmm import GaussianMixture
from noisealign.rewards.simple import Coordinate


class CountingReward:
    name, differentiable = "counting", True

    def __init__(self):
        self.batches = []

    def __call__(self, outputs, prompts):
        self.batches.append(len(outputs))
        return outputs[:, 0].float()


def _context(reward, budget, seed=0):
    return RunContext(Problem(GaussianMixture.default(), reward), seed, Ledger(query_limit=budget))


def test_ledger_refuses_to_overspend():
    ledger = Ledger(query_limit=10)
    ledger.charge_queries(7)
    with pytest.raises(BudgetExhausted, match="7 of 10"):
        ledger.charge_queries(4)
    assert ledger.reward_queries == 7 and ledger.queries_left == 3
    assert Ledger().queries_left == math.inf


def test_non_finite_reward_is_an_error():
    ledger = Ledger()
    with pytest.raises(NonFiniteReward, match="1 non-finite"):
        ledger.score(lambda o, p: torch.tensor([1.0, float("nan")]), torch.zeros(2, 2), ["", ""])


@pytest.mark.parametrize("budget,batch", [(1, 64), (100, 64), (130, 32)])
def test_best_of_n_spends_exactly_its_budget_in_batches(budget, batch):
    reward = CountingReward()
    context = _context(reward, budget)
    result = BestOfN(BestOfNConfig(batch_size=batch)).run(context)
    assert context.ledger.reward_queries == budget == sum(reward.batches)
    assert max(reward.batches) <= batch
    steps = GaussianMixture.default_steps
    assert context.ledger.nfe == budget * (2 * steps - 1)   # Heun: 2 calls per step, 1 for the last
    assert result.reward == pytest.approx(float(result.output[0, 0]))


def test_best_of_n_keeps_the_best_candidate_and_its_first_is_the_plain_sample():
    reward = Coordinate(0)
    pool = _context(reward, 50)
    result = BestOfN(BestOfNConfig(batch_size=16)).run(pool)
    plain = Plain().run(_context(reward, 0))
    from noisealign.methods.plain import sample_plain
    with torch.inference_mode():
        every = sample_plain(_context(reward, None), range(50), PlainConfig())
    assert torch.equal(every[:1], plain.sample)
    assert result.reward == pytest.approx(float(every[:, 0].max()))


def test_plain_spends_no_queries():
    context = _context(CountingReward(), 0)
    Plain().run(context)
    assert context.ledger.reward_queries == 0 and context.ledger.nfe > 0
