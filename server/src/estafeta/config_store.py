"""Configuration of the store backend: ``[store]`` (issue 23; docs/scale.md).

The embedded default is the local backend (Maildir and SQLite under
``data_dir``), which needs no section at all. A cluster node::

    [store]
    backend = "cluster"
    node = "mx1"                        # this node's name (default: the hostname)
    cache_dir = "/var/cache/estafeta"   # bodies read lately (default: data_dir/cache)
    cache_mib = 1024                    # the cache's bound
    queue_lease = "300s"                # a dead node's outbound claims lapse after this

    [store.database]
    url = "postgresql://estafeta@db.example.net:5432/estafeta"
    password_file = "/etc/estafeta/db-password"   # 0600 or 0640; never in the URL
    tls = "verify-full"                 # verify-full | verify-ca | require | disable
    ca_file = "/etc/estafeta/db-ca.pem" # default: the system's CAs
    pool_size = 10

    [store.objects]
    kind = "s3"                         # or "database": bodies in PostgreSQL
    bucket = "estafeta-mail"
    prefix = "mail"
    endpoint = "https://s3.eu-central-1.amazonaws.com"   # MinIO, Garage, Ceph RGW...
    region = "eu-central-1"
    path_style = false                  # true for MinIO, Garage and most others
    credentials_file = "/etc/estafeta/s3.ini"   # else boto3's environment chain

``tls = "disable"`` is refused unless the host is a loopback address: the
password and all mail would cross the network in the clear.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from estafeta.cluster.settings import DatabaseConfig, ObjectsConfig
from estafeta.cluster.url import URLError, parse_url

if TYPE_CHECKING:
    from estafeta.config import _Reader

BACKENDS = ("local", "cluster")
TLS_MODES = ("verify-full", "verify-ca", "require", "disable")
OBJECT_KINDS = ("s3", "database")


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "local"
    node: str = field(default_factory=socket.gethostname)
    cache_dir: Path | None = None  # None: data_dir / "cache"
    cache_mib: int = 1024
    database: DatabaseConfig | None = None
    objects: ObjectsConfig = field(default_factory=ObjectsConfig)
    # How long a node's claim of an outbound queue entry lasts without renewal:
    # a node that dies holding claims leaves them to another after this long.
    queue_lease: float = 300.0

    @property
    def cluster(self) -> bool:
        return self.backend == "cluster"


def store_config(reader: _Reader, base: Path) -> StoreConfig:
    from estafeta.config import _duration, _path, _positive

    backend = reader.get("backend", str, "local")
    if backend not in BACKENDS:
        raise reader.error("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    node = reader.get("node", str, "") or socket.gethostname()
    if not node.replace("-", "").replace(".", "").replace("_", "").isalnum() or len(node) > 63:
        raise reader.error("node", f"{node!r}: letters, digits, '.', '-' and '_', 1-63 of them")
    cache_dir = _path(reader, "cache_dir", base)
    cache_mib = _positive(reader, "cache_mib", 1024)
    queue_lease = _duration(reader, "queue_lease", 300.0)
    if queue_lease < 10:
        # A lease must outlast the runner's renewal round (queue/runner.py renews
        # every lease/3) plus a database round trip, or live attempts lose it.
        raise reader.error("queue_lease", "must be 10s or more")
    database_reader = reader.table_of("database")
    objects_reader = reader.table_of("objects")
    database = database_config(database_reader, base) if database_reader.table else None
    objects = objects_config(objects_reader, base)
    if backend == "cluster":
        if database is None:
            raise reader.error("database", 'backend = "cluster" needs [store.database] url = ...')
        if objects.kind == "s3" and not objects.bucket:
            raise objects_reader.error(
                "bucket",
                'is required with kind = "s3" (or kind = "database": bodies in PostgreSQL)',
            )
    reader.check_unknown()
    return StoreConfig(backend, node, cache_dir, cache_mib, database, objects, queue_lease)


def database_config(reader: _Reader, base: Path) -> DatabaseConfig:
    from estafeta.config import _path, _positive

    text = reader.get("url", str, required=True)
    try:
        url = parse_url(text)
    except URLError as exc:
        raise reader.error("url", str(exc)) from None
    tls = reader.get("tls", str, "verify-full")
    if tls not in TLS_MODES:
        raise reader.error("tls", f"must be one of {', '.join(TLS_MODES)}, got {tls!r}")
    if tls == "disable" and not _loopback(url.host):
        raise reader.error(
            "tls",
            f'"disable" sends the password and all mail to {url.host} in the clear; '
            "it is allowed for a loopback host only",
        )
    timeout = reader.get("connect_timeout", float, 10.0)
    if timeout <= 0:
        raise reader.error("connect_timeout", "must be greater than 0")
    config = DatabaseConfig(
        url=url,
        password_file=_path(reader, "password_file", base),
        tls=tls,
        ca_file=_path(reader, "ca_file", base),
        pool_size=_positive(reader, "pool_size", 10),
        connect_timeout=timeout,
    )
    if config.pool_size < 2:
        raise reader.error("pool_size", "must be 2 or more (one connection listens for changes)")
    reader.check_unknown()
    return config


def objects_config(reader: _Reader, base: Path) -> ObjectsConfig:
    from estafeta.config import _path

    kind = reader.get("kind", str, "s3")
    if kind not in OBJECT_KINDS:
        raise reader.error("kind", f"must be one of {', '.join(OBJECT_KINDS)}, got {kind!r}")
    endpoint = reader.get("endpoint", str, "") or None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise reader.error("endpoint", f"{endpoint!r} is not a URL like https://host:port")
    bucket = reader.get("bucket", str, "")
    if bucket and not (3 <= len(bucket) <= 63):
        raise reader.error("bucket", f"{bucket!r}: a bucket name has 3 to 63 characters")
    config = ObjectsConfig(
        kind=kind,
        bucket=bucket,
        prefix=reader.get("prefix", str, "").strip("/"),
        endpoint=endpoint,
        region=reader.get("region", str, "") or None,
        path_style=reader.get("path_style", bool, False),
        credentials_file=_path(reader, "credentials_file", base),
    )
    reader.check_unknown()
    return config


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
