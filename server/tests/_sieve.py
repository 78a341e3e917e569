"""Helpers for the Sieve tests: messages, contexts, and a run that ends in
the JSON form of the actions (what `estafeta sieve test --json` prints).

Scripts are written with LF in the test files and compiled with CRLF, the
only line ending rfc5228:2.2 knows; messages likewise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from estafeta.sieve import Compiled, Context, Envelope, Limits, Result, SieveError, compile_script
from estafeta.sieve import run as sieve_run

ACCOUNT = "roadrunner@acme.example.com"
SENDER = "coyote@desert.example.org"

# rfc5228:1.2 Message A and Message B.
MESSAGE_A_TEXT = """\
Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)
From: coyote@desert.example.org
To: roadrunner@acme.example.com
Subject: I have a present for you

Look, I'm sorry about the whole anvil thing, and I really
didn't mean to try and drop it on you from the top of the
cliff.  I want to try to make it up to you.  I've got some
great birdseed over here at my place--top of the line
stuff--and if you come by, I'll have it all wrapped up
for you.  I'm really sorry for all the problems I've caused
for you over the years, but I know we can work this out.
--
Wile E. Coyote   "Super Genius"   coyote@desert.example.org
"""

MESSAGE_B_TEXT = """\
From: youcouldberich!@reply-by-postal-mail.invalid
Sender: b1ff@de.res.example.com
To: rube@landru.example.com
Date:  Mon, 31 Mar 1997 18:26:10 -0800
Subject: $$$ YOU, TOO, CAN BE A MILLIONAIRE! $$$

YOU MAY HAVE ALREADY WON TEN MILLION DOLLARS, BUT I DOUBT
IT!  SO JUST POST THIS TO SIX HUNDRED NEWSGROUPS!  IT WILL
GUARANTEE THAT YOU GET AT LEAST FIVE RESPONSES WITH MONEY!
MONEY! MONEY! COLD HARD CASH!  YOU WILL RECEIVE OVER
$20,000 IN LESS THAN TWO MONTHS!  AND IT'S LEGAL!!!!!!!!!
!!!!!!!!!!!!!!!!!!111111111!!!!!!!11111111111!!1  JUST
SEND $5 IN SMALL, UNMARKED BILLS TO THE ADDRESSES BELOW!
"""


def crlf(text: str) -> str:
    """Every line ending as CRLF (bare LF and CRLF alike)."""
    return re.sub(r"\r?\n", "\r\n", text)


def message(text: str) -> bytes:
    """A message from text written with LF line endings."""
    return crlf(text).encode("utf-8")


MESSAGE_A = message(MESSAGE_A_TEXT)
MESSAGE_B = message(MESSAGE_B_TEXT)


def build(headers: Sequence[tuple[str, str]], body: str = "") -> bytes:
    """A message from (name, value) pairs and a body."""
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    return message(head + "\n" + body)


def simple(
    *,
    from_: str = SENDER,
    to: str = ACCOUNT,
    subject: str = "Hello",
    body: str = "Hi there.\n",
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """An ordinary personal message; `extra` headers come after Subject."""
    headers = [
        ("Date", "Tue, 1 Apr 1997 09:06:31 -0800"),
        ("From", from_),
        ("To", to),
        ("Subject", subject),
        ("Message-ID", "<simple@desert.example.org>"),
        *extra,
    ]
    return build(headers, body)


def big(size: int, **kwargs: Any) -> bytes:
    """A message like `simple(**kwargs)` padded to exactly `size` octets."""
    head = simple(**{**kwargs, "body": ""})
    lines, rest = divmod(size - len(head), 78)
    assert lines >= 0
    out = head + (b"x" * 76 + b"\r\n") * lines + b"y" * rest
    assert len(out) == size
    return out


def compile_ok(text: str, **kwargs: Any) -> Compiled:
    return compile_script(crlf(text), **kwargs)


def refuses(text: str, **kwargs: Any) -> SieveError:
    """Compiling `text` raises SieveError with a position; returns it."""
    with pytest.raises(SieveError) as info:
        compile_script(crlf(text), **kwargs)
    error = info.value
    assert error.line >= 1 and error.column >= 1, str(error)
    return error


@dataclass
class DuplicateMemory:
    """The duplicate-tracking list of rfc7352:3 as the delivery layer keeps
    it: `seen` answers, `remember` records the marks of a finished run."""

    records: set[str] = field(default_factory=set)
    calls: list[tuple[str, float]] = field(default_factory=list)

    def seen(self, key: str, seconds: float) -> bool:
        self.calls.append((key, seconds))
        return key in self.records

    def remember(self, result: Result) -> None:
        self.records.update(key for key, _ in result.duplicate_marks)


@dataclass
class Repository:
    """Personal and global scripts for include (rfc6609), compiled on load."""

    personal: Mapping[str, str] = field(default_factory=dict)
    global_: Mapping[str, str] = field(default_factory=dict)
    loads: list[tuple[str, str]] = field(default_factory=list)

    def load(self, location: str, name: str) -> Compiled | None:
        self.loads.append((location, name))
        scripts = self.personal if location == "personal" else self.global_
        text = scripts.get(name)
        if text is None:
            return None
        return compile_ok(text, name=f"{location}:{name}")


def context(
    msg: bytes,
    *,
    sender: str = SENDER,
    recipient: str = ACCOUNT,
    account: str = ACCOUNT,
    addresses: Sequence[str] | None = None,
    now: datetime | None = None,
    seen: Callable[[str, float], bool] | None = None,
    load_include: Callable[[str, str], Compiled | None] | None = None,
    environment: Mapping[str, str] | None = None,
    mailboxes: Collection[str] | None = None,
) -> Context:
    """A context; `mailboxes` are the account's existing mailboxes (for
    rfc5490 mailboxexists), by default none but INBOX."""
    return Context(
        message=msg,
        envelope=Envelope(sender=sender, recipient=recipient),
        account=account,
        addresses=tuple(addresses) if addresses is not None else (account,),
        now=now,
        environment=dict(environment or {}),
        seen=seen,
        load_include=load_include,
        mailbox_exists=(lambda name: name in mailboxes) if mailboxes is not None else None,
    )


def run(
    script: str | Compiled | Sequence[str | Compiled],
    msg: bytes,
    *,
    limits: Limits | None = None,
    **ctx: Any,
) -> Result:
    """Compile (when given text) and run one script or a chain of scripts."""
    items: Sequence[str | Compiled] = (
        [script] if isinstance(script, str | Compiled) else list(script)
    )
    compiled = [compile_ok(s) if isinstance(s, str) else s for s in items]
    if limits is None:
        return sieve_run(compiled, context(msg, **ctx))
    return sieve_run(compiled, context(msg, **ctx), limits)


# Expected actions, in the JSON form of DESIGN.md. Only the keys given are
# compared (an implementation may add more, e.g. "create"); flags compare
# as a set of case-insensitive words (rfc5232:3).


def keep(*flags: str) -> dict[str, Any]:
    return {"action": "keep", "mailbox": "INBOX", "flags": list(flags)}


def fileinto(mailbox: str, *flags: str, copy: bool = False) -> dict[str, Any]:
    return {"action": "fileinto", "mailbox": mailbox, "flags": list(flags), "copy": copy}


def redirect(address: str, *, copy: bool = False) -> dict[str, Any]:
    return {"action": "redirect", "address": address, "copy": copy}


def discard() -> dict[str, Any]:
    return {"action": "discard"}


def reject(reason: str) -> dict[str, Any]:
    return {"action": "reject", "reason": reason}


def ereject(reason: str) -> dict[str, Any]:
    return {"action": "ereject", "reason": reason}


def vacation(to: str, subject: str | None = None) -> dict[str, Any]:
    expected: dict[str, Any] = {"action": "vacation", "to": to}
    if subject is not None:
        expected["subject"] = subject
    return expected


def _flagset(flags: Iterable[str]) -> list[str]:
    return sorted({flag.lower() for flag in flags})


def _project(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in expected:
        value = actual.get(key, "<missing>")
        out[key] = _flagset(value) if key == "flags" and isinstance(value, list) else value
    return out


def as_json(result: Result) -> list[dict[str, Any]]:
    return [action.to_json() for action in result.actions]


def assert_actions(
    result: Result, expected: Sequence[Mapping[str, Any]], *, errors: bool = False
) -> None:
    """The action list is exactly `expected` (in order); `errors` says whether
    runtime errors are expected (rfc5228:2.10.6) or must be absent."""
    actual = as_json(result)
    want = [{k: (_flagset(v) if k == "flags" else v) for k, v in item.items()} for item in expected]
    got = [_project(a, e) for a, e in zip(actual, expected, strict=False)]
    assert len(actual) == len(expected) and got == want, (
        f"actions {actual!r} != expected {list(expected)!r}; errors {result.errors!r}"
    )
    if errors:
        assert result.errors, "a runtime error was expected"
    else:
        assert result.errors == [], result.errors


def assert_implicit_keep_after_error(result: Result) -> None:
    """rfc5228:2.10.6: an error ends in the implicit keep, into INBOX without
    flags, and the error is reported; the message is not edited."""
    assert_actions(result, [keep()], errors=True)
    assert result.message is None
    assert result.duplicate_marks == []


def refused_or_fails(text: str, msg: bytes, **kwargs: Any) -> None:
    """The script is refused at compile time, or running it is a runtime
    error ending in the implicit keep; the RFC allows either."""
    try:
        compiled = compile_script(crlf(text))
    except SieveError as error:
        assert error.line >= 1, str(error)
        return
    assert_implicit_keep_after_error(run(compiled, msg, **kwargs))


def header_lines(msg: bytes) -> list[str]:
    """The header lines of a message (unfolded lines kept as they are)."""
    head = msg.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    return head.split("\r\n")
