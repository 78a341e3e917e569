"""The layering `make lint` enforces (issue 15, acceptance 5): smtp/ reaches
the store and the queue only through delivery/, and arrows point down
(server/pyproject.toml, [tool.importlinter]).

Each case copies the server's source, changes one import, and runs the real
lint-imports on the copy: the unchanged tree passes, a forbidden import
fails and is named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "server" / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "server" / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(tree: Path, module: str, line: str) -> None:
    path = tree / "src" / "estafeta" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")


def test_the_tree_as_it_is_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "named"),
    [
        ("smtp/replies.py", "from estafeta.store import Store", "estafeta.store"),
        ("smtp/inbound.py", "import estafeta.queue.store", "estafeta.queue"),
        ("store/maildir.py", "from estafeta.delivery import route", "estafeta.delivery"),
        ("message/structure.py", "import estafeta.imap.fetch", "estafeta.imap"),
    ],
)
def test_an_import_against_the_layers_fails_lint(
    tree: Path, module: str, line: str, named: str
) -> None:
    add_import(tree, module, line)
    result = lint(tree)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    assert named in result.stdout
