"""``estafeta doctor``: what receivers look at, checked from the sending host.

"My mail lands in spam" has a short list of causes, and each can be seen
from outside: the sending address on a blocklist, no forward-confirmed PTR or
a HELO name that does not match it, an SPF record that does not cover the
host or breaks its limits, a DKIM record that is not the key we sign with,
no DMARC policy, an MTA-STS policy that is not served or not the one its id
says, a TLSA record that does not match the certificate, a certificate
about to expire, and DNS answers that differ between the zone's servers
and the resolvers right after a change.

Layout:

- ``context``: the facts from the configuration and the options (addresses,
  keys, listeners, resolvers); checks see nothing else;
- one module per topic, each check an async function ``Context -> [Finding]``
  (``blocklist``, ``rdns``, ``spf``, ``dkim``, ``dmarc``, ``mtasts``, ``tls``,
  ``dnsviews``), reusing the server's own code for the standards
  (``policy.spf.check_host``, ``policy.dkim.sign``/``verify``,
  ``policy.dmarc.parse_record``, ``policy.dnsbl.Lists``,
  ``queue.mtasts.fetch_policy``/``parse_policy``, ``queue.client``);
- ``checks``: every check at once under one time budget, exceptions turned into
  findings; ``render``: the text for humans (the CLI prints ``--json`` itself).

A finding is ``{check, subject, status: ok|warn|fail, detail, fix, domain}``;
one subject (a domain's SPF, a DKIM selector, a listener, a zone) gives one
finding however many things were wrong with it, so that one broken thing is
one failure. The command exits 1 when a finding failed (``--strict``: also
when one warned), 0 otherwise, 2 on a usage or configuration error.
"""

from __future__ import annotations

from estafeta.doctor.checks import CHECKS, run
from estafeta.doctor.context import Context, Listener, View
from estafeta.doctor.findings import Finding, Report

__all__ = ["CHECKS", "Context", "Finding", "Listener", "Report", "View", "run"]
