"""`mfs-tc testbed run`: replay the same arrivals under each policy in turn, write the results.

One topology serves the whole run (policies live in the controllers, not in the datapath), so
every policy sees the same links, the same arrivals and the same batching rule. The topology is
removed at the end, on Ctrl-C / SIGTERM, or when anything fails (try/finally plus a SIGTERM ->
KeyboardInterrupt handler); leftovers of crashed runs are removed at start.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from mfs_tc import results
from mfs_tc.errors import MfsError
from mfs_tc.results import STDERR, JsonDict, summarize_run, write_results
from mfs_tc.workload.comparison import DEFAULT_POLICIES, ComparisonConfig
from mfs_tc.workload.config import WorkloadConfig

from .plan import ReplayScenario, scenario_from_workload
from .replay import Replay, ReplayResult, start_sinks
from .sched import ControllerScheduler, NullScheduler, Scheduler
from .topology import DEFAULT_HOST_QUEUE_MS, DEFAULT_PREFIX, Topology, TopologyConfig


@dataclass(slots=True)
class RunConfig(ComparisonConfig):
    rate_bps: float = 200e6
    datapath: str = "mfs"
    prefix: str = DEFAULT_PREFIX
    pause_s: float = 1.0
    host_queue_ms: float = DEFAULT_HOST_QUEUE_MS  # topology.TopologyConfig.host_queue_ms
    rto_min_ms: float = 0.0  # topology.TopologyConfig.rto_min_ms

    def __post_init__(self) -> None:
        ComparisonConfig.__post_init__(self)
        # the topology's own checks, before anything is built (its host counts come later, from
        # the workload's cluster)
        TopologyConfig(
            rate_bps=self.rate_bps,
            levels=self.levels,
            datapath=self.datapath,
            prefix=self.prefix,
            host_queue_ms=self.host_queue_ms,
            rto_min_ms=self.rto_min_ms,
        )

    def checks_policies(self) -> bool:
        return self.datapath == "mfs"

    def workload_config(self, seed: int, load: float | None, slo_scale: float) -> WorkloadConfig:
        from mfs_tc.workload import ClusterShape

        return self.point_config(seed, load, slo_scale, ClusterShape(link_rate_bps=self.rate_bps))


def rows_of(result: ReplayResult, seed: int, load: float | None, slo_scale: float | None) -> list[JsonDict]:
    return results.rows_of(result.requests, result.policy, seed, load, slo_scale)


class Progress:
    """One line per policy run with a live counter (rewritten in place on a terminal)."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.tty = bool(out and out.isatty())
        self.label = ""
        self._last = 0.0

    def begin(self, label: str, total: int) -> None:
        self.label = label
        self.update(0, total, force=True)

    def update(self, done: int, total: int, force: bool = False) -> None:
        if not self.out:
            return
        now = time.monotonic()
        if self.tty and (force or done == total or now - self._last > 0.2):
            self.out.write(f"\r{self.label}: {done}/{total} requests")
            self.out.flush()
            self._last = now

    def end(self, text: str) -> None:
        if not self.out:
            return
        self.out.write(("\r" if self.tty else "") + f"{self.label}: {text}\n")
        self.out.flush()


# what builds a run's scheduler: (topology, policy, datapath, policy config) -> Scheduler
SchedulerFactory = Callable[[Topology, str, str, dict[str, Any]], Scheduler]


def make_scheduler(topo: Topology, policy: str, datapath: str, config: dict[str, Any]) -> Scheduler:
    if datapath == "plain":
        s = NullScheduler()
        s.policy = policy
        return s
    return ControllerScheduler(topo, policy, dict(config))


def run_scenarios(
    topo: Topology,
    points: list[tuple[int, float | None, float, Callable[[], ReplayScenario]]],
    cfg: RunConfig,
    out_dir: Path | None,
    progress: Progress,
    meta: JsonDict,
    scheduler: SchedulerFactory = make_scheduler,
) -> JsonDict:
    """Replay each (seed, load, slo_scale, scenario) under every policy on a live topology
    (`scheduler` builds each run's scheduler: a probe may wrap the controllers')."""
    runs: list[JsonDict] = []
    summary: JsonDict = {}
    for seed, load, slo, make in points:
        scenario = make()
        for policy in cfg.policies:
            sched = scheduler(topo, policy, cfg.datapath, cfg.policy_config)
            label = f"{policy:<11} seed {seed}" + (f" load {load:g}" if load else "") + f" slo x{slo:g}"
            progress.begin(label, len(scenario.requests))
            try:
                res = Replay(topo, scenario, sched, seed=seed, progress=progress.update).run()
            finally:
                sched.close()
            run = summarize_run(
                policy,
                rows_of(res, seed, load, slo),
                ccts_s=res.ccts_s,
                level_bytes=res.level_bytes,
                seed=seed,
                load=load,
                slo_scale=slo,
                extra={
                    "bytes_intended": res.bytes_intended,
                    "bytes_delivered": res.bytes_delivered,
                    "flows": res.flows,
                    "duration_s": res.duration_s,
                    "errors": res.errors,
                    "workload": scenario.meta,
                },
            )
            runs.append(run)
            att = run["attainment"]
            progress.end(
                f"{run['met']}/{run['requests']} met (attainment {att:.3f}), "
                f"p99 TTFT {_ms(run['ttft_p99_s'])}, {res.duration_s:.1f}s"
                + (f", {len(res.errors)} errors" if res.errors else "")
            )
            if out_dir is not None:
                summary = write_results(out_dir, runs, meta, plots=False)
            time.sleep(cfg.pause_s)
    if out_dir is not None:
        summary = write_results(out_dir, runs, meta, plots=True)
    else:
        from mfs_tc.results import aggregate, sweep

        aggs = aggregate(runs)
        summary = {"runs": runs, "policies": aggs, "sweep": sweep(aggs), "meta": meta}
    return summary


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.0f} ms"


def run_testbed(
    cfg: RunConfig,
    out_dir: Path | None,
    *,
    progress_out: TextIO | None = STDERR,
    scheduler: SchedulerFactory = make_scheduler,
) -> JsonDict:
    """The default comparison / sweep on the workload. Returns the summary (also in out_dir)."""
    from mfs_tc.workload import generate

    first = generate(cfg.workload_config(cfg.seeds[0], cfg.loads[0], cfg.slo_scales[0]))
    tcfg = TopologyConfig.from_cluster(
        first.cluster,
        levels=cfg.levels,
        datapath=cfg.datapath,
        prefix=cfg.prefix,
        host_queue_ms=cfg.host_queue_ms,
        rto_min_ms=cfg.rto_min_ms,
    )
    points: list[tuple[int, float | None, float, Callable[[], ReplayScenario]]] = []
    for load in cfg.loads:
        for slo in cfg.slo_scales:
            for seed in cfg.seeds:
                points.append((seed, load, slo, partial(_scenario_at, cfg, seed, load, slo)))
    meta = {
        "source": "testbed",
        "config": {k: v for k, v in asdict(cfg).items()},
        "topology": asdict(tcfg),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    progress = Progress(progress_out)
    with live_topology(tcfg) as topo:
        return run_scenarios(topo, points, cfg, out_dir, progress, meta, scheduler)


def _scenario_at(cfg: RunConfig, seed: int, load: float | None, slo: float) -> ReplayScenario:
    """The replay scenario of one point (made when the point runs)."""
    from mfs_tc.workload import generate

    return scenario_from_workload(generate(cfg.workload_config(seed, load, slo)))


# what signal.signal returns and takes back (a handler, SIG_DFL/SIG_IGN, or None: not set from Python)
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class live_topology:
    """Context manager: topology up with sinks; down on exit, Ctrl-C or SIGTERM."""

    def __init__(self, tcfg: TopologyConfig, tag: str | None = None) -> None:
        self.topo = Topology(tcfg, tag=tag) if tag else Topology(tcfg)
        self._old: _Handler = None
        self._old_int: _Handler = None

    def __enter__(self) -> Topology:
        def on_term(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        try:
            self._old = signal.signal(signal.SIGTERM, on_term)
            # also when started with SIGINT ignored (nohup, `cmd &` in scripts): Ctrl-C / kill -INT
            self._old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:  # not the main thread
            self._old = self._old_int = None
        self.topo.up()
        try:
            self.sinks = start_sinks(self.topo)
        except BaseException:
            self.topo.down()
            raise
        return self.topo

    def __exit__(self, *exc: object) -> None:
        for s in getattr(self, "sinks", []):
            s.close()
        self.topo.down()
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        if getattr(self, "_old_int", None) is not None:
            signal.signal(signal.SIGINT, self._old_int)


__all__ = ["RunConfig", "run_testbed", "run_scenarios", "live_topology", "DEFAULT_POLICIES", "MfsError"]
