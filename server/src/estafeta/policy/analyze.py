"""Inbound verdict for one message on the MX: SPF, DKIM, ARC, DMARC → action.

The facts (client IP, HELO, MAIL FROM, message) go in with a resolver; out
come the ``Authentication-Results`` header (rfc8601) to prepend and what to
do: deliver, deliver to Junk (DMARC ``quarantine``), or refuse (DMARC
``reject``, rfc7489:6.6.4 / 7.3 — we reject during the SMTP transaction, so
the sender learns of it instead of a silent drop).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from estafeta.dns import Resolver
from estafeta.policy import authresults, dkim, dmarc, spf
from estafeta.policy.dkim import ARCResult, DKIMResult
from estafeta.policy.dmarc import DMARCResult
from estafeta.policy.spf import SPFVerdict

log = logging.getLogger("estafeta.policy")

# The header block is all DMARC needs; bounding it keeps a hostile message cheap.
MAX_HEADER = 256 * 1024


@dataclass(frozen=True)
class Analysis:
    header: bytes  # the Authentication-Results field, CRLF-terminated
    spf: SPFVerdict
    dkim: tuple[DKIMResult, ...]
    arc: ARCResult
    dmarc: DMARCResult | None
    reject: str | None = None  # an SMTP reply when the message must be refused
    junk: bool = False

    def summary(self) -> dict[str, str]:
        """Short verdicts for the delivery log line."""
        return {
            "spf": str(self.spf.result),
            "dkim": ",".join(f"{d.result}:{d.domain}" for d in self.dkim) or "none",
            "dmarc": self.dmarc.result if self.dmarc else "permerror",
            "arc": self.arc.result,
        }


def header_block(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n", 0, MAX_HEADER)
    return message[: end + 2] if end >= 0 else message[:MAX_HEADER]


async def analyze(
    resolver: Resolver,
    *,
    hostname: str,
    ip: str,
    helo: str,
    mail_from: str,
    message: bytes,
    dmarc_reject: bool = True,
    spf_verdict: SPFVerdict | None = None,
) -> Analysis:
    """``message`` must already be free of A-R fields claiming our authserv-id.
    ``spf_verdict``: the MAIL FROM's SPF, when it was checked at RCPT already."""
    spf_task = (
        _ready(spf_verdict)
        if spf_verdict is not None
        else spf.verify(resolver, ip, mail_from, helo, receiver=hostname)
    )
    spf_checked, dkim_results, arc_result = await asyncio.gather(
        spf_task, dkim.verify(resolver, message), dkim.arc_verify(resolver, message)
    )
    from_domain = dmarc.from_domain(header_block(message))
    dmarc_result: DMARCResult | None = None
    if from_domain is not None:
        dmarc_result = await dmarc.verify(
            resolver,
            from_domain,
            spf_result=str(spf_checked.result),
            spf_domain=spf_checked.domain,
            dkim=dkim_results,
        )
    reject: str | None = None
    junk = False
    if dmarc_result is not None and dmarc_result.result == "fail":
        if dmarc_result.policy == "reject" and dmarc_reject:
            if arc_result.result == "pass":
                # rfc7489:10.1 — a local exception for mail with a valid ARC
                # chain (rfc8617:7.2): forwarded, not forged. Quarantine instead.
                junk = True
            else:
                reject = (
                    f"550 5.7.1 Message rejected: {from_domain} publishes a DMARC "
                    "policy of reject and the message failed DMARC"
                )
        elif dmarc_result.policy in ("quarantine", "reject"):
            junk = True
    header = authresults.header(
        hostname,
        spf=spf_checked,
        dkim=dkim_results,
        dmarc=dmarc_result,
        arc=arc_result,
    )
    return Analysis(
        header=header,
        spf=spf_checked,
        dkim=tuple(dkim_results),
        arc=arc_result,
        dmarc=dmarc_result,
        reject=reject,
        junk=junk,
    )


async def _ready(verdict: SPFVerdict) -> SPFVerdict:
    return verdict
