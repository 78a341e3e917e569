"""delivery.filters.SieveFilter: where a run happens.

Scripts that need no IO run on the event loop within the inline budget;
a script that does IO, a large message, or a run past the budget goes to
a worker thread -- with the same verdict either way."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from estafeta import sieve
from estafeta.delivery import filters
from estafeta.delivery.filters import Action, Item, Keep, Reply, SieveFilter
from estafeta.sieve.memory import Memory

ACCOUNT = "me@example.org"
REQUIRE = 'require ["fileinto", "imap4flags"];\n'


def rules(count: int, last: str = "", require: str = REQUIRE) -> str:
    return (
        require
        + "".join(
            f'if header :contains "subject" "nothing-{n}" {{ fileinto "r{n}"; }}\n'
            for n in range(count)
        )
        + last
    )


def message(subject: str, size: int = 0) -> bytes:
    body = b"x" * 76 + b"\r\n"
    return (
        f"From: Sender <sender@remote.test>\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <1@remote.test>\r\n\r\n"
    ).encode() + body * (size // 78)


class Threads:
    """Counts the runs handed to a worker thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = asyncio.to_thread

        async def to_thread(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await real(fn, *args, **kwargs)

        monkeypatch.setattr(filters.asyncio, "to_thread", to_thread)


def verdict(tmp_path: Path, script: str, data: bytes) -> Sequence[Action]:
    compiled = sieve.compile_script(script)
    chain = SieveFilter(
        scripts_for=lambda account: [compiled],
        limits=sieve.Limits(),
        memory=Memory(tmp_path / "memory.db"),
        hostname="mx.example.org",
        addresses_of=lambda account: [account],
    )
    item = Item(account=ACCOUNT, sender="sender@remote.test", recipient=ACCOUNT, message=data)
    return asyncio.run(chain.apply(item, [Keep()]))


def test_header_rules_run_on_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = Threads(monkeypatch)
    script = rules(
        50, 'if header :contains "subject" "invoice" { fileinto :flags "\\\\Flagged" "Bills"; }\n'
    )
    assert verdict(tmp_path, script, message("invoice 7")) == [Keep("Bills", ("\\Flagged",))]
    assert verdict(tmp_path, script, message("hello")) == [Keep()]
    assert threads.calls == 0


@pytest.mark.parametrize(
    ("script", "size"),
    [
        (rules(600), 0),  # past the inline step budget
        (rules(3), filters.INLINE_MESSAGE + 1000),  # a large message
        (
            rules(3, 'vacation :days 1 "Away.";\n', 'require ["fileinto", "vacation"];\n'),
            0,
        ),  # vacation reads the account's addresses
    ],
    ids=["many-rules", "large-message", "vacation"],
)
def test_other_runs_go_to_a_worker_with_the_same_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, size: int
) -> None:
    data = message("hello", size)
    inline = sieve.run(
        [sieve.compile_script(script)],
        sieve.Context(message=data, envelope=sieve.Envelope("sender@remote.test", ACCOUNT),
                      account=ACCOUNT, addresses=(ACCOUNT,)),
    )  # fmt: skip
    threads = Threads(monkeypatch)
    found = verdict(tmp_path, script, data)
    assert threads.calls == 1
    assert len(found) == len(inline.actions)
    if "vacation" in script:
        assert [type(a) for a in found] == [Reply, Keep]
    else:
        assert found == [Keep()]
