"""noisealign.cpu: glibc's malloc thresholds pinned at CLI start-up behind a switch, and the thread
count from --threads or NOISEALIGN_THREADS. mallopt itself is replaced by a recorder: what is
checked is which parameters it is called with, not the heap's state (which depends on load)."""

import pytest

from noisealign import cli, cpu
from noisealign.errors import NoiseAlignError


@pytest.fixture
def mallopt(monkeypatch):
    """Records mallopt's calls; returns 1 (success) as glibc does."""
    calls = []
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: lambda parameter, value: calls.append((parameter, value)) or 1)
    monkeypatch.setattr(cpu, "_applied", {})
    return calls


def test_both_thresholds_are_pinned_and_recorded(mallopt):
    applied = cpu.tune_malloc({})
    assert mallopt == [(cpu.M_MMAP_THRESHOLD, 32 * 2 ** 20), (cpu.M_TRIM_THRESHOLD, 2 ** 31 - 1)]
    assert applied == cpu.malloc_settings() == {"mmap_threshold": 32 * 2 ** 20, "trim_threshold": 2 ** 31 - 1}


@pytest.mark.parametrize("environ", [{"NOISEALIGN_MALLOPT": "0"}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                                     {"MALLOC_TRIM_THRESHOLD_": "4294967296"}])
def test_the_switch_and_the_users_own_thresholds_leave_glibc_alone(mallopt, environ):
    assert cpu.tune_malloc(environ) == {} and mallopt == [] and cpu.malloc_settings() == {}


def test_without_glibc_nothing_is_set(monkeypatch):
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: None)
    assert cpu.tune_malloc({}) == {}


def test_the_trim_threshold_fits_mallopts_int():
    """mallopt's value is a C int: the environment's 4294967296 would wrap to 0 and trim at every free."""
    assert cpu.TRIM_THRESHOLD < 2 ** 31


def test_the_cli_pins_malloc_first(mallopt, capsys):
    assert cli.main(["regenerate", "/no/such/run"]) == 2      # fails after start-up, before any model loads
    assert [parameter for parameter, _ in mallopt] == [cpu.M_MMAP_THRESHOLD, cpu.M_TRIM_THRESHOLD]


def test_threads_come_from_the_flag_then_the_environment():
    assert cpu.configured_threads(3, {"NOISEALIGN_THREADS": "2"}) == 3
    assert cpu.configured_threads(None, {"NOISEALIGN_THREADS": " 2 "}) == 2
    assert cpu.configured_threads(None, {}) is None
    with pytest.raises(NoiseAlignError, match="NOISEALIGN_THREADS='two'"):
        cpu.configured_threads(None, {"NOISEALIGN_THREADS": "two"})
    with pytest.raises(NoiseAlignError, match="--threads must be at least 1, got 0"):
        cpu.configured_threads(0, {})


def test_the_cli_sets_threads_from_the_environment(monkeypatch, mallopt, capsys):
    import torch

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setenv("NOISEALIGN_THREADS", "1")
    cli.main(["generate", "--model", "nonexistent-model-folder", "--offline", "--quiet"])
    assert set_to == [1]
    assert "error" in capsys.readouterr().err
