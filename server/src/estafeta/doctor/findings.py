"""What a check reports: findings, and the report of a whole run.

A finding is one thing a receiver looks at, judged: ``ok``, ``warn`` (mail
still goes, but something is weak or about to break) or ``fail`` (mail is
refused, junked or unauthenticated because of it). Every finding that is not
``ok`` says how to fix it in one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "warn", "fail"]
# The fix of a DNS lookup that failed (timeout, SERVFAIL, no server reached).
DNS_FIX = "make sure the resolver answers, and the zone's name servers (the dns-views check)"
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail")
_RANK = {status: rank for rank, status in enumerate(STATUSES)}


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of ``statuses`` (``ok`` for none)."""
    return max(statuses, key=_RANK.__getitem__, default="ok")


def dns_failure(exc: BaseException) -> str:
    """A DNSTempError (``name/TYPE: what dnspython said``) in a few words."""
    text = str(exc).split(": ", 1)[-1]
    if "timed out" in text or "lifetime expired" in text:
        return "no answer in time"
    for rcode in ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR"):
        if f"answered {rcode}" in text:
            return f"the server answered {rcode}"
    return text if len(text) <= 100 else text[:97] + "..."


@dataclass(frozen=True)
class Finding:
    check: str  # "spf", "dkim", "blocklist", ... (doctor.checks.CHECKS)
    subject: str  # what was looked at: a DNS name, a zone, a listener
    status: Status
    detail: str  # what was found, one or more sentences
    fix: str = ""  # one line: what to do; empty when the status is ok
    # The group the finding is shown under: a mail domain, or the host name
    # for what belongs to the host (addresses, listeners, TLSA).
    domain: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Problems:
    """Collects the problems of one subject into a single finding: its status
    is the worst problem's, its detail and fix name each problem in turn. One
    broken thing in a subject is then one failed finding, whatever else was
    looked at there."""

    check: str
    subject: str
    domain: str
    notes: list[str] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def ok(self, note: str) -> None:
        self.notes.append(note)

    def warn(self, note: str, fix: str) -> None:
        self.add("warn", note, fix)

    def fail(self, note: str, fix: str) -> None:
        self.add("fail", note, fix)

    def add(self, status: Status, note: str, fix: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
        self.statuses.append(status)
        if fix and fix not in self.fixes:
            self.fixes.append(fix)

    @property
    def status(self) -> Status:
        return worst(self.statuses)

    def finding(self) -> Finding:
        status = self.status
        return Finding(
            self.check,
            self.subject,
            status,
            "; ".join(self.notes) or "nothing to report",
            "; ".join(self.fixes) if status != "ok" else "",
            self.domain,
        )


@dataclass(frozen=True)
class Report:
    hostname: str
    domains: tuple[str, ...]
    addresses: tuple[tuple[str, str], ...]  # (address, how it was found)
    resolvers: tuple[str, ...]
    findings: tuple[Finding, ...]

    def count(self, status: Status) -> int:
        return sum(1 for f in self.findings if f.status == status)

    @property
    def status(self) -> Status:
        return worst(f.status for f in self.findings)

    def exit_code(self, strict: bool = False) -> int:
        """1 when something failed (or, with ``strict``, only warned), else 0."""
        bad: Sequence[Status] = ("warn", "fail") if strict else ("fail",)
        return 1 if self.status in bad else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "domains": list(self.domains),
            "addresses": [{"address": a, "source": s} for a, s in self.addresses],
            "resolvers": list(self.resolvers),
            "status": self.status,
            "summary": {status: self.count(status) for status in STATUSES},
            "findings": [f.to_json() for f in self.findings],
        }
