#!/usr/bin/env python3
"""Build the ``estafeta.mail`` Ansible collection from this repository's tree.

The repository is not laid out as a collection: modules live in library/,
filters in filter_plugins/, shared module code in module_utils/ (imported as
``ansible.module_utils.estafeta``), and the roles call them by their short
names, which ansible.cfg makes work here and nowhere else. This script does
not move or rename anything in the tree. It stages a collection-shaped copy:

    galaxy.yml, README.md (docs/collection.md), LICENSE, CHANGELOG.md
    meta/runtime.yml            meta/runtime.yml of the tree, or one with requires_ansible
    roles/NAME                  every role except the lab_* ones
    plugins/modules/            library/*.py
    plugins/filter/             filter_plugins/*.py
    plugins/module_utils/       module_utils/*.py
    plugins/doc_fragments/      doc_fragments/*.py, if that directory exists

and rewrites the staged copy only:

- ``ansible.module_utils.NAME`` for our module_utils NAME becomes
  ``ansible_collections.estafeta.mail.plugins.module_utils.NAME``;
- a task key that is one of our modules (``estafeta_account:``) becomes
  ``estafeta.mail.estafeta_account:``, in role tasks and handlers and in the
  plugins' EXAMPLES;
- a filter of ours used in Jinja (``| dkim_txt``, ``|dpkg_missing(``,
  ``map('txt_strings')``, ``{% filter sieve_quote %}``) becomes
  ``estafeta.mail.dkim_txt`` and so on, in every YAML and template file of
  the staged roles and in the plugins' EXAMPLES;
- an ``extends_documentation_fragment`` entry naming one of our fragments
  gets the collection prefix.

The names come from the tree itself: modules are library/*.py, filters are the
keys of each filter_plugins file's ``FilterModule().filters()``. Names that are
already fully qualified are left alone, so the rewrite is idempotent.

Afterwards the staged roles are checked independently of the rewrite: every
task file is parsed as YAML and every Jinja expression in it (and every
template) with Jinja's own parser, and the build fails, naming file and name,
if a task key, ``action:``/``local_action:`` or Jinja filter still uses a short
name of ours. Then ``ansible-galaxy collection build`` writes the tarball into
the output directory (default dist/) and its path is printed on stdout.

Run it with the project's venv (``make collection``), which has ansible-core.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent

# The lowest ansible-core the content is written and tested for (the project
# pins ansible-core 2.19; the roles' meta/main.yml say min_ansible_version 2.19).
REQUIRES_ANSIBLE = ">=2.19.0"

# Roles for the lab only (a test DNS server, a test ACME CA, a test S3) stay
# out of the collection.
LAB_ROLE_PREFIX = "lab_"

# Task keywords whose values are bare Jinja expressions (no {{ }}).
CONDITIONAL_KEYS = frozenset({"when", "changed_when", "failed_when", "until", "that"})

# Files and directories never copied into the collection.
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", "*.retry")


class BuildError(Exception):
    """The collection cannot be built; the message says why."""


@dataclass(frozen=True)
class Names:
    """Our plugin names, and the prefix that makes them fully qualified."""

    namespace: str
    collection: str
    modules: frozenset[str]
    filters: frozenset[str]
    module_utils: frozenset[str]
    doc_fragments: frozenset[str]

    @property
    def prefix(self) -> str:
        return f"{self.namespace}.{self.collection}."


# -- what the tree holds -------------------------------------------------------------


def plugin_files(directory: Path) -> list[Path]:
    """The Python plugin files of a directory (not __init__.py or private files)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def filter_names(directory: Path) -> dict[str, Path]:
    """Every filter name published by FilterModule().filters() in the directory."""
    found: dict[str, Path] = {}
    for path in plugin_files(directory):
        spec = importlib.util.spec_from_file_location(f"_estafeta_filters_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise BuildError(f"{path}: cannot be imported")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        filter_module = getattr(module, "FilterModule", None)
        if filter_module is None:
            continue
        for name in filter_module().filters():
            if name in found:
                raise BuildError(f"filter {name} is defined in {found[name]} and in {path}")
            found[name] = path
    return found


def production_roles(roles_dir: Path) -> list[str]:
    """Every role under roles/ except the lab_* ones."""
    return sorted(
        p.name
        for p in roles_dir.iterdir()
        if p.is_dir() and (p / "tasks").is_dir() and not p.name.startswith(LAB_ROLE_PREFIX)
    )


def read_names(root: Path, namespace: str, collection: str) -> Names:
    names = Names(
        namespace=namespace,
        collection=collection,
        modules=frozenset(p.stem for p in plugin_files(root / "library")),
        filters=frozenset(filter_names(root / "filter_plugins")),
        module_utils=frozenset(p.stem for p in plugin_files(root / "module_utils")),
        doc_fragments=frozenset(p.stem for p in plugin_files(root / "doc_fragments")),
    )
    if not names.modules:
        raise BuildError(f"no modules found in {root / 'library'}")
    clash = names.modules & names.filters
    if clash:
        raise BuildError(f"names used both as module and filter: {sorted(clash)}")
    return names


# -- rewriting -------------------------------------------------------------------------


def _alternation(words: Iterable[str]) -> str:
    # Longest first, so that no name matches as the prefix of a longer one.
    return "|".join(re.escape(w) for w in sorted(words, key=lambda w: (-len(w), w)))


def fqcn_module_keys(text: str, modules: Iterable[str], prefix: str) -> str:
    """``estafeta_account:`` as a YAML mapping key (optionally after list dashes)
    and ``action: estafeta_account ...`` become fully qualified."""
    alternation = _alternation(modules)
    if not alternation:
        return text
    key = re.compile(
        rf"^(?P<lead>[ \t]*(?:-[ \t]+)*)(?P<name>{alternation})(?P<colon>[ \t]*:)(?=[ \t]|$)",
        re.MULTILINE,
    )
    text = key.sub(lambda m: f"{m['lead']}{prefix}{m['name']}{m['colon']}", text)
    action = re.compile(
        rf"^(?P<lead>[ \t]*(?:-[ \t]+)*(?:local_action|action|module)[ \t]*:[ \t]*)"
        rf"(?P<name>{alternation})(?=[ \t]|$)",
        re.MULTILINE,
    )
    return action.sub(lambda m: f"{m['lead']}{prefix}{m['name']}", text)


def fqcn_filters(text: str, filters: Iterable[str], prefix: str) -> str:
    """Our filters in Jinja syntax become fully qualified: ``| name``,
    ``|name(``, a pipe at the end of one line and the name on the next,
    ``map('name')`` and ``{% filter name %}``. A name preceded by a dot or
    followed by a dot or word character is not ours and stays."""
    alternation = _alternation(filters)
    if not alternation:
        return text
    pipe = re.compile(rf"(?P<pre>\|\s*)(?P<name>{alternation})(?![\w.])")
    text = pipe.sub(lambda m: f"{m['pre']}{prefix}{m['name']}", text)
    mapped = re.compile(rf"(?P<pre>\bmap\(\s*)(?P<q>['\"])(?P<name>{alternation})(?P=q)")
    text = mapped.sub(lambda m: f"{m['pre']}{m['q']}{prefix}{m['name']}{m['q']}", text)
    block = re.compile(rf"(?P<pre>\{{%[-+]?\s*filter\s+)(?P<name>{alternation})(?![\w.])")
    return block.sub(lambda m: f"{m['pre']}{prefix}{m['name']}", text)


def fqcn_module_utils(text: str, module_utils: Iterable[str], names: Names) -> str:
    """``ansible.module_utils.NAME`` (ours) → the collection's module_utils."""
    alternation = _alternation(module_utils)
    if not alternation:
        return text
    target = f"ansible_collections.{names.namespace}.{names.collection}.plugins.module_utils."
    pattern = re.compile(rf"\bansible\.module_utils\.(?P<name>{alternation})\b")
    return pattern.sub(lambda m: f"{target}{m['name']}", text)


_DOC_STRING = re.compile(
    r"^(?P<head>(?P<var>EXAMPLES|DOCUMENTATION)\s*=\s*[rRuU]?)(?P<q>\"\"\"|''')(?P<body>.*?)(?P=q)",
    re.MULTILINE | re.DOTALL,
)


def rewrite_plugin(text: str, names: Names) -> str:
    """A module, filter or module_utils file as the collection ships it."""
    text = fqcn_module_utils(text, names.module_utils, names)

    def docs(match: re.Match[str]) -> str:
        body = match["body"]
        if match["var"] == "EXAMPLES":
            body = fqcn_module_keys(body, names.modules, names.prefix)
            body = fqcn_filters(body, names.filters, names.prefix)
        elif names.doc_fragments:
            body = _fqcn_fragments(body, names)
        return f"{match['head']}{match['q']}{body}{match['q']}"

    return _DOC_STRING.sub(docs, text)


def _fqcn_fragments(documentation: str, names: Names) -> str:
    alternation = _alternation(names.doc_fragments)
    pattern = re.compile(rf"^(?P<lead>[ \t]*-[ \t]+)(?P<name>(?:{alternation})(?:\.\w+)?)[ \t]*$")
    lines = documentation.split("\n")
    inside = False
    for i, line in enumerate(lines):
        if line.startswith("extends_documentation_fragment:"):
            inside = True
            continue
        if inside and line and not line[0].isspace() and not line.startswith("-"):
            inside = False
        if inside:
            lines[i] = pattern.sub(lambda m: f"{m['lead']}{names.prefix}{m['name']}", line)
    return "\n".join(lines)


def rewrite_role_file(path: Path, relative: Path, names: Names) -> None:
    text = path.read_text(encoding="utf-8")
    new = text
    if relative.parts[0] in ("tasks", "handlers") and path.suffix in (".yml", ".yaml"):
        new = fqcn_module_keys(new, names.modules, names.prefix)
    new = fqcn_filters(new, names.filters, names.prefix)
    if new != text:
        path.write_text(new, encoding="utf-8")


# -- checking the staged roles ---------------------------------------------------------


class _AnyTagLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that reads ``!unsafe``, ``!vault`` and other tags as plain values."""


def _untagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)


_AnyTagLoader.add_multi_constructor("!", _untagged)


def _jinja_environment() -> Any:
    import jinja2

    # Only parsed, never rendered: autoescape does not matter.
    return jinja2.Environment(  # noqa: S701
        extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"]
    )


def jinja_filters(source: str, environment: Any) -> Iterator[str]:
    """The names of the filters a template uses, from Jinja's own parse tree
    (``map('name')`` counts as the filter ``name``)."""
    from jinja2 import nodes

    with warnings.catch_warnings():
        # Jinja decodes string literals with Python's unicode-escape codec,
        # which warns about escapes such as '\.' in a regex; Ansible reads
        # them the same way, so they are no reason to stop.
        warnings.simplefilter("ignore", DeprecationWarning)
        tree = environment.parse(source)
    for node in tree.find_all(nodes.Filter):
        yield node.name
        first = node.args[0] if node.args else None
        if node.name == "map" and isinstance(first, nodes.Const) and isinstance(first.value, str):
            yield first.value


def _strings(value: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, str(k))
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)


def _short_module_uses(value: Any, modules: frozenset[str]) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k in modules:
                yield f"task key {k}:"
            if k in ("action", "local_action"):
                target = v.get("module") if isinstance(v, dict) else v
                if isinstance(target, str) and target.split(" ", 1)[0] in modules:
                    yield f"{k}: {target.split(' ', 1)[0]}"
            yield from _short_module_uses(v, modules)
    elif isinstance(value, list):
        for item in value:
            yield from _short_module_uses(item, modules)


def check_staged_roles(roles_dir: Path, names: Names) -> list[str]:
    """Every short name of ours still used in the staged roles, as
    ``file: what`` lines (empty when the roles are clean)."""
    environment = _jinja_environment()
    problems: list[str] = []
    for path in sorted(roles_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(roles_dir)
        if len(relative.parts) < 3 or relative.parts[1] == "meta":
            continue
        where = f"roles/{relative}"
        if path.suffix in (".yml", ".yaml"):
            try:
                data = yaml.load(path.read_text(encoding="utf-8"), Loader=_AnyTagLoader)  # noqa: S506
            except yaml.YAMLError as exc:
                problems.append(f"{where}: not valid YAML: {exc}")
                continue
            if relative.parts[1] in ("tasks", "handlers"):
                problems += [f"{where}: {use}" for use in _short_module_uses(data, names.modules)]
            for key, text in _strings(data):
                sources = []
                if "{{" in text or "{%" in text:
                    sources.append(text)
                if key in CONDITIONAL_KEYS:
                    sources.append("{{ " + text + " }}")
                for source in sources:
                    problems += _filter_problems(where, source, environment, names)
        elif path.suffix == ".j2":
            problems += _filter_problems(
                where, path.read_text(encoding="utf-8"), environment, names
            )
    return problems


def _filter_problems(where: str, source: str, environment: Any, names: Names) -> list[str]:
    import jinja2

    try:
        used = set(jinja_filters(source, environment))
    except jinja2.TemplateSyntaxError as exc:
        return [f"{where}: Jinja cannot parse {source[:60]!r}: {exc}"]
    return [f"{where}: filter | {name}" for name in sorted(used & names.filters)]


def role_escapes(roles_dir: Path) -> list[str]:
    """Files of the staged roles that reach outside their role through role_path."""
    pattern = re.compile(r"role_path\s*\}\}\s*/\.\./\.\.|role_path\s*~\s*['\"]/\.\./\.\.")
    found = []
    for path in sorted(roles_dir.rglob("*")):
        texts = path.is_file() and path.suffix in (".yml", ".yaml", ".j2")
        if texts and pattern.search(path.read_text(encoding="utf-8")):
            found.append(f"roles/{path.relative_to(roles_dir)}")
    return found


# -- staging and building --------------------------------------------------------------


def read_galaxy(root: Path) -> dict[str, Any]:
    galaxy = yaml.safe_load((root / "galaxy.yml").read_text(encoding="utf-8"))
    for key in ("namespace", "name", "version"):
        if not galaxy.get(key):
            raise BuildError(f"galaxy.yml has no {key}")
    return dict(galaxy)


def stage(root: Path, staging: Path) -> tuple[Names, list[str]]:
    """Fill ``staging`` with the collection; returns the names and the roles."""
    galaxy = read_galaxy(root)
    names = read_names(root, galaxy["namespace"], galaxy["name"])
    staging.mkdir(parents=True, exist_ok=True)
    if any(staging.iterdir()):
        raise BuildError(f"staging directory {staging} is not empty")

    shutil.copy2(root / "galaxy.yml", staging / "galaxy.yml")
    shutil.copy2(root / "docs" / "collection.md", staging / "README.md")
    shutil.copy2(root / "LICENSE", staging / "LICENSE")
    shutil.copy2(root / "CHANGELOG.md", staging / "CHANGELOG.md")
    (staging / "meta").mkdir()
    if (root / "meta" / "runtime.yml").is_file():
        shutil.copy2(root / "meta" / "runtime.yml", staging / "meta" / "runtime.yml")
    else:
        (staging / "meta" / "runtime.yml").write_text(
            "---\n# Written by scripts/build_collection.py.\n"
            f'requires_ansible: "{REQUIRES_ANSIBLE}"\n',
            encoding="utf-8",
        )

    plugins = staging / "plugins"
    for source, target in (
        ("library", "modules"),
        ("filter_plugins", "filter"),
        ("module_utils", "module_utils"),
        ("doc_fragments", "doc_fragments"),
    ):
        files = plugin_files(root / source)
        if not files:
            continue
        (plugins / target).mkdir(parents=True)
        for path in files:
            text = rewrite_plugin(path.read_text(encoding="utf-8"), names)
            (plugins / target / path.name).write_text(text, encoding="utf-8")

    roles = production_roles(root / "roles")
    for role in roles:
        dest = staging / "roles" / role
        shutil.copytree(root / "roles" / role, dest, ignore=IGNORE)
        for path in sorted(dest.rglob("*")):
            if path.is_file() and path.suffix in (".yml", ".yaml", ".j2"):
                rewrite_role_file(path, path.relative_to(dest), names)

    problems = check_staged_roles(staging / "roles", names)
    leftovers = [
        f"plugins/{p.relative_to(plugins)}: ansible.module_utils.{m}"
        for p in sorted(plugins.rglob("*.py"))
        for m in names.module_utils
        if re.search(rf"\bansible\.module_utils\.{re.escape(m)}\b", p.read_text(encoding="utf-8"))
    ]
    if problems or leftovers:
        raise BuildError(
            "short names of ours remain in the staged collection:\n  "
            + "\n  ".join(problems + leftovers)
        )
    return names, roles


def galaxy_build(staging: Path, output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    galaxy = shutil.which("ansible-galaxy", path=str(Path(sys.executable).parent))
    galaxy = galaxy or shutil.which("ansible-galaxy")
    if galaxy is None:
        raise BuildError("ansible-galaxy not found (run with the project's .venv)")
    result = subprocess.run(
        [
            os.path.abspath(galaxy),
            "collection",
            "build",
            str(staging),
            "--output-path",
            str(output),
            "--force",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"ansible-galaxy collection build failed:\n{result.stdout}{result.stderr}")
    match = re.search(r"Created collection for \S+ at (?P<path>\S+\.tar\.gz)", result.stdout)
    if match is None:
        raise BuildError(f"no tarball named in ansible-galaxy's output:\n{result.stdout}")
    return Path(match["path"])


def build(root: Path, output: Path, staging: Path | None = None) -> Path:
    """Stage and build; returns the tarball's path. Without ``staging`` a
    temporary directory is used and removed."""
    with tempfile.TemporaryDirectory(prefix="estafeta-collection-") as tmp:
        where = staging if staging is not None else Path(tmp) / "collection"
        names, roles = stage(root, where)
        escapes = role_escapes(where / "roles")
        if escapes:
            print(
                "warning: these files reach outside their role (role_path/../..), which "
                "points nowhere useful in an installed collection: " + ", ".join(escapes),
                file=sys.stderr,
            )
        tarball = galaxy_build(where, output)
        print(
            f"estafeta.mail: roles {', '.join(roles)}; modules {', '.join(sorted(names.modules))}; "
            f"filters {', '.join(sorted(names.filters))}",
            file=sys.stderr,
        )
        return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "dist",
        help="directory for the tarball (default: dist/ in the repository)",
    )
    parser.add_argument(
        "--staging",
        type=Path,
        help="keep the staged collection in this (new or empty) directory",
    )
    args = parser.parse_args(argv)
    try:
        tarball = build(ROOT, args.output.resolve(), args.staging and args.staging.resolve())
    except BuildError as exc:
        print(f"build_collection: {exc}", file=sys.stderr)
        return 1
    print(tarball)
    return 0


if __name__ == "__main__":
    sys.exit(main())
