#!/usr/bin/env python3
"""Lab hosts: booted Debian 12 machines under systemd-nspawn, on a bridge.

    labctl.py image                 build (or reuse) the cached root file system
    labctl.py up NAME=IP[:FQDN] ... create the bridge and boot each host
    labctl.py renew NAME=IP[:FQDN]  stop that host, throw its root away, boot a fresh copy
                                    of the image (the other hosts keep running)
    labctl.py down                  stop every lab host, remove the bridge and the copies
    labctl.py status                JSON: the hosts, their PIDs and addresses

Everything lives under the repository: the image cache in ``.cache/lab/``
(keyed by the package list, so it is built once per machine) and the running
lab in ``.lab/`` (one copy of the root file system per host, the SSH key,
state.json). Hosts get a static address on ``br-lab`` (198.51.100.0/24,
TEST-NET-2); nothing is routed beyond the bridge. Ansible reaches them over
SSH as root with ``.lab/ssh/id_ed25519``, like real servers.

Output: one JSON object on stdout with ``changed`` (for Ansible's
``changed_when``); progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "lab"
LAB = ROOT / ".lab"
STATE = LAB / "state.json"
BRIDGE = "br-lab"
BRIDGE_ADDRESS = "198.51.100.1/24"
LAB_DNS = "198.51.100.2"
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
        "procps",
        "python3",
        "python3-apt",
        # debootstrap does not resolve virtual packages: the cffi backend by name.
        "python3-cffi-backend",
        "python3-cryptography",
        "python3-venv",
        "sudo",
        "systemd",
        "systemd-sysv",
        "systemd-timesyncd",
        "unbound",
        "unattended-upgrades",
    ]
)
# Services the image has installed but that roles decide about.
DISABLED = [
    "knot.service",
    "unbound.service",
    "pebble.service",
    "systemd-timesyncd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
]


def log(message: str) -> None:
    print(f"labctl: {message}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload,no-any-return]


def image_key() -> str:
    text = SUITE + " " + " ".join(PACKAGES) + " v2"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def image_dir() -> Path:
    return CACHE / f"rootfs-{image_key()}"


def build_image() -> bool:
    target = image_dir()
    if (target / ".complete").exists():
        return False
    CACHE.mkdir(parents=True, exist_ok=True)
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
    return True


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


def save_state(state: dict[str, dict[str, object]]) -> None:
    LAB.mkdir(exist_ok=True)
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.rename(STATE)


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


def bridge_up() -> bool:
    if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        return False
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    return True


def prepare_root(name: str, ip: str, fqdn: str) -> Path:
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
        f"Address={ip}/24\nGateway=198.51.100.1\nDNS={LAB_DNS}\nLinkLocalAddressing=no\n"
        "IPv6AcceptRA=no\n"
    )
    resolv = rootfs / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(f"nameserver {LAB_DNS}\n")
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


def boot(name: str, ip: str, fqdn: str) -> int:
    rootfs = prepare_root(name, ip, fqdn)
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
                name,
                f"--network-bridge={BRIDGE}",
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


def cmd_up(specs: list[str]) -> dict[str, object]:
    changed = build_image()
    changed |= bridge_up()
    state = load_state()
    started = []
    for spec in specs:
        name, ip, fqdn = parse_spec(spec)
        current = state.get(name)
        if current and alive(int(current["pid"])) and current["ip"] == ip:  # type: ignore[call-overload]
            continue
        pid = boot(name, ip, fqdn)
        state[name] = {"pid": pid, "ip": ip, "fqdn": fqdn}
        save_state(state)
        started.append(name)
        changed = True
    for name in started:
        wait_ssh(str(state[name]["ip"]))
        log(f"{name}: up at {state[name]['ip']}")
    return {"changed": changed, "hosts": state, "started": started}


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


def wait_link_gone(name: str, timeout: float = 15.0) -> None:
    """nspawn's end of the host's veth pair ("vb-NAME") goes when the machine
    has stopped; a new machine of the same name needs the name free."""
    link = f"vb-{name}"
    if len(link) > 15:  # nspawn shortens long names its own way: nothing to wait for
        return
    deadline = time.monotonic() + timeout
    while run("ip", "link", "show", link, check=False).returncode == 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"labctl: {link} is still there {timeout:.0f} s after {name} stopped")
        time.sleep(0.2)


def cmd_renew(specs: list[str]) -> dict[str, object]:
    """Stop each named host, throw its root file system away and boot a fresh
    copy of the image at the same address (a new machine: new SSH host keys,
    nothing of the old one). The other hosts and the bridge stay as they are."""
    if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        raise SystemExit(f"labctl: {BRIDGE} does not exist: start the lab with 'up' first")
    build_image()
    state = load_state()
    renewed = []
    for spec in specs:
        name, ip, fqdn = parse_spec(spec)
        current = state.get(name)
        if current and alive(int(current["pid"])):  # type: ignore[call-overload]
            log(f"{name}: stopping")
            stop(int(current["pid"]))  # type: ignore[call-overload]
        wait_link_gone(name)
        pid = boot(name, ip, fqdn)
        state[name] = {"pid": pid, "ip": ip, "fqdn": fqdn}
        save_state(state)
        renewed.append(name)
    for name in renewed:
        wait_ssh(str(state[name]["ip"]))
        log(f"{name}: renewed, up at {state[name]['ip']}")
    return {"changed": True, "hosts": state, "renewed": renewed}


def cmd_down() -> dict[str, object]:
    state = load_state()
    changed = False
    for name, host in state.items():
        pid = int(host["pid"])  # type: ignore[call-overload]
        if alive(pid):
            log(f"{name}: stopping")
            stop(pid)
            changed = True
    if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        run("ip", "link", "del", BRIDGE)
        changed = True
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
    left = leftovers()
    if left:
        raise SystemExit("labctl: still there after down: " + "; ".join(left))
    return {"changed": changed}


def stray_machines() -> list[int]:
    """PIDs of systemd-nspawn processes booting a root file system under .lab/hosts."""
    needle = str(LAB / "hosts").encode()
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


def leftovers() -> list[str]:
    """What a lab left behind: processes, the bridge, veth links, mounts."""
    left = [f"systemd-nspawn pid {pid}" for pid in stray_machines()]
    if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        left.append(f"bridge {BRIDGE}")
    links = run("ip", "-o", "link", "show", check=False).stdout
    left += [
        f"link {line.split(':')[1].strip().split('@')[0]}"
        for line in links.splitlines()
        if f"master {BRIDGE}" in line
    ]
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    left += [f"mount {m.split()[1]}" for m in mounts if m.split()[1].startswith(str(LAB))]
    return left


def cmd_status() -> dict[str, object]:
    state = load_state()
    return {
        "changed": False,
        "hosts": {n: {**h, "running": alive(int(h["pid"]))} for n, h in state.items()},  # type: ignore[call-overload]
        "bridge": run("ip", "link", "show", BRIDGE, check=False).returncode == 0,
        "leftovers": leftovers() if not state else [],
        "image": str(image_dir()) if (image_dir() / ".complete").exists() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("image")
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
