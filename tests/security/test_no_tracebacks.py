"""The battery's own check that no server logged a traceback (issue 14,
acceptance 3) sees one when there is one.

Every test of tests/security is followed by ``no_traceback_in_server_logs``
(conftest.py): the log of every server started by the module is read from
where the last check stopped. This positive control feeds it a log with a
traceback and a log without.
"""

from __future__ import annotations

from pathlib import Path

from tests.security import conftest
from tests.security.conftest import STARTED, Instance


def test_the_check_finds_a_traceback_once(tmp_path: Path) -> None:
    clean = Instance(tmp_path / "clean", 0)
    broken = Instance(tmp_path / "broken", 0)
    for instance in (clean, broken):
        instance.root.mkdir()
    clean.log_path.write_text("info smtp session client=127.0.0.1\n")
    broken.log_path.write_text(
        "info imap login\n"
        "error internal error in IMAP FETCH\n"
        "Traceback (most recent call last):\n"
        '  File "fetch.py", line 1, in render\n'
        "ValueError: boom\n"
    )
    STARTED.extend([clean, broken])
    try:
        found = conftest._tracebacks_since_last_check()
        assert len(found) == 1
        assert str(broken.log_path) in found[0] and "ValueError: boom" in found[0]
        # Read up to where it stopped: the same traceback is not reported twice,
        # a new one is.
        assert conftest._tracebacks_since_last_check() == []
        with clean.log_path.open("a") as log:
            log.write("Traceback (most recent call last):\nOSError: later\n")
        [again] = conftest._tracebacks_since_last_check()
        assert "OSError: later" in again
    finally:
        for instance in (clean, broken):
            STARTED.remove(instance)
