"""moto in server mode: the S3 stand-in of the backup and cluster tests (AWS
is out of reach). It runs in memory and gets SIGKILL when the test process
dies (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _postgres import until_parent_dies

KEY_ID, SECRET = "AKIDESTAFETATEST", "estafeta-test-secret"  # moto takes any
REGION = "us-east-1"


@contextlib.contextmanager
def moto_server(root: Path, port: int) -> Iterator[str]:
    """A moto server on 127.0.0.1:``port`` (its log in ``root``): its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(root / "none")
    with (root / "moto.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=log, env=env, preexec_fn=until_parent_dies,
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


def s3_admin(endpoint: str) -> Any:
    """A boto3 S3 client for the tests' own setup (buckets)."""
    import boto3

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
    )  # fmt: skip
