"""Writing files so that they survive a crash: fsync the file, rename it
into place, fsync the directory (the rename is only durable then)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``), crash-safely: a
    reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    _write_and_close(fd, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def create_once(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Write ``path`` with ``data`` unless it exists, crash-safely and so that
    two processes racing to create it agree on one content: the data goes to
    a private temporary file first, which is then hard-linked to ``path``
    (link fails when the name exists). True when this call created it."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        _write_and_close(fd, data, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def _write_and_close(fd: int, data: bytes, mode: int | None = None) -> None:
    """All of ``data`` to ``fd`` (first made ``mode``), fsync'd; ``fd`` is closed either way."""
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
