"""Property tests of address normalisation (estafeta.address).

Any text gives AddressError or a canonical address that is a fixed point of
``normalize_address``, splits back into itself with ``split_address``, has a
canonical lower-case ASCII domain and fits rfc5321's limits. The same for
``normalize_domain``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import _fuzz
from _fuzz import check_address, check_domain
from estafeta.address import AddressError, normalize_address

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"

unicode_char = st.characters(min_codepoint=0x80, exclude_categories=("Cs",))
atom = st.text(st.one_of(st.sampled_from(ATEXT), unicode_char), min_size=1, max_size=12)
dot_string = st.lists(atom, min_size=1, max_size=4).map(".".join)
quoted = st.text(
    st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E), unicode_char), max_size=20
).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
label = st.text(
    st.one_of(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"),
              unicode_char),
    min_size=1,
    max_size=20,
)  # fmt: skip
domain = st.lists(label, min_size=1, max_size=4).map(".".join) | st.sampled_from(
    ["example.test", "xn--bcher-kva.test", "EXAMPLE.TEST.", "例え.テスト", "a。b．c"]
)
address = st.tuples(dot_string | quoted, domain).map("@".join)


@given(st.text(max_size=80))
def test_any_text(text: str) -> None:
    check_address(text)
    check_domain(text)


@given(address)
def test_near_valid_addresses(text: str) -> None:
    check_address(text)
    check_domain(text.rpartition("@")[2])


@given(st.randoms(use_true_random=False))
def test_random_mutations(rng: Any) -> None:
    text = _fuzz.random_address(rng)
    check_address(text)
    check_domain(text.rpartition("@")[2])


ascii_atom = st.text(st.sampled_from(ATEXT), min_size=1, max_size=10)
ascii_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)


@given(st.lists(ascii_atom, min_size=1, max_size=3), st.lists(ascii_label, min_size=1, max_size=3))
def test_ascii_case_does_not_matter(atoms: list[str], labels: list[str]) -> None:
    text = ".".join(atoms) + "@" + ".".join(labels)
    try:
        canonical = normalize_address(text)
    except AddressError:
        return  # too long, or a label like "ab--cd" that IDNA refuses
    assert normalize_address(text.upper()) == canonical == normalize_address(text.lower())
    assert check_address(text) == canonical
