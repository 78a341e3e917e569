"""The report as text for the operator: grouped by domain, a fix under each problem.

::

    mx1.example.org
      ok    addresses    mx1.example.org: mail is sent from 192.0.2.10 (...)
      FAIL  ptr          mx1.example.org: 192.0.2.10 has no PTR record (...)
                         fix: ask the provider of the address ...
    example.org
      WARN  dmarc        _dmarc.example.org: p=none: receivers do nothing ...
                         fix: once the reports show ...

    1 failed, 1 warning, 12 ok

Colours (green, yellow, red) only when asked to: on a terminal.
"""

from __future__ import annotations

from estafeta.doctor.findings import Report, Status

_LABEL: dict[Status, str] = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
_COLOUR: dict[Status, str] = {"ok": "32", "warn": "33", "fail": "31"}
_CHECK_WIDTH = 12


def _sanitize(text: str) -> str:
    """Terminal-safe: DNS and servers put anything in records and greetings."""
    return "".join(c if c.isprintable() else "?" for c in text)


def text(report: Report, *, colour: bool = False) -> str:
    def label(status: Status) -> str:
        word = f"{_LABEL[status]:<5}"
        return f"\x1b[{_COLOUR[status]}m{word}\x1b[0m" if colour else word

    lines: list[str] = []
    group = None
    indent = " " * (2 + 6 + _CHECK_WIDTH + 1)
    for finding in report.findings:
        if finding.domain != group:
            group = finding.domain
            lines.append(_sanitize(group))
        subject = _sanitize(finding.subject)
        lines.append(
            f"  {label(finding.status)} {finding.check:<{_CHECK_WIDTH}} "
            f"{subject}: {_sanitize(finding.detail)}"
        )
        if finding.fix:
            lines.append(f"{indent}fix: {_sanitize(finding.fix)}")
    failed, warned, fine = report.count("fail"), report.count("warn"), report.count("ok")
    lines.append("")
    lines.append(
        f"{failed} failed, {warned} warning{'s' if warned != 1 else ''}, {fine} ok"
        + (": nothing to fix" if not failed and not warned else "")
    )
    return "\n".join(lines) + "\n"
