"""Message parsing done once at delivery: what IMAP needs precomputed."""

from estafeta.message.structure import (
    MAX_DEPTH,
    Summary,
    decode_rfc2047,
    find_part,
    imap_bodystructure,
    imap_envelope,
    imap_string,
    imap_utf8_string,
    parse_addresses,
    summarize,
    with_fields,
)

__all__ = [
    "MAX_DEPTH",
    "Summary",
    "decode_rfc2047",
    "find_part",
    "imap_bodystructure",
    "imap_envelope",
    "imap_string",
    "imap_utf8_string",
    "parse_addresses",
    "summarize",
    "with_fields",
]
