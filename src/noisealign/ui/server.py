"""The web app's HTTP server: three static files and a small JSON API over one HumanSession.

Standard library only (http.server). Every tab talks to the same session, so all tabs show
the same run; each change bumps the session's version, and an action sent from an older
version is refused with 409 (the page then reloads the state).

Security: bound to 127.0.0.1 unless told otherwise. Every /api/ call must carry the session
token (secrets.token_urlsafe, new at every start) in the X-Noisealign-Token header; the page
reads it from the URL fragment (#token=...), which browsers never send to a server or put in
a Referer. A missing, wrong or stale token gets 403. A page from another site cannot add that
header without a CORS preflight, which this server never grants.

API (JSON in, JSON out; errors are {"error": "one line"}):
    GET  /api/state[?known=V]   the session's state; only {"version", "busy", "unchanged"} if V is current
    POST /api/choose            {"version": V, "chosen": [i, ...]}  chosen +1, others -1, take the step
    POST /api/undo              {"version": V}  back to before the last choice
    POST /api/finish            {"version": V}  PF-ODE to sigma = 0, write image.png, noise.pt
    GET  /api/download          the finished run folder as a zip
Statuses: 400 bad input (a Content-Length that is not a byte count, or a body that ends
before it, included), 403 token, 404 unknown path, 409 stale view or finished run, 413 body
over MAX_BODY, 500 an unexpected failure (the run folder is kept). A connection that sends
nothing for SOCKET_TIMEOUT_S seconds is dropped, so no client can hold a handler.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import sys
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlsplit

from ..errors import NoiseAlignError
from .session import Conflict, HumanSession

TOKEN_HEADER = "X-Noisealign-Token"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_BODY = 64 * 1024  # bytes; an action's JSON is under 100
SOCKET_TIMEOUT_S = 30.0
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class UIServer:
    """Serve one HumanSession. `start()` runs in a background thread (notebooks, tests);
    `serve_forever()` blocks (the CLI). Stop with `stop()` or as a context manager."""

    def __init__(self, session: HumanSession, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        self.session = session
        self.token = token or secrets.token_urlsafe(32)
        self._lock = threading.Lock()     # one action at a time; state reads use the cached copy
        self._busy = False
        self._state = session.state()
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self.httpd = server_class((host, port), type("Handler", (_Handler,), {"app": self}))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self.httpd.server_address[0]

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        """The page's address with the token in its fragment (a wildcard host shows as loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/#token={self.token}"

    def start(self) -> "UIServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="noisealign-ui", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> "UIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def state(self, known: int | None = None) -> dict[str, Any]:
        state = self._state
        if known == state["version"]:
            return {"version": known, "busy": self._busy, "unchanged": True}
        return {**state, "busy": self._busy}

    def act(self, action: Callable[[], None]) -> dict[str, Any]:
        """Run one session action under the lock and publish the new state."""
        with self._lock:
            self._busy = True
            try:
                action()
            finally:
                self._state = self.session.state()
                self._busy = False
        return self.state()


def exposure_warning(host: str) -> str | None:
    """A loud warning when the server is reachable from other machines."""
    if host in LOOPBACK:
        return None
    return (f"WARNING: noisealign ui is listening on {host}, not 127.0.0.1: anyone who can reach this machine "
            "and learns the token can drive this session, and plain HTTP lets the network read the token. "
            "Use --host 127.0.0.1 (the default) unless you trust the network.")


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    app: UIServer
    server_version = "noisealign-ui"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path in STATIC:
            self._static(*STATIC[url.path])
        elif url.path == "/api/state":
            self._api(lambda: self.app.state(_known(url.query)))
        elif url.path == "/api/download":
            self._api(self._download)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page {url.path!r}")

    def do_POST(self) -> None:
        actions = {"/api/choose": lambda s, body: s.choose(_chosen(body), _version(body)),
                   "/api/undo": lambda s, body: s.undo(_version(body)),
                   "/api/finish": lambda s, body: s.finish(_version(body))}
        action = actions.get(urlsplit(self.path).path)
        if action is None:
            self._error(HTTPStatus.NOT_FOUND, f"no such action {self.path!r}")
            return
        self._api(lambda: self._post(action))

    def _api(self, handle: Callable[[], Any]) -> None:
        """Check the token, run `handle`, answer JSON (or the zip bytes it returns)."""
        given = self.headers.get(TOKEN_HEADER)
        if not given:
            self._error(HTTPStatus.FORBIDDEN, "missing session token: open the full URL that `noisealign ui` "
                                              "printed (it ends in #token=...)")
            return
        if not secrets.compare_digest(given.encode(), self.app.token.encode()):
            self._error(HTTPStatus.FORBIDDEN, "wrong or stale session token (was the server restarted?): open "
                                              "the URL that `noisealign ui` printed last")
            return
        try:
            answer = handle()
        except Conflict as error:
            self._error(HTTPStatus.CONFLICT, str(error))
        except _TooLarge as error:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error))
        except NoiseAlignError as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))
        except Exception as error:  # keep serving; the run folder holds everything so far
            traceback.print_exc(file=sys.stderr)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR,
                        f"internal error: {type(error).__name__}: {error}; the run folder is kept")
        else:
            if isinstance(answer, bytes):
                self._send(HTTPStatus.OK, answer, "application/zip",
                           {"Content-Disposition": _attachment(self.app.session.run_dir.name + ".zip")})
            else:
                self._json(HTTPStatus.OK, answer)

    def _post(self, action: Callable[[HumanSession, dict[str, Any]], None]) -> dict[str, Any]:
        body = self._body()  # read before taking the lock
        return self.app.act(lambda: action(self.app.session, body))

    def _download(self) -> bytes:
        with self.app._lock:
            return self.app.session.zip_bytes()

    def _body(self) -> dict[str, Any]:
        length = _content_length(self.headers.get("Content-Length"))
        try:
            data = self.rfile.read(length)
        except OSError:  # the socket timed out or closed
            data = b""
        if len(data) < length:
            raise NoiseAlignError(f"the request body ended before its Content-Length of {length} bytes; "
                                  "send the whole body")
        try:
            body = json.loads(data or b"{}")
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            raise NoiseAlignError('the request body is not JSON; send e.g. {"version": 3, "chosen": [0, 2]}') from None
        if not isinstance(body, dict):
            raise NoiseAlignError("the request body must be a JSON object")
        return body

    def _static(self, name: str, content_type: str) -> None:
        data = resources.files("noisealign.ui").joinpath("static", name).read_bytes()
        self._send(HTTPStatus.OK, data, content_type)

    def _json(self, status: HTTPStatus, data: Any) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _send(self, status: HTTPStatus, data: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {**SECURITY_HEADERS, "Content-Type": content_type,
                           "Content-Length": str(len(data)), **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the tab was closed while the step ran; the session and its files are up to date

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a person watching the terminal needs no request log (and tokens never appear in it)."""


class _TooLarge(NoiseAlignError):
    pass


def _content_length(value: str | None) -> int:
    """The request's Content-Length in bytes (absent: 0). Anything but ASCII digits is bad input
    (int() would take "-1" or " 1_0 "), and more than MAX_BODY is refused before reading."""
    text = (value or "0").strip()
    if not (text.isascii() and text.isdigit()):
        raise NoiseAlignError(f"Content-Length {text[:40]!r} is not a byte count; send the body's length in bytes")
    length = int(text)
    if length > MAX_BODY:
        raise _TooLarge(f"request body of {length} bytes is over the {MAX_BODY} byte limit")
    return length


def _attachment(filename: str) -> str:
    """Content-Disposition of a download: `filename` reduced to ASCII letters, digits, '-', '_'
    and '.' (anything else, CR LF included, becomes '_', so nothing can leave the header), and
    the exact name percent-encoded as RFC 6266's filename* for browsers that read it."""
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _known(query: str) -> int | None:
    values = parse_qs(query).get("known")
    try:
        return int(values[0]) if values else None
    except ValueError:
        raise NoiseAlignError(f"?known={values[0]!r} is not a state version (an integer)") from None


def _version(body: dict[str, Any]) -> int:
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise NoiseAlignError("send the \"version\" of the state you acted on (an integer from /api/state)")
    return version


def _chosen(body: dict[str, Any]) -> list[int]:
    chosen = body.get("chosen")
    if not isinstance(chosen, list):
        raise NoiseAlignError("send \"chosen\": a list of the candidate indices you prefer, e.g. [0, 2]")
    return chosen
