"""The run contract through the real command line (subprocesses): bad input is one line and
exit 2 with nothing created; SIGINT and SIGTERM keep the trace and the best sample so far,
which `regenerate` reproduces; a failing reward does the same with status 'failed'; two
writers never share a run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
       "NOISEALIGN_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent/noisealign-test-hf"}
FAST = {  # each method's smallest sensible run on the digits model
    "plain": ["--method", "plain", "--steps", "6"],
    "best-of-n": ["--method", "best-of-n", "--steps", "6", "--batch-size", "2", "--budget", "40"],
    "demon": ["--method", "demon", "--K", "2", "--lookahead", "tweedie", "--budget", "40"],
    "dno": ["--method", "dno", "--steps", "6", "--budget", "40"],
    "fk": ["--method", "fk", "--steps", "8", "--particles", "4", "--budget", "40"],
    "svdd": ["--method", "svdd", "--candidates", "4", "--budget", "40"],
    "beam": ["--method", "beam", "--beams", "2", "--candidates", "2", "--budget", "40"],
    "zo-search": ["--method", "zo-search", "--steps", "6", "--neighbours", "4", "--budget", "40"],
    "path-search": ["--method", "path-search", "--paths", "2", "--branches", "2", "--budget", "40"],
    "guidance": ["--method", "guidance", "--steps", "8", "--budget", "40"],
    "reno": ["--method", "reno", "--steps", "2", "--budget", "40"],
}
SEARCHING = ["best-of-n", "demon", "dno", "fk", "svdd", "beam", "zo-search", "path-search", "guidance", "reno"]
"""The methods that keep a best sample so far: every one is interrupted and made to fail."""
SIGNALLED = [(method, signum) for method in SEARCHING[:3] for signum in (signal.SIGINT, signal.SIGTERM)] + [
    (method, (signal.SIGINT, signal.SIGTERM)[i % 2]) for i, method in enumerate(SEARCHING[3:])]
"""Both signals for the first three methods, one each (alternating) for the others, to keep the suite fast."""


def noisealign(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "noisealign", *argv], cwd=ROOT, env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def strict_json(path: Path) -> dict:
    """result.json, parsed by a strict parser (NaN / Infinity tokens are an error)."""
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---- bad input ------------------------------------------------------------------------------

def _corrupt_pipelines(root: Path) -> dict[str, Path]:
    """A pipeline folder whose model_index.json is not JSON, and one whose unet config is nonsense."""
    bad_index = root / "bad-index"
    bad_index.mkdir()
    (bad_index / "model_index.json").write_text("{ not json")
    bad_unet = root / "bad-unet"
    for part in ("scheduler", "unet", "vae"):
        (bad_unet / part).mkdir(parents=True)
    (bad_unet / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (bad_unet / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    (bad_unet / "unet" / "config.json").write_text(json.dumps({"sample_size": "eight", "block_out_channels": 3}))
    (bad_unet / "vae" / "config.json").write_text(json.dumps({"block_out_channels": None}))
    return {"bad-index": bad_index, "bad-unet": bad_unet}


BAD_INPUT = {  # name: (flags, a phrase of the one error line)
    "unknown model": (["--model", "nosuch"], "unknown model 'nosuch'"),
    "unknown reward": (["--reward", "nosuch"], "unknown reward 'nosuch'"),
    "malformed reward spec": (["--reward", "digit:3+"], "malformed reward spec"),
    "unknown method": (["--method", "nosuch"], "invalid choice: 'nosuch'"),
    "another method's flag --lr": (["--method", "demon", "--lr", "5"], "--lr is an option of dno"),
    "another method's flag --q": (["--method", "demon", "--q", "3"], "--q is an option of dno"),
    "no method takes it": (["--method", "demon", "--nosuch", "1"], "unrecognized arguments: --nosuch"),
    "plain --steps 0": (["--method", "plain", "--steps", "0"], "--steps 0"),
    "--ode-after nan": (["--ode-after", "nan"], "argument --ode-after"),
    "--gamma nan": (["--method", "dno", "--gamma", "nan"], "argument --gamma"),
    "--checkpointing some": (["--method", "dno", "--checkpointing", "some"], "argument --checkpointing"),
    "--memory-budget 0": (["--method", "dno", "--memory-budget", "0"], "--memory-budget 0"),
    "--memory-budget nan": (["--method", "dno", "--memory-budget", "nan"], "argument --memory-budget"),
    "--eta nan": (["--method", "plain", "--eta", "nan"], "argument --eta"),
    "--guidance nan": (["--guidance", "nan"], "argument --guidance"),
    "--tau inf": (["--tau", "inf"], "argument --tau"),
    "--seed -1": (["--seed", "-1"], "--seed must lie in [0, 2^63)"),
    "--seed 2^64": (["--seed", str(2 ** 64)], "--seed must lie in [0, 2^63)"),
    "--grid 0": (["--grid", "0"], "--grid must be at least 1"),
    "--budget 0 for best-of-n": (["--method", "best-of-n", "--budget", "0"], "--budget must be"),
    "--threads 0": (["--threads", "0"], "--threads must be at least 1"),
    "--dtype on digits": (["--dtype", "fp16"], "--dtype does not apply to the digits model"),
    "--device on gmm": (["--model", "gmm", "--device", "cpu"], "--device does not apply to the gmm model"),
    "--height on digits": (["--height", "64"], "--height does not apply to the digits model"),
    "--guidance on gmm": (["--model", "gmm", "--guidance", "2"], "--guidance does not apply to the gmm model"),
    "--device cuda without CUDA": (["--device", "cuda"], "CUDA device"),
    "K above the budget": (["--method", "demon", "--K", "16", "--budget", "8"], "demon needs at least K = 16"),
    "prompt the model cannot take": (["--prompt", "a cat"], "the digits model takes a prompt"),
    "DNO budget that pays no step": (["--method", "dno", "--budget", "1"], "cannot pay one dno step"),
    "consistency look-ahead on digits": (["--lookahead", "consistency"], "offers no consistency"),
    "grad DNO on a non-differentiable reward": (["--method", "dno", "--dno-mode", "grad", "--reward", "jpeg"],
                                                "not differentiable"),
    "learned reward without its weights, offline": (["--offline", "--reward", "pickscore"],
                                                     "is not in the Hugging Face cache"),
    "python reward that does not import": (["--reward", "python:nosuch_module.reward"], "cannot import"),
    "corrupt model_index.json": (["--model", "{bad-index}"], "is not valid JSON"),
    "corrupt unet config": (["--model", "{bad-unet}", "--reward", "brightness"], "look damaged"),
    "--out inside a file": (["--out", "{file}/run"], "is a file"),
}


def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path):
    folders = {name: str(path) for name, path in _corrupt_pipelines(tmp_path).items()}
    (tmp_path / "file").write_text("a file, not a folder")
    folders["file"] = str(tmp_path / "file")

    def attempt(item):
        name, (flags, phrase) = item
        out = tmp_path / "runs" / name.replace(" ", "_").replace("/", "_")
        flags = [flag.format(**folders) for flag in flags]
        if "--out" not in flags:
            flags += ["--out", str(out)]
        return name, phrase, out, noisealign("generate", "--quiet", *flags)

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(attempt, BAD_INPUT.items()))
    for name, phrase, out, done in outcomes:
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (name, done.returncode, done.stderr)
        assert len(lines) == 1 and phrase in lines[0], (name, done.stderr)
        assert "Traceback" not in done.stderr and not out.exists(), name


def test_an_existing_folder_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = noisealign("generate", "--quiet", "--model", "gmm", "--method", "plain", "--out", str(out))
    assert done.returncode == 2 and "already exists" in done.stderr and len(done.stderr.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_python_dash_m_and_help_list_every_method_s_options():
    done = noisealign("generate", "--help")
    assert done.returncode == 0
    for section in ("plain options", "best-of-n options", "demon options", "dno options", "--lookahead", "--lr"):
        assert section in done.stdout


# ---- signals --------------------------------------------------------------------------------

def _start(tmp_path: Path, flags: list[str], name: str) -> tuple[subprocess.Popen, Path, Path]:
    out, marker = tmp_path / name, tmp_path / f"{name}.marker"
    env = {**ENV, "NOISEALIGN_TEST_MARKER": str(marker), "NOISEALIGN_TEST_AFTER": "3", "NOISEALIGN_TEST_SLEEP": "0.3"}
    process = subprocess.Popen([sys.executable, "-m", "noisealign", "generate", "--quiet", "--out", str(out),
                                "--reward", "python:misbehaving_rewards.slow_after_marker", *flags],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, out, marker


def _wait_for(marker: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before the signal: {process.communicate()[1]}")
        assert time.monotonic() < deadline, "the reward was never called"
        time.sleep(0.05)


@pytest.mark.parametrize("method, signum", SIGNALLED, ids=[f"{method}-{signum.name}" for method, signum in SIGNALLED])
def test_a_signal_keeps_the_trace_and_the_best_sample_which_regenerates(tmp_path, method, signum):
    process, out, marker = _start(tmp_path, FAST[method], method)
    _wait_for(marker, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err and "interrupted" in err, err
    result = strict_json(out / "result.json")
    assert result["status"] == "interrupted" and result["signal"] == signal.Signals(signum).name
    assert 0 < result["reward_queries"] < result["budget"] and result["final_reward"] is not None
    assert (out / "trace.csv").read_text().count("\n") >= 2 and (out / "baseline.png").exists()
    assert (out / "image.png").exists() and (out / "noise.pt").exists()
    again = noisealign("regenerate", str(out))
    assert again.returncode == 0 and "identical" in again.stdout, again.stdout + again.stderr


def test_plain_interrupted_keeps_result_json(tmp_path):
    """Plain has no best so far: the folder says it was interrupted, and where it stood."""
    process, out, marker = _start(tmp_path, ["--method", "plain", "--steps", "6", "--grid", "50"], "plain")
    _wait_for(marker, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in err, err
    result = strict_json(out / "result.json")
    assert result["status"] == "interrupted" and (out / "trace.csv").exists() and (out / "image.png").exists()


# ---- a failing reward -------------------------------------------------------------------------

@pytest.mark.parametrize("method", SEARCHING)
def test_a_reward_failing_mid_run_keeps_the_best_sample_with_status_failed(tmp_path, method):
    out = tmp_path / method
    done = noisealign("generate", "--quiet", "--out", str(out), "--reward", "python:misbehaving_rewards.fails_at_call",
                      *FAST[method], env={"NOISEALIGN_TEST_AFTER": "6", "NOISEALIGN_TEST_FAILURE": "raise"})
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "RuntimeError: the reward server is down" in done.stderr and "partial results kept" in done.stderr
    result = strict_json(out / "result.json")
    assert result["status"] == "failed" and "the reward server is down" in result["error"]
    assert result["reward_queries"] > 0 and (out / "trace.csv").exists() and (out / "noise.pt").exists()
    again = noisealign("regenerate", str(out))
    assert again.returncode == 0 and "identical" in again.stdout, again.stdout + again.stderr


@pytest.mark.parametrize("failure, phrase", [("nan", "non-finite"), ("list", "returned a list"),
                                             ("int", "torch.int64 tensor")])
def test_a_bad_reward_value_is_a_failure_even_at_the_baseline(tmp_path, failure, phrase):
    out = tmp_path / failure
    done = noisealign("generate", "--quiet", "--out", str(out), "--reward", "python:misbehaving_rewards.fails_at_call",
                      *FAST["plain"], env={"NOISEALIGN_TEST_AFTER": "1", "NOISEALIGN_TEST_FAILURE": failure})
    assert done.returncode == 2 and phrase in done.stderr and "Traceback" not in done.stderr, done.stderr
    result = strict_json(out / "result.json")
    assert result["status"] == "failed" and phrase in result["error"]


# ---- one writer per folder ------------------------------------------------------------------

def test_two_generate_runs_on_one_out_one_is_refused(tmp_path):
    out = tmp_path / "shared"
    env = {**ENV, "NOISEALIGN_TEST_MARKER": str(tmp_path / "m"), "NOISEALIGN_TEST_SLEEP": "0.05"}
    argv = [sys.executable, "-m", "noisealign", "generate", "--quiet", "--out", str(out),
            "--reward", "python:misbehaving_rewards.slow_after_marker", *FAST["best-of-n"]]
    first, second = (subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for _ in range(2))
    done = [(p.wait(timeout=120), p.communicate()[1]) for p in (first, second)]
    codes = sorted(code for code, _ in done)
    assert codes == [0, 2], done
    refused = next(err for code, err in done if code == 2)
    assert len(refused.strip().splitlines()) == 1 and ("another noisealign process" in refused
                                                       or "already exists" in refused)
    assert strict_json(out / "result.json")["status"] == "complete"


def test_regenerate_builds_no_reward(tmp_path):
    """The run's reward lives in a module that regenerate cannot even import: it is never built."""
    out = tmp_path / "run"
    done = noisealign("generate", "--quiet", "--out", str(out), "--reward", "python:misbehaving_rewards.fails_at_call",
                      *FAST["demon"], env={"NOISEALIGN_TEST_AFTER": "1000"})
    assert done.returncode == 0, done.stderr
    again = noisealign("regenerate", str(out), env={"PYTHONPATH": str(ROOT / "src")})
    assert again.returncode == 0 and "identical" in again.stdout, again.stdout + again.stderr
