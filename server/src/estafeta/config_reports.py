"""Configuration of the reports we receive and send: ``[reports]`` (issue
22; docs/dmarc-reports.md, docs/tls-reports.md).

Example::

    [reports]
    dmarc_address = "dmarc-reports@example.org"   # the rua= of our DMARC records
    retention = "400d"                            # then a report is deleted
    tlsrpt_address = "tls-reports@example.org"    # the rua= of our _smtp._tls records
    tlsrpt_send = true                            # send daily TLS reports (rfc8460)
    org_name = "Example Org"                      # organization-name of our reports
    from_address = "reports@example.org"          # From of our reports (DKIM-signed)

``dmarc_address`` must be in one of ``domains`` and should be an account (or
an alias of one): mail that is not a valid report stays there. Without it,
reports arrive as ordinary mail and ``estafeta dmarc import`` still reads
the ones saved by hand. ``retention`` takes a unit (``d``, ``w``, ``h``);
reports are always pruned, so "0" (keep forever) is refused.

``tlsrpt_address`` works as ``dmarc_address`` does, for TLS reports.
``tlsrpt_send`` turns on counting our outbound TLS sessions and sending
the daily reports to the domains that ask for them. ``from_address`` (by
default ``postmaster@`` the first domain) must be in one of ``domains``:
its domain signs the reports (rfc8460:5.3) and is the submitter;
``org_name`` defaults to that domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from estafeta.address import AddressError, normalize_address, split_address
from estafeta.config_retention import DAY, parse_duration

if TYPE_CHECKING:
    from estafeta.config import _Reader


@dataclass(frozen=True)
class ReportsConfig:
    # Where DMARC aggregate reports arrive (normalized); "" = no intake.
    dmarc_address: str = ""
    # Seconds a report is kept after the end of the period it covers.
    retention: int = 400 * DAY
    # Where TLS reports arrive (normalized); "" = no intake.
    tlsrpt_address: str = ""
    # Count outbound TLS sessions and send daily TLS reports (rfc8460).
    tlsrpt_send: bool = False
    # Our organisation, and the From of the reports we send (in a local domain).
    org_name: str = ""
    from_address: str = ""


def reports_config(reader: _Reader, domains: tuple[str, ...]) -> ReportsConfig:
    d = ReportsConfig()
    address = _local_address(reader, "dmarc_address", domains)
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
    tlsrpt_address = _local_address(reader, "tlsrpt_address", domains)
    from_address = _local_address(reader, "from_address", domains)
    if not from_address and domains:
        from_address = f"postmaster@{domains[0]}"
    org_name = " ".join(reader.get("org_name", str, "").split())
    if len(org_name) > 200 or not org_name.isprintable():
        raise reader.error("org_name", "at most 200 printable characters")
    tlsrpt_send = reader.get("tlsrpt_send", bool, d.tlsrpt_send)
    reader.check_unknown()
    return ReportsConfig(
        dmarc_address=address,
        retention=retention,
        tlsrpt_address=tlsrpt_address,
        tlsrpt_send=tlsrpt_send,
        org_name=org_name or (split_address(from_address)[1] if from_address else ""),
        from_address=from_address,
    )


def _local_address(reader: _Reader, key: str, domains: tuple[str, ...]) -> str:
    """An address setting: normalized, in one of ``domains``; "" if unset."""
    address = reader.get(key, str, "").strip()
    if not address:
        return ""
    try:
        address = normalize_address(address)
    except AddressError as exc:
        raise reader.error(key, f"{address!r}: {exc}") from None
    if split_address(address)[1] not in domains:
        raise reader.error(
            key, f"{address} is not in one of the configured domains ({', '.join(domains)})"
        )
    return address
