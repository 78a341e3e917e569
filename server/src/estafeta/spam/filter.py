"""The junk filter as the server, IMAP and the CLI use it: ``JunkFilter``.

It ties the three pieces together: ``extract``/``tokenize`` (what a message
says), ``TokenStore`` (what an account has been taught) and ``score``
(Robinson/Fisher, see ``estafeta.spam.classify``). Every method is
synchronous and thread-safe; callers on the event loop use
``asyncio.to_thread``.

Failure policy: the filter never stops mail. ``classify`` answers an
untrained verdict (score 0.5, never spam) when the store fails or the
message trips a bug, and logs it; ``learn``/``unlearn`` log and answer
"error"; ``train_from`` counts such messages in ``errors`` and goes on. A
corrupt statistics file is replaced by the store itself. ``status`` and
``reset`` (administration) raise ``sqlite3.Error`` (``DatabaseError`` with
the cluster's shared store, ``spam.cluster``).

Which message is "the same message" for training is decided by
``message_digest``: a hash of the fields an author wrote (Message-ID, Date,
From, To, Subject) and the body, with CRLF read as LF, so the copy in the
mailbox (with Received, Authentication-Results and X-Spam-* fields added
at delivery, CRLF line ends) and the same message in an mbox export (LF)
train as one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from estafeta.cluster.database import DatabaseError
from estafeta.log import log_event
from estafeta.message import Summary
from estafeta.message.structure import header_fields
from estafeta.spam.classify import (
    DEFAULT_THRESHOLD,
    MAX_CLUES,
    MIN_STRENGTH,
    UNKNOWN_WORD_PROB,
    UNKNOWN_WORD_STRENGTH,
    Verdict,
    score,
)
from estafeta.spam.extract import DEFAULT_EXECUTABLE_EXTENSIONS, MAX_TEXT, Extracted, extract
from estafeta.spam.store import (
    MAX_ALLOW_LENGTH,
    MAX_OPEN,
    MAX_TOKENS,
    MAX_TRAINED,
    Outcome,
    Status,
    TokenStore,
    token_id,
)
from estafeta.spam.tokens import MAX_TOKENS as MAX_MESSAGE_TOKENS
from estafeta.spam.tokens import tokenize

if TYPE_CHECKING:
    from estafeta.spam.cluster import SharedTokenStore

log = logging.getLogger("estafeta.spam")

# What the store raises when it cannot read or write: a local file's
# sqlite3.Error, the cluster database's DatabaseError.
_STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, DatabaseError)

MIN_TRAINED = 20
"""Spam and ham messages an account must have trained before a verdict counts."""

TRAIN_BATCH = 50
"""Messages per transaction in ``train_from``."""

_DIGEST_FIELDS = (b"message-id", b"date", b"from", b"to", b"subject")
_DIGEST_WINDOW = 4 * 1024 * 1024  # raw octets looked at for the header and body
_DIGEST_BODY = 1024 * 1024  # normalised body octets hashed (plus the total length)
_BLANKS_RE = re.compile(rb"[ \t\r\n]+")


@dataclass(frozen=True)
class SpamSettings:
    """The filter's knobs; the defaults suit a small server."""

    threshold: float = DEFAULT_THRESHOLD  # score at and above which a message is spam
    min_spam: int = MIN_TRAINED  # trained spam needed before verdicts count
    min_ham: int = MIN_TRAINED  # trained ham needed before verdicts count
    max_tokens: int = MAX_TOKENS  # per account
    max_trained: int = MAX_TRAINED  # trained-message records kept per account
    max_open: int = MAX_OPEN  # account files open at once
    max_text: int = MAX_TEXT  # decoded characters read per message
    max_message_tokens: int = MAX_MESSAGE_TOKENS  # distinct tokens per message
    executable_extensions: frozenset[str] = DEFAULT_EXECUTABLE_EXTENSIONS
    unknown_word_strength: float = UNKNOWN_WORD_STRENGTH
    unknown_word_prob: float = UNKNOWN_WORD_PROB
    min_strength: float = MIN_STRENGTH
    max_clues: int = MAX_CLUES


@dataclass
class TrainReport:
    """What ``train_from`` did, message by message."""

    learned: int = 0
    relearned: int = 0
    unchanged: int = 0
    errors: int = 0

    def count(self, outcome: Outcome) -> None:
        if outcome == "learned":
            self.learned += 1
        elif outcome == "relearned":
            self.relearned += 1
        elif outcome == "unchanged":
            self.unchanged += 1
        else:
            self.errors += 1


def message_digest(data: bytes) -> bytes:
    """A stable 32-octet identity of a message for training (module docstring).

    Hashed: the first of each of Message-ID, Date, From, To and Subject,
    blanks collapsed; the body's first MiB with CRLF as LF; the body's whole
    length so counted. Work: O(4 MiB) whatever the message's size.
    """
    window = data[:_DIGEST_WINDOW].replace(b"\r\n", b"\n")
    end = window.find(b"\n\n")
    head, body = (window, b"") if end < 0 else (window[: end + 1], window[end + 2 :])
    wanted: dict[bytes, bytes] = {}
    for name, value in header_fields(head + b"\n"):
        key = name.encode("ascii", "replace")
        if key in _DIGEST_FIELDS and key not in wanted:
            wanted[key] = _BLANKS_RE.sub(b" ", value).strip()
    h = hashlib.sha256(b"estafeta-spam-digest-1\n")
    for key in _DIGEST_FIELDS:
        h.update(key + b":" + wanted.get(key, b"") + b"\n")
    h.update(b"\n")
    h.update(body[:_DIGEST_BODY])
    header_size = len(head) + 1  # the blank line, in normalised octets
    total = len(data) - data.count(b"\r\n") - header_size
    h.update(b"\n%d" % max(total, 0))
    return h.digest()


def allow_entry(sender: str) -> str:
    """The allowlist form of ``sender``: "user@domain" or "@domain", lower
    case. ValueError names what is wrong."""
    entry = sender.strip().lower()
    _local, at, domain = entry.rpartition("@")
    if not at or not domain or "." not in domain.strip("."):
        raise ValueError(f"not an address or @domain: {sender!r}")
    if len(entry) > MAX_ALLOW_LENGTH or any(c.isspace() or c in '<>,;"' for c in entry):
        raise ValueError(f"not an address or @domain: {sender!r}")
    return entry


def _allow_entries(senders: Sequence[str]) -> list[str]:
    """What to look up for ``senders``: each address and its "@domain"."""
    entries: list[str] = []
    for sender in senders[:8]:
        address = sender.strip().lower()
        if "@" in address:
            entries += [address, "@" + address.rpartition("@")[2]]
    return entries


def _untrained(threshold: float) -> Verdict:
    return Verdict(score=0.5, spam=False, tokens=(), trained=False, threshold=threshold)


class JunkFilter:
    """The learning junk filter of every account; statistics under
    ``directory``, or in ``store`` when given (a cluster's shared one)."""

    def __init__(
        self,
        directory: Path,
        settings: SpamSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        store: TokenStore | SharedTokenStore | None = None,
    ) -> None:
        self.settings = settings or SpamSettings()
        s = self.settings
        self.store: TokenStore | SharedTokenStore = (
            store
            if store is not None
            else TokenStore(
                directory,
                max_tokens=s.max_tokens,
                max_trained=s.max_trained,
                max_open=s.max_open,
                clock=clock,
            )
        )

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> JunkFilter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading messages ---------------------------------------------------------

    def extract(self, data: bytes, summary: Summary | None = None) -> Extracted:
        """Parse once, then pass the result to ``classify``, ``learn``,
        ``url_domains`` and ``executable_attachments``."""
        return extract(data, summary, max_text=self.settings.max_text)

    def tokens(self, message: bytes | Extracted) -> list[str]:
        ex = message if isinstance(message, Extracted) else self.extract(message)
        return tokenize(
            ex,
            max_tokens=self.settings.max_message_tokens,
            extensions=self.settings.executable_extensions,
        )

    # -- verdicts -------------------------------------------------------------------

    def classify(self, account: str, message: bytes | Extracted) -> Verdict:
        """The verdict for ``message`` delivered to ``account``. Never raises."""
        result = self._classify(account, message, None)
        assert result is not None
        return result[1] or _untrained(self.settings.threshold)

    def check_nowait(
        self, account: str, message: bytes | Extracted, senders: Sequence[str] = ()
    ) -> tuple[bool, Verdict | None] | None:
        """``is_allowed`` then ``classify`` on the event loop, in one read,
        when that need not wait for anything (the account's statistics open
        and free: ``TokenStore.run_nowait``): (True, None) for a sender on
        the account's allowlist, else (False, verdict). None: call the
        blocking methods in a worker thread. The CPU it takes is bounded by
        ``max_text`` and ``max_message_tokens`` (~0.1 ms for a 4 KiB
        message); the thread hop it saves costs as much, and more under load."""
        return self._classify(account, message, _allow_entries(senders))

    def _classify(
        self, account: str, message: bytes | Extracted, entries: list[str] | None
    ) -> tuple[bool, Verdict | None] | None:
        """entries None: wait as needed, no allowlist; else the nowait read."""
        s = self.settings
        if entries is not None and self.store.has_no_file(account):
            # Never trained, so no statistics and no allowlist: the verdict
            # is "untrained" whatever the tokens are (not worth making them).
            return False, _untrained(s.threshold)
        try:
            tokens = self.tokens(message)
            ids = [token_id(t) for t in tokens]
            if entries is None:
                counts = self.store.counts(account, ids)
            else:
                done, (allowed, counts) = self.store.read_nowait(account, ids, entries)
                if not done:
                    return None
                if allowed:
                    return True, None
        except _STORE_ERRORS as exc:
            log_event(log, "spam_store_error", logging.ERROR, op="classify", account=account,
                      error=str(exc))  # fmt: skip
            return False, _untrained(s.threshold)
        except Exception as exc:  # a bug: the message is still delivered
            log.exception("spam classify failed")
            log_event(log, "spam_classify_failed", logging.ERROR, account=account, error=repr(exc))
            return False, _untrained(s.threshold)
        if counts is None:
            return False, _untrained(s.threshold)
        by_token = {
            t: counts.tokens[i] for t, i in zip(tokens, ids, strict=True) if i in counts.tokens
        }
        value, clues = score(
            by_token,
            counts.nspam,
            counts.nham,
            strength=s.unknown_word_strength,
            unknown=s.unknown_word_prob,
            min_strength=s.min_strength,
            max_clues=s.max_clues,
        )
        trained = counts.nspam >= s.min_spam and counts.nham >= s.min_ham
        return False, Verdict(
            score=value,
            spam=trained and value >= s.threshold,
            tokens=clues,
            trained=trained,
            threshold=s.threshold,
        )

    # -- training -------------------------------------------------------------------

    def _item(self, message: bytes | Extracted) -> tuple[bytes, list[int]]:
        ex = message if isinstance(message, Extracted) else self.extract(message)
        return message_digest(ex.data), [token_id(t) for t in self.tokens(ex)]

    def _safe_item(
        self, account: str, message: bytes | Extracted
    ) -> tuple[bytes, list[int]] | None:
        """``_item``, or None (logged) if reading the message trips a bug:
        a training is never worth failing the IMAP command that caused it."""
        try:
            return self._item(message)
        except Exception as exc:
            log.exception("spam tokenize failed")
            log_event(log, "spam_tokenize_failed", logging.ERROR, account=account, error=repr(exc))
            return None

    def learn(self, account: str, message: bytes | Extracted, spam: bool) -> Outcome:
        """Teach that ``message`` is spam (``spam=True``) or ham: "learned",
        "relearned" (was trained the other way), "unchanged", or "error"."""
        item = self._safe_item(account, message)
        if item is None:
            return "error"
        try:
            return self.store.learn(account, [item], spam)[0]
        except _STORE_ERRORS as exc:
            log_event(log, "spam_store_error", logging.ERROR, op="learn", account=account,
                      error=str(exc))  # fmt: skip
            return "error"

    def unlearn(self, account: str, message: bytes | Extracted) -> Outcome:
        """Take back an earlier training of ``message``: "unlearned",
        "absent" (not trained, or trained too long ago), or "error"."""
        item = self._safe_item(account, message)
        if item is None:
            return "error"
        try:
            return self.store.unlearn(account, *item)
        except _STORE_ERRORS as exc:
            log_event(log, "spam_store_error", logging.ERROR, op="unlearn", account=account,
                      error=str(exc))  # fmt: skip
            return "error"

    def train_from(
        self,
        account: str,
        messages: Iterable[bytes],
        spam: bool,
        *,
        batch: int = TRAIN_BATCH,
    ) -> TrainReport:
        """Bulk training (``estafeta spam train``, initial training from the
        account's folders): ``batch`` messages per transaction, so memory is
        bounded by one batch of token lists (50 x 3,000 ids)."""
        report = TrainReport()
        pending: list[tuple[bytes, list[int]]] = []

        def flush() -> None:
            if not pending:
                return
            try:
                for outcome in self.store.learn(account, pending, spam):
                    report.count(outcome)
            except _STORE_ERRORS as exc:
                log_event(log, "spam_store_error", logging.ERROR, op="train", account=account,
                          error=str(exc))  # fmt: skip
                report.errors += len(pending)
            pending.clear()

        for data in messages:
            item = self._safe_item(account, data)
            if item is None:
                report.errors += 1
                continue
            pending.append(item)
            if len(pending) >= max(1, batch):
                flush()
        flush()
        return report

    # -- the account's allowlist: senders never judged spam ------------------------

    def allow(self, account: str, sender: str) -> bool:
        """Put ``sender`` ("user@domain" or "@domain") on ``account``'s list.
        Raises ValueError for anything else; False when the list is full."""
        return self.store.allow(account, allow_entry(sender))

    def disallow(self, account: str, sender: str) -> bool:
        return self.store.disallow(account, allow_entry(sender))

    def allowed(self, account: str) -> list[str]:
        return self.store.allowed(account)

    def is_allowed(self, account: str, senders: Sequence[str]) -> bool:
        """Whether a sender address (From, envelope sender) or its domain is
        on ``account``'s list. Never raises (a broken list allows nobody)."""
        entries = _allow_entries(senders)
        if not entries:
            return False
        try:
            return self.store.any_allowed(account, entries)
        except (sqlite3.Error, OSError) as exc:
            log_event(log, "spam_allowlist_failed", logging.ERROR, account=account, error=str(exc))
            return False

    # -- administration ----------------------------------------------------------

    def status(self, account: str) -> Status:
        return self.store.status(account)

    def reset(self, account: str) -> None:
        self.store.reset(account)
