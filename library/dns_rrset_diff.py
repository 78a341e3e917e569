#!/usr/bin/python
"""Ansible module: show the record-level difference dns_rrset_sync planned or made."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dns_rrset_diff
short_description: Show the DNS record changes of a dns_rrset_sync run as an Ansible diff
description:
  - The task that publishes records carries a TSIG secret or cloud keys and therefore runs
    with C(no_log), which hides its diff too. This module takes that task's registered
    result (which holds no secret) and returns its diff and its changed status, so that
    C(--diff) and C(--check --diff) show the records added and removed.
  - It talks to nothing.
version_added: "1.0.0"
options:
  result:
    description: The registered result of a dns_rrset_sync task.
    type: dict
    required: true
attributes:
  check_mode:
    support: full
    details: The same in check mode.
  diff_mode:
    support: full
    details: Returns the diff of O(result).
  platform:
    platforms: posix
author:
  - Estafeta contributors
"""

EXAMPLES = r"""
- name: Show the record changes
  dns_rrset_diff:
    result: "{{ published }}"
  delegate_to: localhost
"""

RETURN = r"""
changes:
  description: The record sets that change, as dns_rrset_sync returned them.
  returned: always
  type: list
  elements: dict
"""

from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={"result": {"type": "dict", "required": True}},
        supports_check_mode=True,
    )
    result: dict[str, Any] = module.params["result"]
    if "changes" not in result or "diff" not in result:
        module.fail_json(msg="result is not the registered result of a dns_rrset_sync task")
    module.exit_json(
        changed=bool(result["changes"]), changes=result["changes"], diff=result["diff"]
    )


if __name__ == "__main__":
    main()
