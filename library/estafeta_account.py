#!/usr/bin/python
"""Ansible module: an estafeta mail account, its quota and its aliases."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: estafeta_account
short_description: Manage an estafeta mail account, its quota and its aliases
description:
  - Creates, updates or deletes an account of the estafeta mail server through its
    command line (C(estafeta user ...), C(estafeta alias ...)) on the mail host.
  - Passwords are compared with C(estafeta user verify), which only answers yes or no,
    so the module is idempotent without ever reading or showing a password.
  - Addresses are compared in the canonical form estafeta stores (lower case, IDN
    domains as A-labels), so C(Alice@Example.ORG) and C(alice@example.org) are one account.
options:
  address:
    description:
      - The account's mail address. Its domain must be one of the configured C(domains).
    type: str
    required: true
  state:
    description:
      - V(present) creates or updates the account.
      - V(absent) deletes it. Its mail is kept under C(data_dir/deleted/), and it is taken
        out of every alias (an alias left without targets disappears).
    type: str
    choices: [present, absent]
    default: present
  password:
    description:
      - The account's password, at least 12 characters and not guessable (estafeta refuses
        common and address-derived passwords). Required to create an account.
      - For an existing account it is checked with C(estafeta user verify) and set only
        if it differs (see O(update_password)).
    type: str
  update_password:
    description:
      - V(always) sets O(password) on an existing account when it differs.
      - V(on_create) sets it only when the account is created.
    type: str
    choices: [always, on_create]
    default: always
  quota:
    description:
      - The account's storage quota (IMAP QUOTA), in bytes or with a unit such as
        V(512M) or V(10G) (powers of 1024).
      - V(0) makes the account follow the global C([limits] quota) again.
      - Left as it is when not given.
    type: raw
  aliases:
    description:
      - Alias addresses that deliver to this account (a V(@domain) catch-all too).
        Missing ones are created pointing to the account.
      - An alias of that name that already points elsewhere is an error; delete it first.
      - Left as they are when not given.
    type: list
    elements: str
  aliases_exclusive:
    description:
      - Also delete the aliases whose only target is this account and that are not
        listed in O(aliases). Aliases with other targets too are never touched.
      - Has no effect without O(aliases).
    type: bool
    default: false
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
    description: Finds out what would change, by reading only, and changes nothing.
  diff_mode:
    support: full
    description: Shows address, quota and aliases before and after; never the password.
notes:
  - Runs on the mail host. The CLI's error messages (bad address, domain not configured,
    password too short, ...) are returned as the failure message.
seealso:
  - module: estafeta_dkim_key
author:
  - Estafeta maintainers
"""

EXAMPLES = r"""
- name: Create the postmaster's account
  estafeta_account:
    address: admin@example.org
    password: "{{ vault_admin_password }}"
    quota: 10G
    aliases:
      - postmaster@example.org
      - abuse@example.org

- name: Set a first password only, let the user change it later
  estafeta_account:
    address: alice@example.org
    password: "{{ initial_password }}"
    update_password: on_create

- name: Keep exactly these aliases for bob (others that lead only to him go)
  estafeta_account:
    address: bob@example.org
    aliases: [robert@example.org]
    aliases_exclusive: true

- name: Delete an account (its mail is kept under data_dir/deleted/)
  estafeta_account:
    address: carol@example.org
    state: absent
"""

RETURN = r"""
address:
  description: The account's address in estafeta's canonical form.
  returned: always
  type: str
  sample: alice@example.org
quota:
  description:
    - The account's own quota in bytes after the run; 0 means the global C([limits] quota).
    - V(null) when the account does not exist (O(state=absent)).
  returned: always
  type: int
  sample: 10737418240
aliases:
  description: The aliases that point to the account after the run, sorted.
  returned: always
  type: list
  elements: str
  sample: [abuse@example.org, postmaster@example.org]
password_changed:
  description: Whether the password was (or, in check mode, would be) set.
  returned: always
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.common.text.formatters import human_to_bytes  # noqa: E402
from ansible.module_utils.estafeta import EstafetaCLI, estafeta_argument_spec  # noqa: E402

MAX_QUOTA = 2**63 - 1  # what the accounts database stores


class Account:
    """One run: read the state through the CLI, plan, then apply (unless checking)."""

    def __init__(self, module, cli):
        self.module = module
        self.cli = cli
        self.params = module.params

    # -- inputs ----------------------------------------------------------------

    def quota(self):
        """The wanted quota in bytes, or None to leave it."""
        value = self.params["quota"]
        if value is None:
            return None
        problem = "use a number of bytes or a size such as 512M or 10G (0 = the global quota)"
        if isinstance(value, bool):
            self.module.fail_json(msg=f"quota {value!r}: {problem}")
        if isinstance(value, int):
            quota = value
        else:
            try:
                quota = human_to_bytes(str(value).strip())
            except ValueError:
                self.module.fail_json(msg=f"quota {value!r}: {problem}")
        if not 0 <= quota <= MAX_QUOTA:
            self.module.fail_json(msg=f"quota {value!r}: {problem}")
        return quota

    def canonical_names(self):
        """The account's canonical address and those of the wanted aliases (or None)."""
        address = self.params["address"]
        if address.startswith("@"):
            self.module.fail_json(
                msg=f"address {address}: a catch-all cannot be an account; "
                "list it in the aliases of an account instead"
            )
        wanted = self.params["aliases"]
        present = self.params["state"] == "present"
        names = [address, *(wanted or [])] if present else [address]
        # --local: an account or alias outside the configured domains fails here,
        # in check mode too, with the CLI's message.
        canonical = self.cli.normalize(names, local=present)
        aliases = None if wanted is None else list(dict.fromkeys(canonical[1:]))
        return canonical[0], aliases

    # -- the run -----------------------------------------------------------------

    def run(self):
        # Check the module's own inputs before asking the CLI anything.
        quota = self.quota()
        password = self.params["password"]
        if password == "":
            self.module.fail_json(msg="password must not be empty")
        if password is not None and ("\n" in password or "\r" in password):
            # The CLI reads one line: the rest would be silently dropped.
            self.module.fail_json(msg="password must be a single line (no line breaks)")
        address, wanted_aliases = self.canonical_names()
        users = self.cli.users()
        all_aliases = self.cli.aliases()
        exists = address in users
        before = None
        if exists:
            before = {
                "quota": users[address],
                "aliases": sorted(s for s, targets in all_aliases.items() if address in targets),
            }
        if self.params["state"] == "absent":
            return self.absent(address, before)
        return self.present(address, before, users, all_aliases, wanted_aliases, quota)

    def absent(self, address, before):
        changed = before is not None
        if changed and not self.module.check_mode:
            self.cli.run("user", "del", "--", address)
        return self.result(address, before, None, changed, password_changed=False)

    def present(self, address, before, users, all_aliases, wanted_aliases, quota):
        password = self.params["password"]
        if before is None and password is None:
            self.module.fail_json(
                msg=f"account {address} does not exist: a password is needed to create it"
            )

        password_changed = before is None
        on_create_only = self.params["update_password"] == "on_create"  # noqa: S105 (a mode)
        if before is not None and password is not None and not on_create_only:
            password_changed = not self.cli.password_matches(address, password)

        old_quota = 0 if before is None else before["quota"]
        new_quota = old_quota if quota is None else quota

        to_add, to_remove = self.plan_aliases(address, users, all_aliases, wanted_aliases)
        old_aliases = [] if before is None else before["aliases"]
        new_aliases = sorted(set(old_aliases).difference(to_remove).union(to_add))

        after = {"quota": new_quota, "aliases": new_aliases}
        changed = before != after or password_changed
        # "--" everywhere: an address may start with "-" (it is atext).
        if changed and not self.module.check_mode:
            if before is None:
                self.cli.run("user", "add", "--password-stdin", "--", address, stdin=password)
            elif password_changed:
                self.cli.run("user", "passwd", "--password-stdin", "--", address, stdin=password)
            if new_quota != old_quota:
                self.cli.run("user", "quota", "--", address, str(new_quota))
            for source in to_remove:
                self.cli.run("alias", "del", "--", source)
            for source in to_add:
                self.cli.run("alias", "add", "--", source, address)
        return self.result(address, before, after, changed, password_changed)

    def plan_aliases(self, address, users, all_aliases, wanted):
        """The alias sources to create and to delete, in order."""
        if wanted is None:
            return [], []
        to_add = []
        for source in wanted:
            if source == address:
                self.module.fail_json(msg=f"alias {source} is the account's own address")
            if source in users:
                self.module.fail_json(
                    msg=f"{source} is an account, so it cannot be an alias of {address}; "
                    "delete that account or drop it from aliases"
                )
            targets = all_aliases.get(source)
            if targets is None:
                to_add.append(source)
            elif address not in targets:
                self.module.fail_json(
                    msg=f"alias {source} exists and points to {', '.join(targets)}, "
                    f"not to {address}: delete it first (estafeta alias del {source}) "
                    "or drop it from aliases"
                )
        to_remove = []
        if self.params["aliases_exclusive"]:
            to_remove = sorted(
                source
                for source, targets in all_aliases.items()
                if targets == [address] and source not in wanted
            )
        return to_add, to_remove

    # -- output ------------------------------------------------------------------

    def result(self, address, before, after, changed, password_changed):
        result = {
            "changed": changed,
            "address": address,
            "quota": None if after is None else after["quota"],
            "aliases": [] if after is None else after["aliases"],
            "password_changed": password_changed,
        }
        if self.module._diff:
            result["diff"] = {
                "before_header": f"estafeta account {address}",
                "after_header": f"estafeta account {address}",
                "before": render(address, before),
                "after": render(address, after, password_changed),
            }
        return result


def render(address, state, password_changed=False):
    """An account as diff text (YAML-like); the password only as "(changed)"."""
    if state is None:
        return ""
    quota = state["quota"]
    lines = [
        f"address: {address}",
        f"quota: {quota}" + ("  # the global [limits] quota" if quota == 0 else ""),
        "aliases:" + ("" if state["aliases"] else " []"),
        *(f"  - {source}" for source in state["aliases"]),
    ]
    if password_changed:
        lines.append("password: (changed)")
    return "\n".join(lines) + "\n"


def main():
    argument_spec = {
        "address": {"type": "str", "required": True},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "password": {"type": "str", "no_log": True},
        "update_password": {
            "type": "str",
            "default": "always",
            "choices": ["always", "on_create"],
            "no_log": False,  # the name looks secret, the value is not
        },
        "quota": {"type": "raw"},
        "aliases": {"type": "list", "elements": "str"},
        "aliases_exclusive": {"type": "bool", "default": False},
    }
    argument_spec.update(estafeta_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    cli = EstafetaCLI(module)
    module.exit_json(**Account(module, cli).run())


if __name__ == "__main__":
    main()
