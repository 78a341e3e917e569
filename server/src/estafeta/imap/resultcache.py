"""The last answers of SORT and THREAD over a whole mailbox, kept in
memory so that asking again costs a lookup (what Dovecot's thread index
gives it, and what webmail does on every page: Roundcube sends the same
THREAD REFERENCES for each list view).

An answer depends only on the messages of the view and on the question: a
message's sort keys and thread fields never change once it is delivered,
and a mailbox's (id, UIDVALIDITY) is never given to other messages
(rfc9051:2.3.1.1). So the key is the account, the mailbox, its UIDVALIDITY,
the question and a digest of the view's UIDs; a view that gained or lost a
message asks a different question, and nothing has to be invalidated.

Bounded: at most ``budget`` bytes of answers (least recently used go
first), none larger than ``largest``. Thread-safe (searches run on their
own threads).
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Sequence

__all__ = ["ResultCache", "view_digest"]


def view_digest(uids: Sequence[int]) -> bytes:
    """A digest of a view's UIDs (ascending, each below 2**32: rfc9051:2.3.1.1)."""
    return hashlib.blake2b(array("I", uids).tobytes(), digest_size=16).digest()


class ResultCache:
    def __init__(self, budget: int = 32 << 20, largest: int = 8 << 20) -> None:
        self.budget = budget
        self.largest = largest
        self._entries: OrderedDict[Hashable, tuple[bytes | array[int], int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | array[int] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: bytes | array[int]) -> None:
        size = len(value) if isinstance(value, bytes) else len(value) * value.itemsize
        if size > self.largest:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._used -= old[1]
            self._entries[key] = (value, size)
            self._used += size
            while self._used > self.budget:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._used -= dropped

    def used(self) -> int:
        with self._lock:
            return self._used
