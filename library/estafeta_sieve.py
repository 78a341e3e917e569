#!/usr/bin/python
"""Ansible module: a Sieve script (mail rules) of an estafeta account."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: estafeta_sieve
short_description: Manage a Sieve script (mail rules) of an estafeta account
description:
  - Stores, activates, deactivates or deletes one Sieve script (RFC 5228) of an account of the
    estafeta mail server through its command line (C(estafeta sieve ...)) on the mail host.
    These are the scripts users also manage with ManageSieve clients (RFC 5804).
  - The script is compared with the stored one (C(estafeta sieve get)), so the module changes
    nothing when they are the same. A script that does not compile is refused with its
    C(line:column), in check mode too (C(estafeta sieve check)).
  - An account has at most one active script, the one that runs for its mail.
options:
  address:
    description:
      - The account's mail address. The account must exist (M(estafeta_account) creates it).
    type: str
    required: true
  name:
    description:
      - The script's name (1 to 128 characters, no control characters), as ManageSieve
        clients show it.
    type: str
    required: true
  state:
    description:
      - V(present) stores O(content) under O(name).
      - V(absent) deletes the script; when it is the active one, the account is left without an
        active script (its mail goes to the INBOX).
    type: str
    choices: [present, absent]
    default: present
  content:
    description:
      - The script's text. Required with O(state=present).
      - The server checks it against its C([sieve]) limits (size, number of scripts) as well.
    type: str
  active:
    description:
      - V(true) makes this script the account's active one (another active script stops running).
      - V(false) deactivates it if it is the active one; the account then runs no script.
      - Left as it is when not given.
    type: bool
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
    description: Finds out what would change, by reading and compiling only, and changes nothing.
  diff_mode:
    support: full
    description: Shows the script's text and whether it is active, before and after.
notes:
  - Runs on the mail host. The CLI's error messages (no such account, syntax errors with
    C(line:column), quota) are returned as the failure message.
  - In check mode an account that does not exist yet (it would be created by an earlier task)
    is reported as a change instead of a failure.
seealso:
  - module: estafeta_account
author:
  - Estafeta maintainers
"""

EXAMPLES = r"""
- name: File the dev list into a folder, and run these rules
  estafeta_sieve:
    address: alice@example.org
    name: rules
    content: |
      require ["fileinto", "mailbox"];
      if header :contains "List-Id" "<dev.lists.example.org>" {
          fileinto :create "Lists/dev";
      }
    active: true

- name: Store a script from a file on the controller, without activating it
  estafeta_sieve:
    address: alice@example.org
    name: spare
    content: "{{ lookup('ansible.builtin.file', 'sieve/spare.sieve', rstrip=false) }}"

- name: Delete a script
  estafeta_sieve:
    address: alice@example.org
    name: old
    state: absent
"""

RETURN = r"""
address:
  description: The account's address in estafeta's canonical form.
  returned: always
  type: str
  sample: alice@example.org
name:
  description: The script's name.
  returned: always
  type: str
  sample: rules
active:
  description: Whether the script is (or, in check mode, would be) the account's active one.
  returned: always
  type: bool
  sample: true
script_changed:
  description: Whether the script's text was (or would be) stored or deleted.
  returned: always
  type: bool
  sample: false
"""

import unicodedata  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.estafeta import EstafetaCLI, estafeta_argument_spec  # noqa: E402

# Exit code of `estafeta sieve check` for a script that does not compile.
EXIT_SYNTAX = 2


class Script:
    """One run: read the state through the CLI, plan, then apply (unless checking)."""

    def __init__(self, module, cli):
        self.module = module
        self.cli = cli
        self.params = module.params

    # -- the CLI with the script on standard input -------------------------------

    def run_with_script(self, args, ok=(0,)):
        """``estafeta ... -`` with the script's exact text on stdin.

        EstafetaCLI.run adds a line break to stdin (it is made for passwords);
        a script must arrive byte for byte, or every later run would see a
        difference.
        """
        command = [self.cli.executable, "-c", self.cli.config, *args]
        rc, out, err = self.module.run_command(
            command,
            data=self.params["content"],
            binary_data=True,
            check_rc=False,
            expand_user_and_vars=False,
        )
        if rc not in ok:
            reason = (err or out).strip() or f"exit code {rc}"
            reason = reason.removeprefix("estafeta: ").replace("<stdin>", self.params["name"])
            self.module.fail_json(
                msg=f"Sieve script {self.params['name']} of {self.address}: {reason}",
                rc=rc,
                stdout=out,
                stderr=err,
                cmd=command,
            )
        return rc, out, err

    # -- the run -------------------------------------------------------------------

    def run(self):
        # rfc5804:1.6 — names are compared in Unicode NFC, as the server stores them.
        name = self.params["name"] = unicodedata.normalize("NFC", self.params["name"])
        content = self.params["content"]
        present = self.params["state"] == "present"
        if not name or not name.strip():
            self.module.fail_json(msg="name must not be empty")
        if present and content is None:
            self.module.fail_json(msg="content is required with state=present")
        if present and not content.strip():
            self.module.fail_json(
                msg=f"content of {name} is empty: give the script's text, or state=absent"
            )
        (self.address,) = self.cli.normalize([self.params["address"]], local=True)

        if self.address not in self.cli.users():
            if self.module.check_mode and present:
                # An earlier task (estafeta_account) would create it.
                return self.result(
                    None, {"content": content, "active": bool(self.params["active"])}
                )
            if not present:
                return self.result(None, None)
            self.module.fail_json(
                msg=f"no account {self.address}: create it first (estafeta_account)"
            )

        scripts = self.cli.json("sieve", "list", "--json", "--", self.address)
        entry = next((s for s in scripts if s["name"] == name), None)
        before = None
        if entry is not None:
            _, text, _ = self.cli.run("sieve", "get", "--", self.address, name)
            before = {"content": text, "active": bool(entry["active"])}

        if not present:
            if before is not None and not self.module.check_mode:
                if before["active"]:
                    self.cli.run("sieve", "deactivate", "--", self.address)
                self.cli.run("sieve", "delete", "--", self.address, name)
            return self.result(before, None)

        wanted_active = self.params["active"]
        was_active = before is not None and before["active"]
        after = {
            "content": content,
            "active": was_active if wanted_active is None else wanted_active,
        }
        script_changed = before is None or before["content"] != content
        if script_changed:
            # Refused scripts fail here, with line:column, in check mode too.
            self.run_with_script(["sieve", "check", "-"], ok=(0,))
        if not self.module.check_mode:
            if script_changed:
                activate = ["--activate"] if after["active"] else []
                self.run_with_script(
                    ["sieve", "put", "--json", *activate, "--", self.address, name]
                )
            elif after["active"] and not was_active:
                self.cli.run("sieve", "activate", "--", self.address, name)
            if was_active and not after["active"]:
                self.cli.run("sieve", "deactivate", "--", self.address)
        return self.result(before, after)

    # -- output ------------------------------------------------------------------

    def result(self, before, after):
        name = self.params["name"]
        old = None if before is None else before["content"]
        new = None if after is None else after["content"]
        result = {
            "changed": before != after,
            "address": self.address,
            "name": name,
            "active": bool(after and after["active"]),
            "script_changed": old != new,
        }
        if self.module._diff:
            header = f"estafeta sieve script {name} of {self.address}"
            result["diff"] = {
                "before_header": header,
                "after_header": header,
                "before": render(before),
                "after": render(after),
            }
        return result


def render(state):
    """A script as diff text: whether it is active, then its text."""
    if state is None:
        return ""
    text = state["content"]
    mark = "# (the active script)\n" if state["active"] else "# (not active)\n"
    return mark + text + ("" if text.endswith("\n") else "\n")


def main():
    argument_spec = {
        "address": {"type": "str", "required": True},
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "content": {"type": "str"},
        "active": {"type": "bool"},
    }
    argument_spec.update(estafeta_argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_if=[("state", "present", ("content",))],
    )
    cli = EstafetaCLI(module)
    module.exit_json(**Script(module, cli).run())


if __name__ == "__main__":
    main()
