"""RFC 5173 (body) example scripts as test cases."""

from __future__ import annotations

import base64

import pytest
from _sieve import (
    assert_actions,
    build,
    compile_ok,
    discard,
    fileinto,
    keep,
    message,
    run,
    simple,
)

from estafeta.sieve import parse

# rfc5173:5.1
RAW = """\
require "body";
# This will match a message containing the literal text
# "MAKE MONEY FAST" in body parts (ignoring any
# content-transfer-encodings) or MIME headers other than
# the outermost RFC 2822 header.

if body :raw :contains "MAKE MONEY FAST" {
        discard;
}
"""


def multipart(*parts: tuple[str, str], boundary: str = "b0", subject: str = "s") -> bytes:
    """A multipart/mixed message of (part headers, part body) pairs."""
    text = (
        "From: a@example.org\nTo: roadrunner@acme.example.com\n"
        f"Subject: {subject}\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
        "preamble\n"
    )
    for headers, body in parts:
        text += f"--{boundary}\n{headers}\n\n{body}\n"
    text += f"--{boundary}--\n"
    return message(text)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_5_1_raw() -> None:
    assert_actions(run(RAW, simple(body="Now make money fast, friend\n")), [discard()])
    # Transfer encodings are not removed: base64 hides the words.
    encoded = multipart(
        ("Content-Type: text/plain\nContent-Transfer-Encoding: base64", b64("MAKE MONEY FAST"))
    )
    assert_actions(run(RAW, encoded), [keep()])
    # MIME headers of enclosed parts are content for :raw.
    described = multipart(("Content-Type: text/plain\nContent-Description: MAKE MONEY FAST", "x"))
    assert_actions(run(RAW, described), [discard()])
    # The outermost header is not the body.
    assert_actions(run(RAW, simple(subject="MAKE MONEY FAST", body="no\n")), [keep()])


# rfc5173:5.2 -- the example message, without the margin markers.
CONTENT_MESSAGE = message("""\
From: Whomever
To: Someone
Date: Whenever
Subject: whatever
Content-Type: multipart/mixed; boundary=outer

This is a multi-part message in MIME format.

--outer
Content-Type: multipart/alternative; boundary=inner

This is a nested multi-part message in MIME format.

--inner
Content-Type: text/plain; charset="us-ascii"

Hello

--inner
Content-Type: text/html; charset="us-ascii"

<html><body>Hello</body></html>

--inner--

This is the end of the inner MIME multipart.

--outer
Content-Type: message/rfc822

From: Someone Else
Subject: hello request

Please say Hello

--outer--

This is the end of the outer MIME multipart.
""")


@pytest.mark.parametrize(
    ("test", "value"),
    [
        # The five tests the RFC names, each true on its marked lines.
        ('body :content "multipart" :contains "MIME"', True),
        ('body :content "text/plain" :contains "Hello"', True),
        ('body :content "text/html" :contains "Hello"', True),
        ('body :content "text" :contains "Hello"', True),
        ('body :content "message/rfc822" :contains "Hello"', True),
        # ... and false where the marked lines do not have the key.
        ('body :content "multipart" :contains "Hello"', False),
        ('body :content "multipart" :contains "Content-Type"', False),
        ('body :content "text/plain" :contains "<html>"', False),
        ('body :content "text/plain" :contains "Please say"', True),
        ('body :content "text/html" :contains "Please say"', False),
        ('body :content "message/rfc822" :contains "Please say"', False),
        ('body :content "message/rfc822" :contains "Someone Else"', True),
        ('body :content "text/plain" :contains "hello request"', False),
        ('body :content "image" :contains ""', False),
        ('body :content "" :contains "end of the inner"', True),
        # Malformed content types match nothing.
        ('body :content "text/" :contains ""', False),
        ('body :content "/plain" :contains ""', False),
        ('body :content "text/plain/x" :contains ""', False),
        # Parts are matched independently: no match across a boundary.
        ('body :content "text" :contains "Hello</body>"', True),
        ('body :content "text" :matches "*Hello*Please*"', False),
        ('body :content "text/plain" :matches "Hello*"', True),
    ],
)
def test_5_2_content(test: str, value: bool) -> None:
    script = f'require "body";\nif {test} {{ discard; }}\n'
    assert_actions(run(script, CONTENT_MESSAGE), [discard()] if value else [keep()])


# rfc5173:5.2
SECRETS = """\
require ["body", "fileinto"];

# Save any message with any text MIME part that contains the
# words "missile" or "coordinates" in the "secrets" folder.

if body :content "text" :contains ["missile", "coordinates"] {
        fileinto "secrets";
}

# Save any message with an audio/mp3 MIME part in
# the "jukebox" folder.

if body :content "audio/mp3" :contains "" {
        fileinto "jukebox";
}
"""


def test_5_2_secrets_and_jukebox() -> None:
    assert_actions(
        run(SECRETS, simple(body="Launch the MISSILE at noon.\n")), [fileinto("secrets")]
    )
    html = multipart(("Content-Type: text/html", "<p>the <b>coordinates</b> are</p>"))
    assert_actions(run(SECRETS, html), [fileinto("secrets")])
    based = multipart(
        ("Content-Type: text/plain\nContent-Transfer-Encoding: base64", b64("a missile"))
    )
    assert_actions(run(SECRETS, based), [fileinto("secrets")])
    qp = multipart(
        ("Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable", "a mis=\nsile")
    )
    assert_actions(run(SECRETS, qp), [fileinto("secrets")])
    mp3 = multipart(
        ("Content-Type: text/plain", "listen"),
        ("Content-Type: audio/mp3\nContent-Transfer-Encoding: base64", b64("ID3")),
    )
    assert_actions(run(SECRETS, mp3), [fileinto("jukebox")])
    both = multipart(("Content-Type: text/plain", "missile"), ("Content-Type: audio/mp3", "ID3"))
    assert_actions(run(SECRETS, both), [fileinto("secrets"), fileinto("jukebox")])
    # Not text, and not in the body: neither rule.
    octets = multipart(("Content-Type: application/octet-stream", "missile"))
    assert_actions(run(SECRETS, octets), [keep()])
    assert_actions(run(SECRETS, simple(subject="missile", body="hi\n")), [keep()])


def test_5_2_charsets_are_converted() -> None:
    # rfc5173:5.2: ISO-8859-1 MUST be converted to UTF-8.
    script = 'require "body";\nif body :content "text" :contains "caf\u00e9" { discard; }\n'
    latin = multipart(
        (
            "Content-Type: text/plain; charset=iso-8859-1\n"
            "Content-Transfer-Encoding: quoted-printable",
            "un caf=E9",
        )
    )
    assert_actions(run(script, latin), [discard()])


# rfc5173:5.3
TEXT = """\
require ["body", "fileinto"];

# Save messages mentioning the project schedule in the
# project/schedule folder.
if body :text :contains "project schedule" {
        fileinto "project/schedule";
}
"""


def test_5_3_text() -> None:
    msg = simple(body="About the project schedule: it slipped.\n")
    assert_actions(run(TEXT, msg), [fileinto("project/schedule")])
    assert_actions(run(TEXT, simple(subject="project schedule")), [keep()])
    based = multipart(
        ("Content-Type: text/plain\nContent-Transfer-Encoding: base64", b64("project schedule"))
    )
    assert_actions(run(TEXT, based), [fileinto("project/schedule")])


def test_4_header_only_message_has_no_body() -> None:
    script = 'require "body";\nif body :raw :contains "" { discard; }\n'
    header_only = b"From: a@example.org\r\nSubject: x\r\n"
    assert_actions(run(script, header_only), [keep()])
    empty_body = b"From: a@example.org\r\nSubject: x\r\n\r\n"
    assert_actions(run(script, empty_body), [discard()])


def test_4_default_match_type_is_is_and_transform_is_text() -> None:
    script = 'require "body";\nif body "hello" { discard; }\n'
    assert_actions(run(script, build([("From", "a@example.org")], "HELLO")), [discard()])
    assert_actions(run(script, build([("From", "a@example.org")], "hello there\n")), [keep()])


def test_6_body_sets_no_match_variables() -> None:
    script = (
        'require ["body", "variables", "fileinto"];\n'
        'if header :matches "Subject" "*" { set "x" "1"; }\n'
        'if body :matches "*secret*" { fileinto "${1}"; }\n'
    )
    msg = simple(subject="subj", body="the secret word\n")
    assert_actions(run(script, msg), [fileinto("subj")])


def test_examples_parse() -> None:
    for script in [RAW, SECRETS, TEXT]:
        assert parse(script.replace("\n", "\r\n")).commands
        compile_ok(script)
