"""SMTP replies with enhanced status codes (rfc3463), named for tests and handlers."""

from __future__ import annotations

import re

# rfc2034:3 / rfc3463:2 — "class.subject.detail" after the reply code.
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?:\s|$)")

# Defaults for replies aiosmtpd makes itself, by reply code (rfc3463:3).
_BY_CODE = {
    "214": "2.0.0",
    "220": "2.0.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.5.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}

# The replies after the final dot of a refused DATA (smtp.data): rfc1870:6
# too big; rfc5321:4.5.3.1.6 line too long; rfc5321:4.2.2 452 with
# rfc3463:3.4 X.3.1 "mail system full" when [limits] data_memory is in use
# by other transfers (temporary: the client retries later).
DATA_TOO_BIG = "552 5.3.4 Message too big for system"
DATA_LINE_TOO_LONG = (
    "500 5.5.2 Line too long: lines may be at most 998 octets plus CRLF (rfc5321:4.5.3.1.6)"
)
DATA_NO_MEMORY = "452 4.3.1 Insufficient system resources, try again later"

# aiosmtpd's own texts that deserve a better one.
_REWRITE = {
    "552 Error: Too much mail data": DATA_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
    "500 Line too long (see RFC5321 4.5.3.1.6)": DATA_LINE_TOO_LONG,
}


def with_enhanced_code(reply: str) -> str:
    """Add an enhanced status code to a one-line reply that lacks one."""
    if reply in _REWRITE:
        return _REWRITE[reply]
    if len(reply) < 3 or _HAS_ENHANCED.match(reply) or reply[3:4] == "-":
        return reply
    code = reply[:3]
    enhanced = _BY_CODE.get(code)
    if enhanced is None:  # 334, 354: intermediate replies carry none.
        return reply
    return f"{code} {enhanced} {reply[4:]}".rstrip()


OK_SENDER = "250 2.1.0 Sender OK"
OK_RECIPIENT = "250 2.1.5 Recipient OK"
BAD_SENDER_SYNTAX = "553 5.1.7 Bad sender address syntax"
BAD_RECIPIENT_SYNTAX = "553 5.1.3 Bad recipient address syntax"
NO_SUCH_USER = "550 5.1.1 No such user here"
RELAY_DENIED = "554 5.7.1 Relay access denied"
# rfc3463:3.8 X.7.1 "delivery not authorized": on submission, a shared
# mailbox's address for an account without the "p" right (rfc4314:2.1).
NOT_ALLOWED_TO_POST = "550 5.7.1 Not allowed to post to this shared mailbox"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
BARE_LINE_ENDING = (
    "550 5.6.0 Message contains a bare CR or LF; lines must end with CRLF (rfc5321:2.3.8)"
)
TEMPORARY_FAILURE = "451 4.3.0 Temporary failure storing the message; try again later"
INTERNAL_ERROR = "451 4.3.0 Internal error; try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections; try again later"
AUTH_UNAVAILABLE = "502 5.5.1 AUTH is not available on this port"
TOO_MANY_HOPS = "554 5.4.6 Too many hops: the message is in a mail loop"
SHUTTING_DOWN = "421 4.3.2 Server shutting down; try again later"
# rfc3207:4: no STARTTLS on a TLS session; rfc5321:4.2.4 503 bad sequence.
TLS_ALREADY_ACTIVE = "503 5.5.1 TLS already active"
# rfc3463:3.3 X.2.2 "mailbox full": at RCPT for an account already over its
# quota (temporary: the sender retries that recipient later), after DATA
# for a message that would take it over ([delivery] over_quota: "defer"
# answers 452 4.2.2, "reject" answers 552 5.2.2).
MAILBOX_FULL = "452 4.2.2 Mailbox full; try again later"
MAILBOX_FULL_PERMANENT = "552 5.2.2 Mailbox full"
# rfc5429:2.1 — the recipient's rules refused the message (Sieve reject /
# ereject); the reason is the user's text, on one line.
REFUSED_BY_RULE = "550 5.7.1"
