"""``TLS-Required: No`` (rfc8689:3): a message whose sender prefers delivery
over the recipient domain's TLS policy.

The field asks the relaying MTAs to deliver the message even where the
recipient domain's TLS policy mechanisms, MTA-STS and DANE, would stop it
(rfc8689:4.2.2, sending with TLS optional): STARTTLS is still tried and
used when it works, only the policy's verdict does not block the message.
TLS reports ask for it on every report message (rfc8460:5.3: reports must
be delivered despite TLS failures, or a domain whose policy is broken would
never hear of it), and any queued message may carry it.

What the deliverer (estafeta.queue.delivery) does with such a message:

- an enforced MTA-STS policy is applied as a ``testing`` one: every MX host
  is used, TLS is opportunistic, and the certificate is verified after the
  handshake only to count what enforcing would have found;
- DANE: a TLSA lookup failure does not make the host unusable, a certificate
  that matches no TLSA record does not end the session, a host without
  STARTTLS gets the message in plain text, a failed handshake is retried
  in plain text;
- each of those is still recorded as the failure it was (Result.tls, TLS
  reports), so the policy's owner sees it.

Not relaxed: ``[queue] tls = "verify"`` (the operator's own policy, not the
recipient's) and the smarthost's TLS (our credentials go over it). The
REQUIRETLS SMTP extension, which would make the field ignored (rfc8689:3),
is not offered by our MX, so no message arrives with it.

``tls_report`` tells a TLS report message (rfc8460:5.3) from others: the
session that delivers one is not counted in the next report ("SHOULD NOT
include this SMTP session in the next report"), so a domain's broken policy
does not report the reports about it for ever.

``tls_optional`` reads the field from the message's header block, sans-IO
and bounded: at most ``MAX_HEADER`` octets are looked at (a field past them
is not seen), and the value must be ``No`` (case-insensitive, as rfc5234
literals are) in every ``TLS-Required`` field present.
"""

from __future__ import annotations

from estafeta.message.searchtext import parse_fields

FIELD = "TLS-Required"
MAX_HEADER = 64 * 1024


def tls_optional(message: bytes) -> bool:
    """Whether ``message`` says ``TLS-Required: No`` (rfc8689:3)."""
    values = [
        value.strip().lower()
        for name, value in parse_fields(message[:MAX_HEADER])
        if name == "tls-required"
    ]
    return bool(values) and all(value == "no" for value in values)


def tls_report(message: bytes) -> bool:
    """Whether ``message`` is a TLS report (rfc8460:5.3): ``TLS-Report-Domain``
    is present and the Content-Type is ``multipart/report`` with
    ``report-type="tlsrpt"`` (bounded like ``tls_optional``)."""
    fields = parse_fields(message[:MAX_HEADER])
    if not any(name == "tls-report-domain" for name, _ in fields):
        return False
    types = [value for name, value in fields if name == "content-type"]
    if len(types) != 1:
        return False
    kind, _, parameters = types[0].partition(";")
    wanted = {"report-type=tlsrpt", 'report-type="tlsrpt"'}
    given = {"".join(p.split()).lower() for p in parameters.split(";")}
    return kind.strip().lower() == "multipart/report" and not wanted.isdisjoint(given)


__all__ = ["FIELD", "MAX_HEADER", "tls_optional", "tls_report"]
