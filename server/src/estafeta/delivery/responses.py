"""Messages the delivery layer writes itself: vacation replies and rejections.

Pure functions: facts in, message bytes out (CRLF, ready to DKIM-sign and
queue). ``LocalDelivery`` decides whether one is sent.
"""

from __future__ import annotations

import email.utils
import secrets
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP

from estafeta.message.structure import header_fields
from estafeta.queue.dsn import RecipientStatus, build_dsn

# rfc5322:2.1.1 — header lines stay under 998 octets; long ids are cut rather
# than letting a hostile References field grow the reply.
MAX_REFERENCES = 8 * 1024


def _first(fields: list[tuple[str, bytes]], name: str) -> str:
    for field_name, raw in fields:
        if field_name == name:
            return " ".join(raw.decode("utf-8", "replace").split())
    return ""


def vacation_reply(
    *,
    original: bytes,
    sender: str,
    to: str,
    subject: str,
    body: str,
    mime: bool,
    hostname: str,
) -> bytes:
    """rfc5230:5 / rfc3834:3 — the reply to ``original`` from ``sender`` to ``to``.

    ``Auto-Submitted: auto-replied`` (rfc3834:5.1, so that other responders
    stay quiet), In-Reply-To and References (rfc5230:5.8), a fresh
    Message-ID and Date. With ``mime`` (rfc5230:4.4 ``:mime``) ``body`` is a
    MIME entity (its own header fields, a blank line, its body).
    """
    fields = header_fields(original)
    message_id = _first(fields, "message-id")
    references = _first(fields, "references")
    if message_id:
        references = f"{references} {message_id}".strip()
    references = references[-MAX_REFERENCES:].lstrip()
    if references and not references.startswith("<"):
        # Cut inside an id: start at the next whole one.
        references = references[references.find("<") :] if "<" in references else ""

    head = EmailMessage(policy=SMTP)
    head["From"] = _address(sender)
    head["To"] = _address(to)
    head["Subject"] = " ".join(subject.split())[:900]
    head["Date"] = email.utils.formatdate(localtime=True)
    head["Message-ID"] = f"<{secrets.token_hex(12)}@{hostname}>"
    if message_id:
        head["In-Reply-To"] = message_id[:MAX_REFERENCES]
    if references:
        head["References"] = references
    head["Auto-Submitted"] = "auto-replied (vacation)"  # rfc3834:5.1, rfc5230:5.x
    if mime:
        # The script gave a complete MIME entity: our fields, then its own.
        entity = body.replace("\r\n", "\n").replace("\n", "\r\n")
        if "\r\n\r\n" not in entity:
            entity += "\r\n\r\n"
        head["MIME-Version"] = "1.0"
        return bytes(head)[:-2] + entity.encode("utf-8")
    head.set_content(body, charset="utf-8")
    return bytes(head)


def _address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    try:
        return str(Address(addr_spec=address)) if local else address
    except (ValueError, IndexError):
        return f"<{local}@{domain}>"


def rejection(
    *,
    original: bytes,
    sender: str,
    recipient: str,
    reason: str,
    hostname: str,
    queue_id: str | None,
    arrival: float,
) -> bytes:
    """rfc5429:2.1 — a refusal that could not be given in the SMTP reply
    (another recipient of the same transaction accepted the message) goes
    back to the sender as a DSN (rfc3464) with status 5.7.1."""
    reason = " ".join(reason.split())[:900]
    return build_dsn(
        reporting_mta=hostname,
        sender=sender,
        recipients=[
            RecipientStatus(
                final_recipient=recipient,
                action="failed",
                status="5.7.1",
                diagnostic=f"550 5.7.1 {reason}",
                last_attempt=arrival,
            )
        ],
        original=original,
        arrival_date=arrival,
        queue_id=queue_id,
    )
