"""A reference bound: no schedule can meet more TTFT deadlines than this on a given workload.

Each resource (every fabric link, every prefill group as one machine) is a preemptive single
machine; each request j puts on it parts i with processing time p_i (seconds of the resource),
a release date r_i and a deadline d_i (below). A set S of requests can all meet their deadlines
only if, on every resource and for every interval [a, b],

    sum of p_i over the parts of S's requests with a <= r_i and d_i <= b   <=   b - a

(Horn's condition: necessary, and for one resource and one part per request also sufficient, for
a preemptive schedule with release dates and deadlines; 1|r_j,pmtn|sum U_j asks for the largest
such S). The bound is the LP relaxation: maximise sum x_j, 0 <= x_j <= 1, subject to these
constraints with x_j in place of membership, solved with HiGHS (scipy.optimize.linprog) by
constraint generation: solve with the constraints found so far, find for every release date a
the deadline b of the most violated interval (O(parts^2) per resource, vectorised with numpy),
add them, repeat until none is violated (then the LP optimum over all intervals is reached,
since the constraints left out are satisfied). Requests are integral, so the bound is
floor(LP value). Reported: `met_max` from all resources together (the LP with every resource's
constraints at once: at most the minimum over resources) and `single_resource_met_max`, the
minimum over resources of each resource's own LP, with the `tightest` resource.

Parts of request j (per-request bytes do not depend on the batch: kv_fetch, collective and p2d
bytes are sums over members in `plan_batch`, so they are taken from a batch of one, less one byte
per transfer against rounding):
- kv_fetch bytes on each link of its paths: r = arrival; d = deadline - (one layer's compute +
  one layer's collective at full rate + p2d at full rate + decode step): the last layer's
  kv_fetch must end before that layer computes, and the rest follows it.
- collective bytes on each link: r = arrival + one layer's compute; d = deadline - (p2d at full
  rate + decode step).
- p2d bytes on each link: r = arrival + the request's prefill alone at full rates (its unloaded
  TTFT minus p2d and decode: kv_fetch of layer 0, every layer's compute and collective);
  d = deadline - decode step.
- the prefill group (one batch at a time, from the batch start to its last collective): p = the
  request's share of a batch's busy time, L x (b n + c n t + a / max_batch) compute plus L x its
  collective bytes / link rate (a batch's compute is a + b N + c sum n_i t_i per layer, and
  a batch holds at most max_batch requests); r = arrival, d = deadline - (p2d at full rate +
  decode step).
A request whose unloaded TTFT exceeds its SLO, or with a part longer than its window, is fixed
at x_j = 0 (it cannot meet its deadline in any schedule).

What it relaxes: preemption (flows and batches may be split arbitrarily in time), the coupling
between resources (each resource only sees its own windows; the stages of one request are
ordered only through the fixed offsets above, not through the actual finish times), a flow's
rate limit by the other links on its path, batching (a request's compute is its marginal share
with the launch cost spread over a full batch), the token bound of a batch, the kv_fetch wait of
a batch's compute, integrality (LP, then floor). Routing (group, decode host, KV host) is the
workload's, fixed. It is an upper bound for every policy the simulator runs on the workload,
not the optimum: the gap is what these relaxations allow.

**The coupled bound** (`reference_bound(w, earliest=...)`, `coupled` in each run's summary) takes
back the loosest relaxation, the one between the prefill groups and the network. The prefill
groups batch FCFS, which no flow scheduler changes, so a request's batch cannot start, and its
p2d cannot start, before they do when nothing is contended. Those times come from a run where
every stage instance has the network to itself (`simulate(..., isolate_stages=True)`: its flows
share links only with each other). The coupled bound is the same LP with each request's kv_fetch
and collective parts released no earlier than its batch start there, its p2d parts no earlier
than its p2d start there, and a request that missed even there fixed at 0. So it is what the
links can still carry on time once queueing at the prefill groups is counted.

This is a reference, not a proof. FCFS batching is not monotone: when a slower network delays a
batch, a request that arrives in the meantime joins it instead of the next one, and then starts
earlier than it does when nothing is contended. In the matrix this moves a few requests per
point, and the coupled bound stays at or above every policy's attainment. `sim matrix` counts the
runs that exceed it (`coupled_exceeded`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .results import RequestRow
from .sim.fabric import Fabric
from .workload import Transfer, Workload, plan_batch
from .workload.batching import stage_time_s

if TYPE_CHECKING:
    from .sim.fabric import Link

TOL = 1e-9


@dataclass(frozen=True, slots=True)
class EarliestStarts:
    """One request in a run where every stage has the network to itself (`simulate(...,
    isolate_stages=True)`): when its batch started (its kv_fetch starts there), when its p2d
    started (its prefill's end), and whether it met its deadline even so."""

    batch_start_s: float
    p2d_start_s: float
    met: bool


def earliest_starts(w: Workload, rows: Iterable[RequestRow]) -> list[EarliestStarts]:
    """`EarliestStarts` per request of `w` (workload order) from a contention-free run's rows; a
    request the run did not finish keeps the idle-cluster windows and counts as missed."""
    by_id = {r.request_id: r for r in rows}
    dec = w.model.decode_step_s  # a plan's decode step is its model's (plan_batch)
    out = []
    for spec in w.requests:
        r = by_id.get(spec.request_id)
        if r is None or r.ttft_s is None:
            out.append(EarliestStarts(spec.arrival_s, spec.arrival_s, False))
            continue
        out.append(EarliestStarts(r.arrival_s + r.queue_s, r.arrival_s + r.ttft_s - dec - r.p2d_s, r.met))
    return out


@dataclass(slots=True)
class Part:
    job: int  # index of the request in the workload
    r: float
    d: float
    p: float


def _parts(
    w: Workload, *, every_request: bool = False, earliest: Sequence[EarliestStarts] | None = None
) -> tuple[dict[str, list[Part]], list[bool]]:
    """Per resource name, the parts of every request that can possibly be on time (alone on an
    idle cluster; `every_request`: of every request); and which requests can possibly be.
    `earliest` (per request, in workload order): release dates no earlier than those starts, and
    a request that missed even there cannot be on time (module doc, "coupled")."""

    cl, model = w.cluster, w.model
    try:
        fabric = Fabric.for_cluster(cl, aggregate_groups=True)
        hmap = Fabric.group_map(cl)
    except ValueError:  # a group straddles racks: per-rank links
        fabric = Fabric.for_cluster(cl)
        hmap = {}
    rate = cl.link_rate_bps / 8.0
    L = model.layer_groups
    mb = max(1, w.cfg.max_batch)
    res: dict[str, list[Part]] = {}
    possible: list[bool] = []

    def load(transfers: Iterable[Transfer], scale: float = 1.0) -> dict[Link, float]:
        """bytes per link of these transfers (less one byte per transfer against rounding)."""
        out: dict[Link, float] = {}
        for t in transfers:
            b = max(0.0, t.bytes - 1.0) * scale
            if b <= 0:
                continue
            for ln in fabric.path(hmap.get(t.src, t.src), hmap.get(t.dst, t.dst)):
                out[ln] = out.get(ln, 0.0) + b
        return out

    def slowest(by_link: dict[Link, float]) -> float:
        return max((b / ln.capacity for ln, b in by_link.items()), default=0.0)

    for j, spec in enumerate(w.requests):
        plan = plan_batch([spec], model, cl)
        A, D = spec.arrival_s, spec.deadline_s
        ok = spec.unloaded_ttft_s <= spec.slo_s * (1 + TOL)
        e = earliest[j] if earliest is not None else None
        if e is not None and not e.met:
            ok = False
        possible.append(ok)
        if not ok and not every_request:
            continue
        lp0 = plan.layers[0]
        c = lp0.compute_s
        kv = load([t for lp in plan.layers for t in lp.kv_fetch])
        coll_layer = load(lp0.collective)
        coll = {ln: b * L for ln, b in coll_layer.items()}
        p2d_tr = plan.p2d.get(spec.request_id, [])
        p2d = load(p2d_tr)
        t_coll = slowest(coll_layer)
        t_p2d = stage_time_s(p2d_tr, rate) if p2d_tr else 0.0
        t_p2d = max(t_p2d, slowest(p2d))
        dec = plan.decode_step_s
        prefill_alone = spec.unloaded_ttft_s - stage_time_s(p2d_tr, rate) - dec
        r_kv, r_coll, r_p2d = A, A + c, A + max(0.0, prefill_alone)
        if e is not None:
            r_kv, r_coll = max(r_kv, e.batch_start_s), max(r_coll, e.batch_start_s + c)
            r_p2d = max(r_p2d, e.p2d_start_s)
        windows = (
            (kv, r_kv, D - (c + t_coll + t_p2d + dec)),
            (coll, r_coll, D - (t_p2d + dec)),
            (p2d, r_p2d, D - dec),
        )
        mine: list[tuple[str, Part]] = []
        for by_link, r, d in windows:
            for ln, b in by_link.items():
                mine.append((ln.name, Part(j, r, d, b / ln.capacity)))
        n, t = spec.new_tokens, spec.input_tokens
        per_layer = model.compute_b_s_per_token * n + model.compute_c_s_per_token2 * n * t + model.compute_a_s / mb
        busy = L * per_layer + L * t_coll
        if busy > 0:
            mine.append((f"group{spec.prefill_group}", Part(j, A, D - (t_p2d + dec), busy)))
        if any(pt.p > (pt.d - pt.r) * (1 + TOL) + TOL for _, pt in mine):
            possible[j] = False  # a part longer than its window: never on time
            if not every_request:
                continue
        for name, pt in mine:
            res.setdefault(name, []).append(pt)
    return res, possible


class _Resource:
    """Parts of one resource as arrays, sorted by deadline, for the separation step."""

    def __init__(self, name: str, parts: list[Part], alive: np.ndarray) -> None:
        parts = [p for p in parts if alive[p.job]]
        self.name = name
        parts.sort(key=lambda p: p.d)
        self.job = np.array([p.job for p in parts], dtype=np.int64)
        self.r = np.array([p.r for p in parts])
        self.d = np.array([p.d for p in parts])
        self.p = np.array([p.p for p in parts])
        self.releases = np.unique(self.r)

    def violated(self, x: np.ndarray, max_cuts: int = 400) -> list[tuple[float, float]]:
        """Intervals [a, b] whose constraint x violates: per release date a, the deadline b of
        the largest violation (the most violated `max_cuts` of them)."""
        if len(self.job) == 0:
            return []
        px = self.p * x[self.job]
        cuts: list[tuple[float, float, float]] = []
        step = max(1, 4_000_000 // max(1, len(px)))  # bound the matrix to ~4M entries
        for s in range(0, len(self.releases), step):
            a = self.releases[s : s + step, None]
            inside = self.r[None, :] >= a - TOL
            cum = np.cumsum(np.where(inside, px[None, :], 0.0), axis=1)
            slack = np.where(self.d[None, :] >= a, cum - (self.d[None, :] - a), -np.inf)
            k = np.argmax(slack, axis=1)
            v = slack[np.arange(len(k)), k]
            for ai, ki, vi in zip(a[:, 0], k, v, strict=False):
                if vi > 1e-9 * max(1.0, self.d[ki] - ai):
                    cuts.append((vi, float(ai), float(self.d[ki])))
        cuts.sort(reverse=True)
        return [(a, b) for _, a, b in cuts[:max_cuts]]

    def row(self, a: float, b: float, n: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Coefficients (jobs, p sums) and right-hand side of the interval constraint [a, b]."""
        m = (self.r >= a - TOL) & (self.d <= b + TOL)
        jobs, inv = np.unique(self.job[m], return_inverse=True)
        coef = np.zeros(len(jobs))
        np.add.at(coef, inv, self.p[m])
        return jobs, coef, b - a + TOL


def _solve(
    resources: list[_Resource],
    n: int,
    alive: np.ndarray,
    max_rounds: int = 200,
    integral: bool = False,
    time_limit_s: float = 10.0,
) -> tuple[float, int, int]:
    """The LP (or, `integral`, the integer program: its optimum or HiGHS's dual bound at the
    time limit) over these resources by constraint generation: (value, rounds, constraints)."""
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp
    from scipy.sparse import csr_matrix

    x = alive.astype(float)
    rows_j: list[np.ndarray] = []
    rows_c: list[np.ndarray] = []
    rhs: list[float] = []
    seen: set[tuple[int, float, float]] = set()
    bounds = [(0.0, 1.0 if alive[j] else 0.0) for j in range(n)]
    value = float(x.sum())
    for rounds in range(1, max_rounds + 1):
        added = 0
        for ri, res in enumerate(resources):
            for a, b in res.violated(x):
                key = (ri, a, b)
                if key in seen:
                    continue
                seen.add(key)
                jobs, coef, h = res.row(a, b, n)
                rows_j.append(jobs)
                rows_c.append(coef)
                rhs.append(h)
                added += 1
        if not added:
            return value, rounds, len(rhs)
        indptr = np.cumsum([0] + [len(r) for r in rows_j])
        A = csr_matrix((np.concatenate(rows_c), np.concatenate(rows_j), indptr), shape=(len(rhs), n))
        if integral:
            sol = milp(
                -np.ones(n),
                constraints=LinearConstraint(A, -np.inf, np.array(rhs)),
                bounds=Bounds(0.0, alive.astype(float)),
                integrality=np.ones(n, dtype=np.int8),
                options={"time_limit": time_limit_s},
            )
            if sol.x is None:
                raise RuntimeError(f"bound MILP failed: {sol.message}")
            x = np.clip(sol.x, 0.0, 1.0)
            dual = getattr(sol, "mip_dual_bound", None)
            value = -float(dual) if sol.status != 0 and dual is not None else -float(sol.fun)
            if sol.status != 0:
                value = max(value, float(x.sum()))
        else:
            # scipy-stubs 1.17 types A_ub as dense only; HiGHS takes the sparse matrix as it is
            sol = linprog(
                -np.ones(n),
                A_ub=A,
                b_ub=np.array(rhs),
                bounds=bounds,  # type: ignore[call-overload]
                method="highs",
            )
            if sol.status != 0:
                raise RuntimeError(f"bound LP failed: {sol.message}")
            x = np.clip(sol.x, 0.0, 1.0)
            value = -float(sol.fun)
    raise RuntimeError(f"bound LP did not converge in {max_rounds} rounds")


def resource_demand_s(w: Workload) -> dict[str, float]:
    """Seconds of work every request of `w` puts on each resource (link, prefill group) at full
    rate: what the bound's parts add up to, for every request."""
    parts, _ = _parts(w, every_request=True)
    return {name: sum(pt.p for pt in ps) for name, ps in parts.items()}


def saturation_load(w: Workload) -> tuple[float, str]:
    """(requests/s, resource) at which the busiest resource of `w`'s cluster would be busy all
    the time with `w`'s request mix and routing: n / (its demand in seconds). A load given as a
    fraction of this ("capacity" loads of `sim matrix`) means the same thing on any cluster,
    model and trace."""
    demand = resource_demand_s(w)
    if not demand:
        raise ValueError("the workload puts no work on any resource")
    name = max(demand, key=lambda k: demand[k])
    return len(w.requests) / demand[name], name


def reference_bound(
    w: Workload, *, per_resource: bool = True, earliest: Sequence[EarliestStarts] | None = None
) -> dict[str, Any]:
    """The bound of the module doc for workload `w` (see there for what it relaxes); with
    `earliest`, the coupled bound (module doc)."""
    t0 = time.perf_counter()
    n = len(w.requests)
    if earliest is not None and len(earliest) != n:
        raise ValueError(f"earliest starts for {len(earliest)} requests, the workload has {n}")
    parts, possible = _parts(w, earliest=earliest)
    alive = np.array(possible, dtype=bool)
    resources = [_Resource(name, ps, alive) for name, ps in parts.items()]
    resources = [r for r in resources if len(r.job)]
    value, rounds, ncons = _solve(resources, n, alive) if n else (0.0, 0, 0)
    met_max = min(int(alive.sum()), int(math.floor(value + 1e-6)))
    out: dict[str, Any] = {
        "met_max": met_max,
        "attainment": met_max / n if n else None,
        "lp_value": value,
        "requests": n,
        "possible_alone": int(alive.sum()),
        "resources": len(resources),
        "lp_rounds": rounds,
        "constraints": ncons,
    }
    if per_resource:
        best, tight = int(alive.sum()), None
        x1 = alive.astype(float)
        for res in resources:
            if not res.violated(x1, max_cuts=1):
                continue  # every possible request fits this resource alone
            v, _, _ = _solve([res], n, alive)
            m = int(math.floor(v + 1e-6))
            if m < best:
                best, tight = m, res.name
        out["single_resource_met_max"] = best
        out["single_resource_attainment"] = best / n if n else None
        out["tightest"] = tight
    out["wall_s"] = time.perf_counter() - t0
    out["relaxes"] = (
        "preemption, coupling between resources and stages (fixed offsets), "
        "path rate limits, batching (marginal compute), integrality (LP)"
    )
    return out
