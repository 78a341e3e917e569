#!/usr/bin/env python3
"""Lab hosts: booted Debian 12 machines under systemd-nspawn, on a bridge.

    labctl.py image                 build (or reuse) the cached root file system
    labctl.py net                   choose this clone's lab network (LAB_NAME, LAB_SUBNET),
                                    check it is free, write .lab/lab.json
    labctl.py up NAME=IP[:FQDN] ... create the bridge and boot each host
    labctl.py renew NAME=IP[:FQDN]  stop that host, throw its root away, boot a fresh copy
                                    of the image (the other hosts keep running)
    labctl.py down                  stop every lab host, remove the bridge and the copies
    labctl.py status                JSON: the network, the hosts, their PIDs and addresses

Several clones of the repository can each run a lab on one machine, under
different lab names. The name (``LAB_NAME``, 1 to 8 of a-z and 0-9, default
``lab``) chooses the bridge (``br-NAME``), the /24 network and the machine
names (``NAME-mx1``; the default lab keeps ``mx1``). The default lab is
``br-lab`` on 198.51.100.0/24 (TEST-NET-2, RFC 5737); any other name gets a
network in 10.200.0.0-10.249.255.0 (RFC 1918) derived from the name, or the
/24 in ``LAB_SUBNET``. ``net`` refuses a network that the machine already
routes elsewhere, and a bridge that another clone made (each bridge carries
its clone's path as its interface alias), so ``down`` in one clone never
touches another clone's lab.

Everything lives under the repository: the image cache in ``.cache/lab/``
(keyed by the package list; ``LAB_IMAGE_CACHE`` points clones at one shared
cache) and the running lab in ``.lab/`` (lab.json: the network the
inventories read; one copy of the root file system per host, the SSH key,
state.json). Nothing is routed beyond the bridge. Ansible reaches the hosts
over SSH as root with ``.lab/ssh/id_ed25519``, like real servers.

``up`` also writes the hosts' names into a block of ``/etc/hosts`` marked
with the lab name (``LAB_HOSTS_FILE`` names another file; empty: none), so
that clients on the machine reach ``mx1.example.test`` by name and can
verify its certificate; ``down`` removes the block. A name another lab's
block already has stays that lab's (``up`` warns).

Output: one JSON object on stdout with ``changed`` (for Ansible's
``changed_when``); progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LAB_IMAGE_CACHE") or ROOT / ".cache" / "lab")
LAB = ROOT / ".lab"
STATE = LAB / "state.json"
NET_FILE = LAB / "lab.json"
DEFAULT_NAME = "lab"
DEFAULT_SUBNET = ipaddress.IPv4Network("198.51.100.0/24")  # TEST-NET-2, rfc5737
NAME_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
# The bridge's interface alias says which clone made it.
OWNER = f"estafeta-lab {ROOT}"
SUITE = "bookworm"
# Everything the roles need is in the image: lab hosts have no route to the internet.
PACKAGES = sorted(
    [
        "ca-certificates",
        "dns-root-data",
        "dbus",
        "iproute2",
        "knot",
        "knot-dnsutils",
        "less",
        "nftables",
        "openssh-server",
        "pebble",
        # The postgresql role's (the cluster scenario's database host).
        "postgresql-15",
        "procps",
        "python3",
        "python3-apt",
        # debootstrap does not resolve virtual packages: the cffi backend by name.
        "python3-cffi-backend",
        "python3-cryptography",
        "python3-psycopg2",
        "python3-venv",
        "sudo",
        "systemd",
        "systemd-sysv",
        "systemd-timesyncd",
        "unbound",
        "unattended-upgrades",
    ]
)
# The webmail role's packages (roles/webmail/defaults/main.yml), installed by
# apt inside the image after debootstrap: debootstrap takes the first of
# alternative dependencies (it would bring apache2 and MySQL), apt takes the
# web server and PHP already there. Two steps, as the role does them.
WEBMAIL_PACKAGES = (
    ("nginx", "php-fpm", "libnginx-mod-stream"),
    ("roundcube", "roundcube-sqlite3", "roundcube-plugins", "php-zip"),
)
# Roundcube's database questions (dbconfig-common), answered as the role does.
WEBMAIL_PRESEED = (
    "roundcube-core roundcube/dbconfig-install boolean true",
    "roundcube-core roundcube/database-type select sqlite3",
)
# Services the image has installed but that roles decide about.
DISABLED = [
    "knot.service",
    "unbound.service",
    "pebble.service",
    "postgresql.service",
    "postgresql@15-main.service",
    "nginx.service",
    "php8.2-fpm.service",
    "systemd-timesyncd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
]


def log(message: str) -> None:
    print(f"labctl: {message}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload,no-any-return]


# -- the lab's name and network (pure: tests/test_labctl.py) --------------------------------------


@dataclass(frozen=True)
class Net:
    """A lab's name, bridge and /24: the host .1 is the machine's end of the
    bridge, .2 the lab DNS (dns.lab), the inventories put the rest."""

    name: str
    subnet: ipaddress.IPv4Network

    @property
    def bridge(self) -> str:
        return f"br-{self.name}"  # at most 11 characters: Linux allows 15 (IFNAMSIZ - 1)

    @property
    def prefix(self) -> str:
        return str(self.subnet.network_address).rsplit(".", 1)[0]

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1"

    @property
    def dns(self) -> str:
        return f"{self.prefix}.2"

    @property
    def reverse_prefix(self) -> str:
        return ".".join(reversed(self.prefix.split(".")))

    def machine(self, host: str) -> str:
        """nspawn's machine name, which names the host's end of its veth
        ("vb-MACHINE"): unique per lab, so that two labs' mx1 can both run."""
        return host if self.name == DEFAULT_NAME else f"{self.name}-{host}"

    def as_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "bridge": self.bridge,
            "subnet": str(self.subnet),
            "prefix": self.prefix,
            "gateway": self.gateway,
            "dns": self.dns,
            "reverse_zone": f"{self.reverse_prefix}.in-addr.arpa",
            "reverse_prefix": self.reverse_prefix,
            "root": str(ROOT),
        }


def derive_subnet(name: str) -> ipaddress.IPv4Network:
    """The default lab keeps 198.51.100.0/24; any other name gets a /24 in
    10.200.0.0/16-10.249.0.0/16 (private, rfc1918) from a hash of the name."""
    if name == DEFAULT_NAME:
        return DEFAULT_SUBNET
    number = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return ipaddress.IPv4Network(f"10.{200 + number % 50}.{number // 50 % 256}.0/24")


def make_net(name: str, subnet: str = "") -> Net:
    if not NAME_RE.fullmatch(name):
        raise SystemExit(
            f"labctl: lab name {name!r}: use 1 to 8 of a-z and 0-9, starting with a letter"
        )
    if not subnet:
        return Net(name, derive_subnet(name))
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise SystemExit(f"labctl: LAB_SUBNET={subnet!r}: {exc}") from None
    if network.prefixlen != 24 or not (network.is_private or network.is_reserved):
        raise SystemExit(f"labctl: LAB_SUBNET={subnet!r}: use a private or test /24")
    if network.is_loopback or network.is_link_local or network.is_multicast:
        raise SystemExit(f"labctl: LAB_SUBNET={subnet!r}: not a network for a bridge")
    return Net(name, network)


def net_from_env() -> Net:
    return make_net(
        os.environ.get("LAB_NAME") or DEFAULT_NAME, os.environ.get("LAB_SUBNET", "").strip()
    )


def net_from_json(data: dict[str, str]) -> Net:
    return Net(data["name"], ipaddress.IPv4Network(data["subnet"]))


def route_conflicts(net: Net, routes: list[dict[str, object]], own_bridge: bool) -> list[str]:
    """Routes of the machine (``ip -j -4 route``) that overlap the lab's
    network, other than the default route and those of our own bridge."""
    found = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst in ("", "default"):
            continue
        try:
            network = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if not network.overlaps(net.subnet):
            continue
        if own_bridge and route.get("dev") == net.bridge:
            continue
        found.append(f"{dst} dev {route.get('dev', '?')}")
    return found


def check_spec(net: Net, name: str, ip: str) -> None:
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        raise SystemExit(f"labctl: {name}: {ip!r} is not an IPv4 address") from None
    usable = address in net.subnet and address not in (
        net.subnet.network_address,
        net.subnet.broadcast_address,
        ipaddress.IPv4Address(net.gateway),
    )
    if not usable:
        raise SystemExit(
            f"labctl: {name}: {ip} is not a host address of lab {net.name!r} ({net.subnet}, "
            f"{net.gateway} is the machine): does the inventory read .lab/lab.json?"
        )


# -- /etc/hosts (pure: tests/test_labctl.py) -------------------------------------------------------


def hosts_markers(name: str) -> tuple[str, str]:
    return f"# BEGIN estafeta lab {name}", f"# END estafeta lab {name}"


def edit_hosts(text: str, name: str, entries: list[tuple[str, str]]) -> str:
    """``text`` (an /etc/hosts) without the lab's block, then the block with
    ``entries`` (address, names) at the end if there are any. Everything
    else is kept as it was, byte for byte."""
    begin, end = hosts_markers(name)
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        if stripped == begin:
            inside = True
        elif inside and stripped == end:
            inside = False
        elif not inside:
            kept.append(line)
    out = "".join(kept)
    if entries:
        if out and not out.endswith("\n"):
            out += "\n"
        block = [begin, f"# written by {ROOT}/scripts/labctl.py up; removed by down"]
        block += [f"{address} {names}" for address, names in entries]
        out += "\n".join([*block, end]) + "\n"
    return out


def hosts_entries(
    text: str, name: str, entries: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[str]]:
    """The entries this lab's block may hold, and warnings for the names it
    leaves out: those another line of ``text`` (outside this lab's block,
    e.g. another clone's lab) already gives another address. One name, one
    address: resolvers that return every match would mix the two labs."""
    taken: dict[str, str] = {}
    for line in edit_hosts(text, name, []).splitlines():
        fields = line.split("#", 1)[0].split()
        for other in fields[1:]:
            taken.setdefault(other, fields[0])
    kept, warnings = [], []
    for address, names in entries:
        free = []
        for host in names.split():
            if taken.get(host, address) != address:
                warnings.append(
                    f"{host} is {taken[host]} in the hosts file (another lab?), not this "
                    f"lab's {address}: left out"
                )
            else:
                free.append(host)
        if free:
            kept.append((address, " ".join(free)))
    return kept, warnings


# The names a mail host mxN.<domain> serves over HTTPS besides its own
# (estafeta's https listener, and webmail where the webmail role runs; the
# dns_records role publishes them as CNAMEs).
SERVICE_LABELS = ("mta-sts", "autoconfig", "autodiscover", "webmail")


def host_names(fqdn: str) -> str:
    """The hosts-file names of a lab host: its FQDN, and for a mail host
    (mx1.example.test) the service names of its domain, so that
    https://mta-sts.example.test/ works from this machine too."""
    first, _, domain = fqdn.partition(".")
    if not (first.startswith("mx") and "." in domain):
        return fqdn
    return " ".join([fqdn, *(f"{label}.{domain}" for label in SERVICE_LABELS)])


def hosts_file() -> Path | None:
    path = os.environ.get("LAB_HOSTS_FILE", "/etc/hosts")
    return Path(path) if path else None


def update_hosts_file(net: Net, state: dict[str, dict[str, object]]) -> list[str]:
    """Write (or remove, with no hosts) the lab's block. In place, not by
    rename: /etc/hosts is often a bind mount. A failure only warns: the lab
    works without it. Returns the warnings."""
    path = hosts_file()
    if path is None:
        return []
    entries = [(str(h["ip"]), host_names(str(h["fqdn"]))) for h in state.values()]
    try:
        with path.open("r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # another labctl of another clone
            text = handle.read()
            kept, warnings = hosts_entries(text, net.name, entries)
            new = edit_hosts(text, net.name, kept)
            if new != text:
                handle.seek(0)
                handle.write(new)
                handle.truncate()
    except OSError as exc:
        warnings = [f"could not update {path}: {exc}"]
    for warning in warnings:
        log(f"warning: {warning}")
    return warnings


# -- the image -----------------------------------------------------------------------------------


def image_key() -> str:
    steps = " | ".join(" ".join(step) for step in WEBMAIL_PACKAGES)
    text = SUITE + " " + " ".join(PACKAGES) + " + " + steps + " v3"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def image_dir() -> Path:
    return CACHE / f"rootfs-{image_key()}"


def build_image() -> bool:
    target = image_dir()
    if (target / ".complete").exists():
        return False
    CACHE.mkdir(parents=True, exist_ok=True)
    # Clones sharing the cache (LAB_IMAGE_CACHE) build it one at a time.
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return False
        build_image_locked(target)
    return True


def build_image_locked(target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    if not (partial / ".debootstrapped").exists():
        if partial.exists():
            shutil.rmtree(partial)
        log(f"debootstrap {SUITE} with {len(PACKAGES)} packages into {partial} (a few minutes)")
        result = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(partial),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise SystemExit(
                f"debootstrap failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        (partial / ".debootstrapped").write_text("")
    if not (partial / ".webmail").exists():
        install_webmail_packages(partial)
        (partial / ".webmail").write_text("")
    for unit in DISABLED:
        run("systemctl", f"--root={partial}", "disable", unit, check=False)
    run("systemctl", f"--root={partial}", "enable", "systemd-networkd.service", "ssh.service")
    run("systemctl", f"--root={partial}", "mask", "systemd-resolved.service", check=False)
    (partial / "etc" / "machine-id").write_text("")
    apt_clean = partial / "var" / "cache" / "apt" / "archives"
    for deb in apt_clean.glob("*.deb"):
        deb.unlink()
    (partial / ".complete").write_text(image_key() + "\n")
    partial.rename(target)
    for old in CACHE.glob("rootfs-*"):
        if old != target:  # images of older package lists
            shutil.rmtree(old, ignore_errors=True)


def install_webmail_packages(rootfs: Path) -> None:
    """apt-get inside the image (nspawn, not booted: no service starts)."""
    log(f"installing the webmail packages into {rootfs} (about a minute)")
    script = " && ".join(
        [
            "printf '%s\\n' "
            + " ".join(shlex.quote(line) for line in WEBMAIL_PRESEED)
            + " | debconf-set-selections",
            "apt-get update -qq",
            *(
                "apt-get install -y -qq --no-install-recommends " + " ".join(step)
                for step in WEBMAIL_PACKAGES
            ),
            "apt-get clean",
        ]
    )
    result = subprocess.run(
        [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "-D",
            str(rootfs),
            "--setenv=DEBIAN_FRONTEND=noninteractive",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise SystemExit(
            "installing the webmail packages into the image failed"
            f" (apt-get in {rootfs}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


# -- state ---------------------------------------------------------------------------------------


def ssh_key() -> Path:
    key = LAB / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "estafeta-lab", "-f", str(key))
    return key


def load_state() -> dict[str, dict[str, object]]:
    if STATE.exists():
        return json.loads(STATE.read_text())  # type: ignore[no-any-return]
    return {}


def write_json(path: Path, data: object) -> None:
    LAB.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.rename(path)


def save_state(state: dict[str, dict[str, object]]) -> None:
    write_json(STATE, state)


def saved_net() -> Net | None:
    """The network of this clone's lab, as ``net`` wrote it."""
    if NET_FILE.exists():
        return net_from_json(json.loads(NET_FILE.read_text()))
    return None


def current_net() -> Net:
    """The lab this clone runs (lab.json), else the one the environment names."""
    return saved_net() or net_from_env()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie or a recycled PID is not our nspawn.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"systemd-nspawn" in cmdline


def running_hosts() -> list[str]:
    return [n for n, h in load_state().items() if alive(int(h["pid"]))]  # type: ignore[call-overload]


# -- the bridge ----------------------------------------------------------------------------------


def bridge_owner(net: Net) -> str | None:
    """None: no such link. "": a link without an alias (labctl before lab
    names made br-lab so; counted as ours). Otherwise the alias."""
    result = run("ip", "-j", "link", "show", "dev", net.bridge, check=False)
    if result.returncode != 0:
        return None
    (link,) = json.loads(result.stdout)
    return str(link.get("ifalias", ""))


def bridge_is_ours(net: Net) -> bool:
    return bridge_owner(net) in ("", OWNER)


def check_free(net: Net) -> None:
    """Fail, saying why, when the lab's bridge or network is taken."""
    owner = bridge_owner(net)
    if owner not in (None, "", OWNER):
        raise SystemExit(
            f"labctl: {net.bridge} belongs to another lab ({owner}): choose another LAB_NAME"
        )
    routes = json.loads(run("ip", "-j", "-4", "route", "show").stdout or "[]")
    conflicts = route_conflicts(net, routes, own_bridge=owner is not None)
    if conflicts:
        raise SystemExit(
            f"labctl: lab {net.name!r} wants {net.subnet}, but this machine routes "
            + "; ".join(conflicts)
            + ": choose another LAB_NAME or set LAB_SUBNET to a free /24"
        )


def bridge_up(net: Net) -> bool:
    if bridge_owner(net) is not None:
        return False
    run("ip", "link", "add", net.bridge, "type", "bridge")
    run("ip", "link", "set", "dev", net.bridge, "alias", OWNER)
    run("ip", "addr", "add", f"{net.gateway}/24", "dev", net.bridge)
    run("ip", "link", "set", net.bridge, "up")
    return True


# -- the hosts -----------------------------------------------------------------------------------


def prepare_root(net: Net, name: str, ip: str, fqdn: str) -> Path:
    host_dir = LAB / "hosts" / name
    rootfs = host_dir / "rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    host_dir.mkdir(parents=True, exist_ok=True)
    log(f"{name}: copying the image")
    run("cp", "-a", "--reflink=auto", str(image_dir()), str(rootfs))
    short = fqdn.split(".")[0]
    (rootfs / "etc" / "hostname").write_text(fqdn + "\n")
    (rootfs / "etc" / "hosts").write_text(
        f"127.0.0.1 localhost\n{ip} {fqdn} {short}\n::1 localhost ip6-localhost ip6-loopback\n"
    )
    network = rootfs / "etc" / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "10-host0.network").write_text(
        "[Match]\nName=host0\n\n[Network]\n"
        f"Address={ip}/24\nGateway={net.gateway}\nDNS={net.dns}\nLinkLocalAddressing=no\n"
        "IPv6AcceptRA=no\n"
    )
    resolv = rootfs / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(f"nameserver {net.dns}\n")
    ssh_dir = rootfs / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    public = ssh_key().with_suffix(".pub").read_text()
    (ssh_dir / "authorized_keys").write_text(public)
    (ssh_dir / "authorized_keys").chmod(0o600)
    # Fresh host keys per host (the image has none or shared ones).
    for old in (rootfs / "etc" / "ssh").glob("ssh_host_*"):
        old.unlink()
    run("ssh-keygen", "-q", "-A", "-f", str(rootfs))
    (rootfs / "etc" / "machine-id").write_text(hashlib.md5(fqdn.encode()).hexdigest() + "\n")  # noqa: S324
    return rootfs


def boot(net: Net, name: str, ip: str, fqdn: str) -> int:
    rootfs = prepare_root(net, name, ip, fqdn)
    log_path = LAB / "hosts" / name / "console.log"
    with log_path.open("ab") as console:
        process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--register=no",
                "--keep-unit",
                "--quiet",
                "-b",
                "-D",
                str(rootfs),
                "-M",
                net.machine(name),
                f"--network-bridge={net.bridge}",
                "--capability=CAP_NET_ADMIN",
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=console,
            start_new_session=True,
        )
    return process.pid


def wait_ssh(ip: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((ip, 22), timeout=1) as sock:
            if sock.recv(4).startswith(b"SSH-"):
                return
        time.sleep(0.3)
    raise SystemExit(f"{ip}: SSH did not come up within {timeout:.0f} s")


def parse_spec(spec: str) -> tuple[str, str, str]:
    """NAME=IP[:FQDN] -> (name, ip, fqdn); the FQDN defaults to the name."""
    name, _, rest = spec.partition("=")
    ip, _, fqdn = rest.partition(":")
    if not name or not ip:
        raise SystemExit(f"labctl: {spec!r} is not NAME=IP[:FQDN]")
    return name, ip, fqdn or name


def cmd_net() -> dict[str, object]:
    """Settle this clone's lab network from LAB_NAME / LAB_SUBNET and write
    .lab/lab.json, which the inventories read for their addresses."""
    want = net_from_env()
    have = saved_net() or Net(DEFAULT_NAME, DEFAULT_SUBNET)
    running = running_hosts()
    if running and have != want:
        raise SystemExit(
            f"labctl: this clone's lab {have.name!r} ({have.subnet}) is running "
            f"({', '.join(running)}): 'make stop' it before starting lab {want.name!r} "
            f"({want.subnet})"
        )
    check_free(want)
    changed = saved_net() != want
    if changed:
        write_json(NET_FILE, want.as_json())
    return {"changed": changed, "net": want.as_json()}


def cmd_up(specs: list[str]) -> dict[str, object]:
    changed = bool(cmd_net()["changed"])
    net = current_net()
    parsed = [parse_spec(spec) for spec in specs]
    for name, ip, _ in parsed:
        check_spec(net, name, ip)
    changed |= build_image()
    changed |= bridge_up(net)
    state = load_state()
    started = []
    for name, ip, fqdn in parsed:
        current = state.get(name)
        if current and alive(int(current["pid"])) and current["ip"] == ip:  # type: ignore[call-overload]
            continue
        if current and alive(int(current["pid"])):  # type: ignore[call-overload]
            stop(int(current["pid"]))  # type: ignore[call-overload]
            wait_link_gone(net.machine(name))
        pid = boot(net, name, ip, fqdn)
        state[name] = {"pid": pid, "ip": ip, "fqdn": fqdn, "machine": net.machine(name)}
        save_state(state)
        started.append(name)
        changed = True
    for name in started:
        wait_ssh(str(state[name]["ip"]))
        log(f"{name}: up at {state[name]['ip']}")
    warnings = update_hosts_file(net, state)
    return {
        "changed": changed,
        "net": net.as_json(),
        "hosts": state,
        "started": started,
        "warnings": warnings,
    }


def stop(pid: int, timeout: float = 30.0) -> None:
    """systemd-nspawn turns SIGTERM into an orderly poweroff of the container."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.2)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.5)


def wait_link_gone(machine: str, timeout: float = 15.0) -> None:
    """nspawn's end of the host's veth pair ("vb-MACHINE") goes when the
    machine has stopped; a new machine of the same name needs the name free."""
    link = f"vb-{machine}"
    if len(link) > 15:  # nspawn shortens long names its own way: nothing to wait for
        return
    deadline = time.monotonic() + timeout
    while run("ip", "link", "show", link, check=False).returncode == 0:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"labctl: {link} is still there {timeout:.0f} s after {machine} stopped"
            )
        time.sleep(0.2)


def cmd_renew(specs: list[str]) -> dict[str, object]:
    """Stop each named host, throw its root file system away and boot a fresh
    copy of the image at the same address (a new machine: new SSH host keys,
    nothing of the old one). The other hosts and the bridge stay as they are."""
    net = current_net()
    if bridge_owner(net) is None or not bridge_is_ours(net):
        raise SystemExit(f"labctl: {net.bridge} is not this lab's: start the lab with 'up' first")
    parsed = [parse_spec(spec) for spec in specs]
    for name, ip, _ in parsed:
        check_spec(net, name, ip)
    build_image()
    state = load_state()
    renewed = []
    for name, ip, fqdn in parsed:
        current = state.get(name)
        if current and alive(int(current["pid"])):  # type: ignore[call-overload]
            log(f"{name}: stopping")
            stop(int(current["pid"]))  # type: ignore[call-overload]
        wait_link_gone(net.machine(name))
        pid = boot(net, name, ip, fqdn)
        state[name] = {"pid": pid, "ip": ip, "fqdn": fqdn, "machine": net.machine(name)}
        save_state(state)
        renewed.append(name)
    for name in renewed:
        wait_ssh(str(state[name]["ip"]))
        log(f"{name}: renewed, up at {state[name]['ip']}")
    warnings = update_hosts_file(net, state)
    return {"changed": True, "hosts": state, "renewed": renewed, "warnings": warnings}


def cmd_down() -> dict[str, object]:
    """Stop this clone's lab: its hosts, its bridge (not one another clone
    made), its copies, its /etc/hosts block."""
    net = current_net()
    state = load_state()
    changed = False
    for name, host in state.items():
        pid = int(host["pid"])  # type: ignore[call-overload]
        if alive(pid):
            log(f"{name}: stopping")
            stop(pid)
            changed = True
    owner = bridge_owner(net)
    if owner is not None and bridge_is_ours(net):
        run("ip", "link", "del", net.bridge)
        changed = True
    elif owner is not None:
        log(f"{net.bridge} belongs to another lab ({owner}): left alone")
    # An nspawn of ours the state file forgot (a crash between boot and save).
    for pid in stray_machines():
        log(f"stopping stray systemd-nspawn {pid}")
        stop(pid)
        changed = True
    hosts = LAB / "hosts"
    if hosts.exists():
        shutil.rmtree(hosts)
        changed = True
    STATE.unlink(missing_ok=True)
    if NET_FILE.exists():
        NET_FILE.unlink()
        changed = True
    update_hosts_file(net, {})
    left = leftovers(net)
    if left:
        raise SystemExit("labctl: still there after down: " + "; ".join(left))
    return {"changed": changed}


def stray_machines() -> list[int]:
    """PIDs of systemd-nspawn processes booting a root file system under .lab/hosts."""
    needle = str(LAB / "hosts").encode() + b"/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"systemd-nspawn" in cmdline and needle in cmdline:
            found.append(int(entry.name))
    return found


def leftovers(net: Net) -> list[str]:
    """What this clone's lab left behind: processes, the bridge, veth links, mounts."""
    left = [f"systemd-nspawn pid {pid}" for pid in stray_machines()]
    if not bridge_is_ours(net):  # no bridge, or another clone's: nothing of ours on it
        return left + mounts_left()
    left.append(f"bridge {net.bridge}")
    links = run("ip", "-o", "link", "show", check=False).stdout
    left += [
        f"link {line.split(':')[1].strip().split('@')[0]}"
        for line in links.splitlines()
        if f"master {net.bridge} " in line
    ]
    return left + mounts_left()


def mounts_left() -> list[str]:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    return [f"mount {m.split()[1]}" for m in mounts if m.split()[1].startswith(f"{LAB}/")]


def cmd_status() -> dict[str, object]:
    net = current_net()
    state = load_state()
    return {
        "changed": False,
        "net": net.as_json(),
        "hosts": {n: {**h, "running": alive(int(h["pid"]))} for n, h in state.items()},  # type: ignore[call-overload]
        "bridge": bridge_owner(net) is not None,
        "bridge_owner": bridge_owner(net),
        "leftovers": leftovers(net) if not state else [],
        "image": str(image_dir()) if (image_dir() / ".complete").exists() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("image")
    sub.add_parser("net")
    up = sub.add_parser("up")
    up.add_argument("hosts", nargs="+", metavar="NAME=IP[:FQDN]")
    renew = sub.add_parser("renew")
    renew.add_argument("hosts", nargs="+", metavar="NAME=IP[:FQDN]")
    sub.add_parser("down")
    sub.add_parser("status")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("labctl: must run as root (debootstrap, bridges, nspawn)", file=sys.stderr)
        return 2
    if args.command == "image":
        result: dict[str, object] = {"changed": build_image(), "image": str(image_dir())}
    elif args.command == "net":
        result = cmd_net()
    elif args.command == "up":
        result = cmd_up(args.hosts)
    elif args.command == "renew":
        result = cmd_renew(args.hosts)
    elif args.command == "down":
        result = cmd_down()
    else:
        result = cmd_status()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
