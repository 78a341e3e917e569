"""The SORT/THREAD answer cache (estafeta.imap.resultcache): bounded, LRU,
keyed by the view's UIDs."""

from __future__ import annotations

from array import array

from estafeta.imap.resultcache import ResultCache, view_digest


def test_a_view_that_gained_or_lost_a_message_has_another_digest() -> None:
    base = view_digest([1, 2, 3])
    assert view_digest([1, 2, 3]) == base
    assert view_digest([1, 2, 3, 4]) != base  # a message arrived
    assert view_digest([1, 3]) != base  # one was expunged
    assert view_digest([]) != base


def test_answers_are_kept_until_the_budget_is_used_least_recently_used_first() -> None:
    cache = ResultCache(budget=100, largest=60)
    cache.put("a", b"x" * 40)
    cache.put("b", array("I", range(10)))  # 40 bytes
    assert cache.get("a") == b"x" * 40  # "b" is now the least recently used
    cache.put("c", b"z" * 40)
    assert cache.get("b") is None
    assert cache.get("a") == b"x" * 40
    assert cache.get("c") == b"z" * 40
    assert cache.used() == 80


def test_an_answer_larger_than_the_largest_is_not_kept() -> None:
    cache = ResultCache(budget=1000, largest=60)
    cache.put("big", b"x" * 61)
    assert cache.get("big") is None
    assert cache.used() == 0


def test_putting_a_key_again_replaces_its_size() -> None:
    cache = ResultCache(budget=100, largest=100)
    cache.put("a", b"x" * 50)
    cache.put("a", b"y" * 20)
    assert cache.get("a") == b"y" * 20
    assert cache.used() == 20
