"""The answers a command handler raises: NO and BAD (rfc9051:7.1).

The session catches them at the top of its command loop and sends the
tagged response (estafeta.imap.session); handlers in other modules
(estafeta.imap.acl) raise them without importing the session.
"""

from __future__ import annotations


class No(Exception):  # named after the IMAP response it becomes
    """Answer the command with NO (``code`` is an rfc5530 response code)."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code


class Bad(Exception):
    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.code = code
