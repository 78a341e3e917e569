"""One SCRAM login for any of the protocols (IMAP, POP3, submission, ManageSieve).

The session says how to send a challenge and read the client's answer (its
own continuation syntax); this runs the fixed steps of rfc5802:5 with
``estafeta.auth.scram.ScramServer`` and checks the proof through the same
login guard as PLAIN (``Authenticator.scram_login``: lockouts, delays,
login history, the TOTP rules). Each client message is at most
``scram.MAX_MESSAGE`` octets; every error is a ``SASLError``:
``MalformedSASL`` (a protocol error: IMAP BAD, POP3 -ERR, SMTP 501,
ManageSieve NO), ``SASLCancelled`` ("*") or another ``SASLError`` (refused
before the proof: an authzid of another user, an unsupported binding).

After a successful proof comes ``server_final`` (rfc5802:5.1
server-final-message): ``login`` sends it as a last challenge, answered by
an empty line, in IMAP, POP3 and SMTP (``final_challenge``; rfc4422:5 item
5: no "additional data with success" there); ManageSieve puts it in the
OK's SASL response code (rfc5804:2.1). A failed proof gets no server-final
message: the session answers with its authentication failure, like for a
wrong PLAIN password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from estafeta import tlsbinding
from estafeta.auth.guard import Authenticator, LoginResult
from estafeta.auth.sasl import MalformedSASL, decode_response
from estafeta.auth.scram import MECHANISMS, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramServer

# Send a challenge (raw bytes: the session encodes them), return the client's
# decoded answer (estafeta.auth.sasl.decode_response).
Challenge = Callable[[bytes], Awaitable[bytes]]


@dataclass(frozen=True)
class ScramOutcome:
    user: str  # as the client named it (for logs)
    result: LoginResult
    server_final: bytes | None  # when result.ok (sent already if final_challenge)


def binding(writer: asyncio.StreamWriter | asyncio.BaseTransport | Any) -> bytes | None:
    """The connection's tls-exporter data (rfc9266), None if not TLS or not available."""
    return tlsbinding.exporter(writer.get_extra_info("ssl_object"))


def mechanisms(channel_binding: bytes | None) -> list[str]:
    """The SCRAM mechanisms to advertise: -PLUS only with binding data
    (rfc5802:6: and then a client's "y" flag fails)."""
    if channel_binding is None:
        return [SCRAM_SHA_256]
    return [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]


def is_scram(mechanism: str) -> bool:
    return mechanism.upper() in MECHANISMS


async def login(
    authenticator: Authenticator,
    mechanism: str,
    initial: str | bytes | None,
    challenge: Challenge,
    *,
    protocol: str,
    peer: str,
    channel_binding: bytes | None,
    final_challenge: bool,
) -> ScramOutcome:
    """Run one exchange to the proof's verdict (with ``final_challenge``, to
    the client's empty answer to the server-final message). ``initial``: the
    initial response as sent with the command (base64: rfc4959, rfc5034:4,
    rfc4954:4, rfc5804:2.1), else an empty challenge asks for the
    client-first message."""
    exchange = ScramServer(
        mechanism.upper(), binding=channel_binding, plus_offered=channel_binding is not None
    )
    first = await challenge(b"") if initial is None else decode_response(initial)
    user = exchange.client_first(first)  # rfc5802:5.1 client-first-message
    salt, iterations = await authenticator.scram_salt(user)
    final = await challenge(exchange.server_first(salt, iterations))
    exchange.client_final(final)  # rfc5802:5.1 client-final-message
    result, credential = await authenticator.scram_login(exchange, protocol, peer)
    server_final = exchange.server_final(credential) if credential is not None else None
    # rfc4422:5 item 5: the server-final message as a challenge, "" back.
    if final_challenge and server_final is not None and await challenge(server_final):
        raise MalformedSASL("Expected an empty response")
    return ScramOutcome(user, result, server_final)
