"""Helpers of the interpreter's unit tests (test_sieve_interpret_ext and
test_sieve_interpret_actions): one message, one script, its result."""

from __future__ import annotations

from typing import Any

from estafeta.sieve import Context, Envelope, Limits, Result, compile_script, run
from estafeta.sieve.actions import FileInto, Keep

ACCOUNT = "me@example.org"


def msg(*headers: str, body: str = "Hello.\r\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")


PLAIN = msg(
    "Date: Tue, 1 Apr 1997 09:06:31 -0800",
    "From: Alice <alice@example.com>",
    "To: me@example.org",
    "Subject: [acme-users] [fwd] version 1.0 is out",
    "Message-ID: <1@example.com>",
)


def go(script: str, message: bytes = PLAIN, *, limits: Limits | None = None, **kw: Any) -> Result:
    kw.setdefault("envelope", Envelope("alice@example.com", ACCOUNT))
    ctx = Context(message=message, account=ACCOUNT, addresses=(ACCOUNT,), **kw)
    compiled = compile_script(script)
    return run([compiled], ctx) if limits is None else run([compiled], ctx, limits)


def actions(script: str, message: bytes = PLAIN, **kw: Any) -> list[Any]:
    result = go(script, message, **kw)
    assert result.errors == [], result.errors
    return result.actions


def error_of(script: str, message: bytes = PLAIN, **kw: Any) -> str:
    result = go(script, message, **kw)
    assert result.actions == [Keep()] and len(result.errors) == 1, result
    return result.errors[0]


def filed(script: str, message: bytes = PLAIN, **kw: Any) -> str:
    """The mailbox of the single fileinto of the run."""
    [action] = actions('require ["fileinto", "variables"];\n' + script, message, **kw)
    assert isinstance(action, FileInto), action
    return action.mailbox
