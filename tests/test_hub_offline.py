"""A learned reward whose weights are not in the cache, with downloads forbidden or the hub out
of reach: one NoiseAlignError line at once, and nothing else on stderr (no retries, no
warnings). One whose weights are cached loads without contacting the hub.

The failing lookups run in a fresh process, whose real stderr is checked (the libraries' log
handlers may hold a stream that in-process capture never sees). Each reward is looked up twice
there and the second lookup is timed, so the clock measures the lookup, not the first import
of transformers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from noisealign.rewards import clip_common, hub
from noisealign.rewards.registry import parse_reward
from test_reward_models import save_clip_tokenizer, save_tiny_clip

huggingface_constants = pytest.importorskip("huggingface_hub.constants")
pytest.importorskip("transformers")

LEARNED = {"aesthetic": "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
           "pickscore": "yuvalkirstain/PickScore_v1", "hpsv2": "xswu/HPSv2/HPS_v2.1_compressed.pt",
           "imagereward": "THUDM/ImageReward/ImageReward.pt", "clipscore": "openai/clip-vit-large-patch14"}

LOOKUPS = """
import json, sys, time
from noisealign.errors import NoiseAlignError
from noisealign.rewards.registry import parse_reward
for name in sys.argv[1:]:
    for lookup in range(2):
        started, message = time.perf_counter(), None
        try:
            parse_reward(name)
        except NoiseAlignError as error:
            message = str(error)
    print(json.dumps({"name": name, "message": message, "seconds": time.perf_counter() - started}))
"""


class RecordingHub(ThreadingHTTPServer):
    """A hub on 127.0.0.1 that answers 404 to everything and records what it was asked."""

    daemon_threads = True

    def __init__(self) -> None:
        self.paths: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.paths.append(f"{self.command} {self.path}")
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def failed_lookups(cache, names, **environment: str) -> list[dict]:
    """Look each reward up twice in a fresh process with HF_HOME = `cache` (empty) and
    `environment`; its stderr must stay empty. One record per reward: message, seconds."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_CACHE", "HF_ENDPOINT")}
    env.update({name: "0" for name in hub.OFFLINE_VARIABLES}, HF_HOME=str(cache), OMP_NUM_THREADS="1",
               **environment)
    done = subprocess.run([sys.executable, "-c", LOOKUPS, *names], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines()]
    for record in records:
        print(f"{record['name']}: one-line error after {record['seconds']:.3f} s")
        message = record["message"]
        assert message and "\n" not in message and LEARNED[record["name"]] in message, record
        assert str(cache) in message and "hf download" in message and f"{record['name']}:/path" in message
        assert record["seconds"] < 5.0, record
    assert [record["name"] for record in records] == list(names)
    return records


def test_forbidden_downloads_fail_at_once_in_one_line_without_a_request(tmp_path):
    recording = RecordingHub()
    try:
        records = failed_lookups(tmp_path, list(LEARNED), NOISEALIGN_OFFLINE="1", HF_ENDPOINT=recording.url)
    finally:
        recording.stop()
    assert all("downloads are forbidden" in record["message"] for record in records)
    assert recording.paths == []


def test_an_unreachable_hub_fails_at_once_in_one_line(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for record in failed_lookups(tmp_path, ["aesthetic", "clipscore"], HF_ENDPOINT=dead):  # a file; a repository
        assert f"{dead} does not answer" in record["message"]


@pytest.fixture
def no_switches(tmp_path, monkeypatch):
    """HF_HOME an empty folder and every offline switch off (set first, so that what a test sets
    is undone after it)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.setenv(name, "0")
    monkeypatch.setattr(huggingface_constants, "HF_HUB_OFFLINE", False)
    return tmp_path


def test_a_cached_reward_loads_without_a_request(no_switches, monkeypatch):
    repo = no_switches / "hub" / "models--openai--clip-vit-large-patch14"
    snapshot = repo / "snapshots" / ("0" * 40)
    save_tiny_clip(snapshot, save_clip_tokenizer(snapshot), seed=0)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(clip_common, "_ENCODERS", {})  # keep the tiny model out of other tests
    recording = RecordingHub()
    monkeypatch.setattr(huggingface_constants, "ENDPOINT", recording.url)
    try:
        started = time.perf_counter()
        reward = parse_reward("clipscore")
        seconds = time.perf_counter() - started
    finally:
        recording.stop()
    print(f"cached clipscore loaded in {seconds:.3f} s")
    assert reward.name == "clipscore" and seconds < 5.0 and recording.paths == []
    assert huggingface_constants.HF_HUB_OFFLINE is False  # offline for the lookup only


def test_forbid_downloads_sets_the_switch_for_noisealign_and_huggingface_hub(no_switches):
    assert not hub.offline()
    hub.forbid_downloads()
    assert hub.offline() and huggingface_constants.HF_HUB_OFFLINE is True
    assert os.environ["NOISEALIGN_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_each_offline_variable_forbids_downloads(no_switches, monkeypatch, variable):
    monkeypatch.setenv(variable, "true")
    assert hub.offline()
