#!/usr/bin/python
"""Ansible module: a shared mailbox of estafeta and who may do what in it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: estafeta_shared_mailbox
short_description: Manage a shared mailbox of estafeta and its access control list
description:
  - Creates or removes a shared mailbox (a team mailbox such as C(info), shown to IMAP clients
    as C(Shared/info)) and sets its access control list (RFC 4314 rights per account) through
    the command line of the estafeta mail server (C(estafeta shared ...)) on the mail host.
  - Every account named in O(acl) keeps its own C(\Seen); the other flags and the messages are
    common to all (see docs/shared-mailboxes.md).
  - The ACL is read first (C(estafeta shared list --json)), so the module changes nothing when
    it already is as asked.
options:
  name:
    description:
      - The mailbox's name under C(Shared/), e.g. V(info) or V(info/2026). Not V(INBOX).
    type: str
    required: true
  state:
    description:
      - V(present) creates the mailbox if it is missing and sets O(acl).
      - V(absent) deletes the mailbox with its messages and ACL.
    type: str
    choices: [present, absent]
    default: present
  acl:
    description:
      - Account address (or V(anyone), every account) to RFC 4314 rights, a string of
        C(lrswipkxtea) (C(c) stands for C(k), C(d) for C(xte)); V("") takes an entry's
        rights away. C(lrs) reads and keeps its own C(\Seen), C(lrswipkxtea) does everything.
      - The accounts must exist (M(estafeta_account) creates them).
    type: dict
    default: {}
  acl_exclusive:
    description:
      - V(true) removes the ACL entries O(acl) does not name (for example rights given over
        IMAP SETACL); V(false) leaves them.
    type: bool
    default: true
  config:
    description:
      - The estafeta configuration file, passed to the CLI as C(-c).
    type: path
    default: /etc/estafeta/estafeta.toml
  executable:
    description:
      - The C(estafeta) command, usually in the virtualenv estafeta is installed in.
        A name without C(/) is looked up in E(PATH).
    type: path
    default: /opt/estafeta/bin/estafeta
attributes:
  check_mode:
    support: full
    description: Asks the CLI what would change (C(--check)) and changes nothing.
  diff_mode:
    support: full
    description: Shows the ACL before and after, one C(identifier rights) line each.
notes:
  - Runs on the mail host. The CLI's error messages (no such account, a right that does not
    exist) are returned as the failure message.
seealso:
  - module: estafeta_account
author:
  - Estafeta maintainers
"""

EXAMPLES = r"""
- name: Share info@'s mailbox between the front desk and a reader
  estafeta_shared_mailbox:
    name: info
    acl:
      alice@example.org: lrswipkxtea
      bob@example.org: lrs

- name: Remove a team mailbox and its messages
  estafeta_shared_mailbox:
    name: old-project
    state: absent
"""

RETURN = r"""
name:
  description: The mailbox's name under C(Shared/).
  returned: always
  type: str
  sample: info
acl:
  description: The ACL as it is (or, in check mode, would be) afterwards; empty when absent.
  returned: always
  type: dict
  sample: {"alice@example.org": "lrswipkxtea", "bob@example.org": "lrs"}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.estafeta import EstafetaCLI, estafeta_argument_spec  # noqa: E402


def render(acl):
    """An ACL as diff text: one ``identifier rights`` line per entry."""
    if acl is None:
        return ""
    return "".join(f"{ident} {rights}\n" for ident, rights in sorted(acl.items()))


def run(module, cli):
    params = module.params
    name = params["name"].strip("/")
    if not name:
        module.fail_json(msg="name must not be empty")
    present = params["state"] == "present"
    listed = {entry["name"]: entry["acl"] for entry in cli.json("shared", "list", "--json")}
    before = listed.get(name)
    check = ["--check"] if module.check_mode else []
    if present:
        args = ["shared", "set", "--json", *check]
        if params["acl_exclusive"]:
            args.append("--exclusive")
        for ident, rights in sorted((params["acl"] or {}).items()):
            args += ["--acl", f"{ident}={rights if rights is not None else ''}"]
        outcome = cli.json(*args, "--", name)
        after = outcome["acl"]
        changed = bool(outcome["changed"])
    else:
        outcome = cli.json("shared", "remove", "--json", *check, "--", name)
        after = None
        changed = bool(outcome["changed"])
    result = {"changed": changed, "name": name, "acl": after or {}}
    if module._diff:
        header = f"estafeta shared mailbox Shared/{name}"
        result["diff"] = {
            "before_header": header,
            "after_header": header,
            "before": render(before),
            "after": render(after),
        }
    return result


def main():
    argument_spec = {
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "acl": {"type": "dict", "default": {}},
        "acl_exclusive": {"type": "bool", "default": True},
    }
    argument_spec.update(estafeta_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    cli = EstafetaCLI(module)
    module.exit_json(**run(module, cli))


if __name__ == "__main__":
    main()
