"""Datapath test and benchmark support: the classifier loaded against maps pinned in a private
directory, run on crafted packets through BPF_PROG_TEST_RUN, and per-level stats reads.

Used by tests/test_classifier*.py, tests/test_datapath*.py and tools/bench_classifier.py. Needs
root, bcc and kernel headers (what attach needs).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mfs_tc import bpfsys
from mfs_tc.layout import (
    MAX_LEVELS,
    PIN_ROOT,
    ConfigRecord,
    LevelRecord,
    dscp_to_level_table,
)
from mfs_tc.maps import read_counters

BPF_PROG_TEST_RUN = 10
SKB_SIZE = 192  # sizeof(struct __sk_buff) on 5.10+ (through hwtstamp)
SKB_PRIORITY_OFF = 32  # offsetof(struct __sk_buff, priority)
PRIO_BASE = 0x100  # skb->priority written for level L is PRIO_BASE + L in these tests


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


@dataclass
class RunResult:
    retval: int
    duration_ns: int  # mean per repeat, as the kernel reports it
    data: bytes  # the packet after the program
    priority: int  # skb->priority after the program


def prog_test_run(prog_fd: int, packet: bytes, repeat: int = 1, priority: int = 0) -> RunResult:
    """Run a SCHED_CLS program once (or `repeat` times) on `packet` (an Ethernet frame)."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    ctx_in = ctypes.create_string_buffer(SKB_SIZE)
    struct.pack_into("<I", ctx_in, SKB_PRIORITY_OFF, priority)
    ctx_out = ctypes.create_string_buffer(SKB_SIZE)
    attr = _TestRunAttr()
    attr.prog_fd = prog_fd
    attr.data_size_in = len(packet)
    attr.data_size_out = len(data_out)
    attr.data_in = ctypes.addressof(data_in)
    attr.data_out = ctypes.addressof(data_out)
    attr.repeat = repeat
    attr.ctx_size_in = SKB_SIZE
    attr.ctx_size_out = SKB_SIZE
    attr.ctx_in = ctypes.addressof(ctx_in)
    attr.ctx_out = ctypes.addressof(ctx_out)
    r = bpfsys.bpf(BPF_PROG_TEST_RUN, attr)
    if r < 0:
        raise OSError(-r, f"BPF_PROG_TEST_RUN: {os.strerror(-r)}")
    (prio,) = struct.unpack_from("<I", ctx_out.raw, SKB_PRIORITY_OFF)
    return RunResult(attr.retval, attr.duration, data_out.raw[: attr.data_size_out], prio)


def read_stats(pin: Path) -> list[tuple[int, int]]:
    """(packets, bytes) per stats slot, summed over CPUs."""
    with bpfsys.BpfMap.open(pin / "stats") as m:
        return read_counters(m)


def stats_delta(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=False)]


def unique_pin() -> Path:
    return PIN_ROOT / "test" / f"p{os.getpid()}{uuid.uuid4().hex[:6]}"


@dataclass
class LoadedClassifier:
    """The classifier compiled against maps pinned in a private directory, with levels mapped to
    skb->priority PRIO_BASE + level (so test runs read the level back from ctx_out)."""

    pin: Path = field(default_factory=unique_pin)
    nlevels: int = MAX_LEVELS
    default_level: int = 0
    dscp: tuple[int, ...] = tuple(0xFF for _ in range(MAX_LEVELS))
    trust_dscp: bool = False
    control_level: int | None = None  # None: default_level
    keep_dscp: int = 0  # mask of DSCPs untracked traffic keeps
    socket_storage: bool = True  # False: the 5-tuple-only variant
    src_dir: Path | None = None  # another bpf/ directory (benchmarks: an older classifier)
    bpf: object = None
    fd: int = -1

    def __enter__(self) -> LoadedClassifier:
        from mfs_tc.loader import compile_classifier  # noqa: PLC0415

        bpfsys.ensure_bpffs()
        self.pin.mkdir(parents=True, exist_ok=True)
        try:
            self.bpf, fn = compile_classifier(self.pin, self.socket_storage, self.src_dir)
            self.fd = fn.fd
            self.configure()
        except BaseException:
            self.close()
            raise
        return self

    def configure(self) -> None:
        with bpfsys.BpfMap.open(self.pin / "levels") as m:
            for lv in range(MAX_LEVELS):
                m.update(lv.to_bytes(4, "little"), LevelRecord(PRIO_BASE + lv, self.dscp[lv]).pack())
        cfg = ConfigRecord(
            nlevels=self.nlevels,
            default_level=self.default_level,
            scavenger_level=self.nlevels - 1,
            flags=1 if self.trust_dscp else 0,
            dscp2level=dscp_to_level_table(
                [d for d in self.dscp] if any(d != 0xFF for d in self.dscp) else list(range(MAX_LEVELS)),
                self.default_level,
            ),
            control_level=self.control_level,
            keep_dscp=self.keep_dscp,
        )
        with bpfsys.BpfMap.open(self.pin / "config") as m:
            m.update((0).to_bytes(4, "little"), cfg.pack())

    def map(self, name: str) -> bpfsys.BpfMap:
        return bpfsys.BpfMap.open(self.pin / name)

    def run(self, packet: bytes, repeat: int = 1) -> RunResult:
        return prog_test_run(self.fd, packet, repeat)

    def level_of(self, packet: bytes) -> int:
        r = self.run(packet)
        return r.priority - PRIO_BASE

    def stats(self) -> list[tuple[int, int]]:
        return read_stats(self.pin)

    def close(self) -> None:
        if self.bpf is not None:
            try:
                self.bpf.cleanup()
            except Exception:
                pass
            self.bpf = None
        if self.pin.exists():
            shutil.rmtree(self.pin, ignore_errors=True)
        for d in (self.pin.parent,):
            try:
                d.rmdir()
            except OSError:
                pass

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- odd packets ------------------------------------------------------------------------------
# frames the kernel's BPF_PROG_TEST_RUN refuses (shorter than the L3 header their EtherType
# announces): they can only be tested on the real egress path
TESTRUN_REFUSES = frozenset({"ether-only", "v4-truncated-ip", "v6-truncated"})


def _trunc(p, n: int) -> bytes:
    return bytes(p)[:n]


def odd_packets(eth, a4: str, b4: str, a6: str, b6: str, sp: int, dp: int) -> dict[str, tuple[bytes, int]]:
    """Packets the classifier must pass unharmed at the default level: name -> (frame, the stats
    slot that counts it). A flow entry is assumed for a4->b4 / a6->b6 sp->dp, TCP and UDP."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP  # noqa: PLC0415
    from scapy.layers.inet6 import (  # noqa: PLC0415
        ICMPv6EchoRequest,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
    )
    from scapy.layers.l2 import ARP, Dot1Q, Ether  # noqa: PLC0415
    from scapy.packet import Raw  # noqa: PLC0415

    from mfs_tc import layout as L  # noqa: PLC0415

    body = Raw(bytes(range(200)))
    src, dst = eth.src, eth.dst
    e = lambda t: Ether(src=src, dst=dst, type=t)  # noqa: E731
    v4 = lambda **kw: IP(src=a4, dst=b4, **kw)  # noqa: E731
    v6 = lambda **kw: IPv6(src=a6, dst=b6, **kw)  # noqa: E731
    tcp = lambda **kw: TCP(sport=sp, dport=dp, **kw)  # noqa: E731
    udp = lambda: UDP(sport=sp, dport=dp)  # noqa: E731
    six = IPv6ExtHdrDestOpt
    return {
        "arp": (bytes(eth / ARP(psrc=a4, pdst=b4)), L.STAT_NONIP),
        "lldp-like": (bytes(Ether(src=src, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02\x07" + b"\0" * 40)), L.STAT_NONIP),
        "ether-only": (bytes(e(0x0800)), L.STAT_MALFORMED),
        "v4-truncated-ip": (_trunc(eth / v4() / tcp(), 14 + 12), L.STAT_MALFORMED),
        "v4-truncated-tcp": (_trunc(eth / v4() / tcp(), 14 + 20 + 10), L.STAT_MALFORMED),
        "v4-truncated-udp": (_trunc(eth / v4() / udp(), 14 + 20 + 6), L.STAT_MALFORMED),
        "v4-ihl-too-small": (bytes(eth / v4(ihl=4) / tcp() / body), L.STAT_MALFORMED),
        "v4-bad-version": (bytes(eth / v4(version=5) / tcp() / body), L.STAT_MALFORMED),
        "v4-totlen-below-ihl": (bytes(eth / v4(len=12) / tcp()), L.STAT_MALFORMED),
        "v4-tcp-doff-too-small": (bytes(eth / v4() / tcp(dataofs=3) / body), L.STAT_MALFORMED),
        "v4-first-fragment": (bytes(eth / v4(flags="MF") / tcp() / body), L.STAT_FRAGMENT),
        "v4-later-fragment": (bytes(eth / v4(frag=100, proto=6) / body), L.STAT_FRAGMENT),
        "v4-icmp": (bytes(eth / v4() / ICMP() / body), L.STAT_NOL4),
        "v4-options-icmp": (bytes(eth / v4(options=[IPOption_NOP()] * 8) / ICMP()), L.STAT_NOL4),
        "v6-truncated": (_trunc(eth / v6() / tcp(), 14 + 30), L.STAT_MALFORMED),
        "v6-bad-version": (bytes(eth / v6(version=4) / tcp()), L.STAT_MALFORMED),
        "v6-fragment": (bytes(eth / v6() / IPv6ExtHdrFragment(m=1) / udp() / body), L.STAT_FRAGMENT),
        "v6-hbh-then-fragment": (bytes(eth / v6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(offset=5) / body), L.STAT_FRAGMENT),
        "v6-truncated-ext": (_trunc(eth / v6() / IPv6ExtHdrHopByHop() / tcp(), 14 + 40 + 1), L.STAT_MALFORMED),
        "v6-ext-past-end": (bytes(eth / v6() / six(len=200, nh=6) / Raw(b"\0" * 6)), L.STAT_MALFORMED),
        "v6-ext-then-nothing": (bytes(eth / v6() / six(len=1) / Raw(b"\0" * 14)), L.STAT_NOL4),
        "v6-too-many-ext": (
            bytes(eth / v6() / IPv6ExtHdrHopByHop() / six() / six() / six() / six() / six() / six() / tcp()),
            L.STAT_NOL4,
        ),
        "v6-icmp": (bytes(eth / v6() / ICMPv6EchoRequest() / body), L.STAT_NOL4),
        "vlan-arp": (bytes(eth / Dot1Q(vlan=3) / ARP(psrc=a4, pdst=b4)), L.STAT_NONIP),
        "vlan-truncated": (bytes(e(0x8100) / Raw(b"\x00")), L.STAT_MALFORMED),
        "v4-unknown-flow": (bytes(eth / v4() / TCP(sport=sp + 1, dport=dp, flags="PA") / body), L.STAT_MISS),
        "v6-unknown-flow": (bytes(eth / v6() / UDP(sport=sp, dport=dp + 1) / body), L.STAT_MISS),
        "v4-reverse-direction": (bytes(eth / IP(src=b4, dst=a4) / TCP(sport=dp, dport=sp, flags="A") / body), L.STAT_MISS),
        "v4-unknown-syn": (bytes(eth / v4() / TCP(sport=sp + 2, dport=dp, flags="S")), L.STAT_CONTROL),
        "v6-unknown-pure-ack": (bytes(eth / v6() / TCP(sport=sp + 2, dport=dp, flags="A")), L.STAT_CONTROL),
        "v4-unknown-fin-with-data": (bytes(eth / v4() / TCP(sport=sp + 2, dport=dp, flags="FA") / body), L.STAT_CONTROL),
        "v4-unknown-rst": (bytes(eth / v4() / TCP(sport=sp + 2, dport=dp, flags="R")), L.STAT_CONTROL),
    }


def untouched_slots() -> frozenset[int]:
    from mfs_tc import layout as L  # noqa: PLC0415

    return frozenset({L.STAT_MALFORMED, L.STAT_NONIP})


def assert_only_dscp_changed(raw: bytes, out: bytes, want_dscp: int | None) -> None:
    """`out` is `raw` with at most the DSCP bits changed (to `want_dscp`; None: unchanged): ECN
    kept, the IPv4 header checksum valid, L4 bytes untouched."""
    from scapy.layers.inet import IP  # noqa: PLC0415
    from scapy.layers.inet6 import IPv6  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    assert len(out) == len(raw)
    if want_dscp is None or out == raw:
        assert out == raw or want_dscp is not None
        if out == raw:
            return
    pin, pout = Ether(raw), Ether(out)
    if IP in pout:
        ip_in, ip_out = pin[IP], pout[IP]
        off = len(raw) - len(ip_in)
        assert ip_out.tos >> 2 == want_dscp and ip_out.tos & 3 == ip_in.tos & 3
        changed = {i for i, (a, b) in enumerate(zip(raw, out, strict=False)) if a != b}
        assert changed <= {off + 1, off + 10, off + 11}, changed
        hdr = bytearray(out[off : off + ip_out.ihl * 4])
        hdr[10:12] = b"\0\0"
        s = sum(int.from_bytes(hdr[i : i + 2], "big") for i in range(0, len(hdr), 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        assert (~s & 0xFFFF) == int.from_bytes(out[off + 10 : off + 12], "big"), "IPv4 checksum"
    else:
        ip_in, ip_out = pin[IPv6], pout[IPv6]
        off = len(raw) - len(ip_in)
        assert ip_out.tc >> 2 == want_dscp and ip_out.tc & 3 == ip_in.tc & 3
        changed = {i for i, (a, b) in enumerate(zip(raw, out, strict=False)) if a != b}
        assert changed <= {off, off + 1}, changed


# ---- raw frames on a real interface -----------------------------------------------------------
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def packet_socket(netns: str, dev: str, receive: bool = False) -> socket.socket:
    """An AF_PACKET socket bound to `dev` inside `netns` (made there with setns, used from here).
    Frames sent on it go through the device's tc egress (clsact filters, then the root qdisc)."""
    from pyroute2.netns import popns, pushns  # noqa: PLC0415

    pushns(netns)
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL) if receive else 0)
        s.bind((dev, ETH_P_ALL if receive else 0))  # Python converts the bind protocol to network order
    finally:
        popns()
    return s


SOL_PACKET = 263
SO_RCVBUFFORCE = 33
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
_AUX = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata


@dataclass
class Capture:
    """Frames on `dev` in `netns` from the moment it is opened: arriving ones (`outgoing=False`)
    or leaving ones (`outgoing=True`: seen after tc egress, i.e. what the classifier let out).
    A VLAN tag the receive path moved out of the frame is put back in, as tcpdump does."""

    netns: str
    dev: str
    outgoing: bool = False
    sock: socket.socket | None = None

    def __enter__(self) -> Capture:
        self.sock = packet_socket(self.netns, self.dev, receive=True)
        try:  # past net.core.rmem_max (as root): a burst of jumbo frames must not overflow it
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        return self

    def _recv(self) -> tuple[bytes, bool]:
        assert self.sock is not None
        data, anc, _flags, addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(_AUX.size))
        for level, kind, cdata in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cdata) >= _AUX.size:
                status, _l, _s, _m, _n, tci, tpid = _AUX.unpack_from(cdata)
                if status & TP_STATUS_VLAN_VALID:
                    tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                    data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
        return data, addr[2] == PACKET_OUTGOING

    def frames(self, want: int, timeout: float = 2.0, match=None) -> list[bytes]:
        """Up to `want` frames that satisfy `match` (all when None), within `timeout`."""
        assert self.sock is not None
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data, outgoing = self._recv()
            except TimeoutError:
                break
            if outgoing != self.outgoing:
                continue
            if match is None or match(data):
                out.append(data)
        return out

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()


def dscp_of(frame: bytes) -> int:
    """The DSCP of a captured IPv4 or IPv6 frame."""
    from scapy.layers.inet import IP  # noqa: PLC0415
    from scapy.layers.inet6 import IPv6  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    p = Ether(frame)
    return p[IP].tos >> 2 if IP in p else p[IPv6].tc >> 2


def udp_dscp(net, dport: int, v6: bool = False, sport: int = 0, n: int = 3, timeout: float = 2.0) -> list[int]:
    """Send `n` UDP datagrams from net.a to net.b:dport (a tests/nettools.VethPair); the DSCP of
    each as captured on the peer (fewer when fewer arrived)."""
    from scapy.layers.inet import UDP  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    from mfs_tc.netlink import socket_in  # noqa: PLC0415

    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst = (net.ip6_a, net.ip6_b) if v6 else (net.ip_a, net.ip_b)
    with socket_in(net.a, fam, socket.SOCK_DGRAM) as s, Capture(net.b, net.dev_b) as cap:
        s.bind((src, sport))
        for i in range(n):
            s.sendto(b"r%d" % i * 40, (dst, dport))
        got = cap.frames(n, timeout=timeout, match=lambda f: UDP in Ether(f) and Ether(f)[UDP].dport == dport)
    return [dscp_of(f) for f in got]


def tcp_frames(net, sport: int, dport: int, v6: bool = False, nbytes: int = 20000) -> list[bytes]:
    """A real TCP connection from net.a:sport to net.b:dport (a tests/nettools.VethPair) that
    carries `nbytes`; its frames towards dport as captured on the peer (SYN and data segments)."""
    from scapy.layers.inet import TCP  # noqa: PLC0415
    from scapy.layers.l2 import Ether  # noqa: PLC0415

    from mfs_tc.netlink import socket_in  # noqa: PLC0415

    fam = socket.AF_INET6 if v6 else socket.AF_INET
    src, dst = (net.ip6_a, net.ip6_b) if v6 else (net.ip_a, net.ip_b)
    srv = socket_in(net.b, fam, socket.SOCK_STREAM)
    cli = socket_in(net.a, fam, socket.SOCK_STREAM)
    with srv, cli:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((dst, dport))
        srv.listen(1)
        cli.bind((src, sport))
        with Capture(net.b, net.dev_b) as cap:
            cli.connect((dst, dport))
            conn, _ = srv.accept()
            with conn:
                cli.sendall(b"x" * nbytes)
                got = 0
                while got < nbytes:
                    got += len(conn.recv(65536))
            return cap.frames(1000, timeout=1.0, match=lambda f: TCP in Ether(f) and Ether(f)[TCP].dport == dport)
