"""estafeta.imap.imapurl: the IMAP URLs (rfc5092) CATENATE names parts with."""

from __future__ import annotations

import pytest

from estafeta.imap.imapurl import BadUrl, ImapUrl, parse
from estafeta.imap.types import Section


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("/INBOX/;UID=3", ImapUrl("INBOX", 3)),
        ("/inbox/;uid=3/;section=header", ImapUrl("INBOX", 3, section=Section((), "HEADER"))),
        (
            "/Sent%20Items;UIDVALIDITY=5/;UID=20/;SECTION=1.2.MIME/;PARTIAL=10.5",
            ImapUrl("Sent Items", 20, 5, Section((1, 2), "MIME"), (10, 5)),
        ),
        ("/a/b/c/;UID=1/;PARTIAL=7", ImapUrl("a/b/c", 1, partial=(7, None))),
        ("/%C3%A9t%C3%A9/;UID=1", ImapUrl("été", 1)),  # rfc5092:3.2 UTF-8
        ("/&AOk-t&AOk-/;UID=1", ImapUrl("été", 1)),  # modified UTF-7 (rfc2192)
        (";UID=7/;SECTION=TEXT", ImapUrl(None, 7, section=Section((), "TEXT"))),
        (
            "imap://bob;AUTH=*@mx.example.test:143/Lists/x;uidvalidity=9/;uid=2",
            ImapUrl("Lists/x", 2, 9, user="bob", host="mx.example.test"),  # no port
        ),
        (
            "/x/;UID=2/;SECTION=HEADER.FIELDS%20(FROM%20TO)",
            ImapUrl("x", 2, section=Section((), "HEADER.FIELDS", ("FROM", "TO"))),
        ),
    ],
)
def test_urls(url: str, want: ImapUrl) -> None:
    assert parse(url) == want


@pytest.mark.parametrize(
    "url",
    [
        "",
        "INBOX/;UID=1",  # neither absolute nor relative
        "/INBOX",  # no message
        "/INBOX/;UID=0",
        "/INBOX/;UID=99999999999",
        "/;UID=1",  # no mailbox
        "/INBOX;UIDVALIDITY=0/;UID=1",
        "/INBOX/;UID=1/;SECTION=BOGUS",
        "/INBOX/;UID=1/;SECTION=1.0",
        "/INBOX/;UID=1/;PARTIAL=1.0",
        "/INBOX/;UID=1/;URLAUTH=anonymous:internal:0123",
        "/INBOX/;UID=1/;EXPIRE=2026-12-05T10:00:00Z",
        "/INBOX/;UID=1/trailing",
        "/%FF/;UID=1",  # not UTF-8
        "/INBOX/;UID=1/;SECTION=" + "1." * 5000 + "1",  # too long
        "http://example.test/INBOX/;UID=1",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(BadUrl):
        parse(url)
