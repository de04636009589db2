"""`noisealign sweep` through the real command line: the shipped small example end to end (then
`report`), bad input as one line with nothing created, resume after a stop or a crash, failed
cells retried then recorded, prompt sets, and the Ray executor on a local cluster the test
starts (the same results.jsonl as the local executor, timings aside; a dead worker replaced)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from noisealign import cli
from noisealign.methods.demon import DemonConfig
from noisealign.prompts import load_prompt_set
from noisealign.sweep.cells import cells_of
from noisealign.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "examples" / "digits-small.toml"
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
TIMINGS = ("seconds",)
"""The only fields of a results.jsonl line that may differ between two runs of a sweep."""

TINY = """
seeds = {seeds}
optimize = [{optimize}]
evaluate = ["brightness"]

[model]
name = "digits"

[prompts]
list = [""]

[[methods]]
{method}
"""
BEST_OF_2 = 'method = "best-of-n"\nbudgets = [2]\noptions = { steps = 4, batch-size = 1 }'


def tiny(tmp_path: Path, optimize: str = '"digit:3"', seeds: str = "[0, 1]", method: str = BEST_OF_2) -> Path:
    """A sweep file of quick cells on digits (by default best-of-2 on a 4-step grid), one per
    optimized reward and seed."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(optimize=optimize, seeds=seeds, method=method))
    return path


def sweep(*argv: str | Path) -> int:
    """`noisealign sweep ...` in this process; its exit status (a flag argparse refuses exits at once)."""
    try:
        return cli.main(["sweep", *map(str, argv)])
    except SystemExit as exit:
        return exit.code


def lines_of(out: Path) -> list[dict]:
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    return [json.loads(line, parse_constant=refuse) for line in (out / "results.jsonl").read_text().splitlines()]


def without_timings(lines: list[dict]) -> dict[str, dict]:
    return {line["cell"]: {k: v for k, v in line.items() if k not in TIMINGS} for line in lines}


# ---- the shipped small example, end to end ---------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """examples/digits-small.toml on the local executor, as `make test` and the docs run it."""
    out = tmp_path_factory.mktemp("small") / "sweep"
    assert sweep(SMALL, "--out", out) == 0
    return out


def test_the_small_example_writes_one_run_folder_and_one_line_per_cell(small):
    spec = load_spec(SMALL)
    assert (len(spec.methods), len(spec.methods[0].budgets), len(spec.prompts), len(spec.seeds),
            len(spec.evaluate)) == (2, 2, 2, 2, 2)
    lines = lines_of(small)
    assert sorted(line["cell"] for line in lines) == sorted(cell.id for cell in cells_of(spec))
    for line in lines:
        folder = small / line["run_dir"]
        result = json.loads((folder / "result.json").read_text())
        assert {k: line[k] for k in result} == result      # result.json's fields, under the same names
        assert line["status"] == "complete" and line["attempts"] == 1
        assert all((folder / name).is_file() for name in ("image.png", "baseline.png", "trace.csv", "noise.pt"))
        assert 0 < line["reward_queries"] <= line["budget"]
        for key in ("evaluation", "baseline_evaluation"):
            assert list(line[key]) == ["digit:8", "jpeg"] and all(math.isfinite(v) for v in line[key].values())
    # the baseline is the plain sample of (prompt, seed): the same in every cell that shares them
    baselines = {}
    for line in lines:
        baselines.setdefault((line["prompt"], line["seed"]), set()).add(json.dumps(line["baseline_evaluation"]))
    assert all(len(values) == 1 for values in baselines.values())


def test_rerunning_the_finished_example_runs_nothing_and_the_report_follows(small, capsys):
    before = (small / "results.jsonl").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (small / "cells").rglob("*")}
    capsys.readouterr()
    assert sweep(SMALL, "--out", small) == 0
    assert "16 complete, 0 failed of 16 cells" in capsys.readouterr().out
    assert (small / "results.jsonl").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in (small / "cells").rglob("*")} == stamps
    assert cli.main(["report", str(small)]) == 0
    assert (small / "report.html").is_file() and (small / "report.md").is_file()
    assert {p.name for p in (small / "tables").iterdir()} >= {"summary.csv", "cross-reward.csv", "hacking.csv",
                                                              "diversity.csv", "budgets-digit.csv"}


# ---- bad input: one line, exit 2, nothing created ---------------------------------------------

BAD = {  # name: (file edits or a whole text, extra flags, a phrase of the one error line)
    "no such file": (None, [], "does not exist"),
    "not TOML": ("seeds = [0,", [], "is not valid TOML"),
    "unknown key": ({"seeds": "sedes"}, [], "unknown key 'sedes'"),
    "unknown method": ({'method = "best-of-n"': 'method = "nosuch"'}, [], "unknown method 'nosuch'"),
    "unknown option": ({"batch-size": "batch-sise"}, [], "has no option 'batch-sise'"),
    "option of another method": ({"batch-size = 1": "lr = 0.1"}, [], "has no option 'lr'"),
    "bad option value": ({"steps = 4": 'steps = "four"'}, [], "'four' is not a whole number"),
    "option out of range": ({"steps = 4": "steps = 0"}, [], "need at least 1 grid point"),
    "budget below the method's need": ({"batch-size = 1": "n = 8"}, [], "needs a budget of at least 8"),
    "malformed reward": ({'"digit:3"': '"digit:3+"'}, [], "malformed reward spec"),
    "unknown reward": ({'"digit:3"': '"nosuch"'}, [], "unknown reward 'nosuch'"),
    "bad reward argument": ({'"digit:3"': '"digit:12"'}, [], "needs a target digit"),
    "prompt the model refuses": ({'list = [""]': 'list = ["a cat"]'}, [], "takes a prompt"),
    "unknown prompt set": ({'list = [""]': 'set = "nosuch"'}, [], "unknown prompt set 'nosuch'"),
    "seed out of range": ({"seeds = [0, 1]": "seeds = [-1]"}, [], "outside [0, 2^63)"),
    "two labels alike": ({"[[methods]]": '[[methods]]\nmethod = "plain"\nlabel = "best-of-n"\n[[methods]]'}, [],
                         "labelled 'best-of-n'"),
    "unknown model": ({'name = "digits"': 'name = "nosuch"'}, [], "unknown model 'nosuch'"),
    "model option not taken": ({'name = "digits"': 'name = "digits"\ndtype = "fp16"'}, [], "--dtype does not apply"),
    "unknown method label flag": ({}, ["--methods", "demon"], "no method labelled demon"),
    "workers on the local executor": ({}, ["--workers", "2"], "runs one worker"),
    "ray address on the local executor": ({}, ["--ray-address", "auto"], "applies to --executor ray"),
    "negative retries": ({}, ["--retries", "-1"], "--retries must be 0 or more"),
    "bad seeds flag": ({}, ["--seeds", "a-b"], "is not a whole number"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_creates_nothing(tmp_path, capsys, case):
    edits, flags, phrase = BAD[case]
    if edits is None:
        spec = tmp_path / "missing.toml"
    elif isinstance(edits, str):
        spec = tmp_path / "broken.toml"
        spec.write_text(edits)
    else:
        text = TINY.format(optimize='"digit:3"', seeds="[0, 1]", method=BEST_OF_2)
        for old, new in edits.items():
            assert old in text, old
            text = text.replace(old, new)
        spec = tmp_path / "bad.toml"
        spec.write_text(text)
    out = tmp_path / "out"
    assert sweep(spec, "--out", out, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_an_existing_folder_is_never_taken_over(tmp_path, capsys):
    spec = tiny(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert sweep(spec, "--out", other) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_resuming_with_another_spec_is_refused(tmp_path, capsys):
    spec, out = tiny(tmp_path), tmp_path / "out"
    assert sweep(spec, "--out", out, "--seeds", "0", "--quiet") == 0
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    assert sweep(spec, "--out", out, "--seeds", "0-1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds another sweep (its seeds differ: [0] there, [0, 1] now)" in err[0], err
    assert sorted(p.name for p in out.rglob("*")) == before


# ---- resume -----------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_sweep_and_resume_runs_only_the_unfinished_cells(tmp_path, monkeypatch, capsys, signum):
    """The second cell is stopped halfway: exit 130 / 143, results.jsonl keeps the first cell
    only, and the resumed sweep runs the second and third without touching the first."""
    spec = tiny(tmp_path, '"python:misbehaving_rewards.slow_after_marker"', seeds="[0, 1, 2]")
    out, marker = tmp_path / "out", tmp_path / "marker"
    # each cell calls the reward 4 times (baseline, 2 candidates, result): call 6 is inside cell 2
    env = {**ENV, "NOISEALIGN_TEST_MARKER": str(marker), "NOISEALIGN_TEST_AFTER": "6", "NOISEALIGN_TEST_SLEEP": "0.3"}
    process = subprocess.Popen([sys.executable, "-m", "noisealign", "sweep", str(spec), "--out", str(out), "--quiet"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the reward was never called"
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert err.strip().splitlines() == [f"stopped ({signal.Signals(signum).name}): 1 of 3 cells finished in {out}; "
                                        "rerun the same command to resume"], err
    first = lines_of(out)
    assert [line["cell"] for line in first] == ["best-of-n-b2-r0-p0-s0"]
    assert [p.name for p in (out / "cells").iterdir()] == ["best-of-n-b2-r0-p0-s0"]
    stamp = (out / "cells" / "best-of-n-b2-r0-p0-s0" / "result.json").stat().st_mtime_ns

    monkeypatch.setenv("NOISEALIGN_TEST_AFTER", "1000000")   # resumed in this process: no more sleeping
    monkeypatch.setenv("NOISEALIGN_TEST_MARKER", str(marker))
    assert sweep(spec, "--out", out) == 0
    assert "3 cells, resuming: 1 finished" in capsys.readouterr().err
    lines = lines_of(out)
    assert lines[0] == first[0] and [line["seed"] for line in lines] == [0, 1, 2]
    assert all(line["status"] == "complete" for line in lines)
    assert (out / "cells" / "best-of-n-b2-r0-p0-s0" / "result.json").stat().st_mtime_ns == stamp


GMM = """
seeds = [0, 1, 2]
optimize = ["coordinate:0"]
evaluate = ["coordinate:1"]

[model]
name = "gmm"

[prompts]
list = [""]

[[methods]]
method = "demon"
budgets = [8]
options = { K = 2, lookahead = "tweedie" }

[[methods]]
method = "best-of-n"
budgets = [4]
options = { steps = 6, batch-size = 2 }

[[methods]]
method = "dno"
budgets = [3]
options = { steps = 6, regularizer = "moments" }
"""


def test_a_seed_batched_sweep_is_the_same_sweep_bit_for_bit_on_the_gmm(tmp_path, capsys, monkeypatch):
    """--seed-batch 2: each method's seeds 0, 1 as one batch in lockstep, then seed 2 alone (dno's
    two cells meet at one `align_batch` of both seeds); every line, held-out rewards included,
    equals the sweep run one seed at a time."""
    from noisealign.sweep import worker as worker_module

    batches = []
    align_batch = worker_module.align_batch
    monkeypatch.setattr(worker_module, "align_batch", lambda problem, method, seeds, *rest: batches.append(
        (method.name, list(seeds))) or align_batch(problem, method, seeds, *rest))
    spec = tmp_path / "gmm.toml"
    spec.write_text(GMM)
    assert sweep(spec, "--out", tmp_path / "batched", "--seed-batch", "2") == 0
    assert "9 cells; local executor, 1 worker(s), seeds 2 at a time" in capsys.readouterr().err
    assert batches == [("dno", [0, 1])]
    assert sweep(spec, "--out", tmp_path / "alone", "--quiet") == 0
    assert_same_sweep(tmp_path / "batched", tmp_path / "alone", cells=9)


def assert_same_sweep(batched: Path, alone: Path, cells: int) -> list[dict]:
    """Two sweep folders hold the same results, timings aside, and the same noises; returns the lines."""
    lines = lines_of(batched)
    assert without_timings(lines) == without_timings(lines_of(alone)) and len(lines) == cells
    for line in lines:
        assert (batched / line["run_dir"] / "noise.pt").read_bytes() == (alone / line["run_dir"] / "noise.pt").read_bytes()
    return lines


def test_cells_whose_reward_logs_into_the_run_folder_run_one_after_another(tmp_path, monkeypatch):
    """The VLM judge logs its requests into the run folder it is attached to, one at a time: its
    cells are not batched, whatever --seed-batch says."""
    from noisealign.sweep import worker as worker_module

    spec = tmp_path / "gmm.toml"
    spec.write_text(GMM)
    worker = worker_module.Worker(load_spec(spec), threads=1)
    cells = [cell for cell in cells_of(worker.spec) if cell.method == "best-of-n"][:2]
    assert not worker._logs_into_run_folders(cells[0])
    reward = worker.rewards["coordinate:0"]

    class Logging:                                 # stands for the VLM judge
        name, differentiable = reward.name, False

        def __call__(self, outputs, prompts):
            return reward(outputs, prompts)

        def attach_run_dir(self, path):
            self.run_dir = path

    worker.rewards["coordinate:0"] = Logging()
    monkeypatch.setattr(worker_module, "Lockstep", None)     # a batch would fail to start
    assert worker._logs_into_run_folders(cells[0])
    assert [r.status for r in worker.run_group(cells)] == ["complete", "complete"]


def test_a_reward_failing_in_a_gradient_seed_batch_fails_each_cell_with_its_own_record(tmp_path):
    """dno's cells meet at one align_batch; a reward that fails there fails both cells, each keeping
    its own seed's record and best sample so far."""
    from noisealign.sweep import worker as worker_module

    spec = tmp_path / "gmm.toml"
    spec.write_text(GMM)
    worker = worker_module.Worker(load_spec(spec), threads=1)
    cells = [cell for cell in cells_of(worker.spec) if cell.method == "dno"][:2]
    reward = worker.rewards["coordinate:0"]

    class FailsAtThirdCall:                        # the baselines' call, DNO's iterate 0, then down
        name, differentiable, calls = reward.name, True, 0

        def __call__(self, outputs, prompts):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("the reward server is down")
            return reward(outputs, prompts)

    worker.rewards["coordinate:0"] = FailsAtThirdCall()
    results = worker.run_group(cells)
    assert [r.status for r in results] == ["failed", "failed"]
    assert [r.record["seed"] for r in results] == [cell.seed for cell in cells] == [0, 1]
    assert all("the reward server is down" in r.error and r.record["status"] == "failed" for r in results)
    assert all("noise.pt" in r.files for r in results)           # each kept its best iterate so far


def sigterm_in_a_seed_batch(spec: Path, out: Path, marker: Path, after: int) -> str:
    """`sweep spec --seed-batch 2` in a subprocess, sent SIGTERM once its reward (misbehaving_rewards'
    slow_after_marker) has been called `after` times; its one stop line, after checking exit 143."""
    env = {**ENV, "NOISEALIGN_TEST_MARKER": str(marker), "NOISEALIGN_TEST_AFTER": str(after),
           "NOISEALIGN_TEST_SLEEP": "0.3"}
    process = subprocess.Popen([sys.executable, "-m", "noisealign", "sweep", str(spec), "--out", str(out), "--quiet",
                                "--seed-batch", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the reward was never called"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    (line,) = err.strip().splitlines()
    return line


def assert_resumes_to_the_sweep_run_alone(spec: Path, out: Path, marker: Path, tmp_path: Path, monkeypatch) -> None:
    """Resuming `out` finishes it with the runs of the sweep run one seed at a time (the digits
    model's batched convolutions may round differently: the same calls, rewards to float rounding)."""
    monkeypatch.setenv("NOISEALIGN_TEST_AFTER", "1000000")
    monkeypatch.setenv("NOISEALIGN_TEST_MARKER", str(marker))
    assert sweep(spec, "--out", out, "--quiet", "--seed-batch", "2") == 0
    assert sweep(spec, "--out", tmp_path / "alone", "--quiet") == 0
    counts = lambda lines: {line["cell"]: (line["status"], line["reward_queries"], line["nfe"]) for line in lines}  # noqa: E731
    resumed, alone = lines_of(out), lines_of(tmp_path / "alone")
    assert counts(resumed) == counts(alone) and len(resumed) == 3
    for a, b in zip(sorted(resumed, key=lambda line: line["cell"]), sorted(alone, key=lambda line: line["cell"])):
        assert a["final_reward"] == pytest.approx(b["final_reward"], abs=1e-4)


def test_a_signal_during_a_seed_batch_keeps_the_batches_that_finished(tmp_path, monkeypatch):
    """Seeds 0, 1 as one batch, then seed 2: SIGTERM inside the second batch keeps the first two
    cells; the resumed sweep runs the third and equals a sweep run one seed at a time."""
    spec = tiny(tmp_path, '"python:misbehaving_rewards.slow_after_marker"', seeds="[0, 1, 2]")
    out, marker = tmp_path / "out", tmp_path / "marker"
    # the reward is called 4 times by a batch (baseline, 2 candidates, result; each call for both seeds)
    assert sigterm_in_a_seed_batch(spec, out, marker, after=6) == \
        f"stopped (SIGTERM): 2 of 3 cells finished in {out}; rerun the same command to resume"
    assert [line["seed"] for line in lines_of(out)] == [0, 1]
    assert_resumes_to_the_sweep_run_alone(spec, out, marker, tmp_path, monkeypatch)


def test_a_signal_during_a_gradient_seed_batch_stops_the_sweep_and_resume_finishes_it(tmp_path, monkeypatch):
    """dno's cells of seeds 0 and 1 meet at one align_batch on the main thread: SIGTERM in the middle
    of it stops the sweep with no cell of the batch recorded; the resumed sweep runs all three and
    makes the calls of a sweep run one seed at a time."""
    spec = tiny(tmp_path, '"python:misbehaving_rewards.slow_after_marker"', seeds="[0, 1, 2]",
                method='method = "dno"\nbudgets = [3]\noptions = { steps = 4 }')
    out, marker = tmp_path / "out", tmp_path / "marker"
    # the batch's calls of the reward: its baselines (one call), then DNO's iterates 0, 1, 2: the marker at iterate 1
    assert sigterm_in_a_seed_batch(spec, out, marker, after=3) == \
        f"stopped (SIGTERM): 0 of 3 cells finished in {out}; rerun the same command to resume"
    assert not (out / "results.jsonl").exists() or lines_of(out) == []
    assert_resumes_to_the_sweep_run_alone(spec, out, marker, tmp_path, monkeypatch)


def test_resume_after_a_crash_cuts_the_torn_line_and_reruns_cells_without_a_line(tmp_path):
    spec, out = tiny(tmp_path), tmp_path / "out"
    assert sweep(spec, "--out", out, "--quiet") == 0
    complete = lines_of(out)
    kept, lost = complete
    # a crash after the second cell's folder was renamed but before its line, and mid-way through a third
    (out / "results.jsonl").write_text(json.dumps(kept) + "\n" + '{"cell": "best-of-n-b2-r0-p0-s1", "sta')
    (out / "cells" / ".partial-x").mkdir()
    stamp = (out / "cells" / kept["cell"] / "image.png").stat().st_mtime_ns
    assert sweep(spec, "--out", out, "--quiet") == 0
    again = lines_of(out)
    assert again[0] == kept and without_timings(again) == without_timings(complete)
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted([kept["cell"], lost["cell"]])
    assert (out / "cells" / kept["cell"] / "image.png").stat().st_mtime_ns == stamp


def test_a_failing_cell_is_retried_then_recorded_as_failed_and_the_sweep_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISEALIGN_TEST_AFTER", "1")
    spec = tiny(tmp_path, '"brightness", "python:misbehaving_rewards.fails_at_call"', seeds="[0]")
    out = tmp_path / "out"
    assert sweep(spec, "--out", out, "--retries", "2", "--quiet") == 0
    assert "1 complete, 1 failed of 2 cells" in capsys.readouterr().out
    good, bad = lines_of(out)
    assert good["status"] == "complete" and good["attempts"] == 1
    assert bad["status"] == "failed" and bad["attempts"] == 3 and "the reward server is down" in bad["error"]
    assert bad["evaluation"] is None and bad["reward"] == "python:misbehaving_rewards.fails_at_call"
    result = json.loads((out / bad["run_dir"] / "result.json").read_text())
    assert result["status"] == "failed"
    assert sweep(spec, "--out", out, "--quiet") == 0   # a failed cell is finished: not run again
    assert len(lines_of(out)) == 2


# ---- the sweep file ---------------------------------------------------------------------------

def test_method_options_are_generates_flags_and_flags_override_the_file(tmp_path):
    spec = load_spec(SMALL, {"seeds": [3, 4, 5], "budgets": [8], "methods": ["demon"], "evaluate": ["jpeg"]})
    assert spec.seeds == (3, 4, 5) and spec.evaluate == ("jpeg",) and [m.label for m in spec.methods] == ["demon"]
    assert spec.methods[0].budgets == (8,) and spec.methods[0].config == DemonConfig(K=4, lookahead_steps=4)
    full = load_spec(ROOT / "examples" / "digits.toml")
    assert len(cells_of(full)) == (6 * 6 + 8 + 2 + 2 + 2) * 3 * 8
    assert full.methods[0].config == DemonConfig()


def test_prompt_sets_shipped_and_read_from_where_the_user_has_them(tmp_path, monkeypatch):
    assert load_prompt_set("digits") == [str(d) for d in range(10)]
    animals = load_prompt_set("animals")
    assert len(animals) == len(set(animals)) >= 50 and "cat" in animals
    formats = {"p.txt": "a fox\n\na cat\n", "p.json": '["a fox", {"prompt": "a cat"}]',
               "p.jsonl": '{"prompt": "a fox", "tag": "x"}\n"a cat"\n', "p.csv": "Prompts,Category\na fox,x\na cat,y\n",
               "p.tsv": "Prompt\tCategory\na fox\tx\na cat\ty\n"}
    for name, text in formats.items():
        (tmp_path / name).write_text(text)
        assert load_prompt_set(f"file:{tmp_path / name}") == ["a fox", "a cat"], name
    # benchmarks: from a path, the hpsv2 package's folder, or the Hugging Face cache
    (tmp_path / "geneval" / "prompts").mkdir(parents=True)
    (tmp_path / "geneval" / "prompts" / "evaluation_metadata.jsonl").write_text('{"prompt": "two dogs", "tag": "c"}\n')
    assert load_prompt_set(f"geneval:{tmp_path / 'geneval'}") == ["two dogs"]
    monkeypatch.setenv("HPS_ROOT", str(tmp_path / "hps"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    (tmp_path / "hps" / "datasets" / "benchmark").mkdir(parents=True)
    (tmp_path / "hps" / "datasets" / "benchmark" / "photo.json").write_text('["a photo of a fox"]')
    assert load_prompt_set("hpsv2:photo") == ["a photo of a fox"]
    snapshot = tmp_path / "hf" / "hub" / "datasets--nateraw--parti-prompts" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "PartiPrompts.tsv").write_text("Prompt\tCategory\na red cube\tx\n")
    assert load_prompt_set("parti") == ["a red cube"]
    for name, phrase in [("drawbench", "hf download sayakpaul/drawbench"), ("hpsv2:anime", "hpsv2.benchmark_prompts"),
                         ("geneval", "djghosh13/geneval"), (f"file:{tmp_path / 'none.txt'}", "does not exist")]:
        with pytest.raises(Exception) as raised:
            load_prompt_set(name)
        assert phrase in str(raised.value) and "\n" not in str(raised.value)


# ---- Ray ----------------------------------------------------------------------------------------

RAY_REWARDS = '''
"""Rewards that misbehave inside a Ray worker: one kills its process once, one always raises."""
import os
from pathlib import Path


class _Brightness:
    differentiable = True

    def __init__(self, name):
        self.name = name


class DiesOnce(_Brightness):
    def __call__(self, outputs, prompts):
        marker = Path(__file__).with_name("died")
        if not marker.exists():
            marker.write_text("once")
            os._exit(1)
        return outputs.float().flatten(1).mean(dim=1)


class AlwaysFails(_Brightness):
    def __call__(self, outputs, prompts):
        raise RuntimeError("this reward always fails")


def dies_once():
    return DiesOnce("dies_once")


def always_fails():
    return AlwaysFails("always_fails")
'''


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local 2-CPU Ray cluster, started as the Ray executor starts one, shut down afterwards;
    its workers can import a test reward module."""
    helpers = tmp_path_factory.mktemp("ray-rewards")
    (helpers / "sweep_ray_rewards.py").write_text(RAY_REWARDS)
    settings = {"PYTHONPATH": os.pathsep.join(filter(None, [str(helpers), str(ROOT / "src"),
                                                            os.environ.get("PYTHONPATH")])),
                "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)   # before Ray is imported and started: its workers inherit them
    try:
        try:
            import ray
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail("ray is not installed under CI (pip install -e '.[dev]')")
            pytest.skip("ray is not installed (pip install 'noisealign[ray]')")
        from noisealign.sweep.ray_executor import LOCAL_CLUSTER

        ray.init(num_cpus=2, **LOCAL_CLUSTER)
        try:
            yield helpers
        finally:
            ray.shutdown()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_ray_gives_the_same_results_as_the_local_executor(small, ray_cluster, tmp_path, capfd):
    out = tmp_path / "ray"
    assert sweep(SMALL, "--out", out, "--executor", "ray", "--workers", "2") == 0
    captured = capfd.readouterr()
    assert captured.err.strip().splitlines() == [f"sweep {out}: 16 cells; ray executor, 2 worker(s), seeds 1 at a time"], captured.err
    assert without_timings(lines_of(out)) == without_timings(lines_of(small))
    cell = lines_of(small)[0]["cell"]
    assert (out / "cells" / cell / "image.png").read_bytes() == (small / "cells" / cell / "image.png").read_bytes()


def test_ray_replaces_a_dead_worker_and_records_a_cell_that_keeps_failing(ray_cluster, tmp_path):
    spec = tiny(tmp_path, '"python:sweep_ray_rewards.dies_once", "python:sweep_ray_rewards.always_fails"',
                seeds="[0]")
    out = tmp_path / "out"
    assert sweep(spec, "--out", out, "--executor", "ray", "--workers", "2", "--quiet") == 0
    lines = {line["reward"].rsplit(".", 1)[1]: line for line in lines_of(out)}
    assert (ray_cluster / "died").exists()
    assert lines["dies_once"]["status"] == "complete" and lines["dies_once"]["attempts"] == 2
    failed = lines["always_fails"]
    assert failed["status"] == "failed" and failed["attempts"] == 2 and "always fails" in failed["error"]
    assert json.loads((out / failed["run_dir"] / "result.json").read_text())["status"] == "failed"


def test_a_signal_stops_a_ray_sweep_and_resume_on_ray_finishes_it(tmp_path):
    """SIGINT to the driver of a Ray sweep (its own local cluster, 2 workers): exit 130, one line,
    results.jsonl holds exactly the finished cells, and rerunning the command on Ray runs only the
    rest and leaves the finished lines as they were."""
    pytest.importorskip("ray")
    spec = tiny(tmp_path, '"python:misbehaving_rewards.slow_after_marker"', seeds="[0, 1, 2, 3, 4, 5]")
    out, marker = tmp_path / "out", tmp_path / "marker"
    command = [sys.executable, "-m", "noisealign", "sweep", str(spec), "--out", str(out), "--quiet",
               "--executor", "ray", "--workers", "2"]
    # 4 reward calls a cell, counted per worker process: call 6 is inside a worker's second cell
    env = {**ENV, "NOISEALIGN_TEST_MARKER": str(marker), "NOISEALIGN_TEST_AFTER": "6", "NOISEALIGN_TEST_SLEEP": "0.5",
           "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the reward was never called"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    finished = lines_of(out)
    assert 1 <= len(finished) < 6 and all(line["status"] == "complete" for line in finished)
    assert err.strip().splitlines() == [f"stopped (SIGINT): {len(finished)} of 6 cells finished in {out}; "
                                        "rerun the same command to resume"], err

    resumed = subprocess.run(command, cwd=ROOT, env={**env, "NOISEALIGN_TEST_AFTER": "1000000"},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    lines = lines_of(out)
    assert lines[:len(finished)] == finished and sorted(line["seed"] for line in lines) == list(range(6))
    assert all(line["status"] == "complete" for line in lines)
