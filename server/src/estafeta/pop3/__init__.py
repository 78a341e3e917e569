"""POP3: sans-IO parser and asyncio session over the store (rfc1939)."""
