"""Training input: one message file, a Maildir, an mbox (rfc4155)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from estafeta.spam import JunkFilter, MessageSource
from estafeta.spam.readers import detect, read_mbox

ONE = b"From: a@example.org\nSubject: one\n\nfirst body\n"
TWO = b"From: b@example.org\nSubject: two\n\nsecond body\n>From the start\n>>From twice\n"
THREE = b"From: c@example.org\nSubject: three\n\nthird\nFrom inside, not after a blank line\n"


def mbox(*messages: bytes) -> bytes:
    return b"".join(
        b"From sender@example.org Mon Jan  1 10:00:00 2024\n" + m + b"\n" for m in messages
    )


def test_mbox_messages_split_and_unquoted(tmp_path: Path) -> None:
    path = tmp_path / "box.mbox"
    path.write_bytes(mbox(ONE, TWO, THREE))
    assert detect(path) == "mbox"
    messages = list(MessageSource(path))
    assert messages == [
        ONE,
        TWO.replace(b"\n>From the", b"\nFrom the").replace(b">>From", b">From"),
        THREE,
    ]


def test_mbox_with_crlf_and_leading_garbage(tmp_path: Path) -> None:
    data = b"junk ahead of the first From_ line\r\n" + mbox(ONE, TWO).replace(b"\n", b"\r\n")
    path = tmp_path / "crlf.mbox"
    path.write_bytes(data)
    got = list(read_mbox(path))
    assert got[0] == ONE.replace(b"\n", b"\r\n")
    assert len(got) == 2 and b"From the start" in got[1]


def test_mbox_oversized_message_is_skipped(tmp_path: Path) -> None:
    big = b"From: big@example.org\n\n" + b"x" * 100 + b"\n" + (b"y" * 200_000) + b"\n"
    path = tmp_path / "big.mbox"
    path.write_bytes(mbox(ONE, big, THREE))
    source = MessageSource(path, max_size=10_000)
    assert list(source) == [ONE, THREE]
    assert (source.read, source.skipped) == (2, 1)


def test_mbox_very_long_lines_are_kept_whole(tmp_path: Path) -> None:
    long = b"From: l@example.org\n\n" + b"z" * 300_000 + b"\nFrom no separator here\n"
    path = tmp_path / "long.mbox"
    path.write_bytes(mbox(long, ONE))
    assert list(read_mbox(path)) == [long, ONE]


def test_single_message_file(tmp_path: Path) -> None:
    path = tmp_path / "msg.eml"
    path.write_bytes(ONE)
    assert detect(path) == "file"
    assert list(MessageSource(path)) == [ONE]
    source = MessageSource(path, max_size=10)
    assert list(source) == [] and source.skipped == 1


def test_file_with_a_from_line_is_an_mbox_of_one(tmp_path: Path) -> None:
    # The SpamAssassin corpus stores each message this way.
    path = tmp_path / "00001.txt"
    path.write_bytes(b"From sender@example.org  Thu Aug 22 12:36:23 2002\n" + ONE)
    assert list(MessageSource(path)) == [ONE]


def test_maildir(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "cur" / "1.host:2,S").write_bytes(ONE)
    (root / "new" / "2.host").write_bytes(TWO)
    (root / "tmp" / "3.host").write_bytes(THREE)  # being delivered: not read
    (root / "cur" / ".hidden").write_bytes(THREE)
    (root / "cur" / "4.host:2,").write_bytes(b"x" * 5000)  # too large below
    os.symlink(root / "cur" / "1.host:2,S", root / "cur" / "5.link")
    (root / ".Junk" / "cur").mkdir(parents=True)  # a Maildir++ sub-folder: not entered
    (root / ".Junk" / "cur" / "6.host").write_bytes(THREE)
    assert detect(root) == "maildir"
    source = MessageSource(root, max_size=1000)
    assert list(source) == [ONE, TWO]
    assert source.skipped == 1


def test_not_a_maildir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a Maildir"):
        MessageSource(tmp_path)
    with pytest.raises(FileNotFoundError):
        MessageSource(tmp_path / "missing")


def test_train_from_an_mbox(tmp_path: Path) -> None:
    path = tmp_path / "junk.mbox"
    path.write_bytes(mbox(ONE, TWO, THREE, ONE))
    with JunkFilter(tmp_path / "spam") as junk:
        report = junk.train_from("u@example.test", MessageSource(path), spam=True)
        assert (report.learned, report.unchanged) == (3, 1)
        assert junk.status("u@example.test").spam == 3
