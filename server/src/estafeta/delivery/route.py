"""Recipient resolution and the local/remote split, for every way mail arrives.

The MX, submission, the queue (DSNs and queued local deliveries), Sieve
redirects and vacation replies all ask the same ``Router``:

- ``resolve(address)``: where mail to one address goes. Local accounts,
  aliases (recursively), subaddressing (``user+tag``) and catch-alls are
  ``Accounts.resolve``'s; an SRS address we made when forwarding
  (``SRS0=...@our.domain``) resolves to the original sender, after its hash
  and age are checked (``estafeta.srs``), so bounces of forwarded mail find
  their way back; ``<Postmaster>`` without a domain is the postmaster of the
  first domain (rfc5321:4.1.1.3).
- ``split(targets)``: which of those are accounts here and which live in
  other domains (alias forwards, SRS reversals); ``shared_mailboxes(targets)``:
  which are shared mailboxes (a delivery address the administrator gave one,
  ``#shared:NAME``: estafeta.auth.sharedaddresses), which neither list has.
- ``owns(account, address)``: whether an authenticated user may use an
  address as sender (it resolves to their account).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from estafeta import srs
from estafeta.address import AddressError, normalize_address, split_address
from estafeta.auth import Accounts
from estafeta.auth.sharedaddresses import mailbox_of_target

NO_SUCH_USER = "no such user"
NOT_LOCAL = "relay denied"


@dataclass(frozen=True)
class Resolution:
    """Where one recipient address leads; ``targets`` empty means refused."""

    address: str  # normalized
    targets: tuple[str, ...] = ()
    reason: str = ""  # why there are no targets (for the log)
    srs: bool = False  # a reversed SRS address (a bounce of forwarded mail)

    @property
    def found(self) -> bool:
        return bool(self.targets)


class Router:
    def __init__(self, accounts: Accounts, srs_secret: bytes) -> None:
        self.accounts = accounts
        self.srs_secret = srs_secret

    def is_local_domain(self, domain: str) -> bool:
        return self.accounts.is_local_domain(domain)

    def is_local(self, address: str) -> bool:
        """Whether ``address`` is in one of our domains (not whether it exists)."""
        try:
            return self.accounts.is_local_domain(split_address(normalize_address(address))[1])
        except AddressError:
            return False

    def postmaster(self, address: str) -> str:
        """rfc5321:4.1.1.3 / 4.5.1 — "<Postmaster>" without a domain MUST be
        accepted: this host's postmaster, that of its first domain."""
        if address.lower() == "postmaster" and self.accounts.domains:
            return f"postmaster@{self.accounts.domains[0]}"
        return address

    def resolve(self, address: str) -> Resolution:
        """Where mail to ``address`` (in one of our domains) goes."""
        try:
            normalized = normalize_address(self.postmaster(address))
        except AddressError as exc:
            return Resolution(address, reason=str(exc))
        local_part, domain = split_address(normalized)
        if not self.accounts.is_local_domain(domain):
            return Resolution(normalized, reason=NOT_LOCAL)
        if srs.is_srs(local_part):
            # A bounce to an address we rewrote when forwarding: back to its sender.
            try:
                original = srs.reverse(self.srs_secret, normalized)
            except srs.SRSError as exc:
                return Resolution(normalized, reason=str(exc))
            return Resolution(normalized, (original,), srs=True)
        targets = self.accounts.resolve(normalized)
        if not targets:
            return Resolution(normalized, reason=NO_SUCH_USER)
        return Resolution(normalized, tuple(targets))

    def split(self, targets: Iterable[str]) -> tuple[list[str], list[str]]:
        """(local accounts, remote addresses), each de-duplicated in order;
        shared mailboxes are in neither (``shared_mailboxes``)."""
        local: list[str] = []
        remote: list[str] = []
        for target in dict.fromkeys(targets):
            if mailbox_of_target(target) is None:
                (local if self.is_local(target) else remote).append(target)
        return local, remote

    @staticmethod
    def shared_mailboxes(targets: Iterable[str]) -> list[str]:
        """The shared mailboxes among ``targets`` (names in the shared
        store, ``info`` for ``Shared/info``), de-duplicated in order."""
        found = (mailbox_of_target(target) for target in targets)
        return list(dict.fromkeys(name for name in found if name is not None))

    def owns(self, account: str, address: str) -> bool:
        """May ``account`` send as ``address``? It must resolve to the account."""
        try:
            normalized = normalize_address(address)
        except AddressError:
            return False
        if not self.accounts.is_local_domain(split_address(normalized)[1]):
            return False
        return account in (self.accounts.resolve(normalized) or [])

    def addresses_of(self, account: str) -> list[str]:
        """The account's own address and the aliases that lead only to it
        (the default ``:addresses`` of a vacation reply, rfc5230:4.5)."""
        found = [account]
        for source, targets in self.accounts.list_aliases().items():
            if not source.startswith("@") and targets == [account]:
                found.append(source)
        return found
