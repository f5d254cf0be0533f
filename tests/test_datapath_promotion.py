"""Promotion with no controller action, on real traffic through a veth egress.

An `mlu` flow and a `laxity` flow get entries once; their packets are at the deferred level before
the crossing time the entry implies and at the promoted level after it, with nobody touching the
maps. An `rli` flow changes level when, and only when, its request's cursor moves.

Each packet is a UDP datagram numbered in its payload; its level is read from the DSCP captured on
the peer. The oracle is FlowEntry.level() at CLOCK_MONOTONIC taken just before and just after the
send (the classifier runs inside sendto on veth), with the bytes already sent and the cursor.
TCP segments are ranked at the departure stamp TCP gave them (not the classifier's own clock read):
the same oracle holds for them, on the 5-tuple path and on the socket-storage path.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from attach_support import attached_veth
from datapath_support import Capture
from nettools import VethPair, drain
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from mfs_tc import bpfsys, layout
from mfs_tc.entry import FlowEntry, mlu_fixed, ps_per_byte
from mfs_tc.layout import FlowKey, FlowState, RequestRecord

pytestmark = pytest.mark.privileged

MS = 1_000_000
PAYLOAD = 200
DSCP_TO_LEVEL = {d: lv for lv, d in enumerate(layout.DEFAULT_DSCP)}


@pytest.fixture(scope="module")
def net():
    with attached_veth(qdisc="none") as n:
        yield n


def _udp(ns: str) -> socket.socket:
    from pyroute2.netns import popns, pushns

    pushns(ns)
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    finally:
        popns()


class Flow:
    def __init__(self, net: VethPair, sport: int, entry: FlowEntry) -> None:
        self.sock = _udp(net.a)
        self.sock.bind((net.ip_a, sport))
        self.dst = (net.ip_b, 7000)
        self.sport = sport
        self.entry = entry
        self.sent = 0
        self.sends: list[tuple[int, int, int, int]] = []  # (seq, t0, t1, bytes sent before)
        self.key = FlowKey(net.ip_a, net.ip_b, sport, 7000, socket.IPPROTO_UDP)

    def _write(self, data: bytes) -> None:
        self.sock.sendto(data, self.dst)

    def send(self, seq: int) -> None:
        data = struct.pack("!I", seq) + b"\0" * (PAYLOAD - 4)
        t0 = time.monotonic_ns()
        self._write(data)
        t1 = time.monotonic_ns()
        self.sends.append((seq, t0, t1, self.sent))
        self.sent += PAYLOAD


def _levels_on_wire(frames: list[bytes], sport: int, l4: type = UDP) -> dict[int, int]:
    """The level of each numbered packet of `sport` (a UDP datagram, or a TCP segment that holds
    exactly one write) from its DSCP."""
    out = {}
    for f in frames:
        p = Ether(f)
        if l4 in p and p[l4].sport == sport and len(p[l4].payload) == PAYLOAD:
            seq = struct.unpack("!I", bytes(p[l4].payload)[:4])[0]
            out[seq] = DSCP_TO_LEVEL[p[IP].tos >> 2]
    return out


def _crossing(e: FlowEntry, start: int, end: int, sent: int) -> int:
    """First ns in [start, end] where the oracle's level changes (bisection)."""
    lo, hi = start, end
    first = e.level(lo, sent=sent)
    while hi - lo > 1000:
        mid = (lo + hi) // 2
        if e.level(mid, sent=sent) == first:
            lo = mid
        else:
            hi = mid
    return hi


def _promotion_entries(now: int) -> tuple[FlowEntry, FlowEntry]:
    """An mlu and a laxity entry at a 100 Mbit/s reference rate, both promoted 5 -> 1 within 1 s."""
    rate = ps_per_byte(100e6)
    # mlu: needs 200 ms of the link; deadline in 1 s; promoted 5 -> 1 when MLU >= 0.5 (at ~0.6 s)
    mlu = FlowEntry(
        mode=layout.MODE_MLU,
        levels=[5, 1],
        thresholds=[mlu_fixed(0.5)],
        total_bytes=2_500_000,
        ps_per_byte=rate,
        deadline_ns=now + 1000 * MS,
    )
    # laxity: base 700 ms ahead; promoted 5 -> 1 once laxity < 300 ms (at ~0.4 s)
    lax = FlowEntry(mode=layout.MODE_LAXITY, levels=[1, 5], thresholds=[300 * MS], ps_per_byte=rate, deadline_ns=now + 700 * MS)
    return mlu, lax


def _send_until_the_deadline(net: VethPair, flows: list[Flow], now: int, l4: type) -> list[bytes]:
    """A numbered packet of each flow every 10 ms until just before `now` + 1 s; the frames of
    `l4` that reached the peer."""
    with Capture(net.b, net.dev_b) as cap:
        seq = 0
        while time.monotonic_ns() < now + 1000 * MS - 50 * MS:
            for f in flows:
                f.send(seq)
            seq += 1
            time.sleep(0.01)
        return cap.frames(2 * seq, timeout=2.0, match=lambda fr: l4 in (p := Ether(fr)) and len(p[l4].payload) == PAYLOAD)


def _check_promotion(flows: list[Flow], names: tuple[str, ...], frames: list[bytes], now: int, l4: type) -> None:
    """Each captured packet's level is the oracle's between the clock before and after its send:
    deferred (5) well before the entry's crossing, promoted (1) well after, at least 10 of each."""
    for f, name in zip(flows, names, strict=True):
        seen = _levels_on_wire(frames, f.sport, l4)
        assert len(seen) >= 0.95 * len(f.sends), f"{name}: {len(seen)} of {len(f.sends)} captured"
        cross = _crossing(f.entry, now, now + 1000 * MS, f.sent // 2)
        before = after = 0
        for s, t0, t1, sent in f.sends:
            if s not in seen:
                continue
            expect = {f.entry.level(t0, sent=sent), f.entry.level(t1, sent=sent)}
            assert seen[s] in expect, f"{name} packet {s}: level {seen[s]}, oracle {expect}"
            if t1 < cross - MS:
                assert seen[s] == 5, f"{name} packet {s} before the crossing is deferred"
                before += 1
            elif t0 > cross + MS:
                assert seen[s] == 1, f"{name} packet {s} after the crossing is promoted"
                after += 1
        assert before >= 10 and after >= 10, f"{name}: {before} deferred, {after} promoted packets"


def test_mlu_and_laxity_promote_on_time_without_a_controller(net: VethPair) -> None:
    now = time.monotonic_ns()
    mlu, lax = _promotion_entries(now)
    flows = [Flow(net, 43001, mlu), Flow(net, 43002, lax)]
    pin = layout.pin_dir(net.dev_a, net.a)
    with bpfsys.BpfMap.open(pin / "flows") as m:
        for f in flows:
            m.update(f.key.pack(), f.entry.pack())
    frames = _send_until_the_deadline(net, flows, now, UDP)
    _check_promotion(flows, ("mlu", "laxity"), frames, now, UDP)
    with bpfsys.BpfMap.open(pin / "flow_state") as m:  # what the kernel counted, in its own map
        for f in flows:
            st = FlowState.unpack(m.lookup(f.key.pack()))
            assert st.sent_bytes == f.sent and st.sent_pkts == len(f.sends) and st.cur_level == 1


class TcpFlow(Flow):
    """One TCP connection (no Nagle: a small write every 10 ms leaves as one segment of its own)."""

    def __init__(self, net: VethPair, sport: int, entry: FlowEntry, lst: socket.socket, port: int) -> None:
        from mfs_tc.netlink import socket_in

        self.sock = socket_in(net.a, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((net.ip_a, sport))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sport = sport
        self.entry = entry
        self.sent = 0
        self.sends = []
        self.key = FlowKey(net.ip_a, net.ip_b, sport, port, socket.IPPROTO_TCP)
        self.sock.connect((net.ip_b, port))
        conn, _ = lst.accept()
        self.sink = threading.Thread(target=drain, args=(conn,), daemon=True)
        self.sink.start()

    def _write(self, data: bytes) -> None:
        self.sock.sendall(data)


def test_tcp_segments_rank_at_their_departure_stamp(net: VethPair) -> None:
    """mlu and laxity on TCP: the level of each segment is the oracle's between the clock before
    and after its write, and the crossing falls where the entry says, on both lookup paths (an
    mlu flow by its 5-tuple, a laxity flow by its socket's storage). The stamp TCP gives a
    segment is CLOCK_MONOTONIC at its transmission: a stamp on another clock (or none) would put
    the levels seconds away from the oracle."""
    from mfs_tc.netlink import socket_in

    port = 7001
    lst = socket_in(net.b, socket.AF_INET, socket.SOCK_STREAM)
    lst.bind((net.ip_b, port))
    lst.listen(4)
    now = time.monotonic_ns()
    mlu, lax = _promotion_entries(now)
    pin = layout.pin_dir(net.dev_a, net.a)
    with bpfsys.BpfMap.open(pin / "flows") as fm:
        fm.update(FlowKey(net.ip_a, net.ip_b, 43011, port, socket.IPPROTO_TCP).pack(), mlu.pack())
    flows: list[Flow] = [TcpFlow(net, 43011, mlu, lst, port), TcpFlow(net, 43012, lax, lst, port)]
    try:
        with bpfsys.BpfMap.open(pin / "sk_flows") as sm:
            sm.update(flows[1].sock.fileno().to_bytes(4, "little"), lax.pack())
        frames = _send_until_the_deadline(net, flows, now, TCP)
        _check_promotion(flows, ("mlu (5-tuple)", "laxity (socket storage)"), frames, now, TCP)
        with bpfsys.BpfMap.open(pin / "flow_state") as m:  # the payload counted exactly, once a segment
            st = FlowState.unpack(m.lookup(flows[0].key.pack()))
            assert st.sent_bytes == flows[0].sent
    finally:
        for f in flows:
            f.sock.close()
        lst.close()


def test_rli_level_moves_with_the_cursor_only(net: VethPair) -> None:
    rid = 4242
    rli = FlowEntry(mode=layout.MODE_RLI, levels=[0, 2, 4], thresholds=[1, 3], target_layer=6, request_id=rid)
    f = Flow(net, 43003, rli)
    pin = layout.pin_dir(net.dev_a, net.a)
    rkey = rid.to_bytes(8, "little")
    plan = [(0, 4), (4, 2), (5, 2), (6, 0), (7, 0), (3, 4)]  # (cursor, level): 6 - cursor vs [1, 3]
    expected: dict[int, int] = {}
    with bpfsys.BpfMap.open(pin / "flows") as fm, bpfsys.BpfMap.open(pin / "requests") as rm:
        rm.update(rkey, RequestRecord(cursor=0).pack())
        fm.update(f.key.pack(), rli.pack())
        with Capture(net.b, net.dev_b) as cap:
            seq = 0
            for cursor, level in plan:
                rm.update(rkey, RequestRecord(cursor=cursor).pack())
                for _ in range(15):  # time passes, the level holds while the cursor does
                    f.send(seq)
                    expected[seq] = level
                    seq += 1
                    time.sleep(0.004)
            frames = cap.frames(seq, timeout=2.0, match=lambda fr: UDP in Ether(fr))
        rm.delete(rkey)
    seen = _levels_on_wire(frames, f.sport)
    assert len(seen) >= 0.95 * seq
    wrong = {s: (lv, expected[s]) for s, lv in seen.items() if lv != expected[s]}
    assert not wrong, f"(seen, expected) per packet: {wrong}"
    for s, _t0, _t1, sent in f.sends:  # and the oracle agrees with the plan
        cursor = plan[s // 15][0]
        assert rli.level(0, sent=sent, cursor=cursor) == expected[s]
