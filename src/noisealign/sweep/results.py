"""The sweep folder: sweep.json, results.jsonl and one run folder per cell, with one writer.

    DIR/sweep.json      the resolved spec; a resumed sweep must match it exactly
    DIR/results.jsonl   one line per finished cell (complete or failed), appended in the order
                        cells finish: result.json's fields, the held-out rewards, the cell's id
    DIR/cells/<id>/     the cell's run folder, exactly as `generate` writes it

A cell is finished when its line is in results.jsonl; its folder is written first (under a
temporary name, then renamed), its line last, with SIGINT and SIGTERM held back meanwhile, so
a stop never leaves half a line. On resume, a torn last line (a killed process) is cut off and
every cell folder without a line is removed: that cell runs again. The driver holds an advisory
lock on DIR (as a run folder's writer does), so a second sweep into it is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import NoiseAlignError
from ..runs import RunFolder, check_out, strict_json
from .cells import Cell
from .worker import CellResult

SPEC_FILE, RESULTS_FILE, CELLS_FOLDER = "sweep.json", "results.jsonl", "cells"


class SweepFolder:
    """An open sweep folder, locked by this process; `record` writes a finished cell."""

    def __init__(self, path: Path, lock: RunFolder, finished: dict[str, dict[str, Any]]):
        self.path, self._lock, self.finished = path, lock, finished

    @staticmethod
    def check(path: Path, spec: dict[str, Any]) -> None:
        """Refuse a `path` that is neither a new sweep folder (absent or empty, in a writable place)
        nor this sweep's, to resume. Writes nothing."""
        stored = path / SPEC_FILE
        if not stored.is_file():
            check_out(str(path))
            return
        difference = _difference(_read_spec(stored), spec)
        if difference:
            raise NoiseAlignError(f"{path} holds another sweep ({difference}); rerun the same sweep file and "
                                  "flags to resume it, or choose another --out")

    @classmethod
    def open(cls, path: Path, spec: dict[str, Any]) -> "SweepFolder":
        """Create the folder (new) or take it over to resume: cut a torn last line, remove the
        folders of cells without a line."""
        cls.check(path, spec)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise NoiseAlignError(f"cannot create sweep folder {path} ({error.strerror}); choose another --out") from None
        lock = RunFolder.open(path)
        try:
            if (path / SPEC_FILE).is_file():
                cls.check(path, spec)   # again, under the lock: another sweep may have started it meanwhile
            else:   # sweep.json first: a folder holding anything else is a sweep folder
                _write_atomically(path / SPEC_FILE, json.dumps(spec, indent=2, allow_nan=False) + "\n")
                (path / RESULTS_FILE).touch()
            (path / CELLS_FOLDER).mkdir(exist_ok=True)
            finished = {line["cell"]: line for line in read_results(path, repair=True)}
            for entry in (path / CELLS_FOLDER).iterdir():
                if entry.name in finished:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except BaseException:
            lock.close()
            raise
        return cls(path, lock, finished)

    def close(self) -> None:
        self._lock.close()

    def record(self, cell: Cell, result: CellResult, attempts: int) -> dict[str, Any]:
        """Write the cell's run folder, then its line; returns the line."""
        with signals_held():
            run_dir = self._write_run_folder(cell, result.files) if result.files else None
            line = result_line(cell, result, attempts, run_dir)
            text = json.dumps(strict_json(line), allow_nan=False) + "\n"
            try:
                with open(self.path / RESULTS_FILE, "a", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as error:
                raise NoiseAlignError(f"cannot append to {self.path / RESULTS_FILE} ({error.strerror}); "
                                      "free space and rerun the sweep to resume it") from None
        self.finished[cell.id] = line
        return line

    def _write_run_folder(self, cell: Cell, files: dict[str, bytes]) -> str:
        cells = self.path / CELLS_FOLDER
        partial = cells / f".partial-{cell.id}"
        try:
            shutil.rmtree(partial, ignore_errors=True)
            for name, data in files.items():
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                (partial / name).write_bytes(data)
            os.rename(partial, cells / cell.id)
        except OSError as error:
            raise NoiseAlignError(f"cannot write the run folder of cell {cell.id} in {cells} ({error.strerror}); "
                                  "free space and rerun the sweep to resume it") from None
        return f"{CELLS_FOLDER}/{cell.id}"


def result_line(cell: Cell, result: CellResult, attempts: int, run_dir: str | None) -> dict[str, Any]:
    """A results.jsonl line: result.json's fields under their names (or the cell's, when the run
    never started), the cell's status and id, and the held-out rewards."""
    record = result.record or {"method": cell.method, "prompt": cell.prompt, "reward": cell.optimize,
                               "seed": cell.seed, "budget": cell.budget}
    line = {"cell": cell.id, "label": cell.label, **record, "status": result.status, "attempts": attempts,
            "run_dir": run_dir, "evaluation": result.evaluation, "baseline_evaluation": result.baseline_evaluation}
    if result.error is not None:
        line["error"] = result.error
    return line


def read_spec(path: Path) -> dict[str, Any]:
    """sweep.json of the sweep folder `path`, or the one-line error saying it is not one."""
    if not (path / SPEC_FILE).is_file():
        raise NoiseAlignError(f"{path} is not a sweep folder (no {SPEC_FILE}); pass the --out of `noisealign sweep`")
    return _read_spec(path / SPEC_FILE)


def read_results(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """The lines of results.jsonl. A torn last line (no newline) is ignored, or cut off with
    `repair`; a complete line that is not JSON is an error."""
    file = path / RESULTS_FILE
    if not file.is_file():
        return []
    data = file.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]
    if repair and len(complete) < len(data):
        with open(file, "r+b") as handle:
            handle.truncate(len(complete))
    lines = []
    for number, text in enumerate(complete.decode("utf-8").splitlines(), 1):
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            raise NoiseAlignError(f"{file} line {number} is not JSON; remove that line to rerun its cell") from None
    return lines


def _read_spec(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise NoiseAlignError(f"cannot read {file} ({error}); it is not a sweep folder noisealign wrote") from None


def _difference(stored: dict[str, Any], spec: dict[str, Any]) -> str | None:
    """The first part in which two resolved specs differ, in words; None if they are the same."""
    spec = json.loads(json.dumps(spec))   # as it would be stored: tuples become lists
    for key in dict.fromkeys([*stored, *spec]):
        if stored.get(key) != spec.get(key):
            return f"its {key} differ: {_short(stored.get(key))} there, {_short(spec.get(key))} now"
    return None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _write_atomically(file: Path, text: str) -> None:
    tmp = file.with_name(f".{file.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, file)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while a cell is written, so a stop never tears it; a signal
    that came meanwhile is delivered afterwards (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
