"""MTA-STS (rfc8461): may a domain's mail only go to authenticated MX hosts?

A domain announces a policy with a TXT record at ``_mta-sts.<domain>``
(``v=STSv1; id=...``, rfc8461:3.1) and serves it over HTTPS at
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (rfc8461:3.3). The
policy names the MX hosts that may receive the domain's mail and the mode:
``enforce`` (deliver only to those, over verified TLS), ``testing`` (report,
deliver anyway) or ``none`` (the policy is withdrawn).

``MTASTS.policy_for`` implements the discovery of rfc8461:5.1: the policy is
fetched when the TXT id is new or the cached copy expired, and a cached,
unexpired policy outlives DNS and HTTPS failures, which is what protects a
domain against an attacker who blocks the lookups. What to do with a policy
(MX filtering, requiring TLS) is the deliverer's business.

``fetch_policy`` is a small HTTP/1.1 client of its own: the address of
``mta-sts.<domain>`` comes from the policy resolver, not the system's, no
redirect is followed, and everything about the response is bounded (size,
time, header lines).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from estafeta.dns import DNSTempError, Resolver, normalize_name
from estafeta.log import log_event
from estafeta.reports import tlsrpt

log = logging.getLogger("estafeta.queue")

VERSION = "STSv1"
MODES = ("enforce", "testing", "none")
MAX_MAX_AGE = 31557600  # rfc8461:3.2, about a year
MAX_POLICY_SIZE = 64 * 1024  # rfc8461:3.3 suggests limiting the body to 64 KiB
POLICY_PATH = "/.well-known/mta-sts.txt"  # rfc8461:3.3
_MAX_HEADER_BYTES = 16 * 1024
_MAX_HEADER_LINES = 100

# rfc8461:3.1 sts-ext-name / rfc8461:3.2 sts-policy-ext-name
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
# rfc8461:3.1 sts-ext-value: printable, no "=", ";" or space
_TXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")  # rfc8461:3.1 sts-id-value
_MAX_AGE = re.compile(r"[0-9]{1,10}\Z")  # rfc8461:3.2 sts-policy-max-age-value
# rfc5321:4.1.2 sub-domain = Let-dig [Ldh-str]
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_WSP = " \t"


class PolicyError(ValueError):
    """A TXT record, policy file or HTTPS response that is not acceptable."""


# -- the TXT record (rfc8461:3.1) ---------------------------------------------------


def parse_txt(txt: str) -> str | None:
    """The policy id of an ``_mta-sts`` TXT record; None if it is not valid.

    rfc8461:3.1: ``v=STSv1`` first, then ``;``-separated ``key=value``
    fields, an optional trailing ``;``; ``id`` (1-32 letters and digits) is
    required; unknown fields are ignored and of repeated ones the first
    counts (rfc8461:3.2, last paragraphs).
    """
    if not txt.startswith("v=" + VERSION):
        return None
    parts = txt.split(";")
    if parts[0].rstrip(_WSP) != "v=" + VERSION or len(parts) < 2:
        return None
    fields = [part.strip(_WSP) for part in parts[1:]]
    if fields[-1] == "":
        fields.pop()  # a trailing ";" is allowed
    if not fields:
        return None
    policy_id: str | None = None
    for field in fields:
        name, eq, value = field.partition("=")
        if not eq or not _FIELD_NAME.match(name) or not _TXT_VALUE.match(value):
            return None
        if name == "id" and policy_id is None:
            if not _TXT_ID.match(value):
                return None
            policy_id = value
    return policy_id


def select_txt(records: Sequence[Any]) -> str | None:
    """The policy id from all TXT records at ``_mta-sts.<domain>``.

    rfc8461:3.1: records not starting with ``v=STSv1`` are discarded; unless
    exactly one remains (and is valid) the domain has no policy.
    """
    candidates = [r for r in records if isinstance(r, str) and r.startswith("v=" + VERSION)]
    if len(candidates) != 1:
        return None
    return parse_txt(candidates[0])


# -- the policy (rfc8461:3.2) -------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    mode: str  # "enforce" | "testing" | "none"
    mx: tuple[str, ...]  # patterns, lower case, may be "*.example.net"
    max_age: int
    policy_id: str = ""
    fetched: float = 0.0
    # The policy file's lines, for TLS reports (rfc8460:4.4 policy-string).
    lines: tuple[str, ...] = ()

    def expired(self, now: float) -> bool:
        # rfc8461:3.2 max_age: seconds the policy may be cached after fetching.
        return now >= self.fetched + self.max_age

    def matches(self, mx_host: str) -> bool:
        """Whether ``mx_host`` is allowed by one of the mx patterns.

        rfc8461:4.1: an exact (case-insensitive) match, or ``*.suffix``
        matching a host with exactly one more label on the left.
        """
        host = normalize_name(mx_host)
        if not host:
            return False
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, dot, rest = host.partition(".")
                if dot and label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def to_json(self) -> str:
        return json.dumps(
            {
                "mode": self.mode,
                "mx": list(self.mx),
                "max_age": self.max_age,
                "id": self.policy_id,
                "fetched": self.fetched,
                "lines": list(self.lines),
            },
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str) -> Policy:
        """The policy ``to_json`` wrote; PolicyError when it is not one."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PolicyError(f"cached policy is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PolicyError("cached policy is not a JSON object")
        mode, mx, max_age = data.get("mode"), data.get("mx"), data.get("max_age")
        policy_id, fetched = data.get("id", ""), data.get("fetched", 0.0)
        lines = data.get("lines", [])  # absent in policies cached before TLS reports
        if mode not in MODES:
            raise PolicyError(f"cached policy has a bad mode {mode!r}")
        if not isinstance(mx, list) or not all(isinstance(m, str) for m in mx):
            raise PolicyError("cached policy has a bad mx list")
        if not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 0:
            raise PolicyError("cached policy has a bad max_age")
        if not isinstance(policy_id, str):
            raise PolicyError("cached policy has a bad id")
        if not isinstance(fetched, (int, float)) or isinstance(fetched, bool):
            raise PolicyError("cached policy has a bad fetch time")
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise PolicyError("cached policy has bad lines")
        return Policy(
            mode=str(mode),
            mx=tuple(m.lower() for m in mx),
            max_age=max_age,
            policy_id=policy_id,
            fetched=float(fetched),
            lines=tuple(lines),
        )


def parse_policy(text: str) -> Policy:
    """Parse a policy file (rfc8461:3.2); PolicyError says what is wrong.

    ``key: value`` lines ending in LF or CRLF; ``version: STSv1``, ``mode``
    and ``max_age`` are required, ``mx`` (repeatable) too unless the mode is
    ``none``. Unknown keys are ignored; of a repeated key other than ``mx``
    the first counts.
    """
    values: dict[str, str] = {}
    mx: list[str] = []
    lines: list[str] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip(_WSP):
            continue  # blank lines (and the one after the final newline)
        lines.append(line.strip(_WSP))
        name, colon, value = line.partition(":")
        if not colon or not _FIELD_NAME.match(name):
            raise PolicyError(f"line {number}: not a 'key: value' line")
        value = value.strip(_WSP)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value if c != "\t"):
            raise PolicyError(f"line {number}: control character in the value of {name}")
        if name == "mx":
            mx.append(_mx_pattern(value, number))
        else:
            values.setdefault(name, value)

    version = values.get("version")
    if version is None:
        raise PolicyError("no version field")
    if version != VERSION:
        raise PolicyError(f"unsupported version {version!r} (want {VERSION})")
    mode = values.get("mode")
    if mode is None:
        raise PolicyError("no mode field")
    if mode not in MODES:
        raise PolicyError(f"bad mode {mode!r} (want enforce, testing or none)")
    max_age_text = values.get("max_age")
    if max_age_text is None:
        raise PolicyError("no max_age field")
    if not _MAX_AGE.match(max_age_text) or int(max_age_text) > MAX_MAX_AGE:
        raise PolicyError(f"bad max_age {max_age_text!r} (want 0..{MAX_MAX_AGE})")
    if not mx and mode != "none":
        raise PolicyError(f"no mx field in a policy with mode {mode}")
    return Policy(
        mode=mode, mx=tuple(dict.fromkeys(mx)), max_age=int(max_age_text), lines=tuple(lines)
    )


def _mx_pattern(value: str, number: int) -> str:
    # rfc8461:3.2 sts-policy-mx-value = ["*."] Domain
    pattern = value.lower().rstrip(".")
    labels = pattern.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if len(labels) < 1 or not all(_LABEL.match(label) for label in labels):
        raise PolicyError(f"line {number}: bad mx pattern {value!r}")
    return pattern


# -- the cache ----------------------------------------------------------------------


class PolicyCache(Protocol):
    def get(self, domain: str) -> Policy | None: ...

    def put(self, domain: str, policy: Policy) -> None: ...


class MemoryCache:
    """Policies in a dict; for tests and for runs without a queue database."""

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {}

    def get(self, domain: str) -> Policy | None:
        return self.policies.get(domain)

    def put(self, domain: str, policy: Policy) -> None:
        self.policies[domain] = policy


# -- fetching over HTTPS (rfc8461:3.3) ----------------------------------------------

Fetcher = Callable[[str], Awaitable[str]]


async def fetch_policy(
    domain: str,
    *,
    resolver: Resolver,
    ssl_context: ssl.SSLContext | None = None,
    port: int = 443,
    timeout: float = 10.0,  # noqa: ASYNC109 -- the API bounds the whole fetch, DNS included
) -> str:
    """The text of ``domain``'s policy file, fetched over verified HTTPS.

    Raises PolicyError for an answer that is not a policy file (no address,
    a redirect, a status other than 200, another media type, too big, bad
    HTTP) and OSError for network and TLS failures, TimeoutError included.
    """
    host = "mta-sts." + _ascii_domain(domain)
    context = ssl_context if ssl_context is not None else ssl.create_default_context()
    try:
        async with asyncio.timeout(timeout):
            addresses = await _addresses(resolver, host)
            return await each_address(
                addresses, port, context, host, lambda r, w: _get(r, w, host, port)
            )
    except TimeoutError:
        raise TimeoutError(f"fetching the MTA-STS policy of {domain} timed out") from None


T = TypeVar("T")


async def each_address(
    addresses: Sequence[str],
    port: int,
    context: ssl.SSLContext,
    server_name: str,
    exchange: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[T]],
) -> T:
    """``exchange`` over verified TLS with the first address that connects
    (then the connection is closed); the last connection error if none does."""
    error: OSError | None = None
    for address in addresses:
        try:
            reader, writer = await asyncio.open_connection(
                address, port, ssl=context, server_hostname=server_name
            )
        except OSError as exc:  # refused, unreachable, TLS failure: next one
            error = exc
            continue
        try:
            return await exchange(reader, writer)
        finally:
            await _close(writer)
    assert error is not None
    raise error


def _ascii_domain(domain: str) -> str:
    name = normalize_name(domain)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise PolicyError(f"{domain!r} is not a valid domain name") from None
    if not all(len(label) < 64 and _LABEL.match(label) for label in name.split(".")):
        raise PolicyError(f"{domain!r} is not a valid domain name")
    return name


async def _addresses(resolver: Resolver, host: str) -> list[str]:
    addresses: list[str] = []
    failures = 0
    for rdtype in ("AAAA", "A"):
        try:
            answer = await resolver.lookup(host, rdtype)
        except DNSTempError:
            failures += 1
            continue
        addresses.extend(str(record) for record in answer.records)
    if not addresses:
        if failures:
            raise OSError(f"{host}: temporary DNS failure")
        raise PolicyError(f"{host} has no address")
    return addresses


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
) -> str:
    authority = host if port == 443 else f"{host}:{port}"
    request = (
        f"GET {POLICY_PATH} HTTP/1.1\r\n"
        f"Host: {authority}\r\n"
        "User-Agent: estafeta\r\n"
        "Accept: text/plain\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    writer.write(request.encode("ascii"))
    await writer.drain()
    while True:
        status, headers = await _read_head(reader)
        if not 100 <= status < 200:  # skip interim responses (rfc9110:15.2)
            break
    if 300 <= status < 400:
        # rfc8461:3.3 — "HTTP 3xx redirects MUST NOT be followed".
        raise PolicyError(f"https://{authority}{POLICY_PATH}: redirect ({status}) not followed")
    if status != 200:
        raise PolicyError(f"https://{authority}{POLICY_PATH}: HTTP status {status}")
    # rfc8461:3.3 — the media type must be text/plain; parameters are fine.
    content_type = headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "text/plain":
        raise PolicyError(f"policy served as {content_type or 'no media type'!r}, not text/plain")
    body = await _read_body(reader, headers)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("policy is not UTF-8 text") from None


async def _read_line(reader: asyncio.StreamReader, budget: list[int]) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise PolicyError("connection closed in the middle of the HTTP response") from None
    except asyncio.LimitOverrunError:
        raise PolicyError("HTTP response line too long") from None
    budget[0] -= len(line)
    if budget[0] < 0:
        raise PolicyError("HTTP response header too large")
    return line.rstrip(b"\r\n")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    budget = [_MAX_HEADER_BYTES]
    status_line = (await _read_line(reader, budget)).decode("latin-1")
    match = re.match(r"HTTP/1\.[01] ([0-9]{3})(?: |\Z)", status_line)
    if match is None:
        raise PolicyError(f"not an HTTP/1.x response: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADER_LINES):
        line = (await _read_line(reader, budget)).decode("latin-1")
        if not line:
            return int(match.group(1)), headers
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise PolicyError(f"bad HTTP header line {line[:80]!r}")
        key = name.lower()
        value = value.strip(_WSP)
        if key in headers:
            # rfc9110:5.3 — repeated fields combine as a comma-separated list.
            headers[key] = f"{headers[key]}, {value}"
        else:
            headers[key] = value
    raise PolicyError("too many HTTP header lines")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    transfer_encoding = headers.get("transfer-encoding")
    if transfer_encoding is not None:
        codings = [c.strip().lower() for c in transfer_encoding.split(",") if c.strip()]
        if codings != ["chunked"]:
            raise PolicyError(f"unsupported transfer encoding {transfer_encoding!r}")
        return await _read_chunked(reader)
    length_text = headers.get("content-length")
    if length_text is not None:
        if not re.fullmatch(r"[0-9]{1,18}", length_text):
            raise PolicyError(f"bad Content-Length {length_text!r}")
        length = int(length_text)
        if length > MAX_POLICY_SIZE:
            raise PolicyError(f"policy too large ({length} bytes, limit {MAX_POLICY_SIZE})")
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise PolicyError("connection closed before the end of the policy") from None
    # No length: the body ends when the server closes the connection.
    body = await reader.read(MAX_POLICY_SIZE + 1)
    while body and len(body) <= MAX_POLICY_SIZE:
        more = await reader.read(MAX_POLICY_SIZE + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > MAX_POLICY_SIZE:
        raise PolicyError(f"policy too large (over {MAX_POLICY_SIZE} bytes)")
    return body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    # rfc9112:7.1 chunked transfer coding; extensions ignored, trailers skipped.
    body = bytearray()
    while True:
        line = (await _read_line(reader, [1024])).decode("latin-1")
        size_text = line.split(";", 1)[0].strip(_WSP)
        if not re.fullmatch(r"[0-9A-Fa-f]{1,8}", size_text):
            raise PolicyError(f"bad chunk size line {line[:80]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > MAX_POLICY_SIZE:
            raise PolicyError(f"policy too large (over {MAX_POLICY_SIZE} bytes)")
        try:
            body += await reader.readexactly(size)
            end = await reader.readexactly(2)
        except asyncio.IncompleteReadError:
            raise PolicyError("connection closed in the middle of a chunk") from None
        if end != b"\r\n":
            raise PolicyError("chunk not followed by CRLF")
    budget = [_MAX_HEADER_BYTES]
    for _ in range(_MAX_HEADER_LINES):  # the trailer section, up to its blank line
        if not await _read_line(reader, budget):
            return bytes(body)
    raise PolicyError("too many trailer lines")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2.0)
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # a server that drops the connection without close_notify


# -- discovery (rfc8461:5.1) --------------------------------------------------------


# rfc8461:5.1 leaves the retry schedule of failed fetches to the sender; a
# failed fetch (no HTTPS server, a bad policy) is retried after this long,
# or at once when the TXT record announces a new id.
FAILED_FETCH_RETRY = 300.0


class MTASTS:
    """The MTA-STS policy of recipient domains, cached as rfc8461:5.1 asks."""

    def __init__(
        self,
        resolver: Resolver,
        cache: PolicyCache,
        fetcher: Fetcher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.cache = cache
        if fetcher is None:

            async def default_fetcher(domain: str) -> str:
                return await fetch_policy(domain, resolver=resolver)

            fetcher = default_fetcher
        self.fetcher: Fetcher = fetcher
        self.clock = clock
        # One fetch per domain at a time: concurrent deliveries wait for it.
        # domain -> (lock, number of policy_for calls using it)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # domain -> (policy id, when the fetch failed): a domain that publishes
        # a record but serves no policy is not refetched for every message.
        self._failed: dict[str, tuple[str, float]] = {}
        # domain -> (rfc8460:4.3.2.2 result type, error) of that failed fetch,
        # for TLS reports; gone once the domain has a policy or no record.
        self._failure: dict[str, tuple[str, str]] = {}

    async def policy_for(self, domain: str) -> Policy | None:
        """The policy to apply to mail for ``domain``, or None if there is none.

        Never raises for DNS, network or policy problems: those fall back
        to the cached policy while it is unexpired (rfc8461:5.1).
        """
        domain = normalize_name(domain)
        try:
            answer = await self.resolver.lookup(f"_mta-sts.{domain}", "TXT")
        except DNSTempError as exc:
            log_event(log, "mta_sts_dns", logging.DEBUG, domain=domain, error=str(exc))
            return self._live(domain)
        policy_id = select_txt(answer.records)
        if policy_id is None:
            # rfc8461:5.1 — no (valid) record: a cached policy still applies.
            self._failure.pop(domain, None)
            return self._live(domain)
        live = self._live(domain)
        if live is not None and live.policy_id == policy_id:
            return live
        failed = self._failed.get(domain)
        if failed and failed[0] == policy_id and self.clock() - failed[1] < FAILED_FETCH_RETRY:
            return live
        lock, users = self._locks.get(domain, (asyncio.Lock(), 0))
        self._locks[domain] = (lock, users + 1)
        try:
            async with lock:
                # Someone else may have fetched it while we waited.
                live = self._live(domain)
                if live is not None and live.policy_id == policy_id:
                    return live
                return await self._refresh(domain, policy_id, live)
        finally:
            lock, users = self._locks[domain]
            if users == 1:
                del self._locks[domain]
            else:
                self._locks[domain] = (lock, users - 1)

    def failure(self, domain: str) -> tuple[str, str] | None:
        """Why ``domain``'s policy could not be had, when its last fetch
        failed: an rfc8460:4.3.2.2 result type and the error."""
        return self._failure.get(normalize_name(domain))

    async def _refresh(self, domain: str, policy_id: str, live: Policy | None) -> Policy | None:
        text = None
        try:
            text = await self.fetcher(domain)
            policy = parse_policy(text)
        except Exception as exc:  # never let a remote problem stop delivery
            self._failure[domain] = (_failure_type(exc, text is not None), str(exc)[:200])
            # rfc8461:5.1 — a failed fetch leaves the cached policy in force.
            log_event(
                log,
                "mta_sts_fetch_failed",
                logging.WARNING,
                domain=domain,
                id=policy_id,
                error=str(exc) or type(exc).__name__,
                using="cached" if live is not None else "none",
                retry_in=FAILED_FETCH_RETRY,
            )
            self._failed[domain] = (policy_id, self.clock())
            return live
        self._failed.pop(domain, None)
        self._failure.pop(domain, None)
        policy = replace(policy, policy_id=policy_id, fetched=self.clock())
        log_event(
            log,
            "mta_sts_policy",
            domain=domain,
            id=policy_id,
            mode=policy.mode,
            mx=policy.mx,
            max_age=policy.max_age,
        )
        try:
            self.cache.put(domain, policy)
        except Exception as exc:
            log_event(log, "mta_sts_cache_failed", logging.ERROR, domain=domain, error=str(exc))
        return policy

    def _live(self, domain: str) -> Policy | None:
        """The cached policy of ``domain`` unless it expired (rfc8461:3.2 max_age)."""
        try:
            cached = self.cache.get(domain)
        except Exception as exc:
            log_event(log, "mta_sts_cache_failed", logging.ERROR, domain=domain, error=str(exc))
            return None
        if cached is None or cached.expired(self.clock()):
            return None
        return cached


def _failure_type(exc: Exception, fetched: bool) -> str:
    """rfc8460:4.3.2.2 — the policy was fetched but is not valid; its HTTPS
    host did not pass PKIX validation; or it could not be fetched."""
    if fetched:
        return tlsrpt.STS_POLICY_INVALID
    if isinstance(exc, ssl.SSLCertVerificationError):
        return tlsrpt.STS_WEBPKI_INVALID
    return tlsrpt.STS_POLICY_FETCH_ERROR


__all__ = [
    "MTASTS",
    "Fetcher",
    "MemoryCache",
    "Policy",
    "PolicyCache",
    "PolicyError",
    "fetch_policy",
    "parse_policy",
    "parse_txt",
    "select_txt",
]
