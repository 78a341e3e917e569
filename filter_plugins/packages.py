"""Filter that tells which Debian packages are missing, from dpkg-query's output.

Every role asks ``dpkg-query --show --showformat='${Package}\\t${db:Status-Abbrev}\\n'``
for the packages it needs and installs only the missing ones, so that a host
whose packages are all there never touches apt (lab hosts and air-gapped
servers have no mirror to update from).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: dpkg_missing
short_description: The packages of a list that dpkg-query does not report as installed
version_added: "0.1.0"
author: estafeta
description:
  - Takes the standard output of
    C(dpkg-query --show --showformat='${Package}\t${db:Status-Abbrev}\n' PACKAGE...)
    and returns the packages of O(wanted) that it does not report with the status C(ii)
    (desired install, installed), in the order of O(wanted), without duplicates.
  - A package that dpkg does not know at all is missing too (dpkg-query prints nothing for
    it on standard output), as is one that is only unpacked, half-configured or removed.
  - Architecture qualifiers (C(libc6:amd64)) are ignored when matching.
options:
  _input:
    description: The standard output of the dpkg-query command above.
    type: str
    required: true
  wanted:
    description: The package names the role needs.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Install only what is missing
  ansible.builtin.apt:
    name: "{{ dpkg.stdout | dpkg_missing(['nftables', 'python3']) }}"
  when: dpkg.stdout | dpkg_missing(['nftables', 'python3']) | length > 0
"""

RETURN = r"""
_value:
  description: The names from O(wanted) that are not installed.
  type: list
  elements: str
"""


def dpkg_missing(output: Any, wanted: Any) -> list[str]:
    """The names in WANTED that OUTPUT (dpkg-query, Package<TAB>Status-Abbrev) lacks as 'ii'."""
    if not isinstance(output, str):
        raise AnsibleFilterError(
            f"dpkg_missing: the input must be dpkg-query's standard output (a string), "
            f"not {type(output).__name__}"
        )
    if isinstance(wanted, str) or not isinstance(wanted, Sequence):
        raise AnsibleFilterError("dpkg_missing: 'wanted' must be a list of package names")
    installed = set()
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].startswith("ii"):
            installed.add(fields[0].split(":")[0])
    missing: list[str] = []
    for name in wanted:
        if not isinstance(name, str) or not name:
            raise AnsibleFilterError(f"dpkg_missing: {name!r} in 'wanted' is not a package name")
        if name.split(":")[0] not in installed and name not in missing:
            missing.append(name)
    return missing


class FilterModule:
    """Debian package helpers."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"dpkg_missing": dpkg_missing}
