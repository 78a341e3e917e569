"""Backup destinations (estafeta.backup.destinations): a directory and S3,
the latter against moto in server mode (AWS is out of reach), with the same
tests for both."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from _moto import KEY_ID, SECRET, moto_server

from conftest import free_port
from estafeta.backup.destinations import (
    Destination,
    DirectoryDestination,
    S3Destination,
    S3Settings,
)
from estafeta.backup.objects import BackupError


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server (S3 and the rest, in memory) on 127.0.0.1: its URL."""
    with moto_server(tmp_path_factory.mktemp("moto"), free_port()) as url:
        yield url


def _settings(moto: str, bucket: str, prefix: str = "host1") -> S3Settings:
    return S3Settings(
        bucket=bucket, prefix=prefix, endpoint_url=moto, region="us-east-1",
        path_style=True, access_key=KEY_ID, secret_key=SECRET,
    )  # fmt: skip


@pytest.fixture(params=["directory", "s3"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    if request.param == "directory":
        return DirectoryDestination(tmp_path / "backups")
    moto: str = request.getfixturevalue("moto")
    bucket = f"b-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    boto3.session.Session().client(
        "s3", endpoint_url=moto, region_name="us-east-1",
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
    ).create_bucket(Bucket=bucket)  # fmt: skip
    return S3Destination(_settings(moto, bucket))


def test_put_get_list_delete(destination: Destination) -> None:
    destination.put("objects/ab/abcdef", b"\x00sealed\xff" * 100)
    destination.put("objects/cd/cdef01", b"two")
    destination.put("objectsX", b"not under objects/")
    destination.put("keyring", b"ring")
    assert destination.get("objects/ab/abcdef") == b"\x00sealed\xff" * 100
    assert destination.exists("keyring") and not destination.exists("snapshots/none")
    assert sorted(destination.list("objects")) == ["objects/ab/abcdef", "objects/cd/cdef01"]
    assert sorted(destination.list()) == [
        "keyring", "objects/ab/abcdef", "objects/cd/cdef01", "objectsX",
    ]  # fmt: skip
    destination.put("keyring", b"ring 2")  # replaced whole
    assert destination.get("keyring") == b"ring 2"
    destination.delete("objects/cd/cdef01")
    destination.delete("objects/cd/cdef01")  # deleting what is gone is fine
    assert list(destination.list("objects")) == ["objects/ab/abcdef"]
    with pytest.raises(BackupError, match="objects/cd/cdef01 is missing"):
        destination.get("objects/cd/cdef01")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "", "a b", "a/.."])
def test_keys_that_could_escape_are_refused(destination: Destination, key: str) -> None:
    with pytest.raises(BackupError, match="not a backup key"):
        destination.put(key, b"x")


def test_a_directory_put_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = DirectoryDestination(tmp_path / "d")
    target.put("keyring", b"old")

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(BackupError, match="cannot write keyring: No space left"):
        target.put("keyring", b"new")
    monkeypatch.undo()
    assert target.get("keyring") == b"old"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keyring"]


def test_s3_errors_name_the_bucket_and_the_endpoint(moto: str) -> None:
    missing = S3Destination(_settings(moto, "no-such-bucket"))
    with pytest.raises(BackupError, match="bucket no-such-bucket does not exist"):
        missing.put("keyring", b"x")
    dead = S3Destination(
        S3Settings(bucket="b", endpoint_url=f"http://127.0.0.1:{free_port()}",
                   region="us-east-1", path_style=True, access_key=KEY_ID, secret_key=SECRET)
    )  # fmt: skip
    start = time.monotonic()
    with pytest.raises(
        BackupError, match=r"s3://b/ at http://127\.0\.0\.1:\d+: cannot read keyring"
    ):
        dead.get("keyring")
    assert time.monotonic() - start < 60  # retries are bounded
