"""The run lifecycle in the Python API: a stopped run hands back its best sample so far inside
the exception; result.json is strict JSON; a file the folder refuses is rescued elsewhere."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from noisealign import cli, imaging
from noisealign.align import RunFailed, RunInterrupted, align
from noisealign.budget import Ledger
from noisealign.methods.base import Problem, RunContext
from noisealign.methods.best_of_n import BestOfN, BestOfNConfig
from noisealign.methods.demon import Demon, DemonConfig
from noisealign.methods.dno import Dno, DnoConfig
from noisealign.methods.plain import PlainConfig
from noisealign.models.registry import load_model

METHODS = {
    "best-of-n": lambda: BestOfN(BestOfNConfig(batch_size=2, sampler=PlainConfig(steps=6))),
    "demon": lambda: Demon(DemonConfig(K=2, lookahead="tweedie")),
    "dno": lambda: Dno(DnoConfig(steps=6)),
}


class StopsAt:
    """Brightness, until call `at`, where it raises `error` (KeyboardInterrupt: a Ctrl-C)."""

    name, differentiable = "stops_at", True

    def __init__(self, at: int, error: BaseException):
        self.at, self.error, self.calls = at, error, 0

    def __call__(self, outputs, prompts):
        self.calls += 1
        if self.calls == self.at:
            raise self.error
        return outputs.float().flatten(1).mean(dim=1)


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("error, stop", [(KeyboardInterrupt(), RunInterrupted), (RuntimeError("down"), RunFailed)])
def test_a_stopped_run_hands_back_its_best_sample_which_regenerates(digits, method, error, stop):
    problem = Problem(digits, StopsAt(5, error))
    with pytest.raises(stop) as raised:
        align(problem, METHODS[method](), seed=1, budget=40)
    outcome = raised.value.outcome
    assert outcome.status == ("interrupted" if stop is RunInterrupted else "failed")
    assert 0 < outcome.ledger.reward_queries < 40 and outcome.result is not None
    assert outcome.final_reward == pytest.approx(float(outcome.result.output.mean()))
    planned = METHODS[method]().plan(problem, 40)
    again = planned.regenerate(RunContext(problem, 1, Ledger(query_limit=0)), outcome.result.noises)
    # the same pixels (best-of-n samples its candidate alone, not in a batch: float rounding may differ)
    assert torch.equal(_pixels(again.output), _pixels(outcome.result.output))
    assert torch.allclose(again.output, outcome.result.output, atol=1e-5)


def _pixels(output):
    return (output.clamp(0, 1) * 255).round().byte()


def test_result_json_is_strict_even_with_a_nan_diagnostic(tmp_path):
    """Demon with K = 1 has an undefined adaptive tau (NaN): result.json writes null."""
    out = tmp_path / "run"
    assert cli.main(["generate", "--quiet", "--method", "demon", "--K", "1", "--lookahead", "tweedie",
                     "--budget", "4", "--out", str(out)]) == 0

    def refuse(token):
        raise ValueError(token)
    result = json.loads((out / "result.json").read_text(), parse_constant=refuse)
    assert result["status"] == "complete" and result["final_tau"] is None


def test_a_file_the_folder_refuses_is_rescued_and_named(tmp_path, monkeypatch, capsys):
    real_save, out = imaging.save_image, tmp_path / "run"

    def disk_full_for_the_image(image, path, format=None):
        if path.parent == out and "image" in path.name:   # the rescue folder has room
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(image, path, format)

    monkeypatch.setattr("noisealign.runs.save_image", disk_full_for_the_image)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    code = cli.main(["generate", "--quiet", "--method", "best-of-n", "--budget", "4", "--steps", "6",
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "image.png (No space left on device) ->" in err and len(err.strip().splitlines()) == 1
    rescued = list((tmp_path / "tmp").rglob("image.png"))
    assert len(rescued) == 1 and rescued[0].stat().st_size > 0 and (out / "noise.pt").exists()
