"""Rewards that misbehave on purpose, for the run-contract tests (`--reward python:misbehaving_rewards.X`).

Environment: NOISEALIGN_TEST_MARKER, a file written once the reward has been called
NOISEALIGN_TEST_AFTER times (default 1); after that each call sleeps NOISEALIGN_TEST_SLEEP
seconds, so a test can send a signal while the run is surely in the middle of its work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


class _Counting:
    differentiable = True

    def __init__(self, name: str):
        self.name, self.calls = name, 0

    def base(self, outputs):
        """A smooth differentiable score: mean brightness of the output."""
        return outputs.float().flatten(1).mean(dim=1)


class SlowAfterMarker(_Counting):
    def __call__(self, outputs, prompts):
        self.calls += 1
        if self.calls == int(os.environ.get("NOISEALIGN_TEST_AFTER", "1")):
            Path(os.environ["NOISEALIGN_TEST_MARKER"]).write_text("called")
        if self.calls >= int(os.environ.get("NOISEALIGN_TEST_AFTER", "1")):
            time.sleep(float(os.environ.get("NOISEALIGN_TEST_SLEEP", "0.2")))
        return self.base(outputs)


class FailsAtCall(_Counting):
    """Fine for NOISEALIGN_TEST_AFTER - 1 calls, then NOISEALIGN_TEST_FAILURE: raise | nan | list | int."""

    def __call__(self, outputs, prompts):
        self.calls += 1
        if self.calls < int(os.environ.get("NOISEALIGN_TEST_AFTER", "1")):
            return self.base(outputs)
        failure = os.environ.get("NOISEALIGN_TEST_FAILURE", "raise")
        if failure == "raise":
            raise RuntimeError("the reward server is down")
        if failure == "nan":
            return torch.full((len(outputs),), float("nan"))
        if failure == "list":
            return [0.0] * len(outputs)
        return torch.zeros(len(outputs), dtype=torch.int64)


def slow_after_marker():
    return SlowAfterMarker("slow_after_marker")


def fails_at_call():
    return FailsAtCall("fails_at_call")
