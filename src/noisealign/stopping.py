"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

Inside `stop_on_signals()` the first signal only asks the run to stop: the next denoiser call
or reward query (`stop_point`, called by the ledger's counting wrappers) raises `Stopped`,
so a method is never cut in the middle of updating its state, and the run keeps its best
sample so far. A second signal raises `Stopped` at once, for a reward call that hangs.
Outside it (the Python API) Ctrl-C is Python's usual KeyboardInterrupt, which the run
lifecycle (`align.align`) handles the same way.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""The shell's convention: 128 + the signal's number."""


class Stopped(KeyboardInterrupt):
    """The run was asked to stop by `signum` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


_requested: list[int] = []
_suspended: list[bool] = []


def stop_point() -> None:
    """Raise Stopped if a stop was asked for: called before every denoiser call and reward query."""
    if _requested and not _suspended:
        raise Stopped(_requested[0])


@contextmanager
def finishing() -> Iterator[None]:
    """Let a stopped run finish its best sample so far (model calls, no queries) despite the
    pending request; a further signal still stops it at once."""
    _suspended.append(True)
    try:
        yield
    finally:
        _suspended.pop()


def _handler(signum: int, frame: object) -> None:
    _requested.append(signum)
    if len(_requested) > 1:
        raise Stopped(_requested[0])


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into a stop request for the code inside (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in EXIT_CODES}
    _requested.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested.clear()


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """SIGINT for a plain KeyboardInterrupt, else the signal a Stopped carries."""
    return interrupt.signum if isinstance(interrupt, Stopped) else signal.SIGINT
