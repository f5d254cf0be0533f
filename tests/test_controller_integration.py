"""End to end: mfs-tc attached to a veth in a netns, a serving-style process (another process, in
that netns) registers flows through mfs_tc.controller, and the packets captured on the peer carry
the DSCP of the level the library and the kernel agreed on:

- an RLI kv_fetch flow (UDP/IPv4) is promoted exactly when the request's cursor moves (`at_layer`);
- an MLU p2d flow (UDP/IPv6) is promoted as its deadline approaches, at the times the level
  function gives, then scavenged once the deadline passes;
- a collective flow of a batch (TCP/IPv4, registered from a connected socket) drops to the
  scavenger level when the policy gives up on the batch;
- after `done()` the flow is unknown again (default level, DSCP untouched).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from attach_support import attached_veth
from datapath_support import packet_socket
from nettools import VethPair

from mfs_tc.entry import FlowEntry

pytestmark = pytest.mark.privileged

TESTS = Path(__file__).parent
UDP4, UDP6, TCP4 = 7001, 7002, 7003
DSCP = (46, 40, 34, 26, 18, 10, 12, 1)  # the loader's default table for 8 levels
MAGIC = b"MFSt"

# tags: which flow and which phase a packet was sent in
T_P2D, T_RLI0, T_RLI1, T_RLI2, T_COLL, T_COLL_SCAV, T_AFTER = 1, 10, 11, 12, 20, 21, 30

SERVER = r"""
import json, socket, struct, sys, time
sys.path.insert(0, {tests!r})
from mfs_tc.controller import Controller
from controller_helpers import TinyPolicy

ifname, netns, a4, b4, a6, b6 = sys.argv[1:7]
MAGIC = b"MFSt"
out = {{}}

def send(sock, tag):
    sock.send(MAGIC + struct.pack("<qI", time.monotonic_ns(), tag) + bytes(84))

pol = TinyPolicy(hopeless=False)
ctl = Controller.open(ifname, netns=netns, policy=pol)
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind((a4, 0)); u4.connect((b4, {udp4}))
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind((a6, 0)); u6.connect((b6, {udp6}))
t4 = socket.create_connection((b4, {tcp4}), source_address=(a4, 0))
t4.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

# p2d: 2.5 MB at the 200 Mbit/s reference rate needs 0.1 s of link: MLU = 0.1 / time left
r1 = ctl.request("p2d-req", slo_s=1.0)
p2d = r1.stage("p2d", bytes=2_500_000).add_flow(u6, bytes=2_500_000)
# kv_fetch for layer 3, compute at layer 0: RLI 3
r2 = ctl.request("kv-req", slo_s=30.0)
kv = r2.stage("kv_fetch", layer=3).add_flow(u4, bytes=1 << 20)
# a batch's collective for layer 1 from a connected TCP socket: RLI 1
r3 = ctl.request("b-1", slo_s=30.0)
r4 = ctl.request("b-2", slo_s=40.0)
batch = ctl.batch([r3, r4])
coll = batch.stage("collective", layer=1).add_flow(t4, bytes=1 << 20)
e = p2d.entry
out["p2d_entry"] = dict(deadline_ns=e.deadline_ns, total=e.total_bytes, ps=e.ps_per_byte,
                        thresholds=e.thresholds, levels=e.levels, flags=e.flags)
out["p2d_registered_ns"] = time.monotonic_ns()

t0 = time.monotonic()
phase = 0
scav = False
while time.monotonic() - t0 < 1.25:
    el = time.monotonic() - t0
    if phase == 0 and el > 0.3:
        r2.at_layer(2); phase = 1
    elif phase == 1 and el > 0.6:
        r2.at_layer(3); phase = 2
    if not scav and el > 0.75:  # after the last r2.at_layer: only the batch gives up
        pol.hopeless = True
        batch.at_layer(0)  # the policy gives up on both members: the batch is scavenged
        scav = True
    send(u6, {t_p2d})
    send(u4, ({t_rli0}, {t_rli1}, {t_rli2})[phase])
    send(t4, {t_coll_scav} if scav else {t_coll})
    time.sleep(0.008)
out["p2d_sent_bytes"] = p2d.read().sent_bytes
for r in (batch, r1, r2, r3, r4):
    r.done()
out["flows_left"] = len(ctl.flows())
for _ in range(5):
    send(u4, {t_after})
    time.sleep(0.01)
print(json.dumps(out), flush=True)
t4.close()
"""


def _ip_fields(frame: bytes):
    """(dscp, proto, sport, dport, payload) of an Ethernet/IPv4|IPv6 frame, or None."""
    if len(frame) < 14:
        return None
    et = struct.unpack_from("!H", frame, 12)[0]
    if et == 0x0800:
        ihl = (frame[14] & 0x0F) * 4
        dscp = frame[15] >> 2
        proto = frame[23]
        l4 = 14 + ihl
    elif et == 0x86DD:
        dscp = ((frame[14] & 0x0F) << 2) | (frame[15] >> 6)
        proto = frame[20]
        l4 = 14 + 40
    else:
        return None
    if proto == 17:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        payload = frame[l4 + 8 :]
    elif proto == 6:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        doff = (frame[l4 + 12] >> 4) * 4
        payload = frame[l4 + doff :]
    else:
        return None
    return dscp, proto, sport, dport, payload


class Sniffer:
    """Frames arriving on the peer, stamped with CLOCK_MONOTONIC at receipt (an upper bound of
    the egress time at which the classifier chose their level)."""

    def __init__(self, netns: str, dev: str) -> None:
        self.sock = packet_socket(netns, dev, receive=True)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.settimeout(0.2)
        self.rows: list[tuple[int, int, int, int, int, int]] = []  # t_recv, t_send, tag, dscp, proto, dport
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            t = time.monotonic_ns()
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            f = _ip_fields(frame)
            if f is None:
                continue
            dscp, proto, sport, dport, payload = f
            i = payload.find(MAGIC)
            while i >= 0 and len(payload) >= i + 16:  # TCP may coalesce several messages
                t_send, tag = struct.unpack_from("<qI", payload, i + 4)
                self.rows.append((t, t_send, tag, dscp, proto, dport))
                i = payload.find(MAGIC, i + 16)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


def _listeners(net: VethPair) -> list[socket.socket]:
    """UDP receivers (so no ICMP unreachable breaks the connected senders) and a TCP sink, in b."""
    from pyroute2.netns import popns, pushns

    pushns(net.b)
    try:
        u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u4.bind((net.ip_b, UDP4))
        u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u6.bind((net.ip6_b, UDP6))
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind((net.ip_b, TCP4))
        t.listen(4)
    finally:
        popns()
    return [u4, u6, t]


def _drain(listeners: list[socket.socket], stop: threading.Event) -> None:
    import selectors

    sel = selectors.DefaultSelector()
    for s in listeners:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    tcp = listeners[2]
    while not stop.is_set():
        for key, _ in sel.select(0.1):
            s = key.fileobj
            try:
                if s is tcp:
                    c, _ = tcp.accept()
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
                elif not s.recv(65535) and s.type == socket.SOCK_STREAM:
                    sel.unregister(s)
                    s.close()
            except (BlockingIOError, ConnectionError):
                pass


@pytest.fixture
def attached():
    with attached_veth(levels=8, qdisc="htb", rate_bps=1_000_000_000) as net:
        yield net


def test_serving_process_flows_carry_their_levels(attached: VethPair) -> None:
    net = attached
    listeners = _listeners(net)
    stop = threading.Event()
    drain = threading.Thread(target=_drain, args=(listeners, stop), daemon=True)
    drain.start()
    sniff = Sniffer(net.b, net.dev_b)
    try:
        code = SERVER.format(
            tests=str(TESTS),
            udp4=UDP4,
            udp6=UDP6,
            tcp4=TCP4,
            t_p2d=T_P2D,
            t_rli0=T_RLI0,
            t_rli1=T_RLI1,
            t_rli2=T_RLI2,
            t_coll=T_COLL,
            t_coll_scav=T_COLL_SCAV,
            t_after=T_AFTER,
        )
        r = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{net.a}",
                sys.executable,
                "-c",
                code,
                net.dev_a,
                net.a,
                net.ip_a,
                net.ip_b,
                net.ip6_a,
                net.ip6_b,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        time.sleep(0.2)
    finally:
        sniff.close()
        stop.set()
        drain.join(timeout=2)
        for s in listeners:
            s.close()
    rows = sniff.rows
    by_tag: dict[int, list[tuple]] = {}
    for row in rows:
        by_tag.setdefault(row[2], []).append(row)

    # RLI kv_fetch: level 5 (RLI 3), 2 (RLI 1), 0 (RLI 0), switched exactly at at_layer
    for tag, level in ((T_RLI0, 5), (T_RLI1, 2), (T_RLI2, 0)):
        got = {row[3] for row in by_tag.get(tag, [])}
        assert got == {DSCP[level]}, (tag, got)
        assert len(by_tag[tag]) >= 10
    # batch collective over TCP: RLI 1 -> level 2, then scavenged -> level 7
    assert {row[3] for row in by_tag[T_COLL]} == {DSCP[2]}
    assert {row[3] for row in by_tag[T_COLL_SCAV]} == {DSCP[7]}
    # after done(): an unknown flow, at the default (bulk) level K-2 with its DSCP (the socket
    # set 0: untracked traffic leaves with its level's DSCP), never back at a higher level
    assert by_tag[T_AFTER] and {row[3] for row in by_tag[T_AFTER]} == {DSCP[6]}
    assert out["flows_left"] == 0

    # MLU p2d: each packet's DSCP is the level at its egress time, which lies between its send
    # and receive stamps; packets whose level changes inside that window are not judged
    pe = out["p2d_entry"]
    entry = FlowEntry(
        mode=1,
        levels=pe["levels"],
        thresholds=pe["thresholds"],
        flags=pe["flags"],
        deadline_ns=pe["deadline_ns"],
        total_bytes=pe["total"],
        ps_per_byte=pe["ps"],
    )
    sent_max = out["p2d_sent_bytes"]
    p2d_rows = sorted(by_tag[T_P2D], key=lambda row: row[1])
    judged = 0
    seen_levels = []
    for t_recv, t_send, _tag, dscp, _proto, _dport in p2d_rows:
        lv = {entry.level(t, sent=s) for t in (t_send, t_recv) for s in (0, sent_max)}
        if len(lv) == 1:
            (level,) = lv
            assert dscp == DSCP[level], (t_send - pe["deadline_ns"], dscp, level)
            judged += 1
            if not seen_levels or seen_levels[-1] != level:
                seen_levels.append(level)
    assert judged >= 0.8 * len(p2d_rows) and len(p2d_rows) >= 60
    # deferred (6), promoted at MLU 0.25 (3) and 0.5 (1), scavenged after the deadline (7)
    assert seen_levels == [6, 3, 1, 7], seen_levels
    # and the promotions happen when the time left reaches need/MLU: 0.4 s and 0.2 s
    need_ns = pe["total"] * pe["ps"] // 1000
    first3 = min(row[0] for row in p2d_rows if row[3] == DSCP[3])
    last6 = max(row[1] for row in p2d_rows if row[3] == DSCP[6])
    slack = 4 * sent_max * pe["ps"] // 1000 + 1_000_000  # bytes sent shrink the need a little
    assert last6 <= pe["deadline_ns"] - 4 * need_ns + slack
    assert first3 >= pe["deadline_ns"] - 4 * need_ns - 1_000_000
