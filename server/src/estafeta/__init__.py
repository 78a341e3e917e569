"""Estafeta: self-hosted mail server (SMTP, IMAP, POP3) over a durable Maildir store."""

__version__ = "0.2.0"
