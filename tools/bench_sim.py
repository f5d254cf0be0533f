#!/usr/bin/env python3
"""Scale benchmark of the flow-level simulator where the network is the bottleneck.

Prints one JSON object. Default: Poisson arrivals of `qwen-72b` (MHA: 2.6 MB of KV per token, H100
TP 8) on `c1024` (1,024 GPUs in 128 groups of 8, 64 KV + 64 decode NICs, 400 Gbit/s, leaf-spine
of racks of 64 at 2:1), policy mfs, 1 ms re-level tick, prefill groups aggregated (exact).

Load rule (not hand-tuned): the load at which the busiest link's expected mean utilisation is
`--target-util` (default 0.8), from each link's bytes per request / capacity
(`sim.netutil.load_for_utilisation` over a 2,000-request sample of the same mix). On c1024 with
qwen-72b the busiest link is the decode rack's leaf downlink (all p2d crosses it). The measured
utilisation of every link class (`net_util`) and of the bottleneck link is in the JSON.

Curves: requests 1k / 10k / 100k on 1,024 GPUs; GPUs 64 / 256 / 1,024 at 10k requests (c1024's
shape scaled: G/8 groups of 8, max(8, G/16) KV and decode NICs, racks of 64, 2:1; the load from
the same rule on each). Every point runs in its own process, so `peak_rss_mb`
(getrusage ru_maxrss) is that run's. `--quick`: 1k / 5k requests, 64 / 256 GPUs at 1k.
Target: 100k requests on 1,024 GPUs in under 120 s (generation + simulation) on one core.

`--against DIR`: every point also runs with the simulator of another checkout (DIR/tools/
bench_sim.py, e.g. `git archive REF | tar -x -C DIR`), right after this one in the same session,
and the JSON gives both times and the speedup (the house rule: ratios measured in one run).

`--engine`: the event loop compiled by mypyc (`mfs_tc.sim.accel`, the default where it is built)
or the source; each point's JSON says which ran.

  .venv/bin/python tools/bench_sim.py [--quick] [--policy mfs] [--allocator numba|python]
                                      [--engine auto|compiled|python] [--against DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfs_tc.sim.engine import ENGINES, simulate  # noqa: E402
from mfs_tc.sim.netutil import load_for_utilisation  # noqa: E402
from mfs_tc.sim.runner import make_sim_policy  # noqa: E402
from mfs_tc.workload import ClusterShape, WorkloadConfig, cluster_preset, generate  # noqa: E402

TARGET_S = 120.0
TARGET_REQUESTS = 100_000
SAMPLE = 2000  # requests of the mix the load rule looks at


def cluster_for(gpus: int, base: str) -> ClusterShape:
    """`base` (c1024) itself at its GPU count; otherwise its shape scaled to `gpus`."""
    c = cluster_preset(base)
    if gpus == c.gpus:
        return c
    if gpus % c.group_size:
        raise ValueError(f"--gpus {gpus} is not a multiple of the group size {c.group_size}")
    edge = max(8, gpus // 16)
    return ClusterShape(
        kv_hosts=edge,
        prefill_groups=gpus // c.group_size,
        group_size=c.group_size,
        decode_hosts=edge,
        link_rate_bps=c.link_rate_bps,
        hosts_per_rack=c.hosts_per_rack,
        oversubscription=c.oversubscription,
    )


def _config(args: argparse.Namespace, cluster: ClusterShape, n: int, load: float) -> WorkloadConfig:
    return WorkloadConfig(
        kind="poisson",
        load=load,
        num_requests=n,
        model=args.model,
        cluster=cluster,
        byte_scale=1.0,
        max_batch=args.max_batch,
        slo_scale=args.slo_scale,
    )


def one_point(args: argparse.Namespace, n: int, gpus: int) -> dict:
    """One simulation (in this process): its figures as a dict."""
    cluster = cluster_for(gpus, args.cluster)
    t0 = time.perf_counter()
    if args.load:
        load, bneck, bclass, busy = args.load, "", "", 0.0
    else:
        sample = generate(_config(args, cluster, SAMPLE, 1.0))
        load, bneck, bclass, busy = load_for_utilisation(sample, args.target_util)
    rule_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    wl = generate(_config(args, cluster, n, load))
    gen_s = time.perf_counter() - t0
    pol = make_sim_policy(args.policy, nlevels=8, ref_rate_bps=wl.cluster.link_rate_bps, config={})
    res = simulate(
        wl,
        pol,
        tick_s=args.tick_ms / 1e3,
        aggregate_groups=not args.no_aggregate_groups,
        allocator=args.allocator,
        engine=args.engine,
    )
    nu = res.net_util
    bott = {
        "link": bneck,
        "class": bclass,
        "expected_mean": round(load * busy, 3) if busy else None,
        "measured_mean": round(nu[bclass]["max_link_mean"], 3) if bclass in nu else None,
    }
    return {
        "requests": n,
        "engine": res.engine,
        "gpus": wl.cluster.gpus,
        "hosts": wl.cluster.num_hosts,
        "load_rps": round(load, 3),
        "load_rule_s": round(rule_s, 3),
        "generate_s": round(gen_s, 3),
        "simulate_s": round(res.wall_s, 3),
        "wall_s": round(gen_s + res.wall_s, 3),
        "events": res.events,
        "events_per_s": round(res.events / res.wall_s),
        "fluid_flows": res.flows,
        "rate_recomputations": res.recomputes,
        "requests_per_wall_s": round(n / res.wall_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "simulated_s": round(res.sim_time_s, 3),
        "attainment": round(res.attainment, 4),
        "bottleneck": bott,
        "net_util": {
            k: {"mean": round(v["mean"], 3), "p99": v["p99"], "max_link_mean": round(v["max_link_mean"], 3)}
            for k, v in nu.items()
        },
    }


def _in_subprocess(argv: list[str], n: int, gpus: int, script: str = __file__) -> dict:
    cmd = [sys.executable, script, *argv, "--single", f"{n}:{gpus}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--requests", default="1000,10000,100000", help="request counts of the requests curve (on the largest --gpus)"
    )
    ap.add_argument("--gpus", default="64,256,1024", help="GPU counts of the size curve")
    ap.add_argument("--size-requests", type=int, default=10000, help="requests per point of the size curve (0: no size curve)")
    ap.add_argument("--quick", action="store_true", help="a small version: 1k/5k, 64/256 GPUs at 1k")
    ap.add_argument("--policy", default="mfs")
    ap.add_argument("--model", default="qwen-72b")
    ap.add_argument("--cluster", default="c1024", help="the base cluster (scaled for --gpus)")
    ap.add_argument(
        "--target-util", type=float, default=0.8, help="expected mean utilisation of the busiest link (the load rule)"
    )
    ap.add_argument("--load", type=float, default=0.0, help="fixed load (req/s) instead of the rule")
    ap.add_argument("--slo-scale", type=float, default=5.0)
    ap.add_argument("--tick-ms", type=float, default=1.0)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--allocator", default="numba", choices=("numba", "python"))
    ap.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,
        help="the event loop: compiled (mfs_tc.sim.accel), python (the source), auto (compiled where built)",
    )
    ap.add_argument("--no-aggregate-groups", action="store_true", help="one fluid flow per rank flow (slower; same results)")
    ap.add_argument("--against", default="", help="another checkout whose simulator runs every point too (speedup)")
    ap.add_argument("--single", default="", help=argparse.SUPPRESS)  # N:GPUS, one point, here
    args = ap.parse_args(argv)
    if args.single:
        n, g = (int(x) for x in args.single.split(":"))
        print(json.dumps(one_point(args, n, g)))
        return 0
    base = [a for a in argv if a != "--quick"]
    if args.against:
        i = base.index("--against") if "--against" in base else -1
        base = base[:i] + base[i + 2 :] if i >= 0 else [a for a in base if not a.startswith("--against=")]
        other = Path(args.against) / "tools" / "bench_sim.py"
        if not other.is_file():
            ap.error(
                f"--against {args.against}: no tools/bench_sim.py there (a checkout of "
                "mfs-tc, e.g. git archive REF | tar -x -C DIR)"
            )
    if args.quick:
        sizes, gpus, size_n = [1000, 5000], [64, 256], 1000
    else:
        sizes = [int(x) for x in args.requests.split(",") if x.strip()]
        gpus = [int(x) for x in args.gpus.split(",") if x.strip()]
        size_n = args.size_requests
        if size_n < 0:
            ap.error(f"--size-requests {size_n}: a request count, or 0 for no size curve")
        if size_n == 0:
            gpus = []
    top = cluster_preset(args.cluster).gpus if not args.quick else max(gpus)
    points = [(n, top) for n in sizes] + [(size_n, g) for g in gpus if (size_n, g) not in [(n, top) for n in sizes]]
    done: dict[tuple[int, int], dict] = {}
    for n, g in points:
        done[(n, g)] = r = _in_subprocess(base, n, g)
        if args.against:
            ref = _in_subprocess(base, n, g, str(other))
            r["against"] = {
                "dir": args.against,
                "simulate_s": ref["simulate_s"],
                "events": ref["events"],
                "attainment": ref["attainment"],
                "peak_rss_mb": ref["peak_rss_mb"],
                "speedup": round(ref["simulate_s"] / r["simulate_s"], 2),
            }
        print(json.dumps({k: v for k, v in r.items() if k != "net_util"}), file=sys.stderr, flush=True)
    big = done.get((TARGET_REQUESTS, cluster_preset(args.cluster).gpus))
    out = {
        "benchmark": "sim_scale_network_bound",
        "policy": args.policy,
        "model": args.model,
        "cluster": args.cluster,
        "target_util": args.target_util,
        "tick_ms": args.tick_ms,
        "allocator": args.allocator,
        "aggregate_groups": not args.no_aggregate_groups,
        "python": platform.python_version(),
        "requests_curve": [done[(n, top)] for n in sizes],
        "size_curve": [done[(size_n, g)] for g in gpus],
        "target": {
            "requests": TARGET_REQUESTS,
            "gpus": cluster_preset(args.cluster).gpus,
            "max_wall_s": TARGET_S,
            "wall_s": big["wall_s"] if big else None,
            "met": (big["wall_s"] < TARGET_S) if big else None,
        },
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
