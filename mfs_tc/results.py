"""Results: per-request CSV, summary JSON, PNG plots and a text table. No root, no bcc.

Shared with the flow-level simulator: whoever produces results hands `write_results` a list of
runs, each a dict made by `summarize_run` (one policy at one seed and one load / slo_scale point)
with the per-request rows in CSV_FIELDS. `mfs-tc testbed report DIR` re-renders from the files.

Files in DIR: requests.csv (one row per request per run), summary.json (schema
"mfs-tc-results/1": `runs`, `policies` aggregated over seeds at each point, `sweep`), ttft_cdf.png,
attainment.png, and attainment_vs_<load|slo_scale>.png when several points were run.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO, cast

# A JSON object as read from / written to summary.json and requests.csv (rows, runs, aggregates)
JsonDict = dict[str, Any]


class _Stderr:
    """The default progress stream of the runners: sys.stderr as it is when a line is written,
    not the object it was when the module was imported (a caller or a test harness that swaps
    sys.stderr later gets the lines)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


STDERR = cast(TextIO, _Stderr())

SCHEMA = "mfs-tc-results/1"
CSV_FIELDS = [
    "request_id",
    "policy",
    "arrival_s",
    "slo_s",
    "ttft_s",
    "met",
    "kv_fetch_s",
    "collective_s",
    "p2d_s",
    "p2d_earliness_s",
    "seed",
    "load",
    "slo_scale",
    "queue_s",
    "prefill_group",
    "batch_id",
    "unloaded_ttft_s",
    "error",
    "compute_s",
    "scavenged",
]


@dataclass(slots=True)
class RequestRow:
    """One request's result, the same from the testbed and the simulator (a requests.csv row
    without the run's policy / seed / load / slo_scale, which `rows_of` adds).

    Stage times: `kv_fetch_s` from batch start to the last kv_fetch flow's end, `collective_s`
    the sum of the batch's collective completion times, `compute_s` the batch's compute,
    `p2d_s` the request's p2d duration, `p2d_earliness_s` = deadline - end of p2d."""

    request_id: int
    arrival_s: float
    slo_s: float
    unloaded_ttft_s: float = 0.0
    prefill_group: int = 0
    ttft_s: float | None = None
    met: bool = False
    queue_s: float = 0.0
    kv_fetch_s: float = 0.0
    collective_s: float = 0.0
    compute_s: float = 0.0
    p2d_s: float = 0.0
    p2d_earliness_s: float | None = None
    batch_id: int = -1
    scavenged: bool = False
    error: str = ""


def rows_of(
    requests: Iterable[RequestRow], policy: str, seed: int, load: float | None, slo_scale: float | None
) -> list[JsonDict]:
    """The CSV rows of one run: each request's row with the run's point; a request that never
    got its first token (and has no other error) is `unfinished`."""
    out = []
    for r in requests:
        d = asdict(r)
        if r.ttft_s is None and not r.error:
            d["error"] = "unfinished"
        d.update(policy=policy, seed=seed, load=load, slo_scale=slo_scale)
        out.append(d)
    return out


STAGE_FIELDS = ("queue_s", "kv_fetch_s", "collective_s", "p2d_s")
TARGET_ATTAINMENT = 0.9

# One colour per policy name in every figure, whatever the order of --policy (tab10 and a few
# more); names not listed get a stable colour from their name.
POLICY_COLORS = {
    "mfs": "#d62728",
    "mfs-laxity": "#ff7f0e",
    "fair": "#7f7f7f",
    "edf": "#1f77b4",
    "sjf": "#2ca02c",
    "karuna": "#9467bd",
    "pias": "#8c564b",
    "llf-oracle": "#e377c2",
    "srpt": "#17becf",
    "fifo": "#bcbd22",
    "bound": "#000000",
}
_SPARE_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")


def policy_color(name: str) -> str:
    c = POLICY_COLORS.get(name)
    if c is None:
        import zlib

        c = _SPARE_COLORS[zlib.crc32(name.encode()) % len(_SPARE_COLORS)]
    return c


def t_halfwidth(values: Sequence[float], confidence: float = 0.95) -> float | None:
    """Half-width of the two-sided `confidence` interval of the mean of `values` (Student's t
    with n-1 degrees of freedom, sample standard deviation); None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t as student_t

    sd = statistics.stdev(values)
    return float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def percentile(xs: Sequence[float], p: float) -> float | None:
    """Nearest-rank-interpolated percentile (p in 0..100); None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _mean(xs: Iterable[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.fmean(v) if v else None


def summarize_run(
    policy: str,
    rows: list[JsonDict],
    *,
    ccts_s: Sequence[float] = (),
    level_bytes: Sequence[int] = (),
    seed: int = 0,
    load: float | None = None,
    slo_scale: float | None = None,
    extra: JsonDict | None = None,
) -> JsonDict:
    """One run's summary. Unfinished requests (ttft None) count as missed; TTFT percentiles are
    over finished ones."""
    n = len(rows)
    ttfts = [float(r["ttft_s"]) for r in rows if r.get("ttft_s") not in (None, "")]
    met = sum(1 for r in rows if _truthy(r.get("met")))
    out = {
        "policy": policy,
        "seed": seed,
        "load": load,
        "slo_scale": slo_scale,
        "requests": n,
        "finished": len(ttfts),
        "met": met,
        "attainment": met / n if n else None,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p90_s": percentile(ttfts, 90),
        "ttft_p99_s": percentile(ttfts, 99),
        "ttft_mean_s": _mean(ttfts),
        "cct_mean_s": _mean(ccts_s),
        "cct_p99_s": percentile(list(ccts_s), 99),
        "collectives": len(ccts_s),
        "p2d_earliness_mean_s": _mean(_f(r.get("p2d_earliness_s")) for r in rows),
        "stage_times_mean_s": {k: _mean(_f(r.get(k)) for r in rows) for k in STAGE_FIELDS},
        "level_bytes": list(level_bytes),
        "rows": rows,
    }
    if extra:
        out.update(extra)
    return out


def _f(v: float | str | None) -> float | None:
    if v is None or v == "":
        return None
    return float(v)


def _truthy(v: object) -> bool:
    return v is True or v in ("True", "true", "1", 1)


def _point(run: JsonDict) -> tuple[Any, Any]:
    return (run.get("load"), run.get("slo_scale"))


def aggregate(runs: list[JsonDict]) -> list[JsonDict]:
    """Per (policy, load, slo_scale): mean, min, max, stdev over seeds of the key metrics."""
    groups: dict[tuple[Any, ...], list[JsonDict]] = {}
    for r in runs:
        groups.setdefault((r["policy"],) + _point(r), []).append(r)
    out = []
    for (policy, load, slo), rs in groups.items():
        agg: JsonDict = {"policy": policy, "load": load, "slo_scale": slo, "seeds": [r["seed"] for r in rs]}
        for k in ("attainment", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "cct_mean_s", "p2d_earliness_mean_s"):
            v = [r[k] for r in rs if r.get(k) is not None]
            agg[k] = statistics.fmean(v) if v else None
            agg[k + "_min"] = min(v) if v else None
            agg[k + "_max"] = max(v) if v else None
            agg[k + "_std"] = statistics.pstdev(v) if len(v) > 1 else 0.0 if v else None
        att = [r["attainment"] for r in rs if r.get("attainment") is not None]
        agg["attainment_ci95"] = t_halfwidth(att)
        nu = _mean_net_util([r["net_util"] for r in rs if r.get("net_util")])
        if nu:
            agg["net_util"] = nu
        bounds = [r["bound"]["attainment"] for r in rs if r.get("bound")]
        if bounds:
            agg["bound"] = statistics.fmean(bounds)
        coupled = [(r, r["bound"]["coupled"]) for r in rs if r.get("bound") and r["bound"].get("coupled")]
        if coupled:
            agg["coupled_bound"] = statistics.fmean(c["attainment"] for _, c in coupled)
            agg["contention_free"] = statistics.fmean(c["contention_free_attainment"] for _, c in coupled)
            # runs above their point's coupled bound (a reference, not a proof: mfs_tc.bound)
            agg["coupled_exceeded"] = sum(1 for r, c in coupled if r["met"] > c["met_max"])
        out.append(agg)
    return out


def _mean_net_util(nus: list[JsonDict]) -> JsonDict:
    """Per link class, the mean over runs (seeds) of each utilisation figure (sim.netutil)."""
    out: JsonDict = {}
    for cls in dict.fromkeys(c for nu in nus for c in nu):
        vs = [nu[cls] for nu in nus if cls in nu]
        out[cls] = {k: statistics.fmean(v[k] for v in vs) for k in vs[0] if k != "links"}
        out[cls]["links"] = vs[0].get("links")
    return out


def net_util_headline(nu: JsonDict | None) -> str:
    """The most loaded link class (highest p99, then mean) as 'class mean/p99'."""
    if not nu:
        return "-"
    cls, v = max(nu.items(), key=lambda kv: (kv[1]["p99"], kv[1]["mean"]))
    return f"{cls} {v['mean']:.2f}/{v['p99']:.2f}"


def sweep(aggs: list[JsonDict], target: float = TARGET_ATTAINMENT) -> JsonDict:
    """Attainment against load (or slo_scale) per policy, and the highest load held at `target`."""
    loads = sorted({a["load"] for a in aggs if a["load"] is not None})
    slos = sorted({a["slo_scale"] for a in aggs if a["slo_scale"] is not None})
    axis = "load" if len(loads) > 1 else "slo_scale" if len(slos) > 1 else None
    if axis is None:
        return {}
    out: JsonDict = {
        "axis": axis,
        "target_attainment": target,
        "curves": {},
        "max_load_at_target": {},
        "load_at_target_interpolated": {},
    }
    for a in sorted(aggs, key=lambda a: (a["policy"], a[axis] or 0)):
        out["curves"].setdefault(a["policy"], []).append([a[axis], a["attainment"]])
    if axis == "load":
        for pol, pts in out["curves"].items():
            held = [x for x, att in pts if att is not None and att >= target]
            out["max_load_at_target"][pol] = max(held) if held else None
            out["load_at_target_interpolated"][pol] = load_at_target(pts, target)
        coupled = sorted(
            {(a["load"], a["coupled_bound"]) for a in aggs if a.get("coupled_bound") is not None and a["load"] is not None}
        )
        if coupled:  # the coupled bound's curve and the load it holds (mfs_tc.bound)
            out["coupled_bound_curve"] = [list(p) for p in coupled]
            out["coupled_bound_load_at_target"] = load_at_target(out["coupled_bound_curve"], target)
    return out


def load_at_target(curve: list[list[Any]], target: float = TARGET_ATTAINMENT) -> float | None:
    """Load where attainment falls through `target`, linear between the two sweep points around
    the first fall (the highest point held if it never falls, None if the first is below)."""
    pts: list[tuple[float, float]] = [(x, a) for x, a in curve if a is not None]
    if not pts or pts[0][1] < target:
        return None
    for (x0, a0), (x1, a1) in zip(pts, pts[1:], strict=False):
        if a1 < target <= a0:
            return x0 + (x1 - x0) * (a0 - target) / (a0 - a1)
    return pts[-1][0]


def write_results(out_dir: Path, runs: list[JsonDict], meta: JsonDict | None = None, *, plots: bool = True) -> JsonDict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "requests.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for run in runs:
            for row in run["rows"]:
                w.writerow({k: _csv(row.get(k)) for k in CSV_FIELDS})
    aggs = aggregate(runs)
    summary = {
        "schema": SCHEMA,
        "meta": meta or {},
        "runs": [{k: v for k, v in r.items() if k != "rows"} for r in runs],
        "policies": aggs,
        "sweep": sweep(aggs),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if plots:
        render_plots(out_dir, summary, runs)
    return summary


def _csv(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6f}"
    return v


def load_results(out_dir: Path) -> tuple[JsonDict, list[JsonDict]]:
    """summary.json and the runs with their rows put back (for re-rendering)."""
    out_dir = Path(out_dir)
    sfile = out_dir / "summary.json"
    if not sfile.is_file():
        raise FileNotFoundError(f"{sfile} not found: point at a directory written by `testbed run` or `sim run`")
    summary = json.loads(sfile.read_text())
    if summary.get("schema") != SCHEMA:
        raise ValueError(f"{sfile}: schema {summary.get('schema')!r}, expected {SCHEMA}")
    rows: list[JsonDict] = []
    cfile = out_dir / "requests.csv"
    if cfile.is_file():
        with open(cfile, newline="") as f:
            rows = list(csv.DictReader(f))
    runs = []
    for r in summary["runs"]:
        mine = [
            x
            for x in rows
            if x["policy"] == r["policy"]
            and str(x["seed"]) == str(r["seed"])
            and _same(x.get("load"), r.get("load"))
            and _same(x.get("slo_scale"), r.get("slo_scale"))
        ]
        runs.append(dict(r, rows=mine))
    return summary, runs


def _same(a: object, b: object) -> bool:
    if a in (None, "") and b in (None, ""):
        return True
    try:
        return math.isclose(float(a), float(b))  # type: ignore[arg-type]  # not a number: TypeError, caught
    except (TypeError, ValueError):
        return False


def render_plots(out_dir: Path, summary: JsonDict, runs: list[JsonDict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Path] = []
    aggs = summary["policies"]
    policies = list(dict.fromkeys(a["policy"] for a in aggs))
    color = {p: policy_color(p) for p in policies}
    # TTFT CDF per policy (normalised by SLO so requests of different sizes compare), at the
    # highest load point run
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    top = max((_point(r) for r in runs), key=lambda p: tuple(x or 0 for x in p), default=None)
    for pol in policies:
        v = sorted(
            float(x["ttft_s"]) / float(x["slo_s"])
            for r in runs
            if r["policy"] == pol and _point(r) == top
            for x in r["rows"]
            if x.get("ttft_s") not in (None, "")
        )
        if v:
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], label=pol, color=color[pol])
    ax.axvline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT / SLO")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF (left of the dashed line: SLO met)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    made.append(out_dir / "ttft_cdf.png")
    fig.savefig(made[-1], dpi=110)
    plt.close(fig)
    # attainment per policy (mean over seeds, min-max as error bars), at the top point
    pts = [a for a in aggs if (a["load"], a["slo_scale"]) == top] or aggs
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = [a["policy"] for a in pts]
    means = [a["attainment"] or 0.0 for a in pts]
    lo = [m - (a["attainment_min"] or 0.0) for m, a in zip(means, pts, strict=False)]
    hi = [(a["attainment_max"] or 0.0) - m for m, a in zip(means, pts, strict=False)]
    ax.bar(names, means, yerr=[lo, hi], capsize=4, color=[color[n] for n in names])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("TTFT SLO attainment")
    ax.set_title("SLO attainment per policy" + (f" (load {top[0]})" if top and top[0] else ""))
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    made.append(out_dir / "attainment.png")
    fig.savefig(made[-1], dpi=110)
    plt.close(fig)
    sw = summary.get("sweep") or {}
    if sw.get("curves"):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for pol in policies:
            curve = sw["curves"].get(pol, [])
            ax.plot([x for x, _ in curve], [y for _, y in curve], marker="o", label=pol, color=color[pol])
        ax.axhline(sw.get("target_attainment", TARGET_ATTAINMENT), color="grey", ls="--", lw=0.8)
        ax.set_xlabel("load (requests/s)" if sw["axis"] == "load" else "SLO scale")
        ax.set_ylabel("TTFT SLO attainment")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        fig.tight_layout()
        made.append(out_dir / f"attainment_vs_{sw['axis']}.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


COMPARED_TIMES = (*STAGE_FIELDS, "compute_s", "ttft_s")


@dataclass(frozen=True)
class PointComparison:
    """One point (policy, load, SLO scale) of two results directories, over the requests both
    have (same seed and request id): attainment and mean stage times in each, `a` then `b`."""

    policy: str
    load: float | None
    slo_scale: float | None
    seeds: tuple[int, ...]
    requests: int
    attainment: tuple[float, float]
    times_s: dict[str, tuple[float | None, float | None]]

    @property
    def difference(self) -> float:
        """b's attainment minus a's."""
        return self.attainment[1] - self.attainment[0]

    def as_dict(self) -> JsonDict:
        return {
            "policy": self.policy,
            "load": self.load,
            "slo_scale": self.slo_scale,
            "seeds": list(self.seeds),
            "requests": self.requests,
            "attainment": list(self.attainment),
            "difference": self.difference,
            "times_mean_s": {k: list(v) for k, v in self.times_s.items()},
        }


def compare_results(a_dir: Path, b_dir: Path) -> list[PointComparison]:
    """Two results directories side by side (the testbed against the simulator on the same
    workload, or two runs of either), paired request by request: a request counts at a point
    only if both have it, an unfinished one as missed. Points in only one of them are left out;
    none in common is a clear error."""

    def by_point(d: Path) -> dict[tuple[Any, ...], dict[tuple[int, int], JsonDict]]:
        _, runs = load_results(d)
        out: dict[tuple[Any, ...], dict[tuple[int, int], JsonDict]] = {}
        for run in runs:
            point = (run["policy"], _f(run.get("load")), _f(run.get("slo_scale")))
            mine = out.setdefault(point, {})
            for row in run["rows"]:
                mine[(int(run["seed"]), int(row["request_id"]))] = row
        return out

    a, b = by_point(a_dir), by_point(b_dir)
    common = [p for p in a if p in b]
    if not common:
        raise ValueError(f"{a_dir} and {b_dir} have no point (policy, load, SLO scale) in common")
    out = []
    for point in sorted(common, key=lambda p: (p[0], p[1] or 0.0, p[2] or 0.0)):
        keys = sorted(k for k in a[point] if k in b[point])
        if not keys:
            continue
        ra, rb = [a[point][k] for k in keys], [b[point][k] for k in keys]
        times = {}
        for f in COMPARED_TIMES:
            pairs = ((_f(p.get(f)), _f(q.get(f))) for p, q in zip(ra, rb, strict=True))
            both = [(x, y) for x, y in pairs if x is not None and y is not None]
            times[f] = (_mean(x for x, _ in both), _mean(y for _, y in both))
        out.append(
            PointComparison(
                policy=point[0],
                load=point[1],
                slo_scale=point[2],
                seeds=tuple(sorted({s for s, _ in keys})),
                requests=len(keys),
                attainment=(_attainment(ra), _attainment(rb)),
                times_s=times,
            )
        )
    return out


def _attainment(rows: list[JsonDict]) -> float:
    """The fraction of `rows` that met their SLO (an unfinished request is a miss)."""
    return sum(1 for r in rows if _truthy(r.get("met"))) / len(rows)


def comparison_table(points: Sequence[PointComparison], a_name: str = "a", b_name: str = "b") -> str:
    """One line per point: attainment in a and b, b - a, and each mean stage time as a/b."""
    cols = [f"{f.removesuffix('_s')} s" for f in COMPARED_TIMES]
    head = f"{'policy':<12} {'load':>6} {'slo':>5} {'reqs':>5} {a_name[:7]:>7} {b_name[:7]:>7} {'b - a':>7} " + " ".join(
        f"{c:>13}" for c in cols
    )
    lines = [head, "-" * len(head)]
    for p in points:
        cells = " ".join(f"{_fmt(x, 1, '.2f')}/{_fmt(y, 1, '.2f')}".rjust(13) for x, y in p.times_s.values())
        lines.append(
            f"{p.policy:<12} {_fmt(p.load, 1, '.2f'):>6} {_fmt(p.slo_scale, 1, '.1f'):>5} {p.requests:>5} "
            f"{p.attainment[0]:>7.3f} {p.attainment[1]:>7.3f} {p.difference:>+7.3f} {cells}"
        )
    worst = max(points, key=lambda p: abs(p.difference), default=None)
    if worst is not None:
        lines.append("")
        lines.append(
            f"largest attainment difference: {worst.difference:+.3f} ({worst.policy} at load "
            f"{_fmt(worst.load, 1, '.2f')}); stage times are means over the paired requests, {a_name}/{b_name}"
        )
    return "\n".join(lines)


def _fmt(v: float | str | None, scale: float = 1.0, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    return format(float(v) * scale, spec)


def summary_table(summary: JsonDict) -> str:
    """A readable table: one line per policy and point (means over seeds, spread of attainment)."""
    head = (
        f"{'policy':<12} {'load':>6} {'slo':>5} {'seeds':>5} {'attain':>7} {'spread':>13} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'CCT ms':>8} {'p2d early ms':>12}"
    )
    aggs = summary["policies"]
    extra = any(a.get("net_util") or a.get("bound") is not None for a in aggs)
    if extra:  # simulator runs: the reference bound and the most loaded link class
        head += f" {'bound':>6} {'coupled':>7} {'net util (mean/p99)':>24}"
    lines = [head, "-" * len(head)]
    for a in aggs:
        spread = f"{_fmt(a['attainment_min'], 1, '.2f')}-{_fmt(a['attainment_max'], 1, '.2f')}"
        if a.get("attainment_std") is not None:
            spread += f" ±{a['attainment_std']:.2f}"
        lines.append(
            f"{a['policy']:<12} {_fmt(a['load'], 1, '.2f'):>6} {_fmt(a['slo_scale'], 1, '.1f'):>5} "
            f"{len(a['seeds']):>5} {_fmt(a['attainment'], 1, '.3f'):>7} {spread:>13} "
            f"{_fmt(a['ttft_p50_s'], 1e3, '.0f'):>8} {_fmt(a['ttft_p90_s'], 1e3, '.0f'):>8} "
            f"{_fmt(a['ttft_p99_s'], 1e3, '.0f'):>8} {_fmt(a['cct_mean_s'], 1e3, '.1f'):>8} "
            f"{_fmt(a['p2d_earliness_mean_s'], 1e3, '.0f'):>12}"
            + (
                f" {_fmt(a.get('bound'), 1, '.3f'):>6} {_fmt(a.get('coupled_bound'), 1, '.3f'):>7}"
                f" {net_util_headline(a.get('net_util')):>24}"
                if extra
                else ""
            )
        )
    sw = summary.get("sweep") or {}
    if sw.get("max_load_at_target"):
        lines.append("")
        interp = sw.get("load_at_target_interpolated", {})
        lines.append(
            f"highest load held at {sw['target_attainment']:.0%} attainment (measured point; "
            "interpolated): "
            + ", ".join(f"{p} {_fmt(v, 1, '.2f')} ({_fmt(interp.get(p), 1, '.1f')})" for p, v in sw["max_load_at_target"].items())
        )
    return "\n".join(lines)
