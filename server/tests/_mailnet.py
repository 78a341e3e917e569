"""A small mail internet on loopback: a Knot DNS server, estafeta hosts, Postfix.

Each mail host gets its own loopback address (127.0.0.2, .3, ...) and the real
ports 25/587/465 on it, the way MX hosts are reached; the DNS server (Debian's
knotd, started here) is authoritative for the test zones and the estafeta
hosts use it as their resolver. Knot signs the zones in ``Knot.signed``
(automatic DNSSEC signing); ``Unbound`` is a validating resolver in front
of it that trusts their keys, for what needs DNSSEC answers (DANE).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import trustme

from conftest import PASSWORD, free_port

CHEAP_AUTH = "[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 1024\nargon2_parallelism = 1\n"


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}")


def txt(value: str) -> str:
    """A zone-file TXT rdata: quoted character-strings of at most 255 octets."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


# -- DNS ------------------------------------------------------------------


@dataclass
class Knot:
    root: Path
    zones: dict[str, list[str]]  # origin -> zone-file lines (relative names ok)
    port: int = field(default_factory=free_port)
    tsig_secret: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    # Zones Knot signs itself (a key per zone, made at the first start).
    signed: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write(self) -> None:
        for sub in ("run", "db", "zones"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        conf = [
            "server:",
            f'    rundir: "{self.root / "run"}"',
            f"    listen: 127.0.0.1@{self.port}",
            "log:",
            "  - target: stderr",
            "    any: info",
            "database:",
            f'    storage: "{self.root / "db"}"',
            "key:",
            "  - id: estafeta-test",
            "    algorithm: hmac-sha256",
            f"    secret: {self.tsig_secret}",
            "acl:",
            "  - id: update",
            "    key: estafeta-test",
            "    action: update",
            "template:",
            "  - id: default",
            f'    storage: "{self.root / "zones"}"',
            '    file: "%s.zone"',
            "    zonefile-sync: -1",
            "    journal-content: none",
            "zone:",
        ]
        for origin, lines in self.zones.items():
            conf += [f"  - domain: {origin}", "    acl: update"]
            if origin in self.signed:
                conf.append("    dnssec-signing: on")
            zone = [
                f"$ORIGIN {origin}.",
                "$TTL 60",
                f"@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60",
                f"@ NS ns.{origin}.",
                "ns A 127.0.0.1",
                *lines,
            ]
            (self.root / "zones" / f"{origin}.zone").write_text("\n".join(zone) + "\n")
        (self.root / "knot.conf").write_text("\n".join(conf) + "\n")

    def start(self) -> None:
        self.write()
        log = (self.root / "knot.log").open("ab")
        self.process = subprocess.Popen(
            ["knotd", "-c", str(self.root / "knot.conf")], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 30
        for origin in self.zones:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"knotd exited: {(self.root / 'knot.log').read_text()}")
                query = dns.message.make_query(origin, dns.rdatatype.SOA)
                with contextlib.suppress(OSError, dns.exception.DNSException):
                    answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
                    if answer.answer:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"knotd does not serve {origin}")
                time.sleep(0.1)

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None

    def ksk(self, origin: str) -> str:
        """The key-signing DNSKEY of a signed zone, as unbound's trust-anchor text."""
        query = dns.message.make_query(origin, dns.rdatatype.DNSKEY)
        answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=2)
        keys = [rdata for rrset in answer.answer for rdata in rrset if rdata.flags == 257]
        assert keys, f"{origin} has no key-signing key"
        return f"{origin}. DNSKEY {keys[0].to_text()}"


def _terminate(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Unbound:
    """Debian's unbound on 127.0.0.1: a validating resolver for the Knot's zones.

    The signed zones are trusted by their key (no chain from the root:
    unbound knows no root here), ``bogus`` zones get a trust anchor that
    matches no key, so every answer from them fails validation (SERVFAIL,
    with an rfc8914 Extended DNS Error); all other zones are insecure.
    """

    root: Path
    knot: Knot
    bogus: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = [
            "server:",
            f"    interface: 127.0.0.1@{self.port}",
            '    username: ""',
            '    chroot: ""',
            f'    directory: "{self.root}"',
            f'    pidfile: "{self.root / "unbound.pid"}"',
            "    use-syslog: no",
            "    do-daemonize: no",
            "    do-not-query-localhost: no",
            "    access-control: 127.0.0.0/8 allow",
            '    module-config: "validator iterator"',
            "    qname-minimisation: no",
            "    ede: yes",
            "    val-log-level: 2",
            # Tests change records between lookups: no answer outlives a second.
            "    cache-max-ttl: 1",
            "    cache-max-negative-ttl: 1",
        ]
        for origin in self.knot.signed:
            if origin not in self.bogus:
                conf.append(f'    trust-anchor: "{self.knot.ksk(origin)}"')
        for origin in self.bogus:
            conf.append(f'    trust-anchor: "{origin}. DS 1 13 2 {"00" * 32}"')
        for origin in self.knot.zones:
            # unbound answers RFC 6761 names (test., ...) itself unless told not to.
            conf.append(f'    local-zone: "{origin}." transparent')
        for origin in self.knot.zones:
            conf += [
                "stub-zone:",
                f'    name: "{origin}."',
                f"    stub-addr: {self.knot.address.replace(':', '@')}",
            ]
        (self.root / "unbound.conf").write_text("\n".join(conf) + "\n")

    def start(self) -> None:
        self.write()
        log = (self.root / "unbound.log").open("ab")
        self.process = subprocess.Popen(
            ["unbound", "-d", "-c", str(self.root / "unbound.conf")], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 30
        origin = next(iter(self.knot.zones))
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"unbound exited: {(self.root / 'unbound.log').read_text()}")
            query = dns.message.make_query(origin, dns.rdatatype.SOA)
            with contextlib.suppress(OSError, dns.exception.DNSException):
                if dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5).answer:
                    return
            if time.monotonic() > deadline:
                raise AssertionError("unbound does not answer")
            time.sleep(0.1)

    def stop(self) -> None:
        _terminate(self.process)
        self.process = None


def mail_zone(ip: str, *, dkim: Iterable[str] = (), dmarc: str = "v=DMARC1; p=reject") -> list[str]:
    """MX, SPF, DKIM and DMARC for a domain whose one mail host is ``ip``."""
    return [
        "@ MX 10 mx",
        f"mx A {ip}",
        f"@ TXT {txt(f'v=spf1 ip4:{ip} -all')}",
        f"mx TXT {txt(f'v=spf1 ip4:{ip} -all')}",
        f"_dmarc TXT {txt(dmarc)}",
        *dkim,
    ]


# -- estafeta hosts -----------------------------------------------------------


@dataclass
class MailHost:
    """One estafeta server on its own loopback address with the real ports."""

    root: Path
    domain: str
    ip: str
    ca: trustme.CA
    nameserver: str
    extra_config: str = ""
    # More [listen] lines, e.g. 'managesieve = ["127.0.0.2:4190"]\n'.
    extra_listen: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"mx.{self.domain}"

    @property
    def config(self) -> Path:
        return self.root / "estafeta.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "estafeta.log"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cert = self.ca.issue_cert(self.hostname, self.ip)
        cert.private_key_pem.write_to_path(str(self.root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.root / "cert.pem"))
        self.ca.cert_pem.write_to_path(str(self.root / "ca.pem"))
        self.config.write_text(
            f'hostname = "{self.hostname}"\n'
            f'data_dir = "{self.root / "data"}"\n'
            f'domains = ["{self.domain}"]\n'
            "[listen]\n"
            f'smtp = ["{self.ip}:25"]\n'
            f'submission = ["{self.ip}:587"]\n'
            f'submissions = ["{self.ip}:465"]\n'
            f'imap = ["{self.ip}:143"]\n' + self.extra_listen + "[tls]\n"
            f'cert = "{self.root / "cert.pem"}"\n'
            f'key = "{self.root / "key.pem"}"\n'
            "[dns]\n"
            f'nameservers = ["{self.nameserver}"]\n'
            + CHEAP_AUTH
            + '[log]\nlevel = "debug"\n'
            # On where a test asks for them (test_spam_mailnet.py).
            + ("" if "[greylist]" in self.extra_config else "[greylist]\nenabled = false\n")
            + ("" if "[screen]" in self.extra_config else "[screen]\ngreeting_pause = 0\n")
            + self.extra_config
        )

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "estafeta", "-c", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"estafeta {' '.join(args)}: {result.stderr}")
        return result

    def add_user(self, address: str) -> None:
        self.cli("user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")

    def dkim_records(self) -> list[str]:
        """Generate an RSA and an Ed25519 key; return their zone-file lines."""
        lines = []
        for selector, algorithm in (("s-rsa", "rsa"), ("s-ed", "ed25519")):
            out = self.cli(
                "dkim", "keygen", self.domain, "--selector", selector, "--algorithm", algorithm
            ).stdout.strip()
            name, _, rdata = out.partition(" IN TXT ")
            lines.append(f"{name} TXT {rdata}")
        return lines

    def start(self) -> None:
        assert self.process is None
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "estafeta", "-c", str(self.config), "serve"],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection((self.ip, 25), 1):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.hostname} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def log_lines(self, *needles: str) -> list[str]:
        return [line for line in self.log_text().splitlines() if all(n in line for n in needles)]

    def logged(self, *needles: str, timeout: float = 10.0) -> list[str]:
        """The log lines with every needle, waiting up to ``timeout`` for one."""
        deadline = time.monotonic() + timeout
        while not (lines := self.log_lines(*needles)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return lines

    def submit(self, sender: str, to: str, subject: str, tls: ssl.SSLContext) -> None:
        """Submit a short message on 587 (STARTTLS, AUTH as ``sender``)."""
        message = (
            f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n"
        ).encode()
        with smtplib.SMTP(self.ip, 587, timeout=30) as client:
            client.starttls(context=tls)
            client.login(sender, PASSWORD)
            assert client.sendmail(sender, [to], message) == {}

    def wait_attempted(
        self, domain: str, attempts: int = 1, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The queue entry for ``domain`` once it has been tried ``attempts`` times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entries = json.loads(self.cli("queue", "list", "--json").stdout)
            mine = [entry for entry in entries if entry["domain"] == domain]
            if mine and mine[0]["attempts"] >= attempts:
                return dict(mine[0])
            time.sleep(0.2)
        raise AssertionError(f"no attempt for {domain}: {self.log_text()[-3000:]}")

    def messages(self, address: str, mailbox_dir: str = "") -> list[bytes]:
        local, domain = address.split("@")
        folder = self.root / "data" / "mail" / domain / local / mailbox_dir
        files = sorted(p for sub in ("new", "cur") for p in (folder / sub).glob("*"))
        return [p.read_bytes() for p in files]

    def wait_messages(
        self, address: str, count: int = 1, timeout: float = 30.0, mailbox_dir: str = ""
    ) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(address, mailbox_dir)
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(
            f"{address}: {len(self.messages(address, mailbox_dir))} messages, expected {count}\n"
            + self.log_text()[-4000:]
        )


def peer_host(root: Path, ca: trustme.CA, nameserver: str) -> MailHost:
    """example.net on 127.0.0.3: a peer that sends from its own address and
    retries within seconds (the usual second host of a mail test net)."""
    return MailHost(
        root,
        "example.net",
        "127.0.0.3",
        ca,
        nameserver,
        extra_config='[queue]\nsource_address = "127.0.0.3"\nretry_min = "1s"\nretry_max = "2s"\n',
    )


# -- Postfix as a peer --------------------------------------------------------


POSTFIX_MASTER = """\
{ip}:25 inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
showq unix n - n - - showq
"""


@dataclass
class Postfix:
    """Debian's Postfix on its own loopback address, with its own config and queue."""

    root: Path
    domain: str
    ip: str
    mailboxes: tuple[str, ...]
    transport: dict[str, str]  # domain -> "[ip]:port"
    process: subprocess.Popen[bytes] | None = None

    @property
    def vmail(self) -> Path:
        return self.root / "vmail"

    def write(self) -> None:
        conf = self.root / "etc"
        for sub in ("etc", "queue", "data", "vmail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.vmail, "nobody", "nogroup")
        shutil.chown(self.root / "data", "postfix", "postfix")
        mailbox_map = ", ".join(f"{m}={self.domain}/{m.split('@')[0]}/" for m in self.mailboxes)
        transport_map = ", ".join(f"{d}=smtp:{t}" for d, t in self.transport.items())
        main = {
            "compatibility_level": "3.6",
            "myhostname": f"mx.{self.domain}",
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "mydestination": "",
            # Postfix wants inet_interfaces on an interface; master.cf binds the IP.
            "inet_interfaces": "all",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "queue_directory": str(self.root / "queue"),
            "data_directory": str(self.root / "data"),
            "maillog_file": "/dev/stdout",
            "meta_directory": "/etc/postfix",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.vmail),
            "virtual_mailbox_maps": f"inline:{{{mailbox_map}}}",
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            "transport_maps": f"inline:{{{transport_map}}}",
            "smtp_bind_address": self.ip,
            "smtp_tls_security_level": "may",
            "smtpd_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "biff": "no",
            "append_dot_mydomain": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtputf8_enable": "yes",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "10s",
            "queue_run_delay": "5s",
        }
        (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (conf / "master.cf").write_text(POSTFIX_MASTER.format(ip=self.ip))

    def start(self) -> None:
        self.write()
        log = (self.root / "postfix.out").open("ab")
        self.process = subprocess.Popen(
            ["postfix", "-c", str(self.root / "etc"), "start-fg"], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"postfix exited: {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection((self.ip, 25), 1):
                return
            time.sleep(0.1)
        raise AssertionError(f"postfix did not start: {self.log()}")

    def log(self) -> str:
        text = ""
        for name in ("postfix.out",):
            path = self.root / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def stop(self) -> None:
        if self.process is not None:
            subprocess.run(
                ["postfix", "-c", str(self.root / "etc"), "stop"], capture_output=True, timeout=30
            )
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        # The master daemon must not outlive its test (it would hold the
        # address's port 25 for the next one): by the PID it recorded.
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/lib/postfix"):
                os.kill(pid, signal.SIGKILL)

    def messages(self, address: str) -> list[bytes]:
        local = address.split("@")[0]
        folder = self.vmail / self.domain / local
        return [p.read_bytes() for sub in ("new", "cur") for p in sorted((folder / sub).glob("*"))]
