"""The password policy for account passwords: long enough and hard to guess.

``check_password`` refuses a password shorter than MIN_PASSWORD_LENGTH, one
that zxcvbn (Dropbox's estimator: common passwords, dictionary words, names,
keyboard patterns, dates, repeats, l33t substitutions) scores below
MIN_SCORE, and one built from the account's own address: what is left once
the address's parts are taken out must pass on its own.

Messages say what is wrong and what to do; they never contain the password
or a piece of it (zxcvbn's feedback texts are fixed sentences).

zxcvbn keeps the words of its last call in a module global, so calls are
serialised with a lock. It is imported on first use: it loads its word lists
then, and most ``estafeta`` commands never check a password.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

from estafeta.auth.accounts import AccountError

MIN_PASSWORD_LENGTH = 12
# zxcvbn scores 0-4; 3 = "safely unguessable", about 10^8 guesses or more
# (an offline attack on one argon2id hash needs far more than that).
MIN_SCORE = 3
# zxcvbn refuses longer input (its matching is super-linear); characters past
# this only add strength, so the start of a long password is what is scored.
MAX_SCORED_LENGTH = 72
_MIN_INPUT_LENGTH = 3  # shorter parts of an address are not worth removing

_ADVICE = "choose a longer one, e.g. four or more unrelated words"
_lock = threading.Lock()


def _score(password: str, user_inputs: list[str]) -> dict[str, Any]:
    from zxcvbn import zxcvbn  # type: ignore[import-untyped]

    with _lock:
        result: dict[str, Any] = zxcvbn(password[:MAX_SCORED_LENGTH], user_inputs=user_inputs)
    return result


def _parts(user_inputs: Iterable[str]) -> list[str]:
    """The inputs, lowercased, and their runs of letters and digits; longest first."""
    parts: set[str] = set()
    for value in user_inputs:
        lowered = value.lower()
        parts.add(lowered)
        parts.update(re.findall(r"[^\W_]+", lowered))
    return sorted((p for p in parts if len(p) >= _MIN_INPUT_LENGTH), key=lambda p: (-len(p), p))


def check_password(password: str, *, user_inputs: Iterable[str] = ()) -> None:
    """Raise AccountError unless ``password`` follows the policy.

    ``user_inputs`` are words an attacker would try first for this account
    (its local part, its domain): a password made of them is refused.
    """
    if not password:
        raise AccountError("empty password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"password too short: use at least {MIN_PASSWORD_LENGTH} characters, "
            "e.g. four or more unrelated words"
        )
    parts = _parts(user_inputs)
    # The address first: zxcvbn has no warning of its own for it.
    rest = password.lower()
    for part in parts:
        rest = rest.replace(part, "")
    # (zxcvbn fails on an empty string: nothing left is as weak as it gets.)
    if rest != password.lower() and (not rest or _score(rest, parts)["score"] < MIN_SCORE):
        raise AccountError(
            "password too easy to guess: it is built from the account's address. "
            f"Please {_ADVICE}, none of them from the address."
        )
    result = _score(password, parts)
    if result["score"] < MIN_SCORE:
        feedback = result["feedback"]
        warning = feedback["warning"] or "It is made of common words or patterns."
        reason = warning[:1].lower() + warning[1:].rstrip(".")
        hints = " ".join(feedback["suggestions"])
        raise AccountError(
            f"password too easy to guess: {reason}. "
            + (f"{hints} " if hints else "")
            + f"Please {_ADVICE}."
        )
