"""Configuration of the reports we receive: ``[reports]`` (issue 22;
docs/dmarc-reports.md).

Example::

    [reports]
    dmarc_address = "dmarc-reports@example.org"   # the rua= of our DMARC records
    retention = "400d"                            # then a report is deleted

``dmarc_address`` must be in one of ``domains`` and should be an account (or
an alias of one): mail that is not a valid report stays there. Without it,
reports arrive as ordinary mail and ``estafeta dmarc import`` still reads
the ones saved by hand. ``retention`` takes a unit (``d``, ``w``, ``h``);
reports are always pruned, so "0" (keep forever) is refused.
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


def reports_config(reader: _Reader, domains: tuple[str, ...]) -> ReportsConfig:
    d = ReportsConfig()
    address = reader.get("dmarc_address", str, "").strip()
    if address:
        try:
            address = normalize_address(address)
        except AddressError as exc:
            raise reader.error("dmarc_address", f"{address!r}: {exc}") from None
        if split_address(address)[1] not in domains:
            raise reader.error(
                "dmarc_address",
                f"{address} is not in one of the configured domains ({', '.join(domains)})",
            )
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
    reader.check_unknown()
    return ReportsConfig(dmarc_address=address, retention=retention)
