"""Netlink and tc plumbing shared by the loader, doctor and tests: an IPRoute bound to a network
namespace, interface lookup with clear errors, and `tc -j` queries."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netns import popns, pushns

from .errors import InterfaceError, KernelFeatureError, MfsError, PermissionDeniedError

NETNS_RUN_DIR = Path("/run/netns")


IFNAMSIZ = 16


def check_ifname(ifname: str) -> None:
    """An interface name the kernel could have (1..15 bytes, no '/', no whitespace, not . or ..):
    anything else is a clear error before it is used in a path or a command."""
    if (
        not ifname
        or ifname in (".", "..")
        or "/" in ifname
        or len(ifname.encode()) >= IFNAMSIZ
        or any(c.isspace() or c == ":" for c in ifname)
    ):
        raise InterfaceError(
            f"bad interface name {ifname!r}: Linux names are 1-15 characters without '/', ':' or " "spaces (see `ip link`)"
        )


def check_netns_name(netns: str | None) -> None:
    """A name `ip netns` could have made (a file name under /run/netns), whether it exists or not."""
    if netns is not None and (not netns or "/" in netns or netns in (".", "..") or "\0" in netns):
        raise InterfaceError(f"bad network namespace name {netns!r}: see `ip netns list` for the names")


def check_netns(netns: str | None) -> None:
    if netns is None:
        return
    check_netns_name(netns)
    if not (NETNS_RUN_DIR / netns).exists():
        known = sorted(p.name for p in NETNS_RUN_DIR.glob("*")) if NETNS_RUN_DIR.exists() else []
        raise InterfaceError(f"no network namespace {netns!r} (known: {', '.join(known) or 'none'}; see `ip netns list`)")


@contextmanager
def iproute(netns: str | None = None) -> Iterator[IPRoute]:
    """An IPRoute socket living in `netns` (the caller's own namespace when None). The socket is
    created inside the namespace with setns and used from this process, so file descriptors
    passed in messages (a BPF program's fd) are this process's."""
    check_netns(netns)
    if netns:
        pushns(netns)
        try:
            ipr = IPRoute()
        finally:
            popns()
    else:
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def socket_in(netns: str | None, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket living in `netns` (setns around its creation), usable from this process."""
    check_netns(netns)
    if not netns:
        return socket.socket(family, kind)
    pushns(netns)
    try:
        return socket.socket(family, kind)
    finally:
        popns()


def ifindex(ipr: IPRoute, ifname: str, netns: str | None = None) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        names = sorted(l.get_attr("IFLA_IFNAME") for l in ipr.get_links())
        where = f" in network namespace {netns!r}" if netns else ""
        raise InterfaceError(f"no interface {ifname!r}{where} (have: {', '.join(names)})")
    return int(found[0])


def link_speed_bps(ifname: str, netns: str | None = None) -> int | None:
    """The link speed the driver reports (ethtool speed in /sys), or None (veth, virtual)."""
    if netns:
        out = run_command(["cat", f"/sys/class/net/{ifname}/speed"], netns=netns, check=False, via_ip=True)
        text = out.strip()
    else:
        try:
            text = Path(f"/sys/class/net/{ifname}/speed").read_text().strip()
        except OSError:
            return None
    try:
        mbit = int(text)
    except ValueError:
        return None
    return mbit * 1_000_000 if mbit > 0 else None


def run_command(argv: list[str], netns: str | None = None, check: bool = True, via_ip: bool = False) -> str:
    """Run a command (tc, ...) in `netns`. tc takes `-n NS` itself; others go through ip netns exec."""
    if netns and argv and argv[0] == "tc" and not via_ip:
        argv = ["tc", "-n", netns] + argv[1:]
    elif netns:
        argv = ["ip", "netns", "exec", netns] + argv
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as exc:
        raise KernelFeatureError(f"{argv[0]} not found: install iproute2") from exc
    if check and r.returncode != 0:
        err = r.stderr.strip() or r.stdout.strip()
        if "Operation not permitted" in err:
            raise PermissionDeniedError(f"`{' '.join(argv)}`: {err} (run as root or with CAP_NET_ADMIN)")
        raise MfsError(f"`{' '.join(argv)}` failed: {err}")
    return r.stdout


def tc_json(args: list[str], netns: str | None = None) -> list[dict[str, Any]]:
    out = run_command(["tc", "-j"] + args, netns=netns)
    objs: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return objs


def is_root() -> bool:
    return os.geteuid() == 0
