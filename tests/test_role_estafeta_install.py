"""The estafeta role's installation (issue 19 §4 and the host side of §5), on the controller.

- the wheel fingerprint ignores zip timestamps;
- the manylinux platform tags of a host are those PEP 600 allows for its glibc;
- the lock (server/requirements.lock) pins every runtime dependency of
  server/pyproject.toml, with hashes for x86_64 and aarch64;
- build_wheelhouse.py on this x86_64 machine builds for an aarch64 host: the
  aarch64 wheels of the compiled dependencies (cryptography, argon2-cffi-
  bindings, cffi, PyNaCl, regex), each with a hash from the lock, the
  sdist-only packages as pure-Python wheels; two independent builds give the
  same fingerprint (reproducible), an older glibc gets older wheels, x86_64
  gets its own; a platform the lock does not cover is refused by name;
- the build directory is shared safely: builds of two source trees (two
  versions) at the same time, and of one of them twice, each get a
  wheelhouse of their own source that no other build changes; a second
  build of the same source reuses it without pip; pruning removes what was
  not used for the given days and nothing fresh, in use (locked) or just
  returned; a lock whose file pruning removed is taken anew;
- the role's install.yml on localhost (into a temporary directory): in check
  mode it changes nothing; a host
  with the single-venv layout of v0.1.0 gets the new release and a release
  made from its old wheelhouse, `current` moves to the new one, the SQLite
  databases are copied first (not the backup's own), the admin wrapper runs
  `current`, and a second run changes nothing.

The builds download from PyPI (the lock's files only); the dependency
wheels are cached in .cache/test-wheelhouse between runs.
"""

from __future__ import annotations

import getpass
import grp
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.test_roles import changed_tasks, failures, run_playbook

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "roles" / "estafeta" / "files"
LOCK = ROOT / "server" / "requirements.lock"
CACHE = ROOT / ".cache" / "test-wheelhouse"
# One xdist worker runs this module: its tests share CACHE.
pytestmark = pytest.mark.xdist_group("wheelhouse")
COMPILED = ("cryptography", "argon2_cffi_bindings", "cffi", "pynacl", "regex")


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, FILES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_wheelhouse = load("build_wheelhouse")


def read_lock() -> dict[str, tuple[str, set[str]]]:
    """{name: (version, sha256 hashes)} of the lock."""
    text = LOCK.read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement, *hashes = line.split()
        name, version = requirement.split("==")
        assert all(h.startswith("--hash=sha256:") for h in hashes), line
        pins[canonicalize_name(name)] = (version, {h.split(":", 1)[1] for h in hashes})
    return pins


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the fingerprint and the platform tags -------------------------------------------------------


def make_wheel(path: Path, date: tuple[int, int, int, int, int, int], body: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in [("pkg/__init__.py", body), ("pkg-1.0.dist-info/RECORD", b"")]:
            archive.writestr(zipfile.ZipInfo(name, date_time=date), data)


def test_wheel_fingerprint_ignores_timestamps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tmp_path / "a" / "pkg-1.0-py3-none-any.whl"
    second = tmp_path / "b" / "pkg-1.0-py3-none-any.whl"
    make_wheel(first, (2020, 1, 1, 0, 0, 0), b"x = 1\n")
    make_wheel(second, (2024, 6, 1, 12, 0, 0), b"x = 1\n")
    assert first.read_bytes() != second.read_bytes()
    assert build_wheelhouse.wheel_digest(first) == build_wheelhouse.wheel_digest(second)
    make_wheel(second, (2024, 6, 1, 12, 0, 0), b"x = 2\n")
    assert build_wheelhouse.wheel_digest(first) != build_wheelhouse.wheel_digest(second)


def test_manylinux_platforms_follow_the_glibc_of_the_host() -> None:
    arm = build_wheelhouse.manylinux_platforms("aarch64", (2, 28))
    assert arm[0] == "manylinux_2_28_aarch64" and arm[-1] == "manylinux2014_aarch64"
    assert "manylinux_2_17_aarch64" in arm and "manylinux_2_34_aarch64" not in arm
    assert not [p for p in arm if p.startswith(("manylinux1", "manylinux2010"))]
    intel = build_wheelhouse.manylinux_platforms("x86_64", (2, 36))
    assert intel[0] == "manylinux_2_36_x86_64"
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(intel)
    # Best first: a 2_34 wheel is preferred to a 2_17 one.
    assert intel.index("manylinux_2_34_x86_64") < intel.index("manylinux_2_17_x86_64")
    platforms = build_wheelhouse.manylinux_platforms("aarch64", (2, 36))
    fits = build_wheelhouse.fits
    assert fits("cryptography-50.0.2-cp311-abi3-manylinux_2_34_aarch64.whl", (3, 11), platforms)
    assert not fits("cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl", (3, 11), platforms)
    assert not fits("regex-1-cp312-cp312-manylinux_2_17_aarch64.whl", (3, 11), platforms)
    assert fits("six-1.17.0-py2.py3-none-any.whl", (3, 11), platforms)


# -- the lock --------------------------------------------------------------------------------


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    assert LOCK.read_text().startswith("# estafeta-lock: python=3.11 machines=x86_64,aarch64\n")
    pins = read_lock()
    project = tomllib.loads((ROOT / "server" / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in the lock"
        assert requirement.specifier.contains(pins[name][0]), (text, pins[name][0])
    for name, (_version, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    # Compiled packages have a wheel per machine at least.
    for name in ("cryptography", "cffi", "pynacl", "regex", "argon2-cffi-bindings"):
        assert len(pins[name][1]) >= 2, name


# -- builds for another platform -------------------------------------------------------------


def build(
    build_dir: Path, machine: str, glibc: str = "2.36", python: str = "3.11", keep_days: int = 0
) -> dict[str, Any]:
    result = build_wheelhouse.build(
        ROOT / "server", LOCK, build_dir, machine, python, glibc, [], keep_days=keep_days
    )
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Two independent builds for Debian 12 on aarch64 (glibc 2.36)."""
    return [build(tmp_path_factory.mktemp(f"build{n}"), "aarch64") for n in range(2)]


def test_an_aarch64_host_gets_aarch64_wheels_from_the_lock(aarch64: list[dict[str, Any]]) -> None:
    house = Path(aarch64[0]["wheelhouse"])
    assert aarch64[0]["platform"] == "cp311-manylinux_2_36_aarch64"
    pins = read_lock()
    wheels = sorted(house.glob("*.whl"))
    names = {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in wheels}
    assert set(names) == set(pins) | {"estafeta"}
    for name in COMPILED:
        wheel = names[canonicalize_name(name)]
        platforms = {tag.platform for tag in parse_wheel_filename(wheel.name)[3]}
        assert all(p.endswith("_aarch64") for p in platforms), wheel.name
        assert sha256(wheel) in pins[canonicalize_name(name)][1], f"{wheel.name}: not locked"
    for name, wheel in names.items():
        version = str(parse_wheel_filename(wheel.name)[1])
        if name == "estafeta":
            continue
        assert version == pins[name][0], wheel.name
        if name in ("authres", "dkimpy"):
            # No wheel on PyPI: built from the locked sdist, pure Python.
            assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
        else:
            assert sha256(wheel) in pins[name][1], f"{wheel.name}: not the locked file"


def test_the_same_commit_builds_the_same_release(aarch64: list[dict[str, Any]]) -> None:
    first, second = aarch64
    assert first["wheelhouse"] != second["wheelhouse"]
    assert first["fingerprint"] == second["fingerprint"]
    assert first["wheels"] == second["wheels"]
    assert re.fullmatch(r"0\.\d+\.\d+.*-[0-9a-f]{12}", first["release"]), first["release"]
    assert first["release"] == f"{first['version']}-{first['fingerprint'][:12]}"


def test_an_older_glibc_and_another_machine_get_other_wheels() -> None:
    old = build(CACHE, "aarch64", glibc="2.28")
    (crypto,) = [w for w in old["wheels"] if w.startswith("cryptography-")]
    assert "manylinux_2_28_aarch64" in crypto and "2_34" not in crypto
    intel = build(CACHE, "x86_64")
    (crypto,) = [w for w in intel["wheels"] if w.startswith("cryptography-")]
    assert crypto.endswith("_x86_64.whl")
    assert intel["version"] == old["version"] and intel["fingerprint"] != old["fingerprint"]


@pytest.mark.parametrize(
    ("machine", "python", "named"),
    [("armv7l", "3.11", "armv7l"), ("aarch64", "3.13", "Python 3.13")],
)
def test_a_platform_the_lock_does_not_cover_is_refused(
    tmp_path: Path, machine: str, python: str, named: str
) -> None:
    with pytest.raises(SystemExit) as failed:
        build(tmp_path, machine, python=python)
    message = str(failed.value)
    assert named in message and "make lock" in message, message
    assert not list(tmp_path.iterdir()), "nothing is downloaded for a refused platform"


# -- a build directory shared by clones and plays that run at the same time ---------------------


INTEL = "cp311-manylinux_2_36_x86_64"
DAY = 86400


def seeded(build_dir: Path) -> Path:
    """``build_dir`` with the x86_64 dependencies of CACHE already in it (so
    that nothing is downloaded again); the path of that entry."""
    build(CACHE, "x86_64")
    name = f"deps-{hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]}"
    deps = build_dir / INTEL / name
    deps.parent.mkdir(parents=True)
    shutil.copytree(CACHE / INTEL / name, deps, copy_function=os.link)
    return deps


def make_source(path: Path, version: str) -> Path:
    """A copy of server/ (without its tests) whose estafeta is ``version``."""
    skip = shutil.ignore_patterns("tests", "__pycache__", ".*_cache", "build", "*.egg-info")
    shutil.copytree(ROOT / "server", path, ignore=skip)
    pyproject = path / "pyproject.toml"
    text, count = re.subn(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text())
    assert count == 1
    pyproject.write_text(text)
    return path


def estafeta_in(wheelhouse: Path) -> str:
    """The version of the one estafeta wheel of ``wheelhouse``, from its metadata."""
    (wheel,) = wheelhouse.glob("estafeta-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        (version,) = re.findall(r"(?m)^Version: (\S+)$", archive.read(metadata).decode())
    return str(version)


def run_script(source: Path, build_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """build_wheelhouse.py started as the role starts it (not waited for)."""
    return subprocess.Popen(
        [
            *(sys.executable, str(FILES / "build_wheelhouse.py"), "--source", str(source)),
            *("--lock", str(LOCK), "--build-dir", str(build_dir), "--machine", "x86_64"),
            *("--python", "3.11", "--glibc", "2.36", *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    result = json.loads(stdout)
    assert isinstance(result, dict)
    return result


def test_concurrent_builds_of_two_sources_each_keep_their_own_wheelhouse(tmp_path: Path) -> None:
    build_dir = tmp_path / "build"
    seeded(build_dir)
    old = make_source(tmp_path / "old" / "server", "9.0.1")
    new = make_source(tmp_path / "new" / "server", "9.0.2")
    # Two clones at once, and the first one twice (a second play of it).
    processes = [run_script(source, build_dir) for source in (old, new, old)]
    first, other, again = [finished(process) for process in processes]

    assert (first["version"], other["version"], again["version"]) == ("9.0.1", "9.0.2", "9.0.1")
    assert first == again
    assert first["wheelhouse"] != other["wheelhouse"]
    assert first["fingerprint"] != other["fingerprint"]
    for result in (first, other):
        house = Path(result["wheelhouse"])
        assert estafeta_in(house) == result["version"]
        assert sorted(w.name for w in house.glob("*.whl")) == result["wheels"]
    # Both were built from the same dependencies (the seeded ones: nothing else).
    assert [w for w in first["wheels"] if not w.startswith("estafeta-")] == [
        w for w in other["wheels"] if not w.startswith("estafeta-")
    ]
    assert len(list((build_dir / INTEL).glob("deps-*[0-9a-f]"))) == 1

    # The first result stays as it was when another source is built again.
    before = {w.name: w.stat().st_ino for w in Path(first["wheelhouse"]).iterdir()}
    assert finished(run_script(new, build_dir)) == other
    after = {w.name: w.stat().st_ino for w in Path(first["wheelhouse"]).iterdir()}
    assert after == before and estafeta_in(Path(first["wheelhouse"])) == "9.0.1"
    assert not list(build_dir.rglob(".tmp-*")) and not list(build_dir.rglob(".trash-*"))


def test_a_second_build_of_the_same_source_reuses_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_dir = tmp_path / "build"
    seeded(build_dir)
    first = build(build_dir, "x86_64")
    house = Path(first["wheelhouse"])
    assert house.parent == build_dir / INTEL
    files = {w.name: (w.stat().st_ino, w.stat().st_mtime_ns) for w in house.iterdir()}
    long_ago = house.stat().st_mtime - 10 * DAY
    os.utime(house, (long_ago, long_ago))

    def no_pip(*args: str, extra: list[str] | None = None) -> None:
        raise AssertionError(f"pip {args} ran for a source that was built already")

    monkeypatch.setattr(build_wheelhouse, "pip", no_pip)
    assert build(build_dir, "x86_64") == first
    assert {w.name: (w.stat().st_ino, w.stat().st_mtime_ns) for w in house.iterdir()} == files
    # The reuse counts as a use: pruning measures from it.
    assert house.stat().st_mtime > long_ago


def aged(path: Path, days: float) -> Path:
    """``path`` (made as a directory unless it exists) last used ``days`` ago."""
    if not path.exists():
        path.mkdir(parents=True)
    stamp = path.stat().st_mtime - days * DAY
    os.utime(path, (stamp, stamp))
    return path


def test_pruning_removes_only_what_was_not_used_for_the_given_days(tmp_path: Path) -> None:
    build_dir = tmp_path / "build"
    deps = seeded(build_dir)
    result = build(build_dir, "x86_64")
    house = Path(result["wheelhouse"])
    (ours,) = build_dir.glob("estafeta-*[0-9a-f]")
    platform = build_dir / INTEL
    # This source's entries are old too: the build that returns them uses them.
    for path in (house, ours, deps):
        aged(path, 40)
    stale = [
        aged(build_dir / f"estafeta-{'1' * 16}", 40),
        aged(platform / f"wheelhouse-{'2' * 16}-{'3' * 16}", 40),
        aged(platform / f"deps-{'4' * 16}", 40),
        aged(platform / "wheelhouse", 40),  # the layout before this one
        aged(platform / ".tmp-wheelhouse-dead", 40),  # a run that died
        aged(platform / ".trash-x", 0),
    ]
    orphan = platform / f"deps-{'5' * 16}.lock"
    orphan.touch()
    aged(orphan, 40)
    fresh = aged(platform / f"wheelhouse-{'6' * 16}-{'7' * 16}", 29)
    working = aged(platform / ".tmp-deps-running", 0)
    unknown = aged(build_dir / "notes", 400)
    in_use = aged(platform / f"wheelhouse-{'8' * 16}-{'9' * 16}", 40)
    held = build_wheelhouse.take_lock(in_use, wait=False)
    assert held is not None
    try:
        assert build(build_dir, "x86_64", keep_days=30) == result
    finally:
        os.close(held)

    assert [p for p in stale if p.exists()] == []
    assert (
        not orphan.exists() and not (platform / f"wheelhouse-{'2' * 16}-{'3' * 16}.lock").exists()
    )
    for path in (house, ours, deps, fresh, working, unknown, in_use):
        assert path.is_dir(), path
    assert sorted(w.name for w in house.glob("*.whl")) == result["wheels"]
    assert estafeta_in(house) == result["version"]
    # 0 keeps everything.
    assert build_wheelhouse.prune(build_dir, 0, set(), now=house.stat().st_mtime + 1000 * DAY) == []
    assert fresh.is_dir() and in_use.is_dir()


def test_a_lock_whose_file_pruning_removed_is_taken_anew(tmp_path: Path) -> None:
    entry = tmp_path / "deps-0123456789abcdef"
    lock = tmp_path / "deps-0123456789abcdef.lock"
    pruner = build_wheelhouse.take_lock(entry)
    assert pruner is not None
    got, done = threading.Event(), threading.Event()

    def waiter() -> None:
        with build_wheelhouse.locked(entry):
            got.set()
            done.wait(60)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        # As prune_entry does: remove the lock file while holding it, release.
        lock.unlink()
        os.close(pruner)
        assert got.wait(60), "the waiter never got the lock"
        # It holds the lock of the file that now has the name, not of the removed one.
        assert lock.exists()
        assert build_wheelhouse.take_lock(entry, wait=False) is None
    finally:
        done.set()
        thread.join()
    again = build_wheelhouse.take_lock(entry, wait=False)
    assert again is not None
    os.close(again)


# -- the role on localhost: migration from v0.1.0, a second run, the snapshot ------------------


INSTALL = """
- name: Install estafeta into a temporary directory
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Install with the role's own task file
      ansible.builtin.include_role:
        name: estafeta
        tasks_from: install.yml
    - name: Show the facts of the installation
      ansible.builtin.debug:
        msg:
          release: "{{ estafeta__release }}"
          previous: "{{ estafeta__previous_release | default('') }}"
"""


def make_single_venv(opt: Path, wheelhouse: Path, fingerprint: str) -> None:
    """The layout v0.1.0 installed: one virtualenv at opt, its wheelhouse inside."""
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(opt)], check=True)
    shutil.copytree(wheelhouse, opt / "wheelhouse")
    subprocess.run(
        [
            *(opt / "bin" / "pip", "install", "--quiet", "--no-index"),
            *("--disable-pip-version-check", "--find-links", str(opt / "wheelhouse"), "estafeta"),
        ],
        check=True,
    )
    (opt / ".wheelhouse-fingerprint").write_text(fingerprint + "\n")


def make_data(data: Path) -> None:
    """accounts.db and an index.db with a row each, and the backup's own cache."""
    for path, table in [
        (data / "accounts.db", "accounts"),
        (data / "mail" / "example.test" / "alice" / "index.db", "messages"),
        (data / "backup" / "cache.db", "cache"),
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"CREATE TABLE {table} (value TEXT)")
            conn.execute(f"INSERT INTO {table} VALUES (?)", (f"{path.name} of alice",))  # noqa: S608
        conn.close()


def shown(output: dict[str, Any]) -> dict[str, str]:
    for play in output["plays"]:
        for task in play["tasks"]:
            if task["task"]["name"] == "Show the facts of the installation":
                return dict(task["hosts"]["localhost"]["msg"])
    raise AssertionError("no facts shown")


def test_install_migrates_the_single_venv_layout_and_changes_nothing_twice(
    tmp_path: Path,
) -> None:
    opt, data = tmp_path / "opt", tmp_path / "data"
    intel = build(CACHE, "x86_64")
    make_single_venv(opt, Path(intel["wheelhouse"]), "0" * 64)
    make_data(data)
    (tmp_path / "estafeta.toml").write_text(
        f'hostname = "mx.example.test"\ndata_dir = "{data}"\ndomains = ["example.test"]\n'
    )
    variables = {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "estafeta__source_dir": str(ROOT / "server"),
        "estafeta__wheelhouse_build_dir": str(CACHE),
        "estafeta__install_dir": str(opt),
        "estafeta__data_dir": str(data),
        "estafeta__admin_command": str(tmp_path / "estafeta-admin"),
        "estafeta__config_path": str(tmp_path / "estafeta.toml"),
        "estafeta__user": getpass.getuser(),
        "estafeta__group": grp.getgrgid(os.getgid()).gr_name,
        "estafeta__service_state": "stopped",
        # The legacy layout has this tree's version: snapshot on any release change.
        "estafeta__snapshot_before_upgrade": "release",
    }
    args = ["-i", "localhost,"]
    # Check mode first: it says what would change and changes nothing.
    old_layout = sorted(p.name for p in opt.iterdir())
    assert {"bin", "lib", "pyvenv.cfg", "wheelhouse", ".wheelhouse-fingerprint"} <= set(old_layout)
    rc, output, stderr = run_playbook(INSTALL, tmp_path, *args, "--check", extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert "localhost: estafeta : Switch the current link to the release" in changed_tasks(output)
    assert sorted(p.name for p in opt.iterdir()) == old_layout
    assert not (data / "pre-upgrade").exists()

    rc, output, stderr = run_playbook(INSTALL, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    facts = shown(output)
    legacy = f"{intel['version']}-{'0' * 12}"
    assert facts == {"release": intel["release"], "previous": legacy}

    # Both releases are whole virtualenvs; current is the new one.
    for release in (intel["release"], legacy):
        marker = opt / "releases" / release / ".estafeta-release"
        assert marker.is_file(), release
        estafeta = opt / "releases" / release / "bin" / "estafeta"
        assert subprocess.run([estafeta, "--help"], capture_output=True).returncode == 0
    marker = json.loads((opt / "releases" / intel["release"] / ".estafeta-release").read_text())
    assert marker["fingerprint"] == intel["fingerprint"]
    assert os.readlink(opt / "current") == f"releases/{intel['release']}"
    assert not (opt / "incoming").exists()
    wrapper = (tmp_path / "estafeta-admin").read_text()
    assert f"{opt}/current/bin/estafeta" in wrapper

    # The snapshot: every database under data_dir but the backup's own, as it was.
    snapshot = data / "pre-upgrade" / legacy
    copies = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*.db"))
    assert copies == ["accounts.db", "mail/example.test/alice/index.db"]
    with sqlite3.connect(snapshot / "mail" / "example.test" / "alice" / "index.db") as conn:
        assert conn.execute("SELECT value FROM messages").fetchall() == [("index.db of alice",)]
    conn.close()
    assert (snapshot.stat().st_mode & 0o777) == 0o700

    # A second run changes nothing (the old layout's files are removed by
    # service.yml, which is not run here).
    rc, output, stderr = run_playbook(INSTALL, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []
    assert shown(output)["previous"] == ""


def test_install_fails_clearly_without_a_source(tmp_path: Path) -> None:
    variables = {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "estafeta__install_dir": str(tmp_path / "opt"),
    }
    rc, output, _ = run_playbook(INSTALL, tmp_path, "-i", "localhost,", extra_vars=variables)
    assert rc != 0
    assert "estafeta__source_dir is not set" in failures(output)
    assert not (tmp_path / "opt").exists()
