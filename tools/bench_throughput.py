#!/usr/bin/env python3
"""TCP throughput over a veth pair with and without the classifier, alternated in one run.

Two network namespaces joined by a veth (tests/nettools.py); iperf3 server in one, client in the
other with a fixed client port. "with" rounds attach mfs-tc on the client's egress in mark-only
mode (--qdisc none: the root qdisc stays the same, so only the classifier differs) with a flow
entry for the iperf3 data connection (the hit path, DSCP rewrite on); "without" rounds detach it.
Rounds alternate without/with and with/without (ABBA); the loss is the median of the rounds'
losses (each round's two runs back to back), with the 95% interval of their mean. Prints JSON
with the target and pass/fail.

    sudo .venv/bin/python tools/bench_throughput.py [--rounds 4] [--seconds 3]

Target: <= 2% throughput loss with the classifier.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from nettools import VethPair  # noqa: E402

from mfs_tc import bpfsys, layout  # noqa: E402
from mfs_tc.entry import FlowEntry  # noqa: E402
from mfs_tc.layout import FlowKey, FlowState  # noqa: E402
from mfs_tc.loader import AttachOptions, attach, detach  # noqa: E402
from mfs_tc.results import t_halfwidth  # noqa: E402

TARGET_LOSS = 0.02  # issue 9 section 6
CPORT, PORT = 45001, 5201


def _iperf(net: VethPair, seconds: float) -> float:
    """One iperf3 TCP run a -> b; bits per second received."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", net.b, "iperf3", "-s", "-1", "-B", net.ip_b, "-p", str(PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        r = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                net.a,
                "iperf3",
                "-c",
                net.ip_b,
                "-p",
                str(PORT),
                "--cport",
                str(CPORT),
                "-t",
                str(seconds),
                "-J",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        if r.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {r.stderr.strip() or r.stdout[-300:]}")
        return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"])
    finally:
        srv.wait(10)


def _with_classifier(net: VethPair) -> None:
    attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))
    pin = layout.pin_dir(net.dev_a, net.a)
    with bpfsys.BpfMap.open(pin / "flows") as m:
        m.update(FlowKey(net.ip_a, net.ip_b, CPORT, PORT).pack(), FlowEntry.static(1).pack())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="pairs of without/with runs")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each iperf3 run")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        ap.error("--rounds and --seconds must be positive")
    if shutil.which("iperf3") is None:
        print(json.dumps({"bench": "throughput_veth", "error": "iperf3 missing: apt-get install iperf3"}))
        return 2
    runs: dict[str, list[float]] = {"without": [], "with": []}
    hits = 0
    with VethPair() as net:

        def with_run() -> float:
            """One run with the classifier attached (and its packet count added to `hits`)."""
            nonlocal hits
            _with_classifier(net)
            try:
                gbps = _iperf(net, args.seconds)
                with bpfsys.BpfMap.open(layout.pin_dir(net.dev_a, net.a) / "flow_state") as m:
                    raw = m.lookup(FlowKey(net.ip_a, net.ip_b, CPORT, PORT).pack())
                    hits += FlowState.unpack(raw).sent_pkts if raw else 0  # the kernel's counts
            finally:
                detach(net.dev_a, net.a)
            return gbps

        for i in range(args.rounds):
            # ABBA: odd rounds run the classifier first, so a drift of the machine between the
            # two runs of a round does not count for one side only
            if i % 2 == 0:
                runs["without"].append(_iperf(net, args.seconds))
                runs["with"].append(with_run())
            else:
                runs["with"].append(with_run())
                runs["without"].append(_iperf(net, args.seconds))
    med = {k: statistics.median(v) for k, v in runs.items()}
    # one loss per round (the two runs of a round are back to back): their median, and the 95%
    # interval of their mean (single veth runs on the 2-core VM move by up to 25%)
    paired = [1 - w / wo for w, wo in zip(runs["with"], runs["without"], strict=True)]
    loss = statistics.median(paired)
    mean, half = statistics.fmean(paired), t_halfwidth(paired)
    out = {
        "bench": "throughput_veth",
        "rounds": args.rounds,
        "seconds": args.seconds,
        "without_gbps": round(med["without"] / 1e9, 3),
        "with_gbps": round(med["with"] / 1e9, 3),
        "runs_gbps": {k: [round(x / 1e9, 3) for x in v] for k, v in runs.items()},
        "round_losses": [round(x, 4) for x in paired],
        "classified_packets": hits,
        "loss": round(loss, 4),
        "loss_of_medians": round(1 - med["with"] / med["without"], 4),
        "mean_loss_ci95": [round(mean - half, 4), round(mean + half, 4)] if half is not None else None,
        "target_loss": TARGET_LOSS,
        "pass": loss <= TARGET_LOSS and hits > 0,
    }
    print(json.dumps(out, indent=2))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
