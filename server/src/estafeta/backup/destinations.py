"""Where backup objects go: a directory, or S3-compatible object storage.

Both take keys such as ``objects/ab/abcd…``, ``snapshots/2026-12-04T…`` and
``keyring`` and hold opaque blobs (``estafeta.backup.objects`` sealed them).

* ``DirectoryDestination``: a local or mounted directory. A put writes a
  temporary file, fsyncs it, renames it into place and fsyncs the
  directory, so a key is either absent or whole, after any crash.
* ``S3Destination``: boto3, for AWS S3 and the compatible stores (MinIO,
  Garage, Ceph RGW): endpoint URL, region, path-style addressing,
  credentials from the environment or a file (boto3's usual chain). S3
  puts are atomic by definition.

Every failure is a ``BackupError`` naming the key, the directory or the
endpoint and bucket, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from estafeta.backup.objects import BackupError
from estafeta.durable import fsync_dir

# Keys are made by estafeta: path segments of letters, digits and - _ . :
_KEY = re.compile(r"[A-Za-z0-9_.:-]+(?:/[A-Za-z0-9_.:-]+)*\Z")


def check_key(key: str) -> str:
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise BackupError(f"{key!r} is not a backup key")
    return key


class Destination(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def delete(self, key: str) -> None: ...

    def describe(self) -> str: ...


# -- a directory ----------------------------------------------------------------------


@dataclass
class DirectoryDestination:
    root: Path

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise BackupError(f"{self.root}: cannot write {key}: {exc.strerror}") from None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BackupError(f"{self.root}: {key} is missing") from None
        except OSError as exc:
            raise BackupError(f"{self.root}: cannot read {key}: {exc.strerror}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                yield path.relative_to(self.root).as_posix()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise BackupError(f"{self.root}: cannot delete {key}: {exc.strerror}") from None


# -- S3 -------------------------------------------------------------------------------


@dataclass
class S3Settings:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None  # None: AWS
    region: str | None = None
    path_style: bool = False  # MinIO, Garage and moto want path-style addressing
    access_key: str | None = None  # None: boto3's chain (environment, files, roles)
    secret_key: str | None = None


class S3Destination:
    def __init__(self, settings: S3Settings, client: Any | None = None) -> None:
        self.settings = settings
        self.prefix = settings.prefix.strip("/")
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise BackupError(
                    "S3 destinations need boto3 (pip install boto3 in estafeta's virtualenv)"
                ) from None
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.endpoint_url,
                region_name=settings.region,
                aws_access_key_id=settings.access_key,
                aws_secret_access_key=settings.secret_key,
                config=Config(
                    s3={"addressing_style": "path" if settings.path_style else "auto"},
                    retries={"max_attempts": 5, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                ),
            )
        self.client = client

    def describe(self) -> str:
        where = self.settings.endpoint_url or "AWS S3"
        return f"s3://{self.settings.bucket}/{self.prefix} at {where}"

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, what: str, key: str, exc: Exception) -> BackupError:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                return BackupError(f"{self.describe()}: {key} is missing")
            if code == "NoSuchBucket":
                return BackupError(
                    f"{self.describe()}: bucket {self.settings.bucket} does not exist"
                )
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return BackupError(f"{self.describe()}: {code} (check the credentials)")
            return BackupError(f"{self.describe()}: cannot {what} {key}: {code}")
        if isinstance(exc, BotoCoreError):
            return BackupError(f"{self.describe()}: cannot {what} {key}: {exc}")
        return BackupError(f"{self.describe()}: cannot {what} {key}: {exc!r}")

    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        try:
            self.client.put_object(Bucket=self.settings.bucket, Key=name, Body=data)
        except Exception as exc:  # botocore's errors, or a connection that failed
            raise self._error("write", key, exc) from None

    def get(self, key: str) -> bytes:
        name = self._name(key)
        try:
            response = self.client.get_object(Bucket=self.settings.bucket, Key=name)
            return bytes(response["Body"].read())
        except Exception as exc:
            raise self._error("read", key, exc) from None

    def exists(self, key: str) -> bool:
        name = self._name(key)
        try:
            self.client.head_object(Bucket=self.settings.bucket, Key=name)
        except Exception as exc:
            error = self._error("look for", key, exc)
            if str(error).endswith(" is missing"):
                return False
            raise error from None
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        # As a directory: "objects" lists objects/..., not objectsX.
        if prefix:
            start = self._name(prefix.rstrip("/")) + "/"
        else:
            start = self.prefix + "/" if self.prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket, Prefix=start
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][strip:]
        except Exception as exc:
            raise self._error("list", prefix or "the objects", exc) from None

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self.client.delete_object(Bucket=self.settings.bucket, Key=name)
        except Exception as exc:
            raise self._error("delete", key, exc) from None
