"""``estafeta doctor --json`` from modules: the estafeta_doctor module and the
doctor part of mail_deliverability (docs/doctor.md).

Both run the doctor on the mail host through ``EstafetaCLI`` and return the
same result; mail_deliverability names the options with a ``doctor_``
prefix (its own ``timeout`` is the delivery's). ``run_doctor`` returns the
result and the lines that make the task fail, each problem with its fix;
the caller decides how to fail (mail_deliverability also has the probe's
verdict to give).

Import from a module as ``from ansible.module_utils.estafeta_doctor import ...``.
"""

from __future__ import annotations

import json

from ansible.module_utils.estafeta import EXIT_FAILED, EXIT_OK

# The checks of `estafeta doctor --check` (estafeta.doctor.checks.CHECKS,
# without "addresses", which always runs).
CHECKS = [
    "blocklist",
    "ptr",
    "helo",
    "spf",
    "dkim",
    "dmarc",
    "mta-sts",
    "tls-rpt",
    "certificate",
    "tlsa",
    "dns-views",
]
_FIELDS = ("check", "subject", "status", "detail", "fix", "domain")
# The doctor's options: each module documents them (ansible-doc reads
# DOCUMENTATION as a literal); the list options map to repeatable CLI flags.
_LISTS = (
    ("ip", "--ip", "str"),
    ("resolvers", "--resolver", "str"),
    ("authoritative", "--authoritative", "str"),
    ("blocklists", "--blocklist", "str"),
    ("ca_files", "--ca-file", "path"),
    ("checks", "--check", "str"),
)


def doctor_argument_spec(prefix=""):
    """The doctor's options, named ``PREFIX + name``."""
    spec = {
        name: {"type": "list", "elements": elements, "default": []} for name, _, elements in _LISTS
    }
    spec["checks"]["choices"] = CHECKS
    spec.update(
        {
            "strict": {"type": "bool", "default": False},
            "timeout": {"type": "float", "default": 5},
            "max_time": {"type": "float", "default": 60},
        }
    )
    return {prefix + name: option for name, option in spec.items()}


def doctor_options(params, prefix=""):
    """The doctor's options from a module's params, without the prefix."""
    return {name: params[prefix + name] for name in doctor_argument_spec()}


def doctor_command(options):
    """The CLI arguments for the options (``--opt=value``: a value that starts
    with "-" stays a value)."""
    args = ["doctor", "--json"]
    for name, flag, _ in _LISTS:
        args += [f"{flag}={value}" for value in options[name]]
    args += [f"--timeout={options['timeout']:g}", f"--max-time={options['max_time']:g}"]
    if options["strict"]:
        args.append("--strict")
    return args


def problem_line(finding):
    """One finding as one line, with its fix."""
    line = (
        f"{finding['status'].upper()} {finding['check']} {finding['subject']}: {finding['detail']}"
    )
    return f"{line} (fix: {finding['fix']})" if finding["fix"] else line


def _read_report(module, cli, out):
    try:
        report = json.loads(out)
    except ValueError:
        report = None
    findings = report.get("findings") if isinstance(report, dict) else None
    if not isinstance(findings, list) or not all(
        isinstance(f, dict) and all(isinstance(f.get(k), str) for k in _FIELDS) for f in findings
    ):
        module.fail_json(
            msg=f"estafeta doctor: the output is not a doctor report; is {cli.executable} "
            "older than this module?",
            stdout=out,
        )
    return report


def run_doctor(module, cli, options):
    """Run the doctor; returns ``(result, failure)``: the result to return
    (status, summary, problems, findings, hostname, addresses) and, when the
    doctor exited 1, the message naming each problem that failed (with
    ``strict``, each warning too) and its fix, else ``""``.

    A usage or configuration error (exit 2) fails the module with the CLI's
    message, as does output that is no report."""
    # Exit 1 is the doctor's "something failed", with the report on stdout.
    rc, out, _ = cli.run(*doctor_command(options), ok=(EXIT_OK, EXIT_FAILED))
    report = _read_report(module, cli, out)
    findings = report["findings"]
    result = {
        "status": report.get("status"),
        "summary": report.get("summary"),
        "problems": [problem_line(f) for f in findings if f["status"] != "ok"],
        "findings": findings,
        "hostname": report.get("hostname"),
        "addresses": report.get("addresses"),
    }
    if rc != EXIT_FAILED:
        return result, ""
    bad = ("fail", "warn") if options["strict"] else ("fail",)
    failed = [problem_line(f) for f in findings if f["status"] in bad]
    failure = (
        f"estafeta doctor on {report.get('hostname')}: {len(failed)} problem(s): "
        + "; ".join(failed)
    )
    return result, failure
