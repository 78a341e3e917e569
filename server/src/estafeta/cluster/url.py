"""The database URL of ``[store.database] url``: ``postgresql://USER@HOST[:PORT]/DATABASE``.

libpq's URI form (https://www.postgresql.org/docs/15/libpq-connect.html,
34.1.1.2) without the parts estafeta takes from elsewhere: no password (it
lives in ``password_file``, so the config file can be world-readable and
the URL can be logged) and no query parameters (TLS is ``tls`` and
``ca_file``). IPv6 hosts are written in brackets.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 5432


class URLError(ValueError):
    """What is wrong with a database URL, in words for a config error."""


@dataclass(frozen=True)
class DatabaseURL:
    user: str
    host: str
    port: int
    database: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{self.user}@{host}:{self.port}/{self.database}"


def parse_url(text: str) -> DatabaseURL:
    """The parts of ``text``; URLError says what to write instead."""
    example = "postgresql://USER@HOST:PORT/DATABASE"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise URLError(f"{text!r} is not a URL like {example}: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise URLError(f"{text!r} is not a URL like {example}")
    if parts.password is not None:
        raise URLError(
            "holds a password: put it in password_file (0600) and leave it out of the URL"
        )
    if parts.query or parts.fragment:
        raise URLError(
            "takes no ?parameters: TLS is set with tls and ca_file, the password with password_file"
        )
    if not parts.username:
        raise URLError(f"names no user: {example}")
    if not parts.hostname:
        raise URLError(f"names no host: {example}")
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise URLError(f"names no database: {example}")
    return DatabaseURL(unquote(parts.username), parts.hostname, port or DEFAULT_PORT, database)
