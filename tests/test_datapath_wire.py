"""The classifier on a real egress path (veth between two network namespaces), checked on the
wire at the peer:

- DSCP: the level's DSCP on real UDP and TCP traffic of known flows, ECN bits kept, the IPv4
  header checksum and the L4 checksums valid; IPv4 and IPv6;
- odd frames crafted with scapy and sent raw on veth0 (AF_PACKET goes through tc egress) arrive
  on veth1 byte for byte as sent (malformed, non-IP) or with only the DSCP of their level
  written (other untracked IP traffic: the trust boundary), and are counted in their stats slot.
"""

from __future__ import annotations

import socket

import pytest
from attach_support import attached_veth
from datapath_support import (
    Capture,
    assert_only_dscp_changed,
    odd_packets,
    packet_socket,
    read_stats,
    stats_delta,
    tcp_frames,
    untouched_slots,
)
from nettools import VethPair
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from mfs_tc import bpfsys, layout
from mfs_tc.entry import FlowEntry
from mfs_tc.layout import FlowKey
from mfs_tc.netlink import socket_in

pytestmark = pytest.mark.privileged

DEFAULT = 6
CONTROL = 0  # attach's default control level
SP, DP = 42001, 6201


def _only_dscp(raw: bytes, frame: bytes, want: int) -> bool:
    try:
        assert_only_dscp_changed(raw, frame, want)
    except AssertionError:
        return False
    return True


@pytest.fixture(scope="module")
def net():
    with attached_veth(checksums_in_software=True, qdisc="none", default_level=DEFAULT) as n:
        yield n


def _pin(net: VethPair):
    return layout.pin_dir(net.dev_a, net.a)


def _put(net: VethPair, key: FlowKey, entry: FlowEntry) -> None:
    with bpfsys.BpfMap.open(_pin(net) / "flows") as m:
        m.update(key.pack(), entry.pack())


def _check_ip(frame: bytes, level: int, ecn: int) -> None:
    p = Ether(frame)
    want = layout.DEFAULT_DSCP[level]
    if IP in p:
        ip = p[IP]
        assert (ip.tos >> 2, ip.tos & 3) == (want, ecn)
        fixed = ip.copy()
        del fixed.chksum
        assert IP(bytes(fixed)).chksum == ip.chksum, "IPv4 header checksum"
    else:
        ip = p[IPv6]
        assert (ip.tc >> 2, ip.tc & 3) == (want, ecn)
    l4 = TCP if TCP in p else UDP
    again = p.copy()
    again[l4].chksum = None
    assert Ether(bytes(again))[l4].chksum == p[l4].chksum, f"{l4.__name__} checksum"


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_dscp_on_the_wire_udp(net: VethPair, v6: bool) -> None:
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst = (net.ip6_a, net.ip6_b) if v6 else (net.ip_a, net.ip_b)
    level, ecn = 2, 2  # ECT(0)
    s = socket_in(net.a, fam, socket.SOCK_DGRAM)
    with s:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, ecn)
        else:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, ecn)
        s.bind((src, SP + v6))
        _put(net, FlowKey(src, dst, SP + v6, DP, socket.IPPROTO_UDP), FlowEntry.static(level))
        l3 = IPv6 if v6 else IP
        with Capture(net.b, net.dev_b) as cap:
            before = read_stats(_pin(net))
            for i in range(5):
                s.sendto(b"mfs%d" % i * 50, (dst, DP))
            got = cap.frames(5, match=lambda f: l3 in Ether(f) and UDP in Ether(f) and Ether(f)[UDP].dport == DP)
        d = stats_delta(before, read_stats(_pin(net)))
    assert len(got) == 5
    for f in got:
        _check_ip(f, level, ecn)
    # >=: the host's own untracked IPv6 ND/MLD packets meanwhile get their level's DSCP too
    assert d[layout.STAT_HIT][0] == 5 and d[level][0] == 5 and d[layout.STAT_DSCP_SET][0] >= 5


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_dscp_on_the_wire_tcp(net: VethPair, v6: bool) -> None:
    """A real TCP connection: every segment of the known flow (SYN included: the entry is written
    before connect) carries the level's DSCP, with valid IP and TCP checksums."""
    src, dst = (net.ip6_a, net.ip6_b) if v6 else (net.ip_a, net.ip_b)
    level, port = 1, DP + 10 + v6
    _put(net, FlowKey(src, dst, SP + 10 + v6, port), FlowEntry.static(level))
    got = tcp_frames(net, SP + 10 + v6, port, v6)
    data = [f for f in got if len(Ether(f)[TCP].payload) > 0]
    syn = [f for f in got if Ether(f)[TCP].flags.S]
    assert data and syn
    for f in data + syn:
        _check_ip(f, level, Ether(f)[IP].tos & 3 if not v6 else Ether(f)[IPv6].tc & 3)


ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


# the peer's receive path itself drops a VLAN tag with nothing after it (before any tap sees it)
RECEIVER_DROPS = frozenset({"vlan-truncated"})


def test_odd_frames_pass_unharmed_and_are_counted(net: VethPair) -> None:
    a4, b4, a6, b6 = "10.78.0.1", "10.78.0.2", "fd78::1", "fd78::2"
    for s, d in ((a4, b4), (a6, b6)):
        for proto in (6, 17):
            _put(net, FlowKey(s, d, SP, DP, proto), FlowEntry.static(1))
    odd = odd_packets(ETH, a4, b4, a6, b6, SP, DP)
    reps = 3
    tx = packet_socket(net.a, net.dev_a)
    failures = []
    with tx, Capture(net.a, net.dev_a, outgoing=True) as out, Capture(net.b, net.dev_b) as cap:
        for name, (raw, slot) in sorted(odd.items()):
            level = CONTROL if slot == layout.STAT_CONTROL else DEFAULT
            want = None if slot in untouched_slots() else layout.DEFAULT_DSCP[level]
            same = lambda f, raw=raw, want=want: f == raw or (want is not None and _only_dscp(raw, f, want))  # noqa: E731
            before = read_stats(_pin(net))
            for _ in range(reps):
                tx.send(raw)
            left = out.frames(reps, timeout=1.0, match=same)
            d = stats_delta(before, read_stats(_pin(net)))
            # >=: the host's own background (IPv6 ND/MLD) can add to no_l4/non_ip meanwhile
            if len(left) != reps:
                failures.append(f"{name}: {len(left)} of {reps} left veth0 byte-exact")
            if name not in RECEIVER_DROPS:
                got = cap.frames(reps, timeout=1.0, match=same)
                if len(got) != reps:
                    failures.append(f"{name}: {len(got)} of {reps} arrived on the peer byte-exact")
            if d[slot][0] < reps or d[level][0] < reps:
                failures.append(f"{name}: slot {slot} +{d[slot][0]}, level {level} +{d[level][0]}")
            if d[layout.STAT_HIT][0] or d[1][0]:
                failures.append(f"{name}: counted as a hit")
    assert not failures, "\n".join(failures)


def test_known_flow_raw_frame_is_marked(net: VethPair) -> None:
    """Control for the test above: the same path does classify a well-formed frame of a flow."""
    a4, b4 = "10.78.0.1", "10.78.0.2"
    _put(net, FlowKey(a4, b4, SP, DP, 17), FlowEntry.static(3))
    raw = bytes(ETH / IP(src=a4, dst=b4, tos=1) / UDP(sport=SP, dport=DP) / (b"z" * 100))
    with packet_socket(net.a, net.dev_a) as tx, Capture(net.b, net.dev_b) as cap:
        tx.send(raw)
        got = cap.frames(1, timeout=1.0, match=lambda f: UDP in Ether(f) and Ether(f)[UDP].sport == SP)
    assert len(got) == 1
    _check_ip(got[0], 3, 1)
