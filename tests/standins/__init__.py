"""Local stand-ins of DNS providers' HTTP APIs, for tests that must not reach the internet.

Each stand-in is a small HTTP server (``http.server`` in a thread) on
127.0.0.1 and a free port, with the provider's zones in memory. It answers the
parts of the API that ``module_utils/dns_providers.py`` uses, checks its input
the way the provider documents it (authentication, unknown zone, record type,
missing fields, value syntax) and records every request in ``requests`` so a
test can assert what was sent. ``fail_next`` makes the next requests fail with
a status of choice (429 with ``Retry-After``, 5xx), to test retries.

- ``tests/standins/cloudflare.py``: Cloudflare API v4, base URL
  ``http://127.0.0.1:PORT/client/v4``;
- ``tests/standins/hetzner.py``: the Hetzner DNS API, base URL
  ``http://127.0.0.1:PORT/api/v1``;
- ``tests/standins/hcloud.py``: the Hetzner Cloud API's servers and their
  reverse DNS, base URL ``http://127.0.0.1:PORT/v1``.

Use them as context managers (``with CloudflareStandIn() as api: ...``); each
test module defines its fixtures from them.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Reply = tuple[int, Any, dict[str, str]]


@dataclass
class Request:
    """One request as the stand-in received it (the path without the API prefix)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None


@dataclass
class _Fault:
    status: int
    retry_after: str | None
    payload: Any = None
    methods: frozenset[str] = field(default_factory=frozenset)
    headers: dict[str, str] = field(default_factory=dict)


class StandIn:
    """The HTTP plumbing shared by the stand-ins; subclasses implement ``handle``."""

    prefix = ""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[Request] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.prefix}"

    def start(self) -> Self:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                standin._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        methods: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` requests (of ``methods``, default any) get ``status``
        (and ``headers``, such as a ``Location``)."""
        fault = _Fault(
            status, retry_after, self.fault_payload(status), frozenset(methods), headers or {}
        )
        with self._lock:
            self._faults += [fault] * times

    def fault_payload(self, status: int) -> Any:
        """The body of an injected failure, as the provider sends it."""
        return None

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(path_prefix)
            ]

    # -- serving -------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        split = urllib.parse.urlsplit(http.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(split.query).items()}
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = _Unparsable(raw)
        path = split.path
        request = Request(
            http.command,
            path[len(self.prefix) :] if path.startswith(self.prefix) else path,
            query,
            {k.lower(): v for k, v in http.headers.items()},
            body,
        )
        with self._lock:
            self.requests.append(request)
            fault = next(
                (f for f in self._faults if not f.methods or http.command in f.methods), None
            )
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None:
            headers = dict(fault.headers)
            if fault.retry_after:
                headers["Retry-After"] = fault.retry_after
            status, payload = fault.status, fault.payload
        elif not path.startswith(self.prefix + "/"):
            status, payload, headers = 404, {"message": "no route"}, {}
        else:
            with self._lock:
                status, payload, headers = self.handle(request)
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        http.send_response(status)
        for name, value in headers.items():
            http.send_header(name, value)
        if data:
            http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)


class _Unparsable:
    """A request body that is not JSON."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


def unparsable(body: Any) -> bool:
    return isinstance(body, _Unparsable)


def page_of(items: list[Any], page: int, per_page: int) -> list[Any]:
    start = (page - 1) * per_page
    return items[start : start + per_page]


def int_arg(query: dict[str, str], name: str, default: int) -> int:
    try:
        return int(query.get(name, default))
    except ValueError:
        return default
