"""The servers under test: estafeta, and Postfix + Dovecot as its peer.

Each runs privately from its own directory on 127.0.0.1 high ports; nothing
here reads or writes /etc/postfix, /etc/dovecot or a system service (only
``ensure_packages`` installs Debian packages, and leaves their system
services stopped and disabled).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import argon2

from _load import IMAPClient
from _procs import tree

DOMAIN = "bench.test"
PEER_PACKAGES = ("postfix", "dovecot-imapd", "dovecot-pop3d", "dovecot-lmtpd")
NOBODY = 65534  # owner of the peer's mail (a real deployment has a vmail user)

# Cheap hashes, for the 10,000 logins of P3 only (see README: RSS does not
# depend on them; default-cost logins would take ~25 minutes per server).
CHEAP_ARGON2 = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
# What `doveadm pw -s ARGON2ID` makes (libsodium: one lane only): the same
# time and memory cost as estafeta's default (t=3, m=64 MiB, p=4).
DOVECOT_ARGON2 = {"time_cost": 3, "memory_cost": 65536, "parallelism": 1}


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def count_maildir(folder: Path) -> int:
    """Messages in a Maildir folder (new/ and cur/)."""
    total = 0
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError), os.scandir(folder / sub) as entries:
            total += sum(1 for _ in entries)
    return total


def status_messages(client: IMAPClient, mailbox: str = "INBOX") -> int:
    """MESSAGES of ``STATUS mailbox (MESSAGES)`` on a logged-in connection."""
    lines = client.command(f"STATUS {mailbox} (MESSAGES)").lines
    found = [int(line.rsplit(b"MESSAGES", 1)[1].strip(b" )\r\n")) for line in lines]
    if len(found) != 1:
        raise RuntimeError(f"STATUS {mailbox}: {lines!r}")
    return found[0]


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# -- packages ----------------------------------------------------------------


def _installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return "ok installed" in result.stdout


def ensure_packages(log: Callable[[str], None] = print) -> list[str]:
    """apt-get install what is missing of PEER_PACKAGES, non-interactively,
    with Postfix preseeded to "No configuration"; then stop and disable the
    system services the packages come with (the bench runs its own)."""
    missing = [p for p in PEER_PACKAGES if not _installed(p)]
    if not missing:
        return []
    log(f"installing Debian packages: {' '.join(missing)}")
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=True,
    )
    # Keep the packages' maintainer scripts from starting the services at
    # all, where no policy says so already (a Docker-style image has one).
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# estafeta bench: installing, no service starts\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    finally:
        if own_policy:
            policy.unlink()
    services = ["dovecot"] if any(p.startswith("dovecot") for p in missing) else []
    if "postfix" in missing:
        services.append("postfix")
    for service in services:
        if Path("/run/systemd/system").is_dir():
            subprocess.run(["systemctl", "disable", "--now", f"{service}.service"], check=False)
        else:
            subprocess.run(["update-rc.d", service, "disable"], capture_output=True, check=False)
            if Path(f"/etc/init.d/{service}").exists():
                subprocess.run([f"/etc/init.d/{service}", "stop"], capture_output=True, check=False)
    return missing


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found["postfix"] = subprocess.run(
            ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found["dovecot"] = subprocess.run(
            ["dovecot", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    import estafeta

    found["estafeta"] = estafeta.__version__
    found["python"] = sys.version.split()[0]
    return found


# -- estafeta ------------------------------------------------------------------


@dataclass
class Estafeta:
    """One ``estafeta serve`` with SMTP, IMAP and POP3 on loopback."""

    root: Path
    smtp_port: int
    imap_port: int
    pop3_port: int
    max_connections: int = 1000
    cheap_auth: bool = False  # P3's instance: see CHEAP_ARGON2
    label: str = "estafeta"
    # Greylisting would 451 the load generator's first mail, and the
    # pregreet pause would hold its first connection: the peer has neither
    # (no postscreen, no policy service). The learning filter keeps its
    # default (on); bench/spam.py measures what the checks cost.
    extra_config: str = "[greylist]\nenabled = false\n[screen]\ngreeting_pause = 0\n"
    process: subprocess.Popen[bytes] | None = None
    hash_scheme: str = field(init=False, default="")

    @property
    def config_path(self) -> Path:
        return self.root / "estafeta.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "estafeta.log"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        auth = (
            # Plaintext LOGIN on loopback (the peer has ssl = no as well), and
            # loopback exempt from the per-client limits and login
            # serialisation, like Postfix's mynetworks and Dovecot's
            # login_trusted_networks.
            '[auth]\nallow_plaintext = true\nexempt = ["127.0.0.0/8"]\n'
        )
        if self.cheap_auth:
            auth += "".join(f"argon2_{k} = {v}\n" for k, v in CHEAP_ARGON2.items())
        self.config_path.write_text(
            f'hostname = "mx.{DOMAIN}"\ndata_dir = "{self.root / "data"}"\n'
            f'domains = ["{DOMAIN}"]\n[listen]\nsmtp = ["127.0.0.1:{self.smtp_port}"]\n'
            f'imap = ["127.0.0.1:{self.imap_port}"]\npop3 = ["127.0.0.1:{self.pop3_port}"]\n'
            f"[limits]\nmax_connections = {self.max_connections}\n"
            + auth
            # No DNS here; the peer does no SPF/DKIM/DMARC either.
            + "[inbound]\nauthenticate = false\n"
            + self.extra_config
            + self.store_section()
        )
        from estafeta import config

        cfg = config.load(self.config_path)
        h = cfg.auth
        self.hash_scheme = (
            f"argon2id t={h.argon2_time_cost} m={h.argon2_memory_cost} KiB "
            f"p={h.argon2_parallelism} (argon2-cffi)"
        )

    def store_section(self) -> str:
        """``[store]`` of the config: none, the local backend (ClusterEstafeta
        in _cluster.py has one)."""
        return ""

    def add_users(self, passwords: dict[str, str]) -> None:
        """Create accounts as ``estafeta user add`` does (same code, same
        hasher from the config, password policy on), in one process: into
        ``accounts.db``, or on a cluster node into PostgreSQL (the CLI's
        ``cluster_node.cli_accounts``, as estafeta.cli does)."""
        from estafeta import config
        from estafeta.auth import Accounts

        cfg = config.load(self.config_path)
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        if cfg.store.cluster:
            from estafeta.cluster_node import cli_accounts

            opened: Accounts = cli_accounts(cfg)
        else:
            opened = Accounts(cfg.accounts_db, cfg.domains, hasher=cfg.auth.hasher())
        with opened as accounts:
            existing = set(accounts.list_users())
            for address, password in passwords.items():
                if address not in existing:
                    accounts.add_user(address, password)

    @contextlib.contextmanager
    def _store(self) -> Iterator[Any]:
        """The store as the CLI opens it: the local Maildir store, or a
        cluster node's (PostgreSQL, the object store, the replicas under
        data_dir/replicas: ``cluster_node.cli_store``)."""
        from estafeta import config
        from estafeta.store import Store

        cfg = config.load(self.config_path)
        if cfg.store.cluster:
            from estafeta.cluster_node import cli_store

            with cli_store(cfg) as cluster_store:
                yield cluster_store
        else:
            with Store(self.root / "data" / "mail", f"mx.{DOMAIN}") as store:
                yield store

    def fill(self, address: str, messages: Iterable[bytes], batch: int = 1000) -> None:
        """Deliver through the store API (durable, as SMTP deliveries are:
        on the cluster, bodies PUT then rows committed in PostgreSQL, the
        code path of an SMTP delivery); only while the server is stopped."""
        assert self.process is None
        from estafeta.message import summarize
        from estafeta.store import Delivery

        with self._store() as store:
            pending: list[Delivery] = []
            for data in messages:
                pending.append(Delivery(address, data, summarize(data)))
                if len(pending) >= batch:
                    store.deliver_sync(pending)
                    pending = []
            if pending:
                store.deliver_sync(pending)
            # The full-text index a running server keeps up to date as mail
            # arrives (the peer's box gets `doveadm index` likewise).
            store.build_fulltext(address)

    def maildir(self, address: str) -> Path:
        local = address.split("@")[0]
        return self.root / "data" / "mail" / DOMAIN / local

    def count(self, address: str) -> int:
        return count_maildir(self.maildir(address))

    @contextlib.contextmanager
    def counter(self, address: str, password: str) -> Iterator[Callable[[], int]]:
        """P1's "visible" check: the messages in the account's Maildir."""
        yield lambda: self.count(address)

    def index_db(self, address: str) -> Path:
        """The account's index (SQLite), full-text index included."""
        return self.maildir(address) / "index.db"

    def unindexed(self, addresses: Iterable[str]) -> int:
        """Messages of ``addresses`` that the full-text index does not hold
        yet: the server indexes new mail in the background once its writer
        is idle. A read-only look at the index files (WAL: no lock taken)."""
        left = 0
        for address in addresses:
            path = self.index_db(address)
            if not path.exists():
                continue
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                try:
                    held = conn.execute("SELECT count(*) FROM fulltext_doc").fetchone()[0]
                except sqlite3.OperationalError:  # no full-text table yet
                    held = 0
            finally:
                conn.close()
            left += max(0, int(messages) - int(held))
        return left

    def start(self) -> None:
        assert self.process is None
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "estafeta", "-c", str(self.config_path), "serve"],
                stdout=log,
                stderr=log,
            )
        for port in (self.smtp_port, self.imap_port, self.pop3_port):
            wait_port(port, self.process, self.log_path)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def pids(self) -> list[int]:
        """The processes whose CPU counts (estafeta is one process)."""
        return tree(self.process.pid) if self.process else []

    def memory_pids(self) -> list[int]:
        return self.pids()

    @property
    def main_pid(self) -> int:
        assert self.process is not None
        return self.process.pid


# -- Postfix + Dovecot -----------------------------------------------------------

POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
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
lmtp unix - - n - - lmtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
showq unix n - n - - showq
"""

DOVECOT_CONF = """\
# estafeta bench: a private Dovecot, nothing shared with /etc/dovecot.
instance_name = {instance}
base_dir = {run}
state_dir = {state}
log_path = {log}
protocols = imap pop3 lmtp
listen = 127.0.0.1
# Loopback only: no TLS, plaintext LOGIN allowed (as for estafeta).
ssl = no
disable_plaintext_auth = no
login_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
# Dovecot's default, what deployments run: fsync where data could be lost
# (each delivered message file before LMTP's 250).
mail_fsync = optimized
# Room for 10,000+ IDLE connections: one imap process each and one
# imap-login process per connection logging in (the default high-security
# mode), anvil, log and auth serving all of them.
default_client_limit = {client_limit}
passdb {{
  driver = passwd-file
  args = {users}
}}
userdb {{
  driver = passwd-file
  args = {users}
  default_fields = uid={uid} gid={uid} home={vmail}/%d/%n
}}
service imap-login {{
  process_limit = {process_limit}
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    user = postfix
    group = postfix
    mode = 0600
  }}
}}
service imap {{
  process_limit = {process_limit}
}}
protocol imap {{
  mail_max_userip_connections = {process_limit}
}}
"""


@dataclass
class PostfixDovecot:
    """Postfix (SMTP, queue) delivering over LMTP to Dovecot (Maildir, IMAP, POP3)."""

    root: Path
    smtp_port: int
    imap_port: int
    pop3_port: int
    max_connections: int = 1000
    label: str = "postfix+dovecot"
    postfix: subprocess.Popen[bytes] | None = None
    dovecot: subprocess.Popen[bytes] | None = None
    hash_scheme: str = (
        "{ARGON2ID} t=3 m=65536 KiB p=1 (libsodium; = doveadm pw -s ARGON2ID defaults)"
    )
    _users: dict[str, str] = field(default_factory=dict)  # address -> passwd-file line

    @property
    def run_dir(self) -> Path:
        return self.root / "dovecot" / "run"

    @property
    def vmail(self) -> Path:
        return self.root / "vmail"

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def postfix_log(self) -> Path:
        return self.root / "postfix.log"

    def write_config(self) -> None:
        for sub in ("dovecot/state", "postfix/etc", "postfix/queue", "postfix/data", "vmail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        shutil.chown(self.root / "postfix" / "data", "postfix", "postfix")
        os.chown(self.vmail, NOBODY, NOBODY)
        limit = self.max_connections
        self.dovecot_conf.write_text(
            DOVECOT_CONF.format(
                instance=f"estafeta-bench-{self.imap_port}",
                run=self.run_dir,
                state=self.root / "dovecot" / "state",
                log=self.log_path,
                process_limit=limit,
                client_limit=limit + 1000,
                users=self.root / "dovecot" / "users",
                uid=NOBODY,
                vmail=self.vmail,
                imap_port=self.imap_port,
                pop3_port=self.pop3_port,
            )
        )
        etc = self.root / "postfix" / "etc"
        main = {
            "compatibility_level": "3.6",
            "myhostname": f"mx.{DOMAIN}",
            "mydomain": DOMAIN,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "all",  # master.cf binds 127.0.0.1:PORT
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "queue_directory": str(self.root / "postfix" / "queue"),
            "data_directory": str(self.root / "postfix" / "data"),
            "maillog_file": "/dev/stdout",
            "meta_directory": "/etc/postfix",
            "virtual_mailbox_domains": DOMAIN,
            # Recipient validation: unknown users get 550 at RCPT, as with estafeta.
            "virtual_mailbox_maps": f"texthash:{etc / 'vmailbox'}",
            "virtual_transport": f"lmtp:unix:{self.run_dir / 'lmtp'}",
            "smtpd_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "biff": "no",
            "append_dot_mydomain": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtputf8_enable": "yes",
        }
        (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (etc / "master.cf").write_text(POSTFIX_MASTER.format(port=self.smtp_port))
        self._write_users()

    def add_users(self, passwords: dict[str, str], cheap: bool = False) -> None:
        cost = CHEAP_ARGON2 if cheap else DOVECOT_ARGON2
        hasher = argon2.PasswordHasher(
            time_cost=cost["time_cost"],
            memory_cost=cost["memory_cost"],
            parallelism=cost["parallelism"],
        )
        for address, password in passwords.items():
            if address not in self._users:
                self._users[address] = f"{address}:{{ARGON2ID}}{hasher.hash(password)}::::::"
        self._write_users()

    def _write_users(self) -> None:
        users = self.root / "dovecot" / "users"
        if not users.parent.exists():
            return
        users.write_text("".join(line + "\n" for line in self._users.values()))
        # Read by Dovecot's auth process, which runs as the dovecot user.
        shutil.chown(users, "root", "dovecot")
        users.chmod(0o640)
        (self.root / "postfix" / "etc" / "vmailbox").write_text(
            "".join(f"{a} OK\n" for a in self._users)
        )

    def maildir(self, address: str) -> Path:
        local = address.split("@")[0]
        return self.vmail / DOMAIN / local / "Maildir"

    def count(self, address: str) -> int:
        return count_maildir(self.maildir(address))

    @contextlib.contextmanager
    def counter(self, address: str, password: str) -> Iterator[Callable[[], int]]:
        """P1's "visible" check: the messages in the account's Maildir."""
        yield lambda: self.count(address)

    def fill(self, address: str, messages: Iterable[bytes]) -> None:
        """Write messages straight into the Maildir's cur/, named and with LF
        line ends as Dovecot's own deliveries are (S= size, W= CRLF size);
        Dovecot indexes them at the first access (see ``index``)."""
        folder = self.maildir(address)
        for sub in ("tmp", "new", "cur"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        start = int(time.time()) - 86400
        for n, data in enumerate(messages):
            lf = data.replace(b"\r\n", b"\n")
            name = (
                f"{start + n // 100}.M{n % 100}P{os.getpid()}Q{n}.bench,S={len(lf)},W={len(data)}"
            )
            path = folder / "cur" / f"{name}:2,"
            path.write_bytes(lf)
        os.chown(self.vmail / DOMAIN, NOBODY, NOBODY)
        for dirpath, _dirnames, filenames in os.walk(folder.parent):
            os.chown(dirpath, NOBODY, NOBODY)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)

    def doveadm(self, *args: str) -> str:
        result = subprocess.run(
            ["doveadm", "-c", str(self.dovecot_conf), *args],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)}: {result.stderr}")
        return result.stdout

    def start(self) -> None:
        assert self.dovecot is None and self.postfix is None
        with (self.root / "dovecot.out").open("ab") as out:
            self.dovecot = subprocess.Popen(
                ["dovecot", "-F", "-c", str(self.dovecot_conf)], stdout=out, stderr=out
            )
        wait_port(self.imap_port, self.dovecot, self.log_path)
        wait_port(self.pop3_port, self.dovecot, self.log_path)
        with self.postfix_log.open("ab") as out:
            self.postfix = subprocess.Popen(
                ["postfix", "-c", str(self.root / "postfix" / "etc"), "start-fg"],
                stdout=out,
                stderr=out,
            )
        wait_port(self.smtp_port, self.postfix, self.postfix_log)

    def stop(self) -> None:
        if self.postfix is not None and self.postfix.poll() is None:
            subprocess.run(
                ["postfix", "-c", str(self.root / "postfix" / "etc"), "stop"],
                capture_output=True,
                timeout=60,
            )
            try:
                self.postfix.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(self.postfix)
        self.postfix = None
        stop_process(self.dovecot)
        self.dovecot = None

    def pids(self) -> list[int]:
        """Every process of both: Postfix's master and its daemons, Dovecot's."""
        found: list[int] = []
        for process in (self.postfix, self.dovecot):
            if process is not None:
                found += tree(process.pid)
        return found

    def memory_pids(self) -> list[int]:
        """Dovecot's processes that serve IMAP: master, imap-login, imap, auth,
        anvil, log, config, stats (not Postfix, nor idle lmtp/pop3 ones)."""
        if self.dovecot is None:
            return []
        pids = tree(self.dovecot.pid)
        return [p for p in pids if _comm(p) not in ("lmtp", "pop3", "pop3-login", "")]
