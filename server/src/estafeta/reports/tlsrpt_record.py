"""The TLS-RPT record (rfc8460:3): which reports a domain asks for, where. Sans-IO.

``select_record(txts)`` takes every TXT record at ``_smtp._tls.<domain>``
and gives the ``rua`` URIs of the one valid ``v=TLSRPTv1`` record, or None
when the domain asks for no reports; ``mailto_addresses`` and ``https_url``
read the two kinds of URI we deliver to (rfc8460:5.3, 5.4). At most
``MAX_RUA`` URIs are kept.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

from estafeta.address import AddressError, normalize_address

MAX_RUA = 8

_VERSION = "v=TLSRPTv1"
_DELIM = re.compile(r"[ \t]*;[ \t]*")  # field-delim = *WSP ";" *WSP
# tlsrpt-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
# tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")
_URI_SPLIT = re.compile(r"[ \t]*,[ \t]*")
# rfc3986:3.1 scheme; tlsrpt-uri has its commas and "!" encoded
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!;]+\Z")


class RecordError(ValueError):
    """A ``v=TLSRPTv1`` record that is not valid (rfc8460:3)."""


def parse_record(txt: str) -> tuple[str, ...]:
    """The ``rua`` URIs of one TLS-RPT record, in order, each once.

    rfc8460:3: ``v=TLSRPTv1`` first, then ``field-delim``-separated fields
    and an optional trailing delimiter; ``rua=`` (required, a comma list of
    URIs) and extensions ``name=value``, which are ignored. Raises
    RecordError saying what is wrong."""
    if not txt.startswith(_VERSION):
        raise RecordError("does not start with v=TLSRPTv1")
    fields = _DELIM.split(txt[len(_VERSION) :])
    if fields[0] != "" or len(fields) < 2:
        raise RecordError("v=TLSRPTv1 is not followed by ';'")
    fields = fields[1:]
    if fields[-1] == "":
        fields.pop()  # [field-delim] at the end
    uris: list[str] = []
    for field in fields:
        name, eq, value = field.partition("=")
        if not eq or not _EXT_NAME.match(name):
            raise RecordError(f"{field[:40]!r} is not a name=value field")
        if name == "rua":
            for uri in _URI_SPLIT.split(value):
                if not _URI.match(uri):
                    raise RecordError(f"rua: {uri[:80]!r} is not a URI")
                uris.append(uri)
        elif not _EXT_VALUE.match(value):
            raise RecordError(f"{name}: {value[:40]!r} is not a valid value")
    if not uris:
        raise RecordError("no rua= field")
    return tuple(dict.fromkeys(uris))[:MAX_RUA]


def select_record(txts: Iterable[object]) -> tuple[str, ...] | None:
    """The ``rua`` URIs from every TXT record at ``_smtp._tls.<domain>``,
    or None: rfc8460:3 — records not starting with ``v=TLSRPTv1`` are
    discarded, and unless exactly one (valid) record remains the domain
    does not implement TLS-RPT."""
    candidates = [t for t in txts if isinstance(t, str) and t.startswith(_VERSION)]
    if len(candidates) != 1:
        return None
    try:
        return parse_record(candidates[0])
    except RecordError:
        return None


def mailto_addresses(uri: str) -> tuple[str, ...]:
    """The addresses of a ``mailto:`` URI (rfc6068:2: percent-encoded, a
    comma list, ``?`` starts header fields), normalised; () if it names
    none that is valid."""
    if uri[:7].lower() != "mailto:":
        return ()
    path = uri[7:].split("?", 1)[0]
    found = []
    for part in urllib.parse.unquote(path).split(","):
        try:
            found.append(normalize_address(part.strip()))
        except AddressError:
            continue
    return tuple(dict.fromkeys(found))[:MAX_RUA]


def https_url(uri: str) -> str | None:
    """An ``https:`` URI with a host, as given; None for anything else."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "https" or not parts.hostname:
        return None
    return uri
