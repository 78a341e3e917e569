"""A stand-in ``estafeta`` for the modules that run ``estafeta doctor --json``
(estafeta_doctor, and mail_deliverability's doctor): a shell script that
records its arguments and prints a given report with a given exit code, and
the reports it prints. conftest's ``doctor_standin`` fixture makes one."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

DOMAIN = "example.test"
HOST = f"mx.{DOMAIN}"


def finding(check: str, subject: str, status: str, detail: str, fix: str = "") -> dict[str, str]:
    return {
        "check": check,
        "subject": subject,
        "status": status,
        "detail": detail,
        "fix": fix,
        "domain": DOMAIN,
    }


def report(*findings: dict[str, str]) -> dict[str, Any]:
    """A report of the findings, as `estafeta doctor --json` prints it."""
    statuses = [f["status"] for f in findings]
    worst = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"
    return {
        "hostname": HOST,
        "domains": [DOMAIN],
        "addresses": [{"address": "192.0.2.25", "source": "--ip"}],
        "resolvers": ["resolver 192.0.2.53"],
        "status": worst,
        "summary": {s: statuses.count(s) for s in ("ok", "warn", "fail")},
        "findings": list(findings),
    }


OK = finding("spf", DOMAIN, "ok", '"v=spf1 mx -all"; 192.0.2.25: pass')
WARN = finding(
    "dmarc", f"_dmarc.{DOMAIN}", "warn", "p=none: receivers do nothing", "publish p=quarantine"
)
FAIL = finding("ptr", HOST, "fail", "192.0.2.25 has no PTR record", "ask the provider")


class StandIn:
    """An ``estafeta`` that prints ``stdout``, ``stderr`` and exits ``rc``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.executable = root / "estafeta"
        self.argv = root / "argv"

    def answer(self, stdout: str, rc: int = 0, stderr: str = "") -> None:
        (self.root / "out").write_text(stdout)
        (self.root / "err").write_text(stderr)
        self.executable.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "$@" > {shlex.quote(str(self.argv))}\n'
            f"cat {shlex.quote(str(self.root / 'out'))}\n"
            f"cat {shlex.quote(str(self.root / 'err'))} >&2\n"
            f"exit {rc}\n"
        )
        self.executable.chmod(0o755)

    def params(self) -> dict[str, str]:
        """The module options that make a module run this stand-in."""
        return {"executable": str(self.executable), "config": "/etc/estafeta/x.toml"}

    def args(self) -> list[str]:
        """The arguments of the last run; [] when it did not run."""
        return self.argv.read_text().splitlines() if self.argv.exists() else []
