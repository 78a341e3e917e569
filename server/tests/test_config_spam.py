"""config_spam: the [screen], [dnsbl], [greylist], [spam] and [rspamd] tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from estafeta.config import ConfigError, from_dict

BASE = {"hostname": "mx.example.test", "data_dir": "/var/lib/estafeta", "domains": ["example.test"]}
PATH = Path("/etc/estafeta/estafeta.toml")


def load(**tables: Any) -> Any:
    return from_dict({**BASE, **tables}, PATH)


def test_defaults_suit_a_small_server() -> None:
    config = load()
    assert config.greylist.enabled and config.greylist.settings.delay == 300
    assert config.spam.enabled and config.spam.settings.threshold == 0.9
    assert not config.dnsbl.enabled and not config.rspamd.enabled
    assert config.screen.greeting_pause == 1.0
    assert config.spam_dir == Path("/var/lib/estafeta/spam")


def test_a_full_configuration() -> None:
    config = load(
        screen={"greeting_pause": "2s", "fcrdns": "reject", "trusted": ["192.0.2.0/24"]},
        dnsbl={
            "timeout": "3s",
            "reject_score": 2.0,
            "zone": [
                {"name": "zen.example", "codes": ["127.0.0.2-127.0.0.11"], "weight": 2},
                {"name": "wl.example", "kind": "allow"},
            ],
            "domain_zone": [{"name": "dbl.example", "codes": ["127.0.1.0/24"]}],
        },
        greylist={"delay": "1m", "auto_allow": 0, "allow": ["2001:db8::/32"]},
        spam={
            "threshold": 0.95,
            "executable_extensions": [".EXE", "js"],
            "allow_senders": ["@A.org"],
        },
        rspamd={"url": "http://127.0.0.1:11333/", "controller_url": "http://127.0.0.1:11334"},
    )
    assert [z.name for z in config.dnsbl.settings.zones] == ["zen.example", "wl.example"]
    assert config.dnsbl.settings.zones[1].kind == "allow"
    assert config.dnsbl.enabled and config.dnsbl.reject_score == 2.0
    assert config.greylist.settings.delay == 60 and config.greylist.settings.auto_allow == 0
    assert config.spam.settings.executable_extensions == frozenset({"exe", "js"})
    assert config.spam.allow_senders == ("@a.org",)
    assert config.rspamd.url == "http://127.0.0.1:11333"
    assert config.screen.fcrdns == "reject"


@pytest.mark.parametrize(
    ("tables", "key", "words"),
    [
        (
            {"dnsbl": {"zone": [{"name": "z.example", "codes": ["10.0.0.1"]}]}},
            "dnsbl.zone[0]",
            "127.0.0.0/8",
        ),
        (
            {"dnsbl": {"zone": [{"name": "z.example", "codes": ["127.255.255.254"]}]}},
            "dnsbl.zone[0]",
            "refused",
        ),
        ({"dnsbl": {"zone": [{"nam": "z.example"}]}}, "dnsbl.zone[0].name", "required"),
        (
            {"dnsbl": {"zone": [{"name": "z.example", "colour": 1}]}},
            "dnsbl.zone[0].colour",
            "unknown",
        ),
        (
            {"dnsbl": {"zone": [{"name": "z.example"}, {"name": "Z.example."}]}},
            "dnsbl.zone",
            "twice",
        ),
        (
            {"dnsbl": {"domain_zone": [{"name": "d.example", "kind": "allow"}]}},
            "dnsbl.domain_zone[0].kind",
            "block",
        ),
        ({"dnsbl": {"reject_score": 0}}, "dnsbl.reject_score", "greater than 0"),
        ({"greylist": {"delay": "3d"}}, "greylist.retry_window", "longer than delay"),
        ({"greylist": {"ipv4_prefix": 33}}, "greylist.ipv4_prefix", "8 to 32"),
        ({"greylist": {"allow": ["300.1.1.1"]}}, "greylist.allow[0]", "not a network"),
        ({"spam": {"threshold": 2}}, "spam.threshold", "0.5 to 1.0"),
        ({"spam": {"allow_senders": ["bob"]}}, "spam.allow_senders[0]", "not an address"),
        (
            {"spam": {"executable_extensions": ["e x e"]}},
            "spam.executable_extensions[0]",
            "extension",
        ),
        ({"rspamd": {"url": "https://x"}}, "rspamd.url", "URL like"),
        ({"rspamd": {"url": "http://127.0.0.1:11333"}}, "rspamd.controller_url", "learn"),
        ({"rspamd": {"on_failure": "drop"}}, "rspamd.on_failure", "accept, tempfail"),
        ({"screen": {"fcrdns": "maybe"}}, "screen.fcrdns", "off, signal, reject"),
        ({"screen": {"greeting_pause": "5m"}}, "screen.greeting_pause", "60 seconds"),
    ],
)
def test_errors_name_the_key(tables: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**tables)
    assert caught.value.key == key
    assert words in str(caught.value)
    assert str(PATH) in str(caught.value)
