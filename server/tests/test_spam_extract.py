"""URL domains (for domain block lists) and executable attachments."""

from __future__ import annotations

import base64

import pytest

from estafeta.spam.extract import (
    MAX_URL_DOMAINS,
    executable_attachments,
    extract,
    file_extension,
    registrable_domain,
    url_domains,
)


def message(body: bytes, content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    return (
        b"From: a@example.org\r\nTo: b@example.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )


def with_attachment(disposition: bytes, content_type: bytes = b"application/octet-stream") -> bytes:
    return (
        b"From: a@example.org\r\nTo: b@example.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="zz"\r\n\r\n'
        b"--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--zz\r\nContent-Type: " + content_type + b"\r\n" + disposition + b"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--zz--\r\n"
    )


# -- url_domains -----------------------------------------------------------------


def test_url_domains_registrable_distinct_in_order() -> None:
    body = (
        b"Go to https://www.shop.Example.CO.UK/cart and http://user:pw@login.example.net:8080/x\r\n"
        b"again https://example.co.uk/ and http://cdn.example.net/img\r\n"
        b"and https://third.example.com."
    )
    assert url_domains(message(body)) == ["example.co.uk", "example.net", "example.com"]


def test_url_domains_leave_out_ips_suffixes_and_other_schemes() -> None:
    body = (
        b"http://192.0.2.1/a http://[2001:db8::1]/b https://co.uk/ ftp://files.example.org/ "
        b"mailto:x@mail.example.org www.noscheme.example.com https://good.example.org/"
    )
    assert url_domains(message(body)) == ["example.org"]


def test_url_domains_from_html_attributes_and_entities() -> None:
    html = (
        b'<a href="https://track.example.info/?a=1&amp;b=2">x</a>'
        b"<a href='http&#58;//evil.example.biz/'>y</a>"
        b'<img src="HTTP://IMG.EXAMPLE.NET/p.gif">'
    )
    assert url_domains(message(html, b"text/html")) == [
        "example.info",
        "example.biz",
        "example.net",
    ]


def test_url_domains_in_base64_html() -> None:
    html = base64.encodebytes(b'<a href="https://hidden.example.org/">click</a>')
    data = message(html, b"text/html\r\nContent-Transfer-Encoding: base64")
    assert url_domains(data) == ["example.org"]


def test_url_domains_idn_and_percent_encoding() -> None:
    body = "https://www.bücher.example/ http://%65xample.net/".encode()
    assert url_domains(message(body)) == ["xn--bcher-kva.example", "example.net"]


def test_url_domains_bounded() -> None:
    body = b" ".join(b"http://d%d.example%d.com/" % (i, i) for i in range(50))
    domains = url_domains(message(body))
    assert len(domains) == MAX_URL_DOMAINS
    assert domains[0] == "example0.com" and domains[-1] == "example19.com"
    assert url_domains(message(body), limit=3) == ["example0.com", "example1.com", "example2.com"]


def test_url_domains_not_from_binary_attachments() -> None:
    data = with_attachment(
        b'Content-Disposition: attachment; filename="a.bin"', b"application/octet-stream"
    ).replace(b"TVqQAAMAAAAEAAAA", base64.b64encode(b"http://inbinary.example.org/"))
    assert url_domains(data) == []


def test_url_domains_trailing_punctuation() -> None:
    body = b"(see http://one.example.org), or http://two.example.net; or http://three.example.com."
    assert url_domains(message(body)) == ["example.org", "example.net", "example.com"]


def test_registrable_domain_edge_cases() -> None:
    assert registrable_domain("a.b.example.com") == "example.com"
    assert registrable_domain("example.com.") == "example.com"
    assert registrable_domain("com") is None
    assert registrable_domain("localhost") is None
    assert registrable_domain("10.0.0.1") is None
    assert registrable_domain("bad_name!.example.com") is None
    assert registrable_domain("x" * 300 + ".com") is None


# -- executable attachments ------------------------------------------------------


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        (b'Content-Disposition: attachment; filename="invoice.pdf.exe"', "invoice.pdf.exe"),
        (b"Content-Disposition: attachment; filename=PAYLOAD.EXE", "PAYLOAD.EXE"),
        (b'Content-Disposition: attachment; filename="setup.Msi"', "setup.Msi"),
        (b'Content-Disposition: attachment; filename="run.exe. . "', "run.exe. . "),
        (b"Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.scr", "résumé.scr"),
        (b"Content-Disposition: attachment; filename*=utf-8''doc.pdf%00.js", "doc.pdf\x00.js"),
        (b"Content-Disposition: attachment; filename*=utf-8''evil.exe%00.pdf", "evil.exe\x00.pdf"),
        (
            b"Content-Disposition: attachment;\r\n filename*0*=UTF-8''fact%C3%BCra;\r\n"
            b' filename*1*=.pdf; filename*2=".vbs"',
            "factüra.pdf.vbs",
        ),
        (b'Content-Disposition: inline; filename="=?UTF-8?B?c2hvdy5qcw==?="', "show.js"),
        (b'Content-Disposition: attachment; filename="C:\\\\tmp\\\\x.bat"', "C:\\tmp\\x.bat"),
    ],
)
def test_executable_attachments_found(disposition: bytes, expected: str) -> None:
    assert executable_attachments(with_attachment(disposition)) == [expected]


def test_executable_named_only_in_content_type() -> None:
    data = with_attachment(b"", b'application/x-msdownload; name="update.com"')
    assert executable_attachments(data) == ["update.com"]


def test_each_given_name_is_checked() -> None:
    # filename looks harmless, filename* (which many clients prefer) is not.
    disposition = b"Content-Disposition: attachment; filename=\"a.pdf\"; filename*=UTF-8''a.exe"
    assert executable_attachments(with_attachment(disposition)) == ["a.exe"]


@pytest.mark.parametrize(
    "disposition",
    [
        b'Content-Disposition: attachment; filename="report.pdf"',
        b'Content-Disposition: attachment; filename="archive.exe.zip"',
        b'Content-Disposition: attachment; filename="noextension"',
        b'Content-Disposition: attachment; filename="exe"',
        b"Content-Disposition: attachment",
    ],
)
def test_harmless_attachments_pass(disposition: bytes) -> None:
    assert executable_attachments(with_attachment(disposition)) == []


def test_configurable_extension_list() -> None:
    data = with_attachment(b'Content-Disposition: attachment; filename="docs.ZIP"')
    assert executable_attachments(data) == []
    assert executable_attachments(data, {"zip"}) == ["docs.ZIP"]
    assert executable_attachments(data, {".Zip"}) == ["docs.ZIP"]
    exe = with_attachment(b'Content-Disposition: attachment; filename="a.exe"')
    assert executable_attachments(exe, {"zip"}) == []


def test_attachment_inside_a_forwarded_message() -> None:
    inner = with_attachment(b'Content-Disposition: attachment; filename="inner.hta"')
    data = (
        b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"--outer\r\nContent-Type: text/plain\r\n\r\nfwd\r\n"
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--outer--\r\n"
    )
    assert executable_attachments(data) == ["inner.hta"]


def test_extract_is_shared_by_both_checks() -> None:
    data = with_attachment(b'Content-Disposition: attachment; filename="x.lnk"')
    data = data.replace(b"see attached", b"see http://a.example.org/")
    ex = extract(data)
    assert executable_attachments(ex) == ["x.lnk"]
    assert url_domains(ex) == ["example.org"]


def test_file_extension() -> None:
    assert file_extension("a.tar.GZ") == "gz"
    assert file_extension("trailing.exe...") == "exe"
    assert file_extension("nul.exe\x00.txt") == "exe"
    assert file_extension("dir.d/file") == ""
    assert file_extension(".bashrc") == "bashrc"
    assert file_extension("") == ""
