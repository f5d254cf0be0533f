"""Kernel state apart from the controller's decision, socket-storage entries, unknown traffic.

- Flows carry known byte counts through the classifier while the controller rewrites their
  entries thousands of times: the kernel's counts equal the bytes sent, exactly (issue 9 §2).
- A registered TCP socket's entry lives in its socket storage (one map write keyed by the fd):
  its packets are classified through skb->sk with no 5-tuple entry at all, bytes counted
  exactly, and the entry goes with the socket (issue 9 §1).
- On the wire: an unknown connection's handshake and ACKs leave with the control level's DSCP,
  its payload with the default level's; a trust-dscp port maps those DSCPs (and DSCP 0) back to
  the control and default levels, so reverse traffic keeps its urgency across a switch (8.1).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from attach_support import attached_veth
from datapath_support import PRIO_BASE, Capture, LoadedClassifier, prog_test_run
from nettools import VethPair
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from mfs_tc import layout
from mfs_tc.controller import Controller, PinnedMaps, resolve_policy

pytestmark = pytest.mark.privileged

SRC, DST = "10.9.0.1", "10.9.0.2"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _frame(sport: int, payload: int) -> bytes:
    return bytes(ETH / IP(src=SRC, dst=DST) / TCP(sport=sport, dport=5201, flags="PA") / Raw(b"\x11" * payload))


@pytest.mark.parametrize("state_at", ["slot", "lookup"])
def test_rewrites_during_traffic_lose_no_kernel_count(state_at: str) -> None:
    """Both places a kernel state can be: the state slot the controller gives a flow (layout v6)
    and, without one, flow_state."""
    sizes = [1, 64, 500, 1000, 1448, 2000, 3000, 1200]
    with LoadedClassifier(dscp=layout.DEFAULT_DSCP) as clf, PinnedMaps.open_dir(clf.pin) as maps:
        ctl = Controller(maps, resolve_policy("mfs", 8), entry_cache_ns=0)
        assert ctl.state_slots is not None, "this kernel maps BPF arrays (5.5+)"
        if state_at == "lookup":
            ctl.state_slots = None  # as a controller that cannot map `states`
        req = ctl.request("counts", slo_s=30.0, remaining_bytes=1 << 32, num_layers=8)
        st = req.stage("p2d", bytes=1 << 32)
        handles = [st.add_flow((SRC, DST, 42000 + i, 5201), bytes=1 << 29, sent=1000 * i) for i in range(len(sizes))]
        assert all((fh.slot != layout.STATE_NONE) == (state_at == "slot") for fh in handles)
        lookups0 = clf.stats()[layout.STAT_STATE_LOOKUP][0]
        frames = [_frame(42000 + i, n) for i, n in enumerate(sizes)]
        stop = threading.Event()
        rewrites = [0]
        errors: list[BaseException] = []

        def rewriter() -> None:
            try:
                k = 0
                while not stop.is_set():
                    k += 1
                    req.update_estimate(remaining_bytes=(1 << 32) - k * 4096)  # rewrites all 8
                    handles[k % len(handles)].update(bytes=(1 << 29) + k)  # and one more
                    rewrites[0] += 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        t = threading.Thread(target=rewriter)
        t.start()
        repeat, sent, pkts = 500, [0] * len(sizes), [0] * len(sizes)
        deadline = time.monotonic() + 20
        try:
            while (rewrites[0] < 3000 or sum(pkts) < 200_000) and time.monotonic() < deadline:
                for i, f in enumerate(frames):
                    assert prog_test_run(clf.fd, f, repeat=repeat).retval == 0
                    sent[i] += repeat * sizes[i]
                    pkts[i] += repeat
        finally:
            stop.set()
            t.join()
        assert not errors, errors
        assert rewrites[0] >= 3000, f"only {rewrites[0]} rewrite rounds"
        for i, fh in enumerate(handles):
            s = fh.state()
            assert s is not None and s.gen == fh.gen
            assert s.sent_bytes == 1000 * i + sent[i], (i, s.sent_bytes - 1000 * i, sent[i])
            assert s.sent_pkts == pkts[i]
            # and where: at the slot, with flow_state never touched; or in flow_state
            in_lookup = maps.state_of(fh.key)
            assert (in_lookup is None) == (state_at == "slot"), in_lookup
        lookups = clf.stats()[layout.STAT_STATE_LOOKUP][0] - lookups0
        assert lookups == (0 if state_at == "slot" else sum(pkts))
        held = [(fh.slot, fh.gen) for fh in handles]
        req.done()
        if state_at == "slot":  # done() gave the slots back: owner 0
            assert all(maps.slot_state(slot, gen) is None for slot, gen in held)
            assert all(fh.slot == layout.STATE_NONE for fh in handles)


@pytest.fixture(scope="module")
def net():
    with attached_veth(qdisc="none", control_level=1) as n:
        yield n


def _in_ns(ns: str, *args) -> socket.socket:
    from pyroute2.netns import popns, pushns

    pushns(ns)
    try:
        return socket.socket(*args)
    finally:
        popns()


def _tcp_pair(net: VethPair, port: int) -> tuple[socket.socket, socket.socket]:
    srv = _in_ns(net.b, socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((net.ip_b, port))
    srv.listen(1)
    cli = _in_ns(net.a, socket.AF_INET, socket.SOCK_STREAM)
    cli.connect((net.ip_b, port))
    conn, _ = srv.accept()
    srv.close()
    return cli, conn


def _drain(conn: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        b = conn.recv(1 << 20)
        assert b
        got += len(b)


def test_socket_storage_entry_counts_exactly_and_dies_with_the_socket(net: VethPair) -> None:
    with Controller.open(net.dev_a, net.a, policy="mfs") as ctl:
        assert ctl.maps.sk_flows is not None, "this kernel has socket storage (doctor says so)"
        cli, conn = _tcp_pair(net, 7301)
        try:
            req = ctl.request("sk", slo_s=60.0)
            fh = req.stage("kv_fetch", layer=3).add_flow(cli, bytes=4 << 20)
            assert fh.on_socket and len(ctl.maps.flows) == 0  # no 5-tuple entry at all
            assert fh.slot != layout.STATE_NONE  # its counts at a state slot: one storage get a packet
            before = ctl.maps.stats()["events"]["sk_hit"]["packets"]
            n = 3 << 20
            with Capture(net.b, net.dev_b) as cap:
                rx = threading.Thread(target=_drain, args=(conn, n))
                rx.start()
                cli.sendall(b"\x22" * n)
                rx.join(30)
                frames = cap.frames(10_000, timeout=1.0, match=lambda f: len(f) > 200)
            s = fh.state()
            # L4 payload, exactly: what TCP sent (tcpi_bytes_sent: retransmissions included,
            # which a loaded veth backlog can cause)
            info = cli.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            (tcp_sent,) = struct.unpack_from("<Q", info, 200)
            assert tcp_sent >= n
            assert s is not None and s.sent_bytes == tcp_sent, (s, tcp_sent, n)
            assert ctl.maps.stats()["events"]["sk_hit"]["packets"] - before == s.sent_pkts > 0
            assert ctl.maps.sk_state_of(cli.fileno()) is None  # the second storage was never made
            level = s.cur_level
            assert level < 8 and fh.read().sent_bytes == tcp_sent  # (n, unless TCP retransmitted)
            dscps = {Ether(f)[IP].tos >> 2 for f in frames if IP in Ether(f)}
            assert dscps == {layout.DEFAULT_DSCP[level]}, dscps
            # a rewrite keeps the counts; done() removes the socket's entry
            fh.update(bytes=8 << 20)
            assert fh.state().sent_bytes == tcp_sent
            req.done()
            assert ctl.maps.sk_flows.lookup(cli.fileno().to_bytes(4, "little")) is None
        finally:
            cli.close()
            conn.close()


def test_unknown_connection_control_urgent_payload_bulk_on_the_wire(net: VethPair) -> None:
    """Attached with control level 1 and the default level 6 (K-2): a connection nobody
    registered sends its SYN and pure ACKs with level 1's DSCP and its data with level 6's; a
    trust-dscp switch port maps both back (and DSCP 0 of hosts without mfs-tc to level 6)."""
    ctl_dscp, bulk_dscp = layout.DEFAULT_DSCP[1], layout.DEFAULT_DSCP[6]
    with Capture(net.b, net.dev_b) as cap:
        cli, conn = _tcp_pair(net, 7302)
        try:
            cli.sendall(b"\x33" * 20000)
            _drain(conn, 20000)
            conn.sendall(b"x")  # the reply makes the client ACK with no payload
            cli.recv(1)
            time.sleep(0.05)
        finally:
            cli.close()
            conn.close()
        frames = cap.frames(500, timeout=1.0, match=lambda f: IP in Ether(f) and TCP in Ether(f))
    mine = [Ether(f) for f in frames if Ether(f)[IP].src == net.ip_a]
    control = [p for p in mine if p[TCP].flags & 0x07 or (p[TCP].flags & 0x10 and not len(p[TCP].payload))]
    data = [p for p in mine if len(p[TCP].payload)]
    assert control and data
    assert {p[IP].tos >> 2 for p in control} == {ctl_dscp}
    assert {p[IP].tos >> 2 for p in data if not p[TCP].flags & 0x05} == {bulk_dscp}
    with LoadedClassifier(dscp=layout.DEFAULT_DSCP, trust_dscp=True, default_level=6) as sw:
        for p in control[:5]:
            assert sw.run(bytes(p)).priority == PRIO_BASE + 1
        for p in data[:5]:  # (captured data may be one GSO frame: larger than a test run takes)
            small = ETH / IP(src=p[IP].src, dst=p[IP].dst, tos=p[IP].tos) / TCP(flags="PA") / Raw(b"d" * 100)
            assert sw.run(bytes(small)).priority == PRIO_BASE + 6
        p0 = control[0].copy()
        p0[IP].tos = 0
        del p0[IP].chksum
        assert sw.run(bytes(p0)).priority == PRIO_BASE + 6  # DSCP 0: the default level
