"""The settings of a cluster node's database and object store, as
``[store.database]`` and ``[store.objects]`` give them (estafeta.config_store
reads and checks them; this module has no dependency on the config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from estafeta.cluster.url import DatabaseURL


@dataclass(frozen=True)
class DatabaseConfig:
    url: DatabaseURL
    password_file: Path | None = None
    tls: str = "verify-full"
    ca_file: Path | None = None
    pool_size: int = 10
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class ObjectsConfig:
    kind: str = "s3"
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    credentials_file: Path | None = None
