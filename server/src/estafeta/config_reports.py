"""Configuration of the reports we receive and send: ``[reports]`` (issue
22; docs/dmarc-reports.md, docs/tls-reports.md).

Example::

    [reports]
    dmarc_address = "dmarc-reports@example.org"   # the rua= of our DMARC records
    tlsrpt_address = "tls-reports@example.org"    # the rua= of our _smtp._tls records
    retention = "400d"                            # then a report is deleted
    dmarc_send = true                             # daily DMARC reports to others' rua=
    tlsrpt_send = true                            # daily TLS reports (rfc8460)
    org_name = "Example Org"                      # who we are in them (the hostname)
    from_address = "reports@example.org"          # their From (dmarc_address, ...)
    contact_info = "https://example.org/contact"  # how to reach us about them

Receiving: ``dmarc_address`` and ``tlsrpt_address`` must be in one of
``domains`` and should be accounts (or aliases of one): mail to them that
is not a valid report stays there. Without them, reports arrive as ordinary
mail and ``estafeta dmarc import`` / ``tlsrpt import`` still read the ones
saved by hand. ``retention`` takes a unit (``d``, ``w``, ``h``); reports are
always pruned, so "0" (keep forever) is refused.

Sending, off by default in the server (the role turns both on, since it
publishes the records that ask others for theirs): ``dmarc_send`` (each
report tells another domain's owner which addresses mailed our users and
how often, which an operator should choose to disclose; ``dmarc_send_local``
also reports our own domains to rua= addresses in our own domains) and
``tlsrpt_send`` (our outbound TLS sessions counted, a daily report to each
domain that asks). Both kinds go out as one identity:

- ``from_address``: their From and envelope sender, in one of ``domains``
  (its DKIM keys sign them; for TLS reports its domain is the submitter,
  rfc8460:5.3); by default ``dmarc_address``, else ``tlsrpt_address``, else
  ``postmaster@`` the first domain;
- ``org_name``: who we are (rfc7489:C ``org_name``, rfc8460:4.4
  ``organization-name``); by default the hostname;
- ``contact_info``: how to reach us about them (rfc7489:C
  ``extra_contact_info``; rfc8460:4.4 ``contact-info``, which is
  ``from_address`` when this is empty).

The evaluations kept for DMARC reports are kept for ``retention`` too.
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
    """Who we are in the DMARC and TLS reports we send (rfc7489:C
    report_metadata, rfc8460:4.4): the defaults already applied."""

    org_name: str = ""
    from_address: str = ""  # normalized, in one of domains
    contact_info: str = ""  # "" : none (TLS reports then give from_address)


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
    # Where TLS reports arrive (normalized); "" = no intake.
    tlsrpt_address: str = ""
    # Count outbound TLS sessions and send daily TLS reports (rfc8460).
    tlsrpt_send: bool = False


def reports_config(reader: _Reader, domains: tuple[str, ...], hostname: str) -> ReportsConfig:
    d = ReportsConfig()
    address = _address(reader, "dmarc_address", domains)
    tlsrpt_address = _address(reader, "tlsrpt_address", domains)
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
    dmarc_send = reader.get("dmarc_send", bool, d.dmarc_send)
    dmarc_send_local = reader.get("dmarc_send_local", bool, d.dmarc_send_local)
    tlsrpt_send = reader.get("tlsrpt_send", bool, d.tlsrpt_send)
    identity = ReportIdentity(
        org_name=_line(reader, "org_name") or hostname,
        from_address=(
            _address(reader, "from_address", domains)
            or address
            or tlsrpt_address
            or f"postmaster@{domains[0]}"
        ),
        contact_info=_line(reader, "contact_info"),
    )
    reader.check_unknown()
    return ReportsConfig(
        dmarc_address=address,
        retention=retention,
        dmarc_send=dmarc_send,
        dmarc_send_local=dmarc_send_local,
        identity=identity,
        tlsrpt_address=tlsrpt_address,
        tlsrpt_send=tlsrpt_send,
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
