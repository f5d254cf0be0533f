"""attach/detach on a real veth in a network namespace: they leave `tc qdisc show`, `tc filter
show` and /sys/fs/bpf as they were; double attach and double detach are safe; re-attach keeps the
pinned maps; bad requests fail with a clear MfsError."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from attach_support import mfs, veth_pair
from datapath_support import packet_socket
from nettools import VethPair, sh
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from mfs_tc import bpfsys, layout, tcx
from mfs_tc.entry import FlowEntry
from mfs_tc.errors import MfsError
from mfs_tc.layout import FlowKey
from mfs_tc.loader import AttachOptions, attach, detach, load_state, state_path

pytestmark = pytest.mark.privileged


@pytest.fixture
def net():
    with veth_pair() as n:  # detached at the end: a failed test leaves no pins or state behind
        yield n


def _tc(net: VethPair, *args: str) -> str:
    return sh("tc", *args, ns=net.a)


def _snapshot(net: VethPair) -> dict:
    """What a user sees of the interface and of bpffs (restricted to this test's namespace, so
    other tests running at the same time do not disturb the comparison)."""
    ours = layout.PIN_ROOT / net.a
    return {
        "qdisc": _tc(net, "qdisc", "show", "dev", net.dev_a),
        "egress": _tc(net, "filter", "show", "dev", net.dev_a, "egress"),
        "ingress": _tc(net, "filter", "show", "dev", net.dev_a, "ingress"),
        "bpffs-top": sorted(p.name for p in Path("/sys/fs/bpf").iterdir() if p.name != "mfs"),
        "bpffs-ours": sorted(str(p) for p in ours.rglob("*")) if ours.exists() else None,
        "state": state_path(net.dev_a, net.a).exists(),
    }


def _pins(net: VethPair) -> Path:
    return layout.pin_dir(net.dev_a, net.a)


def _on_egress(net: VethPair, st) -> bool:
    """Our classifier is on the device: the tcx program attach recorded, or our cls_bpf filter."""
    if st.hook == "tcx":
        return tcx.egress_progs(st.ifindex, net.a) == [st.prog_id]
    f = _tc(net, "filter", "show", "dev", net.dev_a, "egress")
    return "mfs_egress" in f and "direct-action" in f and f"id {st.prog_id} " in f


@pytest.mark.parametrize("hook", ["clsact", "tcx"])
@pytest.mark.parametrize("qdisc", ["htb", "none", "auto"])
def test_attach_detach_restores_everything(net: VethPair, qdisc: str, hook: str) -> None:
    before = _snapshot(net)
    opts = AttachOptions(net.dev_a, netns=net.a, qdisc=qdisc, rate_bps=100_000_000, hook=hook)
    st = attach(opts)
    assert st.backend == ("none" if qdisc == "none" else "htb")  # this kernel has no ets/mqprio
    assert st.hook == hook
    q = _tc(net, "qdisc", "show", "dev", net.dev_a)
    assert ("clsact" in q) == (hook == "clsact")
    if qdisc != "none":
        assert "qdisc htb 4d46: root" in q
    assert _on_egress(net, st)
    if hook == "tcx":
        assert (_pins(net) / tcx.LINK_PIN).exists() and _tc(net, "filter", "show", "dev", net.dev_a, "egress") == ""
    for name in layout.MAP_NAMES:
        assert (_pins(net) / name).exists()
    assert load_state(net.dev_a, net.a) is not None
    removed = detach(net.dev_a, net.a)
    assert ("egress filter" if hook == "clsact" else "tcx egress link") in removed
    assert any("pinned maps" in r for r in removed)
    assert _snapshot(net) == before
    assert tcx.egress_progs(st.ifindex, net.a) == []
    assert detach(net.dev_a, net.a) == []  # double detach: nothing left, no error
    assert _snapshot(net) == before


@pytest.mark.parametrize("hook", ["clsact", "tcx"])
def test_double_attach_is_safe_and_keeps_maps(net: VethPair, hook: str) -> None:
    before = _snapshot(net)
    opts = AttachOptions(net.dev_a, netns=net.a, qdisc="htb", rate_bps=50_000_000, hook=hook)
    attach(opts)
    key = FlowKey(net.ip_a, net.ip_b, 1234, 5678)
    with bpfsys.BpfMap.open(_pins(net) / "flows") as m:
        m.update(key.pack(), FlowEntry.static(3).pack())
    qdisc1 = _tc(net, "qdisc", "show", "dev", net.dev_a)
    st2 = attach(opts)  # same options again
    st3 = attach(AttachOptions(net.dev_a, netns=net.a, qdisc="htb", rate_bps=80_000_000, levels=4))
    assert st2.backend == st3.backend == "htb" and st3.nlevels == 4 and st3.hook == hook
    assert _tc(net, "qdisc", "show", "dev", net.dev_a).count("clsact") == qdisc1.count("clsact") == (hook == "clsact")
    flt = _tc(net, "filter", "show", "dev", net.dev_a, "egress")
    assert sum("handle 0x1" in line for line in flt.splitlines()) == (hook == "clsact"), flt  # one filter, replaced
    assert _on_egress(net, st3) and st3.prog_id != st2.prog_id  # one program (the newest), swapped in place
    classes = _tc(net, "class", "show", "dev", net.dev_a)
    ids = sorted(line.split()[2] for line in classes.splitlines() if line.startswith("class htb"))
    assert ids == ["4d46:1", "4d46:10", "4d46:11", "4d46:12", "4d46:13"], ids  # parent + 4 leaves
    assert "ceil 80Mbit" in classes
    with bpfsys.BpfMap.open(_pins(net) / "flows") as m:
        assert FlowEntry.unpack(m.lookup(key.pack())).levels[0] == 3  # the controller's entry survived
    # the previous root recorded at the first attach is still the kernel default
    assert load_state(net.dev_a, net.a).prev_root is not None
    detach(net.dev_a, net.a)
    assert _snapshot(net) == before


def test_detach_keeps_a_foreign_ingress_filter_and_clsact(net: VethPair) -> None:
    """clsact that someone else made (with their filter) survives attach+detach."""
    _tc(net, "qdisc", "add", "dev", net.dev_a, "clsact")
    _tc(
        net,
        "filter",
        "add",
        "dev",
        net.dev_a,
        "ingress",
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
    )
    before = _snapshot(net)
    attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))
    detach(net.dev_a, net.a)
    assert _snapshot(net) == before


def test_attach_refuses_a_configured_root_qdisc(net: VethPair) -> None:
    _tc(net, "qdisc", "add", "dev", net.dev_a, "root", "handle", "1:", "tbf", "rate", "10mbit", "burst", "32k", "latency", "50ms")
    before = _snapshot(net)
    with pytest.raises(MfsError, match="--qdisc none"):
        attach(AttachOptions(net.dev_a, netns=net.a, qdisc="htb", rate_bps=10**8))
    assert _snapshot(net) == before  # all-or-nothing: nothing was left behind
    # marking only is fine over a foreign root qdisc, and detach leaves that qdisc alone
    attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))
    detach(net.dev_a, net.a)
    assert _snapshot(net) == before


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(ifname="nosuchdev0"), "no interface 'nosuchdev0'"),
        (dict(qdisc="ets"), "--qdisc htb"),
        (dict(levels=9), "--levels"),
        (dict(qdisc="cake"), "--qdisc must be"),
        (dict(default_level=8), "--default-level"),
        (dict(dscp=[1, 2]), "--dscp needs"),
    ],
)
def test_bad_requests_fail_clearly_and_leave_nothing(net: VethPair, opts: dict, match: str) -> None:
    before = _snapshot(net)
    kw = dict(ifname=net.dev_a, netns=net.a) | opts
    with pytest.raises(MfsError, match=match):
        attach(AttachOptions(**kw))
    assert _snapshot(net) == before


def test_htb_without_rate_takes_the_link_speed(net: VethPair) -> None:
    st = attach(AttachOptions(net.dev_a, netns=net.a, qdisc="htb"))
    try:
        assert st.rate_bps == 10_000_000_000  # veth reports 10000 Mbit/s when up
        assert "rate 10Gbit" in _tc(net, "class", "show", "dev", net.dev_a)
    finally:
        detach(net.dev_a, net.a)


def test_missing_netns_is_a_clear_error() -> None:
    with pytest.raises(MfsError, match="no network namespace"):
        attach(AttachOptions("veth0", netns="mfs-no-such-ns"))
    with pytest.raises(MfsError, match="no network namespace"):
        detach("veth0", "mfs-no-such-ns")


def test_cli_attach_status_detach(net: VethPair) -> None:
    before = _snapshot(net)
    r = mfs("attach", net.dev_a, "--netns", net.a, "--qdisc", "htb", "--rate", "100mbit", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "htb"
    icmp = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=net.ip_a, dst=net.ip_b) / ICMP())
    with packet_socket(net.a, net.dev_a) as s:
        for _ in range(3):
            s.send(icmp)
    r = mfs("status", net.dev_a, "--netns", net.a, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["attached"] and s["backend"] == "htb" and len(s["levels"]) == 8
    assert s["counters"]["no_l4"]["packets"] >= 3  # the pings (ICMP) at the default level
    assert s["levels"][6]["packets"] >= 3  # the default level: K-2
    r = mfs("detach", net.dev_a, "--netns", net.a)
    assert r.returncode == 0, r.stderr
    r = mfs("detach", net.dev_a, "--netns", net.a)
    assert r.returncode == 0 and "nothing" in r.stdout
    r = mfs("attach", "nosuchdev0", "--netns", net.a, "--qdisc", "none")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "nosuchdev0" in (r.stderr + r.stdout)
    assert _snapshot(net) == before


def test_state_root_left_clean(net: VethPair) -> None:
    attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))
    assert state_path(net.dev_a, net.a).exists()
    detach(net.dev_a, net.a)
    assert not state_path(net.dev_a, net.a).parent.exists() or not any(
        p.name.startswith(net.dev_a) for p in state_path(net.dev_a, net.a).parent.iterdir()
    )
    assert not os.path.exists(_pins(net))


@pytest.mark.privileged
def test_attach_without_root_is_a_clear_error_and_changes_nothing(net: VethPair):
    """An unprivileged user gets one readable line and a non-zero exit; the host is untouched."""
    before = _snapshot(net)
    from asuser import mfs_as

    r = mfs_as("nobody", "attach", net.dev_a, "--rate", "100mbit", netns=net.a, timeout=60)
    assert r.returncode == 1, r
    assert "needs root" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _snapshot(net) == before


@pytest.mark.privileged
def test_detach_after_the_namespace_is_gone_removes_pins_and_state():
    """A deleted namespace takes its interfaces and qdiscs along; detach still removes the pins
    and the attach state it left, and a wrong name (nothing of ours) is a clear error."""
    from mfs_tc.errors import InterfaceError
    from mfs_tc.loader import detach_all

    pair = VethPair().up()
    try:
        attach(AttachOptions(pair.dev_a, netns=pair.a, qdisc="htb", rate_bps=100_000_000))
        pin = layout.pin_dir(pair.dev_a, pair.a)
        assert (pin / "flows").exists() and state_path(pair.dev_a, pair.a).exists()
    finally:
        pair.down()
    removed = detach_all(pair.a)
    assert any("pinned maps" in r for r in removed), removed
    assert not pin.exists() and not pin.parent.exists()
    assert not state_path(pair.dev_a, pair.a).exists()
    with pytest.raises(InterfaceError):
        detach("nosuchdev0", pair.a)
