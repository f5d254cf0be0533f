"""`mfs-tc testbed matrix`: the simulator's scenario matrix, small, on the netns testbed.

The same scenario/point/JSON-line vocabulary as `mfs_tc.sim.matrix` (so `runs.jsonl` resumes,
`matrix.json`, the table and the figure are the simulator's), with one difference: a point runs
as real TCP in network namespaces, in real time, so points run one after another (never in
parallel: they would share the machine's cores and distort each other). Default: the testbed
Mooncake scenario at 3 capacity loads x 3 seeds (about 20 s per policy per point: 18 minutes for
six policies).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from mfs_tc.results import STDERR
from mfs_tc.sim.matrix import SCENARIOS, MatrixConfig, Scenario, point_workload, run_matrix

# the simulator's testbed-mooncake scenario at 3 of its loads (light, near saturation, overload)
# and 40 requests a run (about 20 s per policy per point)
TESTBED_SCENARIOS: dict[str, Scenario] = {
    "testbed-mooncake": replace(SCENARIOS["testbed-mooncake"], loads=(0.5, 0.85, 1.2), requests=40),
}
DEFAULT_SEEDS = [1, 2, 3]


def run_testbed_point(task: dict[str, Any], prefix: str | None = None) -> list[dict[str, Any]]:
    """One point on a live testbed topology (namespace names from `prefix`, default the
    testbed's): its bound (if asked) and the asked policies, as the simulator's matrix lines."""
    from mfs_tc.sim.runner import point_bound

    from .runner import RunConfig, run_testbed

    sc = task["scenario"]
    cfg = task["config"]
    seed, load, slo = task["seed"], task["load"], task["slo_scale"]
    scen = Scenario(**{**sc, "loads": tuple(sc["loads"]), "slo_scales": tuple(sc["slo_scales"])})
    probe = RunConfig(
        policies=list(cfg["policies"]),
        workload=sc["workload"],
        num_requests=sc["requests"],
        model=sc["model"],
        byte_scale=sc["byte_scale"],
    )
    wl, load_info = point_workload(scen, probe.workload_config, seed, load, slo)
    rps = load_info["load_rps"]
    named: dict[str, Any] = {"prefix": prefix} if prefix else {}
    rc = RunConfig(
        policies=list(task["policies"] or cfg["policies"]),
        seeds=[seed],
        loads=[rps],
        slo_scales=[slo],
        workload=sc["workload"],
        num_requests=sc["requests"],
        model=sc["model"],
        byte_scale=sc["byte_scale"],
        levels=cfg["levels"],
        policy_config=dict(cfg["policy_config"]),
        **named,
    )
    base = {"scenario": sc["name"], "spec": sc, "seed": seed, "load": load, "slo_scale": slo, "source": "testbed", **load_info}
    lines: list[dict[str, Any]] = []
    if task["bound"]:
        lines.append({**base, "kind": "bound", "bound": point_bound(wl)})
    if task["policies"]:
        summary = run_testbed(rc, None, progress_out=STDERR)
        for r in summary["runs"]:
            r = {k: v for k, v in r.items() if k != "rows"} | load_info | {"load": load}
            lines.append({**base, "kind": "run", "policy": r["policy"], "run": r})
    return lines


def run_testbed_matrix(
    cfg: MatrixConfig, out_dir: Path, *, plots: bool = True, progress_out: TextIO | None = STDERR, prefix: str | None = None
) -> dict[str, Any]:
    """Run (or resume) `cfg` on the testbed into `out_dir` (the simulator's files and summary)."""
    return run_matrix(
        cfg, out_dir, plots=plots, progress_out=progress_out, point_runner=partial(run_testbed_point, prefix=prefix)
    )
