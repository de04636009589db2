"""A learned reward whose weights are not in the cache, with downloads forbidden or the hub out
of reach: one NoiseAlignError line at once, and nothing else on stderr (no retries, no warnings).

Each reward is looked up twice and the second lookup is timed, so the clock measures the lookup,
not the first import of transformers."""

from __future__ import annotations

import os
import socket
import time

import pytest

from noisealign.errors import NoiseAlignError
from noisealign.rewards import hub
from noisealign.rewards.registry import parse_reward

pytest.importorskip("transformers")
huggingface_constants = pytest.importorskip("huggingface_hub.constants")

LEARNED = {"aesthetic": "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth",
           "pickscore": "yuvalkirstain/PickScore_v1", "hpsv2": "xswu/HPSv2/HPS_v2.1_compressed.pt",
           "imagereward": "THUDM/ImageReward/ImageReward.pt", "clipscore": "openai/clip-vit-large-patch14"}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """HF_HOME an empty folder; no offline switch set (setenv first, so that the test's own
    settings are undone too)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.setenv(name, "0")
    monkeypatch.setattr(huggingface_constants, "HF_HUB_OFFLINE", False)
    return tmp_path


def timed_failure(name: str) -> tuple[str, float]:
    """The error of the second lookup of reward `name`, and the seconds it took."""
    with pytest.raises(NoiseAlignError):
        parse_reward(name)
    started = time.perf_counter()
    with pytest.raises(NoiseAlignError) as caught:
        parse_reward(name)
    return str(caught.value), time.perf_counter() - started


@pytest.mark.parametrize("name", list(LEARNED))
def test_forbidden_downloads_fail_at_once_in_one_line(empty_cache, monkeypatch, capfd, name):
    monkeypatch.setenv("NOISEALIGN_OFFLINE", "1")
    message, seconds = timed_failure(name)
    stderr = capfd.readouterr().err
    print(f"{name}: one-line error after {seconds:.3f} s")
    assert "\n" not in message and LEARNED[name] in message and "downloads are forbidden" in message
    assert str(empty_cache) in message and "hf download" in message and f"{name}:/path" in message
    assert stderr == ""
    assert seconds < 5.0


@pytest.mark.parametrize("name", ["aesthetic", "clipscore"])  # a single file; a whole repository
def test_an_unreachable_hub_fails_at_once_in_one_line(empty_cache, monkeypatch, capfd, name):
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(huggingface_constants, "ENDPOINT", dead)
    message, seconds = timed_failure(name)
    stderr = capfd.readouterr().err
    print(f"{name}: one-line error after {seconds:.3f} s")
    assert "\n" not in message and LEARNED[name] in message and f"{dead} does not answer" in message
    assert stderr == ""
    assert seconds < 5.0


def test_forbid_downloads_sets_the_switch_for_noisealign_and_huggingface_hub(empty_cache):
    assert not hub.offline()
    hub.forbid_downloads()
    assert hub.offline() and huggingface_constants.HF_HUB_OFFLINE is True
    assert os.environ["NOISEALIGN_OFFLINE"] == os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_each_offline_variable_forbids_downloads(empty_cache, monkeypatch, variable):
    monkeypatch.setenv(variable, "true")
    assert hub.offline()
