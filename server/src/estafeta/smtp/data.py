"""The SMTP DATA phase, sans-IO: message bytes in, the unstuffed message out.

``DataReader`` is fed whatever arrives after the ``354`` (any chunking,
down to one byte at a time) with ``receive_data()``; ``next_event()`` says
``NEED_DATA`` until the end-of-data indication, then gives a ``DataEnd``
with the outcome. The message is kept in one ``bytearray`` (about one byte
of memory per message byte: no object per line), with the transparency dots
removed as it arrives.

The rules are those aiosmtpd's ``smtp_DATA`` applies, so nothing changes
for clients:

- lines end with CRLF only (rfc5321:2.3.8); a lone CR or LF is an ordinary
  octet here (the handlers decide about those, on the whole message);
- the data ends at CRLF "." CRLF, the CRLF being that of the DATA command
  for an empty message (rfc5321:4.1.1.4); a dot starting any other line is
  removed (rfc5321:4.5.2);
- a line longer than 1001 octets with its CRLF (998 + CRLF, rfc5321:
  4.5.3.1.6, plus a transparency dot) makes ``LINE_TOO_LONG``; more than
  ``size_limit`` octets (counted as sent, dots included, the final
  "." CRLF excluded) ``TOO_MUCH_DATA`` (rfc1870:6). Either one drops what was
  kept, and the rest is only scanned for the end: the reply comes after the
  final dot (rfc5321:4.2.5), never in the middle of the data;
- ``budget`` (a ``DataBudget`` shared by all SMTP connections of the
  process) must grant every byte kept; when it cannot, the transfer becomes
  ``NO_MEMORY`` (452 4.3.1 after the dot, rfc3463:3.4 X.3.1) and lets go of
  what it held. A permanent error found later (too long, too big) still
  wins, since retrying would not help.

``close()`` gives back whatever the reader still holds of the budget; the
session calls it on every path (end of transaction, disconnect, timeout).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# rfc5321:4.5.3.1.6: 998 octets + CRLF, plus a transparency dot (aiosmtpd's
# line_length_limit).
MAX_LINE = 1001
# The end-of-data indication, with the CRLF ending the last line (rfc5321:4.1.1.4).
_END = b"\r\n.\r\n"
# Suffixes of a chunk that may be the start of the end indication (or of a
# CRLF, or of a CRLF "." to unstuff): kept back until the next chunk.
_PARTIAL_END = (_END[:4], _END[:3], _END[:2], _END[:1])


class DataBudget:
    """Bytes of message data that all SMTP transfers together may hold.

    Pure accounting (no IO, no locks: the event loop runs one reader at a
    time). ``used`` never exceeds ``limit``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, octets: int) -> bool:
        if self.used + octets > self.limit:
            return False
        self.used += octets
        return True

    def release(self, octets: int) -> None:
        self.used -= octets
        assert self.used >= 0, "DataBudget released more than was reserved"


class DataStatus(enum.Enum):
    OK = "ok"
    LINE_TOO_LONG = "line too long"  # 500 5.5.2
    TOO_MUCH_DATA = "too much data"  # 552 5.3.4
    NO_MEMORY = "no memory"  # 452 4.3.1


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True)
class DataEnd:
    """The final dot is in."""

    status: DataStatus
    # Octets as sent (dots included, the final "." CRLF excluded).
    size: int


class DataReader:
    def __init__(
        self,
        *,
        size_limit: int | None = None,
        budget: DataBudget | None = None,
    ) -> None:
        self.size_limit = size_limit or None
        self.budget = budget
        self.status = DataStatus.OK
        self.size = 0  # octets of the message as sent so far
        self.trailing = b""  # what came after the final dot
        self._message = bytearray()
        self._reserved = 0
        self._carry = b""  # the unprocessed end of the last chunk (< 5 octets)
        self._at_line_start = True  # _carry (or the next chunk) starts a line
        self._line = 0  # octets of the current, unfinished line
        self._end: DataEnd | None = None

    # -- input ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._end is not None:
            self.trailing += data
            return
        if self._carry:
            data = self._carry + data
            self._carry = b""
        if not data:
            return
        if self._at_line_start and data[:3] == b".\r\n":
            self._finish(b"", data[3:])
            return
        end = data.find(_END)
        if end >= 0:
            self._finish(data[: end + 2], data[end + 5 :])
            return
        cut = len(data)
        if self._at_line_start and len(data) < 3 and b".\r\n".startswith(data):
            cut = 0  # "." or ".\r" at a line start: maybe the end
        else:
            for partial in _PARTIAL_END:
                if data.endswith(partial):
                    cut -= len(partial)
                    break
        self._carry = data[cut:]
        if cut:
            self._process(data[:cut] if cut < len(data) else data)

    def next_event(self) -> _NeedData | DataEnd:
        return NEED_DATA if self._end is None else self._end

    @property
    def done(self) -> bool:
        return self._end is not None

    def needed(self) -> bytes:
        """The end indication less the part the data received so far ends
        with (after a CRLF: "." CRLF; in the middle of a line: all of it).

        An IO layer that reads up to the first occurrence of this (or less)
        never reads past the end of the data: what the client pipelined
        after the final dot stays in its stream.
        """
        carry = self._carry
        if carry[:1] == b".":  # at a line start, i.e. just after a CRLF
            matched = 2 + len(carry)
        elif carry:
            matched = len(carry)
        else:
            matched = 2 if self._at_line_start else 0
        return _END[matched:]

    # -- output -----------------------------------------------------------------

    def take_message(self) -> bytes:
        """The unstuffed message (status OK), once; the reader keeps its
        budget reservation until close()."""
        assert self._end is not None and self.status is DataStatus.OK
        message = bytes(self._message)
        self._message = bytearray()
        return message

    @property
    def reserved(self) -> int:
        return self._reserved

    def close(self) -> None:
        """Give the budget back and drop the data (idempotent)."""
        self._message = bytearray()
        if self._reserved and self.budget is not None:
            self.budget.release(self._reserved)
        self._reserved = 0

    # -- internals --------------------------------------------------------------

    def _finish(self, last: bytes, trailing: bytes) -> None:
        if last:
            self._process(last)
        self._carry = b""
        self.trailing = trailing
        self._end = DataEnd(self.status, self.size)

    def _fail(self, status: DataStatus) -> None:
        permanent = (DataStatus.LINE_TOO_LONG, DataStatus.TOO_MUCH_DATA)
        if self.status in permanent or (
            self.status is DataStatus.NO_MEMORY and status is DataStatus.NO_MEMORY
        ):
            return
        self.status = status
        # Nothing of this message will be delivered: let go of it now.
        self.close()

    def _process(self, chunk: bytes) -> None:
        """A chunk with no end indication in it, never ending inside a CRLF
        or just after one (those octets were carried over)."""
        at_line_start = self._at_line_start
        self._at_line_start = chunk.endswith(b"\r\n")
        self.size += len(chunk)
        if self.size_limit is not None and self.size > self.size_limit:
            self._fail(DataStatus.TOO_MUCH_DATA)
        if self.status is DataStatus.OK or self.status is DataStatus.NO_MEMORY:
            self._check_lines(chunk)
        if self.status is not DataStatus.OK:
            return
        # rfc5321:4.5.2 — remove the first dot of every line that starts with one.
        if b"\r\n." in chunk:
            chunk = chunk.replace(b"\r\n.", b"\r\n")
        if at_line_start and chunk[:1] == b".":
            chunk = chunk[1:]
        if self.budget is not None:
            if not self.budget.reserve(len(chunk)):
                self._fail(DataStatus.NO_MEMORY)
                return
            self._reserved += len(chunk)
        self._message += chunk

    def _check_lines(self, chunk: bytes) -> None:
        """LINE_TOO_LONG if a line (with its CRLF) goes beyond MAX_LINE.

        From each line start, the last CRLF within reach of MAX_LINE is
        looked up in C (rfind): every line before it is short enough, and
        the scan jumps there, so the loop runs about twice per MAX_LINE
        octets whatever the line lengths.
        """
        pos, n, line = 0, len(chunk), self._line
        while pos < n:
            reach = pos + MAX_LINE - line  # a CRLF must end by here
            crlf = chunk.rfind(b"\r\n", pos, min(reach, n))
            if crlf < 0:
                if reach <= n:
                    self._fail(DataStatus.LINE_TOO_LONG)
                    return
                line += n - pos
                break
            pos, line = crlf + 2, 0
        self._line = line
