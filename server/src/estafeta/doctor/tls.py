"""The live certificates: on every TLS listener, and against the TLSA records.

``probe`` connects to a listener of this server as a client does (STARTTLS on
smtp/submission rfc3207:4, imap rfc9051:6.2.1, pop3 rfc2595:4, managesieve
rfc5804:2.2; TLS at once on the implicit-TLS ports rfc8314:3.3 and https),
first with the verifying context (the system's trust anchors, ``[queue]
ca_file`` and ``--ca-file``, the host name as server name) and, when that
handshake fails verification, again without verification to see what is
served. A listener that takes a PROXY header ([web] proxy_protocol) gets a
version 1 header first. One probe per address and port, shared by the checks.

``certificate``, per listener: the leaf certificate is valid now and for
``WARN_DAYS`` more days, names the host name (a subjectAltName, a wildcard
only as the whole left-most label: rfc6125:6.4.3), and is trusted.

``tlsa``: the ``_25._tcp.<hostname>`` records (rfc7672:3) against the chain
served on the smtp listener: DANE-EE(3) against the leaf, DANE-TA(2) against
the other certificates of the chain (rfc7672:3.1.1, 3.1.2); selector 0 the
whole certificate, 1 its SubjectPublicKeyInfo; matching type 0 exact, 1
SHA-256, 2 SHA-512 (rfc6698:2.1.2, 2.1.3). PKIX usages 0 and 1 are unusable
for SMTP (rfc7672:3.1.3). Whether the records are DNSSEC-signed is not
looked at here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from estafeta.doctor.context import Context, Listener
from estafeta.doctor.findings import Finding, Problems
from estafeta.queue.client import ProtocolError, SMTPConnection
from estafeta.tlsclose import close_promptly

WARN_DAYS = 14
EHLO_NAME = "doctor.invalid"  # rfc6761:6.4: never anyone's name
MAX_LINES = 100  # lines of a greeting or a reply read before giving up
MAX_LINE = 16 * 1024
_DER = 2  # _ssl.ENCODING_DER


class _Refused(Exception):
    """The server turned the doctor away before TLS (a 5xx greeting)."""


class _NoTLS(Exception):
    """The server does not start TLS."""


@dataclass(frozen=True)
class ProbeResult:
    chain: tuple[bytes, ...] = ()  # DER, the leaf first
    verify_error: str = ""  # why verification failed; "" when the chain is trusted
    error: str = ""  # no TLS at all: the reason
    refused: str = ""  # the server's refusal, before TLS


async def probe(ctx: Context, listener: Listener) -> ProbeResult:
    key = (listener.host, listener.port)
    task = ctx.probes.get(key)
    if task is None:
        task = asyncio.ensure_future(_probe(ctx, listener))
        ctx.probes[key] = task
    result: ProbeResult = await asyncio.shield(task)
    return result


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _probe(ctx: Context, listener: Listener) -> ProbeResult:
    verify_error = ""
    for context in (ctx.tls, _unverified()):
        try:
            chain = await _handshake(ctx, listener, context)
        except ssl.SSLCertVerificationError as exc:
            verify_error = exc.verify_message or str(exc)
            continue
        except _Refused as exc:
            return ProbeResult(refused=str(exc))
        except TimeoutError:
            return ProbeResult(error=f"no answer within {_budget(ctx, listener):g} s")
        except (OSError, ProtocolError, _NoTLS, ValueError) as exc:
            return ProbeResult(error=str(exc) or type(exc).__name__)
        return ProbeResult(chain=chain, verify_error=verify_error)
    return ProbeResult(error=verify_error)  # not reached: CERT_NONE verifies nothing


def _budget(ctx: Context, listener: Listener) -> float:
    return 2 * ctx.timeout + (ctx.greeting_pause if listener.mode == "smtp" else 0.0)


async def _handshake(
    ctx: Context, listener: Listener, context: ssl.SSLContext
) -> tuple[bytes, ...]:
    async with asyncio.timeout(_budget(ctx, listener)):
        reader, writer = await asyncio.open_connection(listener.host, listener.port, limit=MAX_LINE)
        try:
            source, source_port = writer.get_extra_info("sockname")[:2]
            if any(
                ipaddress.ip_address(source.split("%")[0]) in net for net in listener.proxy_from
            ):
                # proxy-protocol:2.1, the human-readable header.
                family = "TCP6" if ":" in listener.host else "TCP4"
                header = f"PROXY {family} {source} {listener.host} {source_port} {listener.port}"
                writer.write(header.encode("ascii") + b"\r\n")
            if listener.mode == "smtp":
                await _smtp(ctx, listener, reader, writer, context)
            else:
                if listener.mode != "tls":
                    await _PLAIN[listener.mode](reader, writer)
                await writer.start_tls(context, server_hostname=ctx.hostname)
                close_promptly(writer.transport)
            return _chain(writer.get_extra_info("ssl_object"))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), ctx.timeout)


async def _smtp(
    ctx: Context,
    listener: Listener,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
) -> None:
    connection = SMTPConnection(
        reader, writer, timeout=_budget(ctx, listener), peer_name=ctx.hostname
    )
    greeting = await connection.read_reply()
    if greeting.code != 220:
        raise _Refused(f"greeting {greeting}")
    reply = await connection.ehlo(EHLO_NAME)
    if reply.code != 250:
        raise _Refused(f"EHLO answered {reply}")
    if "STARTTLS" not in connection.extensions:
        raise _NoTLS("the server does not offer STARTTLS")
    reply = await connection.starttls(context)
    if reply.code != 220:
        raise _NoTLS(f"STARTTLS answered {reply}")


async def _line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()  # ValueError past the stream's limit
    if not line:
        raise ConnectionResetError("the server closed the connection")
    return line.rstrip(b"\r\n")


def _text(line: bytes) -> str:
    return line[:200].decode("utf-8", "replace")


async def _imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _line(reader)
    if not greeting.startswith(b"* OK"):  # rfc9051:7.1: OK, PREAUTH or BYE
        raise _Refused(f"greeting {_text(greeting)}")
    writer.write(b"d1 STARTTLS\r\n")
    for _ in range(MAX_LINES):
        line = await _line(reader)
        if line.startswith(b"d1 "):
            if line[3:5].upper() != b"OK":
                raise _NoTLS(f"STARTTLS answered {_text(line)}")
            return
    raise ProtocolError("no answer to STARTTLS")


async def _pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _line(reader)
    if not greeting.startswith(b"+OK"):
        raise _Refused(f"greeting {_text(greeting)}")
    writer.write(b"STLS\r\n")  # rfc2595:4
    line = await _line(reader)
    if not line.startswith(b"+OK"):
        raise _NoTLS(f"STLS answered {_text(line)}")


async def _sieve_reply(reader: asyncio.StreamReader) -> bytes:
    """Lines up to the response (OK, NO or BYE) of rfc5804:1.3; returns it."""
    for _ in range(MAX_LINES):
        line = await _line(reader)
        if line[:2].upper() in (b"OK", b"NO", b"BY"):
            return line
    raise ProtocolError("no ManageSieve response")


async def _sieve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _sieve_reply(reader)
    if not greeting.upper().startswith(b"OK"):
        raise _Refused(f"greeting {_text(greeting)}")
    writer.write(b"STARTTLS\r\n")
    line = await _sieve_reply(reader)
    if not line.upper().startswith(b"OK"):
        raise _NoTLS(f"STARTTLS answered {_text(line)}")


_PLAIN = {"imap": _imap, "pop3": _pop3, "sieve": _sieve}


def _chain(ssl_object: Any) -> tuple[bytes, ...]:
    """The certificates the server sent, DER, the leaf first."""
    leaf = ssl_object.getpeercert(binary_form=True)
    # Python 3.13 has SSLObject.get_unverified_chain(); before, the _ssl object has it.
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    chain: list[bytes] = []
    for cert in (getter() if getter is not None else None) or ():
        chain.append(cert if isinstance(cert, bytes) else cert.public_bytes(_DER))
    if not chain or chain[0] != leaf:
        chain = [leaf, *(c for c in chain if c != leaf)]
    return tuple(chain)


# -- certificates ------------------------------------------------------------------


def dns_names(certificate: x509.Certificate) -> list[str]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [name.lower().rstrip(".") for name in extension.value.get_values_for_type(x509.DNSName)]


def name_matches(hostname: str, names: Sequence[str]) -> bool:
    """rfc6125:6.4.3 — exact, or ``*.`` standing for the whole left-most label."""
    host = hostname.lower().rstrip(".")
    for pattern in names:
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _date(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


async def check_certificates(ctx: Context) -> list[Finding]:
    if not ctx.tls_configured:
        return [
            Finding(
                "certificate",
                "(no [tls])",
                "warn",
                "no certificate is configured: the MX offers no STARTTLS, mail comes in "
                "unencrypted, and MTA-STS and DANE cannot work",
                "configure [acme] (or [tls] cert and key) and restart estafeta",
                ctx.hostname,
            )
        ]
    return [await _certificate(ctx, listener) for listener in ctx.listeners]


async def _certificate(ctx: Context, listener: Listener) -> Finding:
    problems = Problems("certificate", listener.label, ctx.hostname)
    result = await probe(ctx, listener)
    if result.refused:
        problems.warn(
            f"the server turned the doctor away ({result.refused}); the certificate was "
            "not looked at",
            "let this host in ([screen] trusted, [dnsbl]) and run estafeta doctor again",
        )
        return problems.finding()
    if result.error:
        problems.fail(
            f"no TLS on {listener.label}: {result.error}",
            f"check that estafeta runs and listens on {listener.label}",
        )
        return problems.finding()
    try:
        leaf = x509.load_der_x509_certificate(result.chain[0])
    except ValueError as exc:
        problems.fail(f"the certificate cannot be read: {exc}", "serve a valid certificate")
        return problems.finding()
    renew = "renew the certificate (with [acme] estafeta renews it 30 days ahead: see its log)"
    expires = leaf.not_valid_after_utc
    days = (expires.timestamp() - ctx.now()) / 86400
    expired = days < 0 or leaf.not_valid_before_utc.timestamp() > ctx.now()
    if days < 0:
        problems.fail(f"the certificate expired on {_date(expires)}", renew)
    elif leaf.not_valid_before_utc.timestamp() > ctx.now():
        problems.fail(
            f"the certificate is not valid before {_date(leaf.not_valid_before_utc)}",
            "check the host's clock, or serve a certificate valid now",
        )
    elif days < WARN_DAYS:
        problems.warn(f"the certificate expires on {_date(expires)}, in {days:.1f} days", renew)
    else:
        problems.ok(f"valid until {_date(expires)} ({int(days)} days)")
    names = dns_names(leaf)
    mismatch = not name_matches(ctx.hostname, names)
    if mismatch:
        problems.fail(
            f"the certificate names {', '.join(names) or 'no host (no subjectAltName)'}, "
            f"not {ctx.hostname}",
            f"serve a certificate for {ctx.hostname}",
        )
    else:
        problems.ok(f"it names {ctx.hostname}")
    if result.verify_error and not (expired or mismatch):
        problems.warn(
            f"it is not trusted here: {result.verify_error}",
            "use a certificate of a public CA ([acme]), or add its CA with [queue] ca_file "
            "or --ca-file",
        )
    elif not result.verify_error:
        issuer = leaf.issuer.rfc4514_string() or "(no issuer name)"
        problems.ok(f"trusted, issued by {issuer}")
    on_disk = _file_leaf(ctx)
    if on_disk is not None and on_disk != result.chain[0]:
        problems.warn(
            f"it is not the certificate in {ctx.cert_file} (renewed, but not loaded?)",
            "make estafeta read its TLS files again: systemctl reload estafeta (SIGHUP)",
        )
    return problems.finding()


def _file_leaf(ctx: Context) -> bytes | None:
    """The first certificate of the configured certificate file, DER; None
    when there is none or it cannot be read (the doctor may run as another user)."""
    if ctx.cert_file is None:
        return None
    try:
        return x509.load_pem_x509_certificate(ctx.cert_file.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
    except (OSError, ValueError):
        return None


# -- TLSA --------------------------------------------------------------------------


def _spki(der: bytes) -> bytes:
    public = x509.load_der_x509_certificate(der).public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def tlsa_matches(record: tuple[int, int, int, bytes], chain: Sequence[bytes]) -> bool:
    """Whether a DANE-EE(3) or DANE-TA(2) record matches ``chain`` (leaf first)."""
    usage, selector, mtype, data = record
    candidates = chain[:1] if usage == 3 else chain[1:] if usage == 2 else ()
    for der in candidates:
        try:
            content = der if selector == 0 else _spki(der) if selector == 1 else None
        except ValueError:
            continue
        if content is None:
            return False
        if mtype == 0:
            digest = content
        elif mtype == 1:
            digest = hashlib.sha256(content).digest()
        elif mtype == 2:
            digest = hashlib.sha512(content).digest()
        else:
            return False
        if digest == data:
            return True
    return False


def _show(record: tuple[int, int, int, bytes]) -> str:
    usage, selector, mtype, data = record
    return f"{usage} {selector} {mtype} {data.hex()[:16]}..."


async def check_tlsa(ctx: Context) -> list[Finding]:
    name = f"_25._tcp.{ctx.hostname}"
    problems = Problems("tlsa", name, ctx.hostname)
    found = await ctx.records(problems, name, "TLSA")
    if found is None:
        return [problems.finding()]
    records = [r for r in found if isinstance(r, tuple) and len(r) == 4]
    if not records:
        problems.ok("no TLSA records: senders do not use DANE for this MX (optional)")
        return [problems.finding()]
    smtp = next((x for x in ctx.listeners if x.name == "smtp"), None)
    if smtp is None:
        problems.warn(
            "TLSA records are published, but this server has no smtp listener with TLS",
            f"remove the TLSA records at {name}, or configure [tls] and [listen] smtp",
        )
        return [problems.finding()]
    result = await probe(ctx, smtp)
    if not result.chain:
        # The certificate finding of the listener says why.
        problems.warn(
            f"not compared: no certificate from {smtp.label} ({result.refused or result.error})",
            "fix the smtp listener first (its certificate finding)",
        )
        return [problems.finding()]
    usable = [r for r in records if r[0] in (2, 3)]
    matching = [r for r in usable if tlsa_matches(r, result.chain)]
    if matching:
        problems.ok(f"{_show(matching[0])} matches the certificate on {smtp.label}")
        if len(usable) > len(matching):
            problems.ok(f"{len(usable) - len(matching)} other record(s) match nothing (rollover)")
    elif usable:
        expected = hashlib.sha256(_spki(result.chain[0])).hexdigest()
        problems.fail(
            f"none of the {len(usable)} TLSA records matches the certificate on {smtp.label}: "
            "senders that use DANE defer mail to this MX (rfc7672:2.2)",
            f"publish {name}. TLSA 3 1 1 {expected} (the dns_records role does, with "
            "dns_records__tlsa), and remove the stale records",
        )
    unusable = [r for r in records if r[0] not in (2, 3)]
    if unusable:
        problems.warn(
            f"usage {unusable[0][0]} records are unusable for SMTP (rfc7672:3.1.3)",
            f"publish DANE-EE (3 1 1) records at {name} instead",
        )
    return [problems.finding()]
