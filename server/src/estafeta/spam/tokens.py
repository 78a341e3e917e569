"""Tokens of a message: the features the junk filter counts.

A message becomes a set of distinct strings (presence, not frequency: the
method in ``classify`` counts in how many spam and ham messages a token
appeared). Kinds, each with its own prefix so that "free" in the Subject
and "free" in the body are told apart:

* header tokens, first, so the per-message cap never drops them:
  ``subject:WORD`` (RFC 2047 decoded, as summarize gives it),
  ``from:dom:DOMAIN`` and ``from:org:REGISTRABLE`` (or ``from:none``),
  ``to:none|one|few|many``, ``cc:none|some``, ``hdr:no_msgid``,
  ``hdr:no_date``, ``ct:TYPE/SUBTYPE`` of the message, ``part:TYPE/SUBTYPE``
  of each leaf, ``charset:NAME`` and ``cte:ENCODING`` of the text parts;
* structural tokens ``struct:...``: ``html_only``, ``no_text``,
  ``attachment``, ``exe_attachment``, ``img``, ``truncated``, ``ip_url``,
  ``urls:0|1|2-9|10+``;
* URL tokens ``url:host:HOST`` and ``url:dom:REGISTRABLE``;
* body words: the text parts split at blanks, surrounding punctuation
  trimmed, lower-cased, kept when 3 to 40 characters long; a longer "word"
  (a run of CJK text, base64 junk) becomes ``skip:C N`` (its first
  character and its length rounded down to tens), as SpamBayes does. URLs
  are taken out of the text before it is split.

Bounds: the text is what ``extract`` decoded (``MAX_TEXT``, 256 KiB), and
at most ``max_tokens`` (3,000) distinct tokens are produced; splitting stops
there, so the work is linear in the bounded text.
"""

from __future__ import annotations

import re

from estafeta.spam.extract import (
    DEFAULT_EXECUTABLE_EXTENSIONS,
    Extracted,
    executable_attachments,
    extract,
    registrable_domain,
)

MAX_TOKENS = 3_000
"""Distinct tokens taken from one message."""

MIN_WORD = 3
MAX_WORD = 40

TOKENIZER_VERSION = 1
"""Bumped when the tokens of a message change; stored with the statistics."""

# A whole URL (its host is a token of its own): removed before words are split.
_URL_RE = re.compile(r"\bhttps?://[^\s\"'<>]*", re.IGNORECASE)
_PUNCT = ".,;:!?\"'`()[]{}<>*_-=+~#|/\\^&%$@«»“”‘’…"


class _Tokens:
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: dict[str, None] = {}  # ordered set

    def add(self, token: str) -> bool:
        """Add ``token``; False once the cap is reached."""
        if len(self.seen) >= self.cap:
            return False
        self.seen.setdefault(token, None)
        return True

    def full(self) -> bool:
        return len(self.seen) >= self.cap


def tokenize(
    message: bytes | Extracted,
    *,
    max_tokens: int = MAX_TOKENS,
    extensions: frozenset[str] = DEFAULT_EXECUTABLE_EXTENSIONS,
) -> list[str]:
    """The distinct tokens of ``message``, in a stable order (see the module
    docstring). ``extensions`` decides ``struct:exe_attachment``."""
    ex = message if isinstance(message, Extracted) else extract(message)
    out = _Tokens(max(1, max_tokens))
    _header_tokens(ex, out, extensions)
    for host in ex.url_hosts:
        out.add("url:host:" + host)
        domain = registrable_domain(host)
        if domain is not None and domain != host:
            out.add("url:dom:" + domain)
    for part in ex.texts:
        if out.full():
            break
        text = part.text
        _words(_URL_RE.sub(" ", text) if "://" in text else text, out, "")
    return list(out.seen)


def _header_tokens(ex: Extracted, out: _Tokens, extensions: frozenset[str]) -> None:
    summary = ex.summary
    _words(summary.subject, out, "subject:")
    sender = summary.from_addr
    if "@" in sender:
        domain = sender.rsplit("@", 1)[1].strip().rstrip(".")
        out.add("from:dom:" + domain[:100])
        org = registrable_domain(domain)
        if org is not None and org != domain:
            out.add("from:org:" + org)
    else:
        out.add("from:none")
    count = len(summary.to_addrs)
    out.add(
        "to:" + ("none" if count == 0 else "one" if count == 1 else "few" if count <= 5 else "many")
    )
    out.add("cc:" + ("some" if summary.cc_addrs else "none"))
    if summary.message_id is None:
        out.add("hdr:no_msgid")
    if summary.date is None:
        out.add("hdr:no_date")
    out.add("ct:" + ex.content_type[:80])
    for media in ex.leaf_types:
        out.add("part:" + media[:80])
    subtypes = {part.subtype for part in ex.texts}
    for part in ex.texts:
        out.add("charset:" + (part.charset[:40] or "none"))
        out.add("cte:" + part.encoding[:40])
    if "html" in subtypes and "plain" not in subtypes:
        out.add("struct:html_only")
    if not ex.texts:
        out.add("struct:no_text")
    if ex.attachments:
        out.add("struct:attachment")
    if executable_attachments(ex, extensions):
        out.add("struct:exe_attachment")
    if ex.images:
        out.add("struct:img")
    if ex.truncated:
        out.add("struct:truncated")
    urls = ex.url_count
    out.add(
        "struct:urls:" + ("0" if urls == 0 else "1" if urls == 1 else "2-9" if urls < 10 else "10+")
    )
    if any(registrable_domain(h) is None and h[:1].isdigit() for h in ex.url_hosts):
        out.add("struct:ip_url")


def _words(text: str, out: _Tokens, prefix: str) -> None:
    # The hot loop of a delivery (bench/spam.py): _Tokens.add inlined, the
    # text lower-cased once (the punctuation stripped is the same either way).
    seen, cap = out.seen, out.cap
    for piece in text.lower().split():
        word = piece.strip(_PUNCT)
        n = len(word)
        if n < MIN_WORD:
            continue
        token = prefix + word if n <= MAX_WORD else f"{prefix}skip:{word[0]} {n // 10 * 10}"
        if token in seen:
            continue
        if len(seen) >= cap:
            return
        seen[token] = None
