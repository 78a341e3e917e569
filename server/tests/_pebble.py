"""Debian's pebble (the ACME test CA) and pebble-challtestsrv (its DNS) on 127.0.0.1.

``Pebble.start`` runs both in a temporary directory: pebble's HTTPS
certificate comes from a trustme CA (``ca_file`` trusts it), every name
resolves to 127.0.0.1 through pebble-challtestsrv, and pebble validates
HTTP-01 and TLS-ALPN-01 on ``http_port`` and ``tls_port``, where the test
serves the challenges. Stop it with ``stop`` (by PID).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import trustme
from _ports import free_port


@dataclass
class Pebble:
    root: Path
    port: int
    management: int
    http_port: int
    tls_port: int
    dns_port: int
    ca_file: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @classmethod
    def start(
        cls, root: Path, env: dict[str, str] | None = None, validity: int | None = None
    ) -> Pebble:
        """``validity``: seconds each certificate is valid (pebble's
        certificateValidityPeriod), for renewals within a test."""
        root.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        pebble = cls(
            root=root,
            port=free_port(),
            management=free_port(),
            http_port=free_port(),
            tls_port=free_port(),
            dns_port=free_port(socket.SOCK_DGRAM),
            ca_file=root / "ca.pem",
        )
        try:
            pebble._run(env or {}, validity)
        except BaseException:
            pebble.stop()
            raise
        return pebble

    def _run(self, env: dict[str, str], validity: int | None) -> None:
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management}",
                "certificate": str(self.root / "cert.pem"),
                "privateKey": str(self.root / "key.pem"),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        if validity is not None:
            config["pebble"]["certificateValidityPeriod"] = validity
        (self.root / "config.json").write_text(json.dumps(config))
        self._spawn(
            "challtestsrv",
            [
                "pebble-challtestsrv",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{free_port()}",
            ],
            {},
        )
        self._spawn(
            "pebble",
            [
                "pebble",
                "-config",
                str(self.root / "config.json"),
                "-dnsserver",
                f"127.0.0.1:{self.dns_port}",
            ],
            {
                "PEBBLE_VA_NOSLEEP": "1",
                "PEBBLE_WFE_NONCEREJECT": "0",
                "PEBBLE_AUTHZREUSE": "0",
                **env,
            },
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + 30
        while True:
            for process in self.processes:
                assert process.poll() is None, self.log_text()
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.directory, context=context, timeout=2).close()  # noqa: S310
                return
            assert time.monotonic() < deadline, self.log_text()
            time.sleep(0.05)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.logs.append(log)
        self.processes.append(
            subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, **env})
        )

    def root_pem(self) -> bytes:
        """The root that issued pebble's chains (its management API)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://127.0.0.1:{self.management}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return bytes(response.read())

    def log_text(self) -> str:
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.root.glob("*.log"))
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        for log in self.logs:
            log.close()
        self.logs.clear()
