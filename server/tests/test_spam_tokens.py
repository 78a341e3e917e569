"""The junk filter's reading of a message: decoding, HTML, bounds, tokens."""

from __future__ import annotations

import base64
import quopri

from estafeta.spam.extract import MAX_TEXT, extract, strip_html
from estafeta.spam.tokens import MAX_TOKENS, tokenize


def mime(*parts: bytes, subtype: str = "mixed", headers: bytes = b"") -> bytes:
    body = b"".join(b"--b0\r\n" + p + b"\r\n" for p in parts) + b"--b0--\r\n"
    return (
        b"From: Sender <sender@mail.example.org>\r\nTo: rcpt@example.test\r\n"
        b"Subject: test\r\nMessage-ID: <1@example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        + headers
        + b"MIME-Version: 1.0\r\nContent-Type: multipart/"
        + subtype.encode()
        + b'; boundary="b0"\r\n\r\n'
        + body
    )


def b64_part(content_type: bytes, payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        b"Content-Type: "
        + content_type
        + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
    )


def plain(body: bytes, headers: bytes = b"", subject: bytes = b"hello") -> bytes:
    return (
        b"From: a@example.org\r\nTo: b@example.test\r\nSubject: " + subject + b"\r\n" + headers
        + b"\r\n" + body
    )  # fmt: skip


def test_multipart_with_base64_html_is_decoded_and_stripped() -> None:
    html = (
        b"<html><head><style>p { secretstyle: red }</style>"
        b"<script>var hiddenscript = 1;</script></head>"
        b"<body><p>Wonderful <b>bargains</b> &amp; caf&eacute; deals<!-- hiddencomment --></p>"
        b'<a href="http://shop.example.net/x">link</a><img src="cid:1"></body></html>'
    )
    data = mime(b64_part(b"text/html; charset=utf-8", html), subtype="alternative")
    ex = extract(data)
    assert len(ex.texts) == 1
    text = ex.texts[0].text
    assert "Wonderful" in text and "bargains" in text and "café" in text and "&" in text
    for hidden in ("secretstyle", "hiddenscript", "hiddencomment", "<p>", "href"):
        assert hidden not in text
    tokens = tokenize(ex)
    for expected in (
        "wonderful",
        "bargains",
        "café",
        "deals",
        "struct:html_only",
        "struct:img",
        "cte:base64",
        "charset:utf-8",
        "part:text/html",
        "ct:multipart/alternative",
        "url:host:shop.example.net",
        "url:dom:example.net",
        "from:dom:mail.example.org",
        "from:org:example.org",
        "to:one",
        "subject:test",
    ):
        assert expected in tokens, expected
    assert "secretstyle" not in tokens and "hiddenscript" not in tokens


def test_html_alongside_plain_is_not_html_only() -> None:
    data = mime(
        b"Content-Type: text/plain\r\n\r\nplain words",
        b"Content-Type: text/html\r\n\r\n<p>html words</p>",
        subtype="alternative",
    )
    tokens = tokenize(data)
    assert "struct:html_only" not in tokens
    assert "plain" in tokens and "html" in tokens and "words" in tokens


def test_quoted_printable_text_is_decoded() -> None:
    body = quopri.encodestring(
        "Un caf\u00e9 tr\u00e8s sp\u00e9cial, extraordinarily long line ".encode() * 3
    )
    assert b"=\n" in body or b"=\r\n" in body  # soft line breaks are there to undo
    headers = b"Content-Type: text/plain; charset=utf-8\r\n"
    data = plain(body, headers + b"Content-Transfer-Encoding: quoted-printable\r\n")
    tokens = tokenize(data)
    assert "café" in tokens and "très" in tokens and "spécial" in tokens
    assert "extraordinarily" in tokens
    assert not any("=" in t for t in tokens if not t.startswith(("cte:", "charset:")))


def test_latin1_charset_is_honoured() -> None:
    data = plain(b"Gr\xfc\xdfe aus K\xf6ln", b"Content-Type: text/plain; charset=iso-8859-1\r\n")
    assert {"grüße", "aus", "köln"} <= set(tokenize(data))


def test_rfc2047_subject_is_decoded() -> None:
    data = plain(b"body", subject=b"=?iso-8859-1?Q?Caf=E9_Sp=E9cial?= =?utf-8?B?T0ZGRVI=?=")
    tokens = tokenize(data)
    # rfc2047:6.2: the blank between adjacent encoded-words is not text.
    assert "subject:café" in tokens and "subject:spécialoffer" in tokens
    assert not any(t.startswith("subject:=?") for t in tokens)


def test_word_length_rules() -> None:
    data = plain(b"ab abc " + b"x" * 40 + b" " + b"y" * 41 + b" (quoted!) UPPER")
    tokens = tokenize(data)
    assert "ab" not in tokens and "abc" in tokens
    assert "x" * 40 in tokens and "y" * 41 not in tokens
    assert "skip:y 40" in tokens
    assert "quoted" in tokens and "upper" in tokens


def test_huge_message_is_truncated_to_the_text_budget() -> None:
    line = b"filler words repeated again and again\r\n"
    body = line * (3 * 1024 * 1024 // len(line)) + b"needleattheend\r\n"
    ex = extract(plain(body))
    assert ex.truncated
    assert sum(len(p.text) for p in ex.texts) == MAX_TEXT
    tokens = tokenize(ex)
    assert "needleattheend" not in tokens and "filler" in tokens
    assert "struct:truncated" in tokens


def test_huge_base64_part_is_decoded_only_up_to_the_budget() -> None:
    payload = b"alpha beta gamma delta\n" * (4 * 1024 * 1024 // 23)
    ex = extract(
        mime(b64_part(b"text/plain", payload), b64_part(b"text/plain", b"secondpart words"))
    )
    assert ex.truncated
    assert sum(len(p.text) for p in ex.texts) <= MAX_TEXT
    assert "secondpart" not in tokenize(ex)  # the budget was spent on the first part


def test_budget_is_shared_across_parts() -> None:
    first = b"Content-Type: text/plain\r\n\r\n" + b"one two three " * 1000
    second = b"Content-Type: text/plain\r\n\r\n" + b"secondpart"
    ex = extract(mime(first, second), max_text=1000)
    assert sum(len(p.text) for p in ex.texts) <= 1000
    assert ex.truncated and "secondpart" not in tokenize(ex)
    ex = extract(mime(first, second), max_text=20_000)
    assert not ex.truncated and "secondpart" in tokenize(ex)


def test_token_cap_keeps_header_tokens() -> None:
    words = b" ".join(b"w%06d" % i for i in range(20_000))
    tokens = tokenize(plain(words, subject=b"special subject"))
    assert len(tokens) == MAX_TOKENS
    assert len(set(tokens)) == len(tokens)
    assert "subject:special" in tokens and "to:one" in tokens and "struct:urls:0" in tokens
    assert "w000000" in tokens and "w019999" not in tokens
    assert len(tokenize(plain(words), max_tokens=10)) == 10


def test_repeated_words_count_once() -> None:
    tokens = tokenize(plain(b"viagra " * 10_000))
    assert tokens.count("viagra") == 1


def test_non_text_charset_codecs_are_not_applied() -> None:
    # A "charset" naming a compression or transfer codec must not run it.
    raw = base64.b64encode(b"should stay encoded")
    data = plain(raw, b"Content-Type: text/plain; charset=base64_codec\r\n")
    assert extract(data).texts[0].text == raw.decode()
    data = plain(b"\xff\xfe plain", b"Content-Type: text/plain; charset=no-such-charset\r\n")
    assert extract(data).texts[0].text == "\xff\xfe plain"


def test_encapsulated_message_text_is_read() -> None:
    inner = plain(b"innerword inside")
    data = mime(
        b"Content-Type: text/plain\r\n\r\nouter text",
        b"Content-Type: message/rfc822\r\n\r\n" + inner,
    )
    assert "innerword" in tokenize(data)


def test_structure_tokens() -> None:
    tokens = tokenize(b"Subject: x\r\n\r\nno headers to speak of")
    assert {"from:none", "to:none", "hdr:no_msgid", "hdr:no_date", "ct:text/plain"} <= set(tokens)
    many = b"To: " + b", ".join(b"r%d@example.test" % i for i in range(9)) + b"\r\n"
    assert "to:many" in tokenize(plain(b"x", many).replace(b"To: b@example.test\r\n", b""))
    urls = b" ".join(b"http://h%d.example.com/" % i for i in range(12))
    assert "struct:urls:10+" in tokenize(plain(urls))
    assert "struct:ip_url" in tokenize(plain(b"see http://192.0.2.7/login now"))
    assert "struct:no_text" in tokenize(mime(b64_part(b"image/png", b"\x89PNG")))


def test_urls_are_not_split_into_words() -> None:
    tokens = tokenize(plain(b"visit https://www.example.com/some/path?q=1 today"))
    assert "url:host:www.example.com" in tokens and "today" in tokens
    assert not any("path" in t for t in tokens)


def test_strip_html_is_linear_and_safe_on_hostile_markup() -> None:
    # Unclosed constructs: no backtracking, no exception, sensible output.
    text, _ = strip_html("<" * 100_000 + "visible")
    assert text.endswith("visible")
    text, _ = strip_html("before <script>" + "x" * 100_000)
    assert text.strip() == "before"
    text, _ = strip_html("<style>" * 50_000 + "after")
    assert "after" not in text
    text, _ = strip_html("a <b>bold</b> <style>hidden</style> <SCRIPT>h</SCRIPT>end")
    assert text.split() == ["a", "bold", "end"]
    # Closing tags without ">": the rest is hidden, and no search starts over.
    text, _ = strip_html("shown <script" + "</script<script" * 20_000)
    assert text.split() == ["shown"]
    text, _ = strip_html("x <script>a</script junk <script> b > after")
    assert text.split() == ["x", "b", ">", "after"]


def test_quadratic_codecs_are_refused() -> None:
    # punycode decoding is quadratic: 256 KiB of it would take many seconds.
    body = b"abc-" + b"9" * 200_000
    for charset in (b"punycode", b"idna", b"PUNYCODE"):
        data = plain(body, b"Content-Type: text/plain; charset=" + charset + b"\r\n")
        assert extract(data).texts[0].text == body.decode("latin-1")


def test_mislabelled_ascii_is_read_as_utf8() -> None:
    data = plain("naïve résumé".encode(), b"Content-Type: text/plain; charset=us-ascii\r\n")
    assert {"naïve", "résumé"} <= set(tokenize(data))


def test_tokens_are_deterministic() -> None:
    data = mime(b64_part(b"text/html", b"<p>one two three http://a.example.org/</p>"))
    assert tokenize(data) == tokenize(data)
