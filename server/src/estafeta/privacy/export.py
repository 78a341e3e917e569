"""``estafeta user export``: what the server holds about one account, as one archive.

Layout of the archive (zip, or tar.gz)::

    account.json                       the account (``account_record``): address, quota,
                                       aliases, Sieve scripts, app passwords (no hashes),
                                       TOTP on or off (no secret), login history, junk
                                       filter, and its mailboxes (UIDVALIDITY, UIDNEXT, ...)
    messages.json                      every message: mailbox, UID, flags (keywords too),
                                       internal date, size, modseq, its Maildir file
    maildir/MAILBOX/{cur,new,tmp}/     each mailbox as a Maildir, the messages in cur/ as
                                       DATE.U<uid>V<uidvalidity>.estafeta:2,FLAGS
    maildir/MAILBOX/dovecot-keywords   "N keyword" lines: letter a+N of the FLAGS
    mbox/MAILBOX.mbox                  the same messages as mboxrd (RFC 4155)

MAILBOX is the mailbox name, "/" its hierarchy ("Archive/2024"); in each
level "%", "\\", control characters and a leading "." become %XX, so no
name leaves its folder (an empty level is "%00").

The octets of each message are exactly those stored: the Maildir files byte
for byte; in mbox after the ``From`` line, every line matching ``>*From ``
given one more ">" (mboxrd: readers take it off), and a newline added to a
message that does not end in one (mbox cannot hold such a message exactly;
``messages.json`` has its true size). Flags: system flags as Maildir letters
(D Draft, F Flagged, R Answered, S Seen, T Deleted), the first 26 keywords of
a mailbox as letters a-z (``dovecot-keywords``); all of them in
``messages.json``. The mbox carries no Status header: that would change the
octets.

Streaming: the index is read UID_WINDOW UIDs at a time through the store's
reader, each message file in CHUNK octets, written to its Maildir entry and
to the mailbox's mbox at once. The mbox and ``messages.json`` are spooled in
unnamed temporary files beside FILE (a zip has one entry open at a time, a
tar needs a size first) and copied in when complete: memory stays flat
whatever the mailbox, and the spool takes as much disk as the largest
mailbox. The archive is written to FILE.tmp (0600), fsync'd, renamed to
FILE, and the directory fsync'd; a crash leaves at most FILE.tmp, which the
next export overwrites.

The server may run meanwhile: messages are read as the index lists them,
and one expunged in between is left out (``messages.json`` lists what the
archive holds).

On a cluster node (``[store] backend = "cluster"``) the caller hands in the
cluster's accounts, Sieve scripts, junk filter and store (``Sources``): the
same archive, the bodies read from the object store one message at a time
(at most ``[limits] max_message_size`` in memory). The login history is the
one this node keeps (estafeta.auth.cluster: it is not replicated).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from estafeta.address import normalize_address
from estafeta.auth import Accounts
from estafeta.auth.accounts import MAX_ALIAS_DEPTH
from estafeta.config import Config
from estafeta.sieve.scripts import Scripts, ScriptStore
from estafeta.spam import JunkFilter
from estafeta.store import Mailbox, Store, maildir
from estafeta.store.reader import IndexReader

FORMAT_VERSION = 1
CHUNK = 1 << 20  # octets of a message file read at a time
UID_WINDOW = 1024  # UIDs asked of the index at a time
MAX_KEYWORDS = 26  # Maildir keyword letters a-z
SYSTEM_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S"}
SYSTEM_LETTERS["\\Deleted"] = "T"

_FROM = re.compile(rb"^(>*From )", re.MULTILINE)
_RETURN_PATH = re.compile(rb"\AReturn-Path:[ \t]*<([^<>\s]*)>", re.IGNORECASE)


class ExportError(Exception):
    """The export could not be written; the message says why."""


@dataclass
class Sources:
    """Where an account's data is read from: this host's files
    (``local_sources``), or a cluster's (the CLI opens those)."""

    accounts: Accounts
    scripts: Scripts
    junk: JunkFilter
    # The local store (not started: started only for an account that has a
    # folder), or a cluster's, started by the caller.
    store: Store
    # Message files on this host (the local store): streamed from disk.
    # False: each body is read through the store's reader.
    files: bool = True


@contextmanager
def local_sources(config: Config) -> Iterator[Sources]:
    """The sources of the local store under ``config.data_dir``."""
    scripts = ScriptStore(
        config.sieve_dir,
        max_script_size=config.sieve.max_script_size,
        max_scripts=config.sieve.max_scripts,
    )
    with (
        Accounts(config.accounts_db, config.domains, hasher=config.auth.hasher()) as accounts,
        JunkFilter(config.spam_dir, config.spam.settings) as junk,
    ):
        yield Sources(accounts, scripts, junk, Store(config.mail_dir, config.hostname))


@dataclass
class ExportReport:
    path: Path
    mailboxes: int = 0
    messages: int = 0
    octets: int = 0  # of messages
    skipped: int = 0  # expunged while the export ran

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "mailboxes": self.mailboxes,
            "messages": self.messages,
            "octets": self.octets,
            "skipped": self.skipped,
        }


def archive_path(mailbox: str) -> str:
    """The relative path of a mailbox in the archive (see the module docstring)."""
    return "/".join(_component(part) for part in mailbox.split(maildir.DELIMITER))


def _component(part: str) -> str:
    if not part:
        return "%00"
    out: list[str] = []
    for position, char in enumerate(part):
        if char in "%\\" or ord(char) < 0x20 or ord(char) == 0x7F or (char == "." and not position):
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        else:
            out.append(char)
    return "".join(out)


def flag_letters(flags: list[str], keywords: dict[str, str]) -> str:
    """The Maildir info letters of ``flags``; a keyword not in ``keywords``
    (keyword -> letter) gets the next letter, while there is one."""
    letters = [SYSTEM_LETTERS[f] for f in flags if f in SYSTEM_LETTERS]
    for flag in flags:
        if flag.startswith("\\"):
            continue
        letter = keywords.get(flag)
        if letter is None and len(keywords) < MAX_KEYWORDS:
            letter = keywords[flag] = chr(ord("a") + len(keywords))
        if letter is not None:
            letters.append(letter)
    return "".join(sorted(set(letters)))


# -- mboxrd ---------------------------------------------------------------------


class MboxrdQuoter:
    """One message's octets quoted for mboxrd, fed in chunks of any size:
    ">" before every line that matches ``>*From ``. A line start split over
    chunks is held back until it is known."""

    def __init__(self) -> None:
        self._held = b""  # a line start that may yet become ">*From "
        self._mid_line = False  # the next octet continues a line

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        self._held = b""
        out: list[bytes] = []
        start = 0
        if self._mid_line:
            newline = data.find(b"\n")
            if newline < 0:
                return data
            out.append(data[: newline + 1])
            start = newline + 1
            self._mid_line = False
        whole = data.rfind(b"\n", start) + 1 or start
        out.append(_FROM.sub(rb">\1", data[start:whole]))
        tail = data[whole:]
        if tail:
            rest = tail.lstrip(b">")
            if rest.startswith(b"From "):
                out.append(b">" + tail)
                self._mid_line = True
            elif b"From "[: len(rest)] == rest:
                self._held = tail  # ">>Fr": undecided
            else:
                out.append(tail)
                self._mid_line = True
        return b"".join(out)

    def close(self) -> bytes:
        """What is held back: a last line too short to be ``From ``."""
        held, self._held = self._held, b""
        return held


class MboxWriter:
    """Messages appended to one mboxrd file, each fed in chunks."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self._date = 0
        self._started = False
        self._last = b""
        self._quoter = MboxrdQuoter()

    def begin(self, internal_date: int) -> None:
        self._date, self._started, self._last = internal_date, False, b""
        self._quoter = MboxrdQuoter()

    def _start(self, first: bytes) -> None:
        # rfc4155: "From " sender, then the date in asctime form (UTC here).
        match = _RETURN_PATH.match(first)
        sender = match.group(1).decode("ascii", "replace") if match and match.group(1) else ""
        sender = sender if sender.isascii() and sender.isprintable() else ""
        when = time.asctime(time.gmtime(self._date))
        self.out.write(f"From {sender or 'MAILER-DAEMON'} {when}\n".encode("ascii", "replace"))
        self._started = True

    def feed(self, chunk: bytes) -> None:
        if not self._started:
            self._start(chunk)
        self.out.write(self._quoter.feed(chunk))
        if chunk:
            self._last = chunk[-1:]

    def end(self) -> None:
        if not self._started:
            self._start(b"")
        self.out.write(self._quoter.close())
        self.out.write(b"\n" if self._last == b"\n" else b"\n\n")


# -- archive writers --------------------------------------------------------------


class _Writer(Protocol):
    def directory(self, name: str) -> None: ...

    def file(
        self, name: str, source: BinaryIO, size: int, mtime: float, tee: Callable[[bytes], None]
    ) -> None: ...

    def close(self) -> None: ...


class _Tee:
    """``read`` from ``source``, every chunk also handed to ``tee``."""

    def __init__(self, source: BinaryIO, tee: Callable[[bytes], None]) -> None:
        self.source = source
        self.tee = tee

    def read(self, size: int = CHUNK) -> bytes:
        chunk = self.source.read(min(size, CHUNK) if size >= 0 else CHUNK)
        self.tee(chunk)
        return chunk


def _ignore(_: bytes) -> None:
    pass


def _zip_time(when: float) -> tuple[int, int, int, int, int, int]:
    stamp = time.gmtime(max(when, 315532800))  # a zip cannot date before 1980
    return (stamp.tm_year, stamp.tm_mon, stamp.tm_mday, stamp.tm_hour, stamp.tm_min, stamp.tm_sec)


class _ZipWriter:
    def __init__(self, stream: BinaryIO) -> None:
        self.zip = zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED, allowZip64=True)

    def directory(self, name: str) -> None:
        info = zipfile.ZipInfo(name + "/", _zip_time(time.time()))
        info.external_attr = (stat.S_IFDIR | 0o700) << 16 | 0x10  # and MS-DOS "directory"
        self.zip.writestr(info, b"")

    def file(
        self, name: str, source: BinaryIO, size: int, mtime: float, tee: Callable[[bytes], None]
    ) -> None:
        info = zipfile.ZipInfo(name, _zip_time(mtime))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = (stat.S_IFREG | 0o600) << 16
        info.file_size = size  # decides ZIP64 for large entries
        reader = _Tee(source, tee)
        with self.zip.open(info, "w") as out:
            while chunk := reader.read(CHUNK):
                out.write(chunk)

    def close(self) -> None:
        self.zip.close()


class _TarWriter:
    def __init__(self, stream: BinaryIO) -> None:
        self.tar = tarfile.open(  # noqa: SIM115 (closed by close())
            fileobj=stream, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6
        )

    def directory(self, name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, int(time.time())
        self.tar.addfile(info)

    def file(
        self, name: str, source: BinaryIO, size: int, mtime: float, tee: Callable[[bytes], None]
    ) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, int(mtime)
        self.tar.addfile(info, _Tee(source, tee))

    def close(self) -> None:
        self.tar.close()


# -- the account ------------------------------------------------------------------


def aliases_of(
    aliases: dict[str, list[str]], accounts: set[str], address: str
) -> list[dict[str, Any]]:
    """The aliases whose mail reaches ``address``, directly or through other
    aliases (at most MAX_ALIAS_DEPTH deep, as delivery expands them): each
    with its targets and the aliases in between (``via``)."""

    def chain(source: str, depth: int, seen: set[str]) -> list[str] | None:
        if depth > MAX_ALIAS_DEPTH:
            return None
        for target in aliases.get(source, []):
            if target == address:
                return []
            if target in seen or target in accounts or target not in aliases:
                continue
            rest = chain(target, depth + 1, seen | {target})
            if rest is not None:
                return [target, *rest]
        return None

    found = []
    for source, targets in aliases.items():
        via = chain(source, 1, {source})
        if via is not None:
            found.append({"alias": source, "targets": targets, "via": via})
    return found


def account_record(config: Config, sources: Sources, address: str) -> dict[str, Any]:
    """Everything but the mail: the ``account.json`` of the archive, without
    its ``mailboxes`` (added by ``export_account``). Never a password hash,
    an app password's hash or a TOTP secret."""
    accounts, scripts = sources.accounts, sources.scripts
    sieve = [
        {"name": name, "active": active, "text": scripts.get(address, name)}
        for name, active in scripts.list(address)
    ]
    status = sources.junk.status(address)
    allowed = sources.junk.allowed(address)
    return {
        "format": FORMAT_VERSION,
        "address": address,
        "server": config.hostname,
        "exported": int(time.time()),
        "created": accounts.created(address),
        "quota": accounts.get_quota(address),
        "aliases": aliases_of(accounts.list_aliases(), set(accounts.list_users()), address),
        "sieve_scripts": sieve,
        "app_passwords": accounts.app_password_list(address),
        "totp": accounts.totp_enrolled(address),
        "login_history": [
            {"at": r.at, "protocol": r.protocol, "client": r.client, "ok": r.ok}
            for r in accounts.login_history(address)
        ],
        # Its own retention per mailbox (role or name): seconds, 0 = forever.
        "retention": accounts.retention_overrides(address).get(address, {}),
        "junk_filter": {
            "trained_spam": status.spam,
            "trained_ham": status.ham,
            "tokens": status.tokens,
            "allowlist": allowed,
        },
    }


# -- the export -------------------------------------------------------------------


class _Export:
    def __init__(self, writer: _Writer, spool_dir: Path, report: ExportReport) -> None:
        self.writer = writer
        self.spool_dir = spool_dir
        self.report = report
        self.messages = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 (closed by _write)
        self.messages.write(b"[")
        self._first = True

    def add_bytes(self, name: str, data: bytes) -> None:
        self.writer.file(name, io.BytesIO(data), len(data), time.time(), _ignore)

    def add_spool(self, name: str, spool: BinaryIO) -> None:
        size = spool.tell()
        spool.seek(0)
        self.writer.file(name, spool, size, time.time(), _ignore)

    def _record(self, entry: dict[str, Any]) -> None:
        self.messages.write(b"\n " if self._first else b",\n ")
        self.messages.write(json.dumps(entry, ensure_ascii=False).encode())
        self._first = False

    def mailbox(
        self, reader: IndexReader, account_dir: Path | None, box: Mailbox
    ) -> dict[str, Any]:
        """``account_dir``: where the message files are; None: read each
        body through ``reader`` (a cluster's object store)."""
        path = archive_path(box.name)
        base = f"maildir/{path}"
        self.writer.directory(base)
        for sub in ("cur", "new", "tmp"):
            self.writer.directory(f"{base}/{sub}")
        keywords: dict[str, str] = {}
        count = 0
        with tempfile.TemporaryFile(dir=self.spool_dir) as spool:
            mbox = MboxWriter(spool)
            for low in range(1, box.uidnext, UID_WINDOW):
                uids = list(range(low, min(low + UID_WINDOW, box.uidnext)))
                for uid, file, _, date, text, modseq, _, _ in reader.fetch_rows(
                    box.id, uids, summary=False
                ):
                    try:
                        source = _open_body(reader, account_dir, file)
                    except FileNotFoundError:
                        self.report.skipped += 1  # expunged meanwhile
                        continue
                    except OSError as exc:  # unreadable, or the object store away
                        raise ExportError(
                            f"cannot read {box.name} UID {uid} of the account: {exc}"
                        ) from None
                    flags = text.split()
                    name = f"{date}.U{uid}V{box.uidvalidity}.estafeta:2,"
                    name = f"{base}/cur/{name}{flag_letters(flags, keywords)}"
                    with source:
                        size = _size(source)
                        mbox.begin(date)
                        self.writer.file(name, source, size, date, mbox.feed)
                        mbox.end()
                    self._record(
                        {
                            "mailbox": box.name, "uid": uid, "flags": flags,
                            "internal_date": date, "size": size, "modseq": modseq,
                            "maildir": name,
                        }
                    )  # fmt: skip
                    count += 1
                    self.report.octets += size
            self.add_spool(f"mbox/{path}.mbox", spool)
        if keywords:
            lines = "".join(f"{ord(letter) - ord('a')} {kw}\n" for kw, letter in keywords.items())
            self.add_bytes(f"{base}/dovecot-keywords", lines.encode())
        self.report.messages += count
        self.report.mailboxes += 1
        return {
            "name": box.name,
            "uidvalidity": box.uidvalidity,
            "uidnext": box.uidnext,
            "special_use": box.special_use,
            "subscribed": box.subscribed,
            "messages": count,
            "maildir": base,
            "mbox": f"mbox/{path}.mbox",
            "keywords": {letter: kw for kw, letter in keywords.items()},
        }

    def finish(self) -> None:
        self.messages.write(b"\n]\n")
        self.add_spool("messages.json", self.messages)


def _open_body(reader: IndexReader, account_dir: Path | None, file: str) -> BinaryIO:
    """A message's octets: its file, or (``account_dir`` None) its body as
    the reader gives it. FileNotFoundError once it is expunged."""
    if account_dir is not None:
        return maildir.open_message(account_dir / file)
    return io.BytesIO(reader.content(file))


def _size(source: BinaryIO) -> int:
    if isinstance(source, io.BytesIO):
        return len(source.getbuffer())
    return os.fstat(source.fileno()).st_size


def export_account(
    config: Config,
    address: str,
    target: Path,
    *,
    fmt: str = "zip",
    force: bool = False,
    sources: Sources | None = None,
) -> ExportReport:
    """Write the archive of ``address`` (an existing account) to ``target``,
    read from ``sources`` (None: the local store's, ``local_sources``).
    ExportError if ``target`` exists (unless ``force``) or cannot be written."""
    if fmt not in ("zip", "tar"):
        raise ExportError(f"format {fmt!r}: use zip or tar")
    address = normalize_address(address)
    target = Path(os.path.abspath(target))
    if target.exists() and not force:
        raise ExportError(f"{target} exists; give --force to replace it")
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ExportError(f"cannot write {tmp}: {exc.strerror}") from None
    report = ExportReport(target)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), 0o600)  # a FILE.tmp left by a crash may be another's
            writer: _Writer = _ZipWriter(stream) if fmt == "zip" else _TarWriter(stream)
            try:
                if sources is None:
                    with local_sources(config) as local:
                        _write(config, address, local, writer, target.parent, report)
                else:
                    _write(config, address, sources, writer, target.parent, report)
            except BaseException:
                # The archive is dropped: its writer closed now, while the
                # stream is open (not by the garbage collector, after it).
                with suppress(Exception):
                    writer.close()
                raise
            writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        if target.exists() and not force:
            raise ExportError(f"{target} appeared meanwhile; give --force to replace it")
        os.replace(tmp, target)
        maildir.fsync_dir(target.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"cannot write {tmp}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return report


def _write(
    config: Config,
    address: str,
    sources: Sources,
    writer: _Writer,
    spool_dir: Path,
    report: ExportReport,
) -> None:
    try:
        record = account_record(config, sources, address)
    except OSError as exc:  # a statistics file, or a cluster's database away
        raise ExportError(f"cannot read the account {address}: {exc}") from None
    export = _Export(writer, spool_dir, report)
    try:
        _write_mail(address, sources, export, record)
    finally:
        export.messages.close()  # after finish, or on the way out of a failure


def _write_mail(address: str, sources: Sources, export: _Export, record: dict[str, Any]) -> None:
    mailboxes = []
    store = sources.store
    account_dir: Path | None = None
    if not sources.files:
        # A cluster's store, started by the caller: its rows and bodies.
        try:
            reader = store.reader(address)  # the replica, brought up to date
        except OSError as exc:  # the database away
            raise ExportError(f"cannot read the mailboxes of {address}: {exc}") from None
    # An account that never had mail has no folder: none is made for it.
    elif store.account_dir(address).is_dir():
        account_dir = store.account_dir(address)
        with store:
            reader = store.reader(address)
    else:
        reader = None
    if reader is not None:
        with reader:
            for box in reader.mailboxes():
                mailboxes.append(export.mailbox(reader, account_dir, box))
    export.finish()
    record["mailboxes"] = mailboxes
    export.add_bytes("account.json", json.dumps(record, indent=2, ensure_ascii=False).encode())
