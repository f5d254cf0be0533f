"""Fluid network: strict priority across levels, max-min fair sharing within a level.

Flows are fluids on fixed paths of links. After any change (a flow starts, ends or changes level)
the rates of the flows connected to the change through shared links (its component) are
recomputed by water-filling, level by level from 0 (most urgent): a level gets the capacity the
more urgent levels left, shared max-min fairly (progressive filling with a heap of link fair
shares). Flows not connected to a change keep their rates, which is exact because max-min
allocations of disjoint components are independent.

Two allocators fill a component (`FluidNetwork(allocator=...)`): "python" (`_fill`, the
reference) and "numba" (`waterfill`, the same algorithm compiled over the component as flat
arrays; the default). They agree to rounding (tests: TTFTs equal to 1e-9).
"""

from __future__ import annotations

import heapq

import numpy as np

from . import waterfill
from .fabric import Link
from .netutil import WINDOW_S, LinkMeter

EPS_BYTES = 1e-6


class FluidFlow:
    __slots__ = ("fid", "links", "size", "rem", "rate", "t0", "level", "version", "owner",
                 "start_t", "prev_rate", "weight", "bneck")

    def __init__(self, fid: int, links: tuple[Link, ...], size: float, level: int, t: float,
                 owner: object = None):
        self.fid = fid
        self.links = links
        self.size = float(size)
        self.rem = float(size)
        self.rate = 0.0
        self.t0 = t
        self.level = level
        self.version = 0
        self.owner = owner
        self.start_t = t
        self.prev_rate = 0.0
        self.weight = 1  # real flows this fluid flow stands for (group aggregation)
        # the link that fixed its rate at the last allocation, if flows of its level share it
        self.bneck: Link | None = None

    @property
    def sent(self) -> float:
        return self.size - self.rem

    def __repr__(self) -> str:
        return f"FluidFlow({self.fid}, level={self.level}, rem={self.rem:.0f}, rate={self.rate:.0f})"


class FluidNetwork:
    """Holds active flows and their rates; the event loop owns the clock."""

    def __init__(self, nlevels: int = 8, window_s: float = WINDOW_S,
                 allocator: str | None = None) -> None:
        allocator = allocator or DEFAULT_ALLOCATOR
        if allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator {allocator!r}: choose one of "
                             f"{', '.join(ALLOCATORS)}")
        self.nlevels = nlevels
        # the rate allocation of a component: "python" (heap-based progressive filling, the
        # reference) or "numba" (the same filling compiled, `waterfill`; the default)
        self.allocator = allocator
        self._fill = ALLOCATORS[allocator]
        # per-link utilisation accounting (netutil): a link's aggregate rate after each
        # re-allocation, accounted into windows of window_s
        self.window_s = window_s
        self.meters: dict[Link, LinkMeter] = {}
        self.flows: set[FluidFlow] = set()
        self.level_bytes = [0.0] * nlevels
        self._dirty: set[Link] = set()
        self._next_id = 0
        self.recomputes = 0

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ---- bookkeeping ----------------------------------------------------------------------
    def settle(self, f: FluidFlow, t: float) -> None:
        """Advance `f`'s remaining bytes to time `t` at its current rate."""
        dt = t - f.t0
        if dt > 0 and f.rate > 0:
            b = f.rate * dt
            if b > f.rem:
                b = f.rem
            f.rem -= b
            self.level_bytes[f.level] += b
            for ln in f.links:
                ln.bytes += b
        f.t0 = t

    def add(self, f: FluidFlow) -> None:
        self.flows.add(f)
        for ln in f.links:
            ln.flows.add(f)
        self._dirty.update(f.links)

    def remove(self, f: FluidFlow) -> None:
        self.flows.discard(f)
        for ln in f.links:
            ln.flows.discard(f)
        self._dirty.update(f.links)
        f.rate = 0.0
        f.version += 1

    def set_level(self, f: FluidFlow, level: int, t: float) -> None:
        if level != f.level:
            self.settle(f, t)
            f.level = level
            self._dirty.update(f.links)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    # ---- allocation -----------------------------------------------------------------------
    def recompute(self, t: float) -> list[FluidFlow]:
        """Re-allocate rates in the components touched since the last call. Returns the flows
        whose rate changed, settled to `t` (their finish times need rescheduling); flows whose
        rate stayed the same keep their finish times."""
        if not self._dirty:
            return []
        self.recomputes += 1
        # one pass: component search, settling to t, grouping into (level, path) classes
        level_bytes = self.level_bytes
        links: set[Link] = set()
        seen: set[FluidFlow] = set()
        classes: dict[tuple[int, int], list] = {}
        stack = list(self._dirty)
        self._dirty.clear()
        while stack:
            ln = stack.pop()
            if ln in links:
                continue
            links.add(ln)
            for f in ln.flows:
                if f in seen:
                    continue
                seen.add(f)
                path = f.links
                rate = f.rate
                dt = t - f.t0
                if dt > 0 and rate > 0:
                    b = rate * dt
                    if b > f.rem:
                        b = f.rem
                    f.rem -= b
                    level_bytes[f.level] += b
                    for l2 in path:
                        l2.bytes += b
                f.t0 = t
                f.prev_rate = rate
                k = (f.level, id(path))
                c = classes.get(k)
                if c is None:
                    classes[k] = [f.level, path, [f], False, f.weight]
                else:
                    c[2].append(f)
                    c[4] += f.weight
                for l2 in path:
                    if l2 not in links:
                        stack.append(l2)
        resid = self._fill(links, classes)
        meters = self.meters
        for ln in links:
            m = meters.get(ln)
            if m is None:
                meters[ln] = m = LinkMeter(ln.capacity, self.window_s)
            m.set_rate(t, ln.capacity - resid[ln])
        return [f for f in seen if f.rate != f.prev_rate]

    def close_meters(self, t: float) -> None:
        """Account every link's utilisation up to the horizon `t`."""
        for m in self.meters.values():
            m.close(t)


def allocate(links: set[Link], flows: set[FluidFlow], allocator: str = "python") -> None:
    """Strict priority across levels, max-min fair within a level (progressive filling).

    Flows of one level on the same path get the same max-min rate, so they are filled as one
    class of n flows (paths are shared tuples from `Fabric.path`)."""
    classes: dict[tuple[int, int], list] = {}
    for f in flows:
        k = (f.level, id(f.links))
        c = classes.get(k)
        if c is None:
            classes[k] = [f.level, f.links, [f], False, f.weight]
        else:
            c[2].append(f)
            c[4] += f.weight
    ALLOCATORS[allocator](links, classes)


def _fill(links: set[Link], classes: dict[tuple[int, int], list]) -> dict[Link, float]:
    """Progressive filling of classes [level, path, flows, frozen, real flow count], level by
    level; a fluid flow standing for w real flows gets w shares. Returns each link's capacity
    left unallocated."""
    resid = {ln: ln.capacity for ln in links}
    by_level: dict[int, list[list]] = {}
    for c in classes.values():
        by_level.setdefault(c[0], []).append(c)
    for level in sorted(by_level):
        group = by_level[level]
        if len(group) == 1:
            _, path, fs, _, n = group[0]
            bl = min(path, key=resid.__getitem__)
            share = resid[bl] / n
            if share < 0:
                share = 0.0
            bl = bl if len(fs) > 1 else None  # a band of one flow: no queue of others
            for f in fs:
                f.rate = share * f.weight
                f.bneck = bl
            for ln in path:
                resid[ln] -= share * n
            continue
        cnt: dict[Link, int] = {}
        members: dict[Link, list[list]] = {}
        for c in group:
            n = c[4]
            for ln in c[1]:
                if ln in cnt:
                    cnt[ln] += n
                    members[ln].append(c)
                else:
                    cnt[ln] = n
                    members[ln] = [c]
        cnt0 = dict(cnt)  # real flows of this level per link
        heap = [(resid[ln] / k, id(ln), ln) for ln, k in cnt.items()]
        heapq.heapify(heap)
        while heap:
            share, _, ln = heapq.heappop(heap)
            k = cnt[ln]
            if k == 0:
                continue
            cur = resid[ln] / k
            if cur > share * (1 + 1e-12) + 1e-12:
                heapq.heappush(heap, (cur, id(ln), ln))
                continue
            if cur < 0:
                cur = 0.0
            touched: set[Link] = set()
            for c in members[ln]:
                if c[3]:
                    continue
                c[3] = True
                n = c[4]
                # the band's queue at ln is shared with other flows of this level
                bl = ln if cnt0[ln] > n or len(c[2]) > 1 else None
                for f in c[2]:
                    f.rate = cur * f.weight
                    f.bneck = bl
                for l2 in c[1]:
                    resid[l2] -= cur * n
                    cnt[l2] -= n
                    touched.add(l2)
            touched.discard(ln)
            for l2 in touched:
                if cnt[l2] > 0:
                    r = resid[l2]
                    heapq.heappush(heap, ((r if r > 0 else 0.0) / cnt[l2], id(l2), l2))
    return resid


def _fill_numba(links: set[Link], classes: dict[tuple[int, int], list]) -> dict[Link, float]:
    """`_fill` by the compiled kernel (`waterfill`): the component as flat arrays."""
    lidx = {ln: i for i, ln in enumerate(links)}
    cl = list(classes.values())
    nc = len(cl)
    ptr = [0]
    idx: list[int] = []
    for c in cl:
        idx.extend([lidx[ln] for ln in c[1]])
        ptr.append(len(idx))
    rate, resid, bott = waterfill.waterfill(
        np.fromiter((ln.capacity for ln in lidx), float, len(lidx)),
        np.fromiter((c[0] for c in cl), np.int64, nc),
        np.fromiter((c[4] for c in cl), float, nc),
        np.asarray(ptr, np.int64), np.asarray(idx, np.int64),
        np.fromiter((len(c[2]) for c in cl), np.int64, nc))
    lks = list(lidx)
    for c, r, b in zip(cl, rate.tolist(), bott.tolist()):
        c[3] = True
        bl = lks[b] if b >= 0 else None
        for f in c[2]:
            f.rate = r * f.weight
            f.bneck = bl
    return dict(zip(lks, resid.tolist()))


ALLOCATORS = {"python": _fill}
if waterfill.available():
    ALLOCATORS["numba"] = _fill_numba
DEFAULT_ALLOCATOR = "numba" if waterfill.available() else "python"
