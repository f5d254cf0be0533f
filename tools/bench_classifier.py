#!/usr/bin/env python3
"""Classifier cost per packet through BPF_PROG_TEST_RUN, next to an empty tc program in the same run.

Paths: miss (no flow entry), static, mlu, rli (its request read at the cursor slot the entry
names, as the controller writes it), rli_record (the request read from its record: the
`requests` lookup) and laxity, on a 1 kB IPv4/TCP
packet, with DSCP rewrite on (the default DSCP table). Each path runs `--repeat` times per round
inside the kernel (the kernel reports the mean ns per run); rounds alternate over all programs and
the median round counts. Prints JSON: each figure, its target and pass/fail.

    sudo .venv/bin/python tools/bench_classifier.py [--repeat 1000000] [--rounds 5] [--baseline DIR]

`--baseline DIR` (another bpf/ directory, e.g. `/work/main/bpf`) compiles that classifier too and
times it in the same rounds on the same packets and sockets (it must give every path the same
level): before/after figures from one run, on a machine whose speed drifts between runs.

Target: <= 50 ns/packet above the empty program, for every 5-tuple path; socket storage (wire):
<= 30 ns static/rli, <= 45 ns mlu/laxity.

`primitives_ns_above_empty`: one map lookup or helper call alone in a program (40-byte hash and
LRU lookups as `flows` / `flow_state` do, the 8-byte `requests` lookup, a socket-storage get, the
clock, a per-CPU counter), in the same rounds; each path's `floor_ns_above_empty` is the sum of
the primitives it cannot do without (e.g. 5-tuple static: storage get + two 40-byte lookups).

The test-run figures are the 5-tuple paths (layout v2: decision in `flows`, kernel counts in
`flow_state`; every packet first probes the socket's storage, which the test run's dummy socket
does not have): BPF_PROG_TEST_RUN gives each run a fresh dummy socket, so no socket entry can be
planted on it. The `wire` section times the socket-storage paths on real traffic instead: UDP
datagrams from sockets with entries in their storage (and from one with a 5-tuple entry, and an
unknown one), and TCP segments from such sockets (`*_tcp`: mlu and laxity there rank at the
segment's departure stamp instead of reading the clock), over a veth, the program's mean run time from the kernel's BPF statistics
(kernel.bpf_stats_enabled), next to the empty program on the same traffic in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from datapath_support import LoadedClassifier, prog_test_run  # noqa: E402

from mfs_tc import layout  # noqa: E402
from mfs_tc.entry import FlowEntry, mlu_fixed, ps_per_byte  # noqa: E402
from mfs_tc.layout import FlowKey, RequestRecord  # noqa: E402

TARGET_NS = 50.0
EMPTY_SRC = "int empty(struct __sk_buff *skb) { return 0; }"

# The building blocks of the classifier, each alone in a tc program, timed in the same rounds as
# the paths: what one map lookup or helper call costs on this machine and kernel (a floor for any
# path that needs it). Keys and values are the classifier's sizes: `flows` (40-byte key, hash
# without prealloc), `flow_state` (40-byte key, LRU), `requests` (8-byte key), socket storage
# (on the test run's dummy socket: no storage, the lookup misses, as on a socket without an
# entry), a per-CPU counter, the clock.
PRIMITIVES_SRC = r"""
#include <uapi/linux/bpf.h>
struct k40 { __u64 w[5]; };
struct v128 { __u64 w[16]; };
struct cnt { __u64 packets, bytes; };
BPF_F_TABLE("hash", struct k40, struct v128, p_flows, 1024, BPF_F_NO_PREALLOC);
BPF_TABLE("lru_hash", struct k40, struct v128, p_state, 1024);
BPF_F_TABLE("hash", __u64, struct v128, p_requests, 1024, BPF_F_NO_PREALLOC);
BPF_TABLE("percpu_array", __u32, struct cnt, p_stats, 22);
BPF_SK_STORAGE(p_sk, struct v128);
static __always_inline void key_of(struct __sk_buff *skb, struct k40 *k) {
    __builtin_memset(k, 0, sizeof(*k));
    k->w[0] = skb->len;
}
int hash_lookup_40b(struct __sk_buff *skb) {
    struct k40 k; key_of(skb, &k);
    return p_flows.lookup(&k) ? 1 : 0;
}
int lru_lookup_40b(struct __sk_buff *skb) {
    struct k40 k; key_of(skb, &k);
    return p_state.lookup(&k) ? 1 : 0;
}
int hash_lookup_8b(struct __sk_buff *skb) {
    __u64 k = skb->len;
    return p_requests.lookup(&k) ? 1 : 0;
}
int sk_storage_get(struct __sk_buff *skb) {
    struct bpf_sock *sk = skb->sk;
    return sk && p_sk.sk_storage_get(sk, 0, 0) ? 1 : 0;
}
int ktime_get_ns(struct __sk_buff *skb) { return bpf_ktime_get_ns() & 1; }
int percpu_count(struct __sk_buff *skb) {
    __u32 slot = skb->len & 15;
    struct cnt *c = p_stats.lookup(&slot);
    if (c) { c->packets += 1; c->bytes += skb->len; }
    return 0;
}
"""
PRIMITIVES = ("hash_lookup_40b", "lru_lookup_40b", "hash_lookup_8b", "sk_storage_get", "ktime_get_ns", "percpu_count")
# which primitives each path needs at least (its floor: the sum, above the empty program)
# (layout v6: a flow registered by the controller keeps its state at a state slot, an inlined
# array access; `static_lookup` is the same entry naming none, its state in `flow_state`)
FLOORS = {
    "miss": ("sk_storage_get", "hash_lookup_40b"),
    "static": ("sk_storage_get", "hash_lookup_40b"),
    "static_lookup": ("sk_storage_get", "hash_lookup_40b", "lru_lookup_40b"),
    "rli": ("sk_storage_get", "hash_lookup_40b"),
    "rli_record": ("sk_storage_get", "hash_lookup_40b", "hash_lookup_8b"),
    "mlu": ("sk_storage_get", "hash_lookup_40b", "ktime_get_ns"),
    "laxity": ("sk_storage_get", "hash_lookup_40b", "ktime_get_ns"),
}


def load_primitives(packet_len: int):
    """The primitives programs, their maps holding the keys the test packet looks up (hits)."""
    import ctypes

    from bcc import BPF

    b = BPF(text=PRIMITIVES_SRC)
    fds = {n: b.load_func(n.encode(), BPF.SCHED_CLS).fd for n in PRIMITIVES}
    for name in ("p_flows", "p_state"):
        t = b[name]
        k = t.Key()
        k.w[0] = packet_len
        t[k] = t.Leaf()
    t = b["p_requests"]
    t[ctypes.c_uint64(packet_len)] = t.Leaf()
    return b, fds


def _packet(sport: int) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="10.9.0.1", dst="10.9.0.2")
        / TCP(sport=sport, dport=5201, flags="A")
        / Raw(b"\0" * 1000)
    )


RID, RLI_SLOT, RLI_CURSOR = 99, 7, 8


def _plant_states(c, entries: dict[str, FlowEntry | None], base: int = 0) -> None:
    """Give every entry gen 1 and (where the classifier has state slots: layout v6) a state slot
    of its own, owned by gen 1, as the controller registers flows; `*_lookup` entries name none."""
    has_slots = "states" in _map_names(c)
    for i, (name, e) in enumerate(entries.items()):
        if e is None:
            continue
        e.gen = 1
        e.state_slot = base + i if has_slots and not name.endswith("_lookup") else layout.STATE_NONE
    if has_slots:
        with c.map("states") as sm:
            for e in entries.values():
                if e is not None and e.state_slot != layout.STATE_NONE:
                    sm.update(e.state_slot.to_bytes(4, "little"), layout.FlowState(gen=0, owner=1).pack())


def _map_names(c) -> set[str]:
    return {p.name for p in Path(c.pin).iterdir()}


def _packed(c, name: str, e: FlowEntry) -> bytes:
    """`e` packed for classifier `c`'s entry size (layout v5's entry is v6's without its last 8 bytes)."""
    with c.map(name) as m:
        return e.pack()[: m.info.value_size]


def _plant_request(c) -> None:
    """The rli paths' request: its record (cursor 8) and, where the classifier's cursor slots
    carry request keys (layout v5: 16-byte slots), slot 7 holding it as a controller claims it."""
    import struct as _s

    with c.map("requests") as rm, c.map("cursors") as cm:
        rm.update(RID.to_bytes(8, "little"), RequestRecord(cursor=RLI_CURSOR).pack())
        if cm.info.value_size == layout.CURSOR_SIZE:
            cm.update(RLI_SLOT.to_bytes(4, "little"), _s.pack(layout.CURSOR_FMT, RLI_CURSOR, 0, RID))


def _entries(now: int) -> dict[str, FlowEntry | None]:
    ps = ps_per_byte(10e9)
    far = now + 10**13  # far deadlines: the level does not change during the run
    th_mlu = [mlu_fixed(x) for x in (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)]
    return {
        "miss": None,
        "static": FlowEntry.static(2),
        "static_lookup": FlowEntry.static(2),
        "mlu": FlowEntry(
            mode=layout.MODE_MLU,
            levels=[7, 6, 5, 4, 3, 2, 1, 0],
            thresholds=th_mlu,
            total_bytes=1 << 40,
            ps_per_byte=ps,
            deadline_ns=far,
        ),
        # rli as the controller writes it: the entry names its request's cursor slot (layout v5);
        # rli_record: the same entry naming none, its request read from the `requests` record
        "rli": FlowEntry(
            mode=layout.MODE_RLI, levels=[0, 1, 2, 3], thresholds=[1, 2, 4], target_layer=10, request_id=RID, slot=RLI_SLOT
        ),
        "rli_record": FlowEntry(mode=layout.MODE_RLI, levels=[0, 1, 2, 3], thresholds=[1, 2, 4], target_layer=10, request_id=RID),
        "laxity": FlowEntry(
            mode=layout.MODE_LAXITY,
            levels=[0, 1, 2, 3, 4, 5, 6, 7],
            thresholds=[10**6 * x for x in (1, 2, 5, 10, 20, 50, 100)],
            ps_per_byte=ps,
            deadline_ns=far,
        ),
    }


# the wire's paths: UDP datagrams from sockets with entries in their storage, then TCP segments
# from such sockets (mlu and laxity on TCP read the segment's departure stamp, not the clock),
# then a socket without storage whose 5-tuple has an entry, and an unknown one
WIRE_PATHS = (
    "static",
    "static_lookup",
    "mlu",
    "rli",
    "rli_record",
    "laxity",
    "static_tcp",
    "mlu_tcp",
    "laxity_tcp",
    "tuple_static",
    "tuple_static_lookup",
    "miss",
)


PROG_RUN_TIME_OFF, PROG_RUN_CNT_OFF = 192, 200  # struct bpf_prog_info: run_time_ns, run_cnt


def prog_stats(fd: int) -> tuple[int, int]:
    import ctypes

    from mfs_tc import bpfsys

    info = ctypes.create_string_buffer(256)
    attr = bpfsys._InfoAttr(fd, 256, ctypes.addressof(info))  # noqa: SLF001
    r = bpfsys.bpf(bpfsys.BPF_OBJ_GET_INFO_BY_FD, attr)
    if r < 0:
        raise OSError(-r, "prog info")
    import struct as _s

    return _s.unpack_from("<QQ", info.raw, PROG_RUN_TIME_OFF)


def wire_paths(clf, empty_fd: int, n: int, rounds: int, baseline=None) -> dict:
    """Mean ns per packet of the classifier on real egress traffic, per path, minus the empty
    program's on the same traffic. `baseline`: another classifier timed on the same sockets in
    the same rounds (its figures under "baseline")."""
    import socket

    from nettools import VethPair, drain, sh

    from mfs_tc.loader import EGRESS_PARENT, ETH_P_ALL, FILTER_PREF
    from mfs_tc.netlink import ifindex, iproute, socket_in

    old = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
    out: dict = {}
    try:
        with VethPair() as net:
            with iproute(net.a) as ipr:
                idx = ifindex(ipr, net.dev_a, net.a)
                ipr.tc("add", "clsact", idx)
            sink = socket_in(net.b, socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind((net.ip_b, 9000))
            sh("ip", "neigh", "replace", net.ip_b, "lladdr", "02:00:00:00:00:02", "dev", net.dev_a, ns=net.a)
            # TCP: a listener on a second address of the peer (the first one's neighbour entry
            # points nowhere, so datagrams leave without a receiver), drained by a thread a
            # connection
            tcp_ip = net.ip_b.rsplit(".", 1)[0] + ".3"
            sh("ip", "addr", "add", f"{tcp_ip}/24", "dev", net.dev_b, ns=net.b)
            lst = socket_in(net.b, socket.AF_INET, socket.SOCK_STREAM)
            lst.bind((tcp_ip, 9001))
            lst.listen(8)
            drains: list[threading.Thread] = []
            now = time.monotonic_ns()
            entries = _entries(now)
            socks: dict[str, socket.socket] = {}
            for i, name in enumerate(WIRE_PATHS):
                if name.endswith("_tcp"):
                    s = socket_in(net.a, socket.AF_INET, socket.SOCK_STREAM)
                    s.bind((net.ip_a, 31000 + i))
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    s.connect((tcp_ip, 9001))
                    conn, _ = lst.accept()
                    t = threading.Thread(target=drain, args=(conn,), daemon=True)
                    t.start()
                    drains.append(t)
                else:
                    s = socket_in(net.a, socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind((net.ip_a, 31000 + i))
                    s.connect((net.ip_b, 9000))
                socks[name] = s
            clfs = {"this": clf} if baseline is None else {"this": clf, "baseline": baseline}
            # one entry per wire path (the UDP and TCP ones apart: each its own state slot)
            wire_entries: dict[str, FlowEntry | None] = {}
            for name in WIRE_PATHS:
                if name.startswith("tuple_static"):
                    wire_entries[name] = FlowEntry.static(2)
                elif name != "miss":
                    base_e = entries[name.removesuffix("_tcp")]
                    wire_entries[name] = dataclasses.replace(base_e) if base_e is not None else None
            for c in clfs.values():
                _plant_request(c)
                _plant_states(c, wire_entries, base=64)  # apart from the test run's entries
                with c.map("sk_flows") as skm, c.map("flows") as fm:
                    for i, (name, s) in enumerate(socks.items()):
                        e = wire_entries.get(name)
                        if e is None:
                            continue
                        if name.startswith("tuple_static"):
                            fm.update(FlowKey(net.ip_a, net.ip_b, 31000 + i, 9000, 17).pack(), _packed(c, "flows", e))
                        else:
                            skm.update(s.fileno().to_bytes(4, "little"), _packed(c, "sk_flows", e))

            def measure(fd: int, s: socket.socket) -> float:
                with iproute(net.a) as ipr:
                    ipr.tc(
                        "replace-filter",
                        "bpf",
                        idx,
                        1,
                        fd=fd,
                        name="bench",
                        parent=EGRESS_PARENT,
                        direct_action=True,
                        prio=FILTER_PREF,
                        protocol=ETH_P_ALL,
                    )
                t0, c0 = prog_stats(fd)
                data = b"\0" * 1000
                for _ in range(n):
                    s.sendall(data)
                t1, c1 = prog_stats(fd)
                return (t1 - t0) / max(1, c1 - c0)

            # the empty program on each transport's own traffic: TCP segments and UDP datagrams
            # reach the hook through different code (and cache lines)
            samples: dict[str, list[float]] = {"empty:udp": [], "empty:tcp": []}
            for _ in range(rounds):
                for name, s in socks.items():
                    for label, c in clfs.items():
                        samples.setdefault(f"{label}:{name}", []).append(measure(c.fd, s))
                    samples["empty:tcp" if name.endswith("_tcp") else "empty:udp"].append(measure(empty_fd, s))
            bases = {k: statistics.median(samples["empty:" + k]) for k in ("udp", "tcp")}
            for label in clfs:
                res = out if label == "this" else out.setdefault("baseline", {})
                for name in socks:
                    med = statistics.median(samples[f"{label}:{name}"])
                    transport = "tcp" if name.endswith("_tcp") else "udp"
                    base = bases[transport]
                    kind = name.removesuffix("_tcp")
                    path = "5-tuple" if kind.startswith("tuple_") or kind == "miss" else "socket_storage"
                    target = (
                        (30.0 if kind in ("static", "static_lookup", "rli", "rli_record") else 45.0)
                        if path == "socket_storage"
                        else TARGET_NS
                    )
                    res[name] = {
                        "path": path,
                        "transport": transport,
                        "ns_per_packet": round(med, 1),
                        "ns_above_empty": round(med - base, 1),
                        "target_ns_above_empty": target,
                        "pass": med - base <= target,
                    }
            out["empty_ns_per_packet"] = round(bases["udp"], 1)
            out["empty_tcp_ns_per_packet"] = round(bases["tcp"], 1)
            sink.close()
            for s in socks.values():
                s.close()
            for t in drains:
                t.join(timeout=5)
            lst.close()
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(old)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000, help="runs per program per round (>= 1e6)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--wire-packets",
        type=int,
        default=20000,
        help="datagrams per path and round on a veth (0: skip the socket-storage timing)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="another bpf/ directory (e.g. a checkout of main) timed in the same rounds: " "before/after figures from one run",
    )
    args = ap.parse_args()
    if args.repeat < 1 or args.rounds < 1:
        ap.error("--repeat and --rounds must be positive")

    from bcc import BPF

    empty = BPF(text=EMPTY_SRC)
    empty_fd = empty.load_func(b"empty", BPF.SCHED_CLS).fd
    base_clf = LoadedClassifier(dscp=layout.DEFAULT_DSCP, src_dir=args.baseline) if args.baseline else None
    with LoadedClassifier(dscp=layout.DEFAULT_DSCP) as clf:
        if base_clf is not None:
            base_clf.__enter__()
        packets: dict[str, bytes] = {}
        now = time.monotonic_ns()
        for c in (clf, base_clf):
            if c is None:
                continue
            _plant_request(c)
            ents = _entries(now)
            _plant_states(c, ents)
            with c.map("flows") as fm:
                for i, (name, e) in enumerate(ents.items()):
                    pkt = _packet(30000 + i)
                    packets[name] = pkt
                    if e is not None:
                        fm.update(FlowKey("10.9.0.1", "10.9.0.2", 30000 + i, 5201).pack(), _packed(c, "flows", e))
        progs = {"empty": (empty_fd, packets["static"])}
        progs.update({name: (clf.fd, pkt) for name, pkt in packets.items()})
        if base_clf is not None:
            progs.update({"baseline:" + name: (base_clf.fd, pkt) for name, pkt in packets.items()})
            for name, pkt in packets.items():
                if base_clf.level_of(pkt) != clf.level_of(pkt):
                    raise SystemExit(f"baseline gives path {name} another level: not the same behaviour")
        prim_bpf, prim_fds = load_primitives(len(packets["static"]))
        for name, fd in prim_fds.items():
            hit = prog_test_run(fd, packets["static"]).retval
            if name in ("hash_lookup_40b", "lru_lookup_40b", "hash_lookup_8b") and hit != 1:
                raise SystemExit(f"primitive {name}: the lookup missed (bench bug)")
            progs["prim:" + name] = (fd, packets["static"])
        samples: dict[str, list[int]] = {n: [] for n in progs}
        levels = {n: clf.level_of(p) for n, p in packets.items()}
        for _ in range(args.rounds):
            for name, (fd, pkt) in progs.items():
                samples[name].append(prog_test_run(fd, pkt, repeat=args.repeat).duration_ns)
        try:
            wire = wire_paths(clf, empty_fd, args.wire_packets, args.rounds, base_clf) if args.wire_packets else None
        finally:
            if base_clf is not None:
                base_clf.close()
    empty.cleanup()
    prim_bpf.cleanup()
    base = statistics.median(samples["empty"])
    prims = {n: statistics.median(samples["prim:" + n]) - base for n in PRIMITIVES}
    paths = {}
    for name in packets:
        med = statistics.median(samples[name])
        over = med - base
        floor = sum(prims[p] for p in FLOORS[name])
        paths[name] = {
            "ns_per_packet": med,
            "ns_above_empty": over,
            "level": levels[name],
            "target_ns_above_empty": TARGET_NS,
            "pass": over <= TARGET_NS,
            "floor_ns_above_empty": floor,
            "floor_from": list(FLOORS[name]),
            "rounds_ns": samples[name],
        }
    out = {
        "bench": "classifier_prog_test_run",
        "repeat": args.repeat,
        "rounds": args.rounds,
        "packet_bytes": len(packets["static"]),
        "empty_ns_per_packet": base,
        "empty_rounds_ns": samples["empty"],
        "paths": paths,
        "primitives_ns_above_empty": prims,
        "wire": wire,
        "pass": all(p["pass"] for p in paths.values())
        and all(v["pass"] for k, v in (wire or {}).items() if isinstance(v, dict) and k != "baseline"),
    }
    if base_clf is not None:
        out["baseline"] = {
            "src_dir": str(args.baseline),
            "paths_ns_above_empty": {n: statistics.median(samples["baseline:" + n]) - base for n in packets},
            "wire_ns_above_empty": {k: v["ns_above_empty"] for k, v in ((wire or {}).get("baseline") or {}).items()},
        }
    print(json.dumps(out, indent=2))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
