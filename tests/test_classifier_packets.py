"""The classifier's parser and rewrite on crafted packets, through BPF_PROG_TEST_RUN.

- every header layout it claims to parse (IPv4/IPv6, TCP/UDP, 802.1Q/802.1ad, IPv4 options,
  IPv6 extension headers) finds the flow entry;
- DSCP is rewritten with the ECN bits kept and the IPv4 header checksum right, nothing else moves;
- odd packets (truncated, fragments, non-IP, ICMP, bad lengths, too many extension headers) go
  out unharmed at the default level and are counted in their stats slot;
- trust-dscp mode maps the packet's DSCP to its level.
"""

from __future__ import annotations

import pytest
from datapath_support import (
    PRIO_BASE,
    TESTRUN_REFUSES,
    LoadedClassifier,
    assert_only_dscp_changed,
    odd_packets,
    stats_delta,
    untouched_slots,
)
from scapy.layers.inet import IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from mfs_tc import layout
from mfs_tc.entry import FlowEntry
from mfs_tc.layout import FlowKey

pytestmark = pytest.mark.privileged

A4, B4, A6, B6 = "10.9.0.1", "10.9.0.2", "fd99::1", "fd99::2"
SP, DP = 40001, 5201
LEVEL = 2
DEFAULT = 5
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
BODY = Raw(bytes(range(200)))


@pytest.fixture(scope="module")
def clf():
    with LoadedClassifier(default_level=DEFAULT, dscp=layout.DEFAULT_DSCP) as c:
        with c.map("flows") as m:
            for s, d in ((A4, B4), (A6, B6)):
                for proto in (6, 17):
                    m.update(FlowKey(s, d, SP, DP, proto).pack(), FlowEntry.static(LEVEL).pack())
        yield c


def _run(clf: LoadedClassifier, pkt: bytes):
    before = clf.stats()
    r = clf.run(pkt)
    assert r.retval == 0, "the classifier must never drop (TC_ACT_OK)"
    return r, stats_delta(before, clf.stats())


HITS = {
    "v4-tcp": ETH / IP(src=A4, dst=B4) / TCP(sport=SP, dport=DP) / BODY,
    "v4-udp": ETH / IP(src=A4, dst=B4) / UDP(sport=SP, dport=DP) / BODY,
    "v6-tcp": ETH / IPv6(src=A6, dst=B6) / TCP(sport=SP, dport=DP) / BODY,
    "v6-udp": ETH / IPv6(src=A6, dst=B6) / UDP(sport=SP, dport=DP) / BODY,
    "vlan-v4-tcp": ETH / Dot1Q(vlan=10) / IP(src=A4, dst=B4) / TCP(sport=SP, dport=DP) / BODY,
    "qinq-outer-v6-udp": ETH / Dot1AD(vlan=20) / IPv6(src=A6, dst=B6) / UDP(sport=SP, dport=DP) / BODY,
    "v4-options-tcp": ETH
    / IP(src=A4, dst=B4, options=[IPOption_NOP(), IPOption_RR(routers=["1.2.3.4"])])
    / TCP(sport=SP, dport=DP, options=[("MSS", 1400), ("NOP", None), ("WScale", 7)])
    / BODY,
    "v6-ext-tcp": ETH
    / IPv6(src=A6, dst=B6)
    / IPv6ExtHdrHopByHop()
    / IPv6ExtHdrDestOpt()
    / IPv6ExtHdrRouting(addresses=[])
    / IPv6ExtHdrDestOpt()
    / TCP(sport=SP, dport=DP)
    / BODY,
    "v4-ecn-ce-tcp": ETH / IP(src=A4, dst=B4, tos=0x03) / TCP(sport=SP, dport=DP) / BODY,
    "v6-ecn-ect1-udp": ETH / IPv6(src=A6, dst=B6, tc=0x01) / UDP(sport=SP, dport=DP) / BODY,
}


def _ip_layer(p):
    return p[IP] if IP in p else p[IPv6]


@pytest.mark.parametrize("name", sorted(HITS))
def test_flow_found_and_dscp_rewritten(clf: LoadedClassifier, name: str) -> None:
    pkt = HITS[name]
    raw = bytes(pkt)
    r, d = _run(clf, raw)
    assert r.priority == PRIO_BASE + LEVEL
    assert d[layout.STAT_HIT] == (1, len(raw)) and d[LEVEL] == (1, len(raw))
    assert d[layout.STAT_DSCP_SET][0] == 1
    out = Ether(r.data)
    assert len(r.data) == len(raw)
    ip_in, ip_out = _ip_layer(Ether(raw)), _ip_layer(out)
    want_dscp = layout.DEFAULT_DSCP[LEVEL]
    if IP in out:
        assert ip_out.tos >> 2 == want_dscp and ip_out.tos & 3 == ip_in.tos & 3  # ECN kept
        # checksum right: recompute over the rewritten header
        fixed = ip_out.copy()
        del fixed.chksum
        assert IP(bytes(fixed)).chksum == ip_out.chksum
        changed = [i for i, (a, b) in enumerate(zip(raw, r.data, strict=False)) if a != b]
        off = len(raw) - len(ip_in)  # where the IP header starts
        assert set(changed) <= {off + 1, off + 10, off + 11}  # TOS and header checksum only
    else:
        assert ip_out.tc >> 2 == want_dscp and ip_out.tc & 3 == ip_in.tc & 3
        off = len(raw) - len(ip_in)
        changed = [i for i, (a, b) in enumerate(zip(raw, r.data, strict=False)) if a != b]
        assert set(changed) <= {off, off + 1}  # version/traffic class/flow label word only
        assert ip_out.fl == ip_in.fl and ip_out.version == 6
    # L4 checksums untouched and still valid (DSCP is outside every pseudo-header)
    l4cls = TCP if TCP in out else UDP
    rebuilt = out.copy()
    rebuilt[l4cls].chksum = None
    assert Ether(bytes(rebuilt))[l4cls].chksum == out[l4cls].chksum


def test_dscp_already_right_is_left_alone(clf: LoadedClassifier) -> None:
    want = layout.DEFAULT_DSCP[LEVEL]
    raw = bytes(ETH / IP(src=A4, dst=B4, tos=(want << 2) | 2) / TCP(sport=SP, dport=DP) / BODY)
    r, d = _run(clf, raw)
    assert r.data == raw and r.priority == PRIO_BASE + LEVEL
    assert d[layout.STAT_DSCP_SET][0] == 0 and d[layout.STAT_HIT][0] == 1


ODD = odd_packets(ETH, A4, B4, A6, B6, SP, DP)
# the kernel's test run refuses frames shorter than the L3 header their EtherType announces:
# those go through the real egress path in tests/test_datapath_wire.py
TESTRUN_ODD = {k: v for k, v in ODD.items() if k not in TESTRUN_REFUSES}


@pytest.mark.parametrize("name", sorted(TESTRUN_ODD))
def test_odd_packets_pass_unharmed_and_are_counted(clf: LoadedClassifier, name: str) -> None:
    """Odd and unknown packets: the default level (pure control packets: the control level,
    here the same), never dropped; malformed and non-IP ones byte for byte, other untracked IP
    traffic with only the DSCP of its level written (the trust boundary, issue 10.4)."""
    raw, slot = ODD[name]
    r, d = _run(clf, raw)
    assert r.priority == PRIO_BASE + DEFAULT
    if slot in untouched_slots():
        assert r.data == raw, "the packet must leave untouched"
    else:
        assert_only_dscp_changed(raw, r.data, layout.DEFAULT_DSCP[DEFAULT])
    assert d[slot] == (1, len(raw)), f"counted in slot {slot}: {d}"
    assert d[DEFAULT] == (1, len(raw))
    moved = {i for i, (p, _b) in enumerate(d) if p}
    extra = {layout.STAT_DSCP_SET} if r.data != raw else set()
    assert moved == {slot, DEFAULT} | extra, f"only its reason and the default level move: {d}"


def test_untracked_traffic_keeps_only_the_configured_dscps() -> None:
    """An unprivileged sender's DSCP 46 does not buy it EF on the wire: it leaves with the DSCP
    of the level it got, unless the operator keeps that DSCP (keep_dscp)."""
    pkt = lambda tos: bytes(ETH / IP(src=A4, dst=B4, tos=tos) / UDP(sport=7, dport=8) / BODY)  # noqa: E731
    with LoadedClassifier(default_level=DEFAULT, dscp=layout.DEFAULT_DSCP) as c:
        r = c.run(pkt(46 << 2 | 1))
        assert IP(r.data[14:]).tos == layout.DEFAULT_DSCP[DEFAULT] << 2 | 1
        c.keep_dscp = layout.dscp_mask([46])
        c.configure()
        assert c.run(pkt(46 << 2 | 1)).data == pkt(46 << 2 | 1)
        assert IP(c.run(pkt(34 << 2)).data[14:]).tos == layout.DEFAULT_DSCP[DEFAULT] << 2


def test_unknown_flows_control_packets_urgent_payload_bulk() -> None:
    """No live flow jumps to the top because its entry is missing: unknown flows' SYN, FIN,
    RST and pure ACKs get the control level, their payload the default (bulk) level."""
    with LoadedClassifier(default_level=6, control_level=1, dscp=layout.DEFAULT_DSCP) as c:
        for flags, body, want in (
            ("S", b"", 1),
            ("SA", b"", 1),
            ("A", b"", 1),
            ("F", b"", 1),
            ("R", b"", 1),
            ("PA", b"x" * 100, 6),
            ("A", b"x", 6),
        ):
            for ip in (IP(src=A4, dst=B4), IPv6(src=A6, dst=B6)):
                raw = bytes(ETH / ip / TCP(sport=9, dport=10, flags=flags) / Raw(body))
                r = c.run(raw)
                assert r.priority == PRIO_BASE + want, (flags, body, ip.name)
                assert_only_dscp_changed(raw, r.data, layout.DEFAULT_DSCP[want])
        # Ethernet padding after a pure ACK is not payload: still a control packet
        raw = bytes(ETH / IP(src=A4, dst=B4) / TCP(sport=9, dport=10, flags="A")) + b"\0" * 6
        assert c.level_of(raw) == 1
        assert c.level_of(bytes(ETH / IP(src=A4, dst=B4) / UDP(sport=9, dport=10))) == 6


def test_a_new_connection_on_a_used_5tuple() -> None:
    """A SYN on the 5-tuple of a connection that already ran (the kernel saw its ACK): a
    request's entry is deleted (`stale`) and the SYN is an unknown flow's control packet, so the
    new connection never inherits a dead request's level. An operator's static entry (no
    request) stays: `mfs-tc set` promises every packet of the 5-tuple its level."""

    def seg(sport: int, flags: str, body: bytes = b"") -> bytes:
        return bytes(ETH / IP(src=A4, dst=B4) / TCP(sport=sport, dport=DP, flags=flags) / Raw(body))

    request_flow, static_flow = FlowKey(A4, B4, 7001, DP, 6).pack(), FlowKey(A4, B4, 7002, DP, 6).pack()
    with LoadedClassifier(default_level=6, control_level=1, dscp=layout.DEFAULT_DSCP) as c:
        with c.map("flows") as m:
            m.update(request_flow, FlowEntry.static(3, request_id=0x55, gen=7).pack())
            m.update(static_flow, FlowEntry.static(3, gen=8).pack())
        for sport in (7001, 7002):  # the first connection: its SYN, then data with ACK
            assert c.level_of(seg(sport, "S")) == 3
            assert c.level_of(seg(sport, "PA", b"x" * 100)) == 3
        before = c.stats()
        assert c.level_of(seg(7001, "S")) == 1  # a new connection: the control level
        assert c.level_of(seg(7001, "PA", b"x" * 100)) == 6  # and its payload the default
        assert c.level_of(seg(7002, "S")) == 3
        assert c.level_of(seg(7002, "PA", b"x" * 100)) == 3
        assert stats_delta(before, c.stats())[layout.STAT_STALE][0] == 1
        with c.map("flows") as m:
            assert m.lookup(request_flow) is None
            assert m.lookup(static_flow) is not None


def test_default_level_follows_config() -> None:
    raw = ODD["arp"][0]
    with LoadedClassifier(default_level=1) as c:
        assert c.level_of(raw) == 1
        c.default_level = 3
        c.configure()
        assert c.level_of(raw) == 3


def test_without_config_the_program_is_a_pass_through() -> None:
    """Before the loader writes config (magic unset) every packet passes untouched, uncounted."""
    with LoadedClassifier() as c:
        with c.map("config") as m:
            m.update((0).to_bytes(4, "little"), b"\0" * layout.CONFIG_SIZE)
        raw = bytes(HITS["v4-tcp"])
        before = c.stats()
        r = c.run(raw)
        assert (r.retval, r.data, r.priority) == (0, raw, 0)
        assert all(x == (0, 0) for x in stats_delta(before, c.stats()))


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_trust_dscp_maps_dscp_to_level(v6: bool) -> None:
    with LoadedClassifier(dscp=layout.DEFAULT_DSCP, trust_dscp=True, default_level=6) as c:
        for level, dscp in enumerate(layout.DEFAULT_DSCP):
            tos = (dscp << 2) | 1
            ip = IPv6(src=A6, dst=B6, tc=tos) if v6 else IP(src=A4, dst=B4, tos=tos)
            raw = bytes(ETH / ip / UDP(sport=1, dport=2) / BODY)
            r = c.run(raw)
            assert r.priority == PRIO_BASE + level, (level, dscp)
            assert r.data == raw  # a switch port classifies, it does not rewrite
        ip = IPv6(src=A6, dst=B6, tc=63 << 2) if v6 else IP(src=A4, dst=B4, tos=63 << 2)
        assert c.level_of(bytes(ETH / ip / TCP() / BODY)) == 6  # unused DSCP: default level


def test_parsing_edge_cases(clf: LoadedClassifier) -> None:
    """IPv4 BIG TCP (tot_len 0), QinQ (802.1ad outer + 802.1Q inner), fragmented UDP (every
    fragment at the default level, so a datagram is not reordered), an entry level >= nlevels
    (the default level and counted, not silently the scavenger), a config default level out of
    range (clamped)."""
    big = ETH / IP(src=A4, dst=B4, len=0) / TCP(sport=SP, dport=DP, flags="PA") / BODY
    r, d = _run(clf, bytes(big))
    assert r.priority == PRIO_BASE + LEVEL and d[layout.STAT_HIT][0] == 1
    qinq = ETH / Dot1AD(vlan=100) / Dot1Q(vlan=7) / IP(src=A4, dst=B4) / UDP(sport=SP, dport=DP) / BODY
    r, d = _run(clf, bytes(qinq))
    assert r.priority == PRIO_BASE + LEVEL and d[layout.STAT_HIT][0] == 1
    assert_only_dscp_changed(bytes(qinq), r.data, layout.DEFAULT_DSCP[LEVEL])
    from scapy.layers.inet import fragment  # noqa: PLC0415

    frags = fragment(IP(src=A4, dst=B4) / UDP(sport=SP, dport=DP) / Raw(b"f" * 3000), fragsize=1000)
    assert len(frags) >= 3
    for f in frags:
        r, d = _run(clf, bytes(ETH / f))
        assert r.priority == PRIO_BASE + DEFAULT and d[layout.STAT_FRAGMENT][0] == 1


def test_level_beyond_nlevels_and_default_clamped() -> None:
    raw = bytes(ETH / IP(src=A4, dst=B4) / UDP(sport=SP, dport=DP) / BODY)
    with LoadedClassifier(nlevels=4, default_level=1) as c:
        with c.map("flows") as m:
            m.update(FlowKey(A4, B4, SP, DP, 17).pack(), FlowEntry.static(6).pack())
        before = c.stats()
        assert c.level_of(raw) == 1  # the default level, not the scavenger (3)
        assert stats_delta(before, c.stats())[layout.STAT_BAD_LEVEL][0] == 1
        c.default_level = 9  # an out-of-range config (the controller refuses to write one)
        c.configure()
        assert c.level_of(bytes(ETH / IP(src=A4, dst=B4) / UDP(sport=1, dport=2) / BODY)) == 3
