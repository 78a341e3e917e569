#!/usr/bin/python
"""Ansible module: an estafeta DKIM signing key and the TXT record to publish."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: estafeta_dkim_key
short_description: Manage an estafeta DKIM signing key and get its DNS record
description:
  - Creates, replaces or removes the DKIM signing key of a domain and selector through
    the estafeta command line (C(estafeta dkim keygen|list|remove)) on the mail host.
    Keys live in C(data_dir/dkim/<domain>/<selector>.pem); every key of a domain signs
    its outgoing mail, and a running server picks up changes at the next message.
  - Returns the TXT record to publish at RV(record_name), ready for a DNS module.
options:
  domain:
    description:
      - The signing domain (C(d=)). To create a key it must be one of the configured
        C(domains); removing works for any domain.
    type: str
    required: true
  selector:
    description:
      - The selector (C(s=)), made of letters, digits, V(-) and V(_).
    type: str
    required: true
  algorithm:
    description:
      - The key type of a new key. An existing key of the other type is an error unless
        O(rotate=true), which replaces it.
    type: str
    choices: [rsa, ed25519]
    default: rsa
  state:
    description:
      - V(present) makes sure the key exists; V(absent) deletes the key file.
      - Remove the DNS record only after the key is gone, or mail signed just before
        fails verification.
    type: str
    choices: [present, absent]
    default: present
  rotate:
    description:
      - Replace the key with a new one (C(estafeta dkim keygen --force)), also to change
        its algorithm. Every run with V(true) makes a new key and reports a change, so
        set it for one run only and publish the new RV(txt) at once.
      - For a rotation without a gap, create a key under a new selector, publish it, and then
        remove the old one.
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
    description: Reports whether a key would be created, replaced or removed and writes nothing.
  diff_mode:
    support: full
    description: Shows the TXT record before and after.
notes:
  - Runs on the mail host.
seealso:
  - module: estafeta_account
author:
  - Estafeta maintainers
"""

EXAMPLES = r"""
- name: Create the DKIM key of example.org
  estafeta_dkim_key:
    domain: example.org
    selector: s2025
  register: estafeta__register_dkim

- name: Add an Ed25519 key next to it (dual signatures, RFC 8463)
  estafeta_dkim_key:
    domain: example.org
    selector: e2025
    algorithm: ed25519

- name: Show the record to publish
  ansible.builtin.debug:
    msg: "{{ estafeta__register_dkim.record_name }} TXT {{ estafeta__register_dkim.txt }}"

- name: Retire an old key
  estafeta_dkim_key:
    domain: example.org
    selector: s2019
    state: absent
"""

RETURN = r"""
txt:
  description:
    - The TXT record value, unquoted and in one piece (split it into 255-octet strings
      if your DNS tool does not).
    - V(null) when there is no key, and in check mode when a key would be created or replaced.
  returned: always
  type: str
  sample: "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA..."
record_name:
  description: Where to publish the record, without the trailing dot.
  returned: always
  type: str
  sample: s2025._domainkey.example.org
domain:
  description: The domain in estafeta's canonical form (lower case, IDNs as A-labels).
  returned: always
  type: str
  sample: example.org
selector:
  description: The selector.
  returned: always
  type: str
  sample: s2025
algorithm:
  description: The key's algorithm after the run; V(null) when there is no key.
  returned: always
  type: str
  sample: rsa
"""

import re  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.estafeta import EstafetaCLI, estafeta_argument_spec  # noqa: E402

# The CLI's rule for selectors (they name a file), checked here too so that
# check mode refuses what a real run would.
_SELECTOR = re.compile(r"[A-Za-z0-9_-]+")


class DKIMKey:
    """One run: find the key through the CLI, decide, then act (unless checking)."""

    def __init__(self, module, cli):
        self.module = module
        self.cli = cli
        self.params = module.params

    def find(self, domain, selector):
        for key in self.cli.dkim_keys(domain):
            if key["selector"] == selector:
                return key
        return None

    def run(self):
        p = self.params
        selector = p["selector"]
        if not _SELECTOR.fullmatch(selector):
            self.module.fail_json(msg=f"selector {selector!r}: use letters, digits, '-' and '_'")
        present = p["state"] == "present"
        # --local: creating a key needs a configured domain (as keygen does), in check mode too.
        domain = self.cli.normalize([f"@{p['domain']}"], local=present)[0][1:]
        record_name = f"{selector}._domainkey.{domain}"
        before = self.find(domain, selector)
        if present:
            changed, after = self.present(domain, selector, record_name, before)
        else:
            changed, after = self.absent(domain, selector, before)

        result = {
            "changed": changed,
            "txt": None if after is None else after["txt"],
            "record_name": record_name,
            "domain": domain,
            "selector": selector,
            "algorithm": None if after is None else after["algorithm"],
        }
        if self.module._diff:
            result["diff"] = {
                "before_header": record_name,
                "after_header": record_name,
                "before": render(record_name, before),
                "after": render(record_name, after),
            }
        return result

    def present(self, domain, selector, record_name, before):
        """``(changed, key after)``; in check mode a new key has no txt yet."""
        algorithm = self.params["algorithm"]
        rotate = self.params["rotate"]
        if before is not None and before["algorithm"] != algorithm and not rotate:
            self.module.fail_json(
                msg=f"the DKIM key {record_name} is {before['algorithm']}, not {algorithm}: "
                "set rotate=true to replace it with a new key (then publish the new "
                "record), or use another selector for a second key"
            )
        if before is not None and not rotate:
            return False, before
        if self.module.check_mode:
            return True, {
                "domain": domain,
                "selector": selector,
                "algorithm": algorithm,
                "txt": None,
            }
        args = ["dkim", "keygen", f"--selector={selector}", f"--algorithm={algorithm}"]
        args += [*(["--force"] if before else []), "--", domain]
        self.cli.run(*args)
        after = self.find(domain, selector)
        if after is None:
            self.module.fail_json(msg=f"estafeta dkim keygen wrote no usable key for {record_name}")
        return True, after

    def absent(self, domain, selector, before):
        if before is None:
            return False, None
        if not self.module.check_mode:
            self.cli.run("dkim", "remove", f"--selector={selector}", "--", domain)
        return True, None


def render(record_name, key):
    """A key as the zone-file line to publish; a key not made yet (check mode) says so."""
    if key is None:
        return ""
    if key["txt"] is None:
        return f"{record_name}. IN TXT (a new {key['algorithm']} key)\n"
    return f'{record_name}. IN TXT "{key["txt"]}"\n'


def main():
    argument_spec = {
        "domain": {"type": "str", "required": True},
        "selector": {"type": "str", "required": True},
        "algorithm": {"type": "str", "default": "rsa", "choices": ["rsa", "ed25519"]},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "rotate": {"type": "bool", "default": False},
    }
    argument_spec.update(estafeta_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    cli = EstafetaCLI(module)
    module.exit_json(**DKIMKey(module, cli).run())


if __name__ == "__main__":
    main()
