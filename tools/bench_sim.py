#!/usr/bin/env python3
"""Scale benchmark of the flow-level simulator: wall time and events/s for N requests.

Prints one JSON object. Default: Poisson arrivals of the dense-70b model on the 256-host `c256`
cluster (200 Gbit/s, leaf-spine 2:1), 12 requests/s (a moderate load: ~95% attainment under mfs at
slo_scale 5), 1 ms re-level tick, policy mfs, 10k and 100k requests, prefill groups aggregated
(exact; --no-aggregate-groups for one fluid flow per rank flow). Target: 100k requests in under
300 s on the 2-core project machine.

  .venv/bin/python tools/bench_sim.py [--requests 10000,100000] [--policy mfs] [--load 12]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfs_tc.sim.engine import simulate  # noqa: E402
from mfs_tc.sim.runner import make_sim_policy  # noqa: E402
from mfs_tc.workload import WorkloadConfig, generate  # noqa: E402

TARGET_S = 300.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="10000,100000")
    ap.add_argument("--policy", default="mfs")
    ap.add_argument("--model", default="dense-70b")
    ap.add_argument("--cluster", default="c256")
    ap.add_argument("--load", type=float, default=12.0)
    ap.add_argument("--tick-ms", type=float, default=1.0)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--no-aggregate-groups", action="store_true",
                    help="one fluid flow per rank flow (slower; same results)")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.requests.split(",") if x.strip()]
    runs = []
    for n in sizes:
        t0 = time.perf_counter()
        wl = generate(WorkloadConfig(kind="poisson", load=args.load, num_requests=n,
                                     model=args.model, cluster=args.cluster, byte_scale=1.0,
                                     max_batch=args.max_batch))
        gen_s = time.perf_counter() - t0
        pol = make_sim_policy(args.policy, nlevels=8, ref_rate_bps=wl.cluster.link_rate_bps,
                              config={})
        res = simulate(wl, pol, tick_s=args.tick_ms / 1e3,
                       aggregate_groups=not args.no_aggregate_groups)
        runs.append({
            "requests": n, "hosts": wl.cluster.num_hosts, "gpus": wl.cluster.gpus,
            "generate_s": round(gen_s, 3), "simulate_s": round(res.wall_s, 3),
            "wall_s": round(gen_s + res.wall_s, 3), "events": res.events,
            "events_per_s": round(res.events / res.wall_s), "fluid_flows": res.flows,
            "rate_recomputations": res.recomputes,
            "requests_per_wall_s": round(n / res.wall_s, 1),
            "simulated_s": round(res.sim_time_s, 3), "attainment": round(res.attainment, 4),
        })
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    big = [r for r in runs if r["requests"] >= 100_000]
    out = {
        "benchmark": "sim_scale", "policy": args.policy, "model": args.model,
        "cluster": args.cluster, "load_rps": args.load, "tick_ms": args.tick_ms,
        "aggregate_groups": not args.no_aggregate_groups,
        "python": platform.python_version(), "runs": runs,
        "target": {"requests": 100_000, "max_wall_s": TARGET_S,
                   "met": (big[0]["wall_s"] < TARGET_S) if big else None},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
