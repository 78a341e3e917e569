"""Backup objects and keys (estafeta.backup.objects): what reaches a backup
destination is whole, secret, named by content, and erasable per account."""

from __future__ import annotations

import os
import secrets
import zlib
from pathlib import Path

import pytest

from estafeta.backup import objects
from estafeta.backup.objects import BackupError, KeyDestroyed, Keyring


def _key() -> bytes:
    return secrets.token_bytes(objects.KEY_SIZE)


def test_an_object_round_trips_and_is_named_by_its_content() -> None:
    key = _key()
    data = b"Subject: hello\r\n\r\n" + b"body " * 1000
    name, blob = objects.seal_object(key, data)
    again, other_blob = objects.seal_object(key, data)
    assert name == again  # same content, same scope: uploaded once
    assert blob != other_blob  # but a fresh nonce each time
    assert objects.open_object(key, name, blob) == data
    assert data[:40] not in blob and len(blob) < len(data)  # encrypted, compressed
    assert objects.seal_object(_key(), data)[0] != name  # names differ between scopes


@pytest.mark.parametrize("where", [0, 5, 30, -1])
def test_a_damaged_object_is_refused_by_name(where: int) -> None:
    key = _key()
    name, blob = objects.seal_object(key, b"x" * 500)
    damaged = bytearray(blob)
    damaged[where] ^= 0x01
    with pytest.raises(BackupError, match=name):
        objects.open_object(key, name, bytes(damaged))


def test_an_object_under_another_name_or_key_is_refused() -> None:
    key = _key()
    name, blob = objects.seal_object(key, b"first")
    other, _ = objects.seal_object(key, b"second")
    with pytest.raises(BackupError, match="does not decrypt"):
        objects.open_object(key, other, blob)  # swapped names in the bucket
    with pytest.raises(BackupError, match="does not decrypt"):
        objects.open_object(_key(), name, blob)
    with pytest.raises(BackupError, match="not a backup object"):
        objects.open_object(key, name, blob[:20])


def test_a_decompression_bomb_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    key = _key()
    monkeypatch.setattr(objects, "MAX_OBJECT", 1 << 20)
    # Sealed by hand: seal_object refuses plaintext over the limit.
    packed = zlib.compress(b"\0" * (4 << 20), 9)
    name = objects.object_id(key, b"whatever")
    nonce = b"\1" * objects.NONCE_SIZE
    sealed = objects.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        packed, name.encode(), nonce, key
    )
    with pytest.raises(BackupError, match="larger than"):
        objects.open_object(key, name, objects.MAGIC + nonce + sealed)
    with pytest.raises(BackupError, match="over the"):
        objects.seal_object(key, b"\0" * ((1 << 20) + 1))


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "backup.key"
    objects.generate_key(path)
    assert (os.stat(path).st_mode & 0o777) == 0o600
    key = objects.load_key(path)
    assert len(key) == objects.KEY_SIZE
    with pytest.raises(BackupError, match="exists already"):
        objects.generate_key(path)
    assert objects.load_key(path) == key  # not replaced
    os.chmod(path, 0o644)
    with pytest.raises(BackupError, match="readable by others"):
        objects.load_key(path)
    bad = tmp_path / "bad.key"
    bad.write_text("not hex\n")
    os.chmod(bad, 0o600)
    with pytest.raises(BackupError, match="not a backup key"):
        objects.load_key(bad)
    with pytest.raises(BackupError, match="no key file"):
        objects.load_key(tmp_path / "missing.key")


def test_the_keyring_erases_one_scope() -> None:
    master = _key()
    ring = Keyring()
    alice, bob = ring.subkey("alice@example.test"), ring.subkey("bob@example.test")
    assert ring.subkey("alice@example.test") == alice
    a_name, a_blob = objects.seal_object(alice, b"alice's mail")
    b_name, b_blob = objects.seal_object(bob, b"bob's mail")
    stored = Keyring.open(master, ring.seal(master))
    assert stored.existing("alice@example.test") == alice

    assert stored.destroy("alice@example.test")
    reopened = Keyring.open(master, stored.seal(master))
    with pytest.raises(KeyDestroyed, match="key destroyed"):
        reopened.existing("alice@example.test")
    # The others still restore.
    assert objects.open_object(reopened.existing("bob@example.test"), b_name, b_blob) == (
        b"bob's mail"
    )
    with pytest.raises(BackupError, match="no key"):
        reopened.existing("carol@example.test")
    # A new account under the old address gets a new key, not the old one.
    assert reopened.subkey("alice@example.test") != alice
    with pytest.raises(BackupError):
        objects.open_object(reopened.existing("alice@example.test"), a_name, a_blob)


def test_the_keyring_needs_the_master_key() -> None:
    master = _key()
    sealed = Keyring({"": _key()}).seal(master)
    with pytest.raises(BackupError, match="wrong master key"):
        Keyring.open(_key(), sealed)
    with pytest.raises(BackupError, match="not a keyring"):
        Keyring.open(master, b"junk")
    damaged = bytearray(sealed)
    damaged[-1] ^= 1
    with pytest.raises(BackupError, match="does not decrypt"):
        Keyring.open(master, bytes(damaged))
