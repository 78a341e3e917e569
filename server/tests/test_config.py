"""Configuration: valid files load; each kind of mistake names file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from estafeta import config
from estafeta.config import ConfigError, Endpoint

GOOD = """
hostname = "MX.Example.TEST"
data_dir = "data"
domains = ["example.test", "Bücher.test"]

[listen]
smtp = ["127.0.0.1:2525", "[::1]:2525"]

[dns]
nameservers = ["127.0.0.53", "[::1]:5353"]

[limits]
max_message_size = 1000
command_timeout = 30

[log]
level = "debug"
format = "json"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "estafeta.toml"
    path.write_text(text)
    return path


def test_good_config(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert cfg.hostname == "mx.example.test"
    assert cfg.domains == ("example.test", "xn--bcher-kva.test")
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.listen["smtp"] == (Endpoint("127.0.0.1", 2525), Endpoint("::1", 2525))
    assert cfg.nameservers == (Endpoint("127.0.0.53", 53), Endpoint("::1", 5353))
    assert cfg.limits.max_message_size == 1000
    assert cfg.limits.command_timeout == 30.0
    assert cfg.limits.max_recipients == 100  # default
    assert cfg.log.format == "json"
    assert cfg.tls is None


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (('hostname = "MX.Example.TEST"\n', ""), "hostname", "is required"),
        (('domains = ["example.test", "Bücher.test"]', "domains = []"), "domains", "at least one"),
        (('domains = ["example.test", "Bücher.test"]', 'domains = ["a..b"]'), "domains[0]", ""),
        (
            ('domains = ["example.test", "Bücher.test"]', 'domains = "x.test"'),
            "domains",
            "must be a list",
        ),
        (
            ('domains = ["example.test", "Bücher.test"]', 'domains = ["a.test", "A.test"]'),
            "domains[1]",
            "listed twice",
        ),
        (('hostname = "MX', 'colour = true\nhostname = "MX'), "colour", "unknown key"),
        (('level = "debug"', 'levle = "debug"'), "log.levle", "unknown key"),
        (('level = "debug"', 'level = "loud"'), "log.level", "must be one of"),
        (('"127.0.0.1:2525",', '"127.0.0.1",'), "listen.smtp[0]", "missing port"),
        (('"127.0.0.1:2525",', '"127.0.0.1:70000",'), "listen.smtp[0]", "1 to 65535"),
        (('"[::1]:2525"', '"::1:2525"'), "listen.smtp[1]", "brackets"),
        (("smtp = [", "smpt = ["), "listen.smpt", "unknown key"),
        (('"127.0.0.53",', '"ns.example.test",'), "dns.nameservers[0]", "not an IP address"),
        (
            ("max_message_size = 1000", 'max_message_size = "big"'),
            "limits.max_message_size",
            "must be an integer",
        ),
        (
            ("max_message_size = 1000", "max_message_size = 0"),
            "limits.max_message_size",
            "greater than 0",
        ),
        (
            ("max_message_size = 1000", "max_message_size = true"),
            "limits.max_message_size",
            "must be an integer",
        ),
        (("[listen]", '[listen]\nimaps = ["127.0.0.1:993"]'), "listen.imaps", "needs [tls]"),
        (
            ("[listen]", '[listen]\nhttp = ["127.0.0.1:2525"]'),
            "listen.http",
            "also used by listen.smtp",
        ),
        (("[log]", '[tls]\ncert = "c.pem"\n[log]'), "tls.key", "is required"),
    ],
)
def test_errors_name_the_key(
    tmp_path: Path, change: tuple[str, str], key: str, message: str
) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as error:
        config.load(path)
    assert error.value.key == key
    assert message in error.value.message
    assert str(error.value).startswith(f"{path}: {key}: ")


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "hostname = \n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 1"):
        config.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.toml")


def test_unwritable_data_dir(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    path = write(tmp_path, GOOD.replace('data_dir = "data"', 'data_dir = "a-file/data"'))
    cfg = config.load(path)
    with pytest.raises(ConfigError) as error:
        config.check_runtime(cfg)
    assert error.value.key == "data_dir"


def test_tls_files_checked(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[log]", '[tls]\ncert = "c.pem"\nkey = "k.pem"\n[log]'))
    cfg = config.load(path)
    with pytest.raises(ConfigError) as error:
        config.check_runtime(cfg)
    assert error.value.key == "tls.cert"
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(ConfigError) as error:
        config.check_runtime(cfg)
    assert error.value.key == "tls.key"


def test_check_command(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    run = [sys.executable, "-m", "estafeta", "-c"]
    ok = subprocess.run([*run, str(good), "check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("max_message_size = 1000", "max_mesage_size = 1000"))
    result = subprocess.run([*run, str(bad), "check"], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{bad}: limits.max_mesage_size: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
