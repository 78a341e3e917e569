"""The repository a configuration names (``[backup]``), and what other
commands ask of backups: ``forget_account`` for ``estafeta user erase``."""

from __future__ import annotations

import logging
from pathlib import Path

from estafeta.backup.destinations import (
    Destination,
    DirectoryDestination,
    S3Destination,
    S3Settings,
)
from estafeta.backup.objects import BackupError, load_key
from estafeta.backup.repository import Repository
from estafeta.config import Config
from estafeta.config_backup import check_destination, read_credentials

log = logging.getLogger("estafeta.backup")


def open_destination(config: Config, text: str | None = None) -> Destination:
    """The destination ``text`` (a directory or s3://BUCKET/PREFIX), or
    ``[backup] destination``; S3 settings from ``[backup]``."""
    settings = config.backup
    where = text or settings.destination
    if not where:
        raise BackupError(
            f"no backup destination: give --to/--repo, or set [backup] destination in {config.path}"
        )
    try:
        check_destination(where)
    except ValueError as exc:
        raise BackupError(str(exc)) from None
    if not where.startswith("s3://"):
        return DirectoryDestination(Path(where))
    bucket, _, prefix = where[5:].partition("/")
    key = secret = None
    if settings.s3_credentials_file is not None:
        try:
            key, secret = read_credentials(settings.s3_credentials_file)
        except ValueError as exc:
            raise BackupError(str(exc)) from None
    return S3Destination(
        S3Settings(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=settings.s3_endpoint,
            region=settings.s3_region,
            path_style=settings.s3_path_style,
            access_key=key,
            secret_key=secret,
        )
    )


def key_path(config: Config, given: str | None = None) -> Path:
    path = given or config.backup.key_file
    if path is None:
        raise BackupError(f"no backup key: give --key, or set [backup] key_file in {config.path}")
    return Path(path)


def open_repository(
    config: Config,
    destination: str | None = None,
    key: str | None = None,
    create: bool = False,
) -> Repository:
    master = load_key(key_path(config, key))
    return Repository.open(open_destination(config, destination), master, create=create)


def forget_account(config: Config, address: str) -> list[str]:
    """Destroy ``address``'s subkey in the configured repository (so no
    snapshot can yield its data any more) and its rows in the local cache.
    Lines to print; BackupError if the repository cannot be reached (run
    the erasure again: it is idempotent)."""
    from estafeta.backup.create import Cache, cache_token, own_dir

    if not config.backup.destination or config.backup.key_file is None:
        return ["backups: none configured ([backup] destination and key_file), nothing to destroy"]
    repository = open_repository(config)
    where = repository.destination.describe()
    subkey = repository.keyring.subkeys.get(address)
    if subkey is not None:
        cache_file = own_dir(config) / "cache.db"
        if cache_file.exists():
            cache = Cache(cache_file, repository.id)
            try:
                cache.forget_scope(cache_token(subkey))
                cache.vacuum()
            finally:
                cache.close()
    found = repository.keyring.destroy(address)
    repository.save_keyring()
    if found:
        log.info("backup: the key of %s was destroyed at %s", address, where)
        return [
            f"backups: the key of {address} at {where} is destroyed; no snapshot can yield its data"
        ]
    return [f"backups: {where} held no key of {address} (never backed up, or destroyed before)"]
