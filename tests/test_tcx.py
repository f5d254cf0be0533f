"""tcx (issue 11 §4): on this kernel attach puts the classifier on egress through a pinned BPF link;
HTB still classifies by skb->priority under it; a link that was never pinned dies with its
process; clsact + cls_bpf is used where a tcx program would hide someone's clsact filters."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys

import pytest
from attach_support import mfs, veth_pair
from nettools import VethPair, sh

from mfs_tc import layout, tcx
from mfs_tc.errors import MfsError
from mfs_tc.layout import default_dscp
from mfs_tc.loader import AttachOptions, attach, detach
from mfs_tc.maps import PinnedMaps, set_static
from mfs_tc.netlink import socket_in

pytestmark = pytest.mark.privileged


@pytest.fixture
def net():
    with veth_pair() as n:
        yield n


def _class_packets(net: VethPair, classid: str) -> int:
    """Packets sent by an HTB class (`tc -s class show` has no JSON for classes)."""
    shown = sh("tc", "-s", "class", "show", "dev", net.dev_a, ns=net.a)
    m = re.search(rf"class htb {classid} .*?\n\s*Sent \d+ bytes (\d+) pkt", shown)
    assert m, f"no class {classid}"
    return int(m.group(1))


def test_tcx_attach_classifies_into_htb_and_marks(net: VethPair) -> None:
    st = attach(AttachOptions(net.dev_a, netns=net.a, qdisc="htb", rate_bps=1_000_000_000))
    assert st.hook == "tcx" and "clsact" not in sh("tc", "qdisc", "show", "dev", net.dev_a, ns=net.a)
    r = mfs("status", net.dev_a, "-n", net.a, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["hook"] == "tcx" and s["attached"] and not s["problems"], s
    with PinnedMaps.open(net.dev_a, net.a) as maps:
        set_static(maps, (net.ip_a, net.ip_b, 40005, 7005, "udp"), 5)
    subprocess.run(["ip", "netns", "exec", net.a, "ping", "-c", "1", "-W", "1", net.ip_b], capture_output=True)
    rx = socket_in(net.b, socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    rx.bind((net.ip_b, 7005))
    rx.settimeout(5)
    tx = socket_in(net.a, socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind((net.ip_a, 40005))
    before = _class_packets(net, "4d46:15")
    try:
        for _ in range(20):
            tx.sendto(b"p" * 100, (net.ip_b, 7005))
        tos = []
        for _ in range(20):
            _d, anc, _f, _a = rx.recvmsg(2048, socket.CMSG_SPACE(1))
            tos += [c[2][0] >> 2 for c in anc if c[1] == socket.IP_TOS]
    finally:
        tx.close()
        rx.close()
    assert tos == [default_dscp(8)[5]] * 20
    assert _class_packets(net, "4d46:15") - before == 20  # HTB leaf of level 5: skb->priority under tcx
    removed = detach(net.dev_a, net.a)
    assert "tcx egress link" in removed and tcx.egress_progs(st.ifindex, net.a) == []


def test_a_link_never_pinned_dies_with_its_process(net: VethPair) -> None:
    """The window of an attach between BPF_LINK_CREATE and the pin: killed there, nothing stays."""
    code = (
        "import sys, time\nfrom bcc import BPF\nfrom mfs_tc import bpfsys, tcx\nfrom mfs_tc.netlink import iproute\n"
        "b = BPF(text=b'int k(struct __sk_buff *s) { return -1; }')\nfn = b.load_func(b'k', BPF.SCHED_CLS)\n"
        "with iproute(sys.argv[1]) as ipr: idx = ipr.link_lookup(ifname=sys.argv[2])[0]\n"
        "with tcx._in_netns(sys.argv[1]):\n"
        "    attr = tcx._LinkCreateAttr(prog_fd=fn.fd, target_ifindex=idx, attach_type=tcx.BPF_TCX_EGRESS)\n"
        "    fd = bpfsys.bpf(tcx.BPF_LINK_CREATE, attr)\n"
        "assert fd >= 0, fd\nprint(idx, flush=True)\ntime.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, net.a, net.dev_a], stdout=subprocess.PIPE, text=True)
    idx = int(p.stdout.readline())
    assert len(tcx.egress_progs(idx, net.a)) == 1
    p.send_signal(signal.SIGKILL)
    p.wait()
    for _ in range(50):  # the link is released with the last fd (deferred work in the kernel)
        if not tcx.egress_progs(idx, net.a):
            break
        subprocess.run(["sleep", "0.1"])
    assert tcx.egress_progs(idx, net.a) == []


def test_auto_keeps_clsact_where_tcx_would_skip_someones_filter(net: VethPair) -> None:
    sh("tc", "qdisc", "add", "dev", net.dev_a, "clsact", ns=net.a)
    sh(
        "tc",
        "filter",
        "add",
        "dev",
        net.dev_a,
        "egress",
        "pref",
        "10",
        "protocol",
        "ip",
        "u32",
        "match",
        "u32",
        "0",
        "0",
        "classid",
        "1:1",
        ns=net.a,
    )
    with pytest.raises(MfsError, match="--hook clsact"):
        attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none", hook="tcx"))
    assert not layout.pin_dir(net.dev_a, net.a).exists()
    st = attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))
    assert st.hook == "clsact"
    with pytest.raises(MfsError, match="detach first to change the hook"):
        attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none", hook="tcx"))
    detach(net.dev_a, net.a)
    assert "pref 10 u32" in sh("tc", "filter", "show", "dev", net.dev_a, "egress", ns=net.a)


def test_doctor_and_plan_say_which_hook() -> None:
    r = mfs("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert checks["tcx"]["ok"] and "attach uses it" in checks["tcx"]["detail"]
    r = mfs("plan", "lo", "--rate", "1gbit")
    assert "# hook tcx" in r.stdout and "bpf link create tcx_egress" in r.stdout, r.stdout
    r = mfs("plan", "lo", "--rate", "1gbit", "--hook", "clsact")
    assert "# hook clsact" in r.stdout and "tc filter replace" in r.stdout, r.stdout
