"""`noisealign report`: its tables against numbers recomputed from results.jsonl, the hacking flag's
definition, diversity (pixel, and CLIP / DINO on tiny local checkpoints), a stopped sweep, bad input."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from noisealign import cli
from noisealign.report.diversity import diversity_measure
from noisealign.report.hacking import hacking_table, is_hacking
from noisealign.report.load import SweepData, load_sweep
from noisealign.report.tables import cross_reward_table
from noisealign.sweep.spec import load_spec

SWEEP = """
seeds = [0, 1]
optimize = ["digit:3", "digit:8"]
evaluate = ["digit:3", "digit:8", "brightness"]

[model]
name = "digits"

[prompts]
list = ["", "1"]

[[methods]]
method = "best-of-n"
budgets = [2, 4]
options = { steps = 4, batch-size = 4 }

[[methods]]
label = "demon-tweedie"
method = "demon"
budgets = [4]
options = { K = 2, lookahead = "tweedie", steps = 6 }
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A 24-cell sweep (two methods, two optimized digits, three held-out rewards) and its report."""
    root = tmp_path_factory.mktemp("report")
    (root / "sweep.toml").write_text(SWEEP)
    out = root / "sweep"
    assert cli.main(["sweep", str(root / "sweep.toml"), "--out", str(out), "--quiet"]) == 0
    assert cli.main(["report", str(out)]) == 0
    return out


def lines_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def csv_rows(out: Path, name: str) -> list[dict]:
    with open(out / "tables" / f"{name}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def mean_se(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def test_the_summary_is_the_mean_and_standard_error_of_results_jsonl(swept):
    lines = lines_of(swept)
    rows = csv_rows(swept, "summary")
    assert len(rows) == 2 * 2 + 2   # best-of-n: 2 budgets x 2 rewards; demon: 1 x 2
    for row in rows:
        group = [line for line in lines if (line["label"], line["reward"], str(line["budget"]))
                 == (row["method"], row["optimized"], row["budget"])]
        assert int(row["cells"]) == len(group) == 4
        checks = {"final reward": [line["final_reward"] for line in group],
                  "gain": [line["final_reward"] - line["baseline_reward"] for line in group],
                  "eval: brightness": [line["evaluation"]["brightness"] for line in group],
                  "seconds": [line["seconds"] for line in group]}
        for column, values in checks.items():
            mean, se = mean_se(values)
            assert float(row[f"{column} mean"]) == pytest.approx(mean, rel=1e-12, abs=1e-12), column
            assert float(row[f"{column} se"]) == pytest.approx(se, rel=1e-9, abs=1e-12), column
        assert float(row["reward queries"]) == np.mean([line["reward_queries"] for line in group])


def test_budget_tables_pool_a_reward_family_and_the_plain_row_counts_each_baseline_once(swept):
    lines = lines_of(swept)
    rows = {row["method"]: row for row in csv_rows(swept, "budgets-digit")}
    assert list(rows) == ["plain (baseline)", "best-of-n", "demon-tweedie"]
    pooled = [line["final_reward"] for line in lines if line["label"] == "best-of-n" and line["budget"] == 2]
    assert float(rows["best-of-n"]["2 mean"]) == pytest.approx(np.mean(pooled), rel=1e-12)
    assert rows["demon-tweedie"]["2 mean"] == ""   # demon has no budget 2
    baselines = {(line["reward"], line["prompt"], line["seed"]): line["baseline_reward"] for line in lines}
    assert len(baselines) == 8 and float(rows["plain (baseline)"]["4 mean"]) == pytest.approx(
        np.mean(list(baselines.values())), rel=1e-12)


def test_the_cross_reward_table_has_a_row_per_method_and_optimized_reward(swept):
    table = cross_reward_table(load_sweep(swept))
    assert table.columns[3:] == ["digit:3", "digit:8", "brightness"]
    assert [row[:3] for row in table.rows] == [["plain (baseline)", "", ""], ["best-of-n", "digit:3", 4],
                                               ["best-of-n", "digit:8", 4], ["demon-tweedie", "digit:3", 4],
                                               ["demon-tweedie", "digit:8", 4]]
    assert table.marked == {(1, 3), (2, 4), (3, 3), (4, 4)}   # the reward each row optimized
    lines = lines_of(swept)
    optimized_8 = [line["evaluation"]["digit:3"] for line in lines
                   if (line["label"], line["reward"], line["budget"]) == ("best-of-n", "digit:8", 4)]
    assert table.rows[2][3].mean == pytest.approx(np.mean(optimized_8), rel=1e-12)
    # the diagonal is the optimized reward itself: the held-out score equals the final reward
    for line in lines:
        assert line["evaluation"][line["reward"]] == pytest.approx(line["final_reward"], abs=1e-6)


def test_hacking_flags_a_held_out_reward_falling_beyond_two_standard_errors(tmp_path):
    (tmp_path / "s.toml").write_text(SWEEP)
    spec = load_spec(tmp_path / "s.toml")
    gains = [1.0, 1.2, 0.8, 1.0]                        # mean 1, se 0.08: a clear rise
    falls = {"brightness": [-0.5, -0.6, -0.4, -0.5],    # mean -0.5, se 0.04: beyond noise, flagged
             "digit:8": [-0.5, 0.6, -0.4, 0.1]}         # mean -0.05, se 0.26: noise, not flagged
    lines = [{"cell": f"c{i}", "label": "best-of-n", "status": "complete", "reward": "digit:3", "budget": 4,
              "prompt": "", "seed": i, "final_reward": gains[i], "baseline_reward": 0.0,
              "evaluation": {k: v[i] for k, v in falls.items()}, "baseline_evaluation": {k: 0.0 for k in falls}}
             for i in range(4)]
    table = hacking_table(SweepData(tmp_path, spec, lines))
    flags = {row[3]: row[-1] for row in table.rows}
    assert flags == {"digit:8": "no", "brightness": "yes"} and table.flagged == {1}
    assert "digit:3" not in flags                       # the optimized reward is not held out
    assert not is_hacking(1.0, None, -5.0, None)        # one pair: no noise estimate, no flag
    assert not is_hacking(0.1, 0.1, -5.0, 0.1)          # the optimized reward did not rise beyond noise
    assert is_hacking(1.0, 0.1, -0.3, 0.1)


def test_pixel_diversity_is_the_mean_pairwise_rms_distance(swept):
    measure = diversity_measure("pixel")
    zeros, ones = np.zeros((4, 4, 3)), np.ones((4, 4, 3))
    assert measure.mean_pairwise([zeros, ones, zeros]) == pytest.approx(2 / 3)
    assert measure.mean_pairwise([ones, ones]) == 0.0
    rows = {(row["method"], row["optimized"], row["budget"]): row for row in csv_rows(swept, "diversity")}
    plain = rows[("plain (baseline)", "", "")]
    assert int(plain["prompts"]) == 2 and 0 < float(plain["diversity mean"]) < 1
    assert len(rows) == 1 + 6


def test_embedding_diversity_loads_clip_or_dino_from_a_local_folder(tmp_path, monkeypatch):
    from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

    tiny = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    CLIPModel(CLIPConfig(text_config={**tiny, "vocab_size": 64, "max_position_embeddings": 8},
                         vision_config={**tiny, "image_size": 32, "patch_size": 8}, projection_dim=8)
              ).save_pretrained(tmp_path / "clip")
    Dinov2Model(Dinov2Config(**tiny, patch_size=14)).save_pretrained(tmp_path / "dino")
    images = np.random.default_rng(0).random((3, 40, 40, 3)).astype(np.float32)
    for kind in ("clip", "dino"):
        measure = diversity_measure(f"{kind}:{tmp_path / kind}")
        assert kind.upper() in measure.name
        assert 0 < measure.mean_pairwise(list(images)) <= 2
        assert measure.mean_pairwise([images[0], images[0]]) == pytest.approx(0, abs=1e-6)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("NOISEALIGN_OFFLINE", "1")
    with pytest.raises(Exception) as missing:
        diversity_measure("clip")
    assert "hf download openai/clip-vit-large-patch14" in str(missing.value) and "\n" not in str(missing.value)


def test_the_report_of_a_stopped_sweep_shows_what_finished_and_is_rewritten(swept, tmp_path):
    stopped = tmp_path / "stopped"
    shutil.copytree(swept, stopped)
    lines = (stopped / "results.jsonl").read_text().splitlines(keepends=True)
    (stopped / "results.jsonl").write_text("".join(lines[:5]) + lines[5][:40])   # five cells and a torn line
    assert cli.main(["report", str(stopped), "--grid-prompts", "1"]) == 0
    html = (stopped / "report.html").read_text()
    assert "5 complete, 0 failed, 24 in the sweep" in html and html.count('<table class="grid"') == 1
    assert "5 complete" in (stopped / "report.md").read_text()


@pytest.mark.parametrize("make, phrase", [
    (lambda path: path.mkdir(), "is not a sweep folder"),
    (lambda path: (path.mkdir(), (path / "sweep.json").write_text("{}")), "is not a sweep spec"),
])
def test_a_folder_that_is_no_sweep_is_one_line(tmp_path, capsys, make, phrase):
    make(tmp_path / "folder")
    assert cli.main(["report", str(tmp_path / "folder")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0], err


def test_a_sweep_without_finished_cells_or_a_bad_option_is_one_line(swept, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(swept / "sweep.json", empty)
    (empty / "results.jsonl").touch()
    for argv, phrase in [([str(empty)], "has no finished cell yet"),
                         ([str(swept), "--diversity", "lpips"], "choose pixel, clip[:SOURCE] or dino[:SOURCE]"),
                         ([str(swept), "--grid-seeds", "0"], "--grid-seeds at least 1")]:
        assert cli.main(["report", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and phrase in err[0], err
