"""What happens to an accepted message: routing, the filter chain, local
delivery and forwarding.

Layers (STYLE.md section 7; ``make lint`` checks them with import-linter):
the protocol sessions (smtp/, imap/, pop3/, managesieve/) sit above this
package and decide protocol matters — is this recipient acceptable, is this
client allowed; this package decides what becomes of the message, and is
the only path into the store for new mail; store/, queue/, policy/ and
sieve/ sit below it.

- ``route``: recipient resolution and the local/remote split;
- ``filters``: the filter chain (DMARC quarantine, Sieve) and its verdicts;
- ``local``: ``LocalDelivery``, which carries the verdicts out;
- ``forward``: alias forwarding and redirects with SRS and an ARC seal;
- ``responses``: vacation replies and rejection notices;
- ``rules``: which Sieve scripts run for an account;
- ``reports``: the ``[reports] dmarc_address`` intake of DMARC aggregate
  reports (stored, not delivered);
- ``dmarc_evaluations`` and ``dmarc_send``: the DMARC aggregate reports we
  send (``[reports] dmarc_send``): the MX's evaluations recorded, and the
  daily reports built, signed and queued.
"""
