"""What the "expensive command" regressions of issue 14 (items 5, 6, 7, 9) share.

- ``prepared_server``: a server like ``start_server``'s whose mail was put in
  place through the store API before it started (a 32,768-message mailbox,
  a 10 MiB message: faster than APPEND, and past max_message_size);
- ``rss``: the server's resident memory (/proc/PID/status VmRSS), and
  ``RssSampler``, its peak while something runs;
- ``Probe``: another client, over and over, timing an SMTP greeting and an
  IMAP LOGIN (optionally an SMTP delivery) while the attack runs; a probe
  that gets no answer in ``limit`` seconds records the limit and stops
  waiting, so a frozen server fails the test quickly;
- ``imap_login``: a raw IMAP connection, logged in.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from estafeta.message import summarize
from estafeta.store import Delivery, Store
from tests.security.conftest import (
    BOB,
    HOSTNAME,
    PASSWORD,
    Client,
    MailServer,
    imap_login,
    new_source,
    start_server,
)

__all__ = [
    "Probe",
    "RssSampler",
    "deliver_directly",
    "imap_login",
    "prepared_server",
    "rss",
]


def rss(server: MailServer) -> int:
    """The server process's resident set, in octets."""
    process = server.instance.process
    assert process is not None
    status = Path(f"/proc/{process.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) * 1024


class RssSampler:
    """The server's peak RSS while the ``with`` block runs (sampled every 10 ms)."""

    def __init__(self, server: MailServer) -> None:
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, rss(self.server))
            self._stop.wait(0.01)

    def __enter__(self) -> RssSampler:
        self.peak = rss(self.server)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, AssertionError):
            self.peak = max(self.peak, rss(self.server))


class Probe:
    """Another user, timing the server's answers in a thread until stopped.

    Each round: an SMTP greeting (connect until "220 "), an IMAP LOGIN of
    ``user`` (connect until "a OK"), and with ``deliver`` an SMTP delivery
    of a small message to ``user`` (MAIL FROM until the 250 after DATA).
    Each is timed; no answer within ``limit`` seconds counts as ``limit``.
    """

    def __init__(
        self, server: MailServer, *, user: str = BOB, deliver: bool = False, limit: float = 10.0
    ) -> None:
        self.server = server
        self.user = user
        self.deliver = deliver
        self.limit = limit
        self.greetings: list[float] = []
        self.logins: list[float] = []
        self.deliveries: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=3 * self.limit + 5)

    def wait_rounds(self, rounds: int, timeout: float = 60.0) -> None:
        """Wait until ``rounds`` rounds have been measured."""
        deadline = time.monotonic() + timeout
        while len(self.logins) < rounds and time.monotonic() < deadline:
            time.sleep(0.05)

    def worst(self) -> dict[str, float]:
        return {
            "smtp_greeting": max(self.greetings, default=0.0),
            "imap_login": max(self.logins, default=0.0),
            "smtp_delivery": max(self.deliveries, default=0.0),
        }

    def _timed(self, what: Callable[[], None], into: list[float]) -> None:
        start = time.monotonic()
        try:
            what()
        except (OSError, AssertionError) as exc:
            self.errors.append(f"{what.__name__}: {exc!r}")
            into.append(self.limit)
            return
        into.append(min(time.monotonic() - start, self.limit))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._timed(self._greeting, self.greetings)
            self._timed(self._login, self.logins)
            if self.deliver:
                self._timed(self._delivery, self.deliveries)
            self._stop.wait(0.2)

    def _greeting(self) -> None:
        with Client(self.server.port("smtp"), source=new_source(), timeout=self.limit) as c:
            line = c.line()
            assert line.startswith(b"220 "), line
            c.send(b"QUIT\r\n")

    def _login(self) -> None:
        with Client(self.server.port("imap"), source=new_source(), timeout=self.limit) as c:
            assert c.line().startswith(b"* OK")
            _, tagged = c.imap("a", f'LOGIN {self.user} "{PASSWORD}"')
            assert tagged.startswith(b"a OK"), tagged
            c.send(b"b LOGOUT\r\n")

    def _delivery(self) -> None:
        with Client(self.server.port("smtp"), source=new_source(), timeout=self.limit) as c:
            assert c.line().startswith(b"220 ")
            assert c.smtp("EHLO probe.example").startswith(b"250 ")
            assert c.smtp("MAIL FROM:<probe@remote.test>").startswith(b"250 ")
            assert c.smtp(f"RCPT TO:<{self.user}>").startswith(b"250 ")
            assert c.smtp("DATA").startswith(b"354 ")
            reply = c.smtp(b"From: probe@remote.test\r\nSubject: probe\r\n\r\nare you there?\r\n.")
            assert reply.startswith(b"250 "), reply
            c.send(b"QUIT\r\n")


def deliver_directly(
    server_root: Path, address: str, messages: Sequence[bytes], *, batch: int = 256
) -> None:
    """Store ``messages`` in ``address``'s INBOX through the store API (the
    server must not run): durable like SMTP delivery, without its size limit."""
    store = Store(server_root / "data" / "mail", HOSTNAME)
    store.start()
    try:
        summaries: dict[bytes, object] = {}
        for start in range(0, len(messages), batch):
            deliveries = []
            for data in messages[start : start + batch]:
                summary = summaries.get(data)
                if summary is None:
                    summary = summaries[data] = summarize(data)
                deliveries.append(Delivery(address, data, summary))  # type: ignore[arg-type]
            store.deliver_sync(deliveries)
    finally:
        store.stop()


@contextmanager
def prepared_server(
    root: Path,
    populate: Callable[[Path], None],
    *,
    limits_config: str = "",
) -> Iterator[MailServer]:
    """``start_server`` with plaintext logins allowed, whose mail ``populate``
    (given ``root``) put in place before the server started."""
    server = start_server(
        root,
        limits_config=limits_config,
        auth_config="allow_plaintext = true\n",
        populate=populate,
    )
    try:
        yield server
    finally:
        server.stop()
