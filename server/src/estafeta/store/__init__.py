"""Durable mail storage: Maildir files plus a SQLite index per account.

On-disk layout (everything below ``data_dir``)::

    accounts.db                      accounts and aliases (estafeta.auth.accounts)
    mail/
      DOMAIN/                        IDNA A-label, lower case
        LOCALPART/                   the account; maildir.escape()d local part
          index.db  (-wal, -shm)     SQLite index, WAL mode (estafeta.store.index)
          tmp/ new/ cur/             INBOX, Maildir layout
          .Sent/{tmp,new,cur}/       other mailboxes, Maildir++ style: "A/B" is ".A.B";
          .Archive.2024/ ...         "%", "." and control characters in names are %XX
    deleted/ADDRESS.TIMESTAMP/       accounts removed with `user del` (mail is kept)

Message files are named ``SECONDS.M<usec>P<pid>Q<n>R<rand>.HOST,S=<size>``
and delivered into ``new/``; they are never modified. Flags, UIDs and
modseqs live in the index, so the files stay readable by any Maildir tool
(mutt, notmuch, ...), while the index is rebuilt from them by
``estafeta reindex ADDRESS``.

Write path and crash safety: see ``estafeta.store.account``.
"""

from estafeta.store.account import Delivered, Delivery, OverQuota, Store, StoreError
from estafeta.store.index import Mailbox, MessageRow

__all__ = ["Delivered", "Delivery", "Mailbox", "MessageRow", "OverQuota", "Store", "StoreError"]
