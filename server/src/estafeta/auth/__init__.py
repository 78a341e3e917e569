"""Accounts, passwords and (later) second factors."""

from estafeta.auth.accounts import AccountError, Accounts

__all__ = ["AccountError", "Accounts"]
