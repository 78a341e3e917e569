"""Configuration of the reports we receive and send: ``[reports]`` (issue
22; docs/dmarc-reports.md).

Example::

    [reports]
    dmarc_address = "dmarc-reports@example.org"   # the rua= of our DMARC records
    retention = "400d"                            # then a report is deleted
    dmarc_send = true                             # daily reports to others' rua=
    org_name = "Example Org"                      # who we are in them (hostname)
    from_address = "dmarc-reports@example.org"    # their From (dmarc_address)

``dmarc_address`` must be in one of ``domains`` and should be an account (or
an alias of one): mail that is not a valid report stays there. Without it,
reports arrive as ordinary mail and ``estafeta dmarc import`` still reads
the ones saved by hand. ``retention`` takes a unit (``d``, ``w``, ``h``);
reports are always pruned, so "0" (keep forever) is refused.

Sending (``dmarc_send``, off by default: each report tells another domain's
owner which addresses mailed our users and how often, which an operator
should choose to disclose): ``org_name`` (default: the hostname) and
``contact_info`` go into every report we send, ``from_address`` (default:
``dmarc_address``) is its From and envelope sender and must be in one of
``domains``. ``dmarc_send_local`` also sends reports about our own domains
to their rua= addresses in our own domains (off: we would mail ourselves).
The evaluations are kept for ``retention`` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from estafeta.address import AddressError, normalize_address, split_address
from estafeta.config_retention import DAY, parse_duration

if TYPE_CHECKING:
    from estafeta.config import _Reader


# A printable line (org_name, contact_info): at most this many characters.
MAX_TEXT = 200


@dataclass(frozen=True)
class ReportIdentity:
    """Who we are in the reports we send (rfc7489:C report_metadata)."""

    org_name: str = ""  # "" : the hostname
    from_address: str = ""  # normalized, in one of domains; "" : not set
    contact_info: str = ""  # extra_contact_info; "" : none


@dataclass(frozen=True)
class ReportsConfig:
    # Where DMARC aggregate reports arrive (normalized); "" = no intake.
    dmarc_address: str = ""
    # Seconds a report (and an evaluation we made) is kept after its period.
    retention: int = 400 * DAY
    # DMARC aggregate reports we send (estafeta.delivery.dmarc_send).
    dmarc_send: bool = False
    dmarc_send_local: bool = False
    identity: ReportIdentity = ReportIdentity()


def reports_config(reader: _Reader, domains: tuple[str, ...]) -> ReportsConfig:
    d = ReportsConfig()
    address = _address(reader, "dmarc_address", domains)
    retention = d.retention
    reader.used.add("retention")
    if "retention" in reader.table:
        value = reader.table["retention"]
        try:
            retention = parse_duration(value)
        except ValueError as exc:
            raise reader.error("retention", str(exc)) from None
        if retention == 0:
            raise reader.error(
                "retention", 'must be a duration like "400d": reports are always pruned'
            )
    dmarc_send = reader.get("dmarc_send", bool, False)
    dmarc_send_local = reader.get("dmarc_send_local", bool, False)
    identity = _identity(reader, domains, address)
    if dmarc_send and not identity.from_address:
        raise reader.error(
            "from_address", "is required with dmarc_send = true (or set dmarc_address)"
        )
    reader.check_unknown()
    return ReportsConfig(
        dmarc_address=address,
        retention=retention,
        dmarc_send=dmarc_send,
        dmarc_send_local=dmarc_send_local,
        identity=identity,
    )


def _address(reader: _Reader, name: str, domains: tuple[str, ...]) -> str:
    """An address of ours: normalized, in one of ``domains``; "" when unset."""
    address = reader.get(name, str, "").strip()
    if not address:
        return ""
    try:
        address = normalize_address(address)
    except AddressError as exc:
        raise reader.error(name, f"{address!r}: {exc}") from None
    if split_address(address)[1] not in domains:
        raise reader.error(
            name, f"{address} is not in one of the configured domains ({', '.join(domains)})"
        )
    return address


def _line(reader: _Reader, name: str) -> str:
    value = " ".join(reader.get(name, str, "").split())
    if len(value) > MAX_TEXT or not value.isprintable():
        raise reader.error(name, f"must be one printable line of at most {MAX_TEXT} characters")
    return value


def _identity(reader: _Reader, domains: tuple[str, ...], dmarc_address: str) -> ReportIdentity:
    return ReportIdentity(
        org_name=_line(reader, "org_name"),
        from_address=_address(reader, "from_address", domains) or dmarc_address,
        contact_info=_line(reader, "contact_info"),
    )
