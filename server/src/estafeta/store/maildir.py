"""Message files in Maildir layout: names, durable writes, scans.

Only this module and ``account`` touch message files. See the package
docstring (``estafeta.store``) for the whole layout.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from estafeta.durable import fsync_dir as fsync_dir  # the store's modules take it from here

SUBDIRS = ("tmp", "new", "cur")
INBOX = "INBOX"
# The IMAP hierarchy delimiter. On disk, Maildir++ uses "." instead.
DELIMITER = "/"

# rfc-less but universal: Maildir info flags, "the :2, suffix" (cr.yp.to/proto/maildir).
MAILDIR_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}

_counter = itertools.count(1)
_SAFE = re.compile(r"[^%./\x00-\x1f\x7f]")


def escape(name: str) -> str:
    """Escape a name for use as one path component.

    ``%``, ``.``, ``/`` and control characters become ``%XX``; everything
    else, UTF-8 included, stays readable. A leading "." can never appear.
    """
    out = []
    for char in name:
        if _SAFE.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def unescape(text: str) -> str:
    def repl(match: re.Match[str]) -> str:
        return bytes.fromhex(match.group(0).replace("%", "")).decode("utf-8", "surrogateescape")

    return re.sub(r"(?:%[0-9A-Fa-f]{2})+", repl, text)


def mailbox_dir(name: str) -> str:
    """Directory of a mailbox, relative to the account: "" for INBOX,
    Maildir++ ``.A.B`` for ``A/B``. Every level is in this one directory
    name, which must fit in NAME_MAX (estafeta.store.names checks)."""
    if name.isascii() and name.upper() == INBOX:
        return ""
    return "." + ".".join(escape(part) for part in name.split(DELIMITER))


def mailbox_name(directory: str) -> str:
    """Inverse of mailbox_dir."""
    if directory == "":
        return INBOX
    if not directory.startswith("."):
        raise ValueError(f"not a Maildir++ folder: {directory!r}")
    return DELIMITER.join(unescape(part) for part in directory[1:].split("."))


def unique_name(hostname: str, size: int) -> str:
    """A Maildir file name: ``SECONDS.M<usec>P<pid>Q<n>R<random>.HOST,S=<size>``.

    The name starts with the delivery time so that a directory listing
    sorts in delivery order (``reindex`` relies on that).
    """
    now = time.time()
    seconds = int(now)
    usec = int((now - seconds) * 1_000_000)
    host = hostname.replace("/", "\\057").replace(":", "\\072")
    return (
        f"{seconds}.M{usec}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(4)}.{host},S={size}"
    )


def flags_from_name(name: str) -> list[str]:
    """System flags carried in a Maildir ``:2,FLAGS`` suffix."""
    _, sep, info = name.rpartition(":2,")
    if not sep:
        return []
    return [MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS]


_NAME_TIME = re.compile(r"(\d+)\.M(\d+)")


def sort_key(name: str) -> tuple[int, int, str]:
    """Delivery order of Maildir file names: the seconds, then the
    microseconds of ``SECONDS.M<usec>...`` as numbers ("M999" before
    "M12000": the field is not zero-padded, so the names alone do not sort
    within a second), then the name. Names of other tools sort by their
    leading seconds, if any."""
    match = _NAME_TIME.match(name)
    if match is not None:
        return (int(match[1]), int(match[2]), name)
    head = name.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, 0, name)


def make_maildir(path: Path) -> None:
    """Create ``path/{tmp,new,cur}`` durably (directories fsync'd)."""
    created = False
    for sub in SUBDIRS:
        target = path / sub
        if not target.is_dir():
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            created = True
    if created:
        fsync_dir(path)
        fsync_dir(path.parent)


@dataclass
class Staged:
    """A file written and fsync'd in tmp/, not yet visible in new/."""

    tmp_path: Path
    final_path: Path


def write_tmp(
    folder: Path, name: str, data: bytes, mtime: float | None, sync: bool = True
) -> Staged:
    """Write ``data`` to ``folder/tmp/name`` and fsync it (``sync``).

    The caller renames it with ``publish`` and then fsyncs ``folder/new``.
    Without ``sync`` the file is only in the page cache: the caller must
    hold the bytes durably elsewhere (``estafeta.store.ingest``) until it
    is fsync'd, and must not publish it before.
    """
    tmp_path = folder / "tmp" / name
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if mtime is not None:
            # The internal date survives in the file's mtime, for reindex.
            os.utime(fd, (mtime, mtime))
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp_path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return Staged(tmp_path, folder / "new" / name)


def publish(staged: Staged) -> None:
    os.rename(staged.tmp_path, staged.final_path)


def open_message(path: Path | str) -> BinaryIO:
    """Open a message file by the path its index row names.

    A message delivered but not yet fsync'd is still in ``tmp/`` under the
    same name (``estafeta.store.ingest``): its row already says
    ``new/NAME``, and it moves there (one rename) once it is durable. So a
    ``new/`` path that is not there is looked for in ``tmp/``, then once
    more in ``new/`` (it may have moved between the two looks).
    FileNotFoundError when it is in neither: the message was expunged.
    """
    try:
        return open(path, "rb")
    except FileNotFoundError:
        head, name = os.path.split(path)
        folder, sub = os.path.split(head)
        if sub != "new":
            raise
        try:
            return open(os.path.join(folder, "tmp", name), "rb")
        except FileNotFoundError:
            return open(path, "rb")


def read_message(path: Path | str) -> bytes:
    """The bytes of a message file (see ``open_message``)."""
    with open_message(path) as handle:
        return handle.read()


def scan(folder: Path) -> Iterator[str]:
    """Message files of one Maildir folder, as ``new/NAME`` / ``cur/NAME``."""
    for sub in ("new", "cur"):
        try:
            entries = os.scandir(folder / sub)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    yield f"{sub}/{entry.name}"


def folders(account_dir: Path) -> Iterator[str]:
    """Directories of all mailboxes of an account ("" is INBOX)."""
    if (account_dir / "cur").is_dir() or (account_dir / "new").is_dir():
        yield ""
    with os.scandir(account_dir) as entries:
        for entry in entries:
            if (
                entry.name.startswith(".")
                and entry.is_dir(follow_symlinks=False)
                and (Path(entry.path) / "cur").is_dir()
            ):
                yield entry.name


def remove_if_empty(folder: Path) -> bool:
    """Take away ``folder`` if it is an empty Maildir (only empty tmp/,
    new/, cur/, as a crashed CREATE or an interrupted DELETE leave it).
    True if nothing is there any more; False if it holds anything."""
    if not os.path.lexists(folder):
        return True
    if folder.is_symlink() or not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        inside = [entry for entry in entries]
    for entry in inside:
        if entry.name not in SUBDIRS or not entry.is_dir(follow_symlinks=False):
            return False
        with os.scandir(entry.path) as files:
            if any(True for _ in files):
                return False
    for entry in inside:
        os.rmdir(entry.path)
    os.rmdir(folder)
    fsync_dir(folder.parent)
    return True


def move_folder(source: Path, target: Path) -> bool:
    """Move a mailbox folder (a journal entry being finished or undone):
    rename it when the target is not there, else move its files into the
    target's tmp/, new/ and cur/ and remove it. Idempotent; True if
    anything moved. OSError if the file system refuses."""
    if not os.path.lexists(source):
        return False
    if not os.path.lexists(target):
        os.rename(source, target)
        return True
    for sub in SUBDIRS:
        try:
            entries = os.scandir(source / sub)
        except FileNotFoundError:
            continue
        (target / sub).mkdir(mode=0o700, exist_ok=True)
        with entries:
            for entry in entries:
                destination = target / sub / entry.name
                if not os.path.lexists(destination):
                    os.rename(entry.path, destination)
        fsync_dir(target / sub)
    shutil.rmtree(source, ignore_errors=True)
    return True


def clean_tmp(folder: Path, older_than: float = 36 * 3600) -> int:
    """Remove files left in tmp/ by interrupted deliveries.

    Nothing in tmp/ was ever acknowledged; the Maildir convention is to
    remove such files after 36 hours.
    """
    removed = 0
    limit = time.time() - older_than
    try:
        entries = os.scandir(folder / "tmp")
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
