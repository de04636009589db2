"""`noisealign ui` on the command line: bad input is one line and exit 2; a real server
process (the default bundled digits model, offline) prints its URL, keeps the run when stopped
with Ctrl-C, and `--resume` continues it under a new token; `--resume --finish` finalizes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from noisealign import cli
from noisealign.models import registry
from noisealign.ui import HumanSession, RunSpec
from test_ui_support import SMALL, TinyImages, base_url, call, tiny_problem

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, argv, text):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and text in err, err


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    _one_line_error(capsys, ["ui", "--model", "gmm", "--no-browser", "--out", str(tmp_path / "g")], "shows images")
    assert not (tmp_path / "g").exists()
    _one_line_error(capsys, ["ui", "--resume", str(tmp_path / "nothing")], "not found")
    _one_line_error(capsys, ["ui", "--resume", str(tmp_path), "--K", "4", "--model", "digits"], "drop --model, --K")
    _one_line_error(capsys, ["ui", "--port", "70000"], "not a port")
    _one_line_error(capsys, ["ui", "--finish"], "give it with --resume")
    monkeypatch.setitem(registry.MODELS, "tiny-images", (lambda: TinyImages(), ()))
    _one_line_error(capsys, ["ui", "--model", "tiny-images", "--K", "0", "--no-browser"], "--K 0")
    _one_line_error(capsys, ["ui", "--model", "tiny-images", "--beta", "0", "--no-browser"], "--beta 0")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ui", "--lookahead", "sideways"])
    assert exit_info.value.code == 2


def test_a_bad_reference_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "tiny-images", (lambda: TinyImages(), ()))
    start = ["ui", "--model", "tiny-images", "--no-browser", "--out", str(tmp_path / "run")]
    _one_line_error(capsys, [*start, "--reference-model", str(tmp_path)], "give --reference IMAGE too")
    _one_line_error(capsys, [*start, "--reference", str(tmp_path / "absent.png")], "no file or folder")
    assert not (tmp_path / "run").exists()


def _hear_ctrl_c() -> None:
    """In the server's process: SIGINT as a terminal delivers it, even where the test runner was
    started in the background of a script (which starts it, and so its children, ignoring SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _serve(*argv):
    """Start `noisealign ui` in a process; return it with the URL it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen([sys.executable, "-m", "noisealign.cli", "ui", "--no-browser", *argv], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_hear_ctrl_c)
    for line in process.stdout:
        if line.startswith("noisealign ui: open "):
            return process, line.split("open ", 1)[1].strip()
    process.wait(timeout=30)
    pytest.fail(f"noisealign ui exited {process.returncode} without a URL: {process.stderr.read()}")


def _stop(process):
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err, err
    return out


class _Address:
    def __init__(self, url):
        self.port = int(url.split(":")[2].split("/")[0])
        self.token = url.split("#token=")[1]


def test_server_process_stops_keeping_the_run_and_resumes_with_a_new_token(tmp_path):
    out = tmp_path / "run"
    process, url = _serve("--K", "4", "--steps", "8", "--lookahead-steps", "4", "--out", str(out), "--seed", "3")
    try:
        first = _Address(url)
        assert url.startswith("http://127.0.0.1:")
        status, state = call(base_url(first), "GET", "/api/state", first.token)
        assert status == 200 and state["K"] == 4 and state["seed"] == 3 and state["model"] == "digits"
        status, state = call(base_url(first), "POST", "/api/choose", first.token,
                             {"version": state["version"], "chosen": [2]})
        assert status == 200 and state["step"] == 1
    finally:
        said = _stop(process)
    assert f"noisealign ui --resume {out}" in said
    saved = json.loads((out / "choices.json").read_text())
    assert saved["choices"][0]["chosen"] == [2] and saved["config"]["K"] == 4
    assert saved["config"]["beta"] == pytest.approx(0.1 * 14.648 / 80.0)  # matched_beta: digits' sigma_max is 80

    process, url = _serve("--resume", str(out))
    try:
        second = _Address(url)
        assert second.token != first.token
        assert call(base_url(second), "GET", "/api/state", first.token)[0] == 403
        status, state = call(base_url(second), "GET", "/api/state", second.token)
        assert status == 200 and state["step"] == 1 and state["history"][0]["chosen"] == [2]
    finally:
        _stop(process)


def test_finish_a_saved_run_without_a_server(tmp_path, monkeypatch, capsys):
    session = HumanSession.start(tiny_problem(), SMALL, seed=2, out=tmp_path / "run",
                                 spec=RunSpec("tiny-images"))
    session.choose([1, 2])
    session.choose([0])  # ...and the browser was closed
    session.close()
    monkeypatch.setitem(registry.MODELS, "tiny-images", (lambda: TinyImages(), ()))
    assert cli.main(["ui", "--resume", str(session.run_dir), "--finish"]) == 0
    assert "finished after 2 chosen steps" in capsys.readouterr().out
    result = json.loads((session.run_dir / "result.json").read_text())
    assert result["status"] == "complete" and result["demon_steps"] == 2
    finished_by_cli = (session.run_dir / "image.png").read_bytes()
    session.finish()  # the first process finishes its own copy: it rewrites the very same image
    assert (session.run_dir / "image.png").read_bytes() == finished_by_cli


def test_a_second_server_on_the_same_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    process, _ = _serve("--K", "4", "--steps", "8", "--lookahead-steps", "4", "--out", str(out))
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        second = subprocess.run([sys.executable, "-m", "noisealign", "ui", "--no-browser", "--resume", str(out)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "another noisealign process is writing to" in second.stderr.strip().splitlines()[-1]
    finally:
        _stop(process)
