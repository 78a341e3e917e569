"""DKIM keys on disk and signing with them.

Layout: ``data_dir/dkim/<domain>/<selector>.pem`` — PKCS#8 private keys, RSA or
Ed25519 (the algorithm is read from the key). Every key of a domain signs
its mail, so an RSA and an Ed25519 key under two selectors give the dual
signatures of rfc8463:5. ``estafeta dkim keygen`` writes the files; keys
added or removed while the server runs are picked up at the next message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from estafeta.address import normalize_domain
from estafeta.policy import dkim
from estafeta.policy.dkim import SigningKey

log = logging.getLogger("estafeta.dkim")


class DKIMKeyError(Exception):
    """A key cannot be written or read; the message says which file and why."""


class Signer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[Path, tuple[float, SigningKey]] = {}

    def key_path(self, domain: str, selector: str) -> Path:
        return self.directory / normalize_domain(domain) / f"{selector}.pem"

    def keys_for(self, domain: str) -> list[SigningKey]:
        folder = self.directory / domain
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix == ".pem")
        except OSError:
            return []
        keys = []
        for path in files:
            try:
                mtime = path.stat().st_mtime
                cached = self._cache.get(path)
                if cached is None or cached[0] != mtime:
                    cached = (mtime, dkim.load_key(path, domain, path.stem))
                    self._cache[path] = cached
                keys.append(cached[1])
            except (OSError, ValueError) as exc:
                log.error("DKIM key %s unusable: %s", path, exc)
        return keys

    def sign(self, domain: str, message: bytes) -> bytes:
        """DKIM-Signature fields (CRLF-terminated) for ``domain``'s keys, or b""."""
        keys = self.keys_for(domain)
        if not keys:
            return b""
        return dkim.sign(message, keys)

    def keygen(
        self, domain: str, selector: str, algorithm: str = "rsa", *, force: bool = False
    ) -> SigningKey:
        if algorithm not in dkim.ALGORITHMS:
            raise DKIMKeyError(f"algorithm must be one of {', '.join(dkim.ALGORITHMS)}")
        if not selector or not all(c.isalnum() or c in "-_" for c in selector):
            raise DKIMKeyError(f"selector {selector!r}: use letters, digits, '-' and '_'")
        path = self.key_path(domain, selector)
        if path.exists() and not force:
            raise DKIMKeyError(f"{path} exists; use --force to replace it (and update DNS)")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        pem = dkim.generate_key(algorithm)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        return dkim.load_key(path, normalize_domain(domain), selector)
