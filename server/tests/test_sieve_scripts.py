"""sieve.scripts.ScriptStore: the per-account script files, their limits
and their crash ordering. The compiler is a stand-in (a script containing
"error" fails at the position of that word), so these tests hold whatever
the interpreter does."""

from __future__ import annotations

import logging
import os
import threading
import unicodedata
from pathlib import Path

import pytest

from estafeta.sieve import scripts as scripts_module
from estafeta.sieve.errors import SieveError
from estafeta.sieve.scripts import ScriptError, ScriptStore

ALICE = "alice@example.test"
BOB = "bob@example.test"


class FakeCompiled:
    def __init__(self, text: str) -> None:
        self.text = text


class FakeCompiler:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> FakeCompiled:
        self.calls += 1
        at = text.find("error")
        if at >= 0:
            line = text.count("\n", 0, at) + 1
            column = at - (text.rfind("\n", 0, at) + 1) + 1
            raise SieveError(line, column, "syntax error")
        return FakeCompiled(text)


@pytest.fixture
def compiler() -> FakeCompiler:
    return FakeCompiler()


@pytest.fixture
def store(tmp_path: Path, compiler: FakeCompiler) -> ScriptStore:
    return ScriptStore(
        tmp_path / "sieve",
        max_script_size=100,
        max_scripts=3,
        compile=compiler,  # type: ignore[arg-type]
    )


def code_of(call: object) -> str:
    assert callable(call)
    with pytest.raises(ScriptError) as info:
        call()
    return info.value.code


def account_dir(store: ScriptStore, address: str = ALICE) -> Path:
    local, domain = address.split("@")
    return store.root / domain / local


def test_put_get_list_and_the_layout(store: ScriptStore) -> None:
    assert store.list(ALICE) == []
    assert store.put(ALICE, "rules", "keep;\r\n") is True
    assert store.put(ALICE, "rules", "keep;\r\n") is False  # unchanged
    assert store.get(ALICE, "rules") == "keep;\r\n"
    assert store.put(ALICE, "rules", "discard;\n") is True
    assert store.put(ALICE, "another", "keep;") is True
    assert store.list(ALICE) == [("another", False), ("rules", False)]
    assert store.list(BOB) == []
    directory = account_dir(store)
    assert (directory / "rules.sieve").read_bytes() == b"discard;\n"
    assert sorted(p.name for p in directory.iterdir()) == [
        ".lock",
        "another.sieve",
        "rules.sieve",
    ]
    assert (directory / "rules.sieve").stat().st_mode & 0o777 == 0o600


def test_text_is_stored_byte_for_byte(store: ScriptStore) -> None:
    text = 'require "fileinto";\r\n# Ünïcødé\r\nfileinto "Entwürfe";'
    store.put(ALICE, "u", text)
    assert (account_dir(store) / "u.sieve").read_bytes() == text.encode()
    assert store.get(ALICE, "u") == text


def test_activate_and_deactivate(store: ScriptStore) -> None:
    store.put(ALICE, "a", "keep;")
    store.put(ALICE, "b", "keep;")
    assert store.active(ALICE) is None
    assert store.activate(ALICE, "a") is True
    assert store.activate(ALICE, "a") is False
    assert (account_dir(store) / "active").read_text() == "a"
    assert store.list(ALICE) == [("a", True), ("b", False)]
    assert store.active(ALICE) == ("a", "keep;")
    assert store.activate(ALICE, "b") is True
    assert store.list(ALICE) == [("a", False), ("b", True)]
    assert store.activate(ALICE, None) is True
    assert store.activate(ALICE, "") is False  # rfc5804:2.8: not an error
    assert not (account_dir(store) / "active").exists()
    assert store.list(ALICE) == [("a", False), ("b", False)]
    assert code_of(lambda: store.activate(ALICE, "missing")) == "NONEXISTENT"
    assert code_of(lambda: store.activate(BOB, "a")) == "NONEXISTENT"
    assert store.activate(BOB, None) is False


def test_activate_refuses_a_script_that_no_longer_compiles(store: ScriptStore) -> None:
    store.put(ALICE, "a", "keep;")
    # Changed behind our back (an upgrade that dropped an extension, say).
    (account_dir(store) / "a.sieve").write_text("keep;\nerror;")
    with pytest.raises(ScriptError) as info:
        store.activate(ALICE, "a")
    assert (info.value.code, info.value.message) == ("SYNTAX", "2:1: syntax error")
    assert store.active(ALICE) is None


def test_delete(store: ScriptStore) -> None:
    store.put(ALICE, "a", "keep;")
    store.put(ALICE, "b", "keep;")
    store.activate(ALICE, "a")
    assert code_of(lambda: store.delete(ALICE, "a")) == "ACTIVE"
    assert code_of(lambda: store.delete(ALICE, "zzz")) == "NONEXISTENT"
    assert code_of(lambda: store.delete(BOB, "a")) == "NONEXISTENT"
    store.delete(ALICE, "b")
    assert store.list(ALICE) == [("a", True)]
    assert code_of(lambda: store.get(ALICE, "b")) == "NONEXISTENT"


def test_rename(store: ScriptStore) -> None:
    store.put(ALICE, "a", "keep;")
    store.put(ALICE, "b", "discard;")
    store.activate(ALICE, "a")
    assert code_of(lambda: store.rename(ALICE, "a", "b")) == "ALREADYEXISTS"
    assert code_of(lambda: store.rename(ALICE, "a", "a")) == "ALREADYEXISTS"
    assert code_of(lambda: store.rename(ALICE, "x", "y")) == "NONEXISTENT"
    assert code_of(lambda: store.rename(BOB, "x", "y")) == "NONEXISTENT"
    # rfc5804:2.11: the renamed active script stays active.
    store.rename(ALICE, "a", "c")
    assert store.list(ALICE) == [("b", False), ("c", True)]
    assert store.get(ALICE, "c") == "keep;"
    assert (account_dir(store) / "active").read_text() == "c"
    store.rename(ALICE, "b", "d")
    assert store.list(ALICE) == [("c", True), ("d", False)]
    assert store.get(ALICE, "d") == "discard;"


def test_size_and_count_limits(store: ScriptStore) -> None:
    assert code_of(lambda: store.put(ALICE, "big", "#" * 101)) == "QUOTA/MAXSIZE"
    # Octets count, not characters: 50 "é" are 100 octets, 51 are 102.
    store.put(ALICE, "e", "é" * 50)
    assert code_of(lambda: store.put(ALICE, "e", "é" * 51)) == "QUOTA/MAXSIZE"
    store.put(ALICE, "two", "keep;")
    store.put(ALICE, "three", "keep;")
    assert code_of(lambda: store.put(ALICE, "four", "keep;")) == "QUOTA/MAXSCRIPTS"
    assert store.put(ALICE, "three", "discard;") is True  # replacing is fine
    store.have_space(ALICE, "three", 100)
    assert code_of(lambda: store.have_space(ALICE, "three", 101)) == "QUOTA/MAXSIZE"
    assert code_of(lambda: store.have_space(ALICE, "four", 1)) == "QUOTA/MAXSCRIPTS"
    store.have_space(BOB, "four", 100)
    assert code_of(lambda: store.have_space(BOB, "", 1)) == "INVALID"
    assert [name for name, _ in store.list(ALICE)] == ["e", "three", "two"]


def test_refused_scripts_store_nothing(store: ScriptStore) -> None:
    store.put(ALICE, "a", "keep;")
    with pytest.raises(ScriptError) as info:
        store.put(ALICE, "a", "keep;\n  error;\n")
    assert (info.value.code, info.value.message) == ("SYNTAX", "2:3: syntax error")
    with pytest.raises(ScriptError) as info:
        store.put(ALICE, "a", "# ok\nx\udcffy")
    assert (info.value.code, info.value.message) == ("SYNTAX", "2:2: not valid UTF-8")
    assert code_of(lambda: store.put(ALICE, "a", "")) == "INVALID"  # rfc5804:2.6
    assert code_of(lambda: store.put(ALICE, "b", "error")) == "SYNTAX"
    assert store.get(ALICE, "a") == "keep;"
    assert store.list(ALICE) == [("a", False)]
    assert code_of(lambda: store.check("\nerror")) == "SYNTAX"
    assert isinstance(store.check("keep;"), FakeCompiled)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 129,
        "tab\there",
        "nul\x00",
        "del\x7f",
        "c1\x85",
        "line\u2028sep",
        "para\u2029sep",
        "surrogate\udcff",
    ],
)
def test_illegal_names(store: ScriptStore, name: str) -> None:
    assert code_of(lambda: store.put(ALICE, name, "keep;")) == "INVALID"
    assert code_of(lambda: store.get(ALICE, name)) == "INVALID"
    assert store.list(ALICE) == []


@pytest.mark.parametrize(
    "name",
    [
        "a" * 128,
        "é" * 128,  # 256 octets in UTF-8: hashed on disk
        "\U0001f600" * 128,  # 512 octets
        "../../etc/passwd",
        ".hidden",
        "..",
        ".",
        "active",
        ".lock",
        "100% sure",
        "%41",
        "%%x",
        "with space and \"quotes\" and 'more'",
        "a/b/c",
        "x.sieve",
        "x.name",
        "Ünïcødé 日本語",
    ],
)
def test_any_legal_name_round_trips(store: ScriptStore, name: str) -> None:
    store.put(ALICE, name, "keep;")
    store.put(ALICE, "other", "keep;")
    assert store.list(ALICE) == sorted([(name, False), ("other", False)])
    assert store.get(ALICE, name) == "keep;"
    assert store.activate(ALICE, name) is True
    assert store.list(ALICE) == sorted([(name, True), ("other", False)])
    store.rename(ALICE, name, "renamed")
    store.rename(ALICE, "renamed", name)
    assert store.active(ALICE) == (name, "keep;")
    store.activate(ALICE, None)
    store.delete(ALICE, name)
    assert store.list(ALICE) == [("other", False)]
    # Everything stays inside the account's directory, nothing is left over.
    directory = account_dir(store)
    assert sorted(os.listdir(directory)) == [".lock", "other.sieve"]
    assert sorted(os.listdir(store.root)) == ["example.test"]
    assert all(len(entry.encode()) <= 255 for entry in os.listdir(directory))


def test_names_are_nfc(store: ScriptStore) -> None:
    decomposed = unicodedata.normalize("NFD", "café")
    store.put(ALICE, decomposed, "keep;")
    assert store.list(ALICE) == [("café", False)]
    assert store.get(ALICE, "café") == "keep;"
    assert store.put(ALICE, "café", "keep;") is False
    assert len(store.list(ALICE)) == 1


def test_account_directories(store: ScriptStore) -> None:
    store.put('"odd.local"@example.test', "a", "keep;")
    store.put("a.b@example.test", "a", "keep;")
    assert (store.root / "example.test" / "a%2Eb" / "a.sieve").is_file()
    assert store.list("a.b@example.test") == [("a", False)]
    assert code_of(lambda: store.list("no-at-sign")) == "INVALID"


def test_reading_creates_nothing(store: ScriptStore) -> None:
    assert store.list(ALICE) == []
    assert store.active(ALICE) is None
    assert store.compiled(ALICE) is None
    assert code_of(lambda: store.get(ALICE, "a")) == "NONEXISTENT"
    store.have_space(ALICE, "a", 10)
    store.activate(ALICE, None)
    assert not store.root.exists()


def test_leftovers_of_a_crash(store: ScriptStore) -> None:
    store.put(ALICE, "a", "keep;")
    directory = account_dir(store)
    (directory / ".tmp-0123456789abcdef").write_bytes(b"half a scr")
    (directory / "%%deadbeef.name").write_text("orphan")  # its .sieve never came
    (directory / "stray.txt").write_text("not a script")
    (directory / "a%2eb.sieve").write_text("keep;")  # not what escape() writes
    assert store.list(ALICE) == [("a", False)]
    # "active" naming a script that is gone: no active script.
    (directory / "active").write_text("gone")
    assert store.active(ALICE) is None and store.compiled(ALICE) is None
    assert store.list(ALICE) == [("a", False)]
    # The next change removes the half-written file.
    store.put(ALICE, "b", "keep;")
    assert not (directory / ".tmp-0123456789abcdef").exists()


def test_a_failed_write_keeps_the_old_script(
    store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put(ALICE, "a", "keep;")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scripts_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        store.put(ALICE, "a", "discard;")
    with pytest.raises(OSError):
        store.put(ALICE, "b", "discard;")
    monkeypatch.undo()
    assert store.get(ALICE, "a") == "keep;"
    assert store.list(ALICE) == [("a", False)]
    assert sorted(os.listdir(account_dir(store))) == [".lock", "a.sieve"]


def test_rename_without_hard_links(store: ScriptStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put(ALICE, "a", "keep;")
    store.activate(ALICE, "a")

    def no_links(source: object, target: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(scripts_module.os, "link", no_links)
    store.rename(ALICE, "a", "b")
    assert store.list(ALICE) == [("b", True)]
    assert store.get(ALICE, "b") == "keep;"


def test_compiled_is_cached_per_file_version(
    store: ScriptStore, compiler: FakeCompiler, caplog: pytest.LogCaptureFixture
) -> None:
    assert store.compiled(ALICE) is None
    store.put(ALICE, "a", "keep;")
    store.activate(ALICE, "a")
    calls = compiler.calls
    first = store.compiled(ALICE)
    assert isinstance(first, FakeCompiled) and first.text == "keep;"
    assert store.compiled(ALICE) is first
    assert compiler.calls == calls + 1
    store.put(ALICE, "a", "discard;")
    calls = compiler.calls
    second = store.compiled(ALICE)
    assert isinstance(second, FakeCompiled) and second.text == "discard;"
    assert compiler.calls == calls + 1
    # A script that stopped compiling: None, logged once per version.
    (account_dir(store) / "a.sieve").write_text("error here")
    with caplog.at_level(logging.ERROR, logger="estafeta.sieve"):
        assert store.compiled(ALICE) is None
        assert store.compiled(ALICE) is None
    assert caplog.text.count("sieve_script_invalid") == 1
    store.activate(ALICE, None)
    assert store.compiled(ALICE) is None


class Loads:
    """Counts the times ``compiled`` reads the files again."""

    def __init__(self, store: ScriptStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = store._load

        def load(*args: object) -> object:
            self.count += 1
            return real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "_load", load)


def test_compiled_reads_nothing_while_the_files_are_unchanged(
    store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scripts_module, "SETTLED_NS", -(10**18))  # every file settled
    store.put(ALICE, "a", "keep;")
    store.activate(ALICE, "a")
    loads = Loads(store, monkeypatch)
    first = store.compiled(ALICE)
    assert store.compiled(ALICE) is first and store.compiled(ALICE) is first
    assert store.compiled(BOB) is None and store.compiled(BOB) is None
    assert loads.count == 2  # the first look at each account


def test_files_changed_behind_the_store_are_seen(
    store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scripts_module, "SETTLED_NS", -(10**18))
    store.put(ALICE, "one", "keep;")
    store.put(ALICE, "three", "discard;")
    store.activate(ALICE, "one")
    assert store.compiled(ALICE).text == "keep;"  # type: ignore[union-attr]
    directory = account_dir(store)
    # An editor writing the script in place (no rename: same inode).
    with open(directory / "one.sieve", "r+b") as stream:
        stream.write(b"stop; ")
    assert store.compiled(ALICE).text == "stop; "  # type: ignore[union-attr]
    # "active" rewritten in place by hand.
    with open(directory / "active", "r+b") as stream:
        stream.write(b"three")
    assert store.compiled(ALICE).text == "discard;"  # type: ignore[union-attr]
    (directory / "active").unlink()
    assert store.compiled(ALICE) is None


def test_a_file_changed_within_the_clock_tick_is_read_again(
    store: ScriptStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two writes of the same size within one tick of the file system's clock
    # leave the same stat (here: a clock that never ticks): a file that
    # changed lately is never trusted.
    monkeypatch.setattr(scripts_module, "_stat_key", lambda info: (info.st_ino, info.st_size))
    store.put(ALICE, "a", "keep;")
    store.activate(ALICE, "a")
    assert store.compiled(ALICE).text == "keep;"  # type: ignore[union-attr]
    with open(account_dir(store) / "a.sieve", "r+b") as stream:
        stream.write(b"stop;")
    assert store.compiled(ALICE).text == "stop;"  # type: ignore[union-attr]


def test_compile_defaults_to_the_interpreter(tmp_path: Path) -> None:
    # Without a compile callable, the store validates with estafeta.sieve.
    store = ScriptStore(tmp_path, max_script_size=1000, max_scripts=5)
    store.put(ALICE, "a", 'require "fileinto";\nfileinto "x";\n')
    with pytest.raises(ScriptError) as info:
        store.put(ALICE, "b", 'require "no-such-extension";\n')
    assert info.value.code == "SYNTAX"
    assert info.value.message.startswith("1:")


def test_concurrent_puts_respect_the_count(store: ScriptStore) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def put(n: int) -> None:
        try:
            store.put(ALICE, f"s{n}", "keep;")
            result = "ok"
        except ScriptError as exc:
            result = exc.code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=put, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["QUOTA/MAXSCRIPTS"] * 9 + ["ok"] * 3
    assert len(store.list(ALICE)) == 3
