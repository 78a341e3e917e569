"""SRS rewriting for forwarded mail: reversible, unforgeable, expiring."""

from __future__ import annotations

from pathlib import Path

import pytest

from estafeta import srs

SECRET = b"k" * 32
DAY = 86400.0
NOW = 20_000 * DAY + 3600


def test_round_trip() -> None:
    rewritten = srs.forward(SECRET, "Alice@Example.TEST", "example.net", now=NOW)
    local, _, domain = rewritten.rpartition("@")
    assert domain == "example.net"
    assert local.startswith("SRS0=") and local.endswith("=Example.TEST=Alice")
    assert srs.reverse(SECRET, rewritten, now=NOW) == "Alice@Example.TEST"
    # Case changes on the way back do not matter (the SRS paper says so).
    assert srs.reverse(SECRET, rewritten.lower(), now=NOW + DAY).lower() == "alice@example.test"


def test_what_is_not_rewritten() -> None:
    assert srs.forward(SECRET, "", "example.net") == ""  # bounces stay bounces
    assert srs.forward(SECRET, "bob@example.net", "example.net") == "bob@example.net"
    once = srs.forward(SECRET, "a@x.test", "example.net", now=NOW)
    assert srs.forward(SECRET, once, "example.net", now=NOW) == once


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("bob@example.net", "not an SRS0"),
        ("SRS0=abcd=AB=x.test@example.net", "malformed"),
        ("SRS0=abcd=A!=x.test=a@example.net", "timestamp"),
        ("SRS0=abcd=AB=x.test=a@example.net", "hash does not match"),
    ],
)
def test_forged_or_malformed_addresses_are_refused(address: str, reason: str) -> None:
    with pytest.raises(srs.SRSError, match=reason):
        srs.reverse(SECRET, address, now=NOW)


def test_other_secret_and_expiry() -> None:
    rewritten = srs.forward(SECRET, "a@x.test", "example.net", now=NOW)
    with pytest.raises(srs.SRSError, match="hash"):
        srs.reverse(b"other" * 8, rewritten, now=NOW)
    assert srs.reverse(SECRET, rewritten, now=NOW + srs.MAX_AGE_DAYS * DAY) == "a@x.test"
    with pytest.raises(srs.SRSError, match="expired"):
        srs.reverse(SECRET, rewritten, now=NOW + (srs.MAX_AGE_DAYS + 1) * DAY)


def test_secret_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "srs.key"
    first = srs.load_secret(path)
    assert len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert srs.load_secret(path) == first
