#!/usr/bin/env python3
"""Dovecot's imaptest scripted IMAP compliance tests against a private estafeta.

Starts an estafeta of its own (IMAP only, on a free 127.0.0.1 port, in a
temporary directory under /var/tmp that is removed at the end, plaintext
LOGIN on loopback, cheap argon2 hashes) with two test accounts, runs
imaptest's scripted tests one test file (= one test group) at a time
(``imaptest host=... port=... user=... pass=... user2=... test=FILE``) and
prints per group passed / FAILED (with imaptest's failure text) / skipped
(with the capabilities the group needs and the server lacks), then the
totals. ``--dovecot`` runs the same tests against a private Dovecot as
well (bench/_servers.py's configuration, Dovecot's defaults otherwise; only
Dovecot is started, not Postfix) and lists the groups whose result differs.

imaptest is not packaged by Debian: build it from github.com/dovecot/imaptest
against Debian's dovecot-dev (see the bench README row). A developer tool,
not part of ``make test``.

    .venv/bin/python bench/imaptest.py --imaptest /tmp/imaptest-bin/imaptest \\
        --tests /tmp/imaptest-bin/tests [--only fetch --only select] [--dovecot] [--keep]
"""

from __future__ import annotations

import argparse
import imaplib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from _harness import add_user, free_port, running

DOMAIN = "imaptest.test"
USER = f"alice@{DOMAIN}"
USER2 = f"bob@{DOMAIN}"
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
SUMMARY = re.compile(r"(\d+) test groups: (\d+) failed, (\d+) skipped")
# "base protocol: 0/12 individual commands failed", "extensions: 0/0 ..."
COMMANDS = re.compile(r"(base protocol|extensions): (\d+)/(\d+) individual")
KINDS = ("base protocol", "extensions")
STATUSES = ("passed", "FAILED", "skipped")


@dataclass
class Result:
    name: str
    status: str  # passed, FAILED, skipped
    detail: str
    seconds: float
    # individual commands, as imaptest counts them: {"base protocol": (failed, run), ...}
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)


def write_config(root: Path, port: int) -> Path:
    path = root / "estafeta.toml"
    path.write_text(
        f'hostname = "mx.{DOMAIN}"\ndata_dir = "{root / "data"}"\n'
        f'domains = ["{DOMAIN}"]\n[listen]\nimap = ["127.0.0.1:{port}"]\n'
        # Plaintext LOGIN on loopback, loopback exempt from the per-client
        # limits (imaptest opens several connections at once), cheap hashes.
        '[auth]\nallow_plaintext = true\nexempt = ["127.0.0.0/8"]\n'
        + "".join(f"argon2_{k} = {v}\n" for k, v in CHEAP_ARGON2.items())
    )
    return path


@contextmanager
def estafeta_server(root: Path, password: str) -> Iterator[int]:
    """A private ``estafeta serve`` (IMAP only) with both accounts; yields its port."""
    root.mkdir()
    port = free_port()
    config = write_config(root, port)
    add_user(config, USER, password)
    add_user(config, USER2, password)
    with running(config, port, root / "estafeta.log"):
        yield port


@contextmanager
def dovecot_server(root: Path, password: str) -> Iterator[int]:
    """A private Dovecot as bench/_servers.py configures it (its Postfix is
    configured but not started); yields its IMAP port."""
    from _servers import PostfixDovecot, ensure_packages, wait_port

    ensure_packages()
    server = PostfixDovecot(
        root, smtp_port=free_port(), imap_port=free_port(), pop3_port=free_port()
    )
    server.write_config()
    server.add_users({USER: password, USER2: password}, cheap=True)
    try:
        with (root / "dovecot.out").open("ab") as out:
            server.dovecot = subprocess.Popen(
                ["dovecot", "-F", "-c", str(server.dovecot_conf)], stdout=out, stderr=out
            )
        wait_port(server.imap_port, server.dovecot, server.log_path)
        yield server.imap_port
    finally:
        server.stop()


def header(test: Path) -> dict[str, str]:
    """The test file's ``key: value`` header (up to the first empty line)."""
    found: dict[str, str] = {}
    for line in test.read_text(errors="replace").splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep:
            found[key.strip().lower()] = value.strip()
    return found


def test_files(directory: Path, only: list[str]) -> list[Path]:
    tests = sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.endswith(".mbox") and not p.name.startswith(".")
    )
    if only:
        wanted = set(only)
        missing = wanted - {p.name for p in tests}
        if missing:
            raise SystemExit(f"no such test in {directory}: {' '.join(sorted(missing))}")
        tests = [p for p in tests if p.name in wanted]
    return tests


def server_capabilities(port: int, password: str) -> set[str]:
    """CAPABILITY after LOGIN, upper case (imaptest asks after LOGIN too and
    compares without case)."""
    with imaplib.IMAP4("127.0.0.1", port) as client:
        client.login(USER, password)
        _, data = client.capability()
        client.logout()
    raw = data[0]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return {c.upper() for c in text.split()}


def run_one(
    imaptest: Path,
    test: Path,
    port: int,
    password: str,
    capabilities: set[str],
    timeout: float,
    rawlog: Path | None,
) -> Result:
    command = [
        str(imaptest),
        "host=127.0.0.1",
        f"port={port}",
        f"user={USER}",
        f"user2={USER2}",
        f"pass={password}",
        f"test={test}",
    ]
    if rawlog is not None:
        command.append("rawlog")  # rawlog.<client> files, in a directory per test
        rawlog = rawlog / test.name
        rawlog.mkdir(exist_ok=True)
    env = dict(os.environ)
    # A build against Debian's dovecot-dev links libdovecot.so without an rpath.
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in ("/usr/lib/dovecot", env.get("LD_LIBRARY_PATH", "")) if p
    )
    start = time.monotonic()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
            cwd=rawlog,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr or b""
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        return Result(test.name, "FAILED", f"timed out after {timeout:.0f} s\n{text}", timeout)
    seconds = time.monotonic() - start
    output = (done.stderr + done.stdout).strip()
    match = SUMMARY.search(done.stdout)
    if match is None:  # imaptest failed before the end (a fatal error, a crash)
        return Result(test.name, "FAILED", f"imaptest exit {done.returncode}\n{output}", seconds)
    failed, skipped = int(match.group(2)), int(match.group(3))
    commands = {kind: (int(f), int(n)) for kind, f, n in COMMANDS.findall(done.stdout)}
    if failed:
        # The failure blocks are imaptest's stderr; stdout only has totals.
        return Result(test.name, "FAILED", done.stderr.strip(), seconds, commands)
    needs = header(test).get("capabilities", "").split()
    missing = [c for c in needs if c.upper() not in capabilities]
    # Older imaptest builds do not count a group skipped for a missing
    # capability in the summary line: it then ran no command at all.
    ran = sum(n for _, n in commands.values())
    if skipped or (ran == 0 and missing):
        return Result(test.name, "skipped", f"needs: {' '.join(missing)}", seconds, commands)
    if ran == 0:
        return Result(test.name, "FAILED", f"ran no command\n{output}", seconds, commands)
    return Result(test.name, "passed", "", seconds, commands)


def run_suite(
    label: str,
    port: int,
    password: str,
    tests: list[Path],
    args: argparse.Namespace,
    rawlog: Path | None,
) -> list[Result]:
    capabilities = server_capabilities(port, password)
    print(f"== {label} (127.0.0.1:{port})", flush=True)
    results = []
    for test in tests:
        result = run_one(args.imaptest, test, port, password, capabilities, args.timeout, rawlog)
        results.append(result)
        print(f"{result.status:<8} {result.name}  ({result.seconds:.1f} s)", flush=True)
        for line in result.detail.splitlines():
            print(f"    {line}")
    return results


def summarize(label: str, results: list[Result]) -> None:
    counts = {s: [r.name for r in results if r.status == s] for s in STATUSES}
    print(
        f"\n{label}: {len(results)} test groups: {len(counts['passed'])} passed, "
        f"{len(counts['FAILED'])} failed, {len(counts['skipped'])} skipped"
    )
    for kind in KINDS:
        failed = sum(r.commands.get(kind, (0, 0))[0] for r in results)
        run = sum(r.commands.get(kind, (0, 0))[1] for r in results)
        print(f"  {kind}: {failed}/{run} individual commands failed")
    for status in ("FAILED", "skipped"):
        if counts[status]:
            print(f"  {status}: {' '.join(counts[status])}")


def terminate(signum: int, _frame: object) -> NoReturn:
    # SystemExit unwinds the with-blocks: servers stopped, directory removed.
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--imaptest", type=Path, default=Path("/tmp/imaptest-bin/imaptest"))
    parser.add_argument("--tests", type=Path, default=Path("/tmp/imaptest-bin/tests"))
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per test file")
    parser.add_argument(
        "--dovecot", action="store_true", help="run the tests against a private Dovecot too"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--rawlog", action="store_true", help="imaptest rawlog files (--keep)")
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    if not args.imaptest.is_file():
        raise SystemExit(f"{args.imaptest}: no imaptest binary")
    tests = test_files(args.tests, args.only)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    root = Path(tempfile.mkdtemp(prefix="estafeta-imaptest-", dir=args.dir))
    # Dovecot's imap processes (user nobody) reach their mail under it.
    root.chmod(0o755)
    servers = [("estafeta", estafeta_server)]
    if args.dovecot:
        servers.append(("dovecot", dovecot_server))
    password = secrets.token_urlsafe(18)
    results: dict[str, list[Result]] = {}
    try:
        for label, server in servers:
            rawlog = None
            if args.rawlog:
                rawlog = root / f"rawlog-{label}"
                rawlog.mkdir()
            with server(root / label, password) as port:
                results[label] = run_suite(label, port, password, tests, args, rawlog)
    finally:
        if args.keep or args.rawlog:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    for label, found in results.items():
        summarize(label, found)
    if "dovecot" in results:
        theirs = {r.name: r.status for r in results["dovecot"]}
        differ = [
            f"  {r.name}: estafeta {r.status}, dovecot {theirs[r.name]}"
            for r in results["estafeta"]
            if r.status != theirs[r.name]
        ]
        print("\ngroups whose result differs:" if differ else "\nsame result for every group")
        for line in differ:
            print(line)
    sys.exit(1 if any(r.status == "FAILED" for r in results["estafeta"]) else 0)


if __name__ == "__main__":
    main()
