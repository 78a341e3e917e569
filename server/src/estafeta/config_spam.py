"""Configuration of the spam defences: ``[screen]``, ``[dnsbl]``, ``[greylist]``,
``[spam]`` and ``[rspamd]`` (issue 16; docs/spam.md explains each signal).

Example::

    [screen]                 # checks on the MX listener before and at the greeting
    greeting_pause = "1s"    # pregreet test; 0 turns it off
    fcrdns = "signal"        # off | signal | reject
    helo = "signal"          # off | signal | reject

    [dnsbl]
    timeout = "2s"
    reject_score = 1.0
    [[dnsbl.zone]]
    name = "zen.spamhaus.org"
    codes = ["127.0.0.2-127.0.0.11"]
    [[dnsbl.domain_zone]]
    name = "dbl.spamhaus.org"
    codes = ["127.0.1.2-127.0.1.99"]

    [greylist]
    enabled = true
    delay = "5m"

    [spam]
    enabled = true
    threshold = 0.9

    [rspamd]
    url = "http://127.0.0.1:11333"
    controller_url = "http://127.0.0.1:11334"
    password_file = "/etc/estafeta/rspamd.password"

Parsed here, checked by the modules that use them (``policy.dnsbl.Zone``,
``policy.greylist.Settings``): an impossible value is a ``ConfigError``
naming the key and the file, never a traceback.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from estafeta.policy import dnsbl, greylist
from estafeta.spam import DEFAULT_EXECUTABLE_EXTENSIONS, SpamSettings

if TYPE_CHECKING:
    from estafeta.config import _Reader

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CHECK_MODES = ("off", "signal", "reject")
RSPAMD_FAILURE = ("accept", "tempfail")


@dataclass(frozen=True)
class ScreenConfig:
    """Checks of a client on the MX listener, before its first command."""

    # rfc5321:4.2 — a multi-line greeting: "220-" first, the final "220 "
    # after this pause; a client that talks in between is an early talker.
    greeting_pause: float = 1.0
    pregreet_ttl: float = 86400.0  # a client that passed skips the pause this long
    pregreet_cache: int = 100_000  # client addresses remembered as passed
    fcrdns: str = "signal"
    helo: str = "signal"
    trusted: tuple[Network, ...] = ()  # skip the screen and greylisting


@dataclass(frozen=True)
class DnsblConfig:
    settings: dnsbl.Settings = field(default_factory=dnsbl.Settings)
    reject_score: float = 1.0  # block zones' summed weight that refuses the client

    @property
    def enabled(self) -> bool:
        return bool(self.settings.zones)


@dataclass(frozen=True)
class GreylistConfig:
    enabled: bool = True
    settings: greylist.Settings = field(default_factory=greylist.Settings)
    # SPF pass for the MAIL FROM domain: a real MTA that retries anyway
    # (docs/spam.md: what greylisting catches and what it costs).
    skip_spf_pass: bool = True
    allow: tuple[Network, ...] = ()


@dataclass(frozen=True)
class SpamConfig:
    enabled: bool = True
    settings: SpamSettings = field(default_factory=SpamSettings)
    reject_executables: bool = True
    # Addresses ("alice@example.org") or domains ("@example.org") never junked.
    allow_senders: tuple[str, ...] = ()


@dataclass(frozen=True)
class RspamdConfig:
    url: str = ""  # "": rspamd is not used
    controller_url: str = ""
    password_file: Path | None = None
    timeout: float = 5.0
    on_failure: str = "accept"
    learn: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.url)


def screen_config(reader: _Reader) -> ScreenConfig:
    from estafeta.config import _duration, _networks, _positive

    d = ScreenConfig()
    config = ScreenConfig(
        greeting_pause=_duration(reader, "greeting_pause", d.greeting_pause, allow_zero=True),
        pregreet_ttl=_duration(reader, "pregreet_ttl", d.pregreet_ttl, allow_zero=True),
        pregreet_cache=_positive(reader, "pregreet_cache", d.pregreet_cache),
        fcrdns=_choice(reader, "fcrdns", d.fcrdns, CHECK_MODES),
        helo=_choice(reader, "helo", d.helo, CHECK_MODES),
        trusted=_networks(reader, "trusted"),
    )
    if config.greeting_pause > 60:
        raise reader.error("greeting_pause", "must be at most 60 seconds (clients give up)")
    reader.check_unknown()
    return config


def dnsbl_config(reader: _Reader) -> DnsblConfig:
    from estafeta.config import _duration, _positive

    d = dnsbl.Settings()
    zones = _zones(reader, "zone", domain=False)
    domain_zones = _zones(reader, "domain_zone", domain=True)
    timeout = _duration(reader, "timeout", d.timeout)
    max_domains = reader.get("max_domains", int, d.max_domains)
    if max_domains < 0:
        raise reader.error("max_domains", "must be 0 (no URL lookups) or more")
    cache_ttl = _duration(reader, "cache_ttl", d.cache_ttl, allow_zero=True)
    settings = dnsbl.Settings(
        zones=zones,
        domain_zones=domain_zones,
        timeout=timeout,
        max_domains=max_domains,
        cache_size=reader.get("cache_size", int, d.cache_size),
        cache_ttl=cache_ttl,
        max_inflight=_positive(reader, "max_inflight", d.max_inflight),
        fetch_reason=reader.get("fetch_reason", bool, d.fetch_reason),
    )
    if settings.cache_size < 0:
        raise reader.error("cache_size", "must be 0 (no cache) or more")
    reject_score = reader.get("reject_score", float, 1.0)
    if not (math.isfinite(reject_score) and reject_score > 0):
        raise reader.error("reject_score", "must be a number greater than 0")
    reader.check_unknown()
    return DnsblConfig(settings=settings, reject_score=reject_score)


def _zones(reader: _Reader, name: str, *, domain: bool) -> tuple[dnsbl.Zone, ...]:
    from estafeta.config import ConfigError, _Reader

    entries = reader.get(name, list, default=[])
    zones: list[dnsbl.Zone] = []
    for i, entry in enumerate(entries):
        key = f"{reader.key(name)}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(reader.path, key, "must be a table like { name = ... }")
        zone_reader = _Reader(reader.path, entry, prefix=f"{key}.")
        zone_name = zone_reader.get("name", str, required=True)
        kind = zone_reader.get("kind", str, "block")
        if domain and kind != "block":
            raise zone_reader.error("kind", "domain zones are block lists")
        codes = tuple(zone_reader.string_list("codes"))
        weight = zone_reader.get("weight", float, 1.0)
        ipv4 = zone_reader.get("ipv4", bool, True)
        ipv6 = zone_reader.get("ipv6", bool, True)
        zone_reader.check_unknown()
        try:
            zones.append(dnsbl.Zone(zone_name, kind, codes, weight, ipv4, ipv6))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(reader.path, key, str(exc)) from None
    names = [z.name for z in zones]
    if len(set(names)) != len(names):
        raise reader.error(name, "lists a zone twice")
    return tuple(zones)


def greylist_config(reader: _Reader) -> GreylistConfig:
    from estafeta.config import ConfigError, _duration, _networks, _positive

    d = greylist.Settings()
    ipv4_prefix = reader.get("ipv4_prefix", int, d.ipv4_prefix)
    if not 8 <= ipv4_prefix <= 32:
        raise reader.error("ipv4_prefix", "must be from 8 to 32")
    ipv6_prefix = reader.get("ipv6_prefix", int, d.ipv6_prefix)
    if not 16 <= ipv6_prefix <= 128:
        raise reader.error("ipv6_prefix", "must be from 16 to 128")
    auto_allow = reader.get("auto_allow", int, d.auto_allow)
    if auto_allow < 0:
        raise reader.error("auto_allow", "must be 0 (never) or more")
    delay = _duration(reader, "delay", d.delay, allow_zero=True)
    retry_window = _duration(reader, "retry_window", d.retry_window)
    if retry_window <= delay:
        raise reader.error("retry_window", "must be longer than delay")
    try:
        settings = greylist.Settings(
            delay=delay,
            retry_window=retry_window,
            expire=_duration(reader, "expire", d.expire),
            auto_allow=auto_allow,
            ipv4_prefix=ipv4_prefix,
            ipv6_prefix=ipv6_prefix,
            max_pending=_positive(reader, "max_pending", d.max_pending),
            max_passed=_positive(reader, "max_passed", d.max_passed),
            sender_min_age=_duration(reader, "sender_min_age", d.sender_min_age, allow_zero=True),
        )
    except ValueError as exc:
        raise ConfigError(reader.path, reader.prefix.rstrip("."), str(exc)) from None
    config = GreylistConfig(
        enabled=reader.get("enabled", bool, True),
        settings=settings,
        skip_spf_pass=reader.get("skip_spf_pass", bool, True),
        allow=_networks(reader, "allow"),
    )
    reader.check_unknown()
    return config


def spam_config(reader: _Reader) -> SpamConfig:
    from estafeta.config import ConfigError, _positive

    d = SpamSettings()
    threshold = reader.get("threshold", float, d.threshold)
    if not 0.5 <= threshold <= 1.0:
        raise reader.error("threshold", "must be from 0.5 to 1.0 (the score of a sure spam)")
    extensions = DEFAULT_EXECUTABLE_EXTENSIONS
    if "executable_extensions" in reader.table:
        names = reader.string_list("executable_extensions")
        for i, text in enumerate(names):
            if not text or not text.lstrip(".").isalnum():
                raise ConfigError(
                    reader.path,
                    f"{reader.key('executable_extensions')}[{i}]",
                    f"{text!r} is not a file name extension like 'exe'",
                )
        extensions = frozenset(text.lstrip(".").lower() for text in names)
    settings = SpamSettings(
        threshold=threshold,
        min_spam=_positive(reader, "min_spam", d.min_spam),
        min_ham=_positive(reader, "min_ham", d.min_ham),
        max_tokens=_positive(reader, "max_tokens", d.max_tokens),
        max_trained=_positive(reader, "max_trained", d.max_trained),
        executable_extensions=extensions,
    )
    senders: list[str] = []
    for i, text in enumerate(reader.string_list("allow_senders")):
        entry = text.strip().lower()
        local, at, domain = entry.rpartition("@")
        if not at or not domain or "." not in domain or " " in entry:
            raise ConfigError(
                reader.path,
                f"{reader.key('allow_senders')}[{i}]",
                f"{text!r} is not an address (alice@example.org) or a domain (@example.org)",
            )
        senders.append(entry if local else "@" + domain)
    config = SpamConfig(
        enabled=reader.get("enabled", bool, True),
        settings=settings,
        reject_executables=reader.get("reject_executables", bool, True),
        allow_senders=tuple(senders),
    )
    reader.check_unknown()
    return config


def rspamd_config(reader: _Reader, base: Path) -> RspamdConfig:
    from estafeta.config import _duration, _path

    url = _url(reader, "url")
    controller = _url(reader, "controller_url")
    config = RspamdConfig(
        url=url,
        controller_url=controller,
        password_file=_path(reader, "password_file", base),
        timeout=_duration(reader, "timeout", 5.0),
        on_failure=_choice(reader, "on_failure", "accept", RSPAMD_FAILURE),
        learn=reader.get("learn", bool, True),
    )
    if config.learn and url and not controller:
        raise reader.error("controller_url", "is needed for learn = true (rspamd's controller)")
    reader.check_unknown()
    return config


def _url(reader: _Reader, name: str) -> str:
    text = reader.get(name, str, "")
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise reader.error(name, f"{text!r} is not a URL like http://127.0.0.1:11333")
    try:
        parts.port  # noqa: B018 — raises on a bad port
    except ValueError as exc:
        raise reader.error(name, f"{text!r}: {exc}") from None
    return text.rstrip("/")


def _choice(reader: _Reader, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = reader.get(name, str, default)
    if value not in choices:
        raise reader.error(name, f"must be one of {', '.join(choices)}")
    return value
