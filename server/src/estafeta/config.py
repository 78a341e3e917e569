"""Configuration: one TOML file, validated before anything starts.

Every error names the file and the dotted key that is wrong, so that
``estafeta -c FILE check`` can tell an operator exactly what to fix.
Unknown keys are errors too: a typo must not silently fall back to a default.

Example::

    hostname = "mx.example.test"
    data_dir = "/var/lib/estafeta"
    domains = ["example.test"]

    [listen]
    smtp = ["0.0.0.0:25", "[::]:25"]

    [tls]
    cert = "/etc/estafeta/tls/fullchain.pem"
    key = "/etc/estafeta/tls/privkey.pem"

    [limits]
    max_message_size = 52428800

    [log]
    level = "info"
    format = "text"
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import argon2

from estafeta.address import AddressError, normalize_domain
from estafeta.auth.logincache import MAX_LIFETIME as LOGIN_CACHE_MAX_LIFETIME
from estafeta.config_backup import BackupConfig, backup_config
from estafeta.config_reports import ReportsConfig, reports_config
from estafeta.config_retention import RetentionConfig, retention_config
from estafeta.config_spam import (
    DnsblConfig,
    GreylistConfig,
    RspamdConfig,
    ScreenConfig,
    SpamConfig,
    dnsbl_config,
    greylist_config,
    rspamd_config,
    screen_config,
    spam_config,
)
from estafeta.config_store import StoreConfig, store_config
from estafeta.config_web import (
    AcmeConfig,
    MtaStsConfig,
    WebConfig,
    acme_config,
    mta_sts_config,
    web_config,
)

LISTENERS = (
    "smtp",
    "submission",
    "submissions",
    "imap",
    "imaps",
    "pop3",
    "pop3s",
    "managesieve",
    "http",
    "https",
)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """A configuration problem, phrased as ``FILE: KEY: what is wrong``."""

    def __init__(self, path: Path | str, key: str, message: str) -> None:
        self.path = str(path)
        self.key = key
        self.message = message
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TLSConfig:
    cert: Path
    key: Path


IMAP_MIN_IDLE = 30 * 60.0  # rfc9051:5.4
POP3_MIN_IDLE = 10 * 60.0  # rfc1939:3


@dataclass(frozen=True)
class Limits:
    # rfc5321:4.5.3.1.7 says at least 64 KiB; 50 MiB is what large providers accept.
    max_message_size: int = 50 * 1024 * 1024
    # rfc5321:4.5.3.1.8 requires accepting at least 100 recipients.
    max_recipients: int = 100
    # rfc5321:4.5.3.2.7 suggests 5 minutes for a server waiting for the next command.
    # On expiry: 421 4.4.2, then the connection is closed.
    command_timeout: float = 300.0
    # The whole SMTP DATA phase, from the 354 to the final dot: a client that
    # trickles its message a byte at a time cannot hold a connection longer
    # (421 4.4.2). Within it, command_timeout still bounds each silence.
    data_timeout: float = 600.0
    # IMAP and POP3 before authentication: the time a client has, from
    # connecting, to log in (not per command: a trickle does not extend it).
    login_timeout: float = 60.0
    # rfc9051:5.4 — the IMAP autologout timer, once authenticated, is at
    # least 30 minutes (IDLE included).
    imap_idle_timeout: float = IMAP_MIN_IDLE
    # rfc1939:3 — the POP3 autologout timer is at least 10 minutes.
    pop3_idle_timeout: float = POP3_MIN_IDLE
    max_connections: int = 1000
    # Open connections from one client (IPv4 address or IPv6 /64) over all
    # listeners. 50 is Postfix's smtpd_client_connection_count_limit: room for
    # a NAT'd office with several IMAP clients, not for a connection flood.
    max_connections_per_ip: int = 50
    # Per-account storage quota in bytes (rfc9208 STORAGE); 0 means none.
    quota: int = 0
    # Connections that have not logged in yet (IMAP, POP3, submission before
    # AUTH; every port-25 session), over all listeners, and from one client
    # address. When the pool is full, a newcomer from an address holding less
    # than its share evicts the oldest idle unauthenticated connection of the
    # address holding the most: a flood from a few addresses cannot lock
    # everybody else out.
    max_preauth_connections: int = 500
    max_preauth_per_ip: int = 20
    # Message bytes all SMTP DATA transfers together may hold in memory; a
    # transfer that would go beyond gets 452 4.3.1 after its final dot.
    data_memory: int = 256 * 1024 * 1024
    # SMTP errors (rejected commands and recipients) in one session: after the
    # soft limit each further error is answered after smtp_error_delay seconds,
    # doubling, per client address; at the hard limit 421 and the connection
    # is closed (Postfix's smtpd_soft_error_limit / smtpd_hard_error_limit).
    smtp_soft_error_limit: int = 10
    smtp_hard_error_limit: int = 20
    smtp_error_delay: float = 1.0
    # Mailboxes one account may have (CREATE and RENAME beyond: NO [LIMIT]).
    max_mailboxes: int = 1000


@dataclass(frozen=True)
class AuthConfig:
    # LOGIN / AUTH PLAIN over a connection without TLS. Only for tests on
    # loopback: passwords must never cross a network in the clear.
    allow_plaintext: bool = False
    # argon2id cost for new hashes (rfc9106:4 second recommended option by
    # default). Lower memory_cost on very small machines; existing hashes
    # are upgraded to these values at the next successful login.
    argon2_time_cost: int = 3
    argon2_memory_cost: int = 65536  # KiB
    argon2_parallelism: int = 4
    # Brute-force protection for IMAP, POP3 and SMTP AUTH together (see
    # estafeta.auth.guard): failures counted per client address and per
    # account over failure_window; lockout seconds of refusal after too many.
    ip_max_failures: int = 10
    account_max_failures: int = 50
    failure_window: float = 15 * 60.0
    lockout: float = 15 * 60.0
    # Delay after the n-th failure from a client: delay_base * 2**(n-1), at
    # most max_delay seconds (0 turns delays off).
    delay_base: float = 1.0
    max_delay: float = 8.0
    # Networks never locked out nor slowed down (a webmail on this host, say).
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Failures of one client for one account that lock that pair only (the
    # client may still log in to other accounts, and the account from others).
    pair_max_failures: int = 5
    # Seconds a successful login is remembered, so that a repeat login with
    # the same secret skips argon2 (estafeta.auth.logincache); any change to
    # the credential ends it at once. 0 turns the cache off; at most 1h.
    login_cache_lifetime: float = 300.0
    # PBKDF2 iterations of new SCRAM-SHA-256 keys (rfc7677:4: at least 4096);
    # an account keeps its count until its password changes (auth/scramkeys.py).
    scram_iterations: int = 10_000

    def hasher(self) -> argon2.PasswordHasher:
        return argon2.PasswordHasher(
            time_cost=self.argon2_time_cost,
            memory_cost=self.argon2_memory_cost,
            parallelism=self.argon2_parallelism,
        )


@dataclass(frozen=True)
class SubmissionConfig:
    # Leave the client's address and HELO out of our Received header on
    # submission (privacy of mobile users); the header still names us.
    strip_client_ip: bool = False
    # Sending limits per authenticated account, kept in memory (a restart
    # resets them): accepted messages over a sliding hour, and recipients in
    # one message. Over either: 451 4.7.1.
    max_messages_per_hour: int = 500
    max_recipients_per_message: int = 100


@dataclass(frozen=True)
class RelayConfig:
    """Smarthost: every remote message goes through this host, with AUTH over TLS."""

    host: Endpoint
    # "starttls" (port 587) or "tls" (implicit TLS, port 465).
    security: str = "starttls"
    username: str = ""
    password_file: Path | None = None

    def password(self) -> str:
        if self.password_file is None:
            return ""
        return self.password_file.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class QueueConfig:
    # rfc5321:4.5.4.1 — give up after 4-5 days; retry no sooner than 30 minutes
    # apart in the long run. Backoff doubles from retry_min up to retry_max.
    lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0
    retry_min: float = 300.0
    retry_max: float = 3600.0
    concurrency: int = 20
    connect_timeout: float = 30.0
    # Local address outgoing connections come from (must match SPF and PTR).
    source_address: str = ""
    # The port remote MX hosts listen on: 25 everywhere but in tests.
    port: int = 25
    # "opportunistic" (STARTTLS when offered, unverified), "verify" (STARTTLS
    # required and the certificate must match the MX name), or "none".
    tls: str = "opportunistic"
    mta_sts: bool = True
    mta_sts_port: int = 443
    # DANE (rfc7672): authenticate MX hosts by their DNSSEC-signed TLSA
    # records. Needs a validating resolver on loopback ([dns] nameservers):
    # without trusted AD bits every answer is insecure and DANE never applies.
    dane: bool = True
    # Extra trust anchors (PEM) for verified outbound TLS, added to the system's.
    ca_file: Path | None = None
    relay: RelayConfig | None = None


@dataclass(frozen=True)
class InboundConfig:
    # SPF, DKIM, DMARC and ARC on the MX, with an Authentication-Results header.
    authenticate: bool = True
    # Refuse (550 5.7.1) mail failing DMARC when its domain publishes p=reject.
    dmarc_reject: bool = True


@dataclass(frozen=True)
class SieveConfig:
    """Mail rules (rfc5228) and ManageSieve (rfc5804): limits that hold under
    hostile scripts, and the operator's global scripts."""

    # Scripts run for every account before and after the user's active one
    # (an operator files spam into Junk for everyone). Absolute paths, or
    # relative to the configuration file.
    global_before: tuple[Path, ...] = ()
    global_after: tuple[Path, ...] = ()
    # Directory of global scripts for ``include :global "NAME"`` (rfc6609:3.2).
    global_dir: Path | None = None
    # One script's size in octets (PUTSCRIPT beyond: NO (QUOTA/MAXSIZE)).
    max_script_size: int = 64 * 1024
    # Scripts per account (PUTSCRIPT of a new one beyond: NO (QUOTA/MAXSCRIPTS)).
    max_scripts: int = 32
    # Actions per message; redirects per message (rfc5228:2.10.5 allows limits).
    max_actions: int = 32
    max_redirects: int = 4
    # Commands and tests evaluated per message over all scripts: every script
    # ends quickly whatever it does.
    max_steps: int = 100_000
    # Wall-clock budget of one regular-expression match (the regex extension).
    regex_timeout: float = 0.1
    # rfc5230:4.1 — :days may be no shorter than this (vacation-seconds too,
    # rfc6131:2) and no longer than vacation_max_period; values out of range
    # are moved into it.
    vacation_min_period: float = 86400.0
    vacation_max_period: float = 90 * 86400.0


@dataclass(frozen=True)
class DeliveryConfig:
    # A message that would take an account past its quota, after DATA:
    # "defer" answers 452 4.2.2 (the sender retries, rfc3463:3.3 X.2.2),
    # "reject" answers 552 5.2.2 (the sender bounces it). An account that is
    # already over quota gets 452 4.2.2 at RCPT either way.
    over_quota: str = "defer"


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    path: Path
    hostname: str
    data_dir: Path
    domains: tuple[str, ...]
    listen: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    tls: TLSConfig | None = None
    nameservers: tuple[Endpoint, ...] = ()
    limits: Limits = field(default_factory=Limits)
    log: LogConfig = field(default_factory=LogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    dnsbl: DnsblConfig = field(default_factory=DnsblConfig)
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    spam: SpamConfig = field(default_factory=SpamConfig)
    rspamd: RspamdConfig = field(default_factory=RspamdConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    web: WebConfig = field(default_factory=WebConfig)
    mta_sts: MtaStsConfig = field(default_factory=MtaStsConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    acme: AcmeConfig | None = None

    @property
    def acme_dir(self) -> Path:
        """The ACME account, certificate and key ([acme])."""
        return self.data_dir / "acme"

    @property
    def spam_dir(self) -> Path:
        """Per-account statistics of the learning junk filter."""
        return self.data_dir / "spam"

    @property
    def dmarc_reports_db(self) -> Path:
        """DMARC aggregate reports received ([reports]; estafeta.reports.store)."""
        return self.data_dir / "reports" / "dmarc.db"

    @property
    def dmarc_evaluations_db(self) -> Path:
        """The MX's DMARC evaluations, for the reports we send (reports.evaluations)."""
        return self.data_dir / "reports" / "dmarc-evaluations.db"

    @property
    def tlsrpt_reports_db(self) -> Path:
        """TLS reports received ([reports]; estafeta.reports.tlsrpt_store)."""
        return self.data_dir / "reports" / "tlsrpt.db"

    @property
    def tls_sessions_db(self) -> Path:
        """Our outbound TLS sessions and the TLS reports sent (estafeta.reports.tlsrpt_sessions)."""
        return self.data_dir / "reports" / "tls-sessions.db"

    @property
    def greylist_db(self) -> Path:
        return self.data_dir / "greylist.db"

    @property
    def sieve_dir(self) -> Path:
        """Per-account Sieve scripts and the vacation/duplicate memory."""
        return self.data_dir / "sieve"

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    @property
    def dkim_dir(self) -> Path:
        return self.data_dir / "dkim"

    @property
    def accounts_db(self) -> Path:
        return self.data_dir / "accounts.db"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"


T = TypeVar("T")


class _Reader:
    """Takes typed values out of a TOML table and remembers which keys were used."""

    def __init__(self, path: Path, table: Mapping[str, Any], prefix: str = "") -> None:
        self.path = path
        self.table = table
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), message)

    def get(self, name: str, kind: type[T], default: T | None = None, required: bool = False) -> T:
        self.used.add(name)
        if name not in self.table:
            if required:
                raise self.error(name, "is required")
            return default  # type: ignore[return-value]
        value = self.table[name]
        # bool is an int subclass in Python; TOML keeps them apart and so do we.
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"must be {_kind_name(kind)}, got {_toml_type(value)}")
        return value

    def table_of(self, name: str) -> _Reader:
        table = self.get(name, dict, default={})
        return _Reader(self.path, table, prefix=f"{self.key(name)}.")

    def string_list(self, name: str, required: bool = False) -> list[str]:
        values = self.get(name, list, default=[], required=required)
        for i, item in enumerate(values):
            if not isinstance(item, str):
                raise ConfigError(
                    self.path,
                    f"{self.key(name)}[{i}]",
                    f"must be a string, got {_toml_type(item)}",
                )
        return values

    def check_unknown(self) -> None:
        for name in self.table:
            if name not in self.used:
                raise self.error(name, "unknown key (check the spelling)")


def _kind_name(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def parse_endpoint(text: str, default_port: int | None = None) -> Endpoint:
    """Parse ``host:port``, ``[v6]:port`` or (with a default port) a bare address."""
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']' after IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':port' after ']'")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ValueError(f"{text!r}: write IPv6 addresses in brackets, like [::1]:25")
    if not host:
        raise ValueError(f"{text!r}: missing host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r}: missing port (write host:port)")
        return Endpoint(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
    return Endpoint(host, int(port_text))


def _endpoints(
    reader: _Reader,
    name: str,
    default_port: int | None,
    check: Callable[[Endpoint], None] | None = None,
) -> tuple[Endpoint, ...]:
    result = []
    for i, text in enumerate(reader.string_list(name)):
        try:
            endpoint = parse_endpoint(text, default_port)
            if check:
                check(endpoint)
        except ValueError as exc:
            raise ConfigError(reader.path, f"{reader.key(name)}[{i}]", str(exc)) from None
        result.append(endpoint)
    return tuple(result)


def _ip_only(endpoint: Endpoint) -> None:
    try:
        ipaddress.ip_address(endpoint.host)
    except ValueError:
        raise ValueError(f"{endpoint.host!r} is not an IP address") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(reader: _Reader, name: str, default: float, allow_zero: bool = False) -> float:
    """Seconds, as a number or as text like "90s", "30m", "4h", "5d"."""
    reader.used.add(name)
    if name not in reader.table:
        return default
    value = reader.table[name]
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif (
        isinstance(value, str) and value[:-1].replace(".", "", 1).isdigit() and value[-1:] in _UNITS
    ):
        seconds = float(value[:-1]) * _UNITS[value[-1]]
    if seconds is None:
        raise reader.error(name, 'must be a number of seconds or a duration like "30m", "4h", "5d"')
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise reader.error(name, "must be 0 or more" if allow_zero else "must be greater than 0")
    return seconds


def _networks(
    reader: _Reader, name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A list of networks in CIDR notation ("10.0.0.0/8", "2001:db8::/32", "127.0.0.1")."""
    result = []
    for i, text in enumerate(reader.string_list(name)):
        try:
            result.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ConfigError(
                reader.path,
                f"{reader.key(name)}[{i}]",
                f"{text!r} is not a network like 192.0.2.0/24 or 2001:db8::/32: {exc}",
            ) from None
    return tuple(result)


def _path(reader: _Reader, name: str, base: Path) -> Path | None:
    text = reader.get(name, str, "")
    return (base / text).resolve() if text else None


def _positive(reader: _Reader, name: str, default: int) -> int:
    value = reader.get(name, int, default=default)
    if value <= 0:
        raise reader.error(name, "must be greater than 0")
    return value


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file. Raises ConfigError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"invalid TOML: {exc}") from None
    return from_dict(data, path)


def from_dict(data: Mapping[str, Any], path: Path) -> Config:
    top = _Reader(path, data)
    hostname = top.get("hostname", str, required=True)
    try:
        hostname = normalize_domain(hostname)
    except AddressError as exc:
        raise top.error("hostname", str(exc)) from None

    data_dir_text = top.get("data_dir", str, required=True)
    if not data_dir_text:
        raise top.error("data_dir", "must not be empty")
    data_dir = Path(data_dir_text)
    if not data_dir.is_absolute():
        # Relative paths are taken from the configuration file's directory,
        # so a config works wherever the service is started from.
        data_dir = (path.parent / data_dir).resolve()

    domain_list = top.string_list("domains", required=True)
    if not domain_list:
        raise top.error("domains", "must list at least one domain")
    domains: list[str] = []
    for i, domain in enumerate(domain_list):
        try:
            normalized = normalize_domain(domain)
        except AddressError as exc:
            raise ConfigError(path, f"domains[{i}]", str(exc)) from None
        if normalized in domains:
            raise ConfigError(path, f"domains[{i}]", f"{domain!r} is listed twice")
        domains.append(normalized)

    listen_reader = top.table_of("listen")
    listen: dict[str, tuple[Endpoint, ...]] = {}
    for name in LISTENERS:
        endpoints = _endpoints(listen_reader, name, default_port=None)
        if endpoints:
            listen[name] = endpoints
    listen_reader.check_unknown()
    seen: dict[Endpoint, str] = {}
    for name, endpoints in listen.items():
        for endpoint in endpoints:
            if endpoint in seen:
                raise ConfigError(
                    path, f"listen.{name}", f"{endpoint} is also used by listen.{seen[endpoint]}"
                )
            seen[endpoint] = name

    tls_reader = top.table_of("tls")
    tls: TLSConfig | None = None
    if tls_reader.table:
        cert = tls_reader.get("cert", str, required=True)
        key = tls_reader.get("key", str, required=True)
        tls_reader.check_unknown()
        tls = TLSConfig(cert=(path.parent / cert).resolve(), key=(path.parent / key).resolve())
    acme = acme_config(top.table_of("acme"), path.parent, hostname, tuple(domains))
    if acme is not None:
        if tls is not None:
            raise ConfigError(
                path, "tls", "leave out [tls]: [acme] obtains the certificate and keeps it"
            )
        # Until the first certificate is issued, the server makes a
        # self-signed one there, so that the TLS listeners can start.
        acme_dir = data_dir / "acme"
        tls = TLSConfig(cert=acme_dir / "fullchain.pem", key=acme_dir / "privkey.pem")
    for implicit in ("submissions", "imaps", "pop3s", "https"):
        if implicit in listen and tls is None:
            raise ConfigError(path, f"listen.{implicit}", "needs [tls] cert and key")

    dns_reader = top.table_of("dns")
    nameservers = _endpoints(dns_reader, "nameservers", default_port=53, check=_ip_only)
    dns_reader.check_unknown()

    limits_reader = top.table_of("limits")
    defaults = Limits()
    limits = Limits(
        max_message_size=_positive(limits_reader, "max_message_size", defaults.max_message_size),
        max_recipients=_positive(limits_reader, "max_recipients", defaults.max_recipients),
        command_timeout=_duration(limits_reader, "command_timeout", defaults.command_timeout),
        data_timeout=_duration(limits_reader, "data_timeout", defaults.data_timeout),
        login_timeout=_duration(limits_reader, "login_timeout", defaults.login_timeout),
        imap_idle_timeout=_duration(limits_reader, "imap_idle_timeout", defaults.imap_idle_timeout),
        pop3_idle_timeout=_duration(limits_reader, "pop3_idle_timeout", defaults.pop3_idle_timeout),
        max_connections=_positive(limits_reader, "max_connections", defaults.max_connections),
        max_connections_per_ip=_positive(
            limits_reader, "max_connections_per_ip", defaults.max_connections_per_ip
        ),
        quota=limits_reader.get("quota", int, defaults.quota),
        max_preauth_connections=_positive(
            limits_reader, "max_preauth_connections", defaults.max_preauth_connections
        ),
        max_preauth_per_ip=_positive(
            limits_reader, "max_preauth_per_ip", defaults.max_preauth_per_ip
        ),
        data_memory=_positive(limits_reader, "data_memory", defaults.data_memory),
        smtp_soft_error_limit=_positive(
            limits_reader, "smtp_soft_error_limit", defaults.smtp_soft_error_limit
        ),
        smtp_hard_error_limit=_positive(
            limits_reader, "smtp_hard_error_limit", defaults.smtp_hard_error_limit
        ),
        smtp_error_delay=_duration(
            limits_reader, "smtp_error_delay", defaults.smtp_error_delay, allow_zero=True
        ),
        max_mailboxes=_positive(limits_reader, "max_mailboxes", defaults.max_mailboxes),
    )
    if limits.quota < 0:
        raise limits_reader.error("quota", "must be 0 (no quota) or a number of bytes")
    if limits.imap_idle_timeout < IMAP_MIN_IDLE:
        raise limits_reader.error("imap_idle_timeout", "must be at least 30 minutes (rfc9051:5.4)")
    if limits.pop3_idle_timeout < POP3_MIN_IDLE:
        raise limits_reader.error("pop3_idle_timeout", "must be at least 10 minutes (rfc1939:3)")
    if limits.max_preauth_per_ip > limits.max_preauth_connections:
        raise limits_reader.error(
            "max_preauth_per_ip", "must not be larger than max_preauth_connections"
        )
    if limits.smtp_hard_error_limit < limits.smtp_soft_error_limit:
        raise limits_reader.error(
            "smtp_hard_error_limit", "must not be smaller than smtp_soft_error_limit"
        )
    if limits.data_memory < limits.max_message_size:
        raise limits_reader.error(
            "data_memory", "must be at least max_message_size (one message must fit)"
        )
    limits_reader.check_unknown()

    log_reader = top.table_of("log")
    log = LogConfig(
        level=log_reader.get("level", str, "info"),
        format=log_reader.get("format", str, "text"),
    )
    if log.level not in LOG_LEVELS:
        raise log_reader.error("level", f"must be one of {', '.join(LOG_LEVELS)}")
    if log.format not in LOG_FORMATS:
        raise log_reader.error("format", f"must be one of {', '.join(LOG_FORMATS)}")
    log_reader.check_unknown()

    auth_reader = top.table_of("auth")
    auth_defaults = AuthConfig()
    auth = AuthConfig(
        allow_plaintext=auth_reader.get("allow_plaintext", bool, False),
        argon2_time_cost=_positive(auth_reader, "argon2_time_cost", auth_defaults.argon2_time_cost),
        argon2_memory_cost=_positive(
            auth_reader, "argon2_memory_cost", auth_defaults.argon2_memory_cost
        ),
        argon2_parallelism=_positive(
            auth_reader, "argon2_parallelism", auth_defaults.argon2_parallelism
        ),
        ip_max_failures=_positive(auth_reader, "ip_max_failures", auth_defaults.ip_max_failures),
        account_max_failures=_positive(
            auth_reader, "account_max_failures", auth_defaults.account_max_failures
        ),
        failure_window=_duration(auth_reader, "failure_window", auth_defaults.failure_window),
        lockout=_duration(auth_reader, "lockout", auth_defaults.lockout),
        delay_base=_duration(auth_reader, "delay_base", auth_defaults.delay_base, allow_zero=True),
        max_delay=_duration(auth_reader, "max_delay", auth_defaults.max_delay, allow_zero=True),
        exempt=_networks(auth_reader, "exempt"),
        pair_max_failures=_positive(
            auth_reader, "pair_max_failures", auth_defaults.pair_max_failures
        ),
        login_cache_lifetime=_duration(
            auth_reader,
            "login_cache_lifetime",
            auth_defaults.login_cache_lifetime,
            allow_zero=True,
        ),
        scram_iterations=_positive(auth_reader, "scram_iterations", auth_defaults.scram_iterations),
    )
    if auth.scram_iterations < 4096:
        raise auth_reader.error("scram_iterations", "must be at least 4096 (rfc7677)")
    if auth.max_delay < auth.delay_base:
        raise auth_reader.error("max_delay", "must not be smaller than delay_base")
    if auth.argon2_memory_cost < 8 * auth.argon2_parallelism:
        raise auth_reader.error("argon2_memory_cost", "must be at least 8 x argon2_parallelism KiB")
    if auth.login_cache_lifetime > LOGIN_CACHE_MAX_LIFETIME:
        raise auth_reader.error(
            "login_cache_lifetime", 'must be at most 3600 seconds ("1h"); 0 turns the cache off'
        )
    auth_reader.check_unknown()
    for name in ("submission", "managesieve"):
        if name in listen and tls is None and not auth.allow_plaintext:
            raise ConfigError(
                path, f"listen.{name}", "needs [tls] cert and key: AUTH is only offered after TLS"
            )

    submission_reader = top.table_of("submission")
    submission_defaults = SubmissionConfig()
    submission = SubmissionConfig(
        strip_client_ip=submission_reader.get("strip_client_ip", bool, False),
        max_messages_per_hour=_positive(
            submission_reader, "max_messages_per_hour", submission_defaults.max_messages_per_hour
        ),
        max_recipients_per_message=_positive(
            submission_reader,
            "max_recipients_per_message",
            submission_defaults.max_recipients_per_message,
        ),
    )
    submission_reader.check_unknown()

    queue = _queue_config(top.table_of("queue"), path)

    inbound_reader = top.table_of("inbound")
    inbound = InboundConfig(
        authenticate=inbound_reader.get("authenticate", bool, True),
        dmarc_reject=inbound_reader.get("dmarc_reject", bool, True),
    )
    inbound_reader.check_unknown()

    sieve = _sieve_config(top.table_of("sieve"), path)

    delivery_reader = top.table_of("delivery")
    delivery = DeliveryConfig(over_quota=delivery_reader.get("over_quota", str, "defer"))
    if delivery.over_quota not in OVER_QUOTA:
        raise delivery_reader.error("over_quota", f"must be one of {', '.join(OVER_QUOTA)}")
    delivery_reader.check_unknown()

    screen = screen_config(top.table_of("screen"))
    dnsbl = dnsbl_config(top.table_of("dnsbl"))
    greylist = greylist_config(top.table_of("greylist"))
    spam = spam_config(top.table_of("spam"))
    rspamd = rspamd_config(top.table_of("rspamd"), path.parent)
    backup = backup_config(top.table_of("backup"), path.parent)
    store = store_config(top.table_of("store"), path.parent)
    retention = retention_config(top.table_of("retention"))
    web = web_config(top.table_of("web"), path.parent)
    mta_sts = mta_sts_config(top.table_of("mta_sts"))
    reports = reports_config(top.table_of("reports"), tuple(domains), hostname)

    top.check_unknown()
    return Config(
        path=path,
        hostname=hostname,
        data_dir=data_dir,
        domains=tuple(domains),
        listen=listen,
        tls=tls,
        nameservers=nameservers,
        limits=limits,
        log=log,
        auth=auth,
        submission=submission,
        queue=queue,
        inbound=inbound,
        sieve=sieve,
        delivery=delivery,
        screen=screen,
        dnsbl=dnsbl,
        greylist=greylist,
        spam=spam,
        rspamd=rspamd,
        backup=backup,
        store=store,
        retention=retention,
        web=web,
        mta_sts=mta_sts,
        reports=reports,
        acme=acme,
    )


OVER_QUOTA = ("defer", "reject")


def _sieve_config(reader: _Reader, path: Path) -> SieveConfig:
    d = SieveConfig()
    base = path.parent

    def paths(name: str) -> tuple[Path, ...]:
        return tuple((base / text).resolve() for text in reader.string_list(name))

    config = SieveConfig(
        global_before=paths("global_before"),
        global_after=paths("global_after"),
        global_dir=_path(reader, "global_dir", base),
        max_script_size=_positive(reader, "max_script_size", d.max_script_size),
        max_scripts=_positive(reader, "max_scripts", d.max_scripts),
        max_actions=_positive(reader, "max_actions", d.max_actions),
        max_redirects=reader.get("max_redirects", int, d.max_redirects),
        max_steps=_positive(reader, "max_steps", d.max_steps),
        regex_timeout=_duration(reader, "regex_timeout", d.regex_timeout),
        vacation_min_period=_duration(
            reader, "vacation_min_period", d.vacation_min_period, allow_zero=True
        ),
        vacation_max_period=_duration(reader, "vacation_max_period", d.vacation_max_period),
    )
    if config.max_redirects < 0:
        raise reader.error("max_redirects", "must be 0 (no redirects) or more")
    if config.vacation_max_period < config.vacation_min_period:
        raise reader.error("vacation_max_period", "must not be shorter than vacation_min_period")
    reader.check_unknown()
    return config


QUEUE_TLS = ("opportunistic", "verify", "none")
RELAY_SECURITY = ("starttls", "tls")


def _queue_config(reader: _Reader, path: Path) -> QueueConfig:
    d = QueueConfig()
    source = reader.get("source_address", str, "")
    if source:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            raise reader.error("source_address", f"{source!r} is not an IP address") from None
    tls = reader.get("tls", str, d.tls)
    if tls not in QUEUE_TLS:
        raise reader.error("tls", f"must be one of {', '.join(QUEUE_TLS)}")
    relay_reader = reader.table_of("relay")
    relay: RelayConfig | None = None
    if relay_reader.table:
        host_text = relay_reader.get("host", str, required=True)
        security = relay_reader.get("security", str, "starttls")
        if security not in RELAY_SECURITY:
            raise relay_reader.error("security", f"must be one of {', '.join(RELAY_SECURITY)}")
        try:
            host = parse_endpoint(host_text, default_port=587 if security == "starttls" else 465)
        except ValueError as exc:
            raise relay_reader.error("host", str(exc)) from None
        username = relay_reader.get("username", str, "")
        password_file = _path(relay_reader, "password_file", path.parent)
        if username and password_file is None:
            raise relay_reader.error("password_file", "is required when username is set")
        relay = RelayConfig(host, security, username, password_file)
        relay_reader.check_unknown()
    queue = QueueConfig(
        lifetime=_duration(reader, "lifetime", d.lifetime),
        delay_warning=_duration(reader, "delay_warning", d.delay_warning),
        retry_min=_duration(reader, "retry_min", d.retry_min),
        retry_max=_duration(reader, "retry_max", d.retry_max),
        concurrency=_positive(reader, "concurrency", d.concurrency),
        connect_timeout=_duration(reader, "connect_timeout", d.connect_timeout),
        source_address=source,
        port=_positive(reader, "port", d.port),
        tls=tls,
        mta_sts=reader.get("mta_sts", bool, d.mta_sts),
        mta_sts_port=_positive(reader, "mta_sts_port", d.mta_sts_port),
        dane=reader.get("dane", bool, d.dane),
        ca_file=_path(reader, "ca_file", path.parent),
        relay=relay,
    )
    if queue.retry_max < queue.retry_min:
        raise reader.error("retry_max", "must not be smaller than retry_min")
    for name in ("port", "mta_sts_port"):
        if getattr(queue, name) > 65535:
            raise reader.error(name, "must be a port number (1-65535)")
    reader.check_unknown()
    return queue


def check_runtime(config: Config) -> None:
    """Checks that need the file system: TLS files readable, data_dir writable.

    ``load`` only validates the text; ``check`` and ``serve`` also run this.
    With ``[acme]`` the certificate may not exist yet: the server makes one.
    """
    if config.acme is not None:
        if config.acme.ca_bundle is not None and not config.acme.ca_bundle.is_file():
            raise ConfigError(config.path, "acme.ca_bundle", f"no file {config.acme.ca_bundle}")
    elif config.tls is not None:
        for name in ("cert", "key"):
            file = getattr(config.tls, name)
            try:
                with open(file, "rb") as handle:
                    handle.read(1)
            except OSError as exc:
                raise ConfigError(
                    config.path, f"tls.{name}", f"cannot read {file}: {exc.strerror}"
                ) from None
        try:
            server_context(config.tls)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                config.path, "tls.key", f"does not match tls.cert or is not PEM: {exc}"
            ) from None
    files = [("queue.ca_file", config.queue.ca_file)]
    if config.queue.relay is not None:
        files.append(("queue.relay.password_file", config.queue.relay.password_file))
    files.append(("rspamd.password_file", config.rspamd.password_file))
    if config.store.database is not None:
        files.append(("store.database.password_file", config.store.database.password_file))
        files.append(("store.database.ca_file", config.store.database.ca_file))
    files.append(("store.objects.credentials_file", config.store.objects.credentials_file))
    for key, file in files:
        if file is None:
            continue
        try:
            file.read_bytes()
        except OSError as exc:
            raise ConfigError(config.path, key, f"cannot read {file}: {exc.strerror}") from None
    if config.queue.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(config.queue.ca_file))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                config.path, "queue.ca_file", f"not a PEM certificate file: {exc}"
            ) from None
    _check_global_scripts(config)
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        # os.access() says yes to root even on a read-only file system: try for real.
        probe = config.data_dir / f".write-test.{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            config.path, "data_dir", f"{config.data_dir} is not writable: {exc.strerror}"
        ) from None


def _check_global_scripts(config: Config) -> None:
    """The operator's global Sieve scripts must exist and compile: the error
    names the key, the file and the line:column."""
    from estafeta import sieve  # the Sieve compiler is only needed here

    limits = sieve.Limits.from_config(config.sieve)
    for key in ("global_before", "global_after"):
        for i, file in enumerate(getattr(config.sieve, key)):
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    config.path, f"sieve.{key}[{i}]", f"cannot read {file}: {exc}"
                ) from None
            try:
                sieve.compile_script(text, name=str(file), limits=limits)
            except sieve.SieveError as exc:
                raise ConfigError(config.path, f"sieve.{key}[{i}]", f"{file}:{exc}") from None
    if config.sieve.global_dir is not None and not config.sieve.global_dir.is_dir():
        raise ConfigError(
            config.path, "sieve.global_dir", f"{config.sieve.global_dir} is not a directory"
        )


# TLS 1.2 cipher suites of every listener: forward secrecy and AEAD only, the
# suites rfc9325:4.2 recommends plus their ECDSA and ChaCha20 siblings
# (Mozilla's "intermediate" list). rfc9325:4.1: no NULL, no RC4, nothing
# under 128 bits, no RSA key transport; and no CBC (Lucky13, testssl's
# "obsolete"): every TLS 1.2 client has AES-GCM. TLS 1.3 suites are all AEAD
# and keep OpenSSL's defaults.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS context for every listener: TLS 1.2 or newer (rfc8996 retires
    1.0 and 1.1; rfc9325:3.1.1), AEAD suites with forward secrecy, our certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # Our order, not the client's (rfc9325:4.2.1: prefer the strong suites);
    # Python sets both already, this says so.
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    context.load_cert_chain(tls.cert, tls.key)
    return context
