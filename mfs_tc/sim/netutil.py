"""How loaded the simulated network was: per-link utilisation in fixed windows, per link class.

Definition (what `summary.json`'s `net_util` reports). The run's horizon [0, T] (T = the
simulated time when the last request got its first token) is cut into windows of `window_s`
(default 10 ms; the last one may be shorter). A link's utilisation in a window is the bytes it
carried in that window / (capacity x window length). Per link class:

- `mean`: the time-averaged utilisation of each link over [0, T] (bytes carried / (capacity x T)),
  averaged over the class's links;
- `p99`: the 99th percentile over all windows of all links of the class (every window of every
  link counts once; an aggregated prefill group of G ranks counts as G links), rounded up to
  the next 0.5% (a histogram of 200 bins; idle windows count as exactly 0);
- `max_link_mean`: the busiest link's time-averaged utilisation.

Link classes: host uplinks and downlinks by role (`kv_up`, `kv_down`, `prefill_up`,
`prefill_down`, `decode_up`, `decode_down`) and, on leaf-spine fabrics, the racks' aggregate
uplinks and downlinks to the spine (`leaf_up`, `leaf_down`).

The link's aggregate rate is piecewise constant (it changes only when the fluid network
re-allocates), so the accounting costs O(1) per link per re-allocation plus the windows crossed.

Offered load (`offered_link_s`, `load_for_utilisation`): before a run, each link's busy time per
request is its bytes per request / capacity, with every request's transfers (`plan_batch` of the
request alone: a stage's bytes do not depend on batching) on its fabric path. At `load` requests
per second a link's expected mean utilisation is load x its busy time per request (while arrivals
last), so the load at which the busiest link reaches utilisation u is u / max busy time.
"""

from __future__ import annotations

import math

from ..results import JsonDict
from ..workload import Workload, plan_batch
from .fabric import Fabric, Link

WINDOW_S = 0.010
BINS = 200  # utilisation histogram resolution: 0.5%
CLASSES = ("kv_up", "kv_down", "prefill_up", "prefill_down", "decode_up", "decode_down", "leaf_up", "leaf_down")


class LinkMeter:
    """Bytes per window of one link, from its piecewise-constant aggregate rate."""

    __slots__ = ("cap", "window", "t", "rate", "k", "wbytes", "hist")

    def __init__(self, capacity: float, window_s: float) -> None:
        self.cap = capacity
        self.window = window_s
        self.t = 0.0
        self.rate = 0.0
        self.k = 0  # index of the window holding self.t
        self.wbytes = 0.0  # bytes of window k so far
        self.hist = [0] * (BINS + 1)  # bin 0: idle; bin i: utilisation in ((i-1)/BINS, i/BINS]

    def _bin(self, u: float) -> int:
        if u <= 1e-9:
            return 0
        return min(BINS, max(1, math.ceil(u * BINS - 1e-9)))

    def set_rate(self, t: float, rate: float) -> None:
        """The link's aggregate rate becomes `rate` at time `t`."""
        if t > self.t:
            self.advance(t)
        self.rate = rate if rate > 0 else 0.0

    def advance(self, t: float) -> None:
        r = self.rate
        w = self.window
        end = (self.k + 1) * w
        if t < end:
            self.wbytes += r * (t - self.t)
        else:
            self.wbytes += r * (end - self.t)
            self.hist[self._bin(self.wbytes / (self.cap * w))] += 1
            k = int(t / w)
            if k <= self.k:
                k = self.k + 1
            full = k - self.k - 1
            if full > 0:
                self.hist[self._bin(r / self.cap)] += full
            self.k = k
            self.wbytes = r * max(0.0, t - k * w)
        self.t = t

    def close(self, t: float) -> None:
        """Account up to the horizon `t`, counting its last (partial) window."""
        if t > self.t:
            self.advance(t)
        part = t - self.k * self.window
        if part > 1e-12:
            self.hist[self._bin(self.wbytes / (self.cap * part))] += 1
            self.wbytes = 0.0
            self.k += 1


def link_class(fabric: Fabric, ln: Link) -> str:
    """One of CLASSES, from where the link sits (host role from the host name)."""
    if ln in fabric.rack_up.values():
        return "leaf_up"
    if ln in fabric.rack_down.values():
        return "leaf_down"
    host, _, direction = ln.name.rpartition(":")
    role = "kv" if host.startswith("kv") else "prefill" if host.startswith("p") else "decode"
    return f"{role}_{direction}"


def summarize(fabric: Fabric, meters: dict[Link, LinkMeter], horizon_s: float, base_capacity: float) -> dict[str, JsonDict]:
    """Per link class: links, mean, p99, max_link_mean (see the module doc)."""
    out: dict[str, JsonDict] = {}
    if horizon_s <= 0:
        return out
    acc: dict[str, tuple[list[float], list[int], list[int]]] = {}
    for ln in fabric.links():
        cls = link_class(fabric, ln)
        means, counts, hist = acc.setdefault(cls, ([], [0], [0] * (BINS + 1)))
        # an aggregated prefill group stands for capacity/base links
        weight = max(1, int(round(ln.capacity / base_capacity))) if cls.startswith("prefill") else 1
        means.extend([ln.bytes / (ln.capacity * horizon_s)] * weight)
        counts[0] += weight
        m = meters.get(ln)
        if m is None:  # never carried a byte: every window idle
            hist[0] += weight * max(1, math.ceil(horizon_s / WINDOW_S - 1e-9))
        else:
            for i, c in enumerate(m.hist):
                hist[i] += c * weight
    for cls in CLASSES:
        if cls not in acc:
            continue
        means, counts, hist = acc[cls]
        out[cls] = {
            "links": counts[0],
            "mean": sum(means) / len(means),
            "p99": _hist_percentile(hist, 99.0),
            "max_link_mean": max(means),
        }
    return out


def _hist_percentile(hist: list[int], p: float) -> float:
    total = sum(hist)
    if total == 0:
        return 0.0
    need = math.ceil(total * p / 100.0)
    run = 0
    for i, c in enumerate(hist):
        run += c
        if run >= need:
            return i / BINS
    return 1.0


def headline(net_util: dict[str, JsonDict] | None) -> tuple[str, float, float] | None:
    """The most loaded class (highest p99, then mean): (class, mean, p99)."""
    if not net_util:
        return None
    cls, v = max(net_util.items(), key=lambda kv: (kv[1]["p99"], kv[1]["mean"]))
    return cls, v["mean"], v["p99"]


def offered_link_s(wl: Workload, fabric: Fabric | None = None) -> dict[Link, float]:
    """Each link's busy time (s) per request of `wl` (see the module doc), on `fabric`
    (default: the workload's cluster, one host per rank)."""
    fab = fabric or Fabric.for_cluster(wl.cluster)
    busy: dict[Link, float] = {}
    for spec in wl.requests:
        plan = plan_batch([spec], wl.model, wl.cluster)
        trs = [t for lp in plan.layers for t in (*lp.kv_fetch, *lp.collective)]
        trs += [t for ts in plan.p2d.values() for t in ts]
        for t in trs:
            for ln in fab.path(t.src, t.dst):
                busy[ln] = busy.get(ln, 0.0) + t.bytes / ln.capacity
    n = len(wl.requests)
    return {ln: v / n for ln, v in busy.items()}


def load_for_utilisation(wl: Workload, target: float) -> tuple[float, str, str, float]:
    """(load in requests/s at which the busiest link's expected mean utilisation is `target`,
    that link's name, its class, its busy time per request in s). `wl` only provides the request
    mix (its arrival times do not matter)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target utilisation must be in (0, 1], got {target}")
    fab = Fabric.for_cluster(wl.cluster)
    busy = offered_link_s(wl, fab)
    if not busy:
        raise ValueError("the workload moves no bytes: no network load to aim at")
    ln, s = max(busy.items(), key=lambda kv: kv[1])
    return target / s, ln.name, link_class(fab, ln), s
