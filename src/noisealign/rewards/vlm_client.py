"""One POST to an OpenAI-compatible `/chat/completions` endpoint, and a request-rate limiter.

Standard library only, so the VLM judge adds no dependency. The client does one attempt and
sorts its failure: timeouts, dropped connections, HTTP 408/429/5xx and non-JSON bodies are
worth retrying; other 4xx (a bad key, a wrong URL or model) are not. Retrying, logging and
reading the answer belong to the judge (vlm.py).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException

_SNIPPET = 300  # characters of a server's error body kept in messages


class EndpointError(Exception):
    """A failed attempt. `retryable` says whether the same request may succeed later;
    `retry_after` is the server's Retry-After in seconds, if it sent one."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 body: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.retryable, self.status, self.body, self.retry_after = retryable, status, body, retry_after


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` (raw or JSON-escaped) replaced by ***."""
    if not secret:
        return text
    return text.replace(secret, "***").replace(json.dumps(secret)[1:-1], "***")


def one_line(text: str, limit: int = _SNIPPET) -> str:
    """Whitespace collapsed, cut to `limit` characters: server text fit for a one-line error."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


class ChatEndpoint:
    """POST JSON to `{base_url}/chat/completions` with an optional bearer key.

    The key lives only in the Authorization header of the request; `public_headers` is what
    may be logged.
    """

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout_s = timeout_s
        self._api_key = api_key or None

    def public_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = "Bearer ***"
        return headers

    def post(self, body: dict) -> dict:
        """The decoded JSON reply, or EndpointError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise self._status_error(error) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise self._timeout() from None
            raise EndpointError(f"cannot connect: {self._clean(str(error.reason))}", retryable=True) from None
        except TimeoutError:
            raise self._timeout() from None
        except (HTTPException, OSError) as error:
            raise EndpointError(f"connection failed: {type(error).__name__}: {self._clean(str(error))}",
                                retryable=True) from None
        text = self._clean(raw.decode("utf-8", errors="replace"))
        try:
            reply = json.loads(text)
        except ValueError:
            raise EndpointError(f"the reply is not JSON: {one_line(text) or '(empty body)'}",
                                retryable=True, status=200, body=text) from None
        if not isinstance(reply, dict):
            raise EndpointError(f"the reply is not a JSON object: {one_line(text)}", retryable=True,
                                status=200, body=text)
        return reply

    def _timeout(self) -> EndpointError:
        return EndpointError(f"timed out after {self.timeout_s:g} s", retryable=True)

    def _clean(self, text: str) -> str:
        return redact(text, self._api_key)

    def _status_error(self, error: urllib.error.HTTPError) -> EndpointError:
        try:
            body = self._clean(error.read().decode("utf-8", errors="replace"))
        except (HTTPException, OSError):
            body = ""
        status = error.code
        retryable = status in (408, 429) or status >= 500
        return EndpointError(f"HTTP {status}: {one_line(body) or error.reason}", retryable=retryable,
                             status=status, body=body, retry_after=_seconds(error.headers.get("Retry-After")))


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is ignored: exponential backoff applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class RateLimiter:
    """At most `per_minute` request starts a minute, evenly spaced: each start waits until
    60 / per_minute seconds after the previous one. None or 0: no limit. Thread-safe."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)
