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
  - Optionally gives a top-level mailbox delivery addresses (O(addresses)), so that mail to
    C(info@example.org) lands in C(Shared/info), stored once and seen by every account in
    O(acl).
  - The ACL and the addresses are read first (C(estafeta shared list --json)), so the module
    changes nothing when they already are as asked.
options:
  name:
    description:
      - The mailbox's name under C(Shared/), e.g. V(info) or V(info/2026). Not V(INBOX).
    type: str
    required: true
  state:
    description:
      - V(present) creates the mailbox if it is missing and sets O(acl).
      - V(absent) deletes the mailbox with its messages, ACL and addresses.
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
  addresses:
    description:
      - The mailbox's delivery addresses, exactly (addresses not listed are taken away; V([])
        takes all away). Omitted, the addresses are left as they are.
      - Only a top-level mailbox (V(info), not V(info/2026)) has addresses. Each must be in one of
        the server's domains and be no account, no alias and no other shared mailbox's address;
        the CLI's refusal names the address.
      - Mail from the Internet (the MX) to an address is accepted; an account submitting to it
        needs the C(p) right in O(acl) (V(anyone) C(p) lets every account post).
    type: list
    elements: str
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
    description: >-
      Shows the ACL and the addresses before and after, one C(identifier rights) or
      C(address ADDRESS) line each.
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

- name: Give the team mailbox its address and let every account write to it
  estafeta_shared_mailbox:
    name: info
    acl:
      alice@example.org: lrswipkxtea
      bob@example.org: lrs
      anyone: p
    addresses:
      - info@example.org
      - contact@example.org

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
addresses:
  description: The delivery addresses as they are (or, in check mode, would be) afterwards.
  returned: always
  type: list
  elements: str
  sample: ["contact@example.org", "info@example.org"]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.estafeta import EstafetaCLI, estafeta_argument_spec  # noqa: E402


def render(acl, addresses=()):
    """An ACL and addresses as diff text: one ``identifier rights`` line per
    entry, then one ``address ADDRESS`` line per address."""
    if acl is None:
        return ""
    lines = [f"{ident} {rights}\n" for ident, rights in sorted(acl.items())]
    lines += [f"address {address}\n" for address in sorted(addresses)]
    return "".join(lines)


def run(module, cli):
    params = module.params
    name = params["name"].strip("/")
    if not name:
        module.fail_json(msg="name must not be empty")
    present = params["state"] == "present"
    listed = {entry["name"]: entry for entry in cli.json("shared", "list", "--json")}
    before = listed.get(name)
    check = ["--check"] if module.check_mode else []
    if present:
        args = ["shared", "set", "--json", *check]
        if params["acl_exclusive"]:
            args.append("--exclusive")
        for ident, rights in sorted((params["acl"] or {}).items()):
            args += ["--acl", f"{ident}={rights if rights is not None else ''}"]
        if params["addresses"] is not None:
            # Exactly these: the CLI normalises them and takes the others away.
            args.append("--exclusive-addresses")
            for address in params["addresses"]:
                args += ["--address", address]
        outcome = cli.json(*args, "--", name)
        after = outcome["acl"]
        addresses = outcome.get("addresses", [])
        changed = bool(outcome["changed"])
    else:
        outcome = cli.json("shared", "remove", "--json", *check, "--", name)
        after, addresses = None, []
        changed = bool(outcome["changed"])
    result = {"changed": changed, "name": name, "acl": after or {}, "addresses": addresses}
    if module._diff:
        header = f"estafeta shared mailbox Shared/{name}"
        result["diff"] = {
            "before_header": header,
            "after_header": header,
            "before": render(*_state(before)),
            "after": render(after, addresses),
        }
    return result


def _state(entry):
    """(acl, addresses) of a ``shared list`` entry; (None, ()) for none."""
    if entry is None:
        return None, ()
    return entry.get("acl", {}), entry.get("addresses", [])


def main():
    argument_spec = {
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "acl": {"type": "dict", "default": {}},
        "acl_exclusive": {"type": "bool", "default": True},
        "addresses": {"type": "list", "elements": "str"},
    }
    argument_spec.update(estafeta_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    cli = EstafetaCLI(module)
    module.exit_json(**run(module, cli))


if __name__ == "__main__":
    main()
