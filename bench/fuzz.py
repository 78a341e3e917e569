#!/usr/bin/env python3
"""The long fuzz run: the sans-IO parsers driven directly, without pytest.

Targets: the SMTP reply parser (queue client), the IMAP, POP3 and
ManageSieve command parsers, the Sieve script parser, address normalisation,
MIME structure (summary, ENVELOPE,
BODYSTRUCTURE and FETCH rendering), the LIST/LSUB pattern matcher and the
merging of IMAP sequence sets (both against naive references). Inputs are
random mutations of a corpus of valid inputs (see server/tests/_fuzz.py,
shared with the test_fuzz_*.py property tests, which check the same
invariants; the LIST, sequence-set, ManageSieve and Sieve drivers live in
test_fuzz_list.py, test_fuzz_sequence_set.py, test_fuzz_managesieve.py and
test_fuzz_sieve.py). Each parser input is fed
whole; a quarter of them also in random pieces (one octet at a time for some),
which must give the same result.

A crash is any exception other than the parser's documented protocol
error, or a broken invariant. Crashing inputs are saved in
bench/results/fuzz-crashes/ (the input as .bin, the traceback as .txt) and
the exit status is 1.

    .venv/bin/python bench/fuzz.py [--inputs 1000000] [--mime-seconds 120]
        [--targets smtp,imap,pop3,address,mime,list,seqset,managesieve,sieve] [--jobs 2] [--seed N]

Each parser target runs ``--inputs`` inputs (split over ``--jobs``
processes); MIME, much slower per input, runs for ``--mime-seconds`` (or
``--mime-inputs``). The .txt of a crash holds the input, the pieces and
the options; the same seed and --jobs replay the whole run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server" / "tests"))

import test_fuzz_list
import test_fuzz_managesieve
import test_fuzz_sequence_set
import test_fuzz_sieve

import _fuzz

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz-crashes"
TARGETS = ("smtp", "imap", "pop3", "address", "mime", "list", "seqset", "managesieve", "sieve")
MAX_SAVED = 5  # inputs saved per distinct crash (same exception at the same place)
CHUNKED = 0.25  # share of the parser inputs also fed in random pieces and compared

# A case: the input (saved on a crash), a description, and the check to run.
Case = tuple[bytes, str, Callable[[], object]]


def smtp_case(rng: random.Random) -> Case:
    data = _fuzz.fuzz_input(rng, _fuzz.SMTP_REPLY_CORPUS, _fuzz.SMTP_REPLY_TOKENS)
    cuts = _fuzz.random_cuts(rng, len(data)) if rng.random() < CHUNKED else []

    def run() -> None:
        whole = _fuzz.smtp_replies([data])
        if not cuts:
            return
        pieces = _fuzz.smtp_replies(_fuzz.split(data, cuts))
        if whole != pieces:
            raise _fuzz.Crash(f"chunking changes the result: {whole!r} != {pieces!r}")

    return data, f"cuts={cuts}", run


def imap_case(rng: random.Random) -> Case:
    data = _fuzz.fuzz_input(rng, _fuzz.IMAP_CORPUS, _fuzz.IMAP_TOKENS)
    cuts = _fuzz.random_cuts(rng, len(data)) if rng.random() < CHUNKED else []
    options: dict[str, Any] = {
        "authenticated": rng.random() < 0.5,
        "utf8": rng.random() < 0.3,
        "literal_plus": rng.random() < 0.7,
    }
    if rng.random() < 0.3:
        options["max_line"] = rng.randint(8, 300)
    if rng.random() < 0.3:
        options["max_literal"] = rng.randint(0, 5000)
    if rng.random() < 0.1:
        options["max_depth"] = rng.randint(0, 5)

    def run() -> None:
        whole = _fuzz.imap_events([data], **options)
        if not cuts:
            return
        pieces = _fuzz.imap_events(_fuzz.split(data, cuts), **options)
        if whole != pieces:
            raise _fuzz.Crash(f"chunking changes the events: {whole!r} != {pieces!r}")

    return data, f"cuts={cuts} options={options}", run


def pop3_case(rng: random.Random) -> Case:
    data = _fuzz.fuzz_input(rng, _fuzz.POP3_CORPUS, _fuzz.POP3_TOKENS)
    cuts = _fuzz.random_cuts(rng, len(data)) if rng.random() < CHUNKED else []

    def run() -> None:
        whole = _fuzz.pop3_events([data])
        if not cuts:
            return
        pieces = _fuzz.pop3_events(_fuzz.split(data, cuts))
        if whole != pieces:
            raise _fuzz.Crash(f"chunking changes the events: {whole!r} != {pieces!r}")

    return data, f"cuts={cuts}", run


def address_case(rng: random.Random) -> Case:
    text = _fuzz.random_address(rng)

    domain_too = rng.random() < 0.25

    def run() -> None:
        _fuzz.check_address(text)
        if domain_too:
            _fuzz.check_domain(text.rpartition("@")[2])

    return text.encode("utf-8", "surrogatepass"), f"text={text!r}", run


_ATTS: list[tuple[Any, ...]] = []


def mime_case(rng: random.Random) -> Case:
    if not _ATTS:
        _ATTS.extend(_fuzz.fetch_atts(item) for item in _fuzz.FETCH_ITEMS)
    data = _fuzz.random_message(rng)
    atts = [a for _ in range(rng.randint(0, 4)) for a in rng.choice(_ATTS)]

    def run() -> None:
        _fuzz.check_message(data, atts)

    return data, f"atts={atts!r}", run


def list_case(rng: random.Random) -> Case:
    """LIST/LSUB matching (issue 14 item 2): the backtracking-free matcher
    against a reference, on mutated references, patterns and names."""
    data = _fuzz.fuzz_input(rng, test_fuzz_list.LIST_CORPUS, test_fuzz_list.LIST_TOKENS)
    return data, "", lambda: test_fuzz_list.list_match_case(data)


CASES: dict[str, Callable[[random.Random], Case]] = {
    "smtp": smtp_case,
    "imap": imap_case,
    "pop3": pop3_case,
    "address": address_case,
    "mime": mime_case,
    "list": list_case,
    # Merged sequence sets (issue 14 item 6) against the naive reading.
    "seqset": test_fuzz_sequence_set.sequence_set_case,
    # The ManageSieve command parser (issue 15); its driver is in test_fuzz_managesieve.py.
    "managesieve": test_fuzz_managesieve.managesieve_case,
    # The Sieve script parser (issue 15): errors with positions, limits, the
    # round trip and LF/CRLF; its driver is in test_fuzz_sieve.py.
    "sieve": test_fuzz_sieve.sieve_case,
}


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1] if frames else None
    place = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
    text = " ".join(str(exc).split()[:2])[:40] if isinstance(exc, _fuzz.Crash) else ""
    return f"{type(exc).__name__} at {place} {text}".strip()


def _save(target: str, data: bytes, about: str, exc: BaseException) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{target}-{hashlib.sha1(data, usedforsecurity=False).hexdigest()[:12]}"
    (RESULTS / f"{name}.bin").write_bytes(data)
    text = "".join(traceback.format_exception(exc))
    (RESULTS / f"{name}.txt").write_text(f"{about}\ninput: {data!r}\n\n{text}")
    return RESULTS / f"{name}.bin"


def work(target: str, inputs: int, seconds: float, seed: int) -> dict[str, Any]:
    """Run ``inputs`` cases of ``target`` (or until ``seconds`` pass)."""
    sys.setrecursionlimit(10_000)
    rng = random.Random(seed)
    make = CASES[target]
    crashes: dict[str, int] = {}
    saved: list[str] = []
    done = 0
    start = time.monotonic()
    deadline = start + seconds
    while done < inputs:
        if done % 256 == 0 and time.monotonic() > deadline:
            break
        data, about, run = make(rng)
        done += 1
        try:
            run()
        except Exception as exc:
            signature = _signature(exc)
            crashes[signature] = crashes.get(signature, 0) + 1
            if crashes[signature] <= MAX_SAVED:
                saved.append(str(_save(target, data, about, exc)))
    return {
        "inputs": done,
        "seconds": time.monotonic() - start,
        "crashes": crashes,
        "saved": saved,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="per parser target")
    parser.add_argument("--mime-inputs", type=int, default=1_000_000, help="for MIME at most")
    parser.add_argument("--mime-seconds", type=float, default=120, help="for MIME at most")
    parser.add_argument("--max-seconds", type=float, default=1800, help="per parser target")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    print(f"seed {args.seed}, {args.jobs} jobs")
    print(f"{'target':<8} {'inputs':>10} {'crashes':>8} {'seconds':>8} {'inputs/s':>10}")
    failed = False
    total_start = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for target in targets:
            mime = target == "mime"
            wanted = args.mime_inputs if mime else args.inputs
            budget = args.mime_seconds if mime else args.max_seconds
            shares = [wanted // args.jobs + (i < wanted % args.jobs) for i in range(args.jobs)]
            start = time.monotonic()
            futures = [
                pool.submit(work, target, share, budget, args.seed * 1000 + i)
                for i, share in enumerate(shares)
            ]
            results = [f.result() for f in futures]
            elapsed = time.monotonic() - start
            done = sum(r["inputs"] for r in results)
            crashes: dict[str, int] = {}
            for r in results:
                for signature, count in r["crashes"].items():
                    crashes[signature] = crashes.get(signature, 0) + count
            count = sum(crashes.values())
            print(f"{target:<8} {done:>10} {count:>8} {elapsed:>8.1f} {done / elapsed:>10.0f}")
            for signature, n in sorted(crashes.items()):
                print(f"    {n} x {signature}")
            for r in results:
                for path in r["saved"]:
                    print(f"    saved {path}")
            failed = failed or bool(count)
            sys.stdout.flush()
    print(f"total {time.monotonic() - total_start:.0f} s; {'CRASHES' if failed else 'no crashes'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
