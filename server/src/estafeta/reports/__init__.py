"""DMARC aggregate reports: those other mail systems send us about our
domains, and those we send them (issue 22).

DMARC aggregate reports (rfc7489:7.2) are the first: a receiver that
evaluated mail claiming one of our domains sends, usually daily, an XML
document (zipped or gzipped) to the ``rua`` address of our DMARC record.

- ``unpack``: finds the report attachment in a message and decompresses it
  with hard bounds (sans-IO: bytes in, chunks of XML out);
- ``dmarc``: parses and validates the XML against rfc7489 appendix C into a
  frozen :class:`~estafeta.reports.dmarc.Report` (sans-IO);
- ``store``: the SQLite file under ``data_dir/reports/`` that keeps them,
  deduplicated, pruned after the retention, and summed for
  ``estafeta dmarc report``.

The reports we send about the mail our MX evaluated, the other way round:

- ``evaluations``: the SQLite file of the MX's evaluations, summed per
  UTC day, policy domain and row, bounded, with which days are sent;
- ``aggregate``: writes a :class:`~estafeta.reports.dmarc.Report` as
  rfc7489 appendix C XML and the rfc7489:7.2.1.1 message (sans-IO).

How a report reaches them (the ``[reports] dmarc_address`` intake in
``estafeta.delivery.reports``, and ``estafeta dmarc import``) and what the
limits are: docs/dmarc-reports.md.

Layer: below delivery/ and the CLI, beside store/ and policy/; it imports
only message/ and address (the import-linter contract in pyproject.toml).
"""
