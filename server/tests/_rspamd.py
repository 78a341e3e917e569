"""A real rspamd (Debian's package) with its own redis-server, for tests.

``start_rspamd(directory)`` writes a configuration under ``directory`` that
includes the packaged defaults from /etc/rspamd (``CONFDIR``) and overrides
the rest through ``LOCAL_CONFDIR`` (= ``directory/conf``):

- a normal worker and a controller on free 127.0.0.1 ports, nothing else
  (no proxy/milter, no fuzzy storage); the controller wants a random
  plaintext password from every client (``secure_ip`` is a TEST-NET address,
  so loopback is not trusted);
- the Bayes classifier in the redis-server started here, ``min_learns = 1``
  so that one learned message of each class makes BAYES_* appear;
- no lookups that hang: DNS goes to a loopback port where nothing listens
  (or to ``nameserver``, e.g. a test Knot), with a 0.1 s timeout; the
  modules that mostly query outside services are off (rbl/surbl, asn,
  hfilter, spf, dmarc, phishing, fuzzy_check, dkim);
- a ten-entry public-suffix list instead of the packaged 9,600 entries,
  whose compilation takes about 10 s at start-up (Hyperscan's regexp cache
  is still compiled, by rspamd's hs_helper in the background, into DBDIR).

Start-up is bounded (``timeout``): both workers must answer ``/ping``, or
the error shows the tail of rspamd's log. ``stop()`` ends both process
groups (SIGTERM, then SIGKILL).

    proc = start_rspamd(tmp_path)
    client = RspamdClient(proc.url, controller_url=proc.controller_url,
                          password=proc.password)
    ...
    proc.stop()
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port

PACKAGED = Path("/etc/rspamd")
# Lua modules switched off (local.d/<name>.conf: enabled = false).
DISABLED_MODULES = ("rbl", "asn", "hfilter", "spf", "dmarc", "phishing")
TLDS = ("com", "net", "org", "test", "example", "invalid", "localhost", "de", "uk", "co.uk")


@dataclass
class RspamdProcess:
    directory: Path
    url: str  # the normal worker: /checkv2
    controller_url: str  # /learnspam, /learnham, /stat
    password: str
    redis_port: int
    rspamd: subprocess.Popen[bytes] | None = None
    redis: subprocess.Popen[bytes] | None = None

    def log(self, lines: int = 40) -> str:
        """The end of rspamd's own log and of its stdout/stderr."""
        out: list[str] = []
        for name in ("rspamd.log", "rspamd.out", "redis.log"):
            path = self.directory / "log" / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        """Stop rspamd (main process and workers), then redis. Idempotent."""
        for attribute in ("rspamd", "redis"):
            process: subprocess.Popen[bytes] | None = getattr(self, attribute)
            if process is None:
                continue
            _stop_group(process)
            setattr(self, attribute, None)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group this fixture started (start_new_session),
    SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # Workers the main process did not take down with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def start_rspamd(directory: Path, *, nameserver: str = "", timeout: float = 60.0) -> RspamdProcess:
    """rspamd + redis-server under ``directory`` (created), ready to answer.
    ``nameserver``: "host:port" for rspamd's DNS; default a dead port."""
    for program in ("rspamd", "redis-server"):
        if shutil.which(program) is None:
            raise AssertionError(f"{program} is not installed (make deps installs it)")
    for sub in ("conf/local.d", "db", "run", "log", "redis"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    proc = RspamdProcess(
        directory=directory,
        url=f"http://127.0.0.1:{free_port()}",
        controller_url=f"http://127.0.0.1:{free_port()}",
        password=secrets.token_hex(12),
        redis_port=free_port(),
    )
    _write_config(proc, nameserver or f"127.0.0.1:{free_port()}")
    deadline = time.monotonic() + timeout
    try:
        proc.redis = _spawn(
            [
                "redis-server",
                "--port", str(proc.redis_port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(directory / "redis"),
                "--logfile", str(directory / "log" / "redis.log"),
            ],
            directory / "log" / "redis.out",
        )  # fmt: skip
        _wait(proc, proc.redis, lambda: _listening(proc.redis_port), deadline, "redis-server")
        user = ["-u", "root", "-g", "root"] if os.geteuid() == 0 else []
        variables = {
            "CONFDIR": PACKAGED,
            "LOCAL_CONFDIR": directory / "conf",
            "DBDIR": directory / "db",
            "RUNDIR": directory / "run",
            "LOGDIR": directory / "log",
        }
        proc.rspamd = _spawn(
            ["rspamd", "-f", *user, "-c", str(directory / "conf" / "rspamd.conf")]
            + [f"--var={name}={value}" for name, value in variables.items()],
            directory / "log" / "rspamd.out",
        )
        for url in (proc.url, proc.controller_url):
            port = int(url.rsplit(":", 1)[1])
            _wait(proc, proc.rspamd, functools.partial(_pong, port), deadline, "rspamd")
    except BaseException:
        proc.stop()
        raise
    return proc


def _spawn(argv: list[str], output: Path) -> subprocess.Popen[bytes]:
    with output.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the workers too
        )


def _wait(
    proc: RspamdProcess,
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    deadline: float,
    name: str,
) -> None:
    while not ready():
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}\n{proc.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} did not start in time\n{proc.log()}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _pong(port: int) -> bool:
    """rspamd answers GET /ping with "pong" once its worker runs."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=2) as s,
    ):
        s.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
        s.settimeout(2)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return reply.startswith(b"HTTP/1.") and b" 200 " in reply[:20] and b"pong" in reply
    return False


def _write_config(proc: RspamdProcess, nameserver: str) -> None:
    conf = proc.directory / "conf"
    normal = proc.url.removeprefix("http://")
    controller = proc.controller_url.removeprefix("http://")
    (conf / "tld.dat").write_text("\n".join(TLDS) + "\n")
    # The packaged rspamd.conf, minus the proxy and fuzzy workers, with our
    # sockets; common.conf brings the packaged metrics, modules and
    # statistic (Bayes) configuration, each with its local.d include.
    (conf / "rspamd.conf").write_text(
        f"""
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "normal" {{
    bind_socket = "{normal}";
    count = 1;
    .include "$CONFDIR/worker-normal.inc"
}}
worker "controller" {{
    bind_socket = "{controller}";
    count = 1;
    password = "{proc.password}";
    secure_ip = "192.0.2.1";
    static_dir = "${{WWWDIR}}";
}}
"""
    )
    (conf / "local.d" / "options.inc").write_text(
        f"""
filters = "chartable,regexp";
url_tld = "{conf / "tld.dat"}";
dns {{
    nameserver = ["{nameserver}"];
    timeout = 0.1s;
    retransmits = 1;
}}
"""
    )
    (conf / "local.d" / "classifier-bayes.conf").write_text(
        f"""
servers = "127.0.0.1:{proc.redis_port}";
min_learns = 1;
"""
    )
    for module in DISABLED_MODULES:
        (conf / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
