"""The VLM judge's request log (JSON lines, one per attempt) and replay from it.

A line records one attempt: request id, attempt number, the request's content key, the
candidates' pixel hashes, the request body with each image replaced by `sha256:<hash>` (the
images themselves are not stored: a Demon run sends thousands), the status, the raw response
or the error, the reply text, the parsed answer, and the seconds it took. The API key is
never part of a record, and every line is scrubbed of it before it is written, in case a
server echoed it back.

Replay reads the answers of successful attempts (outcome "ok" or "replayed") and hands them
out by content key, first logged first served.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from ..errors import NoiseAlignError
from .vlm_client import redact

LOG_NAME = "vlm_log.jsonl"
ANSWERED = ("ok", "replayed")


class JsonlLog:
    """Append-only, thread-safe; `secret` is scrubbed from every line."""

    def __init__(self, path: str | Path, secret: str | None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = redact(json.dumps(record, ensure_ascii=False), self._secret)
        with self._lock, self.path.open("a", encoding="utf-8") as file:
            file.write(line + "\n")


class ReplayLog:
    """Answers of a previous run's log, queued per request key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / LOG_NAME
        if not self.path.is_file():
            raise NoiseAlignError(f"no VLM log to replay at {self.path}; pass the vlm_log.jsonl of a "
                                  "previous run (or its run directory)")
        self._answers: dict[str, deque[str]] = defaultdict(deque)
        self._lock = threading.Lock()
        with self.path.open(encoding="utf-8") as file:
            for number, line in enumerate(file, start=1):
                try:
                    record = json.loads(line)
                    if record["outcome"] in ANSWERED:
                        self._answers[record["key"]].append(record["reply"])
                except (ValueError, KeyError, TypeError):
                    raise NoiseAlignError(f"line {number} of {self.path} is not a VLM log record; "
                                          "replay an unedited vlm_log.jsonl") from None

    def take(self, key: str, what: str) -> str:
        """The next logged reply to the request with content `key` (described by `what`)."""
        with self._lock:
            queue = self._answers.get(key)
            if not queue:
                raise NoiseAlignError(
                    f"the {what} request {key[:12]} is not in {self.path} (or was asked more often "
                    "than logged); replay with the seed, model, prompt and options of the logged run")
            return queue.popleft()
