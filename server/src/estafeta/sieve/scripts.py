"""Users' Sieve scripts on disk: ``ScriptStore`` owns the files.

ManageSieve (estafeta.managesieve), the CLI (``estafeta sieve ...``) and the
delivery layer (estafeta.delivery.rules) all go through this class.

On-disk layout (``root`` is ``config.sieve_dir``, i.e. ``data_dir/sieve``)::

    memory.db                      vacation and duplicate records (estafeta.sieve.memory)
    DOMAIN/                        the account's domain (IDNA A-label, lower case)
      LOCAL/                       its local part, escaped as the mail store does
        NAME.sieve                 one script: exactly the text uploaded (UTF-8)
        %%HASH.sieve, %%HASH.name  a script whose escaped name would not fit in
                                   a file name (NAME_MAX, 255 octets): the file is
                                   named after SHA-256 of the name, and the .name
                                   file holds the name (UTF-8)
        active                     the active script's NAME (UTF-8, nothing else);
                                   absent: no active script (rfc5804:1.4)
        .lock                      flock(2)ed by every change (threads and processes)
        .tmp-*                     a write in progress; one left by a crash is
                                   removed by the next change

NAME is escaped for the file system: "%", "/" and a leading "." become
``%XX`` (UTF-8 octets in hex); everything else stays readable. Script names
are Unicode NFC (rfc5804:1.6 asks for Net-Unicode, rfc5198:2), so "é"
composed and decomposed name one script.

Crash ordering. A script's bytes are written to ``.tmp-*``, fsync'd,
renamed over ``NAME.sieve`` and the directory fsync'd: a reader (a delivery
running the script, GETSCRIPT) sees the old text or the new one, never half
of either. Otherwise, in order:

* new long name: the ``.name`` file is durable before its ``.sieve`` (an
  orphan ``.name`` from a crash is ignored and replaced by the next write);
* SETACTIVE: the script exists, then ``active`` is replaced the same way
  (tmp + fsync + rename + fsync of the directory);
* deactivate: ``active`` is unlinked, the directory fsync'd;
* DELETESCRIPT: refused for the active script; the ``.sieve`` goes first,
  its ``.name`` after;
* RENAMESCRIPT: the new name is a hard link to the old file (link(2) fails
  if the name exists: the ALREADYEXISTS check cannot race), then
  ``active`` is rewritten if it named the old script, then the old name is
  unlinked. A crash at any point leaves a valid active script: the old
  name, or the new one, or (before the unlink) both names.

Only the file system's own guarantees are relied on: no index to repair.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from estafeta.address import AddressError, split_address
from estafeta.durable import fsync_dir
from estafeta.log import log_event
from estafeta.sieve.errors import SieveError

if TYPE_CHECKING:
    from estafeta.sieve import Compiled

log = logging.getLogger("estafeta.sieve")

SUFFIX = ".sieve"
NAME_SUFFIX = ".name"
ACTIVE = "active"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
HASHED_PREFIX = "%%"  # escaped names never start so: "%" is always "%XX"
# rfc5804:1.6: servers MUST allow 128 characters; longer names are refused
# (never truncated).
MAX_NAME = 128
# A file name's octets (ext4, xfs, btrfs, zfs); longer escaped names are hashed.
NAME_MAX = 255
# Compiled active scripts kept (accounts); the least recently used go.
CACHE_SIZE = 512

# Codes of ScriptError: rfc5804:1.3 response codes, and two of ours.
NONEXISTENT = "NONEXISTENT"
ACTIVE_CODE = "ACTIVE"
ALREADYEXISTS = "ALREADYEXISTS"
MAXSCRIPTS = "QUOTA/MAXSCRIPTS"
MAXSIZE = "QUOTA/MAXSIZE"
INVALID = "INVALID"  # a name (or script) no rule allows; ManageSieve: NO without code
SYNTAX = "SYNTAX"  # the script does not compile; message "line:column: ..."

# rfc5804:1.6: no U+0000-001F, U+007F-009F (category Cc), U+2028 (Zl),
# U+2029 (Zp); lone surrogates (Cs) are not UTF-8 at all.
_FORBIDDEN = frozenset({"Cc", "Zl", "Zp", "Cs"})


class ScriptError(Exception):
    """A script operation refused: ``code`` (see the constants) and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Cached(NamedTuple):
    """An account's active script as last read.  ``stamp``: what stat(2)
    said of ``active`` and of the script file then (None: look again)."""

    stamp: tuple[object, ...] | None
    directory: Path
    active: str  # the paths stat(2)ed, as str: a Path costs more than the call
    script: str | None
    data: bytes | None
    compiled: Compiled | None


# A file changed less than this long ago may change again within the same
# tick of the file system's clock without its stat changing ("racy" as git
# calls it): such a stamp is not trusted, the file is read again.
SETTLED_NS = 2_000_000_000
_NO_SCRIPT: tuple[object, ...] = ("no active script",)


def _stat_key(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _settled(*infos: os.stat_result) -> bool:
    now = time.time_ns()
    return all(now - max(i.st_mtime_ns, i.st_ctime_ns) > SETTLED_NS for i in infos)


def check_name(name: str) -> str:
    """The canonical (NFC) form of a legal script name, or ScriptError INVALID."""
    if not isinstance(name, str) or not name:
        raise ScriptError(INVALID, "a script name cannot be empty")
    name = unicodedata.normalize("NFC", name)
    if len(name) > MAX_NAME:
        raise ScriptError(INVALID, f"script names are at most {MAX_NAME} characters")
    for char in name:
        if unicodedata.category(char) in _FORBIDDEN:
            raise ScriptError(
                INVALID,
                f"script names cannot contain control characters (U+{ord(char):04X})",
            )
    return name


def escape(name: str) -> str:
    """``name`` as one file name component (without the suffix)."""
    out: list[str] = []
    for position, char in enumerate(name):
        if char in "%/\x00" or (char == "." and position == 0):
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    return "".join(out)


def unescape(text: str) -> str:
    def octets(match: re.Match[str]) -> str:
        return bytes.fromhex(match.group(0).replace("%", "")).decode("utf-8", "surrogateescape")

    return re.sub(r"(?:%[0-9A-F]{2})+", octets, text)


def file_stem(name: str) -> str:
    """The file name of a (canonical) script name, without ``.sieve``."""
    stem = escape(name)
    if len((stem + SUFFIX).encode("utf-8")) > NAME_MAX:
        return HASHED_PREFIX + hashlib.sha256(name.encode("utf-8")).hexdigest()
    return stem


def _account_component(text: str, dots: bool) -> str:
    """An address part as a directory name: the mail store's escaping
    (``%``, ``/``, controls; "." too for local parts)."""
    out: list[str] = []
    for position, char in enumerate(text):
        if (
            char in "%/"
            or ord(char) < 0x20
            or ord(char) == 0x7F
            or (char == "." and (not dots or position == 0))
        ):
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
        else:
            out.append(char)
    return "".join(out)


def _line_column(text: str, index: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _default_compile(text: str) -> Compiled:
    from estafeta import sieve

    return sieve.compile_script(text)


class Scripts(Protocol):
    """What ManageSieve, the CLI, the account pages and delivery use of a
    script store: ``ScriptStore`` (files) and ``ClusterScriptStore`` both
    are one."""

    max_script_size: int
    max_scripts: int

    def list(self, account: str) -> list[tuple[str, bool]]: ...
    def exists(self, account: str, name: str) -> bool: ...
    def get(self, account: str, name: str) -> str: ...
    def active(self, account: str) -> tuple[str, str] | None: ...
    def check(self, text: str) -> Compiled: ...
    def have_space(self, account: str, name: str, size: int) -> None: ...
    def put(self, account: str, name: str, text: str) -> bool: ...
    def activate(self, account: str, name: str | None) -> bool: ...
    def delete(self, account: str, name: str) -> None: ...
    def rename(self, account: str, old: str, new: str) -> None: ...
    def remove_account(self, account: str) -> int: ...
    def compiled(self, account: str) -> Compiled | None: ...


class ScriptStore:
    """Every account's scripts below ``root``. Thread-safe; changes are
    serialised per account by a lock file, so the CLI and the server may act
    at once."""

    def __init__(
        self,
        root: Path,
        *,
        max_script_size: int,
        max_scripts: int,
        compile: Callable[[str], Compiled] | None = None,
    ) -> None:
        self.root = root
        self.max_script_size = max_script_size
        self.max_scripts = max_scripts
        # Raises SieveError for a script that does not compile (rfc5804:2.6
        # validation = what delivery compiles); None: the default limits.
        self._compile = compile or _default_compile
        self._cache: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._cache_lock = threading.Lock()

    # -- paths ---------------------------------------------------------------

    def account_dir(self, account: str) -> Path:
        try:
            local, domain = split_address(account)
        except AddressError as exc:
            raise ScriptError(INVALID, str(exc)) from None
        return self.root / _account_component(domain, True) / _account_component(local, False)

    def _script_path(self, directory: Path, name: str) -> Path:
        return directory / (file_stem(name) + SUFFIX)

    # -- reading -------------------------------------------------------------

    def _names(self, directory: Path) -> Iterator[str]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            filename = entry.name
            if not filename.endswith(SUFFIX) or filename.startswith("."):
                continue
            stem = filename[: -len(SUFFIX)]
            if stem.startswith(HASHED_PREFIX):
                try:
                    name = (directory / (stem + NAME_SUFFIX)).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
            else:
                name = unescape(stem)
            # Only files this class could have written: the name is legal and
            # leads back to this very file.
            try:
                if check_name(name) != name or file_stem(name) != stem:
                    continue
            except ScriptError:
                continue
            yield name

    def _active_name(self, directory: Path) -> str | None:
        """The name in ``active`` if that script exists, else None."""
        try:
            name = (directory / ACTIVE).read_text(encoding="utf-8")
            name = check_name(name)
        except (OSError, UnicodeDecodeError, ScriptError):
            return None
        if not self._script_path(directory, name).is_file():
            return None
        return name

    def list(self, account: str) -> list[tuple[str, bool]]:
        """(name, active) of every script, sorted by name."""
        directory = self.account_dir(account)
        active = self._active_name(directory)
        return sorted((name, name == active) for name in self._names(directory))

    def exists(self, account: str, name: str) -> bool:
        return self._script_path(self.account_dir(account), check_name(name)).is_file()

    def get(self, account: str, name: str) -> str:
        """The script's text; ScriptError NONEXISTENT if there is none."""
        name = check_name(name)
        path = self._script_path(self.account_dir(account), name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ScriptError(NONEXISTENT, f"there is no script named {name!r}") from None
        return data.decode("utf-8", "replace")

    def active(self, account: str) -> tuple[str, str] | None:
        """(name, text) of the active script, or None."""
        directory = self.account_dir(account)
        name = self._active_name(directory)
        if name is None:
            return None
        try:
            return name, self.get(account, name)
        except ScriptError:
            return None  # deactivated and deleted meanwhile

    # -- checks ----------------------------------------------------------------

    def _encode(self, text: str) -> bytes:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line, column = _line_column(text, exc.start)
            raise ScriptError(SYNTAX, f"{line}:{column}: not valid UTF-8") from None

    def _check_size(self, size: int) -> None:
        if size > self.max_script_size:
            raise ScriptError(
                MAXSIZE,
                f"the script is {size} octets, at most {self.max_script_size} are allowed",
            )

    def check(self, text: str) -> Compiled:
        """Compile ``text`` (rfc5804:2.12); ScriptError SYNTAX with "line:column: ..."."""
        self._encode(text)
        try:
            return self._compile(text)
        except SieveError as exc:
            raise ScriptError(SYNTAX, str(exc)) from None

    def _count_check(self, directory: Path, name: str) -> None:
        if self._script_path(directory, name).is_file():
            return  # replacing a script does not add one
        count = sum(1 for _ in self._names(directory))
        if count >= self.max_scripts:
            raise ScriptError(
                MAXSCRIPTS, f"{count} scripts already, at most {self.max_scripts} are allowed"
            )

    def have_space(self, account: str, name: str, size: int) -> None:
        """rfc5804:2.5 — would PUTSCRIPT ``name`` of ``size`` octets fit?
        Returns if so, else ScriptError QUOTA/MAXSIZE or QUOTA/MAXSCRIPTS."""
        name = check_name(name)
        self._check_size(size)
        self._count_check(self.account_dir(account), name)

    # -- changes -----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, directory: Path, create: bool) -> Iterator[None]:
        if create:
            self._make_dirs(directory)
        elif not directory.is_dir():
            yield
            return
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._clean_tmp(directory)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _make_dirs(self, directory: Path) -> None:
        missing = []
        path = directory
        while not path.is_dir():
            missing.append(path)
            if path == path.parent:
                break
            path = path.parent
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
            fsync_dir(path.parent)

    def _clean_tmp(self, directory: Path) -> None:
        # Under the lock, a .tmp-* file is a leftover of a crashed write.
        for entry in os.scandir(directory):
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def _write(self, directory: Path, filename: str, data: bytes) -> None:
        """``data`` into ``directory/filename``: tmp + fsync + rename + fsync(dir)."""
        tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, directory / filename)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(directory)

    def _write_name(self, directory: Path, name: str) -> None:
        """The .name file of a hashed script name (durable before its script)."""
        stem = file_stem(name)
        if stem.startswith(HASHED_PREFIX):
            self._write(directory, stem + NAME_SUFFIX, name.encode("utf-8"))

    def _remove_name(self, directory: Path, name: str) -> None:
        stem = file_stem(name)
        if stem.startswith(HASHED_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / (stem + NAME_SUFFIX))

    def put(self, account: str, name: str, text: str) -> bool:
        """Store a script (rfc5804:2.6): checked, then written whole or not at
        all. True if its content changed. ScriptError INVALID, QUOTA/MAXSIZE,
        SYNTAX, QUOTA/MAXSCRIPTS."""
        name = check_name(name)
        data = self._encode(text)
        self._check_size(len(data))
        if not data:
            # rfc5804:2.6: "A script of zero length SHOULD be disallowed."
            raise ScriptError(INVALID, "an empty script is not allowed")
        self.check(text)  # before the lock: compiling may take a while
        directory = self.account_dir(account)
        with self._locked(directory, create=True):
            path = self._script_path(directory, name)
            try:
                if path.read_bytes() == data:
                    return False
            except FileNotFoundError:
                self._count_check(directory, name)
            self._write_name(directory, name)
            self._write(directory, path.name, data)
        return True

    def activate(self, account: str, name: str | None) -> bool:
        """rfc5804:2.8 — make ``name`` the active script (None or "": none).
        True if that changed anything. The script must exist (NONEXISTENT)
        and still compile (SYNTAX: an upgrade may have dropped an extension)."""
        directory = self.account_dir(account)
        if not name:
            with self._locked(directory, create=False):
                try:
                    os.unlink(directory / ACTIVE)
                except FileNotFoundError:
                    return False
                fsync_dir(directory)
            return True
        name = check_name(name)
        self.check(self.get(account, name))
        with self._locked(directory, create=False):
            if not self._script_path(directory, name).is_file():
                raise ScriptError(NONEXISTENT, f"there is no script named {name!r}")
            if self._active_name(directory) == name:
                return False
            self._write(directory, ACTIVE, name.encode("utf-8"))
        return True

    def delete(self, account: str, name: str) -> None:
        """rfc5804:2.10 — NONEXISTENT, or ACTIVE for the active script."""
        name = check_name(name)
        directory = self.account_dir(account)
        with self._locked(directory, create=False):
            path = self._script_path(directory, name)
            if not path.is_file():
                raise ScriptError(NONEXISTENT, f"there is no script named {name!r}")
            if self._active_name(directory) == name:
                raise ScriptError(ACTIVE_CODE, f"{name!r} is the active script")
            os.unlink(path)
            fsync_dir(directory)
            self._remove_name(directory, name)

    def rename(self, account: str, old: str, new: str) -> None:
        """rfc5804:2.11 — NONEXISTENT, ALREADYEXISTS; the active script stays active."""
        old = check_name(old)
        new = check_name(new)
        directory = self.account_dir(account)
        with self._locked(directory, create=False):
            source = self._script_path(directory, old)
            target = self._script_path(directory, new)
            if not source.is_file():
                raise ScriptError(NONEXISTENT, f"there is no script named {old!r}")
            if target.exists():
                raise ScriptError(ALREADYEXISTS, f"a script named {new!r} exists already")
            self._write_name(directory, new)
            try:
                os.link(source, target)
            except FileExistsError:
                raise ScriptError(ALREADYEXISTS, f"a script named {new!r} exists already") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                self._write(directory, target.name, source.read_bytes())  # no hard links here
            fsync_dir(directory)
            if self._active_name(directory) == old:
                self._write(directory, ACTIVE, new.encode("utf-8"))
            os.unlink(source)
            fsync_dir(directory)
            self._remove_name(directory, old)

    def remove_account(self, account: str) -> int:
        """Remove every script of ``account`` and its directory (``estafeta
        user erase``); the number of scripts removed. Under the lock, in this
        order: ``active`` (a delivery meanwhile runs no script, never half of
        them), the scripts and their ``.name`` files, the lock file; then the
        directory. A crash half-way leaves less of the same, and calling it
        again finishes the work; an account without scripts costs one stat."""
        directory = self.account_dir(account)
        removed = 0
        with self._locked(directory, create=False):
            if directory.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / ACTIVE)
                for entry in list(os.scandir(directory)):
                    if entry.name == LOCK:
                        continue
                    if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                        removed += 1
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / LOCK)
        with contextlib.suppress(FileNotFoundError):
            directory.rmdir()
            fsync_dir(directory.parent)
        with self._cache_lock:
            self._cache.pop(account, None)
        return removed

    # -- delivery --------------------------------------------------------------

    def compiled(self, account: str) -> Compiled | None:
        """The active script compiled, or None (no active script, or one that
        does not compile any more: logged once per version of the file).

        Kept per account with the stat(2) of ``active`` and of the script
        file: when both are unchanged (two stat calls per delivery) the
        files are not read again; any change through this class, the CLI in
        another process or an editor replaces or touches one of them."""
        with self._cache_lock:
            cached = self._cache.get(account)
        if (
            cached is not None
            and cached.stamp is not None
            and self._stamp(cached.active, cached.script) == cached.stamp
        ):
            with self._cache_lock:
                if account in self._cache:
                    self._cache.move_to_end(account)
            return cached.compiled
        directory = cached.directory if cached is not None else self.account_dir(account)
        return self._load(account, directory, cached)

    @staticmethod
    def _stamp(active: str, script: str | None) -> tuple[object, ...] | None:
        try:
            info = os.stat(active)
        except FileNotFoundError:
            return _NO_SCRIPT
        except OSError:
            return None
        if script is None:
            return None
        try:
            return (_stat_key(info), _stat_key(os.stat(script)))
        except OSError:
            return None

    def _load(self, account: str, directory: Path, cached: _Cached | None) -> Compiled | None:
        for _attempt in range(3):
            try:
                active_info = os.stat(directory / ACTIVE)
            except FileNotFoundError:
                entry = _Cached(_NO_SCRIPT, directory, str(directory / ACTIVE), None, None, None)
                self._keep(account, entry)
                return None
            except OSError:
                return None
            name = self._active_name(directory)
            if name is None:
                return None
            path = self._script_path(directory, name)
            try:
                with open(path, "rb") as stream:
                    info = os.fstat(stream.fileno())
                    data = stream.read()
                break
            except FileNotFoundError:
                continue  # renamed meanwhile (``active`` names the new one now)
        else:
            return None
        stamp: tuple[object, ...] | None = None
        if _settled(active_info, info):
            stamp = (_stat_key(active_info), _stat_key(info))
        if cached is not None and cached.data == data:
            self._keep(account, cached._replace(stamp=stamp, script=str(path)))
            return cached.compiled
        result: Compiled | None
        try:
            result = self._compile(data.decode("utf-8", "replace"))
        except SieveError as exc:
            log_event(
                log,
                "sieve_script_invalid",
                logging.ERROR,
                account=account,
                script=name,
                error=str(exc),
            )
            result = None
        self._keep(
            account, _Cached(stamp, directory, str(directory / ACTIVE), str(path), data, result)
        )
        return result

    def _keep(self, account: str, entry: _Cached) -> None:
        with self._cache_lock:
            self._cache[account] = entry
            self._cache.move_to_end(account)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
