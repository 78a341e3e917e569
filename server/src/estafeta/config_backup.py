"""Configuration of backups: ``[backup]`` (issue 18; docs/backup.md).

Example::

    [backup]
    key_file = "/etc/estafeta/backup.key"    # 0600; losing it loses every backup
    destination = "s3://mail-backups/mx1"     # or a directory: "/srv/backup/estafeta"
    s3_endpoint = "https://s3.eu-central-1.amazonaws.com"   # MinIO, Garage, Ceph RGW...
    s3_region = "eu-central-1"
    s3_path_style = false                     # true for MinIO, Garage and most others
    s3_credentials_file = "/etc/estafeta/backup-s3.ini"     # else boto3's environment chain
    uploads = 4                               # packs uploaded at once
    keep_daily = 7
    keep_weekly = 4
    keep_monthly = 6

The credentials file holds ``access_key_id = ...`` and
``secret_access_key = ...`` lines (an INI section header is allowed).
Every value can be given on the command line too (``--to``, ``--key``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from estafeta.s3credentials import read_credentials

if TYPE_CHECKING:
    from estafeta.config import _Reader

__all__ = ["BackupConfig", "backup_config", "check_destination", "read_credentials"]


@dataclass(frozen=True)
class BackupConfig:
    key_file: Path | None = None
    destination: str = ""
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_path_style: bool = False
    s3_credentials_file: Path | None = None
    uploads: int = 4
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 6


def backup_config(reader: _Reader, base: Path) -> BackupConfig:
    from estafeta.config import _path, _positive

    destination = reader.get("destination", str, "")
    if destination:
        check_destination(destination, reader)
    endpoint = reader.get("s3_endpoint", str, "") or None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise reader.error("s3_endpoint", f"{endpoint!r} is not a URL like https://host:port")
    config = BackupConfig(
        key_file=_path(reader, "key_file", base),
        destination=destination,
        s3_endpoint=endpoint,
        s3_region=reader.get("s3_region", str, "") or None,
        s3_path_style=reader.get("s3_path_style", bool, False),
        s3_credentials_file=_path(reader, "s3_credentials_file", base),
        uploads=_positive(reader, "uploads", 4),
        keep_daily=_count(reader, "keep_daily", 7),
        keep_weekly=_count(reader, "keep_weekly", 4),
        keep_monthly=_count(reader, "keep_monthly", 6),
    )
    reader.check_unknown()
    return config


def _count(reader: _Reader, name: str, default: int) -> int:
    value = reader.get(name, int, default)
    if value < 0:
        raise reader.error(name, "must be 0 or more")
    return value


def check_destination(text: str, reader: _Reader | None = None) -> None:
    """A directory (absolute path) or ``s3://BUCKET[/PREFIX]``."""
    problem = ""
    if text.startswith("s3://"):
        bucket = text[5:].split("/", 1)[0]
        if not bucket:
            problem = f"{text!r} names no bucket (s3://BUCKET/PREFIX)"
    elif not os.path.isabs(text):
        problem = f"{text!r} is neither an absolute directory nor s3://BUCKET/PREFIX"
    if problem:
        if reader is not None:
            raise reader.error("destination", problem)
        raise ValueError(problem)
