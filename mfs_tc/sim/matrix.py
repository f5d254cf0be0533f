"""`mfs-tc sim matrix`: every policy on every point of a set of scenarios, in parallel, resumable.

A scenario is a workload kind, model, cluster, its loads (light to overload), SLO scales and
request count; a point is (scenario, seed, load, slo_scale). Each point is one task: generate
its workload once, compute the reference bound (`mfs_tc.bound`) and simulate each policy still
missing. Tasks run on a local process pool (`jobs`, default all cores), serially (`jobs=1`), or on
Ray (`executor="ray"`, optional extra `mfs-tc[ray]`). Every finished run (and every point's
bound) is appended at once as one JSON line to `runs.jsonl` in the output directory, so an
interrupted matrix resumes where it stopped: on restart, lines already there are not recomputed.
Results per scenario go through `mfs_tc.results` (aggregate over seeds with a 95% t
confidence interval, the load held at 90% attainment interpolated by `sweep`), into
`matrix.json`, a table, and `matrix.png` (one subplot per scenario, attainment vs load).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..bound import saturation_load
from ..results import (
    STDERR,
    TARGET_ATTAINMENT,
    JsonDict,
    aggregate,
    net_util_headline,
    policy_color,
    sweep,
)
from ..workload import KINDS, generate, model_preset
from ..workload.comparison import DEFAULT_POLICIES
from .engine import simulate
from .runner import SimRunConfig, make_sim_policy, point_bound, summarize

if TYPE_CHECKING:
    from ..workload import Workload, WorkloadConfig
    from .runner import SimRunConfig

PointKey = tuple[str, int, float, float, str | None]  # scenario, seed, load, slo scale, policy

SCHEMA = "mfs-tc-matrix/1"
RUNS_FILE = "runs.jsonl"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    workload: str = "mooncake"
    model: str = "dense-small"
    cluster: str = "testbed"
    loads: tuple[float, ...] = (1.0, 2.0, 3.0)
    slo_scales: tuple[float, ...] = (5.0,)
    requests: int = 40
    byte_scale: float | None = None  # None: the simulator's default for the cluster
    # "rps": loads are requests/s; "capacity": fractions of the saturation load (the rate at
    # which the busiest resource of this cluster, model and request mix is busy all the time,
    # bound.saturation_load), the same meaning on every scenario: nobody picks rates per scenario
    load_unit: str = "rps"

    def __post_init__(self) -> None:
        if self.load_unit not in LOAD_UNITS:
            raise ValueError(
                f"scenario {self.name}: load_unit must be one of {', '.join(LOAD_UNITS)}, " f"got {self.load_unit!r}"
            )

    def spec(self) -> JsonDict:
        d = asdict(self)
        d["loads"], d["slo_scales"] = list(self.loads), list(self.slo_scales)
        return d


LOAD_UNITS = ("rps", "capacity")


def point_workload(
    sc: Scenario, make_config: Callable[[int, float, float], WorkloadConfig], seed: int, load: float, slo: float
) -> tuple[Workload, JsonDict]:
    """The workload of one point and what its load means: `make_config(seed, rps, slo)` is the
    runner's workload config; a capacity load is converted with the saturation load of the same
    seed's request mix (generated once at 1 req/s: routing and per-request work do not depend on
    the arrival rate)."""

    if sc.load_unit == "rps":
        return generate(make_config(seed, load, slo)), {"load_rps": load}
    sat, busiest = saturation_load(generate(make_config(seed, 1.0, slo)))
    wl = generate(make_config(seed, load * sat, slo))
    return wl, {"load_rps": load * sat, "saturation_rps": sat, "busiest_resource": busiest}


# The documented default matrix (docs/simulator.md): every scenario from light load to overload
# in the same units, fractions of its saturation load (bound.saturation_load), so that no rate
# is picked per scenario. Workloads: Mooncake trace windows, the Azure conversation trace, Poisson
# with prefix reuse; models: dense and MoE (the testbed's shapes and hardware-derived ones);
# clusters: the netns testbed's, the paper's testbed (8 x 4 GPUs, 100G) and a 256-host leaf-spine.
CAPACITY_LOADS = (0.5, 0.7, 0.85, 1.0, 1.2)
CLUSTER_LOADS = CAPACITY_LOADS + (1.5,)  # up to where the best policy falls through 90%
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("testbed-mooncake", "mooncake", "dense-small", "testbed", CAPACITY_LOADS, (5.0,), 60, load_unit="capacity"),
        Scenario("testbed-poisson", "poisson", "dense-small", "testbed", CAPACITY_LOADS, (3.0,), 60, load_unit="capacity"),
        Scenario("testbed-azure", "azure", "dense-small", "testbed", CAPACITY_LOADS, (3.0,), 60, load_unit="capacity"),
        Scenario("testbed-moe-poisson", "poisson", "moe-8x", "testbed", CAPACITY_LOADS, (3.0,), 60, load_unit="capacity"),
        Scenario("paper-mixtral-poisson", "poisson", "mixtral-8x7b", "paper", CAPACITY_LOADS, (3.0,), 300, load_unit="capacity"),
        Scenario("paper-llama70b-mooncake", "mooncake", "llama3-70b", "paper", CAPACITY_LOADS, (3.0,), 200, load_unit="capacity"),
        Scenario("ls256-llama70b-azure", "azure", "llama3-70b", "ls256-200g", CAPACITY_LOADS, (3.0,), 600, load_unit="capacity"),
        # cluster scale where the network is the bottleneck (qwen-72b's 2.6 MB of KV per token
        # into c256's decode downlinks); not in the default matrix: ~10 min for 5 policies x 5
        # seeds on 2 cores (docs/evaluation.md "At cluster scale")
        Scenario("c256-qwen72b-poisson", "poisson", "qwen-72b", "c256", CLUSTER_LOADS, (3.0,), 1000, load_unit="capacity"),
        Scenario("c256-qwen72b-azure", "azure", "qwen-72b", "c256", CLUSTER_LOADS, (3.0,), 1000, load_unit="capacity"),
    )
}
CLUSTER_SCENARIOS = ("c256-qwen72b-poisson", "c256-qwen72b-azure")  # run on request (-s NAME)
DEFAULT_SCENARIOS = tuple(name for name in SCENARIOS if name not in CLUSTER_SCENARIOS)


def parse_scenario(text: str) -> Scenario:
    """A preset name, or KEY=VALUE pairs separated by commas (lists with '/'), e.g.
    name=moe,workload=poisson,model=moe-8x,cluster=testbed,loads=1/2/3,slo=3,requests=60."""
    text = text.strip()
    if "=" not in text:
        if text not in SCENARIOS:
            raise ValueError(
                f"unknown scenario {text!r}: choose one of {', '.join(SCENARIOS)} "
                "or give KEY=VALUE pairs (name=...,workload=...,loads=1/2/3)"
            )
        return SCENARIOS[text]
    kw: JsonDict = {}
    for item in text.split(","):
        if "=" not in item:
            raise ValueError(f"bad scenario item {item!r} in {text!r}: use KEY=VALUE")
        k, v = (x.strip() for x in item.split("=", 1))
        try:
            if k in ("loads", "load"):
                kw["loads"] = tuple(float(x) for x in v.split("/"))
            elif k in ("slo", "slo_scale", "slo_scales"):
                kw["slo_scales"] = tuple(float(x) for x in v.split("/"))
            elif k == "requests":
                kw["requests"] = int(v)
            elif k == "byte_scale":
                kw["byte_scale"] = float(v)
            elif k in ("name", "workload", "model", "cluster"):
                kw[k] = v
            elif k in ("unit", "load_unit"):
                kw["load_unit"] = v
            else:
                raise ValueError(
                    f"unknown scenario key {k!r}: use name, workload, model, "
                    "cluster, loads, slo, requests, byte_scale, unit (rps|capacity)"
                )
        except ValueError as exc:
            if "scenario key" in str(exc):
                raise
            raise ValueError(f"bad value for {k} in scenario {text!r}: {v!r}") from None
    kw.setdefault("name", "-".join(str(kw.get(k, "")) for k in ("cluster", "model", "workload") if kw.get(k)) or "custom")
    sc = Scenario(**kw)
    if not sc.loads or any(x <= 0 for x in sc.loads) or any(x <= 0 for x in sc.slo_scales):
        raise ValueError(f"scenario {sc.name}: loads and slo scales must be positive")
    return sc


@dataclass(slots=True)
class MatrixConfig:
    scenarios: list[Scenario] = field(default_factory=lambda: [SCENARIOS[n] for n in DEFAULT_SCENARIOS])
    policies: list[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    levels: int = 8
    tick_s: float = 0.001
    flow_setup_s: float = 0.0
    promotion_rto_s: float = 0.0  # a starved flow's promotion waits for a packet (sim.engine)
    bound: bool = True
    policy_config: JsonDict = field(default_factory=dict)
    isolate: tuple[str, ...] = ()  # stages with the network to themselves (SimRunConfig.isolate)

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ValueError("no scenario given")
        names = [s.name for s in self.scenarios]
        if len(set(names)) != len(names):
            raise ValueError(f"a scenario name is used twice: {','.join(names)}")

        for s in self.scenarios:  # validate through the simulator's own config
            if s.workload not in KINDS:
                raise ValueError(f"scenario {s.name}: workload must be one of {', '.join(KINDS)}, " f"got {s.workload!r}")
            model_preset(s.model)
            self.sim_config(s, self.policies, 1, s.loads[0], s.slo_scales[0])

    def emulation(self) -> JsonDict:
        """What the runs have of the testbed's TCP beyond the fluid ideal (the non-zero ones of
        flow_setup_s, promotion_rto_s): recorded in each run, so a resumed matrix never mixes
        runs made with other settings."""
        return {k: v for k, v in (("flow_setup_s", self.flow_setup_s), ("promotion_rto_s", self.promotion_rto_s)) if v}

    def sim_config(self, sc: Scenario, policies: list[str], seed: int, load: float, slo: float) -> SimRunConfig:
        return SimRunConfig(
            policies=list(policies),
            seeds=[seed],
            loads=[load],
            slo_scales=[slo],
            workload=sc.workload,
            num_requests=sc.requests,
            model=sc.model,
            cluster=sc.cluster,
            byte_scale=sc.byte_scale,
            levels=self.levels,
            tick_s=self.tick_s,
            flow_setup_s=self.flow_setup_s,
            promotion_rto_s=self.promotion_rto_s,
            policy_config=dict(self.policy_config),
            bound=False,
            isolate=tuple(self.isolate),
        )


def _key(scenario: str, seed: int, load: float, slo: float, policy: str | None) -> PointKey:
    return (scenario, int(seed), float(load), float(slo), policy)


def run_point(task: JsonDict) -> list[JsonDict]:
    """One point: its workload, its bound (if asked) and the asked policies. Returns the JSON
    lines (module-level so that process pools and Ray can ship it)."""

    cfg = MatrixConfig(**task["config"]) if isinstance(task["config"], dict) else task["config"]
    sc = Scenario(
        **{**task["scenario"], "loads": tuple(task["scenario"]["loads"]), "slo_scales": tuple(task["scenario"]["slo_scales"])}
    )
    seed, load, slo = task["seed"], task["load"], task["slo_scale"]
    scfg = cfg.sim_config(sc, task["policies"] or cfg.policies, seed, load, slo)
    wl, load_info = point_workload(sc, scfg.workload_config, seed, load, slo)
    base = {"scenario": sc.name, "spec": sc.spec(), "seed": seed, "load": load, "slo_scale": slo, **load_info}
    emulation = cfg.emulation()
    if emulation:
        base["emulation"] = emulation
    lines = []
    if task["bound"]:
        lines.append(
            {
                **base,
                "kind": "bound",
                "bound": point_bound(wl, **scfg.engine_options()),
            }
        )
    for name in task["policies"]:
        pol = make_sim_policy(name, nlevels=scfg.levels, ref_rate_bps=wl.cluster.link_rate_bps, config=scfg.policy_config)
        res = simulate(wl, pol, isolate_stages=scfg.isolate, **scfg.engine_options())
        run = summarize(res, seed, load, slo, wl) | load_info
        run.pop("rows", None)
        if scfg.isolate:
            run["isolated_stages"] = sorted(scfg.isolate)
        lines.append({**base, "kind": "run", "policy": name, "run": run})
    return lines


def read_lines(path: Path) -> list[JsonDict]:
    """The JSON lines written so far (a torn last line from an interrupted run is dropped)."""
    if not path.is_file():
        return []
    out = []
    for raw in path.read_text().splitlines():
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return out


def plan_tasks(cfg: MatrixConfig, done: list[JsonDict]) -> list[JsonDict]:
    """Tasks for every point with a policy run or bound not yet in `done`."""
    specs = {s.name: s.spec() for s in cfg.scenarios}
    have: set[PointKey] = set()
    emulation = cfg.emulation()
    for ln in done:
        if ln.get("scenario") in specs and ln.get("spec") != specs[ln["scenario"]]:
            raise ValueError(
                f"{RUNS_FILE} holds results of scenario {ln['scenario']} with another definition "
                f"({ln.get('spec')}): use another --out directory or remove {RUNS_FILE}"
            )
        if ln.get("kind") == "run" and ln["run"].get("isolated_stages", []) != sorted(cfg.isolate):
            raise ValueError(
                f"{RUNS_FILE} holds runs with isolated stages {ln['run'].get('isolated_stages', [])}, "
                f"this matrix isolates {sorted(cfg.isolate)}: use another --out directory"
            )
        if ln.get("scenario") in specs and ln.get("emulation", {}) != emulation:
            raise ValueError(
                f"{RUNS_FILE} holds results made with {ln.get('emulation') or 'the fluid ideal'}, this matrix "
                f"asks for {emulation or 'the fluid ideal'}: use another --out directory"
            )
        have.add(
            _key(ln["scenario"], ln["seed"], ln["load"], ln["slo_scale"], ln.get("policy") if ln.get("kind") == "run" else None)
        )
    cdict = {
        k: getattr(cfg, k)
        for k in ("policies", "seeds", "levels", "tick_s", "flow_setup_s", "promotion_rto_s", "bound", "policy_config", "isolate")
    }
    cdict["scenarios"] = []  # a worker needs the scenario of its task only
    tasks = []
    for sc in cfg.scenarios:
        for seed in cfg.seeds:
            for load in sc.loads:
                for slo in sc.slo_scales:
                    todo = [p for p in cfg.policies if _key(sc.name, seed, load, slo, p) not in have]
                    need_bound = cfg.bound and _key(sc.name, seed, load, slo, None) not in have
                    if todo or need_bound:
                        tasks.append(
                            {
                                "config": {**cdict, "scenarios": [sc]},
                                "scenario": sc.spec(),
                                "seed": seed,
                                "load": load,
                                "slo_scale": slo,
                                "policies": todo,
                                "bound": need_bound,
                            }
                        )
    return tasks


def execute(
    tasks: list[JsonDict],
    sink: Callable[[list[JsonDict]], None],
    *,
    jobs: int | None = None,
    executor: str = "local",
    address: str | None = None,
    point_runner: Callable[[JsonDict], list[JsonDict]] | None = None,
) -> None:
    """Run `tasks`, handing each task's lines to `sink` as soon as it finishes. `point_runner`
    (default: the simulator's `run_point`) runs one task; another runner (the netns testbed's)
    runs serially in this process."""
    if point_runner is not None:
        for t in tasks:
            sink(point_runner(t))
        return
    if executor == "ray":
        _execute_ray(tasks, sink, address)
        return
    if executor != "local":
        raise ValueError(f"unknown executor {executor!r}: use local or ray")
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise ValueError("--jobs must be at least 1")
    if jobs == 1 or len(tasks) <= 1:
        for t in tasks:
            sink(run_point(t))
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futs = [pool.submit(run_point, t) for t in tasks]
        for fut in as_completed(futs):
            sink(fut.result())


def _execute_ray(tasks: list[JsonDict], sink: Callable[[list[JsonDict]], None], address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'mfs-tc[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address) if address else ray.init()
    remote = ray.remote(run_point)
    pending = [remote.remote(t) for t in tasks]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            sink(ray.get(ref))


def run_matrix(
    cfg: MatrixConfig,
    out_dir: Path,
    *,
    jobs: int | None = None,
    executor: str = "local",
    address: str | None = None,
    plots: bool = True,
    progress_out: TextIO | None = STDERR,
    point_runner: Callable[[JsonDict], list[JsonDict]] | None = None,
) -> JsonDict:
    """Run (or resume) the matrix into `out_dir`; returns the matrix summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RUNS_FILE
    tasks = plan_tasks(cfg, read_lines(path))
    total = sum(len(t["policies"]) for t in tasks)
    ran = {"runs": 0, "bounds": 0}
    t0 = time.perf_counter()

    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a") as f:
        if torn:  # an interrupted write: end that line (read_lines drops it)
            f.write("\n")

        def sink(lines: list[JsonDict]) -> None:
            for ln in lines:
                f.write(json.dumps(ln, default=str) + "\n")
                ran["runs" if ln["kind"] == "run" else "bounds"] += 1
                if progress_out is not None and ln["kind"] == "run":
                    print(
                        f"matrix [{ran['runs']}/{total}] {ln['scenario']} {ln['policy']:10s} "
                        f"seed={ln['seed']} load={ln['load']} slo={ln['slo_scale']}: "
                        f"attainment {ln['run']['attainment']:.3f} "
                        f"({time.perf_counter() - t0:.0f} s)",
                        file=progress_out,
                        flush=True,
                    )
            f.flush()
            os.fsync(f.fileno())

        execute(tasks, sink, jobs=jobs, executor=executor, address=address, point_runner=point_runner)
    summary = summarize_matrix(cfg, read_lines(path))
    summary["meta"] = {
        "ran": ran,
        "tasks": len(tasks),
        "executor": executor,
        "jobs": jobs or os.cpu_count(),
        "wall_s": time.perf_counter() - t0,
    }
    (out_dir / "matrix.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if plots:
        render_matrix(out_dir / "matrix.png", summary)
    return summary


def summarize_matrix(cfg: MatrixConfig, lines: list[JsonDict]) -> JsonDict:
    """Per scenario: the runs of the configured points aggregated over seeds (results.aggregate:
    attainment mean and 95% CI, bound, network utilisation) and the sweep over load."""
    bounds = {
        _key(ln["scenario"], ln["seed"], ln["load"], ln["slo_scale"], None): ln["bound"]
        for ln in lines
        if ln.get("kind") == "bound"
    }
    out: JsonDict = {
        "schema": SCHEMA,
        "policies": list(cfg.policies),
        "seeds": list(cfg.seeds),
        "isolated_stages": sorted(cfg.isolate),
        "scenarios": {},
    }
    for sc in cfg.scenarios:
        wanted = {_key(sc.name, s, l, q, p) for s in cfg.seeds for l in sc.loads for q in sc.slo_scales for p in cfg.policies}
        runs = {}
        for ln in lines:
            if ln.get("kind") != "run":
                continue
            k = _key(ln["scenario"], ln["seed"], ln["load"], ln["slo_scale"], ln["policy"])
            if k in wanted:
                run = dict(ln["run"])
                b = bounds.get(k[:4] + (None,))
                if b is not None:
                    run["bound"] = b
                runs[k] = run
        ordered = [runs[k] for k in sorted(runs, key=lambda k: (cfg.policies.index(k[4] or ""), k[2], k[3], k[1]))]
        aggs = aggregate(ordered)
        sw = sweep(aggs)
        out["scenarios"][sc.name] = {
            "spec": sc.spec(),
            "runs": len(ordered),
            "missing": len(wanted) - len(ordered),
            "policies": aggs,
            "sweep": sw,
        }
    return out


def matrix_table(summary: JsonDict) -> str:
    """Per scenario: attainment mean ±95% CI per policy per load, the bound, the most loaded
    link class, then the load held at 90% attainment per policy."""
    lines = []
    pols = summary["policies"]
    for name, sc in summary["scenarios"].items():
        spec = sc["spec"]
        unit = "load = fraction of the saturation load" if spec.get("load_unit") == "capacity" else "load in requests/s"
        lines.append(
            f"== {name}: {spec['workload']} {spec['model']} on {spec['cluster']}, "
            f"{spec['requests']} requests, seeds {','.join(map(str, summary['seeds']))} "
            f"({unit})"
            + (f"; isolated stages: {', '.join(summary['isolated_stages'])}" if summary.get("isolated_stages") else "")
        )
        pts = sorted({(a["load"], a["slo_scale"]) for a in sc["policies"]})
        by = {(a["policy"], a["load"], a["slo_scale"]): a for a in sc["policies"]}
        head = (
            f"{'load':>6} {'slo':>4} "
            + " ".join(f"{p:>14}" for p in pols)
            + f" {'bound':>6} {'coupled':>7}  {'net util (mean/p99)':<24}"
        )
        lines += [head, "-" * len(head)]
        for load, slo in pts:
            cells, bound, coupled, nu = [], None, None, None
            for p in pols:
                a = by.get((p, load, slo))
                if a is None or a.get("attainment") is None:
                    cells.append(f"{'-':>14}")
                    continue
                ci = a.get("attainment_ci95")
                cell = f"{a['attainment']:.3f}" + (f" ±{ci:.3f}" if ci is not None else "")
                cells.append(f"{cell:>14}")
                bound = a.get("bound", bound)
                coupled = a.get("coupled_bound", coupled)
                nu = nu or a.get("net_util")
            lines.append(
                f"{load:>6.2f} {slo:>4.1f} " + " ".join(cells) + f" {('-' if bound is None else f'{bound:.3f}'):>6}"
                f" {('-' if coupled is None else f'{coupled:.3f}'):>7}  {net_util_headline(nu):<24}"
            )
        interp = (sc["sweep"] or {}).get("load_at_target_interpolated") or {}
        if interp:
            held = [(p, interp.get(p)) for p in pols]
            if "coupled_bound_curve" in sc["sweep"]:
                held.append(("coupled bound", sc["sweep"]["coupled_bound_load_at_target"]))
            lines.append(
                "load held at 90% attainment (interpolated): "
                + ", ".join(f"{p} {'-' if v is None else format(v, '.2f')}" for p, v in held)
            )
        exceeded = sum(a.get("coupled_exceeded", 0) for a in sc["policies"])
        if exceeded:
            lines.append(
                f"({exceeded} runs met more requests than their point's coupled bound: "
                "it is a reference, not a proof; see mfs_tc/bound.py)"
            )
        if sc["missing"]:
            lines.append(f"({sc['missing']} runs missing: rerun the same command to resume)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_matrix(path: Path, summary: JsonDict) -> Path:
    """One figure, one subplot per scenario: attainment vs load per policy (mean, 95% CI bars),
    the bound dashed black, the 90% target dotted grey. Colours: results.policy_color."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scs = list(summary["scenarios"].items())
    ncol = min(3, len(scs)) or 1
    nrow = (len(scs) + ncol - 1) // ncol or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.6 * nrow), squeeze=False)
    for ax in axes.flat[len(scs) :]:
        ax.set_visible(False)
    for ax, (name, sc) in zip(axes.flat, scs, strict=False):
        slo0 = min((a["slo_scale"] for a in sc["policies"]), default=None)
        aggs = [a for a in sc["policies"] if a["slo_scale"] == slo0]
        for pol in summary["policies"]:
            pts = sorted(
                (a["load"], a["attainment"], a.get("attainment_ci95") or 0.0)
                for a in aggs
                if a["policy"] == pol and a["attainment"] is not None
            )
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=pol,
                    color=policy_color(pol),
                )
        bpts = sorted({(a["load"], a["bound"]) for a in aggs if a.get("bound") is not None})
        if bpts:
            ax.plot([p[0] for p in bpts], [p[1] for p in bpts], ls="--", color=policy_color("bound"), label="bound")
        cpts = sorted({(a["load"], a["coupled_bound"]) for a in aggs if a.get("coupled_bound") is not None})
        if cpts:
            ax.plot([p[0] for p in cpts], [p[1] for p in cpts], ls="-.", color=policy_color("bound"), label="coupled bound")
        ax.axhline(TARGET_ATTAINMENT, color="grey", ls=":", lw=0.8)
        spec = sc["spec"]
        ax.set_title(f"{name}\n{spec['model']}, slo x{slo0}", fontsize=9)
        ax.set_xlabel("load (requests/s)")
        ax.set_ylabel("TTFT SLO attainment")
        ax.set_ylim(0, 1.05)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
