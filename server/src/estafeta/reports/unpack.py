"""The XML of a report, out of the message or file that carries it. Sans-IO.

``report_attachment(message)`` finds the one MIME part that is a report
(rfc7489:7.2.1.1: ``application/gzip`` when compressed, ``text/xml``
otherwise; ``application/zip`` is what most large receivers actually send)
and returns its decoded bytes. ``xml_chunks(data)`` turns those bytes, or a
file saved by hand, into the XML, a chunk at a time: the format is sniffed
from the first bytes (zip, gzip or XML), whatever the part claimed to be.

Hard bounds, every one checked before the memory it protects is used:

- the message: ``MAX_MESSAGE`` octets; the attachment, decoded:
  ``MAX_ATTACHMENT`` octets;
- the XML, decompressed: ``MAX_XML`` octets, counted while inflating in
  ``CHUNK`` steps (a zip or gzip bomb stops at the bound; nothing is ever
  inflated whole and nothing trusts the sizes an archive declares);
- a zip: exactly one member, counted from its end-of-central-directory
  record before the archive is opened (so a zip of a million empty entries
  costs nothing); not encrypted, stored or deflated, its CRC checked;
- a gzip: at most ``MAX_GZIP_MEMBERS`` concatenated members (rfc1952:2.2),
  each with its CRC and length checked by zlib, nothing else after them.

Every refusal is a ``ReportError`` with a short ``reason`` (a metrics label)
and a sentence naming what is wrong.
"""

from __future__ import annotations

import binascii
import io
import re
import struct
import urllib.parse
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from estafeta.message import decode_rfc2047, summarize
from estafeta.message.transfer import decode_quoted_printable

MiB = 1024 * 1024
MAX_MESSAGE = 32 * MiB
MAX_ATTACHMENT = 10 * MiB
MAX_XML = 20 * MiB
MAX_GZIP_MEMBERS = 16
CHUNK = 64 * 1024

# Reasons (bounded label values of estafeta_dmarc_reports_rejected_total).
NO_REPORT = "no_report"  # no report attachment in the message
SEVERAL = "several_reports"  # more than one
TOO_LARGE = "too_large"  # a size bound above
ARCHIVE = "archive"  # not a valid zip/gzip of one report, bad transfer encoding
XML = "xml"  # not well-formed XML
DTD = "dtd"  # a DOCTYPE, entity declarations, external entities
SCHEMA = "schema"  # well-formed, not an rfc7489 appendix C report
TOO_MANY_RECORDS = "too_many_records"


class ReportError(Exception):
    """Not a report we accept; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# rfc7489:7.2.1.1 — the media types of the report: gzip when compressed,
# text/xml otherwise; zip (and its older names) from the large receivers.
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
GZIP_TYPES = frozenset({"application/gzip", "application/x-gzip"})
XML_TYPES = frozenset({"text/xml", "application/xml"})
REPORT_TYPES = ZIP_TYPES | GZIP_TYPES | XML_TYPES

# rfc7489:7.2.1.1 — filename = receiver "!" policy-domain "!" begin-timestamp
#   "!" end-timestamp [ "!" unique-id ] "." extension;  unique-id = 1*(ALPHA / DIGIT);
#   extension = "xml" / "xml.gz" (and ".zip", as sent in practice).
_FILENAME = re.compile(
    r"^(?P<receiver>[^!\s]+)!(?P<domain>[^!\s]+)!(?P<begin>[0-9]+)!(?P<end>[0-9]+)"
    r"(?:!(?P<unique>[A-Za-z0-9]+))?\.(?P<ext>xml|xml\.gz|gz|zip)$",
    re.IGNORECASE,
)
_REPORT_EXTENSIONS = (".xml", ".xml.gz", ".gz", ".zip")

_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_EMPTY = b"PK\x05\x06"
_GZIP_MAGIC = b"\x1f\x8b"
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (APPNOTE 4.3.16)


@dataclass(frozen=True)
class ReportFilename:
    """The parts of an rfc7489:7.2.1.1 report filename."""

    receiver: str
    domain: str
    begin: int
    end: int
    unique_id: str
    extension: str


def parse_filename(name: str) -> ReportFilename | None:
    """rfc7489:7.2.1.1 — the filename convention, or None if ``name`` does not follow it."""
    match = _FILENAME.match(name.strip())
    if match is None:
        return None
    return ReportFilename(
        receiver=match["receiver"].lower(),
        domain=match["domain"].lower(),
        begin=int(match["begin"]),
        end=int(match["end"]),
        unique_id=match["unique"] or "",
        extension=match["ext"].lower(),
    )


@dataclass(frozen=True)
class Attachment:
    """The report part of a message: its name, declared type, decoded bytes."""

    filename: str
    media_type: str
    data: bytes


def report_attachment(message: bytes) -> Attachment:
    """The one part of ``message`` that carries a report: a part of a
    report media type, or any part whose filename follows rfc7489:7.2.1.1
    or ends in .xml, .xml.gz, .gz or .zip (``application/octet-stream`` is
    common). Parts of attached messages (a report forwarded by hand) count.
    ReportError if there is none, or more than one."""
    if len(message) > MAX_MESSAGE:
        raise ReportError(TOO_LARGE, f"message larger than {MAX_MESSAGE} octets")
    summary = summarize(message)
    candidates = [leaf for leaf in _leaves(summary.bodystructure) if _is_report(leaf)]
    if not candidates:
        raise ReportError(
            NO_REPORT,
            "no report in the message (a part of type application/zip, application/gzip "
            "or text/xml, or named *.zip, *.xml.gz or *.xml)",
        )
    if len(candidates) > 1:
        names = ", ".join(_filename(leaf) or _media_type(leaf) for leaf in candidates[:3])
        names += ", ..." if len(candidates) > 3 else ""
        raise ReportError(SEVERAL, f"{len(candidates)} report parts ({names}); expected one")
    leaf = candidates[0]
    body = message[leaf["body_start"] : leaf["body_end"]]
    # base64 takes 4 octets for 3, plus line ends (about 1.37 in all): a body
    # twice the bound cannot decode small enough, and is not decoded at all.
    if len(body) > 2 * MAX_ATTACHMENT:
        raise ReportError(TOO_LARGE, f"report attachment larger than {MAX_ATTACHMENT} octets")
    data = _decode(body, str(leaf.get("encoding") or "7bit"))
    if len(data) > MAX_ATTACHMENT:
        raise ReportError(TOO_LARGE, f"report attachment larger than {MAX_ATTACHMENT} octets")
    return Attachment(_filename(leaf), _media_type(leaf), data)


def _leaves(part: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    children = part.get("parts")
    if isinstance(children, list):
        for child in children:
            yield from _leaves(child)
        return
    inner = part.get("body")
    if isinstance(inner, dict):  # message/rfc822: the attached message's parts
        yield from _leaves(inner)
        return
    yield part


def _media_type(leaf: Mapping[str, Any]) -> str:
    return f"{leaf.get('type', '')}/{leaf.get('subtype', '')}".lower()


def _param(params: Sequence[Sequence[str]] | None, name: str) -> str:
    """A Content-Type or Content-Disposition parameter, rfc2231:4 encoded
    (``name*=charset'lang'%XX``) or rfc2047 encoded (as mailers do) or plain."""
    for key, value in params or ():
        lower = key.lower()
        if lower == name + "*":
            text = value.split("'", 2)[-1]
            return urllib.parse.unquote(text, errors="replace")
        if lower == name:
            return decode_rfc2047(value)
    return ""


def _filename(leaf: Mapping[str, Any]) -> str:
    disposition = leaf.get("disposition")
    name = ""
    if isinstance(disposition, list) and len(disposition) == 2:
        name = _param(disposition[1], "filename")
    return (name or _param(leaf.get("params"), "name")).strip()


def _is_report(leaf: Mapping[str, Any]) -> bool:
    if _media_type(leaf) in REPORT_TYPES:
        return True
    name = _filename(leaf).lower()
    return parse_filename(name) is not None or name.endswith(_REPORT_EXTENSIONS)


def _decode(body: bytes, encoding: str) -> bytes:
    """rfc2045:6 — the part's content transfer encoding undone."""
    encoding = encoding.lower()
    if encoding == "base64":
        try:
            return binascii.a2b_base64(body)
        except binascii.Error as exc:
            raise ReportError(ARCHIVE, f"report attachment: bad base64 ({exc})") from None
    if encoding == "quoted-printable":
        return decode_quoted_printable(body)
    return body


# -- the XML out of a zip, a gzip, or as it is ------------------------------------


def sniff(data: bytes) -> str:
    """What ``data`` is, by its first bytes: "zip", "gzip", "xml" or "message"."""
    if data.startswith((_ZIP_MAGIC, _ZIP_EMPTY)):
        return "zip"
    if data.startswith(_GZIP_MAGIC):
        return "gzip"
    head = data[:64].lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"<") or data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "xml"
    return "message"


def xml_chunks(data: bytes) -> Iterator[bytes]:
    """The report XML in ``data`` (a zip, a gzip or the XML itself), in
    chunks of at most ``CHUNK`` octets and ``MAX_XML`` in all. Lazy: a
    ReportError comes while iterating, at the chunk that crosses a bound."""
    kind = sniff(data)
    if kind == "zip":
        yield from _unzip(data)
    elif kind == "gzip":
        yield from _gunzip(data)
    elif kind == "message":
        raise ReportError(ARCHIVE, "the report is neither a zip, a gzip nor XML")
    else:
        if len(data) > MAX_XML:
            raise ReportError(TOO_LARGE, f"report XML larger than {MAX_XML} octets")
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            yield bytes(view[start : start + CHUNK])


def _too_large() -> ReportError:
    return ReportError(TOO_LARGE, f"report XML larger than {MAX_XML} octets once decompressed")


def _zip_entries(data: bytes) -> int:
    """The entry count of the zip's end-of-central-directory record, read
    before zipfile parses (and allocates for) the central directory."""
    # The record is the last thing in the file, after a comment of at most 64 KiB.
    at = data.rfind(_ZIP_EMPTY, max(0, len(data) - _EOCD.size - 0xFFFF))
    if at < 0 or len(data) - at < _EOCD.size:
        raise ReportError(ARCHIVE, "not a zip archive (no end of central directory)")
    _sig, disk, _cd_disk, _on_disk, total, _size, _offset, _comment = _EOCD.unpack_from(data, at)
    if total == 0xFFFF or disk == 0xFFFF:
        raise ReportError(ARCHIVE, "zip64 archives are not accepted for a report")
    return int(total)


def _unzip(data: bytes) -> Iterator[bytes]:
    entries = _zip_entries(data)
    if entries != 1:
        raise ReportError(
            ARCHIVE, f"zip archive with {entries} members; a report zip has exactly one"
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, NotImplementedError, ValueError, OSError, EOFError) as exc:
        raise ReportError(ARCHIVE, f"not a readable zip archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) != 1:
            raise ReportError(
                ARCHIVE, f"zip archive with {len(infos)} members; a report zip has exactly one"
            )
        info = infos[0]
        if info.is_dir():
            raise ReportError(ARCHIVE, f"zip member {info.filename!r} is a directory")
        if info.flag_bits & 0x41:  # APPNOTE 4.4.4 bits 0 and 6: (strongly) encrypted
            raise ReportError(ARCHIVE, f"zip member {info.filename!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ReportError(
                ARCHIVE,
                f"zip member {info.filename!r}: compression method {info.compress_type}"
                " (only stored and deflated are accepted)",
            )
        if info.file_size > MAX_XML:
            raise _too_large()
        produced = 0
        try:
            with archive.open(info) as member:
                while True:
                    # zipfile inflates at most what is asked for (and stops at
                    # the declared size, then checks the CRC): memory stays bounded.
                    chunk = member.read(CHUNK)
                    if not chunk:
                        return
                    produced += len(chunk)
                    if produced > MAX_XML:
                        raise _too_large()
                    yield chunk
        except (
            zipfile.BadZipFile,
            zlib.error,
            NotImplementedError,  # zipfile's word for a feature it lacks (strong encryption)
            ValueError,
            OSError,
            EOFError,
        ) as exc:
            raise ReportError(ARCHIVE, f"zip member {info.filename!r}: {exc}") from None


def _gunzip(data: bytes) -> Iterator[bytes]:
    """rfc1952 — every member inflated in turn, input fed ``CHUNK`` octets
    at a time and output taken ``CHUNK`` octets at a time."""
    view = memoryview(data)
    produced = 0
    position = 0
    members = 0
    while True:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise ReportError(ARCHIVE, f"more than {MAX_GZIP_MEMBERS} gzip members")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header and trailer
        end = None
        try:
            while end is None:
                piece = bytes(view[position : position + CHUNK])
                pending = piece
                while True:
                    out = inflater.decompress(pending, CHUNK)
                    pending = inflater.unconsumed_tail
                    produced += len(out)
                    if produced > MAX_XML:
                        raise _too_large()
                    if out:
                        yield out
                    if inflater.eof:
                        end = position + len(piece) - len(inflater.unused_data)
                        break
                    if not out and not pending:
                        break  # this piece is used up: the next one
                if end is None:
                    position += len(piece)
                    if not piece or position >= len(data):
                        # All input given: what zlib still holds, then it must be the end.
                        while not inflater.eof:
                            out = inflater.decompress(b"", CHUNK)
                            if not out:
                                raise ReportError(ARCHIVE, "truncated gzip data")
                            produced += len(out)
                            if produced > MAX_XML:
                                raise _too_large()
                            yield out
                        end = len(data) - len(inflater.unused_data)
        except zlib.error as exc:
            raise ReportError(ARCHIVE, f"not valid gzip data ({exc})") from None
        rest = view[end:]
        if not rest or not bytes(rest).strip(b"\0"):
            return  # the end, or zero padding after it (as gzip.decompress allows)
        if bytes(rest[:2]) != _GZIP_MAGIC:
            raise ReportError(ARCHIVE, "data after the end of the gzip stream")
        position = end
