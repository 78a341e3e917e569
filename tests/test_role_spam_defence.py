"""The Ansible side of spam defence (issue 16), on this machine.

- the estafeta configuration rendered from the role defaults, the lab and the
  example inventories passes the real ``estafeta check`` and carries the
  [screen] [dnsbl] [greylist] [spam] [rspamd] tables the variables say;
- ``estafeta__rspamd: true`` makes a random controller password file (0600)
  that is never printed and not replaced on the second run, and [rspamd]
  points at it; a vault password replaces it;
- a wrong value fails the argument-spec check before any task, a wrong
  blocklist code fails ``estafeta check`` naming the key and keeps the file;
- the resolver's unbound.conf for the lab passes ``unbound-checkconf``, and a
  real unbound started from it answers the lab's names and its test
  blocklist entry from a real Knot (stub zones under the RFC 6761 ``test.``
  that unbound would otherwise answer itself) and refuses what the lab does
  not list;
- the rspamd role's files pass ``rspamadm configtest`` with Debian's
  packaged configuration, and a real rspamd started from them answers on the
  normal worker, wants the password on the controller (loopback included)
  and runs no milter (proxy) worker.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import trustme
import yaml

from tests.conftest import free_port
from tests.test_roles import (
    ESTAFETA,
    INVENTORIES,
    RENDER_CONFIG,
    ROOT,
    changed_tasks,
    config_vars,
    failures,
    run_playbook,
    task_results,
)

LOCAL = ["-i", "localhost,"]
ROOT_KEY = Path("/usr/share/dns/root.key")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("localhost", "mx1.example.org", "mx1.example.test")
    chain, key = directory / "fullchain.pem", directory / "privkey.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


def render(
    tmp_path: Path, tls_files: tuple[Path, Path], args: list[str], **extra: Any
) -> dict[str, Any]:
    """Run config.yml of the estafeta role for the inventory in ``args``."""
    variables = {**config_vars(tmp_path, tls_files), **extra}
    rc, output, stderr = run_playbook(RENDER_CONFIG, tmp_path, *args, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    return output


def check(config: Path) -> dict[str, Any]:
    result = subprocess.run(
        [str(ESTAFETA), "-c", str(config), "check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return tomllib.loads(config.read_text())


# -- the estafeta configuration -----------------------------------------------------------------

LOCALHOST_CONFIG = RENDER_CONFIG.replace("hosts: mail_servers", "hosts: localhost")


def test_defaults_render_the_small_vps_settings(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    variables = {**config_vars(tmp_path, tls_files), "estafeta__hostname": "mx.example.org"}
    rc, output, stderr = run_playbook(LOCALHOST_CONFIG, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    data = check(tmp_path / "localhost.toml")
    # The local resolver by default.
    assert data["dns"] == {"nameservers": ["127.0.0.1"]}
    assert data["screen"] == {
        "greeting_pause": "1s",
        "pregreet_ttl": "1d",
        "pregreet_cache": 100000,
        "fcrdns": "signal",
        "helo": "signal",
        "trusted": [],
    }
    # No blocklist zone unless the inventory lists one.
    assert "zone" not in data["dnsbl"] and "domain_zone" not in data["dnsbl"]
    assert data["dnsbl"]["timeout"] == "2s" and data["dnsbl"]["reject_score"] == 1.0
    assert data["greylist"]["enabled"] is True and data["greylist"]["delay"] == "5m"
    assert data["greylist"]["skip_spf_pass"] is True
    assert data["spam"]["enabled"] is True and data["spam"]["threshold"] == 0.9
    # The server's own list of executable types stays in force.
    assert "executable_extensions" not in data["spam"]
    # rspamd is off: no URL, no password file.
    assert data["rspamd"]["url"] == "" and "password_file" not in data["rspamd"]
    assert not (tmp_path / "rspamd.password").exists()

    # Without the resolver, /etc/resolv.conf (no [dns] table).
    variables["estafeta__resolver"] = False
    rc, output, stderr = run_playbook(LOCALHOST_CONFIG, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert "dns" not in check(tmp_path / "localhost.toml")


@pytest.mark.parametrize("inventory", ["lab", "example"])
def test_inventory_blocklists_pass_estafeta_check(
    inventory: str, tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    args, _ = INVENTORIES[inventory]
    render(tmp_path, tls_files, args)
    hosts = ["mx1.example.test", "mx2.example.net"] if inventory == "lab" else ["mx1.example.org"]
    for host in hosts:
        data = check(tmp_path / f"{host}.toml")
        # Every mail host asks its own unbound (the lab's stub zones lead to Knot).
        assert data["dns"]["nameservers"] == ["127.0.0.1"]
        if inventory == "lab":
            # The lab's own test list, of an address no lab host uses.
            assert data["dnsbl"]["zone"] == [
                {"name": "dnsbl.test", "kind": "block", "codes": ["127.0.0.2"], "weight": 1.0}
            ]
            assert "domain_zone" not in data["dnsbl"]
        else:
            assert [z["name"] for z in data["dnsbl"]["zone"]] == ["zen.spamhaus.org"]
            assert data["dnsbl"]["domain_zone"] == [
                {"name": "dbl.spamhaus.org", "codes": ["127.0.1.2-127.0.1.99"]}
            ]


# The default lab's network (no .lab/lab.json): the inventory's templates filled in.
DEFAULT_LAB = {
    "{{ lab__dns_address }}": "198.51.100.2",
    "{{ lab__prefix }}": "198.51.100",
    "{{ lab__net.gateway }}": "198.51.100.1",
    "{{ lab__net.reverse_zone }}": "100.51.198.in-addr.arpa",
    "{{ lab__net.reverse_prefix }}": "100.51.198",
}


def lab_file(name: str) -> dict[str, Any]:
    text = (ROOT / "inventories" / "lab" / name).read_text()
    for template, value in DEFAULT_LAB.items():
        text = text.replace(template, value)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_lab_blocklist_lists_no_mail_host() -> None:
    """The lab's Knot zone lists the RFC 5782 test entry and one lab address,
    never the address of a host that sends mail."""
    group = lab_file("group_vars/all.yml")
    hosts = lab_file("hosts.yml")
    mail = hosts["all"]["children"]["mail_servers"]["hosts"]
    senders = {".".join(reversed(h["ansible_host"].split("."))) for h in mail.values()}
    (zone,) = [z for z in group["lab_dns__zones"] if z["name"] == "dnsbl.test"]
    listed = {r["name"] for r in zone["records"] if r["type"] == "A"}
    assert listed == {"2.0.0.127", "66.100.51.198"}
    assert not listed & senders
    stubs = {z["name"] for z in group["resolver__stub_zones"]}
    assert stubs == {z["name"] for z in group["lab_dns__zones"]}


def test_rspamd_option_makes_a_secret_password_once(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    extra = {"estafeta__hostname": "mx.example.org", "estafeta__rspamd": True}
    variables = {**config_vars(tmp_path, tls_files), **extra}
    rc, output, stderr = run_playbook(LOCALHOST_CONFIG, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    secret = tmp_path / "rspamd.password"
    password = secret.read_text()
    assert password.endswith("\n") and len(password.strip()) == 32 and password.strip().isalnum()
    assert (secret.stat().st_mode & 0o777) == 0o600
    data = check(tmp_path / "localhost.toml")
    assert data["rspamd"] == {
        "url": "http://127.0.0.1:11333",
        "controller_url": "http://127.0.0.1:11334",
        "password_file": str(secret),
        "timeout": "5s",
        "on_failure": "accept",
        "learn": True,
    }
    assert password.strip() not in json.dumps(output) + stderr

    # The second run keeps the password and changes nothing.
    rc, output, stderr = run_playbook(LOCALHOST_CONFIG, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []
    assert secret.read_text() == password

    # A password from the vault replaces it, unprinted.
    variables["estafeta__rspamd_password"] = "vault-Secret-4711"
    rc, output, stderr = run_playbook(LOCALHOST_CONFIG, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    assert secret.read_text() == "vault-Secret-4711\n"
    text = json.dumps(output) + stderr
    assert "vault-Secret-4711" not in text.replace(json.dumps(variables), "")


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"estafeta__screen_fcrdns": "maybe"}, "estafeta__screen_fcrdns"),
        ({"estafeta__rspamd_on_failure": "bounce"}, "estafeta__rspamd_on_failure"),
        ({"estafeta__dnsbl_zones": [{"name": "x.test", "kind": "grey"}]}, "kind"),
        ({"estafeta__greylist_enabled": "sometimes"}, "estafeta__greylist_enabled"),
        ({"resolver__stub_zones": [{"name": "lab.test"}]}, "addresses"),
    ],
)
def test_wrong_value_fails_before_any_task(
    extra: dict[str, Any], name: str, tmp_path: Path
) -> None:
    role = next(iter(extra)).split("__")[0]
    playbook = f"""
- name: Apply {role} with a wrong value
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - {role}
"""
    rc, output, _ = run_playbook(playbook, tmp_path, *LOCAL, extra_vars=extra)
    assert rc != 0
    ran = task_results(output)
    assert len(ran) == 1, [task for task, _, _ in ran]
    assert "Validation of arguments failed" in ran[0][2]["msg"]
    assert name in ran[0][2]["msg"]


def test_wrong_blocklist_code_fails_estafeta_check_and_keeps_the_file(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    variables = {**config_vars(tmp_path, tls_files), "estafeta__hostname": "mx.example.org"}
    rc, output, stderr = run_playbook(LOCALHOST_CONFIG, tmp_path, *LOCAL, extra_vars=variables)
    assert rc == 0, failures(output) or stderr
    config = tmp_path / "localhost.toml"
    before = config.read_bytes()
    variables["estafeta__dnsbl_zones"] = [{"name": "bl.example", "codes": ["127.0.0.300"]}]
    rc, output, _ = run_playbook(LOCALHOST_CONFIG, tmp_path, *LOCAL, extra_vars=variables)
    assert rc != 0
    failed = [(name, r) for name, _, r in task_results(output) if r.get("failed")]
    assert [name for name, _ in failed] == ["estafeta : Write estafeta.toml"]
    assert "dnsbl.zone[0]" in failed[0][1].get("stderr", "") + failed[0][1].get("msg", "")
    assert config.read_bytes() == before


# -- the resolver ----------------------------------------------------------------------------------


def role_defaults(role: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        (ROOT / "roles" / role / "defaults" / "main.yml").read_text()
    )
    return data


def lab_vars() -> dict[str, Any]:
    return lab_file("group_vars/all.yml")


TEMPLATE = """
- name: Render a template of a role
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Render it
      ansible.builtin.template:
        src: "{{{{ item.src }}}}"
        dest: "{{{{ item.dest }}}}"
        mode: "0644"
        {validate}
      loop: "{{{{ test__templates }}}}"
"""


def render_templates(
    tmp_path: Path, variables: dict[str, Any], templates: list[tuple[str, Path]], validate: str = ""
) -> None:
    playbook = TEMPLATE.format(validate=f"validate: {validate}" if validate else "")
    test_vars = {
        **variables,
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "test__templates": [{"src": src, "dest": str(dest)} for src, dest in templates],
    }
    rc, output, stderr = run_playbook(playbook, tmp_path, *LOCAL, extra_vars=test_vars)
    assert rc == 0, failures(output) or stderr


def needs(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    assert not missing, f"not installed: {missing} (Debian packages unbound, knot, rspamd)"


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=15)


def ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3)


def test_lab_unbound_conf_passes_checkconf(tmp_path: Path) -> None:
    needs("unbound-checkconf")
    ds = "example.net. DS 5955 13 2 " + "2971" * 16
    variables = {
        **role_defaults("resolver"),
        "resolver__stub_zones": lab_vars()["resolver__stub_zones"],
        "resolver__forwarders": ["192.0.2.53", "192.0.2.54@5353"],
        "resolver__trust_anchor_file": str(ROOT_KEY),
        # What role lab_dns wrote for playbooks/lab.yml (.lab/trust-anchors.json).
        "lab__trust_anchors": {"example.net": [ds]},
    }
    conf = tmp_path / "unbound.conf"
    src = str(ROOT / "roles" / "resolver" / "templates" / "unbound.conf.j2")
    render_templates(tmp_path, variables, [(src, conf)], validate="unbound-checkconf %s")
    text = conf.read_text()
    for zone in ("example.test", "example.net", "100.51.198.in-addr.arpa", "dnsbl.test"):
        # example.net is signed (Knot): validated from its DS, the rest is not.
        assert (f'domain-insecure: "{zone}"' in text) is (zone != "example.net"), zone
        assert f'local-zone: "{zone}" transparent' in text
        assert f'stub-zone:\n    name: "{zone}"\n    stub-addr: 198.51.100.2' in text
    assert text.count("trust-anchor: ") == 1 and f'trust-anchor: "{ds}"' in text
    assert "access-control: 0.0.0.0/0 refuse" in text and "127.0.0.0/8 allow" in text
    assert f'auto-trust-anchor-file: "{ROOT_KEY}"' in text
    assert "forward-addr: 192.0.2.54@5353" in text


def test_unbound_answers_the_lab_zones_from_knot(tmp_path: Path, knot: Callable[..., Any]) -> None:
    """The lab's wiring against real servers: unbound (the role's template)
    stubs the lab zones to Knot and validates nothing there (unsigned)."""
    needs("unbound", "unbound-checkconf", "knotd")
    server = knot(
        {
            "example.test": ["mx1 A 198.51.100.10"],
            "dnsbl.test": ["66.100.51.198 A 127.0.0.2", '66.100.51.198 TXT "lab test listing"'],
        }
    )
    port = free_port(socket.SOCK_DGRAM)
    anchor = tmp_path / "root.key"
    shutil.copy(ROOT_KEY, anchor)
    stub = f"127.0.0.1@{server.port}"
    variables = {
        **role_defaults("resolver"),
        "resolver__interfaces": ["127.0.0.1"],
        "resolver__port": port,
        "resolver__trust_anchor_file": str(anchor),
        "resolver__stub_zones": [
            {"name": "example.test", "addresses": [stub]},
            {"name": "dnsbl.test", "addresses": [stub]},
        ],
        # Run as this user, in tmp_path; Knot listens on loopback here.
        "resolver__extra_server_options": [
            "do-not-query-localhost: no",
            'username: ""',
            'chroot: ""',
            f'directory: "{tmp_path}"',
            f'pidfile: "{tmp_path / "unbound.pid"}"',
            "use-syslog: no",
        ],
    }
    conf = tmp_path / "unbound.conf"
    src = str(ROOT / "roles" / "resolver" / "templates" / "unbound.conf.j2")
    render_templates(tmp_path, variables, [(src, conf)], validate="unbound-checkconf %s")
    text = conf.read_text().replace("control-enable: yes", "control-enable: no")
    conf.write_text(text)
    with process(["unbound", "-d", "-c", str(conf)], tmp_path / "unbound.log") as proc:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "unbound.log").read_text()
            with contextlib.suppress(OSError, dns.exception.DNSException):
                answer = ask(port, "mx1.example.test", "A")
                break
            assert time.monotonic() < deadline, (tmp_path / "unbound.log").read_text()
            time.sleep(0.2)
        assert answer.rcode() == dns.rcode.NOERROR
        assert [r.to_text() for rrset in answer.answer for r in rrset] == ["198.51.100.10"]
        listed = ask(port, "66.100.51.198.dnsbl.test", "A")
        assert [r.to_text() for rrset in listed.answer for r in rrset] == ["127.0.0.2"]
        # Not listed: NXDOMAIN from Knot, passed on (a "no" from the list).
        assert ask(port, "10.100.51.198.dnsbl.test", "A").rcode() == dns.rcode.NXDOMAIN


# -- rspamd ----------------------------------------------------------------------------------------

RSPAMD_FILES = [
    "override.d/worker-normal.inc",
    "override.d/worker-controller.inc",
    "override.d/worker-proxy.inc",
    "local.d/redis.conf",
    "local.d/classifier-bayes.conf",
    "local.d/greylist.conf",
    "local.d/actions.conf",
    "local.d/options.inc",
]


def http(port: int, path: str, password: str | None = None) -> int:
    """The status of GET path on 127.0.0.1:port."""
    header = f"Password: {password}\r\n" if password is not None else ""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n{header}\r\n".encode())
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_rspamd_files_run_a_real_rspamd(tmp_path: Path) -> None:
    needs("rspamd", "rspamadm")
    password = base64.b32encode(os.urandom(20)).decode().rstrip("=")
    hashed = subprocess.run(
        ["rspamadm", "pw", "--encrypt", "--password", password],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    normal, controller, proxy = free_port(), free_port(), free_port()
    conf = tmp_path / "conf"
    for sub in ("local.d", "override.d", "db", "run", "log"):
        (conf / sub).mkdir(parents=True, exist_ok=True)
    variables = {
        **role_defaults("rspamd"),
        "rspamd__normal_socket": f"127.0.0.1:{normal}",
        "rspamd__controller_socket": f"127.0.0.1:{controller}",
        "rspamd__password_hash": hashed,
        "rspamd__nameservers": ["127.0.0.1:9"],
    }
    src = ROOT / "roles" / "rspamd" / "templates"
    render_templates(tmp_path, variables, [(str(src / f"{f}.j2"), conf / f) for f in RSPAMD_FILES])
    # Debian's rspamd.conf with our LOCAL_CONFDIR, the proxy on a free port
    # (it must not listen), and a quick start: no public-suffix compilation.
    packaged = Path("/etc/rspamd/rspamd.conf").read_text()
    main = packaged.replace("$LOCAL_CONFDIR", str(conf)).replace(
        "localhost:11332", f"127.0.0.1:{proxy}"
    )
    (conf / "rspamd.conf").write_text(main)
    test = subprocess.run(
        ["rspamadm", "configtest", "-c", str(conf / "rspamd.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr
    assert password not in "".join((conf / f).read_text() for f in RSPAMD_FILES)
    assert "greylist = null;" in (conf / "local.d/actions.conf").read_text()

    user = ["-u", "root", "-g", "root"] if os.geteuid() == 0 else []
    argv = ["rspamd", "-f", *user, "-c", str(conf / "rspamd.conf")] + [
        f"--var={name}={conf / sub}"
        for name, sub in (("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log"))
    ]
    with process(argv, tmp_path / "rspamd.out") as proc:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "rspamd.out").read_text()[-3000:]
            with contextlib.suppress(OSError, ValueError, IndexError):
                if http(normal, "/ping") == 200 and http(controller, "/ping") == 200:
                    break
            assert time.monotonic() < deadline, (conf / "log" / "rspamd.log").read_text()[-3000:]
            time.sleep(0.5)
        # The controller wants the password, from loopback too (secure_ip = []).
        assert http(controller, "/stat") in (401, 403)
        assert http(controller, "/stat", "wrong") in (401, 403)
        assert http(controller, "/stat", password) == 200
        # No milter worker.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", proxy), timeout=2):
            pass
