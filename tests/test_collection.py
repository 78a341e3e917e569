"""The estafeta.mail collection (issue 19 §7, acceptance 5).

- scripts/build_collection.py's rewrites: our module keys, filters and
  module_utils imports become fully qualified, nothing else changes, and a
  second pass changes nothing; the check after staging finds short names the
  rewrite cannot reach (a flow mapping, a filter in ``when:``) and the build
  fails naming them;
- the real build: a tarball in the output directory whose roles and plugins
  use no short name of ours;
- installed with ``ansible-galaxy collection install --offline`` into a
  temporary path and used from a directory outside the repository, with
  empty ANSIBLE_LIBRARY / ANSIBLE_FILTER_PLUGINS / ANSIBLE_MODULE_UTILS /
  ANSIBLE_ROLES_PATH and a configuration file of our own (so ansible.cfg of
  the repository cannot help): ``estafeta.mail.estafeta_account`` creates an
  account on a real estafeta (``estafeta_server`` in conftest) that then logs
  in over IMAPS, ``estafeta.mail.spf_record`` works in a debug task, the short
  module name does not resolve, every module's ``ansible-doc`` renders, and
  a playbook with every role of the collection passes ``--syntax-check``.
"""

from __future__ import annotations

import imaplib
import importlib.util
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_collection.py"
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
PREFIX = "estafeta.mail."
PRODUCTION_ROLES = [
    "backup",
    "base",
    "dns_records",
    "estafeta",
    "firewall",
    "postgresql",
    "resolver",
    "rspamd",
    "tls",
    "webmail",
]
CAROL = "carol@example.test"
CAROL_PASSWORD = "tangerine orbit harbour 58 quietly"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_collection", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_collection"] = module
    spec.loader.exec_module(module)
    return module


bc = _load_script()
NAMES = bc.read_names(ROOT, "estafeta", "mail")


def venv_tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(path).exists(), f"{name} not found (run with .venv/bin on PATH, as make does)"
    return os.path.abspath(path)  # the tests run it from other directories


# -- the names and the rewrites --------------------------------------------------------


def test_names_come_from_the_tree() -> None:
    assert NAMES.modules == {p.stem for p in (ROOT / "library").glob("*.py")}
    # Every filter of every FilterModule, including those of packages.py and sieve.py.
    assert {"spf_record", "tlsa_record", "dpkg_missing", "sieve_vacation"} <= NAMES.filters
    assert NAMES.module_utils == {p.stem for p in (ROOT / "module_utils").glob("*.py")}
    assert {"estafeta", "dns_providers", "dns_cloudflare", "dns_hetzner"} <= NAMES.module_utils
    assert bc.production_roles(ROOT / "roles") == PRODUCTION_ROLES


TASKS = """\
- name: Create the account
  estafeta_account:
    address: a@example.test
- name: Already qualified
  estafeta.mail.estafeta_dkim_key:
    domain: example.test
- block:
    - mail_dns_check:
        domain: example.test
- name: estafeta_account
  ansible.builtin.debug:
    msg: "estafeta_account: is text here"
  vars:
    estafeta_account_extra: 1
- local_action: estafeta_sieve name=x
"""

TASKS_FQCN = """\
- name: Create the account
  estafeta.mail.estafeta_account:
    address: a@example.test
- name: Already qualified
  estafeta.mail.estafeta_dkim_key:
    domain: example.test
- block:
    - estafeta.mail.mail_dns_check:
        domain: example.test
- name: estafeta_account
  ansible.builtin.debug:
    msg: "estafeta_account: is text here"
  vars:
    estafeta_account_extra: 1
- local_action: estafeta.mail.estafeta_sieve name=x
"""


def test_module_keys_become_fqcn_once() -> None:
    once = bc.fqcn_module_keys(TASKS, NAMES.modules, PREFIX)
    assert once == TASKS_FQCN
    assert bc.fqcn_module_keys(once, NAMES.modules, PREFIX) == once


JINJA = """\
{{ x | spf_record }} {{ x|dkim_txt('a') }} {{ x |
   dpkg_missing(pkgs) }}
{{ xs | map('txt_strings') | list }}
{% filter sieve_quote %}a{% endfilter %}
{{ x | estafeta.mail.spf_record }} {{ x | community.general.dict_kv('k') }}
{{ x | spf_record_v2 }} {{ x | other.coll.dkim_txt }} {{ x | map('upper') }}
"""

JINJA_FQCN = """\
{{ x | estafeta.mail.spf_record }} {{ x|estafeta.mail.dkim_txt('a') }} {{ x |
   estafeta.mail.dpkg_missing(pkgs) }}
{{ xs | map('estafeta.mail.txt_strings') | list }}
{% filter estafeta.mail.sieve_quote %}a{% endfilter %}
{{ x | estafeta.mail.spf_record }} {{ x | community.general.dict_kv('k') }}
{{ x | spf_record_v2 }} {{ x | other.coll.dkim_txt }} {{ x | map('upper') }}
"""


def test_filters_become_fqcn_once() -> None:
    once = bc.fqcn_filters(JINJA, NAMES.filters, PREFIX)
    assert once == JINJA_FQCN
    assert bc.fqcn_filters(once, NAMES.filters, PREFIX) == once
    # Jinja's own parser agrees: no short name of ours is left.
    environment = bc._jinja_environment()
    assert not set(bc.jinja_filters(once, environment)) & NAMES.filters
    assert {"spf_record", "txt_strings", "sieve_quote"} <= set(bc.jinja_filters(JINJA, environment))


def test_module_utils_imports_and_examples() -> None:
    source = (
        'EXAMPLES = r"""\n- estafeta_account:\n    address: "{{ a | txt_strings }}"\n"""\n'
        "from ansible.module_utils.basic import AnsibleModule\n"
        "from ansible.module_utils.estafeta import EstafetaCLI\n"
        "from ansible.module_utils.estafeta_other import X\n"
    )
    staged = bc.rewrite_plugin(source, NAMES)
    assert staged == (
        'EXAMPLES = r"""\n- estafeta.mail.estafeta_account:\n'
        '    address: "{{ a | estafeta.mail.txt_strings }}"\n"""\n'
        "from ansible.module_utils.basic import AnsibleModule\n"
        "from ansible_collections.estafeta.mail.plugins.module_utils.estafeta import EstafetaCLI\n"
        "from ansible.module_utils.estafeta_other import X\n"
    )
    assert bc.rewrite_plugin(staged, NAMES) == staged


def _fake_tree(root: Path, tasks: str) -> None:
    """The smallest tree build_collection can stage: one role with ``tasks``."""
    for name in ("galaxy.yml", "LICENSE", "CHANGELOG.md"):
        shutil.copy(ROOT / name, root / name)
    (root / "docs").mkdir()
    (root / "docs" / "collection.md").write_text("# estafeta.mail\n")
    for directory in ("library", "filter_plugins", "module_utils"):
        shutil.copytree(ROOT / directory, root / directory, ignore=bc.IGNORE)
    (root / "roles" / "demo" / "tasks").mkdir(parents=True)
    (root / "roles" / "demo" / "tasks" / "main.yml").write_text(tasks)
    (root / "roles" / "lab_demo" / "tasks").mkdir(parents=True)
    (root / "roles" / "lab_demo" / "tasks" / "main.yml").write_text(tasks)


def test_build_fails_on_a_short_name_left(tmp_path: Path) -> None:
    # A flow mapping: the line-based rewrite does not reach it, the check does.
    root = tmp_path / "tree"
    root.mkdir()
    _fake_tree(root, "- {name: x, estafeta_account: {address: a@example.test}}\n")
    with pytest.raises(bc.BuildError) as error:
        bc.stage(root, tmp_path / "staging")
    assert "roles/demo/tasks/main.yml: task key estafeta_account:" in str(error.value)


def test_stage_rewrites_conditionals_and_leaves_lab_roles_out(tmp_path: Path) -> None:
    tasks = (
        "- ansible.builtin.debug:\n    msg: \"{{ x | map( 'txt_strings' ) | list }}\"\n"
        "  when: (x | default([])) | length > 0 and x|dmarc_record('reject') != ''\n"
        '- {name: y, ansible.builtin.debug: {msg: "{{ y | dkim_txt }}"}}\n'
    )
    root = tmp_path / "tree"
    root.mkdir()
    _fake_tree(root, tasks)
    staging = tmp_path / "staging"
    bc.stage(root, staging)
    staged = (staging / "roles" / "demo" / "tasks" / "main.yml").read_text()
    assert staged == (
        "- ansible.builtin.debug:\n"
        "    msg: \"{{ x | map( 'estafeta.mail.txt_strings' ) | list }}\"\n"
        "  when: (x | default([])) | length > 0 and x|estafeta.mail.dmarc_record('reject') != ''\n"
        '- {name: y, ansible.builtin.debug: {msg: "{{ y | estafeta.mail.dkim_txt }}"}}\n'
    )
    assert (staging / "meta" / "runtime.yml").exists()
    assert sorted(p.name for p in (staging / "roles").iterdir()) == ["demo"]


def test_check_finds_filters_the_rewrite_missed(tmp_path: Path) -> None:
    role = tmp_path / "roles" / "demo"
    (role / "tasks").mkdir(parents=True)
    (role / "templates").mkdir()
    (role / "tasks" / "main.yml").write_text(
        "- ansible.builtin.assert:\n    that:\n      - x | spf_record != ''\n"
        '- ansible.builtin.debug:\n    msg: "{{ x | estafeta.mail.dkim_txt }}"\n'
    )
    (role / "templates" / "a.j2").write_text("{{ y | map('tlsrpt_txt') | list }}\n")
    problems = bc.check_staged_roles(tmp_path / "roles", NAMES)
    assert problems == [
        "roles/demo/tasks/main.yml: filter | spf_record",
        "roles/demo/templates/a.j2: filter | tlsrpt_txt",
    ]


# -- the real collection ---------------------------------------------------------------


@dataclass
class Built:
    tarball: Path
    staging: Path
    collections: Path  # the -p path of ansible-galaxy collection install


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    tmp = tmp_path_factory.mktemp("collection")
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--output",
            str(tmp / "dist"),
            "--staging",
            str(tmp / "stage"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tarball = Path(result.stdout.strip().splitlines()[-1])
    install = subprocess.run(
        [
            venv_tool("ansible-galaxy"),
            "collection",
            "install",
            str(tarball),
            "-p",
            str(tmp / "collections"),
            "--offline",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
        env=isolated_env(tmp, tmp / "collections"),
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    yield Built(tarball, tmp / "stage", tmp / "collections")


def isolated_env(workdir: Path, collections: Path) -> dict[str, str]:
    """An environment in which only the installed collection can provide our
    modules, filters and roles: no ANSIBLE_* variable of the caller, empty
    plugin paths, and a configuration file of our own."""
    empty = workdir / "empty"
    empty.mkdir(exist_ok=True)
    config = workdir / "ansible.cfg"
    config.write_text("[defaults]\ninterpreter_python = auto_silent\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        {
            "ANSIBLE_CONFIG": str(config),
            "ANSIBLE_COLLECTIONS_PATH": str(collections),
            "ANSIBLE_LIBRARY": str(empty),
            "ANSIBLE_FILTER_PLUGINS": str(empty),
            "ANSIBLE_MODULE_UTILS": str(empty),
            "ANSIBLE_ROLES_PATH": str(empty),
            "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": str(workdir / "ansible-remote"),
            "ANSIBLE_HOME": str(workdir / "ansible-home"),
            "ANSIBLE_NOCOWS": "1",
        }
    )
    return env


def test_tarball_contents(built: Built) -> None:
    assert built.tarball.name == f"estafeta-mail-{GALAXY['version']}.tar.gz"
    with tarfile.open(built.tarball) as archive:
        members = set(archive.getnames())
    assert {"MANIFEST.json", "FILES.json", "LICENSE", "CHANGELOG.md", "README.md"} <= members
    assert "meta/runtime.yml" in members
    assert {f"plugins/modules/{m}.py" for m in NAMES.modules} <= members
    assert {"plugins/filter/mail.py", "plugins/module_utils/estafeta.py"} <= members
    roles = {
        name.split("/")[1] for name in members if name.startswith("roles/") and name.count("/") > 1
    }
    assert sorted(roles) == PRODUCTION_ROLES
    with tarfile.open(built.tarball) as archive:
        manifest = json.load(archive.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    info = manifest["collection_info"]
    assert (info["namespace"], info["name"], info["license"]) == (
        "estafeta",
        "mail",
        ["GPL-3.0-or-later"],
    )
    assert info["dependencies"] == GALAXY["dependencies"]


def test_staged_content_uses_fqcn(built: Built) -> None:
    stage = built.staging
    assert bc.check_staged_roles(stage / "roles", NAMES) == []
    for path in (stage / "plugins").rglob("*.py"):
        assert "ansible.module_utils.estafeta" not in path.read_text(), path
    # What the source tree calls by short name, the staged tree calls by FQCN.
    source_accounts = (ROOT / "roles" / "estafeta" / "tasks" / "accounts.yml").read_text()
    staged_accounts = (stage / "roles" / "estafeta" / "tasks" / "accounts.yml").read_text()
    assert "\n  estafeta_account:" in source_accounts
    assert "\n  estafeta.mail.estafeta_account:" in staged_accounts
    assert staged_accounts.replace("estafeta.mail.estafeta_account:", "estafeta_account:") == (
        source_accounts
    )
    records = (stage / "roles" / "dns_records" / "templates" / "records.json.j2").read_text()
    assert "| estafeta.mail.spf_record(" in records


def run_playbook(
    built: Built, workdir: Path, playbook: Any, *extra: str
) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(exist_ok=True)
    (workdir / "playbook.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    env = isolated_env(workdir, built.collections)
    env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.json"
    return subprocess.run(
        [venv_tool("ansible-playbook"), "-i", "localhost,", "-c", "local", *extra, "playbook.yml"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_module_and_filter_by_fqcn(built: Built, estafeta_server: Any, tmp_path: Path) -> None:
    work = tmp_path / "outside"
    assert not work.is_relative_to(ROOT)
    executable = tmp_path / "bin" / "estafeta"
    executable.parent.mkdir()
    # The module only knows an executable, as on a mail host (/opt/estafeta/bin/estafeta).
    executable.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m estafeta "$@"\n')
    executable.chmod(0o755)
    account = {
        "config": str(estafeta_server.config),
        "executable": str(executable),
        "address": CAROL,
        "password": "{{ carol_password }}",
    }
    interpreter = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": interpreter, "carol_password": CAROL_PASSWORD},
        "tasks": [
            {"name": "Create carol", "estafeta.mail.estafeta_account": account},
            {"name": "Again", "estafeta.mail.estafeta_account": account},
            {
                "name": "SPF",
                "ansible.builtin.debug": {
                    "msg": "{{ {'mx': true, 'ip4': ['198.51.100.10']} | estafeta.mail.spf_record }}"
                },
            },
        ],
    }
    assert CAROL not in estafeta_server.cli("user", "list", "--json")
    proc = run_playbook(built, work, [play])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tasks = json.loads(proc.stdout)["plays"][0]["tasks"]
    results = [task["hosts"]["localhost"] for task in tasks]
    assert results[0]["changed"] is True
    assert results[0]["address"] == CAROL
    assert results[1]["changed"] is False
    assert results[2]["msg"] == "v=spf1 mx ip4:198.51.100.10 -all"
    assert CAROL_PASSWORD not in proc.stdout + proc.stderr

    users = {
        entry["address"] for entry in json.loads(estafeta_server.cli("user", "list", "--json"))
    }
    assert CAROL in users
    # The running server lets carol in with the password the playbook set.
    context = ssl.create_default_context(cafile=str(estafeta_server.ca_file))
    with imaplib.IMAP4_SSL(
        "127.0.0.1", estafeta_server.ports["imaps"], ssl_context=context, timeout=30
    ) as imap:
        typ, _ = imap.login(CAROL, CAROL_PASSWORD)
        assert typ == "OK"

    # Control: in this environment the repository's short name does not resolve,
    # so the run above used the installed collection.
    short = {**play, "tasks": [{"name": "Short", "estafeta_account": account}]}
    proc = run_playbook(built, tmp_path / "short", [short], "--syntax-check")
    assert proc.returncode != 0
    assert "estafeta_account" in proc.stdout + proc.stderr


@pytest.mark.parametrize("module", sorted(NAMES.modules))
def test_ansible_doc_renders(built: Built, tmp_path: Path, module: str) -> None:
    proc = subprocess.run(
        [venv_tool("ansible-doc"), f"estafeta.mail.{module}"],
        cwd=tmp_path,
        env=isolated_env(tmp_path, built.collections),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"estafeta.mail.{module}" in proc.stdout
    assert str(built.collections / "ansible_collections" / "estafeta" / "mail") in proc.stdout
    assert "[WARNING]" not in proc.stderr and "[ERROR]" not in proc.stderr, proc.stderr


def test_filter_doc_renders(built: Built, tmp_path: Path) -> None:
    proc = subprocess.run(
        [venv_tool("ansible-doc"), "-t", "filter", "estafeta.mail.spf_record"],
        cwd=tmp_path,
        env=isolated_env(tmp_path, built.collections),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RFC 7208" in proc.stdout


def test_roles_by_fqcn_pass_syntax_check(built: Built, tmp_path: Path) -> None:
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        "roles": [f"estafeta.mail.{role}" for role in PRODUCTION_ROLES],
    }
    proc = run_playbook(built, tmp_path / "roles", [play], "--syntax-check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Control: a role name the collection does not have fails the same check.
    missing = {**play, "roles": ["estafeta.mail.lab_dns"]}
    proc = run_playbook(built, tmp_path / "missing", [missing], "--syntax-check")
    assert proc.returncode != 0
    assert "lab_dns" in proc.stdout + proc.stderr
