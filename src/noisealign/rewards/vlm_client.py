"""One POST to an OpenAI-compatible `/chat/completions` endpoint, and a request-rate limiter.

Standard library only, so the VLM judge adds no dependency. The client does one attempt and
sorts its failure: timeouts, dropped connections, HTTP 408/429/5xx and bodies that are not a
JSON object (or nest deeper than MAX_DEPTH) are worth retrying; other 4xx (a bad key, a wrong
URL or model) are not. Retrying, logging and reading the answer belong to the judge (vlm.py).

Secrets: the API key and the credentials a base URL may carry (user:password@, ?api-key=...)
are used for requests only. What may be shown or written goes through `redact` (the key) and
`safe_url` (the URL).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

_SNIPPET = 300  # characters of a server's error body kept in messages
MIN_SECRET = 8  # a shorter key is not searched for in text (see redact)
MAX_DEPTH = 64  # deepest nesting of lists and objects accepted in a reply; a chat reply needs about 6
# Query parameters whose name holds one of these (case-insensitive) have their value hidden by safe_url.
SECRET_PARAMETERS = ("key", "token", "sig", "secret", "pass", "auth", "credential", "code")


class EndpointError(Exception):
    """A failed attempt. `retryable` says whether the same request may succeed later;
    `retry_after` is the server's Retry-After in seconds, if it sent one."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None,
                 body: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.retryable, self.status, self.body, self.retry_after = retryable, status, body, retry_after


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` (raw or JSON-escaped) replaced by ***.

    For what is shown or written (log lines, error messages), never for a body still to be
    parsed. A key shorter than MIN_SECRET characters is not searched for: it cannot be told
    apart from ordinary text (a one-letter key would turn every such letter into ***), so it
    is kept out of records and messages by never putting it there, not by search.
    """
    if not secret or len(secret) < MIN_SECRET:
        return text
    return text.replace(secret, "***").replace(json.dumps(secret)[1:-1], "***")


def safe_url(url: str) -> str:
    """`url` fit to show or record: user:password@ becomes ***@, and the value of each query
    parameter whose name holds one of SECRET_PARAMETERS (api-key, key, token, sig, ...) becomes
    ***. Requests use the real URL; an unparsable URL is shown as ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = "***@" + parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    query = "&".join(_safe_parameter(parameter) for parameter in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _safe_parameter(parameter: str) -> str:
    name, equals, _ = parameter.partition("=")
    secret = equals and any(hint in unquote_plus(name).lower() for hint in SECRET_PARAMETERS)
    return f"{name}=***" if secret else parameter


def one_line(text: str, limit: int = _SNIPPET) -> str:
    """Whitespace collapsed, cut to `limit` characters: server text fit for a one-line error."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


class ChatEndpoint:
    """POST JSON to `{base_url}/chat/completions` (the base URL's query kept) with an optional key.

    The key is sent as a bearer token; without one, user:password@ in the base URL is sent as
    HTTP Basic authorization (urllib cannot send it from the URL). Credentials live only in the
    request: `url` is the address with them hidden (safe_url), and `public_headers` is what may
    be logged.
    """

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float):
        parts = urlsplit(base_url)
        userinfo, _, host = parts.netloc.rpartition("@")
        self._url = urlunsplit(parts._replace(netloc=host, path=parts.path.rstrip("/") + "/chat/completions"))
        self.url = safe_url(self._url)
        self.timeout_s = timeout_s
        self._api_key = api_key or None
        if api_key:
            self._authorization: str | None = f"Bearer {api_key}"
        elif userinfo:
            self._authorization = "Basic " + base64.b64encode(unquote(userinfo).encode()).decode()
        else:
            self._authorization = None

    def public_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._authorization:
            headers["Authorization"] = self._authorization.split()[0] + " ***"
        return headers

    def post(self, body: dict) -> dict:
        """The decoded JSON reply, or EndpointError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._authorization:
            headers["Authorization"] = self._authorization
        request = urllib.request.Request(self._url, data=json.dumps(body).encode(), headers=headers,
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
        text = raw.decode("utf-8", errors="replace")
        too_deep = f"JSON nested deeper than {MAX_DEPTH} levels"
        try:
            reply = json.loads(text)
            problem = None if isinstance(reply, dict) else "not a JSON object"
        except ValueError:
            problem = "not JSON"
        except RecursionError:  # the parser's own limit, near a thousand levels
            problem = too_deep
        if problem is None and _depth(reply) > MAX_DEPTH:
            problem = too_deep
        if problem:
            shown = self._clean(text)
            raise EndpointError(f"the reply is {problem}: {one_line(shown) or '(empty body)'}",
                                retryable=True, status=200, body=shown)
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


def _depth(value: Any) -> int:
    """How many levels of lists and dicts `value` nests (a scalar: 0), counted without recursion."""
    depth, level = 0, [value]
    while True:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            return depth
        depth += 1
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]


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
