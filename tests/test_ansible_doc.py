"""Every module in library/ documents itself (issue 19 §6).

For each module:

- ``ansible-doc -M library NAME`` renders it (exit 0, no error or warning)
  and the text names every option;
- the documented options are exactly those of the module's argument spec
  (read by calling its ``main()`` with ``AnsibleModule`` stubbed out), with
  the same type, elements, required, default and choices, and the same for
  documented suboptions;
- EXAMPLES is YAML, a list of tasks; those that call the module (short name
  or an FQCN ending in it) use documented options only;
- RETURN is YAML ``ansible-doc --json`` reads, each value with a description.

The filter plugins (filter_plugins/) have no documentation files yet, so
``ansible-doc -t filter`` has nothing of theirs to render.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import ansible.module_utils
import pytest
import yaml
from ansible.module_utils.basic import AnsibleModule

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "library"
MODULES = sorted(path.stem for path in LIBRARY.glob("*.py") if not path.name.startswith("_"))

# What ansible.cfg's module_utils= does when Ansible packs a module.
if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


def ansible_doc(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("ansible-doc", path=str(ROOT / ".venv" / "bin")) or shutil.which(
        "ansible-doc"
    )
    assert tool, "ansible-doc not found (make venv)"
    # Only -M: the documentation must not depend on ansible.cfg's library=
    # (the working directory is library/, which has no ansible.cfg).
    env = {
        **{key: value for key, value in os.environ.items() if key != "ANSIBLE_CONFIG"},
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_PAGER": "cat",
        "PAGER": "cat",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [tool, "-M", str(LIBRARY), *args],
        capture_output=True,
        text=True,
        cwd=LIBRARY,
        env=env,
        timeout=120,
        check=False,
    )


def doc_json(name: str) -> dict[str, Any]:
    """What ``ansible-doc --json`` reads from the module."""
    result = ansible_doc("--json", name)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)[name])


class _Spec(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("argument spec captured")
        self.kwargs = kwargs


def argument_spec(name: str) -> dict[str, Any]:
    """The argument_spec the module's main() gives AnsibleModule."""
    spec = importlib.util.spec_from_file_location(f"_doc_{name}", LIBRARY / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    def capture(self: AnsibleModule, *args: Any, **kwargs: Any) -> None:
        if args:
            kwargs["argument_spec"] = args[0]
        raise _Spec(kwargs)

    with mock.patch.object(AnsibleModule, "__init__", capture):
        try:
            module.main()
        except _Spec as captured:
            return dict(captured.kwargs["argument_spec"])
    raise AssertionError(f"{name}.main() did not create an AnsibleModule")


def compare(documented: dict[str, Any], code: dict[str, Any], where: str) -> list[str]:
    """Differences between DOCUMENTATION options and an argument spec."""
    problems = []
    for option in sorted(set(documented) - set(code)):
        problems.append(f"{where}{option}: documented, not in the argument spec")
    for option in sorted(set(code) - set(documented)):
        problems.append(f"{where}{option}: in the argument spec, not documented")
    for option in sorted(set(documented) & set(code)):
        doc, arg = documented[option] or {}, code[option] or {}
        if not doc.get("description"):
            problems.append(f"{where}{option}: no description")
        pairs = {
            "type": (doc.get("type", "str"), arg.get("type", "str")),
            "elements": (doc.get("elements"), arg.get("elements")),
            "required": (bool(doc.get("required", False)), bool(arg.get("required", False))),
            "default": (doc.get("default"), arg.get("default")),
            "choices": (doc.get("choices"), arg.get("choices")),
        }
        for key, (in_doc, in_code) in pairs.items():
            if in_doc != in_code:
                problems.append(
                    f"{where}{option}: {key} is {in_doc!r} in the docs, {in_code!r} in the code"
                )
        # A dict described in prose (no options: in the docs) is not compared
        # key by key; once the docs list suboptions, they must be all of them.
        if doc.get("options"):
            problems += compare(
                doc.get("options") or {}, arg.get("options") or {}, f"{where}{option}."
            )
    return problems


def test_every_module_is_checked() -> None:
    assert "estafeta_account" in MODULES and len(MODULES) >= 5, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_ansible_doc_renders_every_option(name: str) -> None:
    result = ansible_doc(name)
    assert result.returncode == 0, result.stderr
    assert "[ERROR]" not in result.stderr and "[WARNING]" not in result.stderr, result.stderr
    assert f"MODULE {name}" in result.stdout or f"> {name}" in result.stdout, result.stdout[:500]
    data = doc_json(name)
    options = data["doc"]["options"]
    assert options, f"{name} documents no option"
    for option in options:
        assert option in result.stdout, f"ansible-doc {name} does not show the option {option}"


@pytest.mark.parametrize("name", MODULES)
def test_documented_options_match_the_argument_spec(name: str) -> None:
    data = doc_json(name)
    problems = compare(data["doc"]["options"], argument_spec(name), "")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", MODULES)
def test_examples_and_return_are_yaml(name: str) -> None:
    data = doc_json(name)
    options = data["doc"]["options"]
    examples = yaml.safe_load(data["examples"])
    assert isinstance(examples, list) and examples, f"{name}: EXAMPLES is not a list of tasks"
    calls = [
        (task.get("name"), task[key] or {})
        for task in examples
        for key in task
        if key == name or key.endswith(f".{name}")
    ]
    assert calls, f"{name}: no example calls the module"
    for task_name, used in calls:
        unknown = sorted(set(used) - set(options))
        assert not unknown, f"{name}: example {task_name!r} uses undocumented {unknown}"
    returned = data["return"]
    assert isinstance(returned, dict) and returned, f"{name}: RETURN is empty"
    for key, value in returned.items():
        assert value.get("description"), f"{name}: return value {key} has no description"
