"""The score: Gary Robinson's token probabilities, combined with Fisher's method.

Method, and why this one. Paul Graham's "A Plan for Spam" (2002) made naive
Bayes filtering popular, but its per-token probabilities are ad hoc (ham
counts doubled, rare tokens clipped to fixed values) and its combination
(the naive Bayes product of the 15 most extreme tokens) pushes nearly
every score to 0 or 1, right or wrong. Gary Robinson ("Spam Detection",
2002; "A Statistical Approach to the Spam Problem", Linux Journal, 2003)
fixed both, and SpamBayes (Tim Peters et al.) and bogofilter measured the
result as at least as accurate and far better calibrated, with an "unsure"
middle where the mistakes gather. It is what we use:

1. Per token w, seen in ``b`` of ``nspam`` spam and ``g`` of ``nham`` ham
   messages, ``p(w) = (b/nspam) / (b/nspam + g/nham)`` (the ratios, so an
   unequal number of trained spam and ham does not bias it).
2. Robinson's Bayesian adjustment for tokens seen rarely:
   ``f(w) = (s*x + n*p(w)) / (s + n)`` with ``n = b + g``, ``x`` the
   probability assumed for a token never seen (0.5) and ``s`` the strength
   of that belief (0.45, the value SpamBayes tuned on large corpora). A
   token never seen has f = x and tells nothing.
3. Only tokens with ``|f(w) - 0.5| >= min_strength`` (0.1) count, the
   ``max_clues`` (150) farthest from 0.5.
4. Fisher's inverse chi-square combining (R. A. Fisher, "Statistical
   Methods for Research Workers"), as Robinson proposed: with C the
   chi-square survival function on 2n degrees of freedom,
   ``S = 1 - C(-2 ln prod(1 - f), 2n)`` (evidence of spam),
   ``H = 1 - C(-2 ln prod(f), 2n)`` (evidence of ham), and the score
   ``I = (1 + S - H) / 2``: near 1 for spam, near 0 for ham, and near 0.5
   when there is no evidence or strong evidence both ways (the unsure
   middle, which the default threshold of 0.9 keeps out of Junk).

Counting is per message (a token repeated 50 times counts once), which
makes word stuffing useless. Everything here is pure arithmetic on counts:
the store supplies them (``estafeta.spam.store``), the tokenizer the tokens
(``estafeta.spam.tokens``). Cost: O(tokens log tokens) per message, at most
``MAX_TOKENS`` tokens and 150 clues.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.9
UNKNOWN_WORD_STRENGTH = 0.45  # s
UNKNOWN_WORD_PROB = 0.5  # x
MIN_STRENGTH = 0.1
MAX_CLUES = 150
MAX_SHOWN = 10  # tokens in a Verdict

_HEADER_TOKEN_CHARS = 64


@dataclass(frozen=True)
class Verdict:
    """What the junk filter says of one message for one account.

    ``spam`` is ``trained and score >= threshold``: an account with too little
    training is never filed into Junk, whatever the score.
    """

    score: float  # 0.0 (ham) .. 1.0 (spam)
    spam: bool
    tokens: tuple[tuple[str, float], ...]  # the most telling (token, f(w)), at most 10
    trained: bool
    threshold: float = DEFAULT_THRESHOLD

    def header_fields(self) -> list[tuple[str, str]]:
        """``X-Spam-Status``, ``X-Spam-Score`` and (if any) ``X-Spam-Tokens``:
        ASCII, one line each, safe to prepend to the message (tokens are
        %-encoded outside printable ASCII, each cut to 64 characters). The
        caller removes any ``X-Spam-*`` fields the sender put in first."""
        status = (
            f"{'Yes' if self.spam else 'No'}, score={self.score:.3f} "
            f"threshold={self.threshold:.3f} trained={'yes' if self.trained else 'no'}"
        )
        fields = [("X-Spam-Status", status), ("X-Spam-Score", f"{self.score:.3f}")]
        if self.tokens:
            shown = ", ".join(f"{header_token(t)}={p:.3f}" for t, p in self.tokens)
            fields.append(("X-Spam-Tokens", shown))
        return fields


def header_token(token: str) -> str:
    """``token`` as printable ASCII without ``,`` ``=`` ``%`` ``"``: other
    characters %-encoded as UTF-8 (rfc3986:2.1 style), at most 64 long."""
    out: list[str] = []
    size = 0
    for char in token:
        if "!" <= char <= "~" and char not in ',=%"':
            piece = char
        else:
            piece = "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))
        size += len(piece)
        if size > _HEADER_TOKEN_CHARS:
            break
        out.append(piece)
    return "".join(out)


def token_probability(
    spam: int,
    ham: int,
    nspam: int,
    nham: int,
    *,
    strength: float = UNKNOWN_WORD_STRENGTH,
    unknown: float = UNKNOWN_WORD_PROB,
) -> float:
    """Robinson's f(w) (steps 1 and 2 of the module docstring)."""
    n = spam + ham
    if n <= 0:
        return unknown
    spam_ratio = spam / max(nspam, 1)
    ham_ratio = ham / max(nham, 1)
    p = spam_ratio / (spam_ratio + ham_ratio) if spam_ratio + ham_ratio > 0 else unknown
    return (strength * unknown + n * p) / (strength + n)


def chi2q(x2: float, dof: int) -> float:
    """P(chi-square with ``dof`` (even) degrees of freedom >= ``x2``).

    For even dof the survival function is a finite sum (the Poisson
    cumulative distribution): with m = x2/2, sum over i < dof/2 of
    e^-m m^i / i!. Summed in log space so that large m does not underflow
    term by term.
    """
    if dof <= 0 or dof % 2:
        raise ValueError("dof must be even and positive")
    if x2 <= 0:
        return 1.0
    m = x2 / 2.0
    log_m = math.log(m)
    total = 0.0
    for i in range(dof // 2):
        total += math.exp(-m + i * log_m - math.lgamma(i + 1))
    return min(total, 1.0)


def combine(probabilities: list[float]) -> float:
    """Fisher/Robinson chi-square combining (step 4); 0.5 for no clues."""
    n = len(probabilities)
    if n == 0:
        return 0.5
    ln_f = 0.0
    ln_1f = 0.0
    for f in probabilities:
        f = min(max(f, 1e-9), 1 - 1e-9)
        ln_f += math.log(f)
        ln_1f += math.log1p(-f)
    spam = 1.0 - chi2q(-2.0 * ln_1f, 2 * n)
    ham = 1.0 - chi2q(-2.0 * ln_f, 2 * n)
    return (1.0 + spam - ham) / 2.0


def score(
    counts: Mapping[str, tuple[int, int]],
    nspam: int,
    nham: int,
    *,
    strength: float = UNKNOWN_WORD_STRENGTH,
    unknown: float = UNKNOWN_WORD_PROB,
    min_strength: float = MIN_STRENGTH,
    max_clues: int = MAX_CLUES,
) -> tuple[float, tuple[tuple[str, float], ...]]:
    """The score of a message whose tokens have ``counts`` (token -> (spam,
    ham) messages it was seen in; tokens never seen may be left out), and
    its clues, the most telling first (at most ``MAX_SHOWN``)."""
    clues: list[tuple[float, str, float]] = []
    for token, (spam, ham) in counts.items():
        f = token_probability(spam, ham, nspam, nham, strength=strength, unknown=unknown)
        distance = abs(f - 0.5)
        if distance >= min_strength:
            clues.append((distance, token, f))
    clues.sort(key=lambda c: (-c[0], c[1]))
    used = clues[: max(0, max_clues)]
    value = combine([f for _, _, f in used])
    return value, tuple((token, round(f, 4)) for _, token, f in used[:MAX_SHOWN])
