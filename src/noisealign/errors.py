"""Errors a user can act on: each message names the problem and the fix in one line."""


class NoiseAlignError(Exception):
    """Bad input or a failed run; the CLI prints it as one line and exits with status 2."""


class BudgetExhausted(NoiseAlignError):
    """A method asked for more reward queries than its budget allows."""


class NonFiniteReward(NoiseAlignError):
    """A reward returned NaN or infinity; the run stops, keeping what it computed so far."""


class RewardFailed(NoiseAlignError):
    """A reward raised, or returned something other than one float per output."""
