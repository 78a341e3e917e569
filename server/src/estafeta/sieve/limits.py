"""The limits of one Sieve run, so that a hostile script or message cannot
make delivery slow or unbounded (rfc5228:2.10.4, rfc5228:10)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from estafeta.config import SieveConfig


@dataclass(frozen=True)
class Limits:
    # Distinct actions per message (rfc5228:2.10.4) and redirects among them
    # (rfc5228:10 (2)); beyond either: a runtime error, so the implicit keep.
    max_actions: int = 32
    max_redirects: int = 4
    # Commands and tests evaluated per run (all scripts, includes too), plus
    # string work: one step per OPS_PER_STEP octets a match or an expansion
    # may touch.  Beyond it: a runtime error.
    max_steps: int = 100_000
    # Seconds one :regex match may run (draft-ietf-sieve-regex; "regex"
    # package), and all of a run's :regex matches together.
    regex_timeout: float = 0.1
    regex_total: float = 1.0
    # A run on the event loop (``run(..., inline=True)``) stops at these,
    # well before the limits above, and is made again in a worker thread:
    # about a millisecond of work at most, where a thread hop costs more
    # than the 50-rule script it would carry.
    inline_steps: int = 1000
    inline_regex: float = 0.001
    # rfc5230:4.1 / rfc6131:2: :days/:seconds are moved into this range.
    vacation_min_period: float = 86400.0
    vacation_max_period: float = 90 * 86400.0
    # rfc5229:6: longer values are truncated (at least 4000 characters must
    # fit); at most this many variables per script (at least 128).
    max_variable_size: int = 4096
    max_variables: int = 256
    # rfc6609:3.1: nesting of include (the top-level script is level 1) and
    # includes per run.
    max_include_depth: int = 8
    max_includes: int = 32
    # rfc7352:3.3 duplicate: :seconds default and ceiling.
    duplicate_default_period: float = 7 * 86400.0
    duplicate_max_period: float = 90 * 86400.0
    # rfc5173:8 body: octets of a body the test reads (1 MiB); the rest is
    # not searched.
    max_body_scan: int = 1024 * 1024
    # rfc5293:4 editheader: octets all addheader actions of a run may add.
    max_added_header: int = 64 * 1024

    @classmethod
    def from_config(cls, cfg: SieveConfig) -> Limits:
        return cls(
            max_actions=cfg.max_actions,
            max_redirects=cfg.max_redirects,
            max_steps=cfg.max_steps,
            regex_timeout=cfg.regex_timeout,
            vacation_min_period=cfg.vacation_min_period,
            vacation_max_period=cfg.vacation_max_period,
        )
