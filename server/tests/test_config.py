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


def test_acme_names_and_the_certificate_files(tmp_path: Path) -> None:
    text = GOOD.replace(
        "[log]",
        '[acme]\ndirectory = "https://ca.test/dir"\nnames = ["Webmail.Example.TEST."]\n[log]',
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.acme is not None
    assert cfg.acme.names == (
        "mx.example.test",
        "mta-sts.example.test",
        "autoconfig.example.test",
        "autodiscover.example.test",
        "mta-sts.xn--bcher-kva.test",
        "autoconfig.xn--bcher-kva.test",
        "autodiscover.xn--bcher-kva.test",
        "webmail.example.test",
    )
    assert cfg.tls is not None and cfg.tls.cert == cfg.acme_dir / "fullchain.pem"
    config.check_runtime(cfg)  # no certificate yet: the server makes a placeholder
    assert (cfg.acme.dane, cfg.acme.dane_ports, cfg.acme.dane_margin) == (False, (25,), 86400.0)
    text = GOOD.replace(
        "[log]",
        '[acme]\ndirectory = "https://ca.test/dir"\ndane = true\ndane_ports = [25, 465, 25]\n'
        'dane_margin = "30m"\n[log]',
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.acme is not None
    assert (cfg.acme.dane, cfg.acme.dane_ports, cfg.acme.dane_margin) == (True, (25, 465), 1800.0)


def test_web_and_mta_sts(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD))
    assert [str(n) for n in cfg.web.metrics_networks] == ["127.0.0.0/8", "::1/128"]
    assert (cfg.mta_sts.mode, cfg.mta_sts.max_age, cfg.mta_sts.mx) == ("testing", 604800, ())
    text = GOOD.replace(
        "[log]",
        '[web]\nmetrics_networks = ["10.0.0.0/8"]\nmetrics_token_file = "t"\nhsts_max_age = 0\n'
        '[mta_sts]\nmode = "enforce"\nmax_age = "1d"\nmx = ["MX.example.test.", "*.example.test"]\n'
        "[log]",
    )
    cfg = config.load(write(tmp_path, text))
    assert [str(n) for n in cfg.web.metrics_networks] == ["10.0.0.0/8"]
    assert cfg.web.metrics_token_file == tmp_path / "t"
    assert cfg.web.hsts_max_age == 0
    assert cfg.web.proxy_protocol_listeners == ("http", "https")
    cfg = config.load(
        write(
            tmp_path, text.replace("[mta_sts]", 'proxy_protocol_listeners = ["https"]\n[mta_sts]')
        )
    )
    assert cfg.web.proxy_protocol_listeners == ("https",)
    assert cfg.mta_sts.mx == ("mx.example.test", "*.example.test")
    assert (cfg.mta_sts.mode, cfg.mta_sts.max_age) == ("enforce", 86400)


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
        (
            ("max_message_size = 1000", "max_message_size = 1000\nmax_preauth_per_ip = 600"),
            "limits.max_preauth_per_ip",
            "not be larger than max_preauth_connections",
        ),
        (
            ("max_message_size = 1000", "max_message_size = 1000\nsmtp_hard_error_limit = 5"),
            "limits.smtp_hard_error_limit",
            "not be smaller than smtp_soft_error_limit",
        ),
        (
            ("max_message_size = 1000", "max_message_size = 1000\ndata_memory = 999"),
            "limits.data_memory",
            "at least max_message_size",
        ),
        (
            ("max_message_size = 1000", "max_message_size = 1000\nmax_mailboxes = 0"),
            "limits.max_mailboxes",
            "greater than 0",
        ),
        (
            ("max_message_size = 1000", 'max_message_size = 1000\nsmtp_error_delay = "soon"'),
            "limits.smtp_error_delay",
            "duration like",
        ),
        (("[listen]", '[listen]\nimaps = ["127.0.0.1:993"]'), "listen.imaps", "needs [tls]"),
        (("[listen]", '[listen]\nhttps = ["127.0.0.1:443"]'), "listen.https", "needs [tls]"),
        (("[log]", '[mta_sts]\nmode = "strict"\n[log]'), "mta_sts.mode", "enforce, testing"),
        (("[log]", '[queue]\ndane = "yes"\n[log]'), "queue.dane", "true or false"),
        (("[log]", '[mta_sts]\nmax_age = "400d"\n[log]'), "mta_sts.max_age", "at most 31557600"),
        (("[log]", '[mta_sts]\nmx = ["mx..x"]\n[log]'), "mta_sts.mx[0]", "not a host name"),
        (
            ("[log]", '[web]\nmetrics_networks = ["10.0.0.1/8"]\n[log]'),
            "web.metrics_networks[0]",
            "not a network",
        ),
        (("[log]", "[web]\nhsts_max_age = -1\n[log]"), "web.hsts_max_age", "0 or more"),
        (("[log]", "[web]\nhsts = 1\n[log]"), "web.hsts", "unknown key"),
        (
            ("[log]", '[web]\nproxy_protocol_listeners = ["https", "imap"]\n[log]'),
            "web.proxy_protocol_listeners[1]",
            "not a web listener",
        ),
        (
            ("[log]", "[web]\nproxy_protocol_listeners = []\n[log]"),
            "web.proxy_protocol_listeners",
            "http, https or both",
        ),
        (("[log]", '[acme]\nemail = "a@b.test"\n[log]'), "acme.directory", "is required"),
        (("[log]", '[acme]\ndirectory = "http://ca/dir"\n[log]'), "acme.directory", "https://"),
        (
            ("[log]", '[acme]\ndirectory = "https://ca/dir"\nchallenge = "dns-01"\n[log]'),
            "acme.challenge",
            "http-01, tls-alpn-01",
        ),
        (
            ("[log]", '[acme]\ndirectory = "https://ca/dir"\nnames = ["*.x.test"]\n[log]'),
            "acme.names[0]",
            "not a host name",
        ),
        (
            ("[log]", '[tls]\ncert = "c"\nkey = "k"\n[acme]\ndirectory = "https://ca/d"\n[log]'),
            "tls",
            "leave out [tls]",
        ),
        (
            ("[log]", '[acme]\ndirectory = "https://ca/dir"\ndane_ports = [25, 70000]\n[log]'),
            "acme.dane_ports",
            "1 to 16 TCP ports",
        ),
        (
            ("[log]", '[acme]\ndirectory = "https://ca/dir"\ndane_ports = []\n[log]'),
            "acme.dane_ports",
            "1 to 16 TCP ports",
        ),
        (
            ("[log]", '[acme]\ndirectory = "https://ca/dir"\ndane_margin = "400d"\n[log]'),
            "acme.dane_margin",
            "at most a year",
        ),
        (
            ("[listen]", '[listen]\nhttp = ["127.0.0.1:2525"]'),
            "listen.http",
            "also used by listen.smtp",
        ),
        (("[log]", '[tls]\ncert = "c.pem"\n[log]'), "tls.key", "is required"),
        (
            ("[listen]", '[listen]\nsubmission = ["127.0.0.1:587"]'),
            "listen.submission",
            "AUTH is only offered after TLS",
        ),
        (
            ("[listen]", '[listen]\nmanagesieve = ["127.0.0.1:4190"]'),
            "listen.managesieve",
            "AUTH is only offered after TLS",
        ),
        (("[log]", '[delivery]\nover_quota = "bounce"\n[log]'), "delivery.over_quota", "one of"),
        (("[log]", "[sieve]\nmax_redirects = -1\n[log]"), "sieve.max_redirects", "0 (no"),
        (("[log]", "[sieve]\nmax_scripts = 0\n[log]"), "sieve.max_scripts", "greater than 0"),
        (
            ("[log]", '[sieve]\nvacation_min_period = "2d"\nvacation_max_period = "1d"\n[log]'),
            "sieve.vacation_max_period",
            "not be shorter",
        ),
        (("[log]", '[sieve]\nglobal_before = "x.sieve"\n[log]'), "sieve.global_before", "list"),
        (("[log]", "[sieve]\nregex = true\n[log]"), "sieve.regex", "unknown"),
        (("[log]", '[queue]\nlifetime = "5 days"\n[log]'), "queue.lifetime", "duration like"),
        (("[log]", "[queue]\nlifetime = 0\n[log]"), "queue.lifetime", "greater than 0"),
        (
            ("[log]", '[queue]\nretry_min = "2h"\nretry_max = "1h"\n[log]'),
            "queue.retry_max",
            "not be smaller",
        ),
        (("[log]", '[queue]\ntls = "maybe"\n[log]'), "queue.tls", "must be one of"),
        (
            ("[log]", '[queue]\nsource_address = "mx.example"\n[log]'),
            "queue.source_address",
            "not an IP",
        ),
        (("[log]", "[queue]\nport = 70000\n[log]"), "queue.port", "port number"),
        (("[log]", "[queue.relay]\nport = 25\n[log]"), "queue.relay.host", "is required"),
        (
            ("[log]", '[queue.relay]\nhost = "smtp.example:587"\nusername = "u"\n[log]'),
            "queue.relay.password_file",
            "required when username",
        ),
        (
            ("[log]", '[queue.relay]\nhost = "smtp.example"\nsecurity = "ssl"\n[log]'),
            "queue.relay.security",
            "must be one of",
        ),
        (("[log]", "[inbound]\ndmarc = true\n[log]"), "inbound.dmarc", "unknown key"),
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


def test_queue_and_relay_settings(tmp_path: Path) -> None:
    (tmp_path / "relay.secret").write_text("s3cret\n")
    text = GOOD.replace(
        "[log]",
        '[queue]\nlifetime = "2d"\ndelay_warning = 600\nretry_min = "30s"\n'
        'source_address = "192.0.2.1"\n'
        '[queue.relay]\nhost = "smtp.provider.example"\nusername = "me"\n'
        'password_file = "relay.secret"\n[log]',
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.queue.lifetime == 2 * 86400
    assert cfg.queue.delay_warning == 600
    assert cfg.queue.retry_min == 30 and cfg.queue.retry_max == 3600
    assert cfg.queue.tls == "opportunistic" and cfg.queue.mta_sts and cfg.queue.dane
    relay = cfg.queue.relay
    assert relay is not None
    assert relay.host == Endpoint("smtp.provider.example", 587)  # STARTTLS default port
    assert relay.password() == "s3cret"
    assert cfg.inbound.authenticate and cfg.inbound.dmarc_reject
    (tmp_path / "relay.secret").unlink()
    with pytest.raises(ConfigError) as error:
        config.check_runtime(cfg)
    assert error.value.key == "queue.relay.password_file"


def test_queue_dane_can_be_turned_off(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, GOOD.replace("[log]", "[queue]\ndane = false\n[log]")))
    assert cfg.queue.dane is False


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


def test_global_sieve_scripts_checked_with_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        GOOD.replace(
            "[log]",
            '[sieve]\nglobal_before = ["spam.sieve"]\nglobal_after = ["after.sieve"]\n[log]',
        ),
    )
    cfg = config.load(path)
    assert cfg.sieve.global_before == ((tmp_path / "spam.sieve").resolve(),)
    with pytest.raises(ConfigError) as error:
        config.check_runtime(cfg)
    assert error.value.key == "sieve.global_before[0]" and "cannot read" in str(error.value)
    (tmp_path / "spam.sieve").write_text('require "fileinto";\nif true {\n  fileinto "Junk"\n}\n')
    (tmp_path / "after.sieve").write_text("keep;\n")
    with pytest.raises(ConfigError) as error:
        config.check_runtime(cfg)
    assert error.value.key == "sieve.global_before[0]"
    assert f"{tmp_path / 'spam.sieve'}:4:1:" in str(error.value)
    (tmp_path / "spam.sieve").write_text('require "fileinto";\nfileinto "Junk";\n')
    config.check_runtime(cfg)


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
