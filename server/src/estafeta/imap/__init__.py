"""IMAP4rev1 / IMAP4rev2 server: sans-IO parser, asyncio session, commands."""
