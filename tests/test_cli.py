"""The command line: the run folder contract, determinism, and every bad-input case."""

import csv
import json

import pytest
import torch

from noisealign import cli
from noisealign.rewards import registry


def _run(tmp_path, *flags, name="run"):
    out = tmp_path / name
    code = cli.main(["generate", "--quiet", "--out", str(out), *flags])
    return code, out


def _without_timings(result):
    result = {k: v for k, v in result.items() if k != "seconds"}
    for row in result.get("grid", []):
        row.pop("seconds")
    return result


def test_run_folder_contract(tmp_path):
    code, out = _run(tmp_path, "--model", "gmm", "--method", "best-of-n", "--budget", "32")
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    for key in ["method", "model", "prompt", "reward", "seed", "final_reward", "baseline_reward",
                "reward_queries", "nfe", "seconds", "config"]:
        assert key in result
    assert result["reward_queries"] == 32 and result["final_reward"] >= result["baseline_reward"]
    rows = list(csv.DictReader(open(out / "trace.csv")))
    assert rows and {"queries", "nfe", "seconds", "reward_mean", "reward_max"} <= set(rows[0])
    assert (out / "image.json").exists() and (out / "baseline.json").exists()


def test_same_seed_same_result_bit_for_bit(tmp_path):
    flags = ["--model", "gmm", "--method", "best-of-n", "--budget", "40", "--seed", "3", "--grid", "2"]
    _, first = _run(tmp_path, *flags, name="a")
    _, second = _run(tmp_path, *flags, name="b")
    a, b = (json.loads((d / "result.json").read_text()) for d in (first, second))
    assert _without_timings(a) == _without_timings(b)
    assert (first / "image.json").read_bytes() == (second / "image.json").read_bytes()
    _, other = _run(tmp_path, *flags[:-3], "4", name="c")
    assert json.loads((other / "result.json").read_text())["final_reward"] != a["final_reward"]


def test_error_lines(tmp_path, capsys):
    cases = {
        "unknown model": (["--model", "nosuch"], "unknown model 'nosuch'"),
        "unknown reward": (["--model", "gmm", "--reward", "nosuch"], "unknown reward 'nosuch'"),
        "malformed spec": (["--model", "gmm", "--reward", "coordinate:0+"], "malformed reward spec"),
        "budget too small": (["--model", "gmm", "--method", "best-of-n", "--budget", "0"], "--budget must be"),
        "negative budget": (["--model", "gmm", "--method", "plain", "--budget", "-1"], "--budget must be"),
    }
    for name, (flags, message) in cases.items():
        code, out = _run(tmp_path, *flags, name=name.replace(" ", "_"))
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert message in err and len(err.splitlines()) == 1, (name, err)
        assert not out.exists() or not any(out.iterdir()), name


def test_unknown_method_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--method", "nosuch"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice: 'nosuch'" in err and len(err.splitlines()) == 1


def test_existing_output_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["generate", "--quiet", "--model", "gmm", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_non_finite_reward_stops_with_one_line_and_keeps_what_was_computed(tmp_path, capsys, monkeypatch):
    class NanAfterFirstBatch:
        name, differentiable = "nan", True

        def __init__(self):
            self.calls = 0

        def __call__(self, outputs, prompts):
            self.calls += 1
            values = outputs[:, 0].float().clone()
            return values if self.calls <= 2 else values * float("nan")   # baseline eval, batch 1 fine

    monkeypatch.setitem(registry.REWARDS, "nan", lambda argument: NanAfterFirstBatch())
    code, out = _run(tmp_path, "--model", "gmm", "--method", "best-of-n", "--budget", "128", "--reward", "nan")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "non-finite" in err and "kept" in err
    result = json.loads((out / "result.json").read_text())
    assert "non-finite" in result["error"] and "baseline_reward" in result
    assert len(list(csv.DictReader(open(out / "trace.csv")))) == 1   # the first batch's row survived
    assert (out / "baseline.json").exists()


def test_regenerate_rebuilds_the_saved_sample(tmp_path, capsys):
    code, out = _run(tmp_path, "--model", "gmm", "--method", "best-of-n", "--budget", "70", "--seed", "5")
    assert code == 0 and (out / "noise.pt").exists()
    assert cli.main(["regenerate", str(out)]) == 0
    assert "identical" in capsys.readouterr().out
    assert (out / "regenerated.json").read_bytes() == (out / "image.json").read_bytes()


def test_regenerate_without_a_run_folder_is_one_line(tmp_path, capsys):
    assert cli.main(["regenerate", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_config_round_trips_through_json():
    from noisealign.configs import config_from_dict
    from noisealign.methods.best_of_n import BestOfNConfig
    from noisealign.methods.plain import PlainConfig
    from dataclasses import asdict

    config = BestOfNConfig(n=7, batch_size=3, sampler=PlainConfig(steps=5, solver="euler", eta=0.5))
    assert config_from_dict(BestOfNConfig, json.loads(json.dumps(asdict(config)))) == config


def test_default_digits_run_is_bit_identical_across_runs(tmp_path):
    """The default model and method: same seed, same image.png and result.json (but timings)."""
    flags = ["--budget", "32", "--K", "8", "--seed", "2"]
    _, first = _run(tmp_path, *flags, name="a")
    _, second = _run(tmp_path, *flags, name="b")
    a, b = (json.loads((d / "result.json").read_text()) for d in (first, second))
    assert a["method"] == "demon" and a["model"] == "digits" and a["reward"] == "digit:3"
    assert _without_timings(a) == _without_timings(b)
    for name in ("image.png", "baseline.png", "noise.pt"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert a["reward_queries"] <= 32
