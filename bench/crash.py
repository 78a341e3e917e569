#!/usr/bin/env python3
"""Crash safety: SIGKILL during a mixed load, restart, nothing acknowledged lost.

One data directory for the whole run; each round kills a server that is
still working through what the previous kills left behind (queue backlog,
expired entries bouncing, orphan files):

1. mixed load against the running server on loopback: inbound SMTP to local
   accounts (and to an alias forwarding to a remote domain), submission to
   remote domains whose relay is a closed port (queue entries retried every
   second and bounced after ``lifetime``), IMAP ``UID STORE +FLAGS``;
2. SIGKILL at a random moment 0.5-3 s into the load;
3. offline check of the dead server's files: every index row has its file
   (or, index schema 7, its bytes in the ``pending`` table: acknowledged on
   the index commit, file not settled into new/ yet; those bytes must be the
   message sent), every file the index does not know is an unacknowledged
   message or DSN (a crash between rename and commit), every file in new/
   and cur/ of a message sent is whole (ends with the bytes sent), every
   queue row has its file, every acknowledged queued message is still
   queued or bounced (a committed DSN in the sender's mailbox);
4. restart (time until the SMTP port answers 220), then over IMAP: every
   acknowledged message exactly once in each mailbox it was sent to, with
   the bytes sent (BODY.PEEK[] ends with them: the server only prepends
   trace headers; each message checked once), every acknowledged flag set,
   UIDVALIDITY unchanged.

After the last round the server is stopped with SIGTERM and the index must
equal the files exactly (no orphans left: recovery indexed them).
"Acknowledged" means a 250 to DATA or a tagged OK to STORE; nothing is
recorded before. Exit 1 if anything acknowledged is missing, duplicated or
the index and the files disagree.

Columns: kill s = load time before the SIGKILL; msgs / flags / queue =
acknowledged this round (inbound messages, flag changes, queued messages);
lost, dup (acknowledged message found twice), idx (index/file or queue
row/file disagreements, partial files, wrong bytes) = over everything
acknowledged so far; pend = index rows whose file was not settled yet at the
kill (their bytes in ``pending``; written out at the restart); orph = files
the kill left unindexed (never acknowledged; recovered at the restart);
unack+ = unacknowledged messages that turned up anyway (allowed); qlen =
queue entries at the kill; bounced = queued recipients bounced so far (a DSN
in the sender's mailbox); restart ms = from exec to the SMTP 220.

``--queue-list`` also runs ``estafeta queue list --json`` in a loop during
the load, as an operator watching the queue would.

    .venv/bin/python bench/crash.py [--rounds 20] [--seed N] [--keep] [--queue-list]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import imaplib
import json
import os
import random
import re
import secrets
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _harness import add_user, estafeta, free_port

DOMAIN = "bench.test"
REMOTE_DOMAINS = ("remote1.test", "remote2.test")
ALIAS = f"fwd@{DOMAIN}"
ALIAS_TARGET = "far@remote1.test"
FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "$Bench1", "$Bench2", "$Bench3")
DSN_SUBJECT = "Undelivered Mail Returned to Sender"
MESSAGE_ID = re.compile(rb"(?im)^Message-ID:[ \t]*(?:\r\n[ \t]+)?(<[^>\r\n]+>)")
FINAL_RECIPIENT = re.compile(rb"(?im)^Final-Recipient:[ \t]*rfc822;[ \t]*(\S+)")
ACTION = re.compile(rb"(?im)^Action:[ \t]*(\S+)")


# -- the server -----------------------------------------------------------------


@dataclass
class Ports:
    smtp: int
    submission: int
    imap: int
    dead_relay: int


def write_config(root: Path, ports: Ports, lifetime: str) -> Path:
    config = root / "estafeta.toml"
    config.write_text(
        f'hostname = "mx.{DOMAIN}"\n'
        f'data_dir = "{root / "data"}"\n'
        f'domains = ["{DOMAIN}"]\n'
        "[listen]\n"
        f'smtp = ["127.0.0.1:{ports.smtp}"]\n'
        f'submission = ["127.0.0.1:{ports.submission}"]\n'
        f'imap = ["127.0.0.1:{ports.imap}"]\n'
        "[log]\n"
        'level = "info"\n'
        # Plain-text AUTH on loopback only; cheap hashes keep logins fast.
        "[auth]\n"
        "allow_plaintext = true\n"
        "argon2_time_cost = 1\n"
        "argon2_memory_cost = 1024\n"
        "argon2_parallelism = 1\n"
        # No DNS here: no SPF/DKIM/DMARC on the MX.
        "[inbound]\n"
        "authenticate = false\n"
        # Every message is a first contact from the same client: no
        # greylisting, no pregreet pause (as the tests run it).
        "[greylist]\n"
        "enabled = false\n"
        "[screen]\n"
        "greeting_pause = 0\n"
        # Remote mail goes to a smarthost on a closed port: every attempt
        # fails at once, is retried within seconds, and bounces (a DSN to
        # the local sender) once older than `lifetime`.
        "[queue]\n"
        'retry_min = "1s"\n'
        'retry_max = "3s"\n'
        f'lifetime = "{lifetime}"\n'
        'connect_timeout = "2s"\n'
        "[queue.relay]\n"
        f'host = "127.0.0.1:{ports.dead_relay}"\n'
    )
    return config


class Server:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start ``estafeta serve``; seconds until the SMTP port answers 220."""
        assert self.process is None
        started = time.perf_counter()
        with open(self.log, "ab") as stream:
            self.process = subprocess.Popen(
                [*estafeta(self.config), "serve"], stdout=stream, stderr=stream
            )
        deadline = started + 60
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"estafeta exited with {self.process.returncode}: see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.settimeout(5)
                    if sock.recv(512).startswith(b"220"):
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.01)
        raise SystemExit(f"estafeta did not answer on port {self.port}: see {self.log}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code


# -- what was acknowledged ------------------------------------------------------


@dataclass
class Ledger:
    """Everything sent, and what of it the server acknowledged."""

    # Message-ID -> the accounts it must be in (inbound SMTP).
    attempted: dict[str, frozenset[str]] = field(default_factory=dict)
    acked: dict[str, frozenset[str]] = field(default_factory=dict)
    # Message-ID -> (account that gets the DSN, remote recipients) (queue).
    queue_attempted: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    queue_acked: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    # (account, uid) -> flags acknowledged (lower case).
    flags: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    flag_acks: int = 0
    # Message-ID -> (length, SHA-256) of the bytes sent (inbound SMTP).
    sent: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # (account, Message-ID) whose stored bytes were checked over IMAP.
    verified: set[tuple[str, str]] = field(default_factory=set)
    uidvalidity: dict[str, int] = field(default_factory=dict)
    tempfails: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Load:
    ports: Ports
    accounts: dict[str, str]  # address -> password
    ledger: Ledger
    round: int
    run_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    # Set just before the SIGKILL: client errors from then on are expected.
    killing: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def message(self, msgid: str, sender: str, to: str, size: int) -> bytes:
        head = (
            f"Message-ID: {msgid}\r\nFrom: <{sender}>\r\nTo: <{to}>\r\n"
            f"Subject: crash round {self.round}\r\nDate: {time_header()}\r\n\r\n"
        ).encode()
        return head + (b"y" * 70 + b"\r\n") * max(1, size // 72)

    def new_id(self, kind: str, worker: int, n: int) -> str:
        return f"<{self.run_id}.{self.round}.{kind}{worker}.{n}.{secrets.token_hex(3)}@load.test>"

    def _loop(self, name: str, session: Callable[[], None]) -> None:
        while not self.stop.is_set():
            try:
                session()
            except (OSError, smtplib.SMTPException, imaplib.IMAP4.error, EOFError) as exc:
                if self.stop.is_set() or self.killing.is_set():
                    return
                self.errors.append(f"{name}: {exc!r}")
                time.sleep(0.05)

    def smtp_worker(self, worker: int) -> None:
        rng = random.Random()
        names = sorted(self.accounts)
        ledger = self.ledger

        def session() -> None:
            with smtplib.SMTP("127.0.0.1", self.ports.smtp, timeout=15) as client:
                client.ehlo(f"load{worker}.test")
                n = 0
                while not self.stop.is_set():
                    n += 1
                    msgid = self.new_id("m", worker, n)
                    data_size = rng.choice((600, 2000, 6000))
                    if rng.random() < 0.15:
                        # To an alias that forwards to a remote domain: a queue
                        # entry whose DSN comes back to the (local) sender.
                        sender = rng.choice(names)
                        with ledger.lock:
                            ledger.queue_attempted[msgid] = (sender, (ALIAS_TARGET,))
                        data = self.message(msgid, sender, ALIAS, data_size)
                        try:
                            client.sendmail(sender, [ALIAS], data)
                        except smtplib.SMTPDataError:
                            with ledger.lock:
                                ledger.tempfails += 1
                            continue
                        with ledger.lock:
                            ledger.queue_acked[msgid] = (sender, (ALIAS_TARGET,))
                        continue
                    rcpts = rng.sample(names, 2 if rng.random() < 0.2 else 1)
                    data = self.message(msgid, "someone@elsewhere.test", rcpts[0], data_size)
                    with ledger.lock:
                        ledger.attempted[msgid] = frozenset(rcpts)
                        ledger.sent[msgid] = digest(data)
                    try:
                        refused = client.sendmail("someone@elsewhere.test", rcpts, data)
                    except smtplib.SMTPDataError:
                        with ledger.lock:
                            ledger.tempfails += 1
                        continue
                    with ledger.lock:
                        ledger.acked[msgid] = frozenset(r for r in rcpts if r not in refused)

        self._loop(f"smtp{worker}", session)

    def submission_worker(self, worker: int) -> None:
        rng = random.Random()
        ledger = self.ledger

        def session() -> None:
            user = rng.choice(sorted(self.accounts))
            with smtplib.SMTP("127.0.0.1", self.ports.submission, timeout=15) as client:
                client.ehlo(f"sub{worker}.test")
                client.login(user, self.accounts[user])
                n = 0
                while not self.stop.is_set():
                    n += 1
                    msgid = self.new_id("q", worker, n)
                    rcpts = tuple(
                        f"u{rng.randrange(100)}@{d}"
                        for d in rng.sample(REMOTE_DOMAINS, rng.choice((1, 2)))
                    )
                    with ledger.lock:
                        ledger.queue_attempted[msgid] = (user, rcpts)
                    data = self.message(msgid, user, rcpts[0], rng.choice((800, 3000)))
                    try:
                        client.sendmail(user, list(rcpts), data)
                    except smtplib.SMTPDataError:
                        with ledger.lock:
                            ledger.tempfails += 1
                        continue
                    with ledger.lock:
                        ledger.queue_acked[msgid] = (user, rcpts)

        self._loop(f"submission{worker}", session)

    def admin_worker(self, config: Path) -> None:
        """``estafeta queue list --json`` in a loop, as an operator would run it."""
        while not self.killing.is_set():
            done = subprocess.run(
                [*estafeta(config), "queue", "list", "--json"], capture_output=True, check=False
            )
            if done.returncode != 0 and not self.killing.is_set():
                self.errors.append(f"queue list: {done.stderr.decode(errors='replace')[:200]}")

    def imap_worker(self, worker: int) -> None:
        rng = random.Random()
        ledger = self.ledger

        def session() -> None:
            user = rng.choice(sorted(self.accounts))
            imap = imaplib.IMAP4("127.0.0.1", self.ports.imap, timeout=15)
            try:
                imap.login(user, self.accounts[user])
                typ, _ = imap.select("INBOX")
                if typ != "OK":
                    raise imaplib.IMAP4.error("SELECT failed")
                validity = int(imap.response("UIDVALIDITY")[1][0])
                with ledger.lock:
                    known = ledger.uidvalidity.setdefault(user, validity)
                if known != validity:
                    self.errors.append(f"imap{worker}: {user} UIDVALIDITY {known} -> {validity}")
                uids: list[int] = []
                n = 0
                while not self.stop.is_set():
                    if n % 30 == 0 or not uids:
                        typ, data = imap.uid("SEARCH", "ALL")
                        uids = [int(u) for u in data[0].split()] if typ == "OK" else []
                        if not uids:
                            time.sleep(0.05)
                            n += 1
                            continue
                    n += 1
                    # Half the time one of the newest messages (just delivered).
                    uid = rng.choice(uids[-20:] if rng.random() < 0.5 else uids)
                    flag = rng.choice(FLAGS)
                    typ, _ = imap.uid("STORE", str(uid), "+FLAGS", f"({flag})")
                    if typ == "OK":
                        with ledger.lock:
                            ledger.flags.setdefault((user, uid), set()).add(flag.lower())
                            ledger.flag_acks += 1
            finally:
                with contextlib.suppress(Exception):
                    imap.shutdown()

        self._loop(f"imap{worker}", session)


def time_header() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())


def digest(data: bytes) -> tuple[int, bytes]:
    return len(data), hashlib.sha256(data).digest()


def whole(stored: bytes, sent: tuple[int, bytes]) -> bool:
    """Whether ``stored`` is the message sent with trace headers prepended."""
    length, sha = sent
    return len(stored) >= length and hashlib.sha256(stored[len(stored) - length :]).digest() == sha


# -- checks on the files (server not running) -----------------------------------


def connect_ro(path: Path) -> sqlite3.Connection:
    """Read an index without changing it (no checkpoint of the WAL a kill left)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.Error:
        # A WAL whose -shm must be rebuilt needs write access: what the server does too.
        return sqlite3.connect(path)


def message_id_of(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(16384)
    except FileNotFoundError:
        return None
    return _message_id(head)


def _message_id(data: bytes) -> str | None:
    head = data[:16384]
    end = head.find(b"\r\n\r\n")
    match = MESSAGE_ID.search(head if end < 0 else head[: end + 2])
    return match.group(1).decode() if match else None


_dsn_cache: dict[Path, tuple[str | None, list[str]]] = {}


def parse_dsn(path: Path) -> tuple[str | None, list[str]]:
    """(original Message-ID, recipients whose action is "failed") of a DSN file."""
    cached = _dsn_cache.get(path)
    if cached is not None:
        return cached
    result = parse_dsn_bytes(path.read_bytes())
    _dsn_cache[path] = result
    return result


def parse_dsn_bytes(data: bytes) -> tuple[str | None, list[str]]:
    body = data[data.find(b"\r\n\r\n") :]
    found = MESSAGE_ID.search(body)
    failed = []
    for match in FINAL_RECIPIENT.finditer(body):
        action = ACTION.search(body, match.end())
        if action and action.group(1).lower() == b"failed":
            failed.append(match.group(1).decode().lower())
    return (found.group(1).decode() if found else None, failed)


@dataclass
class StoreCheck:
    rows_without_file: list[str] = field(default_factory=list)
    acked_not_indexed: list[str] = field(default_factory=list)
    unexplained_files: list[str] = field(default_factory=list)
    partial_files: list[str] = field(default_factory=list)  # in new/ or cur/, not whole
    orphans: int = 0  # files not (yet) indexed: unacknowledged, recovered at open
    pending: int = 0  # rows whose bytes wait in ``pending`` for their file
    tmp_files: int = 0
    journal_rows: int = 0
    bounced: set[tuple[str, str]] = field(default_factory=set)  # (Message-ID, recipient)

    @property
    def mismatches(self) -> int:
        return (
            len(self.rows_without_file)
            + len(self.acked_not_indexed)
            + len(self.unexplained_files)
            + len(self.partial_files)
            + self.journal_rows
        )


def check_store(mail_dir: Path, accounts: list[str], ledger: Ledger, exact: bool) -> StoreCheck:
    """Index rows against Maildir files, per account and mailbox."""
    result = StoreCheck()
    for address in accounts:
        local = address.split("@")[0]
        account = mail_dir / DOMAIN / local
        if not (account / "index.db").exists():
            continue
        conn = connect_ro(account / "index.db")
        try:
            boxes = conn.execute("SELECT id, name, dir FROM mailboxes").fetchall()
            rows_by_box = {
                box: {
                    r[0]
                    for r in conn.execute("SELECT file FROM messages WHERE mailbox_id = ?", (box,))
                }
                for box, _, _ in boxes
            }
            dsn_files = [
                r[0]
                for r in conn.execute("SELECT file FROM messages WHERE subject = ?", (DSN_SUBJECT,))
            ]
            result.journal_rows += conn.execute("SELECT count(*) FROM journal").fetchone()[0]
            try:  # index schema 7: acknowledged, file not settled yet
                pending = dict(conn.execute("SELECT file, data FROM pending").fetchall())
            except sqlite3.OperationalError:
                pending = {}
        finally:
            conn.close()
        for box, name, directory in boxes:
            folder = account / directory if directory else account
            prefix = f"{directory}/" if directory else ""
            files = set()
            for sub in ("new", "cur"):
                with contextlib.suppress(FileNotFoundError):
                    files.update(
                        f"{prefix}{sub}/{entry}"
                        for entry in os.listdir(folder / sub)
                        if not entry.startswith(".")
                    )
            with contextlib.suppress(FileNotFoundError):
                result.tmp_files += len(os.listdir(folder / "tmp"))
            rows = rows_by_box[box]
            for file in sorted(rows - files):
                data = pending.get(file)
                msgid = _message_id(data) if data is not None else None
                if data is not None and (
                    msgid not in ledger.sent or whole(data, ledger.sent[msgid])
                ):
                    result.pending += 1
                else:
                    result.rows_without_file.append(f"{address} {name} {file}")
            for file in sorted(files):
                try:
                    stored = (account / file).read_bytes()
                except FileNotFoundError:
                    continue
                msgid = _message_id(stored)
                if msgid in ledger.sent and not whole(stored, ledger.sent[msgid]):
                    result.partial_files.append(f"{address} {name} {file} {len(stored)} octets")
            for file in sorted(files - rows):
                # A crash between publishing the file and committing its row.
                msgid = message_id_of(account / file)
                where = f"{address} {name} {file} {msgid}"
                if msgid in ledger.acked and address in ledger.acked[msgid]:
                    result.acked_not_indexed.append(where)
                elif exact:
                    result.unexplained_files.append(where)
                elif msgid in ledger.attempted or _is_dsn(account / file):
                    result.orphans += 1
                else:
                    result.unexplained_files.append(where)
        for file in dsn_files:
            try:
                original, failed = parse_dsn(account / file)
            except FileNotFoundError:
                if file not in pending:
                    continue
                # Acknowledged, its file not settled yet: its bytes are in pending.
                original, failed = parse_dsn_bytes(pending[file])
            if original:
                result.bounced.update((original, rcpt) for rcpt in failed)
    return result


def _is_dsn(path: Path) -> bool:
    with open(path, "rb") as handle:
        return b"report-type=delivery-status" in handle.read(16384)


_eml_cache: dict[str, str | None] = {}


@dataclass
class QueueCheck:
    entries: int = 0
    rows_without_file: list[str] = field(default_factory=list)
    entries_without_message: int = 0
    orphan_files: int = 0
    queued: set[tuple[str, str]] = field(default_factory=set)  # (Message-ID, recipient)
    # (original Message-ID, recipient) of failures whose DSN is queued for
    # the (local) sender: the queue delivers every DSN, local ones too.
    dsn_queued: set[tuple[str, str]] = field(default_factory=set)

    @property
    def mismatches(self) -> int:
        return len(self.rows_without_file) + self.entries_without_message


def check_queue(queue_dir: Path) -> QueueCheck:
    result = QueueCheck()
    db = queue_dir / "queue.db"
    if not db.exists():
        return result
    conn = connect_ro(db)
    try:
        messages = {r[0] for r in conn.execute("SELECT id FROM messages")}
        entries = conn.execute("SELECT message_id, recipients FROM entries").fetchall()
    finally:
        conn.close()
    result.entries = len(entries)
    files = {p.stem for p in (queue_dir / "messages").glob("*.eml")}
    result.orphan_files = len(files - messages)
    result.rows_without_file = sorted(messages - files)
    for message, recipients in entries:
        if message not in messages:
            result.entries_without_message += 1
            continue
        if message not in _eml_cache:
            _eml_cache[message] = message_id_of(queue_dir / "messages" / f"{message}.eml")
        msgid = _eml_cache[message]
        if msgid:
            result.queued.update((msgid, r.lower()) for r in json.loads(recipients))
        path = queue_dir / "messages" / f"{message}.eml"
        with contextlib.suppress(FileNotFoundError):
            if _is_dsn(path):
                original, failed = parse_dsn(path)
                if original:
                    result.dsn_queued.update((original, rcpt) for rcpt in failed)
    return result


def check_queued(
    ledger: Ledger, queue: QueueCheck, store: StoreCheck
) -> tuple[list[str], int, int]:
    """(acknowledged queue recipients neither queued nor bounced, bounced, unacked present)."""
    lost = []
    bounced = 0
    with ledger.lock:
        acked = dict(ledger.queue_acked)
        attempted = dict(ledger.queue_attempted)
    for msgid, (_sender, rcpts) in acked.items():
        for rcpt in rcpts:
            key = (msgid, rcpt.lower())
            if key in store.bounced or key in queue.dsn_queued:
                bounced += 1
            elif key not in queue.queued:
                lost.append(f"{msgid} -> {rcpt}")
    present = (
        {m for m, _ in queue.queued}
        | {m for m, _ in store.bounced}
        | {m for m, _ in queue.dsn_queued}
    )
    unacked_present = sum(1 for m in attempted if m not in acked and m in present)
    return lost, bounced, unacked_present


# -- checks over IMAP (server running) -----------------------------------------


@dataclass
class ImapCheck:
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    flags_lost: list[str] = field(default_factory=list)
    wrong_bytes: list[str] = field(default_factory=list)
    verified: int = 0
    unacked_present: int = 0
    messages: int = 0
    uidvalidity_changed: list[str] = field(default_factory=list)


def fetch_mailbox(
    port: int, user: str, password: str
) -> tuple[int, list[tuple[int, set[str], str]]]:
    """(UIDVALIDITY, [(uid, flags, Message-ID)]) of the INBOX."""
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=120)
    try:
        imap.login(user, password)
        typ, data = imap.select("INBOX", readonly=True)
        if typ != "OK":
            raise SystemExit(f"SELECT INBOX of {user} failed: {data}")
        validity = int(imap.response("UIDVALIDITY")[1][0])
        if int(data[0]) == 0:
            return validity, []
        typ, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        if typ != "OK":
            raise SystemExit(f"FETCH of {user} failed: {data}")
    finally:
        with contextlib.suppress(Exception):
            imap.logout()
    records: list[list[bytes]] = []
    for item in data:
        if isinstance(item, tuple):
            records.append([item[0], item[1]])
        elif item and records:
            records[-1][0] += item
    result = []
    for meta, literal in records:
        uid = re.search(rb"UID (\d+)", meta)
        flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
        msgid = MESSAGE_ID.search(literal)
        if uid is None:
            continue
        result.append(
            (
                int(uid.group(1)),
                {f.decode().lower() for f in flags.group(1).split()} if flags else set(),
                msgid.group(1).decode() if msgid else "",
            )
        )
    return validity, result


def fetch_bodies(port: int, user: str, password: str, uids: list[int]) -> dict[int, bytes]:
    """UID -> BODY.PEEK[] of the INBOX messages ``uids``."""
    bodies: dict[int, bytes] = {}
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=120)
    try:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        for start in range(0, len(uids), 200):
            chunk = ",".join(str(u) for u in uids[start : start + 200])
            typ, data = imap.uid("FETCH", chunk, "(BODY.PEEK[])")
            if typ != "OK":
                raise SystemExit(f"FETCH BODY of {user} failed: {data}")
            for item in data:
                if isinstance(item, tuple):
                    uid = re.search(rb"UID (\d+)", item[0])
                    if uid is not None:
                        bodies[int(uid.group(1))] = item[1]
    finally:
        with contextlib.suppress(Exception):
            imap.logout()
    return bodies


def check_imap(port: int, accounts: dict[str, str], ledger: Ledger) -> ImapCheck:
    result = ImapCheck()
    with ledger.lock:
        acked = dict(ledger.acked)
        attempted = dict(ledger.attempted)
        flags = {key: set(value) for key, value in ledger.flags.items()}
        validities = dict(ledger.uidvalidity)
    present: set[str] = set()
    for user, password in sorted(accounts.items()):
        validity, messages = fetch_mailbox(port, user, password)
        result.messages += len(messages)
        if validities.get(user, validity) != validity:
            result.uidvalidity_changed.append(f"{user}: {validities[user]} -> {validity}")
        with ledger.lock:
            ledger.uidvalidity.setdefault(user, validity)
        counts = Counter(msgid for _, _, msgid in messages)
        present.update(counts)
        by_uid = {uid: uid_flags for uid, uid_flags, _ in messages}
        for msgid, targets in acked.items():
            if user not in targets:
                continue
            if counts[msgid] == 0:
                result.lost.append(f"{user} {msgid}")
            elif counts[msgid] > 1:
                result.duplicates.append(f"{user} {msgid} x{counts[msgid]}")
        # The bytes of each acknowledged message, once (new ones each round).
        with ledger.lock:
            unchecked = {
                uid: msgid
                for uid, _, msgid in messages
                if user in acked.get(msgid, ())
                and msgid in ledger.sent
                and (user, msgid) not in ledger.verified
            }
            sent = {msgid: ledger.sent[msgid] for msgid in unchecked.values()}
        bodies = fetch_bodies(port, user, password, sorted(unchecked)) if unchecked else {}
        for uid, msgid in sorted(unchecked.items()):
            body = bodies.get(uid)
            if body is None or not whole(body, sent[msgid]):
                size = "none" if body is None else f"{len(body)} octets"
                result.wrong_bytes.append(f"{user} UID {uid} {msgid}: {size}")
                continue
            result.verified += 1
            with ledger.lock:
                ledger.verified.add((user, msgid))
        for (owner, uid), wanted in flags.items():
            if owner != user:
                continue
            have = by_uid.get(uid)
            if have is None:
                result.flags_lost.append(f"{user} UID {uid}: message gone")
            elif wanted - have:
                result.flags_lost.append(f"{user} UID {uid}: missing {sorted(wanted - have)}")
    result.unacked_present = sum(1 for m in attempted if m not in acked and m in present)
    return result


# -- the run --------------------------------------------------------------------


def log_events(log: Path, offset: int) -> tuple[int, dict[str, int]]:
    """Counts of worrying lines in the server log since ``offset``."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        text = handle.read()
    counts = {
        "tracebacks": text.count(b"Traceback"),
        "errors": len(
            re.findall(rb'(?m)^\S+ (?:error|critical) |"level": "(?:error|critical)"', text)
        ),
        "queue_missing_file": text.count(b"queue_missing_file"),
    }
    return offset + len(text), counts


def seed(ports: Ports, accounts: dict[str, str], ledger: Ledger, run_id: str) -> None:
    """A few acknowledged messages per account, so IMAP has something to flag."""
    with smtplib.SMTP("127.0.0.1", ports.smtp, timeout=30) as client:
        for user in sorted(accounts):
            for n in range(5):
                msgid = f"<{run_id}.seed.{user.split('@')[0]}.{n}@load.test>"
                ledger.attempted[msgid] = frozenset([user])
                data = (
                    f"Message-ID: {msgid}\r\nFrom: <seed@elsewhere.test>\r\nTo: <{user}>\r\n"
                    f"Subject: seed\r\nDate: {time_header()}\r\n\r\nseed\r\n"
                ).encode()
                ledger.sent[msgid] = digest(data)
                client.sendmail("seed@elsewhere.test", [user], data)
                ledger.acked[msgid] = frozenset([user])


ROUND_DETAILS = (
    "lost_messages",
    "lost_flags",
    "lost_queue",
    "duplicates",
    "wrong_bytes",
    "index_rows_without_file",
    "acked_files_not_indexed",
    "unexplained_files",
    "partial_files",
    "queue_rows_without_file",
    "uidvalidity_changed",
)


LOST_KEYS = ("lost_messages", "lost_flags", "lost_queue")
MISMATCH_KEYS = (
    "wrong_bytes",
    "index_rows_without_file",
    "acked_files_not_indexed",
    "unexplained_files",
    "partial_files",
    "queue_rows_without_file",
    "uidvalidity_changed",
)
FINAL_MISMATCH_KEYS = (
    "index_rows_without_file",
    "acked_files_not_indexed",
    "files_not_indexed",
    "partial_files",
    "queue_rows_without_file",
)


@dataclass
class Run:
    args: argparse.Namespace
    root: Path
    ports: Ports
    accounts: dict[str, str]
    server: Server
    ledger: Ledger = field(default_factory=Ledger)
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    log_offset: int = 0

    @property
    def mail_dir(self) -> Path:
        return self.root / "data" / "mail"

    @property
    def queue_dir(self) -> Path:
        return self.root / "data" / "queue"

    def round(self, number: int, kill_at: float) -> dict[str, object]:
        ledger = self.ledger
        before = (len(ledger.acked), ledger.flag_acks, len(ledger.queue_acked))
        load = Load(self.ports, self.accounts, ledger, number, self.run_id)
        args = self.args
        threads = (
            [threading.Thread(target=load.smtp_worker, args=(n,)) for n in range(args.smtp)]
            + [
                threading.Thread(target=load.submission_worker, args=(n,))
                for n in range(args.submission)
            ]
            + [threading.Thread(target=load.imap_worker, args=(n,)) for n in range(args.imap)]
        )
        if args.queue_list:
            threads.append(threading.Thread(target=load.admin_worker, args=(self.server.config,)))
        for thread in threads:
            thread.start()
        time.sleep(kill_at)
        load.killing.set()
        self.server.kill()
        load.stop.set()
        for thread in threads:
            thread.join()

        # Offline: the files as the kill left them.
        store = check_store(self.mail_dir, sorted(self.accounts), ledger, exact=False)
        queue = check_queue(self.queue_dir)
        queue_lost, bounced, queue_unacked = check_queued(ledger, queue, store)

        # Restart, then over IMAP.
        restart = self.server.start()
        imap = check_imap(self.ports.imap, self.accounts, ledger)
        self.log_offset, events = log_events(self.server.log, self.log_offset)
        return {
            "round": number,
            "kill_after_s": round(kill_at, 3),
            "acked_messages": len(ledger.acked) - before[0],
            "acked_flag_changes": ledger.flag_acks - before[1],
            "acked_queue_messages": len(ledger.queue_acked) - before[2],
            "lost_messages": imap.lost,
            "lost_flags": imap.flags_lost,
            "lost_queue": queue_lost,
            "duplicates": imap.duplicates,
            "wrong_bytes": imap.wrong_bytes,
            "bytes_verified": imap.verified,
            "index_rows_without_file": store.rows_without_file,
            "acked_files_not_indexed": store.acked_not_indexed,
            "unexplained_files": store.unexplained_files,
            "partial_files": store.partial_files,
            "pending_after_kill": store.pending,
            "queue_rows_without_file": queue.rows_without_file,
            "queue_entries_without_message": queue.entries_without_message,
            "uidvalidity_changed": imap.uidvalidity_changed,
            "lost": len(imap.lost) + len(imap.flags_lost) + len(queue_lost),
            "mismatches": store.mismatches
            + queue.mismatches
            + len(imap.uidvalidity_changed)
            + len(imap.wrong_bytes),
            "orphan_files_after_kill": store.orphans,
            "tmp_files_after_kill": store.tmp_files,
            "queue_orphan_files_after_kill": queue.orphan_files,
            "unacked_present_messages": imap.unacked_present,
            "unacked_present_queue": queue_unacked,
            "queue_entries": queue.entries,
            "bounced_recipients": bounced,
            "messages_in_mailboxes": imap.messages,
            "restart_s": round(restart, 4),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "tempfails_so_far": ledger.tempfails,
            "client_errors_before_kill": load.errors[:20],
            "log": events,
        }

    def final(self) -> dict[str, object]:
        """A clean stop; then the index must equal the files exactly."""
        code = self.server.stop()
        store = check_store(self.mail_dir, sorted(self.accounts), self.ledger, exact=True)
        queue = check_queue(self.queue_dir)
        lost, bounced, _ = check_queued(self.ledger, queue, store)
        _, events = log_events(self.server.log, 0)
        return {
            "sigterm_exit_code": code,
            "index_rows_without_file": store.rows_without_file,
            "acked_files_not_indexed": store.acked_not_indexed,
            "files_not_indexed": store.unexplained_files,
            "partial_files": store.partial_files,
            # A clean stop settles every file: nothing may wait in ``pending``.
            "pending_rows": store.pending,
            "journal_rows": store.journal_rows,
            "tmp_files": store.tmp_files,
            "queue_rows_without_file": queue.rows_without_file,
            "queue_entries_without_message": queue.entries_without_message,
            "queue_orphan_files": queue.orphan_files,
            "queue_entries": queue.entries,
            "lost_queue": lost,
            "bounced_recipients": bounced,
            "mismatches": store.mismatches + queue.mismatches + queue.orphan_files + store.pending,
            "log": events,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--smtp", type=int, default=4, help="concurrent inbound SMTP sessions")
    parser.add_argument("--submission", type=int, default=2, help="concurrent submission sessions")
    parser.add_argument("--imap", type=int, default=2, help="concurrent IMAP sessions")
    parser.add_argument("--min-load", type=float, default=0.5, help="seconds before the kill, min")
    parser.add_argument("--max-load", type=float, default=3.0, help="seconds before the kill, max")
    parser.add_argument("--lifetime", default="15s", help="queue lifetime before a bounce")
    parser.add_argument("--seed", type=int, help="random seed for the kill moments")
    parser.add_argument(
        "--queue-list",
        action="store_true",
        help="also run `estafeta queue list --json` in a loop during the load",
    )
    parser.add_argument("--dir", help="directory for the data (default: a temp dir under /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    rng = random.Random(args.seed)

    root = Path(tempfile.mkdtemp(prefix="estafeta-crash-", dir=args.dir or "/var/tmp"))
    ports = Ports(free_port(), free_port(), free_port(), free_port())
    config = write_config(root, ports, args.lifetime)
    accounts = {f"u{i}@{DOMAIN}": secrets.token_urlsafe(18) for i in range(args.accounts)}
    for address, password in accounts.items():
        add_user(config, address, password)
    subprocess.run(
        [*estafeta(config), "alias", "add", ALIAS, ALIAS_TARGET], check=True, capture_output=True
    )
    run = Run(args, root, ports, accounts, Server(config, ports.smtp, root / "estafeta.log"))

    print(f"estafeta crash safety: {args.rounds} rounds, data in {root}")
    print(
        f"load: {args.smtp} SMTP + {args.submission} submission + {args.imap} IMAP sessions, "
        f"SIGKILL after {args.min_load}-{args.max_load} s (--seed {args.seed}); "
        f"queue lifetime {args.lifetime}" + ("; queue list in a loop" if args.queue_list else "")
    )
    print(
        f"{'round':>5} {'kill s':>6} {'msgs':>5} {'flags':>5} {'queue':>5} "
        f"{'lost':>4} {'dup':>3} {'idx':>3} {'pend':>4} {'orph':>4} {'unack+':>6} {'qlen':>5} "
        f"{'bounced':>7} {'restart ms':>10}"
    )
    rounds: list[dict] = []  # type: ignore[type-arg]
    unacked_before = 0
    try:
        startup = run.server.start()
        seed(ports, accounts, run.ledger, run.run_id)
        for number in range(1, args.rounds + 1):
            r = run.round(number, rng.uniform(args.min_load, args.max_load))
            rounds.append(r)
            bad = r["lost"] + len(r["duplicates"]) + r["mismatches"]
            unacked = r["unacked_present_messages"] + r["unacked_present_queue"]
            r["unacked_present_new"] = unacked - unacked_before
            unacked_before = unacked
            print(
                f"{number:>5} {r['kill_after_s']:>6.2f} {r['acked_messages']:>5} "
                f"{r['acked_flag_changes']:>5} {r['acked_queue_messages']:>5} "
                f"{r['lost']:>4} {len(r['duplicates']):>3} {r['mismatches']:>3} "
                f"{r['pending_after_kill']:>4} {r['orphan_files_after_kill']:>4} "
                f"{r['unacked_present_new']:>6} "
                f"{r['queue_entries']:>5} {r['bounced_recipients']:>7} "
                f"{r['restart_s'] * 1000:>10.0f}" + ("  <-- FAILED" if bad else ""),
                flush=True,
            )
            for key in ROUND_DETAILS if bad else ():
                for line in r[key][:10]:
                    print(f"      {key}: {line}")
        final = run.final()
    except BaseException:
        if run.server.process is not None:
            run.server.kill()
        print(f"data kept in {root}")
        raise

    ledger = run.ledger
    # A loss stays visible in every later round: count each one once.
    lost = len(
        {f"{key} {item}" for r in rounds for key in LOST_KEYS for item in r[key]}
        | {f"lost_queue {item}" for item in final["lost_queue"]}
    )
    duplicates = len({item for r in rounds for item in r["duplicates"]})
    mismatches = (
        len(
            {item for r in rounds for key in MISMATCH_KEYS for item in r[key]}
            | {item for key in FINAL_MISMATCH_KEYS for item in final[key]}
        )
        + max((r["queue_entries_without_message"] for r in rounds), default=0)
        + final["queue_entries_without_message"]
        + final["journal_rows"]
        + final["pending_rows"]
        + final["queue_orphan_files"]
    )
    restarts = sorted(r["restart_s"] for r in rounds)
    totals = {
        "rounds": len(rounds),
        "acked_messages": len(ledger.acked),
        "acked_flag_changes": ledger.flag_acks,
        "acked_queue_messages": len(ledger.queue_acked),
        "attempted_messages": len(ledger.attempted),
        "attempted_queue_messages": len(ledger.queue_attempted),
        "tempfails": ledger.tempfails,
        "lost": lost,
        "duplicates": duplicates,
        "mismatches": mismatches,
        "orphan_files_after_kills": sum(r["orphan_files_after_kill"] for r in rounds),
        "pending_after_kills": sum(r["pending_after_kill"] for r in rounds),
        "bytes_verified": len(ledger.verified),
        "wrong_bytes": len({item for r in rounds for item in r["wrong_bytes"]}),
        "unacked_present_messages": rounds[-1]["unacked_present_messages"] if rounds else 0,
        "unacked_present_queue": rounds[-1]["unacked_present_queue"] if rounds else 0,
        "bounced_recipients": final["bounced_recipients"],
        "restart_s_median": restarts[len(restarts) // 2] if restarts else None,
        "restart_s_max": restarts[-1] if restarts else None,
        "first_start_s": round(startup, 4),
    }
    failed = bool(lost or duplicates or mismatches or final["sigterm_exit_code"] != 0)
    print(
        f"total: {totals['acked_messages']} messages, {totals['acked_flag_changes']} flag "
        f"changes, {totals['acked_queue_messages']} queued messages acknowledged over "
        f"{len(rounds)} kills; lost {lost}, duplicates {duplicates}, "
        f"index/file mismatches {mismatches} (wrong bytes {totals['wrong_bytes']} of "
        f"{totals['bytes_verified']} messages checked byte for byte)"
    )
    print(
        f"unacknowledged but present (allowed): {totals['unacked_present_messages']} messages, "
        f"{totals['unacked_present_queue']} queued; orphan files found after kills "
        f"{totals['orphan_files_after_kills']}; rows with the file not settled at the kill "
        f"(bytes in pending) {totals['pending_after_kills']}"
    )
    if restarts:
        print(
            f"restart until SMTP answers: median {restarts[len(restarts) // 2] * 1000:.0f} ms, "
            f"max {restarts[-1] * 1000:.0f} ms"
        )
    print(
        f"after SIGTERM (exit {final['sigterm_exit_code']}): "
        f"{len(final['index_rows_without_file'])} index rows without file, "
        f"{len(final['files_not_indexed']) + len(final['acked_files_not_indexed'])} files "
        f"not indexed, {len(final['partial_files'])} partial files, "
        f"{final['pending_rows']} pending rows, {final['journal_rows']} journal rows, "
        f"{len(final['queue_rows_without_file'])} queue rows without file, "
        f"{final['queue_orphan_files']} queue orphan files; {final['queue_entries']} entries "
        f"queued, {final['bounced_recipients']} recipients bounced"
    )
    events = final["log"]
    print(
        f"server log: {events['tracebacks']} tracebacks, {events['errors']} error lines, "
        f"{events['queue_missing_file']} queue_missing_file"
    )

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: v for k, v in vars(args).items() if k != "results"},
        "cores": os.cpu_count(),
        "failed": failed,
        "totals": totals,
        "final": final,
        "rounds": rounds,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {out}")
    if failed or args.keep:
        print(f"data kept in {root}")
    else:
        shutil.rmtree(root)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
