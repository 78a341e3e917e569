#!/usr/bin/env python3
"""estafeta side by side with Postfix + Dovecot, same load, one run.

Installs Postfix and Dovecot if missing (system services left stopped and
disabled), runs private instances of both stacks and of estafeta from a
temporary directory on 127.0.0.1 high ports, and measures, alternating the
order every round:

  P1  durable SMTP ingest, messages/s until stored AND visible in the Maildir
      (4 KiB messages, 1, 20 and 50 sessions), and server CPU per 1,000;
  P2  IMAP on a 100,000-message INBOX: SELECT, FETCH 1:* (UID FLAGS
      RFC822.SIZE ENVELOPE), SEARCH HEADER, SEARCH BODY, SORT (DATE),
      SORT (SUBJECT), THREAD REFERENCES, STORE 1:* +/-\\Seen;
  P3  memory (RSS and PSS sums) with 10,000 connections in IDLE, and the
      time until a delivery is announced to all idle connections of its
      account;
  P4  POP3 LIST + RETR of 1,000 messages.

A third side, "estafeta (cluster)", runs P1 and P2 (not P3, P4) on the
cluster backend: the same estafeta with [store] backend = "cluster" on a
private PostgreSQL 15 and moto's S3 (bodies in PostgreSQL with
--cluster-bodies database; --no-cluster leaves it out).

Writes bench/results/<date>.json and .png and prints a table of medians and
ratios (estafeta / peer, cluster / local estafeta). See bench/README.md.

    .venv/bin/python bench/compare.py [--quick] [--rounds 3] [--profile P2]
        [--no-cluster | --cluster-bodies database]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _cluster import NODE, Backends, ClusterEstafeta

from _harness import free_port
from _load import (
    IdleFleet,
    IMAPClient,
    bigbox_message,
    ingest_message,
    pop3_retr_all,
    pop_message,
    raise_open_files,
    smtp_ingest,
    smtp_send,
)
from _procs import cpu_seconds, memory_kib, names
from _servers import (
    CHEAP_ARGON2,
    DOMAIN,
    Estafeta,
    PostfixDovecot,
    ensure_packages,
    status_messages,
    versions,
)

HERE = Path(__file__).resolve().parent
SESSIONS = (1, 20, 50)
HEADER_SEARCH = 'SEARCH HEADER Subject "topic 42"'  # 2 % of the big INBOX
BODY_SEARCH = "SEARCH BODY zebracorn"  # 0.1 %
SORT_DATE = "SORT (DATE) UTF-8 ALL"  # rfc5256: every message, by sent date
SORT_SUBJECT = "SORT (SUBJECT) UTF-8 ALL"
THREAD = "THREAD REFERENCES UTF-8 ALL"  # threads of 4 (bigbox_message's In-Reply-To)
SAME = 0.05  # ratios within 5 % of 1 are "same"

Server = Estafeta | PostfixDovecot  # ClusterEstafeta is an Estafeta
SIDES = ("estafeta", "cluster", "peer")
CLUSTER_PHASES = ("P1", "P2")  # what runs on the cluster side


def thread_counts(lines: list[bytes]) -> tuple[int, int]:
    """(threads, messages) in a "* THREAD" response (rfc5256:4): the
    top-level parenthesized lists, and the numbers in all of them."""
    threads = messages = depth = 0
    for line in lines:
        if not line.startswith(b"* THREAD"):
            continue
        for token in line[8:].replace(b"(", b" ( ").replace(b")", b" ) ").split():
            if token == b"(":
                threads += depth == 0
                depth += 1
            elif token == b")":
                depth -= 1
            else:
                messages += 1
    return threads, messages


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- results -----------------------------------------------------------------


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "lower" or "higher"
    values: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})

    def median(self, side: str) -> float | None:
        return statistics.median(self.values[side]) if self.values[side] else None

    def ratio(self, mine: str = "estafeta", theirs: str = "peer") -> float | None:
        """Median of side ``mine`` over that of ``theirs``; the table has
        estafeta/peer and cluster/estafeta (cluster over local)."""
        a, b = self.median(mine), self.median(theirs)
        if a is None or b is None or b == 0:
            return None
        return a / b

    def verdict(self, mine: str = "estafeta", theirs: str = "peer") -> str:
        ratio = self.ratio(mine, theirs)
        if ratio is None:
            return "-"
        if abs(ratio - 1) <= SAME:
            return "same"
        good = ratio > 1 if self.better == "higher" else ratio < 1
        factor = ratio if ratio >= 1 else 1 / ratio
        return f"{'better' if good else 'worse'} ({factor:.1f}x)"


class Results:
    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self.rounds: list[dict[str, object]] = []

    def add(self, key: str, label: str, unit: str, better: str, side: str, value: float) -> None:
        metric = self.metrics.setdefault(key, Metric(key, label, unit, better))
        metric.values[side].append(value)


def side(server: Server) -> str:
    if isinstance(server, PostfixDovecot):
        return "peer"
    return "cluster" if isinstance(server, ClusterEstafeta) else "estafeta"


# -- the run -----------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results = Results()
        self.root = Path(tempfile.mkdtemp(prefix="estafeta-compare-", dir=args.dir))
        self.root.chmod(0o755)  # Postfix's lmtp client and Dovecot's users walk through it
        limit = args.p3_connections + 200
        self.estafeta = Estafeta(
            self.root / "estafeta", free_port(), free_port(), free_port(), max_connections=limit
        )
        # P3's estafeta: same code and defaults, cheap hashes for its idle
        # accounts only (the peer's idle accounts get the same cheap hashes).
        self.estafeta_idle = Estafeta(
            self.root / "estafeta-idle",
            free_port(),
            free_port(),
            free_port(),
            max_connections=limit,
            cheap_auth=True,
            label="estafeta (P3)",
        )
        self.peer = PostfixDovecot(
            self.root / "peer",
            free_port(),
            free_port(),
            free_port(),
            max_connections=max(1000, args.p3_peer_connections + 200),
        )
        # The cluster side: P1 and P2 only, so no P3 connection limit.
        self.cluster: ClusterEstafeta | None = None
        if not args.no_cluster:
            self.cluster = ClusterEstafeta(
                self.root / "estafeta-cluster",
                free_port(),
                free_port(),
                free_port(),
                backends=Backends(self.root / "cluster-backends", args.cluster_bodies),
            )
        self.passwords: dict[str, str] = {}
        self.idle_passwords: dict[str, str] = {}
        self.checks: dict[str, object] = {}
        self.loads: list[tuple[str, list[float]]] = []
        self._profilers: list[subprocess.Popen[bytes]] = []

    def password(self, address: str) -> str:
        return self.passwords.get(address) or self.idle_passwords[address]

    def load_sample(self, what: str) -> None:
        self.loads.append((what, [round(x, 2) for x in os.getloadavg()]))

    def servers(self) -> list[Server]:
        """The sides of a round, local estafeta first."""
        return [self.estafeta, *([self.cluster] if self.cluster else []), self.peer]

    # -- setup -------------------------------------------------------------

    def setup(self) -> None:
        args = self.args

        def new() -> str:
            return secrets.token_urlsafe(18)

        accounts = ["big", "pop"] + [f"in-r{r}-c{c}" for r in range(args.rounds) for c in SESSIONS]
        self.passwords = {f"{a}@{DOMAIN}": new() for a in accounts}
        self.idle_passwords = {f"idle{i:04d}@{DOMAIN}": new() for i in range(args.p3_accounts)}
        idle_default = args.p3_default_hashes
        cluster = self.cluster
        if cluster is not None:
            assert cluster.backends is not None
            what = " and moto's S3" if args.cluster_bodies == "s3" else " (bodies in it too)"
            say(f"starting a private PostgreSQL 15{what} for the cluster side ...")
            cluster.backends.start()
        for server in (self.estafeta, self.estafeta_idle, *self.servers()[1:]):
            server.write_config()
        say(f"data in {self.root}; creating accounts (default hash cost) ...")
        self.estafeta.add_users(self.passwords)
        self.peer.add_users(self.passwords)
        (self.estafeta if idle_default else self.estafeta_idle).add_users(self.idle_passwords)
        self.peer.add_users(self.idle_passwords, cheap=not idle_default)
        big = f"big@{DOMAIN}"
        pop = f"pop@{DOMAIN}"
        build: dict[str, float] = {}
        if cluster is not None:
            # Into PostgreSQL, by the code of `estafeta user add` on a node
            # (no pop or idle accounts: P3 and P4 do not run on it).
            t0 = time.perf_counter()
            cluster.add_users({a: p for a, p in self.passwords.items() if a != pop})
            build["cluster_accounts"] = round(time.perf_counter() - t0, 1)

        n = args.p2_messages
        say(f"building the P2 INBOX of {n} messages for each side (not measured) ...")
        t0 = time.perf_counter()
        self.estafeta.fill(big, (bigbox_message(i, big) for i in range(n)))
        t_est = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.peer.fill(big, (bigbox_message(i, big) for i in range(n)))
        t_peer = time.perf_counter() - t0
        say(f"  estafeta store API (fsync'd): {t_est:.0f} s; Maildir files: {t_peer:.0f} s")
        if cluster is not None:
            # The same store API on the cluster node (ClusterStore, as the
            # CLI opens it): bodies PUT, then rows committed in PostgreSQL,
            # 1,000 messages a batch; then the node's full-text index, which
            # reads every body back (the node's body cache is warm after).
            t0 = time.perf_counter()
            cluster.fill(big, (bigbox_message(i, big) for i in range(n)))
            build["cluster"] = round(time.perf_counter() - t0, 1)
            say(
                f"  cluster store API (PostgreSQL + {args.cluster_bodies}):"
                f" {build['cluster']:.0f} s"
            )
        self.estafeta.fill(pop, (pop_message(i) for i in range(args.p4_messages)))
        self.peer.fill(pop, (pop_message(i) for i in range(args.p4_messages)))
        idle_server = self.estafeta if idle_default else self.estafeta_idle
        for address in self.idle_passwords:
            idle_server.fill(address, (pop_message(i, 2048) for i in range(10)))
            self.peer.fill(address, (pop_message(i, 2048) for i in range(10)))
        self.checks["build_seconds"] = {
            "estafeta": round(t_est, 1),
            "peer_files": round(t_peer, 1),
            **build,
        }

        say(
            "starting "
            + ", ".join(s.label for s in self.servers()[:-1])
            + ", Postfix and Dovecot ..."
        )
        for server in self.servers():
            server.start()
        t0 = time.perf_counter()
        for user in (big, pop, f"idle*@{DOMAIN}"):
            self.peer.doveadm("index", "-u", user, "INBOX")
        self.checks["build_seconds"]["peer_doveadm_index"] = round(time.perf_counter() - t0, 1)  # type: ignore[index]
        # One unmeasured pass of P2 and P4 on each: Dovecot fills its cache
        # file with the fields clients ask for (as it would have after the
        # first client in a real deployment); both get a warm page cache.
        say("warm-up pass of P2 and P4 on each side (not measured; the cluster: P2 only) ...")
        for server in self.servers():
            self.p2(server, record=False)
            if server is not self.cluster:
                self.p4(server, record=False)

    # -- phases ------------------------------------------------------------

    def p1(self, server: Server, round_no: int, sessions: int) -> None:
        args = self.args
        account = f"in-r{round_no}-c{sessions}@{DOMAIN}"
        count = args.p1_messages if sessions > 1 else max(50, args.p1_messages // 5)
        count -= count % sessions
        messages = [ingest_message(i, account, args.p1_size) for i in range(count)]
        # Visible: files in the Maildir, or on the cluster what the node's
        # IMAP STATUS says (ClusterEstafeta.counter has why).
        with server.counter(account, self.password(account)) as visible_count:
            if (seen := visible_count()) != 0:
                raise RuntimeError(f"{server.label}: {account} holds {seen} messages already")
            groups = self._pid_groups(server)
            cpu0 = {name: cpu_seconds(pids) for name, pids in groups.items()}
            result = asyncio.run(smtp_ingest(server.smtp_port, sessions, messages, account))
            acked = result.started + result.seconds
            deadline = time.perf_counter() + 600
            while (seen := visible_count()) < count:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{server.label}: {seen} of {count} messages visible")
                time.sleep(0.005)
            visible = max(time.perf_counter(), acked)
            if (seen := visible_count()) != count:
                raise RuntimeError(f"{server.label}: {seen} messages, sent {count}")
            # The trees again: processes started during the run count too.
            groups = self._pid_groups(server)
            cpus = {name: cpu_seconds(pids) - cpu0.get(name, 0.0) for name, pids in groups.items()}
        cpu = sum(cpus.values())
        elapsed = visible - result.started
        # What an IMAP client sees, and the last body read back (not timed).
        self._check_status(server, account, count, min(len(m) for m in messages))
        lat = sorted(result.latencies)
        s = side(server)
        if len(cpus) > 1:
            self.checks.setdefault(f"P1 {s} CPU s/1000 msg by process", {})[  # type: ignore[index]
                f"r{round_no + 1} {sessions} sess."
            ] = {name: round(v / count * 1000, 3) for name, v in cpus.items()}
        add = self.results.add
        add(
            f"P1.c{sessions}.rate",
            f"P1 ingest {sessions} sess.",
            "msg/s",
            "higher",
            s,
            count / elapsed,
        )
        add(
            f"P1.c{sessions}.cpu",
            f"P1 CPU /1000 msg, {sessions} sess.",
            "s",
            "lower",
            s,
            cpu / count * 1000,
        )
        add(
            f"P1.c{sessions}.ack_rate",
            f"P1 acked (250) {sessions} sess.",
            "msg/s",
            "higher",
            s,
            count / result.seconds,
        )
        add(
            f"P1.c{sessions}.p50",
            f"P1 p50 latency {sessions} sess.",
            "ms",
            "lower",
            s,
            statistics.median(lat) * 1000,
        )
        say(
            f"  P1 {server.label:<18} {sessions:>2} sessions: {count / elapsed:7.1f} msg/s visible "
            f"({count / result.seconds:.1f}/s acked), CPU {cpu / count * 1000:.2f} s/1000"
        )

    def p1_all(self, server: Server, round_no: int) -> None:
        for sessions in SESSIONS:
            self.p1(server, round_no, sessions)

    @staticmethod
    def _pid_groups(server: Server) -> dict[str, list[int]]:
        """The processes whose CPU counts, by part (the cluster side: the
        node, PostgreSQL and moto; the others: one group)."""
        if isinstance(server, ClusterEstafeta):
            return server.pid_groups()
        return {"all": server.pids()}

    def _check_status(self, server: Server, account: str, count: int, size: int) -> None:
        client = IMAPClient(server.imap_port)
        try:
            client.login(account, self.password(account))
            found = status_messages(client)
            if found != count:
                raise RuntimeError(
                    f"{server.label}: IMAP STATUS says {found} messages, sent {count}"
                )
            client.command("EXAMINE INBOX")
            body = client.command("FETCH * BODY.PEEK[]")
            if body.untagged < 1 or body.octets < size:
                raise RuntimeError(f"{server.label}: FETCH * BODY.PEEK[] gave {body.octets} octets")
        finally:
            client.close()

    def p2(self, server: Server, record: bool = True) -> None:
        big = f"big@{DOMAIN}"
        client = IMAPClient(server.imap_port)
        login = client.login(big, self.password(big))
        steps = [
            ("select", "SELECT", "SELECT INBOX"),
            ("fetch", "FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)", ""),
            ("search_header", "SEARCH HEADER Subject", HEADER_SEARCH),
            ("search_body", "SEARCH BODY", BODY_SEARCH),
            ("sort_date", "SORT (DATE)", SORT_DATE),
            ("sort_subject", "SORT (SUBJECT)", SORT_SUBJECT),
            ("thread", "THREAD REFERENCES", THREAD),
            ("store_set", "STORE 1:* +FLAGS (\\Seen)", ""),
            ("store_clear", "STORE 1:* -FLAGS (\\Seen)", ""),
        ]
        times: dict[str, float] = {}
        for key, label, command in steps:
            reply = client.command(command or label)
            times[key] = reply.seconds
            if key == "fetch" and reply.untagged != self.args.p2_messages:
                raise RuntimeError(f"{server.label}: FETCH gave {reply.untagged} messages")
            if key.startswith("search"):
                self.checks.setdefault(f"P2 {key} hits", {})[side(server)] = len(reply.search)  # type: ignore[index]
            if key.startswith("sort"):
                # Every message, each once: the same count on both sides.
                found = len(set(reply.search))
                self.checks.setdefault(f"P2 {key} messages", {})[side(server)] = found  # type: ignore[index]
                if found != self.args.p2_messages or len(reply.search) != found:
                    raise RuntimeError(f"{server.label}: {label} gave {len(reply.search)} numbers")
            if key == "thread":
                threads, messages = thread_counts(reply.lines)
                self.checks.setdefault("P2 thread threads", {})[side(server)] = threads  # type: ignore[index]
                if messages != self.args.p2_messages:
                    raise RuntimeError(f"{server.label}: THREAD holds {messages} messages")
        client.close()
        if not record:
            return
        s = side(server)
        add = self.results.add
        add("P2.login", "IMAP LOGIN (default hash)", "s", "lower", s, login.seconds)
        for key, label, _command in steps:
            add(f"P2.{key}", f"P2 {label}", "s", "lower", s, times[key])
        say(
            f"  P2 {server.label:<18} "
            + " ".join(f"{k}={v:.2f}s" for k, v in times.items())
            + f" (login {login.seconds:.2f}s)"
        )

    def settle(self, server: Estafeta) -> None:
        """Before P2 on an estafeta side, not timed: wait until its
        full-text index holds the mail P1 just delivered. Both backends
        index new mail in the background once the store's writer is idle,
        a batch at a time in the writer thread; the local store reads the
        files (in a helper process), a cluster node reads the bodies back
        from the object store, and a store call such as SELECT's waits
        behind the batch under way: on the cluster, P2 would time P1's
        aftermath. The wait is in the JSON's checks."""
        accounts = [a for a in self.passwords if a.startswith("in-")]
        started = time.perf_counter()
        while (left := server.unindexed(accounts)) > 0:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"{server.label}: {left} messages not in the full-text index")
            time.sleep(0.1)
        waited = round(time.perf_counter() - started, 2)
        key = "P2 waited (s) for the full-text index of P1's mail"
        self.checks.setdefault(key, {}).setdefault(side(server), []).append(waited)  # type: ignore[attr-defined]

    def p3(self, server: Server) -> None:
        s = side(server)
        n = self.args.p3_connections if s == "estafeta" else self.args.p3_peer_connections
        if n <= 0:
            say(f"  P3 {server.label}: skipped (--p3-peer-connections 0)")
            return
        addresses = list(self.idle_passwords)
        logins = [(addresses[i % len(addresses)], "") for i in range(n)]
        logins = [(a, self.idle_passwords[a]) for a, _ in logins]
        before_rss, before_pss = memory_kib(server.memory_pids())
        base_processes = len(server.memory_pids())
        # Held by worker processes, from source addresses spread over
        # 127.0.0.0/8 (one address has ~28,000 ephemeral ports).
        fleet = IdleFleet(server.imap_port, logins, per_address=self.args.p3_per_address)
        last = [time.monotonic()]

        def progress(done: int) -> None:
            if time.monotonic() - last[0] > 30:
                last[0] = time.monotonic()
                say(f"  P3 {server.label}: {done}/{n} in IDLE")

        try:
            opened = fleet.open(progress)
            time.sleep(3)
            pids = server.memory_pids()
            rss, pss = memory_kib(pids)
            counts = names(pids)
            processes = len(pids)
            announced = self.p3_announce(server, fleet, addresses[0], logins)
        finally:
            fleet.close()
        # Let the server wind the sessions down before the next measurement.
        deadline = time.monotonic() + 300
        while len(server.memory_pids()) > base_processes + 5 and time.monotonic() < deadline:
            time.sleep(0.5)
        add = self.results.add
        # Sums and times at different counts (the peer is capped, see
        # --p3-peer-connections) are different metrics.
        tag = "" if self.args.p3_connections == self.args.p3_peer_connections else f".{n}"
        add(f"P3.rss{tag}", f"P3 RSS sum, {n} IDLE", "MiB", "lower", s, rss / 1024)
        add(f"P3.pss{tag}", f"P3 PSS sum, {n} IDLE", "MiB", "lower", s, pss / 1024)
        add("P3.per_conn", "P3 PSS per IDLE conn.", "KiB", "lower", s, (pss - before_pss) / n)
        add(f"P3.open{tag}", f"P3 open {n} IDLE (cheap hash)", "s", "lower", s, opened)
        wanted = announced["connections"]
        for last_ms in announced["last_ms"]:
            add(
                f"P3.announce{tag}",
                f"P3 EXISTS to all {wanted} idle conns. of an account, {n} IDLE",
                "ms",
                "lower",
                s,
                last_ms,
            )
        self.checks.setdefault("P3 processes", {})[s] = counts  # type: ignore[index]
        self.checks.setdefault("P3 announced", {})[s] = announced  # type: ignore[index]
        self.checks.setdefault("P3 source addresses", {})[s] = fleet.addresses  # type: ignore[index]
        say(
            f"  P3 {server.label:<16} {n} IDLE: RSS {rss / 1024:.0f} MiB, PSS {pss / 1024:.0f} MiB "
            f"(before {before_rss / 1024:.0f}/{before_pss / 1024:.0f}; "
            f"{(pss - before_pss) / n:.2f} KiB PSS each), {processes} processes, "
            f"opened in {opened:.1f} s; a delivery announced to all {wanted} IDLE connections "
            f"of its account within {', '.join(f'{v:.0f}' for v in announced['last_ms'])} ms"
        )

    def p3_announce(
        self, server: Server, fleet: IdleFleet, target: str, logins: list[tuple[str, str]]
    ) -> dict[str, Any]:
        """Three messages over SMTP to ``target``, one at a time: from the
        final dot to the ``* n EXISTS`` of each of its IDLE connections."""
        wanted = sum(1 for address, _ in logins if address == target)
        result: dict[str, Any] = {"connections": wanted}
        lasts, medians, heard, acks = [], [], [], []
        for attempt in range(3):
            fleet.mark()
            message = pop_message(10_000 + attempt, 2048)
            dot, acked = smtp_send(server.smtp_port, target, message)
            times = fleet.exists(target, wanted, timeout=60)
            heard.append(len(times))
            acks.append(round((acked - dot) * 1000, 1))
            if times:
                lasts.append(round((times[-1] - dot) * 1000, 1))
                medians.append(round((statistics.median(times) - dot) * 1000, 1))
            time.sleep(1)
        result.update(last_ms=lasts, median_ms=medians, heard=heard, smtp_250_ms=acks)
        if min(heard) < wanted:
            say(f"  P3 {server.label}: only {heard} of {wanted} connections heard EXISTS")
        return result

    def p4(self, server: Server, record: bool = True) -> None:
        pop = f"pop@{DOMAIN}"
        result = pop3_retr_all(server.pop3_port, pop, self.password(pop))
        if result.messages != self.args.p4_messages:
            raise RuntimeError(f"{server.label}: POP3 LIST gave {result.messages}")
        if not record:
            return
        s = side(server)
        self.results.add(
            "P4.list_retr",
            f"P4 POP3 LIST+RETR {result.messages}",
            "s",
            "lower",
            s,
            result.list + result.retr,
        )
        say(
            f"  P4 {server.label:<16} LIST {result.list * 1000:.0f} ms, RETR {result.retr:.2f} s "
            f"({result.octets / 1e6:.1f} MB)"
        )

    # -- profiling -----------------------------------------------------------

    @contextlib.contextmanager
    def profiled(self, phase: str, server: Server, round_no: int) -> Iterator[None]:
        want = self.args.profile
        rounds = self.args.rounds
        last = min(rounds, self.args.p3_rounds) - 1 if phase == "P3" else rounds - 1
        if (
            phase not in want
            or side(server) != "estafeta"
            or round_no != last
            or not isinstance(server, Estafeta)
        ):
            yield
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = self.args.results / f"profile-{phase}.svg"
        log = (self.root / f"py-spy-{phase}.log").open("wb")
        # A flame graph, and the same samples as collapsed stacks (one
        # "frame;frame;... count" line per stack) to grep or sum up. Not
        # pausing the server (--nonblocking) keeps two samplers cheap.
        for path, form in ((out, "flamegraph"), (out.with_suffix(".txt"), "raw")):
            command = [spy, "record", "--nonblocking", "--threads", "--rate", "100"]
            command += ["--format", form, "-o", str(path), "--pid", str(server.main_pid)]
            self._profilers.append(subprocess.Popen(command, stdout=log, stderr=log))
        time.sleep(1)
        try:
            yield
        finally:
            for profiler in self._profilers:
                profiler.send_signal(signal.SIGINT)
            for profiler in self._profilers:
                try:
                    profiler.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    profiler.kill()
            self._profilers = []
            log.close()
            say(f"  profile of estafeta in {phase}: {out} and .txt")

    # -- rounds ----------------------------------------------------------------

    def run(self) -> None:
        phases: list[tuple[str, Callable[[Server, int], None]]] = [
            ("P1", self.p1_all),
            ("P2", lambda srv, r: self.p2(srv)),
            ("P4", lambda srv, r: self.p4(srv)),
            ("P3", lambda srv, r: self.p3_for(srv)),
        ]
        for round_no in range(self.args.rounds):
            order: list[Server] = self.servers()
            if round_no % 2:
                order.reverse()
            say(f"round {round_no + 1}/{self.args.rounds}: {' then '.join(s.label for s in order)}")
            self.load_sample(f"round {round_no + 1} start")
            started = time.perf_counter()
            for phase, function in phases:
                if phase in self.args.skip:
                    continue
                if phase == "P3" and round_no >= self.args.p3_rounds:
                    continue
                for server in order:
                    if server is self.cluster and phase not in CLUSTER_PHASES:
                        continue
                    target = server
                    if (
                        phase == "P3"
                        and server is self.estafeta
                        and not self.args.p3_default_hashes
                    ):
                        target = self.estafeta_idle
                    if phase == "P2" and isinstance(server, Estafeta):
                        self.settle(server)
                    with self.profiled(phase, target, round_no):
                        function(server, round_no)
                self.load_sample(f"round {round_no + 1} after {phase}")
            self.results.rounds.append(
                {
                    "round": round_no + 1,
                    "order": [s.label for s in order],
                    "seconds": round(time.perf_counter() - started, 1),
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                }
            )

    def p3_for(self, server: Server) -> None:
        if server is self.estafeta and not self.args.p3_default_hashes:
            idle = self.estafeta_idle
            idle.start()
            try:
                self.p3(idle)
            finally:
                idle.stop()
        else:
            self.p3(server)

    def stop(self) -> None:
        for profiler in self._profilers:
            if profiler.poll() is None:
                profiler.kill()
        for server in (self.estafeta, self.estafeta_idle, *self.servers()[1:]):
            with contextlib.suppress(Exception):
                server.stop()
        if self.cluster is not None and self.cluster.backends is not None:
            with contextlib.suppress(Exception):
                self.cluster.backends.stop()

    def cleanup(self) -> None:
        self.stop()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


# -- report ----------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def table(results: Results, cluster: bool = False) -> str:
    """Medians, estafeta/peer, and with ``cluster`` the cluster side's
    median and its ratio over local estafeta ("n/r": not run there)."""
    head = ["metric", "unit", "estafeta", "postfix+dovecot", "ratio e/p", "estafeta is"]
    if cluster:
        head += ["cluster", "ratio c/e", "cluster is"]
    rows = [head]
    for m in results.metrics.values():
        ratio = m.ratio()
        row = [
            m.label,
            m.unit,
            fmt(m.median("estafeta")),
            fmt(m.median("peer")),
            ratio_text(ratio) if ratio is not None else "-",
            m.verdict(),
        ]
        if cluster:
            ran = m.key.split(".")[0] in CLUSTER_PHASES
            mine = m.ratio("cluster", "estafeta")
            row += [
                fmt(m.median("cluster")) if ran else "n/r",
                ratio_text(mine) if mine is not None else "-",
                m.verdict("cluster", "estafeta"),
            ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    numeric = {2, 3, 4, 6, 7}
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def chart(results: Results, path: Path, title: str) -> None:
    """Horizontal bars on a log scale: how many times better (right, green)
    or worse (left, red) estafeta is than the peer, per metric."""
    # Not installed unless requirements-bench.txt is (make bench does).
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    from matplotlib.ticker import (  # type: ignore[import-not-found,unused-ignore]
        FixedLocator,
        NullLocator,
    )

    metrics = [
        m
        for m in results.metrics.values()
        if m.ratio() and not m.key.endswith((".ack_rate", ".p50"))
    ]
    if not metrics:
        return
    wide = any(m.ratio("cluster", "peer") for m in metrics)
    fig, ax = plt.subplots(figsize=(12 if wide else 10, 0.4 * len(metrics) + 1.8))
    labels, values, colors = [], [], []
    for m in reversed(metrics):
        ratio = m.ratio() or 1.0
        goodness = ratio if m.better == "higher" else 1 / ratio
        labels.append(f"{m.label} [{m.unit}, {m.better} is better]")
        values.append(goodness)
        colors.append(
            "#2e7d32" if goodness >= 1 + SAME else "#c62828" if goodness <= 1 - SAME else "#757575"
        )
    ax.set_xscale("log")
    bars = ax.barh(labels, [v - 1 for v in values], left=1, color=colors)
    # The cluster side against the same peer: a marker on the row.
    marks = [
        (n, (r if m.better == "higher" else 1 / r))
        for n, m in enumerate(reversed(metrics))
        if (r := m.ratio("cluster", "peer"))
    ]
    if marks:
        ax.scatter(
            [g for _, g in marks],
            [n for n, _ in marks],
            marker="D",
            s=22,
            color="#1565c0",
            zorder=3,
            label="estafeta (cluster) vs the peer (c/p)",
        )
        ax.legend(loc="lower right", fontsize=7.5)
    marked = dict(marks)
    for n, (bar, value, m) in enumerate(zip(bars, values, reversed(metrics), strict=True)):
        ratio = m.ratio() or 1.0
        theirs = m.ratio("cluster", "peer")
        # Beyond the bar and the marker, when the marker is on its side.
        mark = marked.get(n, value)
        outer = max(value, mark) if value >= 1 else min(value, mark)
        ax.text(
            outer * (1.12 if value >= 1 else 1 / 1.12),
            bar.get_y() + bar.get_height() / 2,
            f"e/p {ratio_text(ratio)}: {m.verdict()}"
            + (f"; c/p {ratio_text(theirs)}" if theirs else ""),
            va="center",
            ha="left" if value >= 1 else "right",
            fontsize=7.5,
        )
    ax.axvline(1, color="black", linewidth=0.8)
    shown = values + [g for _, g in marks]
    room = 300 if marks else 60  # for the longer texts
    low = min(min(shown), 1) / room
    high = max(max(shown), 1) * room
    ax.set_xlim(low, high)
    ticks = [t for t in (1 / 1000, 1 / 100, 1 / 10, 1, 10, 100, 1000) if low <= t <= high]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}x" if t >= 1 else f"1/{1 / t:.0f}" for t in ticks])
    ax.set_xlabel("estafeta vs Postfix+Dovecot: times better (right) or worse (left), log scale")
    ax.set_title(title, fontsize=9.5)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_kib"] = int(line.split()[1])
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few minutes: 1 round, small P2 box, 1,000 IDLE"
    )
    parser.add_argument("--rounds", type=int, help="rounds, alternating the order (default 3)")
    parser.add_argument(
        "--p1-messages",
        type=int,
        help="messages per P1 run with 20/50 sessions (1 session: a fifth); default 2000",
    )
    parser.add_argument("--p1-size", type=int, default=4096, help="P1 message size (default 4096)")
    parser.add_argument("--p2-messages", type=int, help="messages in the P2 INBOX (default 100000)")
    parser.add_argument("--p3-connections", type=int, help="IDLE connections in P3 (default 10000)")
    parser.add_argument(
        "--p3-peer-connections",
        type=int,
        help="the peer's IDLE connections in P3 (default: --p3-connections, at most 10000: "
        "Dovecot's process per connection takes about 0.5 MiB PSS; 0: no P3 for the peer)",
    )
    parser.add_argument(
        "--p3-per-address",
        type=int,
        default=500,
        help="P3 client connections per loopback source address (default 500)",
    )
    parser.add_argument(
        "--p3-rounds",
        type=int,
        default=1,
        help="rounds that run P3, the first ones (default 1: 10,000 Dovecot processes take "
        "5-6 minutes to start on 2 cores, and memory hardly varies between rounds)",
    )
    parser.add_argument(
        "--p3-accounts",
        type=int,
        default=100,
        help="accounts the P3 connections log in to (default 100)",
    )
    parser.add_argument(
        "--p3-default-hashes",
        action="store_true",
        help="P3 logins with default-cost hashes too (about 0.3 CPU-seconds per login: slow)",
    )
    parser.add_argument(
        "--p4-messages", type=int, default=1000, help="messages RETR'd in P4 (default 1000)"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        action="extend",  # "--skip P1 --skip P3" leaves out both
        default=[],
        choices=["P1", "P2", "P3", "P4"],
        help="phases to leave out",
    )
    parser.add_argument(
        "--profile",
        nargs="*",
        action="extend",
        default=[],
        choices=["P1", "P2", "P3", "P4"],
        help="py-spy record estafeta in these phases of the last round (results/profile-P?.svg)",
    )
    parser.add_argument(
        "--no-cluster",
        action="store_true",
        help="leave out the cluster side (estafeta on PostgreSQL + an object store)",
    )
    parser.add_argument(
        "--cluster-bodies",
        choices=("s3", "database"),
        default="s3",
        help="where the cluster side keeps bodies: moto's S3 (default) or PostgreSQL",
    )
    parser.add_argument(
        "--dir", default="/var/tmp", help="where the temporary data goes (default /var/tmp)"
    )
    parser.add_argument("--results", type=Path, default=HERE / "results", help="output directory")
    parser.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install missing packages"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "rounds": 1 if quick else 3,
        "p1_messages": 1000 if quick else 2000,
        "p2_messages": 10_000 if quick else 100_000,
        "p3_connections": 1000 if quick else 10_000,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.p3_accounts = max(1, min(args.p3_accounts, args.p3_connections))
    if args.p3_peer_connections is None:
        args.p3_peer_connections = min(args.p3_connections, 10_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("compare.py runs Postfix and Dovecot: run it as root")
    started_at = time.strftime("%Y-%m-%dT%H%M%S")
    wall = time.perf_counter()
    # Inherited by the servers: estafeta holds every P3 connection itself
    # (the client side is held by worker processes, PER_WORKER each).
    most = max(args.p3_connections, args.p3_peer_connections)
    limit = raise_open_files(2 * most + 4096)
    if "P3" not in args.skip and limit < most + 1000:
        raise SystemExit(
            f"RLIMIT_NOFILE is {limit} and cannot be raised here (it needs root with "
            f"CAP_SYS_RESOURCE, up to /proc/sys/fs/nr_open): too low for {most} IDLE "
            f"connections in one server; --p3-connections {max(0, limit - 1000)} at most"
        )
    info = machine()
    installed = [] if args.no_install else ensure_packages(say)
    args.results.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    atexit.register(bench.cleanup)

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    cluster_text = "" if args.no_cluster else f" and the cluster ({args.cluster_bodies} bodies)"
    say(
        f"estafeta{cluster_text} vs Postfix+Dovecot: {args.rounds} round(s), "
        f"P1 {args.p1_messages} msgs, "
        f"P2 {args.p2_messages} msgs, P3 {args.p3_connections} IDLE, P4 {args.p4_messages} msgs; "
        f"load {info['loadavg_start']} on {info['cores']} cores"
    )
    try:
        bench.setup()
        setup_seconds = time.perf_counter() - wall
        bench.run()
    except KeyboardInterrupt:
        say("interrupted: stopping the servers")
        return 130
    finally:
        bench.stop()
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    duration = time.perf_counter() - wall
    results = bench.results
    found = versions()
    if bench.cluster is not None and bench.cluster.backends is not None:
        found.update(bench.cluster.backends.versions())
    report = {
        "started": started_at,
        "duration_seconds": round(duration, 1),
        "setup_seconds": round(setup_seconds, 1),
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "load_samples": bench.loads,
        "versions": found,
        "installed_now": installed,
        "configuration": {
            "estafeta": {
                "hash": bench.estafeta.hash_scheme,
                "p3_hash": "same as above"
                if args.p3_default_hashes
                else "argon2id " + ", ".join(f"{k}={v}" for k, v in CHEAP_ARGON2.items()),
                "durability": (
                    "250 after the index row and the message bytes are committed (SQLite WAL,"
                    " synchronous=FULL; up to 256 KiB, else file + new/ fsync'd first)"
                ),
                "log level": "info (default)",
            },
            "peer": {
                "hash": bench.peer.hash_scheme,
                "p3_hash": "same as above"
                if args.p3_default_hashes
                else "{ARGON2ID} " + ", ".join(f"{k}={v}" for k, v in CHEAP_ARGON2.items()),
                "durability": "Postfix: 250 once the queue file is fsync'd; Dovecot LMTP "
                "mail_fsync = optimized (message file fsync'd before LMTP 250)",
                "dovecot": "maildir, one imap process per connection (default high-security "
                "login), imap-login/imap process_limit raised, auth_cache off (default)",
            },
            "cluster": None
            if bench.cluster is None
            else {
                "phases": list(CLUSTER_PHASES),
                "hash": bench.cluster.hash_scheme,
                "store": f"[store] backend = cluster, node {NODE}; "
                "PostgreSQL 15 over TLS (verify-full, SCRAM) on 127.0.0.1; bodies in "
                + (
                    "moto's S3 server (in memory: not durable, a stand-in)"
                    if args.cluster_bodies == "s3"
                    else "PostgreSQL (objects kind = database)"
                ),
                "postgresql_settings": bench.cluster.backends.settings
                if bench.cluster.backends
                else {},
                "durability": (
                    "250 after the body's PUT is acknowledged"
                    if args.cluster_bodies == "s3"
                    else "250 after the body is committed in PostgreSQL"
                )
                + " and the index rows are committed in PostgreSQL with the body pinned"
                " (fsync on, synchronous_commit on)",
                "visible": "IMAP STATUS INBOX (MESSAGES) on one connection logged in "
                "before the clock, polled after the last 250",
                "cpu": "estafeta + PostgreSQL"
                + (" + moto" if args.cluster_bodies == "s3" else "")
                + " processes (the split per 1,000 messages in checks)",
                "p2_box": "built through the cluster store API (ClusterStore.deliver_sync, "
                "1,000 a batch) and its full-text index, not measured",
            },
        },
        "rounds": results.rounds,
        "checks": bench.checks,
        "metrics": [
            {
                "key": m.key,
                "label": m.label,
                "unit": m.unit,
                "better": m.better,
                "estafeta": [round(v, 4) for v in m.values["estafeta"]],
                "peer": [round(v, 4) for v in m.values["peer"]],
                "cluster": [round(v, 4) for v in m.values["cluster"]],
                "estafeta_median": m.median("estafeta"),
                "peer_median": m.median("peer"),
                "cluster_median": m.median("cluster"),
                "ratio_estafeta_over_peer": m.ratio(),
                "verdict": m.verdict(),
                "ratio_cluster_over_estafeta": m.ratio("cluster", "estafeta"),
                "verdict_cluster_vs_estafeta": m.verdict("cluster", "estafeta"),
                "ratio_cluster_over_peer": m.ratio("cluster", "peer"),
            }
            for m in results.metrics.values()
        ],
    }
    out = args.results / f"{started_at}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    title = (
        f"estafeta {found.get('estafeta')} vs Postfix {found.get('postfix')}"
        f" + Dovecot {found.get('dovecot', '?').split()[0]}"
        + f"\nmedians of {args.rounds} round(s), "
        f"{info['cores']} cores, load average {info['loadavg_start'][0]} at the start"
        + ("" if args.no_cluster else f"; c/p: cluster ({args.cluster_bodies} bodies) / peer")
    )
    png: Path | None = out.with_suffix(".png")
    try:
        chart(results, out.with_suffix(".png"), title)
    except ImportError:
        say("matplotlib missing: no chart (pip install -r requirements-bench.txt)")
        png = None
    print()
    print(table(results, cluster=bench.cluster is not None))
    if bench.cluster is not None:
        s3 = args.cluster_bodies == "s3"
        print(
            "cluster: estafeta on PostgreSQL 15 + "
            + ("moto's S3" if s3 else "bodies in PostgreSQL")
            + "; P1 and P2 only (n/r: not run); its CPU counts "
            + ("PostgreSQL's and moto's" if s3 else "PostgreSQL's")
            + " too; ratio c/e = cluster / local estafeta"
        )
    print()
    print(
        f"{args.rounds} round(s) in {duration / 60:.1f} min (setup {setup_seconds / 60:.1f} min); "
        f"load average {info['loadavg_start']} -> {info['loadavg_end']} on {info['cores']} cores"
    )
    for key, value in bench.checks.items():
        print(f"  {key}: {value}")
    print(f"results: {out}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
