"""``[store]`` (estafeta.config_store): the local default, a cluster node's
settings, and every mistake named by file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from estafeta import config
from estafeta.cluster.url import URLError, parse_url
from estafeta.config import ConfigError

BASE = 'hostname = "mx1.example.test"\ndata_dir = "data"\ndomains = ["example.test"]\n'
CLUSTER = """
[store]
backend = "cluster"
node = "mx1"

[store.database]
url = "postgresql://estafeta@db.example.test:6432/mail"
password_file = "db-password"
ca_file = "db-ca.pem"

[store.objects]
bucket = "estafeta-mail"
endpoint = "http://127.0.0.1:9000"
path_style = true
"""


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "estafeta.toml"
    path.write_text(BASE + text)
    return config.load(path)


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.path.endswith("estafeta.toml")
    return caught.value


def test_the_default_is_local(tmp_path: Path) -> None:
    store = load(tmp_path, "").store
    assert store.backend == "local" and not store.cluster and store.database is None


def test_a_cluster_node(tmp_path: Path) -> None:
    store = load(tmp_path, CLUSTER).store
    assert store.cluster and store.node == "mx1"
    assert store.database is not None
    assert str(store.database.url) == "postgresql://estafeta@db.example.test:6432/mail"
    assert store.database.tls == "verify-full"  # the default checks the host name
    assert store.database.password_file == (tmp_path / "db-password").resolve()
    assert store.objects.kind == "s3" and store.objects.bucket == "estafeta-mail"
    assert store.objects.path_style


def test_the_queue_lease(tmp_path: Path) -> None:
    assert load(tmp_path, CLUSTER).store.queue_lease == 300.0
    text = CLUSTER.replace('node = "mx1"', 'node = "mx1"\nqueue_lease = "45s"')
    assert load(tmp_path, text).store.queue_lease == 45.0


def test_bodies_in_the_database_need_no_bucket(tmp_path: Path) -> None:
    text = CLUSTER.replace('bucket = "estafeta-mail"\n', 'kind = "database"\n')
    assert load(tmp_path, text).store.objects.kind == "database"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[store]\nbackend = "postgres"\n', "store.backend", "must be one of local, cluster"),
        ('[store]\nbackend = "cluster"\n', "store.database", "needs [store.database]"),
        (CLUSTER.replace('bucket = "estafeta-mail"\n', ""), "store.objects.bucket", "is required"),
        (CLUSTER.replace("estafeta@", "estafeta:secret@"), "store.database.url", "password_file"),
        (CLUSTER.replace(":6432/mail", ":6432/mail?sslmode=disable"), "store.database.url",
         "takes no ?parameters"),
        (CLUSTER.replace("postgresql://", "mysql://"), "store.database.url", "not a URL like"),
        (CLUSTER.replace("estafeta@", ""), "store.database.url", "names no user"),
        (CLUSTER.replace(":6432/mail", ":6432/"), "store.database.url", "names no database"),
        (CLUSTER.replace(":6432", ":99999"), "store.database.url", "not a URL like"),
        (CLUSTER.replace('ca_file = "db-ca.pem"', 'tls = "disable"'), "store.database.tls",
         "in the clear"),
        (CLUSTER.replace('ca_file = "db-ca.pem"', 'tls = "prefer"'), "store.database.tls",
         "must be one of"),
        (CLUSTER.replace('ca_file = "db-ca.pem"', "pool_size = 1"), "store.database.pool_size",
         "2 or more"),
        (CLUSTER.replace('ca_file = "db-ca.pem"', "pool = 3"), "store.database.pool",
         "unknown key"),
        (CLUSTER.replace("http://127.0.0.1:9000", "127.0.0.1:9000"), "store.objects.endpoint",
         "is not a URL"),
        (CLUSTER.replace('bucket = "estafeta-mail"', 'kind = "gcs"'), "store.objects.kind",
         "must be one of s3, database"),
        (CLUSTER.replace('node = "mx1"', 'node = "mx 1"'), "store.node", "letters, digits"),
        ("[store]\ncache_mib = 0\n", "store.cache_mib", "greater than 0"),
        ('[store]\nqueue_lease = "5s"\n', "store.queue_lease", "10s or more"),
        ('[store]\nqueue_lease = "soon"\n', "store.queue_lease", ""),
        ("[store]\ncolour = 1\n", "store.colour", "unknown key"),
    ],
)  # fmt: skip
def test_mistakes_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    problem = error(tmp_path, text)
    assert problem.key == key, problem
    assert words in problem.message


def test_no_tls_is_allowed_on_loopback_only(tmp_path: Path) -> None:
    text = CLUSTER.replace("db.example.test", "127.0.0.1").replace(
        'ca_file = "db-ca.pem"', 'tls = "disable"'
    )
    database = load(tmp_path, text).store.database
    assert database is not None and database.tls == "disable"


def test_the_url_parser() -> None:
    url = parse_url("postgres://mail%40node@[2001:db8::5]/estafeta")
    assert (url.user, url.host, url.port, url.database) == (
        "mail@node",
        "2001:db8::5",
        5432,
        "estafeta",
    )
    assert str(url) == "postgresql://mail@node@[2001:db8::5]:5432/estafeta"
    with pytest.raises(URLError, match="names no host"):
        parse_url("postgresql://user@/db")


def test_check_names_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "estafeta.toml"
    path.write_text(BASE + CLUSTER)
    result = subprocess.run(
        [sys.executable, "-m", "estafeta", "-c", str(path), "check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "store.database.password_file" in result.stderr and "db-password" in result.stderr
    (tmp_path / "db-password").write_text("x\n")
    (tmp_path / "db-ca.pem").write_text("x\n")
    result = subprocess.run(
        [sys.executable, "-m", "estafeta", "-c", str(path), "check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # check reads the files; it does not connect (serve does, and says why not).
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
