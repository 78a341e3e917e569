"""Messages to train from: a single message file, a Maildir, or an mbox.

``MessageSource(path)`` finds out which one ``path`` is and iterates the
raw messages (bytes), for ``JunkFilter.train_from``:

* a directory with ``cur/`` or ``new/``: a Maildir; every regular file of
  both (``tmp/`` and dot files ignored, symlinks not followed), in name
  order. Maildir++ sub-folders (``.Junk/``) are not entered: name the
  folder itself;
* a file starting with ``From `` : an mbox (rfc4155:2): a message starts at
  a "From " line that follows an empty line (or comes before any message);
  the empty line before it belongs to the separator; lines ``>From ``, ``>>From ``...
  lose one ``>`` (the mboxrd unquoting, which also undoes mboxo's);
* any other file: one message (rfc5322).

Bounds: a message larger than ``max_size`` (default 10 MiB) is skipped,
counted in ``skipped`` and never held whole in memory: the mbox reader
reads lines of at most 64 KiB and stops buffering once a message is too
large; Maildir files are checked with stat before they are read. Only one
message is in memory at a time.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from estafeta.log import log_event

log = logging.getLogger("estafeta.spam")

MAX_MESSAGE = 10 * 1024 * 1024
"""Largest message read for training; larger ones are skipped."""

_LINE = 64 * 1024  # longest piece of a line read at once
_QUOTED_FROM_RE = re.compile(rb">+From ")

Kind = Literal["file", "maildir", "mbox"]
Skip = Callable[[str, str], None]  # (where, reason) of a message left out


def detect(path: Path) -> Kind:
    """What ``path`` holds; FileNotFoundError or ValueError if nothing usable."""
    if path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():
            return "maildir"
        raise ValueError(f"{path}: a directory but not a Maildir (no cur/ or new/)")
    with path.open("rb") as f:
        return "mbox" if f.read(5) == b"From " else "file"


class MessageSource:
    """The messages under ``path`` (see the module docstring)."""

    def __init__(self, path: Path, *, max_size: int = MAX_MESSAGE) -> None:
        self.path = path
        self.kind = detect(path)
        self.max_size = max_size
        self.read = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[bytes]:
        if self.kind == "maildir":
            source = read_maildir(self.path, self.max_size, self._skip)
        elif self.kind == "mbox":
            source = read_mbox(self.path, self.max_size, self._skip)
        else:
            source = read_file(self.path, self.max_size, self._skip)
        for message in source:
            self.read += 1
            yield message

    def _skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        log_event(log, "spam_train_skipped", logging.WARNING, path=where, reason=reason)


def _no_skip(where: str, reason: str) -> None:
    pass


def read_file(path: Path, max_size: int = MAX_MESSAGE, skip: Skip = _no_skip) -> Iterator[bytes]:
    """The one message in ``path`` (none if it is larger than ``max_size``)."""
    with path.open("rb") as f:
        data = f.read(max_size + 1)
    if len(data) > max_size:
        skip(str(path), "too large")
        return
    yield data


def read_maildir(path: Path, max_size: int = MAX_MESSAGE, skip: Skip = _no_skip) -> Iterator[bytes]:
    """Every message in ``cur/`` and ``new/`` of the Maildir ``path``."""
    for sub in ("cur", "new"):
        folder = path / sub
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith("."))
        for name in names:
            file = folder / name
            try:
                st = file.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_size > max_size:
                    skip(str(file), "too large")
                    continue
                with file.open("rb") as f:
                    data = f.read(max_size + 1)
            except FileNotFoundError:  # moved by a mail client meanwhile
                continue
            if len(data) > max_size:
                skip(str(file), "too large")
                continue
            yield data


def read_mbox(path: Path, max_size: int = MAX_MESSAGE, skip: Skip = _no_skip) -> Iterator[bytes]:
    """Every message of the mbox file ``path`` (rfc4155:2)."""
    with path.open("rb") as f:
        yield from _split_mbox(f, max_size, lambda n: skip(f"{path}#{n}", "too large"))


def _split_mbox(f: BinaryIO, max_size: int, too_large: Callable[[int], None]) -> Iterator[bytes]:
    lines: list[bytes] | None = None  # the current message's lines; None before the first
    size = 0
    oversized = False
    number = 0
    at_line_start = True
    previous_blank = True  # the start of the file counts as after a blank line

    def finish() -> bytes | None:
        if lines is None:
            return None
        if oversized:
            too_large(number)
            return None
        data = b"".join(lines)
        # rfc4155:2: the empty line before the next From_ line is not the message's.
        if data.endswith(b"\r\n\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n\n"):
            data = data[:-1]
        return data

    while True:
        piece = f.readline(_LINE)
        if not piece:
            break
        starts_line = at_line_start
        at_line_start = piece.endswith(b"\n")
        # Before the first message any From_ line opens one (text ahead of it is junk).
        opens = previous_blank or lines is None
        if starts_line and opens and piece.startswith(b"From "):
            message = finish()
            if message is not None:
                yield message
            lines, size, oversized, number = [], 0, False, number + 1
            previous_blank = False
            while not at_line_start:  # the rest of a very long From_ line
                piece = f.readline(_LINE)
                if not piece:
                    break
                at_line_start = piece.endswith(b"\n")
            continue
        previous_blank = starts_line and piece in (b"\n", b"\r\n")
        if lines is None:
            continue  # text before the first From_ line
        if starts_line and _QUOTED_FROM_RE.match(piece):
            piece = piece[1:]  # rfc4155:2 (mboxrd): ">From " was "From "
        if oversized:
            continue
        size += len(piece)
        if size > max_size:
            oversized = True
            lines.clear()
            continue
        lines.append(piece)
    message = finish()
    if message is not None:
        yield message
