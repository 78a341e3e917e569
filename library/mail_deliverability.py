#!/usr/bin/python
"""Ansible module: run estafeta doctor on the mail host, send a test message by
submission and wait for it over IMAP."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mail_deliverability
short_description: Prove that mail goes through and that receivers will take it
description:
  - With O(doctor) (the default), first runs C(estafeta doctor --json) on the host the module
    runs on, which is then the mail host. It checks the sending addresses on DNS blocklists,
    PTR and HELO, SPF, DKIM with a test signature, DMARC, MTA-STS, TLS-RPT, TLSA, the certificate of
    every TLS listener, and each zone's authoritative servers against the resolvers. Its
    findings are returned in RV(doctor); the task fails when a check fails (with
    O(doctor_strict), also when one warns), naming each problem and its fix, after the test
    message has been sent and found.
  - Then logs in over IMAP on the receiving host, submits a test message on the submission port of
    the sending host (AUTH over TLS), then polls the INBOX and the Junk mailbox until the
    message arrives or O(timeout) passes.
  - The message carries a unique token in its C(Subject) and its own C(Message-ID). Once it has
    arrived, its C(Authentication-Results) headers are parsed into RV(authentication_results)
    and checked against O(require).
  - Fails with a clear message when the submission server refuses the connection, the login,
    the sender, a recipient or the message (with the server's reply code and text), when TLS
    certificate verification fails, when the IMAP login fails, when the message does not
    arrive in time, and when a verdict differs from O(require).
  - The test message is sent from the host the module runs on. With O(doctor=false) the module
    uses only the Python standard library and runs anywhere, for example on the controller with
    C(delegate_to) set to C(localhost), so that mail is submitted the way a client on the
    internet submits it.
version_added: "1.0.0"
options:
  smtp_host:
    description: The host to submit the message to.
    type: str
    required: true
  smtp_port:
    description: The submission port. Default is 587 for O(smtp_security=starttls), 465 for V(tls).
    type: int
  smtp_security:
    description: V(starttls) (RFC 6409, port 587) or implicit V(tls) (RFC 8314, port 465).
    type: str
    choices: [starttls, tls]
    default: starttls
  smtp_user:
    description: The account to authenticate as on submission.
    type: str
    required: true
  smtp_password:
    description: Its password.
    type: str
    required: true
  from_address:
    description: The envelope sender and C(From) address. Default is O(smtp_user).
    type: str
  to_address:
    description: The recipient.
    type: str
    required: true
  imap_host:
    description: The host whose mailbox receives the message.
    type: str
    required: true
  imap_port:
    description: The IMAP port. Default is 993 for O(imap_security=tls), 143 for V(starttls).
    type: int
  imap_security:
    description: Implicit V(tls) (port 993) or V(starttls) (port 143).
    type: str
    choices: [tls, starttls]
    default: tls
  imap_user:
    description: The account to log in to over IMAP. Default is O(to_address).
    type: str
  imap_password:
    description: Its password.
    type: str
    required: true
  ca_file:
    description:
      - A PEM file of the certificate authorities to trust for both servers.
      - Default is the system trust store.
    type: path
  validate_certs:
    description: Whether to verify the servers' certificates and host names.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the message to arrive after it was submitted; also the timeout of
        each network operation.
    type: int
    default: 60
  poll_interval:
    description: Seconds between two searches of the mailboxes.
    type: float
    default: 1
  subject_prefix:
    description: Text before the token in the C(Subject).
    type: str
    default: Deliverability test
  authserv_id:
    description:
      - Only C(Authentication-Results) headers with this authserv-id (the receiving server's
        name, compared without letter case) are parsed.
      - Default is the authserv-id of the topmost C(Authentication-Results) header, the one the
        last hop added.
    type: str
  require:
    description:
      - Method to required result, such as C(spf), C(dkim) and C(dmarc) mapped to C(pass); a
        list of results accepts any of them. A method without a result counts as C(none).
      - The task fails, naming each method whose verdict differs, when one is not met.
    type: dict
  cleanup:
    description: Whether to delete the test message once it has been found.
    type: bool
    default: true
  doctor:
    description:
      - Whether to run C(estafeta doctor) on the host the module runs on before the message is
        sent. It reads estafeta's configuration and DKIM keys there, so the module must run on
        the mail host, as root or as the user estafeta runs as (C(become)).
      - Set it to V(false) to only send the test message, from wherever the module runs.
    type: bool
    default: true
  doctor_ip:
    description:
      - The addresses mail is sent from. Default is what the doctor finds (C([queue]
        source_address), or the host's route to the internet).
    type: list
    elements: str
    default: []
  doctor_resolvers:
    description:
      - Recursive resolvers the doctor asks, as C(IP) or C(IP:PORT); the first is used by every
        check. Default is the configuration's C([dns] nameservers), or the system's.
    type: list
    elements: str
    default: []
  doctor_authoritative:
    description:
      - Servers the doctor asks as every zone's authoritative servers, as C(IP) or C(IP:PORT).
        Default is each zone's NS records.
    type: list
    elements: str
    default: []
  doctor_blocklists:
    description:
      - DNS blocklist zones to look the sending addresses up in, besides the configuration's
        C([[dnsbl.zone]]), for example C(zen.spamhaus.org).
    type: list
    elements: str
    default: []
  doctor_ca_files:
    description:
      - PEM files of CA certificates the doctor trusts besides the system's and C([queue]
        ca_file), for the certificates of the listeners and the MTA-STS policy host.
    type: list
    elements: path
    default: []
  doctor_checks:
    description: Run only these checks of the doctor. Default is every check.
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
  doctor_strict:
    description: Fail when a check of the doctor warns, too.
    type: bool
    default: false
  doctor_timeout:
    description: Seconds for each network step of the doctor (a DNS query, a connection).
    type: float
    default: 5
  doctor_max_time:
    description: Seconds for the whole doctor run; a check still running then fails.
    type: float
    default: 60
  config:
    description: The estafeta configuration file the doctor reads, passed to the CLI as C(-c).
    type: path
    default: /etc/estafeta/estafeta.toml
  executable:
    description:
      - The C(estafeta) command that runs the doctor, usually in the virtualenv estafeta is
        installed in. A name without C(/) is looked up in E(PATH).
    type: path
    default: /opt/estafeta/bin/estafeta
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode no message is sent. The doctor, which changes nothing, still runs and
        fails the task as it does otherwise; with O(doctor=false) nothing is contacted and the
        module returns C(skipped=true).
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - The module never reports C(changed); it sends a message, but only to see it arrive, and
    with O(cleanup) deletes it again.
  - The IMAP login is made before the message is sent, so that wrong IMAP credentials do not
    leave an unchecked message behind.
  - Without the UIDPLUS extension, O(cleanup) expunges every message flagged as deleted in
    the mailbox where the test message arrived.
  - Right after a DNS change the resolvers may still answer the old records; the doctor's
    C(dns-views) finding says so. Name the zone's primary in O(doctor_resolvers) to check
    what it serves now. docs/doctor.md in the estafeta repository explains every check.
seealso:
  - module: estafeta_doctor
  - module: mail_dns_check
author:
  - Estafeta contributors
"""

EXAMPLES = r"""
- name: Run estafeta doctor on the mail host, then send from example.org to example.net
  mail_deliverability:
    executable: /usr/local/sbin/estafeta
    doctor_blocklists: [zen.spamhaus.org, bl.spamcop.net]
    smtp_host: mx1.example.org
    smtp_user: probe@example.org
    smtp_password: "{{ vault_probe_password }}"
    to_address: probe@example.net
    imap_host: mx1.example.net
    imap_password: "{{ vault_probe_net_password }}"
    require:
      dmarc: pass
  become: true
  register: deliverability

- name: Show what the doctor warns about
  ansible.builtin.debug:
    msg: "{{ deliverability.doctor.problems }}"

- name: From the controller, without the doctor, and wait for DMARC to pass
  mail_deliverability:
    doctor: false
    smtp_host: mx1.example.org
    smtp_user: probe@example.org
    smtp_password: "{{ vault_probe_password }}"
    to_address: probe@example.net
    imap_host: mx1.example.net
    imap_password: "{{ vault_probe_net_password }}"
    authserv_id: mx1.example.net
    require:
      spf: pass
      dkim: pass
      dmarc: pass
    timeout: 120
  delegate_to: localhost
  register: deliverability

- name: Show how long delivery took
  ansible.builtin.debug:
    msg: "{{ deliverability.latency }} s into {{ deliverability.folder }}"

- name: Submit on 465 and read over IMAP STARTTLS with a private CA, keeping the message
  mail_deliverability:
    doctor: false
    smtp_host: 192.0.2.25
    smtp_security: tls
    smtp_user: alice@example.org
    smtp_password: "{{ alice_password }}"
    to_address: bob@example.org
    imap_host: 192.0.2.25
    imap_security: starttls
    imap_password: "{{ bob_password }}"
    ca_file: /etc/ssl/private-ca.pem
    cleanup: false
  delegate_to: localhost
"""

RETURN = r"""
latency:
  description: Seconds from the start of the SMTP transaction until the message was found.
  returned: success
  type: float
  sample: 1.84
folder:
  description: The mailbox the message arrived in (C(INBOX), or the Junk mailbox).
  returned: success
  type: str
  sample: INBOX
message_id:
  description: The C(Message-ID) of the test message.
  returned: success
  type: str
  sample: <170000000.123.456@example.org>
subject:
  description: The C(Subject) of the test message (it holds the token).
  returned: success
  type: str
  sample: Deliverability test 5f0c8d2e4b1a4f7e9a1c2b3d4e5f6a7b
authserv_id:
  description: The authserv-id whose C(Authentication-Results) were parsed; empty if none.
  returned: success
  type: str
  sample: mx1.example.net
authentication_results:
  description:
    - Method to result, from every C(Authentication-Results) header of RV(authserv_id).
    - When a method has several results (one per DKIM signature), C(pass) wins.
  returned: success
  type: dict
  sample: {spf: pass, dkim: pass, dmarc: pass, arc: none}
authentication_results_details:
  description: Each result with its reason and properties (such as C(header.d)).
  returned: success
  type: list
  elements: dict
  sample:
    - {method: dkim, result: pass, reason: "", properties: {header.d: example.org, header.s: s1}}
authentication_results_raw:
  description: The parsed headers as received, one per line (folding kept).
  returned: success
  type: str
  sample: "Authentication-Results: mx1.example.net;\n\tspf=pass smtp.mailfrom=example.org"
deleted:
  description: Whether the test message was deleted (O(cleanup)).
  returned: success
  type: bool
  sample: true
skipped:
  description: True in check mode without O(doctor), where nothing is contacted.
  returned: check mode, without O(doctor)
  type: bool
  sample: true
doctor:
  description:
    - What C(estafeta doctor) found on the host (O(doctor)), as the estafeta_doctor module
      returns it - C(status) (the worst, V(ok), V(warn) or V(fail)), C(summary) (how many
      findings have each status), C(problems) (each finding that is not ok, as one line with
      its fix), C(findings) (every finding, with C(check), C(subject), C(status), C(detail),
      C(fix) and C(domain)), C(hostname) and C(addresses) (the sending addresses checked).
  returned: when the doctor ran, also when the task fails
  type: dict
  sample:
    status: warn
    summary: {ok: 17, warn: 1, fail: 0}
    problems:
      - "WARN dmarc _dmarc.example.org: p=none: receivers do nothing with mail that fails
        DMARC (fix: once the reports show that all your mail passes, publish p=quarantine)"
    hostname: mx1.example.org
"""

# Ansible reads DOCUMENTATION, EXAMPLES and RETURN first: the imports follow them.
import contextlib  # noqa: E402
import email.utils  # noqa: E402
import imaplib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import smtplib  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402
from email.message import EmailMessage  # noqa: E402
from email.parser import BytesHeaderParser  # noqa: E402
from email.policy import compat32  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.estafeta import EstafetaCLI, estafeta_argument_spec  # noqa: E402
from ansible.module_utils.estafeta_doctor import (  # noqa: E402
    doctor_argument_spec,
    doctor_options,
    run_doctor,
)

# Names of the Junk mailbox when the server does not mark it with \Junk (RFC 6154).
JUNK_NAMES = ("junk", "spam", "junk e-mail", "junk email", "bulk mail")
_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.*)$')


class ProbeError(Exception):
    """A failure to report with fail_json (``extra`` goes into the result)."""

    def __init__(self, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


# -- Authentication-Results (RFC 8601) -------------------------------------------------------


def _strip_comments(text: str) -> str:
    """The text with (nested) comments replaced by a space, quoted strings kept."""
    out: list[str] = []
    depth = 0
    quoted = False
    i = 0
    while i < len(text):
        char = text[i]
        if quoted:
            out.append(char)
            if char == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif char == '"':
                quoted = False
        elif depth:
            if char == "\\":
                i += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if not depth:
                    out.append(" ")
        elif char == "(":
            depth = 1
        else:
            out.append(char)
            quoted = char == '"'
        i += 1
    return "".join(out)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


_PAIR = re.compile(r'([^\s=]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s"]+)')


def parse_authentication_results(value: str) -> tuple[str, list[dict[str, Any]]]:
    """An Authentication-Results field value: its authserv-id and its results,
    each {method, result, reason, properties}."""
    text = " ".join(_strip_comments(value).split())
    parts = _split_outside_quotes(text, ";")
    head = parts[0].strip()
    match = re.match(r'"(?:[^"\\]|\\.)*"|\S+', head)
    authserv_id = _unquote(match.group(0)) if match else ""
    results: list[dict[str, Any]] = []
    for part in parts[1:]:
        pairs = _PAIR.findall(part)
        if not pairs:
            continue  # "none": no results
        method, result = pairs[0]
        entry: dict[str, Any] = {
            "method": method.split("/")[0].lower(),
            "result": _unquote(result).lower(),
            "reason": "",
            "properties": {},
        }
        for key, raw in pairs[1:]:
            if key.lower() == "reason":
                entry["reason"] = _unquote(raw)
            else:
                entry["properties"][key.lower()] = _unquote(raw)
        results.append(entry)
    return authserv_id, results


def _same_id(a: str, b: str) -> bool:
    return a.strip().rstrip(".").lower() == b.strip().rstrip(".").lower()


def authentication_results(
    header_values: list[str], authserv_id: str | None
) -> tuple[str, dict[str, str], list[dict[str, Any]], list[str]]:
    """Select the fields of ``authserv_id`` (default: the topmost field's) and
    merge them: (authserv_id, {method: result}, details, raw values)."""
    parsed = [(value, *parse_authentication_results(value)) for value in header_values]
    if not parsed:
        return authserv_id or "", {}, [], []
    wanted = authserv_id if authserv_id is not None else parsed[0][1]
    verdicts: dict[str, str] = {}
    details: list[dict[str, Any]] = []
    raw: list[str] = []
    for value, serv_id, results in parsed:
        if not _same_id(serv_id, wanted):
            continue
        raw.append(value)
        for entry in results:
            details.append(entry)
            # The first result of a method counts, unless a later one passes.
            if entry["method"] not in verdicts or entry["result"] == "pass":
                verdicts.setdefault(entry["method"], entry["result"])
                if entry["result"] == "pass":
                    verdicts[entry["method"]] = "pass"
    return wanted, verdicts, details, raw


def unmet_requirements(require: dict[str, Any], verdicts: dict[str, str]) -> list[str]:
    """Each required method whose verdict differs, as "dmarc=none (required pass)"."""
    unmet = []
    for method, wanted in require.items():
        accepted = [str(w).lower() for w in (wanted if isinstance(wanted, list) else [wanted])]
        found = verdicts.get(str(method).lower(), "none")
        if found not in accepted:
            unmet.append(f"{str(method).lower()}={found} (required {' or '.join(accepted)})")
    return unmet


# -- the probe ----------------------------------------------------------------------------------


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"


def _imap_text(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc)
    if text.startswith(("b'", 'b"')):
        text = text[2:-1]
    return text


def _imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DeliverabilityProbe:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        p = module.params
        self.timeout = p["timeout"]
        self.smtp_host = p["smtp_host"]
        self.smtp_security = p["smtp_security"]
        self.smtp_port = p["smtp_port"] or (587 if self.smtp_security == "starttls" else 465)
        self.smtp_user = p["smtp_user"]
        self.from_address = p["from_address"] or p["smtp_user"]
        self.to_address = p["to_address"]
        self.imap_host = p["imap_host"]
        self.imap_security = p["imap_security"]
        self.imap_port = p["imap_port"] or (993 if self.imap_security == "tls" else 143)
        self.imap_user = p["imap_user"] or p["to_address"]
        self.smtp_where = f"SMTP {self.smtp_host}:{self.smtp_port}"
        self.imap_where = f"IMAP {self.imap_host}:{self.imap_port}"
        self.context = self._tls_context(p["ca_file"], p["validate_certs"])

    def _tls_context(self, ca_file: str | None, validate: bool) -> ssl.SSLContext:
        if ca_file and not os.path.isfile(ca_file):
            raise ProbeError(f"ca_file {ca_file} does not exist")
        try:
            context = ssl.create_default_context(cafile=ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ProbeError(f"cannot load ca_file {ca_file}: {exc}") from exc
        if not validate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _tls_error(self, where: str, exc: ssl.SSLError) -> ProbeError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            # Self-signed, or signed by a CA we do not trust: say how to fix it.
            untrusted = exc.verify_code in (18, 19, 20, 21)
            return ProbeError(
                f"TLS certificate verification failed for {where}:"
                f" {exc.verify_message or exc.reason}"
                + (" (ca_file should hold the CA that signed it)" if untrusted else "")
            )
        return ProbeError(f"TLS handshake with {where} failed: {exc}")

    # -- IMAP ---------------------------------------------------------------------

    def imap_login(self, password: str) -> imaplib.IMAP4:
        try:
            if self.imap_security == "tls":
                imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    self.imap_host, self.imap_port, ssl_context=self.context, timeout=self.timeout
                )
            else:
                imap = imaplib.IMAP4(self.imap_host, self.imap_port, timeout=self.timeout)
        except ssl.SSLError as exc:
            raise self._tls_error(self.imap_where, exc) from exc
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ProbeError(f"cannot connect to {self.imap_where}: {exc}") from exc
        try:
            if self.imap_security == "starttls":
                try:
                    imap.starttls(ssl_context=self.context)
                except imaplib.IMAP4.error as exc:
                    raise ProbeError(
                        f"STARTTLS failed on {self.imap_where}: {_imap_text(exc)}"
                    ) from exc
            imap.login(self.imap_user, password)
        except ssl.SSLError as exc:
            self.imap_close(imap)
            raise self._tls_error(self.imap_where, exc) from exc
        except imaplib.IMAP4.error as exc:
            self.imap_close(imap)
            raise ProbeError(
                f"IMAP authentication failed for {self.imap_user} at {self.imap_where}:"
                f" {_imap_text(exc)}"
            ) from exc
        except OSError as exc:
            self.imap_close(imap)
            raise ProbeError(f"{self.imap_where}: {exc}") from exc
        except ProbeError:
            self.imap_close(imap)
            raise
        return imap

    @staticmethod
    def imap_close(imap: imaplib.IMAP4) -> None:
        try:
            imap.logout()
        except (OSError, imaplib.IMAP4.error):
            imap.shutdown()

    @staticmethod
    def junk_folder(imap: imaplib.IMAP4) -> str | None:
        """The mailbox flagged \\Junk (RFC 6154), else one named like a Junk folder."""
        typ, data = imap.list()
        if typ != "OK":
            return None
        by_name = None
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            match = _LIST_LINE.match(line or b"")
            if not match:
                continue
            raw = item[1] if isinstance(item, tuple) else match.group("name")
            name = _unquote(raw.decode("utf-8", "replace").strip())
            if "\\junk" in match.group("flags").decode("ascii", "replace").lower().split():
                return name
            if by_name is None and name.lower() in JUNK_NAMES:
                by_name = name
        return by_name

    def search(self, imap: imaplib.IMAP4, folder: str, token: str) -> str | None:
        typ, _ = imap.select(_imap_quote(folder), readonly=True)
        if typ != "OK":
            return None
        typ, data = imap.uid("SEARCH", "HEADER", "Subject", token)
        if typ != "OK" or not data or not data[0]:
            return None
        return data[0].split()[0].decode()

    @staticmethod
    def fetch_header(imap: imaplib.IMAP4, uid: str) -> bytes:
        typ, data = imap.uid("FETCH", uid, "(BODY.PEEK[HEADER])")
        if typ == "OK":
            for item in data:
                if isinstance(item, tuple):
                    return item[1]
        raise ProbeError(f"cannot fetch the header of message UID {uid}: {typ} {data!r}")

    def delete(self, imap: imaplib.IMAP4, folder: str, uid: str) -> bool:
        try:
            if imap.select(_imap_quote(folder))[0] != "OK":
                return False
            if imap.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)")[0] != "OK":
                return False
            typ, data = imap.capability()
            capabilities = data[0].upper().split() if typ == "OK" and data[0] else []
            if b"UIDPLUS" in capabilities:
                return imap.uid("EXPUNGE", uid)[0] == "OK"
            return imap.expunge()[0] == "OK"
        except (OSError, imaplib.IMAP4.error) as exc:
            self.module.warn(f"could not delete the test message: {exc}")
            return False

    # -- SMTP ---------------------------------------------------------------------

    def message(self, token: str) -> EmailMessage:
        domain = self.from_address.rpartition("@")[2] or None
        msg = EmailMessage()
        msg["From"] = self.from_address
        msg["To"] = self.to_address
        msg["Subject"] = f"{self.module.params['subject_prefix']} {token}".strip()
        msg["Date"] = email.utils.formatdate(localtime=True)
        msg["Message-ID"] = email.utils.make_msgid(domain=domain)
        msg.set_content(
            "This message tests mail delivery; it was sent by the Ansible module"
            f" mail_deliverability.\n\nToken: {token}\n"
        )
        return msg

    def submit(self, password: str, msg: EmailMessage) -> float:
        """Submit ``msg``; return time.monotonic() at the start of the transaction."""
        smtp: smtplib.SMTP
        if self.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(context=self.context, timeout=self.timeout)
        else:
            smtp = smtplib.SMTP(timeout=self.timeout)
        # smtplib takes the TLS server name from _host, which only __init__ sets;
        # connecting here instead keeps the socket closable whatever fails.
        smtp._host = self.smtp_host
        try:
            try:
                code, banner = smtp.connect(self.smtp_host, self.smtp_port)
            except ssl.SSLError as exc:
                raise self._tls_error(self.smtp_where, exc) from exc
            except OSError as exc:
                raise ProbeError(f"cannot connect to {self.smtp_where}: {exc}") from exc
            if code != 220:
                raise ProbeError(
                    f"{self.smtp_where} refused the connection: {_reply(code, banner)}"
                )
            return self._transaction(smtp, password, msg)
        except ssl.SSLError as exc:
            raise self._tls_error(self.smtp_where, exc) from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise ProbeError(
                f"SMTP authentication failed for {self.smtp_user} at {self.smtp_where}:"
                f" {_reply(exc.smtp_code, exc.smtp_error)}"
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            refused = "; ".join(
                f"<{rcpt}>: {_reply(code, text)}" for rcpt, (code, text) in exc.recipients.items()
            )
            raise ProbeError(f"{self.smtp_where} refused the recipient: {refused}") from exc
        except smtplib.SMTPSenderRefused as exc:
            raise ProbeError(
                f"{self.smtp_where} refused the sender <{self.from_address}>:"
                f" {_reply(exc.smtp_code, exc.smtp_error)}"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            raise ProbeError(
                f"{self.smtp_where} refused the message: {_reply(exc.smtp_code, exc.smtp_error)}"
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise ProbeError(f"{self.smtp_where}: {exc}") from exc
        finally:
            smtp.close()

    def _transaction(self, smtp: smtplib.SMTP, password: str, msg: EmailMessage) -> float:
        smtp.ehlo()
        if self.smtp_security == "starttls":
            if not smtp.has_extn("starttls"):
                raise ProbeError(f"{self.smtp_where} does not offer STARTTLS")
            smtp.starttls(context=self.context)
            smtp.ehlo()
        if not smtp.has_extn("auth"):
            raise ProbeError(f"{self.smtp_where} does not offer AUTH")
        # One attempt with one mechanism: smtplib.login would retry a refused
        # password with every other mechanism, and count against rate limits.
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        smtp.user, smtp.password = self.smtp_user, password
        for mechanism, method in (
            ("PLAIN", smtp.auth_plain),
            ("LOGIN", smtp.auth_login),
            ("CRAM-MD5", smtp.auth_cram_md5),
        ):
            if mechanism in offered:
                smtp.auth(mechanism, method, initial_response_ok=mechanism != "LOGIN")
                break
        else:
            raise ProbeError(
                f"{self.smtp_where} offers no AUTH mechanism this module knows"
                f" (PLAIN, LOGIN, CRAM-MD5): {' '.join(offered) or 'none'}"
            )
        started = time.monotonic()
        refused = smtp.send_message(msg, self.from_address, [self.to_address])
        if refused:  # only when some of several recipients are refused
            raise smtplib.SMTPRecipientsRefused(refused)
        # The message is accepted; a rude goodbye does not matter.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        return started

    # -- the whole run --------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        params = self.module.params
        token = secrets.token_hex(16)
        msg = self.message(token)
        imap = self.imap_login(params["imap_password"])
        try:
            junk = self.junk_folder(imap)
            folders = ["INBOX"] + ([junk] if junk and junk.upper() != "INBOX" else [])
            started = self.submit(params["smtp_password"], msg)
            deadline = started + self.timeout
            found: tuple[str, str] | None = None
            while found is None:
                for folder in folders:
                    uid = self.search(imap, folder, token)
                    if uid is not None:
                        found = (folder, uid)
                        break
                else:
                    if time.monotonic() >= deadline:
                        raise ProbeError(
                            f"the message {msg['Message-ID']} (Subject token {token}) did not"
                            f" arrive in {' or '.join(folders)} of {self.imap_user} at"
                            f" {self.imap_where} within {self.timeout}s",
                            message_id=msg["Message-ID"],
                            subject=msg["Subject"],
                        )
                    time.sleep(max(0.05, min(params["poll_interval"], deadline - time.monotonic())))
            latency = time.monotonic() - started
            folder, uid = found
            header = self.fetch_header(imap, uid)
            deleted = self.delete(imap, folder, uid) if params["cleanup"] else False
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ProbeError(f"{self.imap_where}: {_imap_text(exc)}") from exc
        finally:
            self.imap_close(imap)

        parsed = BytesHeaderParser(policy=compat32).parsebytes(header)
        values = [str(v) for v in parsed.get_all("Authentication-Results") or []]
        serv_id, verdicts, details, raw = authentication_results(values, params["authserv_id"])
        result = {
            "changed": False,
            "latency": round(latency, 6),
            "folder": folder,
            "message_id": msg["Message-ID"],
            "subject": msg["Subject"],
            "authserv_id": serv_id,
            "authentication_results": verdicts,
            "authentication_results_details": details,
            "authentication_results_raw": "\n".join(
                "Authentication-Results: " + value.replace("\r\n", "\n").strip() for value in raw
            ),
            "deleted": deleted,
        }
        unmet = unmet_requirements(params["require"] or {}, verdicts)
        if unmet:
            if not values:
                source = "the message carries no Authentication-Results header"
            elif not raw:
                source = f"no Authentication-Results header from {serv_id}"
            else:
                source = f"Authentication-Results from {serv_id}"
            raise ProbeError(
                f"the message arrived in {folder} but does not meet require ({source}): "
                + "; ".join(unmet),
                **result,
            )
        return result


def main() -> None:
    argument_spec: dict[str, Any] = {
        "smtp_host": {"type": "str", "required": True},
        "smtp_port": {"type": "int"},
        "smtp_security": {"type": "str", "choices": ["starttls", "tls"], "default": "starttls"},
        "smtp_user": {"type": "str", "required": True},
        "smtp_password": {"type": "str", "required": True, "no_log": True},
        "from_address": {"type": "str"},
        "to_address": {"type": "str", "required": True},
        "imap_host": {"type": "str", "required": True},
        "imap_port": {"type": "int"},
        "imap_security": {"type": "str", "choices": ["tls", "starttls"], "default": "tls"},
        "imap_user": {"type": "str"},
        "imap_password": {"type": "str", "required": True, "no_log": True},
        "ca_file": {"type": "path"},
        "validate_certs": {"type": "bool", "default": True},
        "timeout": {"type": "int", "default": 60},
        "poll_interval": {"type": "float", "default": 1},
        "subject_prefix": {"type": "str", "default": "Deliverability test"},
        "authserv_id": {"type": "str"},
        "require": {"type": "dict"},
        "cleanup": {"type": "bool", "default": True},
        "doctor": {"type": "bool", "default": True},
    }
    argument_spec.update(doctor_argument_spec(prefix="doctor_"))
    argument_spec.update(estafeta_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if module.params["timeout"] <= 0:
        module.fail_json(msg="timeout must be more than 0")
    # The doctor first: it only reads, and its findings explain a probe that fails.
    extra: dict[str, Any] = {}
    failures: list[str] = []
    if module.params["doctor"]:
        cli = EstafetaCLI(
            module,
            hint="the doctor runs where the module runs: run it on the mail host, or set "
            "doctor: false",
        )
        extra["doctor"], failure = run_doctor(module, cli, doctor_options(module.params, "doctor_"))
        failures += [failure] if failure else []
    if module.check_mode:
        result: dict[str, Any] = {"changed": False, "msg": "check mode: no test message was sent"}
        if not module.params["doctor"]:
            result["skipped"] = True
    else:
        try:
            result = DeliverabilityProbe(module).run()
        except ProbeError as exc:
            result = {"changed": False, **exc.extra}
            failures.insert(0, exc.msg)
    result.update(extra)
    if failures:
        result.pop("msg", None)
        module.fail_json(msg="; ".join(failures), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
