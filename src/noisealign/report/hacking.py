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

from .load import SweepData
from .stats import stat
from .tables import Table, by_method_reward_budget, held_out

NOISE_SE = 2.0
"""How many standard errors of the paired difference count as noise."""


def hacking_table(data: SweepData) -> Table | None:
    rows, flagged = [], set()
    for (label, reward, budget), lines in by_method_reward_budget(data).items():
        gain = stat(line["final_reward"] - line["baseline_reward"] for line in lines
                    if line.get("final_reward") is not None and line.get("baseline_reward") is not None)
        for other in data.spec.evaluate:
            if other == reward:
                continue
            change = stat(held_out(line, other) - held_out(line, other, baseline=True) for line in lines
                          if held_out(line, other) is not None and held_out(line, other, baseline=True) is not None)
            flag = is_hacking(gain.mean, gain.se, change.mean, change.se)
            if flag:
                flagged.add(len(rows))
            rows.append([label, reward, budget, other, gain.n, gain, change, "yes" if flag else "no"])
    if not rows:
        return None
    return Table("hacking", f"Hacking flags ({len(flagged)} flagged)",
                 f"flagged: the optimized reward's gain over the baseline exceeds {NOISE_SE:g} standard errors while "
                 f"the held-out reward's change is below -{NOISE_SE:g} standard errors (paired by prompt and seed)",
                 ["method", "optimized", "budget", "held out", "pairs", "optimized gain", "held-out change", "flag"],
                 rows, flagged=flagged)


def is_hacking(gain: float | None, gain_se: float | None, change: float | None, change_se: float | None) -> bool:
    """The optimized reward rose and the held-out one fell, each by more than NOISE_SE standard errors."""
    if None in (gain, gain_se, change, change_se):
        return False
    return gain > NOISE_SE * gain_se and change < -NOISE_SE * change_se
