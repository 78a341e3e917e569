"""What an account may ask of its data (issue 18): all of it, or none of it.

``export``: ``estafeta user export``, everything the server holds about an
account as one zip or tar.gz (Maildir and mbox, and JSON for the rest).
``erase``: ``estafeta user erase``, everything removed, in an order a crash
cannot spoil (the order and what stays are at the top of erase.py).
``scrub``: rebuilding a SQLite file so that deleted rows leave no octets.
"""
