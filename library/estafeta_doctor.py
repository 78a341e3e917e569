#!/usr/bin/python
"""Ansible module: run ``estafeta doctor`` on a mail host and fail with what to fix."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: estafeta_doctor
short_description: Check what receivers look at, with estafeta doctor on the mail host
description:
  - Runs C(estafeta doctor --json) through the estafeta command line on the mail host. It
    checks the sending addresses on DNS blocklists, their PTR records and the HELO name, SPF (fully
    expanded, the 10-lookup limit, the sending addresses covered), the DKIM keys against
    their DNS records with a test signature, DMARC, MTA-STS (the policy fetched over HTTPS,
    its id, the MX), TLS-RPT, TLSA against the live certificate, the certificate of every TLS
    listener, and the answers of each zone's authoritative servers against the resolvers.
  - Returns every finding. Fails when a check fails (with O(strict), also when one warns),
    with a message that names each problem and its fix.
  - Nothing is changed anywhere, so the module never reports C(changed) and runs in check
    mode too. Its network steps have timeouts and the whole run is bounded by O(max_time).
options:
  ip:
    description:
      - The addresses mail is sent from. Default is what the doctor finds (C([queue]
        source_address), or the host's route to the internet).
    type: list
    elements: str
    default: []
  resolvers:
    description:
      - Recursive resolvers to ask, as C(IP) or C(IP:PORT); the first is used by every check.
        Default is the configuration's C([dns] nameservers), or the system's.
    type: list
    elements: str
    default: []
  authoritative:
    description:
      - Servers to ask as every zone's authoritative servers, as C(IP) or C(IP:PORT).
        Default is each zone's NS records.
    type: list
    elements: str
    default: []
  blocklists:
    description:
      - DNS blocklist zones to look the sending addresses up in, besides the configuration's
        C([[dnsbl.zone]]), for example C(zen.spamhaus.org).
    type: list
    elements: str
    default: []
  ca_files:
    description:
      - PEM files of CA certificates to trust besides the system's and C([queue] ca_file),
        for the certificates of the listeners and the MTA-STS policy host.
    type: list
    elements: path
    default: []
  checks:
    description: Run only these checks. Default is every check.
    type: list
    elements: str
    choices:
      - blocklist
      - ptr
      - helo
      - spf
      - dkim
      - dmarc
      - mta-sts
      - tls-rpt
      - certificate
      - tlsa
      - dns-views
    default: []
  strict:
    description: Fail on warnings too.
    type: bool
    default: false
  timeout:
    description: Seconds for each network step (a DNS query, a connection).
    type: float
    default: 5
  max_time:
    description: Seconds for the whole run; a check still running then fails.
    type: float
    default: 60
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
    description: The doctor only reads, so it runs in check mode as it does otherwise.
  diff_mode:
    support: none
notes:
  - Runs on the mail host, as root or as the user estafeta runs as (it reads the DKIM keys).
  - Right after a DNS change the resolvers may still answer the old records; the
    C(dns-views) finding says so. Name the zone's primary in O(resolvers) to check what it
    serves now.
  - docs/doctor.md in the estafeta repository explains every check.
seealso:
  - module: mail_dns_check
  - module: mail_deliverability
author:
  - Estafeta maintainers
"""

EXAMPLES = r"""
- name: Check the mail host as receivers see it
  estafeta_doctor:
    executable: /usr/local/sbin/estafeta
    blocklists: [zen.spamhaus.org, bl.spamcop.net]
  register: doctor

- name: Show the warnings
  ansible.builtin.debug:
    msg: "{{ doctor.problems }}"

- name: Check SPF and PTR of a host behind NAT, asking the zone's primary
  estafeta_doctor:
    ip: [203.0.113.25]
    resolvers: [192.0.2.53]
    checks: [spf, ptr, helo]
"""

RETURN = r"""
status:
  description: The worst status of the findings, V(ok), V(warn) or V(fail).
  returned: when the doctor ran
  type: str
  sample: warn
summary:
  description: How many findings have each status.
  returned: when the doctor ran
  type: dict
  sample: {ok: 14, warn: 1, fail: 0}
problems:
  description: Each finding that is not ok, as one line with its fix.
  returned: when the doctor ran
  type: list
  elements: str
  sample:
    - "WARN dmarc _dmarc.example.org: p=none: receivers do nothing with mail that fails DMARC
      (fix: once the reports show that all your mail passes, publish p=quarantine)"
findings:
  description: Every finding, as C(estafeta doctor --json) gives it.
  returned: when the doctor ran
  type: list
  elements: dict
  contains:
    check:
      description: The check, such as V(spf) or V(certificate).
      type: str
    subject:
      description: What was looked at (a DNS name, a zone, a listener).
      type: str
    status:
      description: V(ok), V(warn) or V(fail).
      type: str
    detail:
      description: What was found.
      type: str
    fix:
      description: What to do; empty when the status is V(ok).
      type: str
    domain:
      description: The mail domain (or, for the host's own checks, the host name) it belongs to.
      type: str
hostname:
  description: The host name (the HELO name) the doctor checked.
  returned: when the doctor ran
  type: str
  sample: mx1.example.org
addresses:
  description: The sending addresses checked, each with how it was found.
  returned: when the doctor ran
  type: list
  elements: dict
  sample: [{address: 192.0.2.25, source: the route to the internet}]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.estafeta import EstafetaCLI, estafeta_argument_spec  # noqa: E402
from ansible.module_utils.estafeta_doctor import (  # noqa: E402
    doctor_argument_spec,
    doctor_options,
    run_doctor,
)


def main():
    argument_spec = doctor_argument_spec()
    argument_spec.update(estafeta_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    result, failure = run_doctor(module, EstafetaCLI(module), doctor_options(module.params))
    if failure:
        module.fail_json(msg=failure, changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
