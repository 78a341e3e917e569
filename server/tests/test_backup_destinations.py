"""Backup destinations (estafeta.backup.destinations): a directory and S3,
the latter against moto in server mode (AWS is out of reach), with the same
tests for both."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from conftest import free_port
from estafeta.backup.destinations import (
    Destination,
    DirectoryDestination,
    S3Destination,
    S3Settings,
)
from estafeta.backup.objects import BackupError

KEY_ID, SECRET = "AKIDESTAFETATEST", "estafeta-test-secret"  # moto takes any


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server (S3 and the rest, in memory) on 127.0.0.1: its URL."""
    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(root / "none")
    with (root / "moto.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (root / "moto.log").read_text(errors="replace")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        if process.poll() is None:
            process.kill()


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
