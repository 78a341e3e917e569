"""The Authentication-Results header field (rfc8601): writing ours, and
removing forgeries of it from incoming mail.

Formatted by hand rather than with the authres library, to control folding
and quoting; the output is what authres (and dkimpy's ARC sealing, which
copies our results into ARC-Authentication-Results) parses.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Protocol

from estafeta.policy.dkim import ARCResult, DKIMResult
from estafeta.policy.dmarc import DMARCResult

FIELD_NAME = "Authentication-Results"
# rfc5322:2.1.1 — lines SHOULD be no more than 78 characters; stay below.
MAX_LINE = 77
# Reasons are cut so that "\t\treason=\"...\"" fits on one line.
MAX_REASON = 60
_MAX_VALUE = 255


class SPFVerdictLike(Protocol):
    """What we need of an SPF verdict (estafeta.policy.spf.SPFVerdict)."""

    @property
    def result(self) -> object: ...  # "pass", "fail", ... (str or a str-valued enum)

    @property
    def domain(self) -> object: ...  # the checked identity's domain

    @property
    def identity(self) -> object: ...  # "mailfrom" or "helo"


class IprevVerdictLike(Protocol):
    """rfc8601:3 iprev: ``result`` and the client ``ip``; a ``hostname``
    attribute, if present, is added as a comment."""

    @property
    def result(self) -> object: ...

    @property
    def ip(self) -> object: ...


# rfc2045:5.1 — token: any CHAR except SPACE, CTLs and tspecials.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# rfc8601:2.2 — result and method are Keywords (rfc5321 ldh-str).
_KEYWORD = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def _text(value: object) -> str:
    """A str-valued enum's value, or the object's text."""
    if isinstance(value, enum.Enum):
        value = value.value
    return "" if value is None else str(value)


def _keyword(value: object, what: str) -> str:
    text = _text(value).strip().lower()
    if not _KEYWORD.fullmatch(text):
        raise ValueError(f"{what} result {text!r} is not an rfc8601 keyword")
    return text


def _printable(text: str, limit: int) -> str:
    # Control characters (CR, LF above all) would end or fold the field.
    text = "".join(c if " " <= c <= "~" else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(text: str) -> str:
    """rfc8601:2.2 value: a token as is, anything else a quoted-string."""
    if _TOKEN.fullmatch(text):
        return text
    escaped = _printable(text, _MAX_VALUE).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _comment(text: str) -> str:
    text = _printable(text, MAX_REASON)
    return "(" + re.sub(r"([()\\])", r"\\\1", text) + ")"


class _ResInfo:
    """One resinfo: methodspec, then comments, reasonspec and propspecs,
    kept as separate units so that folding falls between them."""

    def __init__(self, method: str, result: object) -> None:
        self.units = [f"{method}={_keyword(result, method)}"]

    def comment(self, text: str) -> _ResInfo:
        if text:
            self.units.append(_comment(text))
        return self

    def reason(self, text: str) -> _ResInfo:
        # rfc8601:2.2 reasonspec comes before the propspecs.
        if text:
            self.units.append(f"reason={_value(_printable(text, MAX_REASON))}")
        return self

    def prop(self, ptype: str, name: str, value: object) -> _ResInfo:
        text = _text(value).strip()
        if text:
            self.units.append(f"{ptype}.{name}={_value(text)}")
        return self


def _spf(verdict: SPFVerdictLike) -> _ResInfo:
    info = _ResInfo("spf", verdict.result)
    # rfc8601:2.7.2 — smtp.mailfrom or smtp.helo, whichever SPF checked.
    identity = _text(verdict.identity).lower()
    return info.prop("smtp", "helo" if identity == "helo" else "mailfrom", verdict.domain)


def _dkim(result: DKIMResult) -> _ResInfo:
    info = _ResInfo("dkim", result.result)
    if result.result != "pass":
        info.reason(result.reason)
    # rfc8601:2.7.1 header.d, header.s, header.a; rfc6008:4 header.b.
    return (
        info.prop("header", "d", result.domain)
        .prop("header", "s", result.selector)
        .prop("header", "a", result.algorithm)
        .prop("header", "b", result.header_b)
    )


def _dmarc(result: DMARCResult) -> _ResInfo:
    info = _ResInfo("dmarc", result.result)
    if result.result == "fail" and result.record is not None:
        # What was asked and what we did ("disposition"), as a comment:
        # rfc7489:11.2 registers only header.from for dmarc.
        info.comment(f"p={result.record.policy} dis={result.policy}")
    elif result.result in ("temperror", "permerror"):
        info.reason(result.reason)
    # rfc7489:11.2 — header.from, the RFC5322.From domain.
    return info.prop("header", "from", result.from_domain)


def _arc(result: ARCResult) -> _ResInfo:
    info = _ResInfo("arc", result.result)
    if result.result == "fail":
        info.reason(result.reason)
    return info


def _iprev(verdict: IprevVerdictLike) -> _ResInfo:
    # rfc8601:2.7.3 — policy.iprev is the client's IP address.
    info = _ResInfo("iprev", verdict.result).prop("policy", "iprev", verdict.ip)
    return info.comment(_text(getattr(verdict, "hostname", "")))


def _fold(infos: Sequence[_ResInfo]) -> list[str]:
    """Each resinfo on its own line; a line that would pass MAX_LINE is
    continued (CRLF + two tabs) before the unit that does not fit."""
    lines: list[str] = []
    for i, info in enumerate(infos):
        last = i == len(infos) - 1
        line = "\t" + info.units[0]
        for unit in info.units[1:]:
            if len(line) + 1 + len(unit) > MAX_LINE:
                lines.append(line)
                line = "\t\t" + unit
            else:
                line += " " + unit
        lines.append(line if last else line + ";")
    return lines


def header(
    authserv_id: str,
    *,
    spf: SPFVerdictLike | None = None,
    dkim: Sequence[DKIMResult] | None = None,
    dmarc: DMARCResult | None = None,
    arc: ARCResult | None = None,
    iprev: IprevVerdictLike | None = None,
) -> bytes:
    """One Authentication-Results field (rfc8601:2.2), CRLF-terminated.

    A check that was not made is left out (None). ``dkim`` is the list from
    ``dkim.verify``: an empty list means the message was checked and carries
    no signature, reported as ``dkim=none`` (rfc8601:2.7.1). With no checks
    at all the field says ``none`` (rfc8601:2.2 no-result).
    """
    infos: list[_ResInfo] = []
    if iprev is not None:
        infos.append(_iprev(iprev))
    if spf is not None:
        infos.append(_spf(spf))
    if dkim is not None:
        if dkim:
            infos.extend(_dkim(result) for result in dkim)
        else:
            infos.append(_ResInfo("dkim", "none"))
    if dmarc is not None:
        infos.append(_dmarc(dmarc))
    if arc is not None:
        infos.append(_arc(arc))
    authserv = _value(authserv_id.strip())
    if not infos:
        return f"{FIELD_NAME}: {authserv}; none\r\n".encode("ascii")
    lines = [f"{FIELD_NAME}: {authserv};", *_fold(infos)]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


# -- removing forgeries -----------------------------------------------------------


def _skip_cfws(text: bytes, i: int) -> int:
    """Index of the first character after folding white space and comments
    (rfc5322:3.2.2 CFWS; comments nest and may hold quoted-pairs)."""
    depth = 0
    while i < len(text):
        char = text[i : i + 1]
        if depth:
            if char == b"\\":
                i += 2
                continue
            if char == b"(":
                depth += 1
            elif char == b")":
                depth -= 1
        elif char == b"(":
            depth = 1
        elif char not in (b" ", b"\t", b"\r", b"\n"):
            return i
        i += 1
    return i


def _authserv_id(value: bytes) -> str | None:
    """The authserv-id of an Authentication-Results field value (the text
    after the colon): rfc8601:2.2 ``[CFWS] authserv-id [CFWS authres-version]``."""
    i = _skip_cfws(value, 0)
    if value[i : i + 1] == b'"':
        out = bytearray()
        i += 1
        while i < len(value):
            char = value[i : i + 1]
            if char == b"\\" and i + 1 < len(value):
                out += value[i + 1 : i + 2]
                i += 2
                continue
            if char == b'"':
                return out.decode("utf-8", "replace")
            if char not in (b"\r", b"\n"):
                out += char
            i += 1
        return None
    match = re.match(rb"[^\s;()\"]+", value[i:])
    return match.group(0).decode("utf-8", "replace") if match else None


def _same_id(found: str, ours: str) -> bool:
    return found.strip().rstrip(".").lower() == ours


def strip_ours(message: bytes, authserv_id: str) -> bytes:
    """Remove every Authentication-Results field claiming our authserv-id
    (rfc8601:5: fields arriving from outside that claim to come from inside
    our trust boundary must be deleted, or they would be taken for our own).
    Matching ignores case, comments and a version number; all other bytes,
    including other A-R fields, the header block's other fields and the body,
    are kept exactly."""
    ours = authserv_id.strip().rstrip(".").lower()
    out: list[bytes] = []
    field_start = 0  # start of the field being collected
    drop = False  # whether the field being collected is ours
    i = 0
    while i < len(message):
        newline = message.find(b"\n", i)
        end = len(message) if newline < 0 else newline + 1
        line = message[i:end]
        if line in (b"\r\n", b"\n"):
            break  # rfc5322:2.1 — the empty line ending the header block
        if line[:1] not in (b" ", b"\t"):
            # A new field begins: settle the previous one.
            if not drop:
                out.append(message[field_start:i])
            field_start = i
            name, colon, _ = line.partition(b":")
            drop = False
            if colon and name.rstrip(b" \t").lower() == FIELD_NAME.lower().encode():
                # The value may continue on the following lines.
                value_end = end
                while value_end < len(message) and message[value_end : value_end + 1] in (
                    b" ",
                    b"\t",
                ):
                    nl = message.find(b"\n", value_end)
                    value_end = len(message) if nl < 0 else nl + 1
                found = _authserv_id(message[i + len(name) + 1 : value_end])
                drop = found is not None and _same_id(found, ours)
        i = end
    if not drop:
        out.append(message[field_start:i])
    out.append(message[i:])
    return b"".join(out)
