"""Backup objects: compressed, encrypted, content-addressed blobs (issue 18).

Everything a snapshot stores off the host is an object made here, so that
the destination (a directory, an S3 bucket) only ever holds ciphertext:

* **Keys.** One master key per installation, 32 random octets in a file of
  its own (``generate_key``; losing it loses every backup). Each *scope*
  (an account's address, or ``""`` for what belongs to the server) gets a
  random subkey, kept in the ``Keyring``, which is sealed with the master
  key and stored beside the snapshots. Destroying a scope's subkey
  (``Keyring.destroy``, for ``estafeta user erase``) makes every object of
  that scope in every old snapshot unreadable, while the others still
  restore: crypto-erasure. Subkeys are random, not derived from the master
  key, for exactly that reason.
* **Names.** An object's id is HMAC-SHA256 of its plaintext under a key
  derived from its scope's subkey: the same content in the same scope has
  the same id (a later run uploads only what is new), and whoever holds the
  bucket cannot confirm a guess of the content from the name.
* **Sealing.** ``zlib`` (level 1: the backup must outrun the disk) then
  XChaCha20-Poly1305 (libsodium through PyNaCl) with a random 192-bit
  nonce and the id as associated data, so an object cannot be passed off
  under another name. ``open_object`` checks the tag, the size bound while
  decompressing, and that the plaintext hashes to the id.

Errors are ``BackupError`` with a message naming the object or the file;
``KeyDestroyed`` when the scope's subkey was destroyed on purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from nacl import bindings
from nacl.exceptions import CryptoError

KEY_SIZE = 32
NONCE_SIZE = bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
MAGIC = b"EBO1"  # estafeta backup object, version 1
KEYRING_MAGIC = b"EBK1"
# Largest plaintext an object may expand to (a message is at most
# [limits] max_message_size; index files are split by the caller).
MAX_OBJECT = 256 * 1024 * 1024
COMPRESSION = 1


class BackupError(Exception):
    """A backup could not be made, read or restored; the message says which
    object, file or setting."""


class KeyDestroyed(BackupError):
    """The scope's subkey was destroyed (``estafeta user erase``): its data
    in old snapshots cannot be read any more, by design."""


# -- the master key -----------------------------------------------------------------


def generate_key(path: Path) -> None:
    """Write a new master key to ``path`` (0600), never over an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise BackupError(f"{path}: a key file exists already; it is not replaced") from None
    except OSError as exc:
        raise BackupError(f"{path}: cannot create the key file: {exc.strerror}") from None
    try:
        os.write(fd, secrets.token_bytes(KEY_SIZE).hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key(path: Path) -> bytes:
    """The master key in ``path``: 64 hexadecimal digits, readable by its
    owner only (a key others can read is refused, as ssh refuses such a
    private key)."""
    try:
        info = os.stat(path)
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        raise BackupError(f"{path}: no key file (make one with 'estafeta backup key')") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise BackupError(f"{path}: cannot read the key file: {reason}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BackupError(f"{path}: the key file is readable by others; chmod 600 it")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_SIZE:
        raise BackupError(f"{path}: not a backup key (expected {KEY_SIZE * 2} hex digits)")
    return key


# -- objects ------------------------------------------------------------------------


def _id_key(subkey: bytes) -> bytes:
    return hmac.new(subkey, b"estafeta backup object id", hashlib.sha256).digest()


def object_id(subkey: bytes, data: bytes) -> str:
    """The name of ``data`` in a scope whose subkey is ``subkey``."""
    return hmac.new(_id_key(subkey), data, hashlib.sha256).hexdigest()


def seal_object(subkey: bytes, data: bytes) -> tuple[str, bytes]:
    """(id, blob) for ``data``: what goes to the destination."""
    name = object_id(subkey, data)
    return name, seal_named(subkey, name, data)


def seal_named(subkey: bytes, name: str, data: bytes) -> bytes:
    """The blob of ``data`` whose id ``name`` the caller computed already
    (``object_id``: to skip sealing what the destination holds)."""
    if len(data) > MAX_OBJECT:
        raise BackupError(f"an object of {len(data)} octets is over the {MAX_OBJECT} limit")
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        zlib.compress(data, COMPRESSION), name.encode(), nonce, subkey
    )
    return MAGIC + nonce + sealed


def open_object(subkey: bytes, name: str, blob: bytes) -> bytes:
    """The plaintext of object ``name``, after checking that it is whole,
    was sealed under this name with this key, and hashes to its name."""
    head = len(MAGIC) + NONCE_SIZE
    if len(blob) < head + bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES or not (
        blob.startswith(MAGIC)
    ):
        raise BackupError(f"object {name}: not a backup object (truncated or another format)")
    try:
        packed = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            blob[head:], name.encode(), blob[len(MAGIC) : head], subkey
        )
    except CryptoError:
        raise BackupError(
            f"object {name}: does not decrypt (corrupted, renamed, or another key)"
        ) from None
    inflate = zlib.decompressobj()
    try:
        data = inflate.decompress(packed, MAX_OBJECT)
    except zlib.error:
        raise BackupError(f"object {name}: its content does not decompress") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise BackupError(f"object {name}: larger than {MAX_OBJECT} octets or cut short")
    if not hmac.compare_digest(object_id(subkey, data), name):
        raise BackupError(f"object {name}: its content does not match its name")
    return data


# -- the keyring --------------------------------------------------------------------


@dataclass
class Keyring:
    """Per-scope subkeys, sealed with the master key (``seal``/``open``).

    ``destroyed`` remembers scopes erased on purpose, so that a restore
    says "key destroyed" rather than "no such account"; ``revoked`` holds
    the fingerprints of destroyed subkeys, so that ``merge`` with a copy
    read before the erasure (a ``backup create`` that was running) cannot
    bring a destroyed subkey back, while a new subkey for the same scope
    (a new account under an old address) survives."""

    subkeys: dict[str, bytes] = field(default_factory=dict)
    destroyed: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)

    def subkey(self, scope: str) -> bytes:
        """The scope's subkey for a new backup, made when first needed (a
        scope erased earlier and used again, e.g. a new account under an
        old address, gets a new one)."""
        key = self.subkeys.get(scope)
        if key is None:
            key = self.subkeys[scope] = secrets.token_bytes(KEY_SIZE)
            self.destroyed.discard(scope)
        return key

    def existing(self, scope: str) -> bytes:
        """The scope's subkey for reading old objects."""
        key = self.subkeys.get(scope)
        if key is not None:
            return key
        if scope in self.destroyed:
            raise KeyDestroyed(f"{scope or 'the server'}: key destroyed; its backups are erased")
        raise BackupError(f"{scope or 'the server'}: no key in the keyring")

    def destroy(self, scope: str) -> bool:
        """Forget the scope's subkey; whether there was one."""
        key = self.subkeys.pop(scope, None)
        if key is not None:
            self.revoked.add(fingerprint(key))
        self.destroyed.add(scope)
        return key is not None

    def merge(self, other: Keyring) -> None:
        """Take in what ``other`` (the copy at the destination, read again
        just before writing) knows: its subkeys and its destructions. A
        revoked subkey is dropped whichever copy still has it."""
        self.revoked |= other.revoked
        for scope, key in other.subkeys.items():
            mine = self.subkeys.get(scope)
            if mine is None and scope not in self.destroyed:
                self.subkeys[scope] = key
            elif mine is not None and mine != key and scope not in other.destroyed:
                # Two runs made a subkey for a new scope at once: keep the
                # one already stored, whose objects may be uploaded.
                self.subkeys[scope] = key
        self.destroyed |= {s for s in other.destroyed if s not in self.subkeys}
        for scope, key in list(self.subkeys.items()):
            if fingerprint(key) in self.revoked:
                del self.subkeys[scope]
                self.destroyed.add(scope)

    def seal(self, master: bytes) -> bytes:
        body = json.dumps(
            {
                "subkeys": {scope: key.hex() for scope, key in sorted(self.subkeys.items())},
                "destroyed": sorted(self.destroyed),
                "revoked": sorted(self.revoked),
            }
        ).encode()
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            body, KEYRING_MAGIC, nonce, master
        )
        return KEYRING_MAGIC + nonce + sealed

    @classmethod
    def open(cls, master: bytes, blob: bytes) -> Keyring:
        head = len(KEYRING_MAGIC) + NONCE_SIZE
        if not blob.startswith(KEYRING_MAGIC) or len(blob) < head:
            raise BackupError("the keyring is not a keyring (truncated or another format)")
        try:
            body = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                blob[head:], KEYRING_MAGIC, blob[len(KEYRING_MAGIC) : head], master
            )
        except CryptoError:
            raise BackupError(
                "the keyring does not decrypt: wrong master key, or the keyring is damaged"
            ) from None
        data = json.loads(body)
        return cls(
            {scope: bytes.fromhex(key) for scope, key in data["subkeys"].items()},
            set(data["destroyed"]),
            set(data.get("revoked", ())),
        )


def fingerprint(key: bytes) -> str:
    """A name for a subkey that does not reveal it."""
    return hashlib.sha256(b"estafeta backup subkey\0" + key).hexdigest()[:32]
