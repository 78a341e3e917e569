"""Mailbox names: which are acceptable, their canonical form, whether they fit on disk.

One name, one mailbox, one folder:

* **Canonical form** (``canonical``, used by every lookup and every new
  name): Unicode NFC (rfc6855:3 asks mailbox names to follow the
  Net-Unicode definition of rfc5198:2, whose normalisation is NFC), and a
  first level INBOX in any ASCII case spelled "INBOX" (rfc9051:5.1: INBOX is
  case-insensitive, "inbox/x" is "INBOX/x"). Names are normalised rather
  than refused: a client that sends "é" decomposed (macOS file names do)
  reaches the same mailbox as one that sends it composed, and two names
  that look the same can never be two mailboxes.
* **Characters** (``check_name``, for names being created): no control or
  format characters (Unicode categories Cc, Cf, Zl, Zp: rfc6855:3 forbids
  controls and the line and paragraph separators; Cf holds the bidi
  overrides U+202A-U+202E, U+2066-U+2069, the marks U+200E/U+200F and the
  zero-width joiners, with which a name can display as another one), no
  private-use, surrogate, unassigned or noncharacter code points (their
  NFC is not stable, or they mean nothing), no "*" or "%" (LIST
  wildcards), no empty level. Such names get NO [CANNOT] (rfc5530:3).
* **Size on disk** (``check_fits``): the Maildir++ folder of a name holds
  every level in one directory name (``maildir.mailbox_dir``: "A/B" is
  ".A.B", with %XX escapes), so it must fit in the file system's NAME_MAX
  (255 octets on ext4, xfs, btrfs, zfs), and a message file's path in
  PATH_MAX. Checked for every name an operation would create (superiors of
  CREATE, every inferior of RENAME) before anything is committed; beyond
  it, NO [LIMIT] (rfc5530:3: an implementation limit).

Names that older versions accepted and these rules refuse are still found
by lookups (``canonical`` never refuses), so they can be renamed or deleted.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from estafeta.store import maildir

# Fallbacks when the file system does not say (os.pathconf).
NAME_MAX = 255
PATH_MAX = 4096
# Room for what goes below a folder: "/cur/" and a message file name
# (maildir.unique_name: about 60 octets, the host name, ",S=<size>", ":2,FLAGS").
FILE_ROOM = 5 + 64 + 4 * 253 + 32

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})


class MailboxError(Exception):
    """A mailbox operation refused; ``code`` is an rfc5530 response code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def is_inbox(level: str) -> bool:
    """Is this (first) level INBOX? ASCII case only: "ınbox" is not INBOX."""
    return len(level) == 5 and level.isascii() and level.upper() == maildir.INBOX


def canonical(name: str) -> str:
    """The name a client means: NFC, first level INBOX in upper case. Never refuses."""
    name = unicodedata.normalize("NFC", name)
    first, sep, rest = name.partition(maildir.DELIMITER)
    if is_inbox(first):
        return maildir.INBOX + sep + rest
    return name


def _bad_character(char: str) -> str | None:
    """Why ``char`` cannot be in a new mailbox name, or None."""
    if char in "*%":
        return f"{char!r} is a LIST wildcard"
    code = ord(char)
    if 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
        return f"U+{code:04X} is a noncharacter"
    category = unicodedata.category(char)
    if category in _FORBIDDEN_CATEGORIES:
        what = {
            "Cc": "a control character",
            "Cf": "a format character (bidi control, zero-width...)",
            "Zl": "a line separator",
            "Zp": "a paragraph separator",
            "Co": "a private-use character",
            "Cs": "a surrogate",
            "Cn": "unassigned",
        }[category]
        return f"U+{code:04X} is {what}"
    return None


def check_name(name: str) -> str:
    """The canonical form of a name that can be created, or MailboxError:
    CANNOT for characters and structure, LIMIT for a folder name over
    NAME_MAX (the usual 255; ``check_fits`` asks the file system)."""
    name = canonical(name)
    if name == maildir.INBOX:
        return name
    if not name or name.startswith(maildir.DELIMITER) or name.endswith(maildir.DELIMITER):
        raise MailboxError(f"invalid mailbox name {name!r}", "CANNOT")
    if maildir.DELIMITER * 2 in name:
        raise MailboxError(f"empty level in mailbox name {name!r}", "CANNOT")
    for char in name:
        why = _bad_character(char)
        if why is not None:
            raise MailboxError(f"mailbox names cannot contain this character: {why}", "CANNOT")
    _check_octets(name, NAME_MAX)
    return name


def folder_octets(name: str) -> int:
    """Octets of the name's folder on disk (its whole hierarchy in one name)."""
    return len(maildir.mailbox_dir(name).encode("utf-8", "surrogateescape"))


def _check_octets(name: str, name_max: int) -> None:
    octets = folder_octets(name)
    if octets > name_max:
        raise MailboxError(
            f"mailbox name too long: its folder would take {octets} octets on disk, at most"
            f" {name_max} for all its levels together (characters other than ASCII letters"
            ' and digits take 2 to 4, "." and "%" 3, "/" 1)',
            "LIMIT",
        )


def limits(account_path: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the file system that holds ``account_path``."""
    try:
        name_max = os.pathconf(account_path, "PC_NAME_MAX")
        path_max = os.pathconf(account_path, "PC_PATH_MAX")
    except (OSError, ValueError):
        return NAME_MAX, PATH_MAX
    return (
        name_max if name_max > 0 else NAME_MAX,
        path_max if path_max > 0 else PATH_MAX,
    )


def check_fits(account_path: Path, name: str, fs_limits: tuple[int, int] | None = None) -> None:
    """MailboxError LIMIT unless the folder of ``name`` and the paths of its
    message files fit the file system (``fs_limits`` from ``limits``)."""
    if name == maildir.INBOX:
        return
    name_max, path_max = fs_limits or limits(account_path)
    _check_octets(name, name_max)
    path = len(os.fsencode(account_path)) + 1 + folder_octets(name) + FILE_ROOM
    if path > path_max:
        raise MailboxError(
            f"mailbox name too long: its files' paths would take {path} octets, at most {path_max}",
            "LIMIT",
        )


def fits(account_path: Path, directory: str, fs_limits: tuple[int, int] | None = None) -> bool:
    """Can folder ``directory`` (relative to the account) exist at all?"""
    if not directory:
        return True
    name_max, path_max = fs_limits or limits(account_path)
    octets = len(directory.encode("utf-8", "surrogateescape"))
    return (
        octets <= name_max and len(os.fsencode(account_path)) + 1 + octets + FILE_ROOM <= path_max
    )
