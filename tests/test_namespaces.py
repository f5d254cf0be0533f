"""Serving processes in other mount namespaces (issue 11 §7): a process started with
`ip netns exec` (fresh sysfs on /sys, so the host's /sys/fs/bpf is hidden) and one in its own
mount namespace (`unshare -m` without /sys/fs/bpf, like a container; the host's bpffs
bind-mounted by the operator and named by MFS_TC_BPFFS) open the controller, register a flow, and
its packets leave with the level's DSCP on the wire. Where no bpffs is visible the error says so."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from attach_support import MFS, attached_veth
from nettools import VethPair

from mfs_tc.layout import default_dscp
from mfs_tc.netlink import socket_in

pytestmark = pytest.mark.privileged

LEVEL = 5
COUNT = 5

SERVE = """
import socket, sys
from mfs_tc.controller import Controller
dev, ns, src, dst, sport, dport = sys.argv[1:7]
with Controller.open(dev, netns=ns) as ctl:
    ctl.set_static((src, dst, int(sport), int(dport), "udp"), %d)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, int(sport)))
    for _ in range(%d):
        s.sendto(b"m" * 64, (dst, int(dport)))
print("sent")
""" % (LEVEL, COUNT)  # noqa: UP031 (the script has its own braces)


@pytest.fixture
def net():
    with attached_veth(qdisc="none") as n:
        yield n


def _receiver(net: VethPair, port: int) -> socket.socket:
    r = socket_in(net.b, socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    r.bind((net.ip_b, port))
    r.settimeout(5)
    return r


def _dscps(r: socket.socket, n: int) -> list[int]:
    out = []
    for _ in range(n):
        _data, anc, _flags, _addr = r.recvmsg(2048, socket.CMSG_SPACE(1))
        tos = [c[2][0] for c in anc if c[0] == socket.IPPROTO_IP and c[1] == socket.IP_TOS]
        out.append(tos[0] >> 2)
    return out


def _serve_cmd(net: VethPair, sport: int, dport: int) -> list[str]:
    return [sys.executable, "-c", SERVE, net.dev_a, net.a, net.ip_a, net.ip_b, str(sport), str(dport)]


def test_serving_process_under_ip_netns_exec_marks_its_flow(net: VethPair) -> None:
    r = _receiver(net, 7001)
    try:
        p = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                net.a,
                "sh",
                "-c",
                '[ "$(stat -f -c %T /sys/fs/bpf)" = sysfs ] && exec "$@"',
                "sh",
                *_serve_cmd(net, 41001, 7001),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0 and "sent" in p.stdout, p.stderr  # (and /sys/fs/bpf was hidden)
        assert _dscps(r, COUNT) == [default_dscp(8)[LEVEL]] * COUNT
    finally:
        r.close()


def test_serving_process_in_its_own_mount_namespace_with_mfs_tc_bpffs(net: VethPair) -> None:
    r = _receiver(net, 7002)
    view = Path(tempfile.mkdtemp(prefix="mfs-bpffs-view-"))
    try:
        script = (
            f"mount --bind /sys/fs/bpf {view}\n"  # the operator's bind mount (a container volume)
            "umount /sys/fs/bpf\n"  # a container without the host's bpffs on /sys/fs/bpf
            "umount /run/mfs-tc/bpffs 2>/dev/null || true\n"  # no fallback: MFS_TC_BPFFS must do it
            f'MFS_TC_BPFFS={view} exec ip netns exec {net.a} "$@"\n'
        )
        p = subprocess.run(
            ["unshare", "--mount", "sh", "-ec", script, "sh", *_serve_cmd(net, 41002, 7002)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0 and "sent" in p.stdout, p.stderr
        assert _dscps(r, COUNT) == [default_dscp(8)[LEVEL]] * COUNT
    finally:
        r.close()
        view.rmdir()


def test_no_visible_bpffs_is_a_clear_error(net: VethPair) -> None:
    script = "umount /sys/fs/bpf\n" "umount /run/mfs-tc/bpffs 2>/dev/null || true\n" 'exec "$@"\n'
    p = subprocess.run(
        ["unshare", "--mount", "sh", "-ec", script, "sh", *MFS, "flows", net.dev_a, "-n", net.a],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr, p
    assert "no bpf filesystem is visible" in p.stderr and "MFS_TC_BPFFS" in p.stderr, p.stderr
    p = subprocess.run(
        ["unshare", "--mount", "sh", "-ec", script, "sh", "env", "MFS_TC_BPFFS=/tmp", *MFS, "flows", net.dev_a, "-n", net.a],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "MFS_TC_BPFFS=/tmp is not a bpf filesystem" in p.stderr, p.stderr
