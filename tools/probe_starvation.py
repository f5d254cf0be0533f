#!/usr/bin/env python3
"""What a TCP flow pays for being starved by strict priority: its resume penalty, measured.

The simulator's fluid flows take their share the instant a higher band goes idle. A real TCP
sender held back for longer than its minimum retransmission timeout (200 ms) sees the timer fire
and restarts from a window of one segment. This probe measures what that costs on a shaped veth,
with the testbed's queue budgets:

- namespaces a and b joined by a veth (tests/nettools.py); mfs-tc attached on a's egress with
  its HTB backend at --rate, and the TCP small-queue and GSO budgets of --host-queue-ms as the
  testbed sets them (netns_testbed.topology);
- --senders connections at level 0 send for D seconds (one process each, so they keep their
  band busy); one connection at the bulk level (the default level, K-2) starts 10 ms later with --mbytes to send;
- per D: the bytes the bulk flow got while starved, the time from the last byte of the level-0
  flows to its own last byte, the time its remaining bytes take at the link's goodput
  (1448/1514 of --rate, the simulator's `goodput`), the difference (the resume penalty) and the
  TCP timeouts in namespace a (nstat TcpExtTCPTimeouts).

With --promote-after S the bulk flow's entry is a laxity entry that comes due for level 0 S
seconds into each round, while the level-0 flows still send (S < D). The fluid model moves it at
once: it takes its share at level 0. The probe reports when its next 64 kB arrived after that
(`promotion_lag_s`, against `promotion_fluid_s`, the time at its fluid share): a starved flow's
promotion has no packet to carry it until a segment leaves its band or TCP's timeout fires
(docs/datapath.md "A level travels with packets"; the simulator's --promotion-rto-ms).

    sudo .venv/bin/python tools/probe_starvation.py [--starve 0.15,0.5,1,2,3] [--repeat 2] [--promote-after S]

Prints JSON. Levels come from static entries (`mfs-tc set`'s kind), written once: every round
reuses the same 5-tuples.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from nettools import VethPair  # noqa: E402

from mfs_tc import bpfsys, layout  # noqa: E402
from mfs_tc.entry import FlowEntry  # noqa: E402
from mfs_tc.layout import MODE_LAXITY, FlowKey  # noqa: E402
from mfs_tc.loader import AttachOptions, attach, detach  # noqa: E402
from mfs_tc.units import parse_rate  # noqa: E402
from netns_testbed.topology import TopologyConfig, set_queue_budgets  # noqa: E402

BULK_PORT, URGENT_PORT0 = 6002, 6011  # destination ports: the bulk flow, the level-0 flows
BULK_SPORT, URGENT_SPORT0 = 7002, 7101
GOODPUT = 1448 / 1514
PROMOTED_BYTES = 64 << 10  # --promote-after: bytes that show the promotion landed


@dataclass
class Promotion:
    """--promote-after: the bulk flow's entry is a laxity entry at the bulk level until its
    deadline, level 0 from then on (written at each round's start, deadline `after_s` later)."""

    after_s: float
    bulk_level: int
    flows: bpfsys.BpfMap
    key: bytes

    def write(self, deadline_ns: int) -> None:
        e = FlowEntry(mode=MODE_LAXITY, levels=[0, self.bulk_level], thresholds=[0], deadline_ns=deadline_ns, ps_per_byte=0)
        self.flows.update(self.key, e.pack())


# the receiver, in namespace b: accepts every connection, records (time, bytes so far) per port
RECEIVER = r"""
import json, socket, sys, threading, time
addr, out_path, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
marks = {}
def serve(s, port):
    c, _ = s.accept(); n = 0; m = marks[port] = []
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b); m.append((time.monotonic(), n))
socks = []
for p in ports:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, p)); s.listen(1)
    socks.append(s)
threads = [threading.Thread(target=serve, args=(s, p)) for s, p in zip(socks, ports)]
for t in threads: t.start()
print("ready", flush=True)
for t in threads: t.join()
json.dump(marks, open(out_path, "w"))
"""

# a sender, in namespace a: "urgent" sends for D seconds, "bulk" sends N MiB (after 10 ms)
SENDER = r"""
import socket, sys, time
role, src, dst, sport, dport, arg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((src, sport)); s.connect((dst, dport))
if role == "urgent":
    buf = b"x" * 65536; end = time.monotonic() + arg
    while time.monotonic() < end:
        s.send(buf)
else:
    time.sleep(0.01); s.sendall(b"y" * (int(arg) << 20))
s.close()
"""


def _timeouts(ns: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az", "TcpExtTCPTimeouts"], capture_output=True, text=True).stdout
    parts = out.split("TcpExtTCPTimeouts")
    return int(parts[1].split()[0]) if len(parts) > 1 else 0


def _round(
    net: VethPair, starve_s: float, senders: int, mbytes: int, rate_bps: float, scratch: Path, promote: Promotion | None = None
) -> dict[str, Any]:
    out = scratch / f"marks-{starve_s}.json"
    ports = [BULK_PORT] + [URGENT_PORT0 + i for i in range(senders)]
    rx = subprocess.Popen(
        ["ip", "netns", "exec", net.b, sys.executable, "-c", RECEIVER, net.ip_b, str(out), *map(str, ports)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rx.stdout is not None
        if rx.stdout.readline().strip() != "ready":
            raise RuntimeError("the receiver did not start")
        rto0 = _timeouts(net.a)
        due_s = None
        if promote is not None:
            due_s = time.monotonic() + promote.after_s
            promote.write(int(due_s * 1e9))
        procs = [
            subprocess.Popen(
                ["ip", "netns", "exec", net.a, sys.executable, "-c", SENDER, "urgent", net.ip_a, net.ip_b]
                + [str(URGENT_SPORT0 + i), str(URGENT_PORT0 + i), str(starve_s)]
            )
            for i in range(senders)
        ]
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", net.a, sys.executable, "-c", SENDER, "bulk", net.ip_a, net.ip_b]
                + [str(BULK_SPORT), str(BULK_PORT), str(mbytes)]
            )
        )
        for p in procs:
            if p.wait(timeout=starve_s + 120) != 0:
                raise RuntimeError("a sender failed")
        rx.wait(timeout=60)
    finally:
        if rx.poll() is None:
            rx.kill()
    marks = {int(k): v for k, v in json.loads(out.read_text()).items()}
    urgent_end = max(marks[URGENT_PORT0 + i][-1][0] for i in range(senders))
    bulk = marks[BULK_PORT]
    got = max([n for t, n in bulk if t <= urgent_end] or [0])
    total = mbytes << 20
    after = bulk[-1][0] - urgent_end
    ideal = (total - got) / (rate_bps / 8 * GOODPUT)
    row: dict[str, Any] = {}
    if due_s is not None:
        # the bytes the bulk flow got from the moment its promotion came due until the level-0
        # flows stopped, and when its first PROMOTED_BYTES after that arrived (None: not before
        # the band went idle); the fluid answer is its share of the link at level 0 at once
        at_due = max([n for t, n in bulk if t <= due_s] or [0])
        moved = next((t for t, n in bulk if n >= at_due + PROMOTED_BYTES and t <= urgent_end), None)
        share = rate_bps / 8 * GOODPUT / (senders + 1)
        row = {
            "promote_after_s": promote.after_s if promote is not None else None,
            "bytes_after_due_while_urgent": max([n for t, n in bulk if t <= urgent_end] or [0]) - at_due,
            "promotion_lag_s": round(moved - due_s, 4) if moved is not None else None,
            "promotion_fluid_s": round(PROMOTED_BYTES / share, 4),
        }
    return row | {
        "starve_s": starve_s,
        "bulk_bytes_while_starved": got,
        "starved_through": got < total,  # False: the bulk flow finished before the band went idle
        "resume_s": round(after, 4),
        "fluid_s": round(ideal, 4),
        "penalty_ms": round((after - ideal) * 1e3, 1),
        "tcp_timeouts": _timeouts(net.a) - rto0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", default="200mbit", help="the shaped link rate (the testbed's default)")
    ap.add_argument("--host-queue-ms", type=float, default=1.0, help="TSQ and GSO budgets as the testbed's (0: kernel defaults)")
    ap.add_argument("--starve", default="0.15,0.5,1,2,3", help="seconds the level-0 flows send, comma-separated")
    ap.add_argument("--senders", type=int, default=4, help="level-0 connections")
    ap.add_argument("--mbytes", type=int, default=8, help="MiB the bulk flow sends")
    ap.add_argument("--repeat", type=int, default=2, help="rounds per starvation time")
    ap.add_argument(
        "--promote-after",
        type=float,
        default=0.0,
        help="seconds after a round starts at which the bulk flow's level comes due for level 0 (0: it stays bulk)",
    )
    args = ap.parse_args()
    try:
        rate = float(parse_rate(args.rate))
        starve = [float(x) for x in args.starve.split(",")]
    except ValueError as exc:
        ap.error(str(exc))
    if not starve or min(starve) <= 0 or args.senders < 1 or args.mbytes < 1 or args.repeat < 1:
        ap.error("--starve times, --senders, --mbytes and --repeat must be positive")
    if os.geteuid() != 0:
        print(json.dumps({"error": "needs root (network namespaces, tc, bpf)"}))
        return 2
    queue = TopologyConfig(rate_bps=rate, host_queue_ms=args.host_queue_ms).host_queue_bytes()
    rounds = []
    with VethPair() as net, tempfile.TemporaryDirectory(prefix="mfs-starve-") as tmp:
        if queue is not None:
            for ns, dev in ((net.a, net.dev_a), (net.b, net.dev_b)):
                set_queue_budgets(ns, dev, queue)
        opts = AttachOptions(net.dev_a, netns=net.a, qdisc="htb", rate_bps=int(rate))
        attach(opts)
        try:
            with bpfsys.BpfMap.open(layout.pin_dir(net.dev_a, net.a) / "flows") as m:
                bulk_key = FlowKey(net.ip_a, net.ip_b, BULK_SPORT, BULK_PORT).pack()
                m.update(bulk_key, FlowEntry.static(opts.resolved_default_level).pack())  # K-2, the bulk level
                for i in range(args.senders):
                    m.update(FlowKey(net.ip_a, net.ip_b, URGENT_SPORT0 + i, URGENT_PORT0 + i).pack(), FlowEntry.static(0).pack())
                promote = (
                    Promotion(args.promote_after, opts.resolved_default_level, m, bulk_key) if args.promote_after > 0 else None
                )
                for r in range(args.repeat):
                    for d in starve:
                        row = _round(net, d, args.senders, args.mbytes, rate, Path(tmp), promote)
                        row["round"] = r
                        rounds.append(row)
                        line = f"starved {d:g} s: penalty {row['penalty_ms']:+.1f} ms, {row['tcp_timeouts']} timeouts"
                        if promote is not None:
                            line += f", promotion lag {row['promotion_lag_s']} s (fluid {row['promotion_fluid_s']} s)"
                        print(line, file=sys.stderr)
        finally:
            detach(net.dev_a, net.a)
    starved = [x for x in rounds if x["starved_through"]]
    pen = [x["penalty_ms"] for x in starved]
    print(
        json.dumps(
            {
                "probe": "starvation",
                "rate_bps": rate,
                "host_queue_ms": args.host_queue_ms,
                "senders": args.senders,
                "mbytes": args.mbytes,
                "rounds": rounds,
                "starved_rounds": len(starved),
                "penalty_ms_median": round(statistics.median(pen), 1) if pen else None,
                "penalty_ms_max": max(pen) if pen else None,
                "tcp_timeouts": sum(x["tcp_timeouts"] for x in rounds),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
