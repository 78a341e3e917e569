"""``estafeta user erase``: remove everything the server holds about one account.

Order, and why. Every step is keyed by the address alone (not by the account
row, which step 1 removes) and is idempotent, so a crash anywhere is
finished by running the command again: it redoes what is left and finds the
rest gone.

1. ``accounts.db``: the account row, its TOTP secret, app passwords, login
   history and retention settings, and its place in aliases
   (``Accounts.delete_user``, one transaction: an alias left with no target
   goes, one with other targets keeps those; catch-alls alike), then the
   aliases whose every target went in this step (a chain that ended at it)
   and any login rows left over; then the file is rebuilt
   (``scrub.scrub_database``) so that no deleted octets stay in it or its
   WAL. First, so that nothing new arrives for the address while the rest
   goes: a running server sees the change within 50 ms, and we wait twice
   that (``LOOKUP_CHECK``) before going on.
2. The outbound queue (``QueueStore.forget_address``): what it sent and is
   still queued is deleted, and it is taken out of the recipients of the
   rest.
3. Greylisting (``Greylist.forget``): the entries are keyed by hashes of
   (client network, sender, recipient), so only triplets we can name are
   found: those of the mail it holds, read from the trace headers our MX
   wrote (``Received: from ... ([IP]) by ... (estafeta)``, ``for <rcpt>``,
   ``Return-Path``). Hence before the mail goes. Entries of mail it no
   longer holds (or that was never accepted) cannot be matched; they name
   no address in clear and expire (``retry_window``, ``expire``).
4. Sieve: the scripts and their directory (``active`` first), then its rows
   in the vacation/duplicate memory.
5. Its junk-filter statistics file (and its WAL, and broken copies).
6. The pre-upgrade copies: every directory under ``data_dir/pre-upgrade``
   (``PRE_UPGRADE_DIR``: the Ansible role's copies of every SQLite
   database, same relative paths, taken before an upgrade), ``.partial``
   ones (an interrupted copy, which the next upgrade replaces) included,
   gets steps 1 to 5 and 7 applied to it as if it were data_dir, so the
   copy of ``accounts.db`` loses its row, TOTP secret and app passwords
   (rebuilt as in step 1) and its index copies (``mail/DOMAIN/LOCAL``,
   ``deleted/ADDRESS.*``) go with their directories; what a copy lacks
   (message files, Sieve scripts) is skipped. Before the mail goes: the
   copies' greylist entries are matched with triplets read from it. A copy
   of ``accounts.db`` or ``greylist.db`` at another schema version than
   this estafeta writes is left alone and reported: opening it would
   migrate it, and the release it was taken for could no longer use it
   (remove that copy by hand).
7. Its mail: the directory is renamed out of the server's way (one atomic
   rename to ``mail/DOMAIN/.erase-HASH``: no local part starts with ".")
   and removed; then what ``user del`` kept under ``deleted/ADDRESS.*``.
   Last of the local steps: the greylist steps read it.
8. Backups: its subkey destroyed, so no snapshot can yield its data.
9. A last look: a path of step 4, 5 or 7 that is there again means mail or
   a session was in flight during the erasure; it is reported (run again).

What stays, by design: mail other accounts received from or sent to the
address is theirs (their Maildirs, indexes, Sieve memory keyed on their
vacation replies, spam allowlists naming it); the server's logs (journald
keeps them as configured); file-system blocks of removed files are freed,
not overwritten (use encrypted storage for that). A server session of the
account still open keeps unlinked files alive until it ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

from estafeta.address import normalize_address
from estafeta.auth import Accounts
from estafeta.auth.accounts import LOOKUP_CHECK, schema_version
from estafeta.backup.sources import PRE_UPGRADE_DIR
from estafeta.config import Config
from estafeta.policy.greylist import SCHEMA_VERSION as GREYLIST_SCHEMA
from estafeta.policy.greylist import Greylist
from estafeta.privacy.export import aliases_of
from estafeta.privacy.scrub import scrub_database
from estafeta.queue.store import QueueStore
from estafeta.sieve.memory import Memory
from estafeta.sieve.scripts import ScriptStore
from estafeta.spam.store import TokenStore
from estafeta.store import Store, maildir

HEADER_PEEK = 16 * 1024  # octets of a message read for its trace headers
MEMORY_FILES = (".memory.db", "memory.db")  # the server's name, and the documented one
_PEER = re.compile(r"\(\[([0-9A-Fa-f:.]+)\]\)")
_FOR = re.compile(r"\bfor <([^<>\s]+)>")


class EraseError(Exception):
    """A step failed; ``erasure`` says what was done before it."""

    def __init__(self, message: str, erasure: Erasure) -> None:
        super().__init__(message)
        self.erasure = erasure


@dataclass
class Erasure:
    """What ``erase`` removed, per kind, and what it could not."""

    address: str
    account: bool = False
    aliases_removed: list[str] = field(default_factory=list)
    aliases_changed: list[str] = field(default_factory=list)
    logins: int = 0  # login history rows left after delete_user (normally none)
    queue_messages: int = 0
    queue_entries: int = 0
    greylist: int = 0
    sieve_scripts: int = 0
    sieve_memory: int = 0
    spam_files: list[str] = field(default_factory=list)
    mail: list[str] = field(default_factory=list)
    pre_upgrade: list[str] = field(default_factory=list)  # copies it was removed from
    backup: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "removed": {
                "account": self.account,
                "aliases_removed": self.aliases_removed,
                "aliases_changed": self.aliases_changed,
                "logins": self.logins,
                "queue_messages": self.queue_messages,
                "queue_recipient_entries": self.queue_entries,
                "greylist_entries": self.greylist,
                "sieve_scripts": self.sieve_scripts,
                "sieve_memory": self.sieve_memory,
                "spam_files": self.spam_files,
                "mail": self.mail,
                "pre_upgrade": self.pre_upgrade,
            },
            "backup": self.backup,
            "problems": self.problems,
        }

    def lines(self) -> list[str]:
        out = [f"account: {'removed' if self.account else 'none (erased or deleted before)'}"]
        out += [f"alias {source}: removed" for source in self.aliases_removed]
        out += [f"alias {source}: no longer delivers to it" for source in self.aliases_changed]
        if self.logins:
            out.append(f"login history: {self.logins} records left behind")
        out.append(
            f"queue: {self.queue_messages} messages it sent deleted,"
            f" taken out of {self.queue_entries} entries"
        )
        out.append(f"greylisting: {self.greylist} entries")
        out.append(f"sieve: {self.sieve_scripts} scripts, {self.sieve_memory} memory records")
        out += [f"junk filter: {path}" for path in self.spam_files]
        out += [f"mail: {path}" for path in self.mail]
        out += [f"pre-upgrade copy: {path}" for path in self.pre_upgrade]
        out += self.backup
        out += [f"problem: {problem}" for problem in self.problems]
        return out


def erase(config: Config, address: str, *, pause: float = 2 * LOOKUP_CHECK) -> Erasure:
    """Remove everything of ``address`` under ``config.data_dir`` (see the
    module docstring); EraseError when a step fails, after which nothing
    later was done. Problems that do not stop it are in ``problems``."""
    address = normalize_address(address)
    erasure = Erasure(address)
    paths = _Paths(config, address)
    recipients: set[str] = {address}

    def step(name: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as exc:
            raise EraseError(f"{name}: {exc}; run the erase again", erasure) from exc

    step("accounts", lambda: recipients.update(_accounts(config, address, erasure)))
    time.sleep(pause)  # a running server re-reads accounts.db at most this late
    step("queue", lambda: _queue(config, address, erasure))
    step("greylisting", lambda: _greylist(config, paths, recipients, erasure))
    step("sieve", lambda: _sieve(config, address, erasure))
    step("junk filter", lambda: _spam(config, address, erasure))
    step("pre-upgrade copies", lambda: _pre_upgrade(config, paths, recipients, erasure))
    step("mail", lambda: _mail(paths, erasure))
    step("backups", lambda: _backup(config, address, erasure))
    for path in paths.all():
        if path.exists():
            erasure.problems.append(
                f"{path} is there again (mail or a session in flight): run the erase again"
            )
    return erasure


class _Paths:
    """Where the account's files are (or were)."""

    def __init__(self, config: Config, address: str) -> None:
        self.mail = Store(config.mail_dir, config.hostname).account_dir(address)
        tag = hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        self.erasing = self.mail.with_name(f".erase-{tag}")
        self.sieve = ScriptStore(config.sieve_dir, max_script_size=1, max_scripts=1).account_dir(
            address
        )
        self.spam = TokenStore(config.spam_dir).path_for(address)
        self.deleted_dir = config.data_dir / "deleted"
        self.address = address

    def deleted(self) -> list[Path]:
        """What ``user del`` kept: ``deleted/ADDRESS.TIMESTAMP``."""
        if not self.deleted_dir.is_dir():
            return []
        return sorted(
            path
            for path in self.deleted_dir.iterdir()
            if path.name.rsplit(".", 1)[0] == self.address
        )

    def mail_trees(self) -> list[Path]:
        return [p for p in (self.mail, self.erasing, *self.deleted()) if p.is_dir()]

    def all(self) -> list[Path]:
        return [self.mail, self.erasing, self.sieve, self.spam, *self.deleted()]


# -- the steps --------------------------------------------------------------------


def _accounts(config: Config, address: str, erasure: Erasure) -> list[str]:
    """Step 1; the aliases that led to it (recipients for step 3)."""
    with Accounts(
        config.accounts_db, config.domains, hasher=config.auth.hasher(), password_policy=False
    ) as accounts:
        before = accounts.list_aliases()
        leading = [a["alias"] for a in aliases_of(before, set(accounts.list_users()), address)]
        changed: list[str] = []
        if accounts.exists(address):
            changed = accounts.delete_user(address)
            erasure.account = True
        else:
            # No account (erased or deleted before): delete_user took it out
            # of every alias then, so this finds nothing unless the file
            # was edited by hand.
            for source, targets in before.items():
                if targets == [address]:
                    accounts.delete_alias(source)
                elif address in targets:
                    erasure.problems.append(
                        f"alias {source} still names {address} among others: delete it"
                        " (estafeta alias del) and add it again without"
                    )
        gone = set(before) - set(accounts.list_aliases())
        while True:  # aliases whose every target just went (a chain ending at it)
            dead = [
                source
                for source, targets in accounts.list_aliases().items()
                if targets and all(target in gone for target in targets)
            ]
            if not dead:
                break
            for source in dead:
                accounts.delete_alias(source)
                gone.add(source)
        # Changed: those that named it, and those left naming an alias that went
        # (skipped when resolving, as after ``alias del``; the name is not its address).
        touched = {s for s, ts in accounts.list_aliases().items() if any(t in gone for t in ts)}
        erasure.aliases_removed = sorted(gone)
        erasure.aliases_changed = sorted((set(changed) | touched) - gone)
        # delete_user took the login history and retention settings with the
        # account; this finds what a hand-edited file or an older version left.
        erasure.logins = accounts.forget_logins(address)
    scrub_database(config.accounts_db)
    return leading


def _queue(config: Config, address: str, erasure: Erasure) -> None:
    if not (config.queue_dir / "queue.db").is_file():
        return
    # The server may be running: leave files of in-flight enqueues alone.
    queue = QueueStore(config.queue_dir, recover=False)
    try:
        # "+": the subaddress separator Accounts uses (not configurable yet).
        erasure.queue_messages, erasure.queue_entries = queue.forget_address(address, "+")
    finally:
        queue.close()


def _greylist(config: Config, paths: _Paths, recipients: set[str], erasure: Erasure) -> None:
    if not config.greylist_db.is_file():
        return
    with Greylist(config.greylist_db, config.greylist.settings) as greylist:
        # Read as a stream: forget keeps one 16-octet key per distinct triplet.
        erasure.greylist = greylist.forget(_triplets(paths.mail_trees(), recipients))


def _triplets(trees: list[Path], recipients: set[str]) -> Iterator[tuple[str, str, str]]:
    """(client IP, sender, recipient) of every message our MX accepted into
    these account folders, as greylisting keyed it."""
    parser = BytesHeaderParser(policy=compat32)
    for tree in trees:
        for folder in maildir.folders(tree):
            base = tree / folder if folder else tree
            for sub in ("new", "cur", "tmp"):
                directory = base / sub
                if not directory.is_dir():
                    continue
                for path in directory.iterdir():
                    try:
                        with path.open("rb") as stream:
                            head = stream.read(HEADER_PEEK)
                    except OSError:
                        continue
                    header = parser.parsebytes(head.split(b"\r\n\r\n", 1)[0] + b"\r\n")
                    peer, rcpt = _our_received(header.get_all("Received", []))
                    if peer is None:
                        continue
                    sender = str(header.get("Return-Path", "")).strip().strip("<>")
                    for recipient in recipients | ({rcpt} if rcpt else set()):
                        yield peer, sender, recipient


def _our_received(values: list[Any]) -> tuple[str | None, str | None]:
    """The client IP and recipient of the first Received field our MX wrote."""
    for value in values:
        text = " ".join(str(value).split())
        if "(estafeta)" not in text:
            continue
        peer = _PEER.search(text)
        if peer is None:
            return None, None
        found = _FOR.search(text)
        return peer.group(1), found.group(1) if found else None
    return None, None


def _sieve(config: Config, address: str, erasure: Erasure) -> None:
    scripts = ScriptStore(config.sieve_dir, max_script_size=1, max_scripts=1)
    erasure.sieve_scripts = scripts.remove_account(address)
    for name in MEMORY_FILES:
        path = config.sieve_dir / name
        if path.is_file():
            with Memory(path) as memory:
                erasure.sieve_memory += memory.forget(address)


def _spam(config: Config, address: str, erasure: Erasure) -> None:
    store = TokenStore(config.spam_dir)
    try:
        erasure.spam_files = [str(path) for path in store.remove(address)]
    finally:
        store.close()


def _mail(paths: _Paths, erasure: Erasure) -> None:
    if paths.mail.is_dir():
        if paths.erasing.exists():
            shutil.rmtree(paths.erasing)  # a crashed run's, the mail came back meanwhile
        paths.mail.rename(paths.erasing)  # atomic: the server sees all of it or none
        maildir.fsync_dir(paths.mail.parent)
        erasure.mail.append(str(paths.mail))
    if paths.erasing.exists():
        shutil.rmtree(paths.erasing)
        maildir.fsync_dir(paths.erasing.parent)
    for kept in paths.deleted():
        shutil.rmtree(kept)
        erasure.mail.append(str(kept))
    if erasure.mail and paths.deleted_dir.is_dir():
        maildir.fsync_dir(paths.deleted_dir)


def _pre_upgrade(config: Config, paths: _Paths, recipients: set[str], erasure: Erasure) -> None:
    """Step 6: steps 1 to 5 and 7 on each copy under ``data_dir/pre-upgrade``."""
    root = config.data_dir / PRE_UPGRADE_DIR
    if not root.is_dir():
        return
    for snapshot in sorted(root.iterdir()):
        if snapshot.is_symlink() or not snapshot.is_dir():
            continue
        copy = dataclasses.replace(config, data_dir=snapshot)
        found = Erasure(erasure.address)
        if copy.accounts_db.is_file() and _usable(copy.accounts_db, (schema_version(),), found):
            _accounts(copy, erasure.address, found)
        messages = copy.queue_dir / "messages"
        had_messages = messages.exists()
        _queue(copy, erasure.address, found)
        if not had_messages and messages.is_dir():
            messages.rmdir()  # QueueStore made it; a copy holds no message files
        # The copy's greylist is keyed like the live one: triplets of the
        # mail the account holds now (the copy has no message files).
        if copy.greylist_db.is_file() and _usable(copy.greylist_db, (0, GREYLIST_SCHEMA), found):
            with Greylist(copy.greylist_db, config.greylist.settings) as greylist:
                found.greylist = greylist.forget(_triplets(paths.mail_trees(), recipients))
        _sieve(copy, erasure.address, found)
        _spam(copy, erasure.address, found)
        _mail(_Paths(copy, erasure.address), found)
        erasure.problems += found.problems
        if (
            found.account or found.aliases_removed or found.aliases_changed or found.logins
            or found.queue_messages or found.queue_entries or found.greylist
            or found.sieve_scripts or found.sieve_memory or found.spam_files or found.mail
        ):  # fmt: skip
            erasure.pre_upgrade.append(str(snapshot))


def _usable(path: Path, versions: tuple[int, ...], erasure: Erasure) -> bool:
    """Whether a copied database is at a schema version this estafeta opens
    without migrating it; if not, a problem says so and it is left alone."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        erasure.problems.append(f"{path}: cannot read it ({exc}); remove it by hand")
        return False
    if version in versions:
        return True
    erasure.problems.append(
        f"{path}: schema version {version}, this estafeta writes {versions[-1]}; left as it"
        " is (opening it would migrate it): remove this pre-upgrade copy by hand"
    )
    return False


def _backup(config: Config, address: str, erasure: Erasure) -> None:
    from estafeta.backup.settings import forget_account

    erasure.backup = forget_account(config, address)
