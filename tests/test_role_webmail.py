"""The webmail role on this machine: Roundcube, nginx and PHP-FPM for real.

The role runs on localhost (connection local) with Debian's nginx, php-fpm
and roundcube installed (TEST_PACKAGES). Roundcube's own configuration goes
where Debian's Roundcube reads it (/etc/roundcube); nginx's server block and
PHP-FPM's pool go to a temporary directory, and with
``webmail__manage_services: false`` the role touches no system service. The
test then runs nginx and PHP-FPM itself, in the foreground, with a main
configuration of its own that includes the role's files, next to a real
estafeta (IMAPS, submissions, ManageSieve with STARTTLS, a trustme CA), and
stops all three at the end.

- a second run changes nothing; a check run with --diff shows a changed
  setting without writing it and never shows the session key;
- nginx: TLS 1.2+ only, HSTS, only index.php and static files, 404 for the
  configuration, logs, SQL and plugin sources;
- Debian's chromium (headless, Selenium, Debian's chromedriver) logs in as
  alice, reads the message bob sent, replies (the reply arrives in bob's
  INBOX, seen over IMAP) and sets a vacation in the managesieve plugin (the
  active script, read with ``estafeta sieve``, has it). Screenshots go to
  test-artifacts/webmail/;
- with ``webmail__location: /webmail`` Roundcube is served under that path
  and nothing outside it;
- the mail server's certificate is verified: expecting another name in it,
  Roundcube cannot log in.
- the password plugin is refused (estafeta has no backend for it).
"""

from __future__ import annotations

import imaplib
import json
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import trustme
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions

from tests.conftest import _free_port, _stop, _wait_tcp
from tests.roundcube import CHROMEDRIVER, CHROMIUM, Roundcube, chromium
from tests.test_roles import ROOT, changed_tasks, failures, run_playbook, task_results

DOMAIN = "example.test"
MAIL_HOST = f"mx.{DOMAIN}"
WEBMAIL_HOST = f"webmail.{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "violet tractor sings quietly"
ESTAFETA_CLI = (sys.executable, "-m", "estafeta", "-c")
SUBJECT = "Lunch on Friday"
REPLY_TEXT = "Friday works for me."
VACATION_TEXT = "I am away until Monday."
PHP_FPM = "/usr/sbin/php-fpm8.2"
NGINX = "/usr/sbin/nginx"
ARTIFACTS = ROOT / "test-artifacts" / "webmail"
DES_KEY = Path("/etc/roundcube/des_key.inc.php")
# One xdist worker runs this module: the role writes /etc/roundcube, which a
# second site on the other worker would overwrite mid-test.
pytestmark = pytest.mark.xdist_group("webmail")

PLAYBOOK = """
- name: Roundcube on this machine
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - webmail
"""


def wait_path(path: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {path}: {log.read_text(errors='replace')}")
        time.sleep(0.05)


@dataclass
class Site:
    tmp: Path
    # A directory www-data can traverse (pytest's are 0700): the PHP-FPM
    # socket and the CA file the PHP workers read.
    shared: Path
    ca: trustme.CA
    ports: dict[str, int]
    vars: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.tmp / "estafeta.toml"

    @property
    def base_url(self) -> str:
        return f"https://{WEBMAIL_HOST}:{self.ports['https']}"

    def estafeta(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "estafeta", "-c", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"estafeta {' '.join(args)}: {result.stderr}"
        return result.stdout

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=out)
        self.processes[name] = process
        return process

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def role(self, *args: str, **overrides: Any) -> tuple[int, dict[str, Any], str]:
        return run_playbook(
            PLAYBOOK, self.tmp, "-i", "localhost,", *args, extra_vars={**self.vars, **overrides}
        )


def write_estafeta(site: Site) -> None:
    cert = site.ca.issue_cert(MAIL_HOST, "127.0.0.1")
    cert.private_key_pem.write_to_path(str(site.tmp / "mail-key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(site.tmp / "mail-cert.pem"))
    names = ("smtp", "submissions", "imaps", "managesieve")
    listen = "".join(f'{name} = ["127.0.0.1:{site.ports[name]}"]\n' for name in names)
    # The password plugin's backend (POST /api/password).
    listen += f'https = ["127.0.0.1:{site.ports["estafeta_https"]}"]\n'
    site.config.write_text(
        f'hostname = "{MAIL_HOST}"\n'
        f'data_dir = "{site.tmp / "data"}"\n'
        f'domains = ["{DOMAIN}"]\n'
        f"[listen]\n{listen}"
        f'[tls]\ncert = "{site.tmp / "mail-cert.pem"}"\nkey = "{site.tmp / "mail-key.pem"}"\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 1024\nargon2_parallelism = 1\n"
        "[inbound]\nauthenticate = false\n"
        "[greylist]\nenabled = false\n[screen]\ngreeting_pause = 0\n"
        '[log]\nlevel = "info"\n'
    )
    for address in (ALICE, BOB):
        site.estafeta("user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")


def write_web_configs(site: Site) -> None:
    """Main configurations of nginx and PHP-FPM that include the role's files."""
    tmp = site.tmp
    (tmp / "nginx.conf").write_text(
        "user www-data;\n"
        "worker_processes 1;\n"
        "daemon off;\n"
        f"pid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'nginx-error.log'} info;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        "    include /etc/nginx/mime.types;\n"
        "    default_type application/octet-stream;\n"
        f"    access_log {tmp / 'nginx-access.log'};\n"
        f"    include {tmp / 'webmail.conf'};\n"
        "}\n"
    )
    (tmp / "php-fpm.conf").write_text(
        "[global]\n"
        f"pid = {tmp / 'php-fpm.pid'}\n"
        f"error_log = {tmp / 'php-fpm.log'}\n"
        "daemonize = no\n"
        f"include = {tmp / 'pool.conf'}\n"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    for program in (NGINX, PHP_FPM, CHROMIUM, CHROMEDRIVER, "/usr/share/roundcube/index.php"):
        assert Path(program).exists(), f"{program} is missing (make TEST_PACKAGES)"
    tmp = tmp_path_factory.mktemp("webmail")
    shared = Path(tempfile.mkdtemp(prefix="webmail-test-"))
    shared.chmod(0o755)
    ports = {name: _free_port() for name in ("smtp", "submissions", "imaps", "managesieve")}
    ports["https"] = _free_port()
    ports["estafeta_https"] = _free_port()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    web = ca.issue_cert(WEBMAIL_HOST)
    web.private_key_pem.write_to_path(str(tmp / "web-key.pem"))
    (tmp / "web-chain.pem").write_bytes(b"".join(b.bytes() for b in web.cert_chain_pems))
    site = Site(tmp, shared, ca, ports)
    site.vars = {
        "ansible_python_interpreter": str(ROOT / ".venv" / "bin" / "python"),
        "webmail__domain": DOMAIN,
        "webmail__listen": [f"127.0.0.1:{ports['https']}"],
        "webmail__tls_cert": str(tmp / "web-chain.pem"),
        "webmail__tls_key": str(tmp / "web-key.pem"),
        "webmail__mail_host": MAIL_HOST,
        "webmail__mail_address": "127.0.0.1",
        "webmail__imap_port": ports["imaps"],
        "webmail__smtp_port": ports["submissions"],
        "webmail__managesieve_port": ports["managesieve"],
        # The certificate names 127.0.0.1 too (write_estafeta).
        "webmail__password_api_url": f"https://127.0.0.1:{ports['estafeta_https']}/api/password",
        "webmail__ca_src": str(tmp / "ca.pem"),
        "webmail__ca_file": str(shared / "mail-ca.pem"),
        "webmail__max_message_size": 10485760,
        "webmail__nginx_config": str(tmp / "nginx.conf"),
        "webmail__nginx_site_path": str(tmp / "webmail.conf"),
        "webmail__nginx_locations_path": str(tmp / "webmail-roundcube.conf"),
        "webmail__nginx_remove_default_site": False,
        "webmail__php_fpm_config": str(tmp / "php-fpm.conf"),
        "webmail__php_fpm_pool_path": str(tmp / "pool.conf"),
        "webmail__php_fpm_socket": str(shared / "php-fpm.sock"),
        "webmail__systemd_dir": str(tmp / "systemd"),
        "webmail__manage_services": False,
    }
    (tmp / "systemd").mkdir()
    write_estafeta(site)
    write_web_configs(site)
    try:
        estafeta = site.start(
            "estafeta", [sys.executable, "-m", "estafeta", "-c", str(site.config), "serve"]
        )
        for name in ("smtp", "submissions", "imaps", "managesieve"):
            _wait_tcp(ports[name], estafeta, tmp / "estafeta.log")
        yield site
    finally:
        for process in reversed(site.processes.values()):
            _stop(process)
        shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture(scope="module")
def applied(site: Site) -> dict[str, Any]:
    """The first run's output; nginx and PHP-FPM then run with its files."""
    rc, output, stderr = site.role()
    assert rc == 0, failures(output) or stderr
    fpm = site.start(
        "php-fpm", [PHP_FPM, "--nodaemonize", "--fpm-config", str(site.tmp / "php-fpm.conf")]
    )
    wait_path(Path(site.vars["webmail__php_fpm_socket"]), fpm, site.tmp / "php-fpm.log")
    nginx = site.start("nginx", [NGINX, "-c", str(site.tmp / "nginx.conf")])
    _wait_tcp(site.ports["https"], nginx, site.tmp / "nginx-error.log")
    return output


# -- the role ------------------------------------------------------------------------------------


def test_second_run_changes_nothing_and_check_mode_hides_the_key(
    site: Site, applied: dict[str, Any]
) -> None:
    config = Path("/etc/roundcube/config.inc.php").read_text()
    assert f"'ssl://127.0.0.1:{site.ports['imaps']}'" in config
    assert f"'ssl://127.0.0.1:{site.ports['submissions']}'" in config
    assert f"'tls://127.0.0.1:{site.ports['managesieve']}'" in config
    assert f"'peer_name' => '{MAIL_HOST}'" in config
    assert "'verify_peer' => true" in config
    assert "$config['plugins'] = ['archive', 'zipdownload', 'managesieve', 'password'];" in config
    assert "$config['password_driver'] = 'httpapi';" in config
    assert f"'verify' => '{site.shared / 'mail-ca.pem'}'" in config
    key = DES_KEY.read_text()
    assert DES_KEY.stat().st_mode & 0o777 == 0o640
    assert (site.shared / "mail-ca.pem").read_bytes() == (site.tmp / "ca.pem").read_bytes()

    rc, output, stderr = site.role()
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == []
    assert DES_KEY.read_text() == key

    # Check mode with --diff: the change is shown, not made; the key is never shown.
    rc, output, stderr = site.role("--check", "--diff", webmail__product_name="Post")
    assert rc == 0, failures(output) or stderr
    assert changed_tasks(output) == ["localhost: webmail : Write Roundcube's configuration"]
    diffs = json.dumps([r.get("diff") for _, _, r in task_results(output)])
    assert "Post" in diffs
    secret = key.split("des_key'] = '", 1)[1].split("'", 1)[0]
    assert len(secret) == 24
    assert secret not in json.dumps(output) + stderr
    assert "'Webmail'" in Path("/etc/roundcube/config.inc.php").read_text()

    # The certificate path unit systemd would load.
    unit = (site.tmp / "systemd" / "webmail-certificate.path").read_text()
    assert f"PathChanged={site.tmp / 'web-chain.pem'}" in unit


def test_the_password_plugin_needs_https(site: Site) -> None:
    rc, output, _ = site.role(webmail__password_api_url="http://127.0.0.1/api/password")
    assert rc != 0
    assert "password plugin needs webmail__password_api_url" in failures(output)


# -- nginx ----------------------------------------------------------------------------------------


def https_get(site: Site, path: str) -> tuple[int, dict[str, str], bytes]:
    context = site.client_context()
    with (
        socket.create_connection(("127.0.0.1", site.ports["https"]), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=WEBMAIL_HOST) as tls,
    ):
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {WEBMAIL_HOST}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.mark.usefixtures("applied")
def test_nginx_serves_only_roundcube_over_tls12_or_later(site: Site) -> None:
    status, headers, body = https_get(site, "/")
    assert status == 200, body[:2000]
    assert headers["strict-transport-security"] == "max-age=31536000"
    assert b'id="rcmloginuser"' in body
    assert "x-powered-by" not in headers
    status, headers, _ = https_get(site, "/skins/elastic/images/logo.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    for path in (
        "/config/config.inc.php",
        "/plugins/managesieve/config.inc.php",
        "/plugins/password/config.inc.php.dist",
        "/program/include/rcmail.php",
        "/SQL/sqlite.initial.sql",
        "/logs/errors.log",
        "/temp/",
        "/.htaccess",
        "/index.php/../config/config.inc.php",
        "/skins/",
        "/program/js/",
    ):
        status, _, body = https_get(site, path)
        assert status == 404, (path, body[:300])

    # TLS 1.1 is refused by the server (the client offers it and nothing newer).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with (
        socket.create_connection(("127.0.0.1", site.ports["https"]), timeout=30) as raw,
        pytest.raises(ssl.SSLError) as refused,
    ):
        context.wrap_socket(raw, server_hostname=WEBMAIL_HOST)
    # The server's protocol_version alert, not the client's own refusal.
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value), refused.value
    # TLS 1.2 alone works.
    context = site.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", site.ports["https"]), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=WEBMAIL_HOST) as tls,
    ):
        assert tls.version() == "TLSv1.2"


# -- Roundcube in Chromium ------------------------------------------------------------------------


@pytest.fixture
def browser(site: Site) -> Iterator[Roundcube]:
    with chromium(site.tmp, "127.0.0.1") as driver:
        yield Roundcube(driver, site.base_url, ARTIFACTS)


@pytest.fixture(scope="module", autouse=True)
def fresh_artifacts() -> None:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)


def send_from_bob(site: Site) -> None:
    message = EmailMessage()
    message["From"] = BOB
    message["To"] = ALICE
    message["Subject"] = SUBJECT
    message.set_content("Shall we have lunch on Friday?\n")
    with smtplib.SMTP_SSL(
        "127.0.0.1", site.ports["submissions"], context=site.client_context(), timeout=30
    ) as smtp:
        # The certificate names mx.example.test; smtplib checks the name it connected to.
        smtp.login(BOB, PASSWORD)
        smtp.send_message(message)


def imap_messages(site: Site, address: str) -> list[EmailMessage]:
    """The messages in the INBOX of ``address``, read over IMAPS."""
    with imaplib.IMAP4_SSL(
        "127.0.0.1", site.ports["imaps"], ssl_context=site.client_context(), timeout=30
    ) as imap:
        imap.login(address, PASSWORD)
        _, count = imap.select("INBOX", readonly=True)
        if count[0] == b"0":
            return []
        _, data = imap.fetch("1:*", "(BODY.PEEK[])")
        parser = BytesParser(policy=policy.default)
        return [parser.parsebytes(item[1]) for item in data if isinstance(item, tuple)]


def find(site: Site, address: str, subject: str) -> EmailMessage | None:
    return next((m for m in imap_messages(site, address) if m["Subject"] == subject), None)


@pytest.mark.usefixtures("applied")
def test_alice_reads_replies_and_sets_a_vacation(site: Site, browser: Roundcube) -> None:
    send_from_bob(site)
    deadline = time.monotonic() + 30
    while find(site, ALICE, SUBJECT) is None:
        assert time.monotonic() < deadline, "bob's message did not arrive"
        time.sleep(0.2)

    # Log in with the full address, read bob's message, reply.
    browser.login(ALICE, PASSWORD)
    uid = browser.open_message(SUBJECT, "Shall we have lunch on Friday?")
    browser.reply(uid, REPLY_TEXT)
    reply = browser.until("reply at bob", lambda: find(site, BOB, f"Re: {SUBJECT}"), 60)
    original = find(site, ALICE, SUBJECT)
    assert original is not None
    assert reply["From"].addresses[0].addr_spec == ALICE
    assert reply["In-Reply-To"] == original["Message-ID"]
    text = reply.get_body(("plain",))
    assert text is not None and REPLY_TEXT in text.get_content()
    browser.back_at_the_list()

    # The vacation page of the managesieve plugin.
    browser.set_vacation("Away", VACATION_TEXT)
    deadline = time.monotonic() + 30
    while True:
        scripts = json.loads(site.estafeta("sieve", "list", ALICE, "--json"))
        active = [s["name"] for s in scripts if s["active"]]
        if active:
            break
        if time.monotonic() > deadline:
            browser.shot("failed-vacation")
            raise AssertionError(f"no active Sieve script: {scripts}")
        time.sleep(0.5)
    browser.shot("07-vacation-saved")
    assert active == ["roundcube"]
    script = site.estafeta("sieve", "get", ALICE, "roundcube")
    assert "vacation" in script and VACATION_TEXT in script, script


@pytest.mark.usefixtures("applied")
def test_roundcube_under_a_path(site: Site) -> None:
    rc, output, stderr = site.role(webmail__location="/webmail")
    assert rc == 0, failures(output) or stderr
    reload_nginx(site, "/webmail/")
    _, _, body = https_get(site, "/webmail/")
    assert b'id="rcmloginuser"' in body
    status, headers, _ = https_get(site, "/")
    assert status == 302 and headers["location"].endswith("/webmail/")
    status, headers, _ = https_get(site, "/webmail/skins/elastic/images/logo.svg")
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    # Outside the path nothing of public_html is served, not even as a file.
    for path in (
        "/index.php",
        "/skins/elastic/images/logo.svg",
        "/plugins/managesieve/config.inc.php",
        "/webmail/config/config.inc.php",
        "/webmail/plugins/managesieve/config.inc.php",
    ):
        assert https_get(site, path)[0] == 404, path


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def reload_nginx(site: Site, path: str) -> None:
    """Reload as systemctl reload does, and wait until the old workers are
    gone: until then a new connection may still reach one of them and get
    the old configuration's answer."""
    master = site.processes["nginx"]
    old = _children(master.pid)
    master.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while old & _children(master.pid):
        assert time.monotonic() < deadline, "nginx's old workers did not stop"
        time.sleep(0.05)
    while (status := https_get(site, path)[0]) != 200:
        assert time.monotonic() < deadline, f"{path} answers {status}"
        time.sleep(0.1)


@pytest.mark.usefixtures("applied")
def test_a_certificate_for_another_name_is_refused(site: Site, browser: Roundcube) -> None:
    # The same server and CA, but Roundcube expects another name in the certificate.
    rc, output, stderr = site.role(webmail__mail_host="elsewhere.example.test")
    assert rc == 0, failures(output) or stderr
    try:
        reload_nginx(site, "/")
        browser.login(ALICE, PASSWORD)
        browser.wait(
            "login refused",
            expected_conditions.text_to_be_present_in_element(
                (By.TAG_NAME, "body"), "Connection to storage server failed"
            ),
        )
        browser.shot("08-wrong-certificate-name")
        assert "_task=mail" not in browser.driver.current_url
    finally:
        rc, output, stderr = site.role()
        assert rc == 0, failures(output) or stderr


# -- port 443 shared with estafeta (webmail__front) ----------------------------------------------


def tls_exchange(
    port: int, name: str, context: ssl.SSLContext, request: bytes
) -> tuple[str, bytes]:
    """The first DNS name of the certificate the server at ``port`` shows
    for ``name``, and its answer to ``request``."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        names = [v for k, v in tls.getpeercert()["subjectAltName"] if k == "DNS"]  # type: ignore[index]
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return str(names[0]) if names else "", data


@pytest.mark.usefixtures("applied")
def test_the_front_shares_443_by_server_name_with_estafeta(site: Site) -> None:
    """nginx's stream front passes webmail.<domain> to Roundcube and the rest,
    still encrypted and with a PROXY header, to estafeta's own https
    listener, which only takes connections that start with one."""
    tmp = site.tmp / "front"
    tmp.mkdir()
    front, behind, web = _free_port(), _free_port(), _free_port()
    # estafeta's https listener behind the front (its own certificate).
    config = tmp / "estafeta.toml"
    config.write_text(
        f'hostname = "{MAIL_HOST}"\ndata_dir = "{tmp / "data"}"\ndomains = ["{DOMAIN}"]\n'
        f'[listen]\nsmtp = ["127.0.0.1:{_free_port()}"]\nhttps = ["127.0.0.1:{behind}"]\n'
        f'[tls]\ncert = "{site.tmp / "mail-cert.pem"}"\nkey = "{site.tmp / "mail-key.pem"}"\n'
        '[web]\nproxy_protocol = ["127.0.0.1/32"]\n[log]\nlevel = "info"\n'
    )
    behind_estafeta = site.start(
        "estafeta-behind", [sys.executable, "-m", "estafeta", "-c", str(config), "serve"]
    )
    _wait_tcp(behind, behind_estafeta, site.tmp / "estafeta-behind.log")
    overrides = {
        "webmail__front": True,
        "webmail__front_listen": [f"127.0.0.1:{front}"],
        "webmail__front_estafeta": f"127.0.0.1:{behind}",
        "webmail__front_config_path": str(tmp / "front.conf"),
        "webmail__listen": [f"127.0.0.1:{web}"],
        "webmail__web_packages": ["nginx", "php-fpm", "libnginx-mod-stream"],
    }
    rc, output, stderr = site.role(**overrides)
    assert rc == 0, failures(output) or stderr
    # nginx's main configuration as Debian's: modules, then the front at the
    # top level, the server blocks inside http{}.
    (tmp / "nginx.conf").write_text(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
        "user www-data;\nworker_processes 1;\ndaemon off;\n"
        f"pid {tmp / 'nginx.pid'};\nerror_log {tmp / 'nginx-error.log'} info;\n"
        "events { worker_connections 64; }\n"
        f"include {tmp / 'front.conf'};\n"
        "http {\n    include /etc/nginx/mime.types;\n"
        f"    access_log {tmp / 'nginx-access.log'};\n"
        f"    include {site.tmp / 'webmail.conf'};\n}}\n"
    )
    try:
        nginx = site.start("nginx-front", [NGINX, "-c", str(tmp / "nginx.conf")])
        _wait_tcp(front, nginx, tmp / "nginx-error.log")
        context = site.client_context()
        request = b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
        # webmail.<domain>: Roundcube, with the webmail certificate.
        subject, answer = tls_exchange(
            front, WEBMAIL_HOST, context, request % WEBMAIL_HOST.encode()
        )
        assert answer.startswith(b"HTTP/1.1 200") and b'id="rcmloginuser"' in answer
        # Any other name: estafeta, its own certificate (TLS passed through).
        healthz = f"GET /healthz HTTP/1.1\r\nHost: {MAIL_HOST}\r\nConnection: close\r\n\r\n"
        context.check_hostname = False
        subject, answer = tls_exchange(front, MAIL_HOST, context, healthz.encode())
        assert subject == MAIL_HOST
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok\n")
        policy_request = (
            f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.{DOMAIN}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        _, answer = tls_exchange(front, f"mta-sts.{DOMAIN}", context, policy_request)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"version: STSv1" in answer
        # estafeta took them only because the front sent a PROXY header: a
        # client straight to it is refused.
        with pytest.raises((ssl.SSLError, OSError)):
            tls_exchange(behind, MAIL_HOST, context, healthz.encode())
        log = (site.tmp / "estafeta-behind.log").read_text()
        assert "path=/healthz status=200" in log and "proxy_header_refused" in log
    finally:
        for name in ("nginx-front", "estafeta-behind"):
            _stop(site.processes.pop(name))
        rc, output, stderr = site.role()
        assert rc == 0, failures(output) or stderr


@pytest.mark.usefixtures("applied")
def test_alice_changes_her_password_in_roundcube(site: Site, browser: Roundcube) -> None:
    def verify(password: str) -> bool:
        result = subprocess.run(
            [*ESTAFETA_CLI, str(site.config), "user", "verify", ALICE, "--password-stdin"],
            input=password + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode in (0, 1), result.stderr
        return result.returncode == 0

    browser.login(ALICE, PASSWORD)
    browser.wait("logged in", lambda d: "_task=mail" in d.current_url)
    try:
        # Roundcube's own check first (webmail__password_minimum_length).
        assert "at least 12" in browser.change_password(PASSWORD, "short")
        assert verify(PASSWORD)
        # The change itself, through estafeta's /api/password.
        answer = browser.change_password(PASSWORD, NEW_PASSWORD)
        assert "Successfully saved" in answer, answer
        assert verify(NEW_PASSWORD) and not verify(PASSWORD)
        # A wrong current password: Roundcube checks it itself and estafeta never sees it.
        assert "incorrect" in browser.change_password("not the password", PASSWORD).lower()
        assert verify(NEW_PASSWORD)
        log = (site.tmp / "estafeta.log").read_text()
        assert "account_change" in log and "via=api" in log
        assert NEW_PASSWORD not in log and PASSWORD not in log
    finally:
        site.estafeta("user", "passwd", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
