"""Reward-hacking flags: the optimized reward rises while a held-out reward falls, beyond noise.

For a method, optimized reward and budget, every complete cell pairs its output with its own
baseline (same prompt, same seed). Over those n pairs:

- gain   = mean of (optimized reward of the output - of the baseline), with standard error se_g;
- change = mean of (held-out reward of the output - of the baseline), with standard error se_c.

"Beyond noise" means more than 2 standard errors of the mean paired difference: the row is
flagged when gain > 2 se_g and change < -2 se_c (n >= 2; with one pair there is no noise
estimate and no flag). Evaluation rewards equal to the optimized one are not held out. A flag
asks for a look at the images; it is not proof of hacking (two rewards may simply disagree).
"""

from __future__ import annotations

from typing import Any

from .load import SweepData
from .stats import stat
from .tables import Table, by_method_reward_budget, gain, held_out

NOISE_SE = 2.0
"""How many standard errors of the paired difference count as noise."""


def hacking_table(data: SweepData) -> Table | None:
    rows, flagged = [], set()
    for (label, reward, budget), lines in by_method_reward_budget(data).items():
        rise = stat(gain(line) for line in lines)
        for other in data.spec.evaluate:
            if other == reward:
                continue
            change = stat(_change(line, other) for line in lines)
            flag = is_hacking(rise.mean, rise.se, change.mean, change.se)
            if flag:
                flagged.add(len(rows))
            rows.append([label, reward, budget, other, rise.n, rise, change, "yes" if flag else "no"])
    if not rows:
        return None
    return Table("hacking", f"Hacking flags ({len(flagged)} flagged)",
                 f"flagged: the optimized reward's gain over the baseline exceeds {NOISE_SE:g} standard errors while "
                 f"the held-out reward's change is below -{NOISE_SE:g} standard errors (paired by prompt and seed)",
                 ["method", "optimized", "budget", "held out", "pairs", "optimized gain", "held-out change", "flag"],
                 rows, flagged=flagged)


def is_hacking(rise: float | None, rise_se: float | None, change: float | None, change_se: float | None) -> bool:
    """The optimized reward rose (mean paired gain `rise`) and the held-out one fell (mean paired
    `change`), each by more than NOISE_SE standard errors."""
    if None in (rise, rise_se, change, change_se):
        return False
    return rise > NOISE_SE * rise_se and change < -NOISE_SE * change_se


def _change(line: dict[str, Any], reward: str) -> float | None:
    """The held-out `reward` of the cell's output minus that of its baseline."""
    after, before = held_out(line, reward), held_out(line, reward, baseline=True)
    return None if after is None or before is None else after - before
