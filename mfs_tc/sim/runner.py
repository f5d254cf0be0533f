"""`mfs-tc sim run`: every policy over the same workloads, results in the testbed's shape.

For each (seed, load, slo_scale) point the workload is generated once (`mfs_tc.workload`, the
testbed's generator) and simulated under each policy (`mfs_tc.policy.make_policy`, the objects
that drive the eBPF maps). Results go through `mfs_tc.results` (requests.csv, summary.json
schema "mfs-tc-results/1", plots), so `report` renders testbed and simulator runs alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from .. import results
from ..bound import earliest_starts, reference_bound
from ..policy.base import Policy
from ..policy.registry import make_policy
from ..results import STDERR, JsonDict, aggregate, sweep, write_results
from ..workload import ClusterShape, Workload, WorkloadConfig, cluster_preset, generate
from ..workload.comparison import ComparisonConfig
from .engine import simulate
from .result import SimResult


def make_sim_policy(name: str, *, nlevels: int, ref_rate_bps: float, config: JsonDict) -> Policy:
    kw = {"nlevels": nlevels, "ref_rate_bps": ref_rate_bps}
    kw.update(config)
    return make_policy(name, **kw)


@dataclass(slots=True)
class SimRunConfig(ComparisonConfig):
    num_requests: int = 200
    cluster: str = "testbed"
    rate_bps: float | None = None  # None: the cluster preset's link rate
    tick_s: float = 0.001
    flow_setup_s: float = 0.0
    # stages whose every instance has the network to itself (sim.engine isolate_stages): what
    # their contention costs; () for the real thing
    isolate: tuple[str, ...] = ()
    goodput: float = 1.0  # payload fraction of the link rate (sim.engine); 1: fluid ideal
    queue_bytes: float = 0.0  # standing queue of a saturated band (sim.engine); 0: fluid ideal
    promotion_rto_s: float = 0.0  # a starved flow's promotion waits for a packet (sim.engine); 0: fluid ideal
    aggregate_groups: bool = True  # exact for plan_batch workloads (see sim.engine)
    bound: bool = True  # the reference bound per point (mfs_tc.bound), in each run's summary

    def __post_init__(self) -> None:
        ComparisonConfig.__post_init__(self)
        if self.tick_s <= 0:
            raise ValueError("--tick-ms must be positive")
        if self.flow_setup_s < 0:
            raise ValueError("--flow-setup-ms must not be negative")
        if self.queue_bytes < 0:
            raise ValueError("--queue-kb must not be negative")
        if self.promotion_rto_s < 0:
            raise ValueError("--promotion-rto-ms must not be negative")
        if not 0.0 < self.goodput <= 1.0:
            raise ValueError(f"--goodput must be in (0, 1], got {self.goodput}")
        cluster_preset(self.cluster)

    def engine_options(self) -> dict[str, Any]:
        """The simulator's options of this config (`simulate` keywords), for the policies' runs
        and the bound's contention-free run alike; stage isolation is the policies' only."""
        return {
            "tick_s": self.tick_s,
            "flow_setup_s": self.flow_setup_s,
            "aggregate_groups": self.aggregate_groups,
            "goodput": self.goodput,
            "queue_bytes": self.queue_bytes,
            "promotion_rto_s": self.promotion_rto_s,
        }

    def cluster_shape(self) -> ClusterShape:
        c = cluster_preset(self.cluster)
        return replace(c, link_rate_bps=self.rate_bps) if self.rate_bps else c

    def workload_config(self, seed: int, load: float | None, slo_scale: float) -> WorkloadConfig:
        extra = {}
        if self.byte_scale is None and self.cluster != "testbed":
            extra["byte_scale"] = 1.0  # real bytes on real link rates; 1/32 is the testbed's
        return self.point_config(seed, load, slo_scale, self.cluster_shape(), **extra)


def rows_of(res: SimResult, seed: int, load: float | None, slo_scale: float | None) -> list[JsonDict]:
    return results.rows_of(res.requests, res.policy, seed, load, slo_scale)


def summarize(res: SimResult, seed: int, load: float | None, slo_scale: float | None, wl: Workload) -> JsonDict:
    return results.summarize_run(
        res.policy,
        rows_of(res, seed, load, slo_scale),
        ccts_s=res.ccts_s,
        level_bytes=[int(round(b)) for b in res.level_bytes],
        seed=seed,
        load=load,
        slo_scale=slo_scale,
        extra={
            "source": "sim",
            "stage_bytes": {k: int(v) for k, v in res.stage_bytes.items()},
            "sim_time_s": res.sim_time_s,
            "wall_s": res.wall_s,
            "engine": res.engine,
            "events": res.events,
            "flows": res.flows,
            "recomputes": res.recomputes,
            "tick_s": res.tick_s,
            "net_util": res.net_util,
            "workload": wl.summary(),
        },
    )


def point_bound(wl: Workload, **sim_kw: Any) -> JsonDict:
    """The reference bound of one point's workload (the same for every policy), with the coupled
    bound (mfs_tc.bound) from a contention-free run of the simulator under `sim_kw`."""

    t0 = time.perf_counter()
    out = reference_bound(wl)
    iso = simulate(
        wl, make_sim_policy("fair", nlevels=8, ref_rate_bps=wl.cluster.link_rate_bps, config={}), isolate_stages=True, **sim_kw
    )
    coupled = reference_bound(wl, per_resource=False, earliest=earliest_starts(wl, iso.requests))
    out["coupled"] = {
        "attainment": coupled["attainment"],
        "met_max": coupled["met_max"],
        "lp_value": coupled["lp_value"],
        "contention_free_attainment": iso.attainment,
    }
    out["wall_s"] = time.perf_counter() - t0  # both LPs and the contention-free run
    return out


def run_points(cfg: SimRunConfig, progress_out: TextIO | None = STDERR) -> list[JsonDict]:
    runs: list[JsonDict] = []
    for seed in cfg.seeds:
        for load in cfg.loads:
            for slo in cfg.slo_scales:
                wl = generate(cfg.workload_config(seed, load, slo))
                bnd = point_bound(wl, **cfg.engine_options()) if cfg.bound else None
                for name in cfg.policies:
                    pol = make_sim_policy(
                        name, nlevels=cfg.levels, ref_rate_bps=wl.cluster.link_rate_bps, config=cfg.policy_config
                    )
                    t0 = time.perf_counter()
                    res = simulate(wl, pol, isolate_stages=cfg.isolate, **cfg.engine_options())
                    run = summarize(res, seed, load, slo, wl)
                    if cfg.isolate:
                        run["isolated_stages"] = sorted(cfg.isolate)
                    if bnd is not None:
                        run["bound"] = bnd
                    runs.append(run)
                    if progress_out is not None:
                        print(
                            f"sim {name:10s} seed={seed} load={load} slo_scale={slo}: "
                            f"attainment {run['attainment']:.3f}, p99 TTFT "
                            f"{(run['ttft_p99_s'] or 0) * 1e3:.1f} ms "
                            f"({res.events} events, {time.perf_counter() - t0:.1f} s, {res.engine})",
                            file=progress_out,
                            flush=True,
                        )
    return runs


def run_sim(cfg: SimRunConfig, out_dir: Path | None, *, plots: bool = True, progress_out: TextIO | None = STDERR) -> JsonDict:
    """Run every point and policy; write the results under `out_dir` (if given)."""
    runs = run_points(cfg, progress_out)
    meta = {"source": "sim", "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in _asdict(cfg).items()}}
    if out_dir is None:
        aggs = aggregate(runs)
        return {
            "schema": "mfs-tc-results/1",
            "meta": meta,
            "runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
            "policies": aggs,
            "sweep": sweep(aggs),
        }
    return write_results(Path(out_dir), runs, meta, plots=plots)


def _asdict(cfg: SimRunConfig) -> JsonDict:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}
