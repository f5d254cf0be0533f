"""Fluid network: strict priority across levels, max-min fair sharing within a level.

Flows are fluids on fixed paths of links. After any change (a flow starts, ends or changes level)
the rates of the flows connected to the change through shared links (its component) are
recomputed by water-filling, level by level from 0 (most urgent): a level gets the capacity the
more urgent levels left, shared max-min fairly (progressive filling with a heap of link fair
shares). Flows not connected to a change keep their rates, which is exact because max-min
allocations of disjoint components are independent.

Two allocators (`FluidNetwork(allocator=...)`): "python" (`_fill` over the flow objects, the
reference) and "numba" (the default): the fluid state mirrored in arrays (`_Arrays`) and the
whole re-allocation (component search, classes, filling, settling the flows whose rate changed)
compiled (`waterfill.recompute_arrays`). They agree to rounding (tests: TTFTs equal to 1e-9).
"""

from __future__ import annotations

import heapq
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from . import waterfill
from .fabric import Link
from .netutil import BINS, WINDOW_S, LinkMeter
from .waterfill import (
    FF_RATE,
    FF_REM,
    FF_T0,
    FF_W,
    FI_BNECK,
    FI_LEVEL,
    FI_PID,
    FI_POS,
    LF_BYTES,
    LF_CAP,
    LF_MT,
    LF_MWBYTES,
    LI_MK,
    LI_MON,
    OP_LINK,
    OP_UNLINK,
)

EPS_BYTES = 1e-6

# a class of the python allocator: [level, path, flows, frozen, real flow count], a list of mixed
# types mutated in place by `_fill`
_FillClass = list[Any]


class FluidFlow:
    __slots__ = (
        "fid",
        "links",
        "size",
        "rem",
        "rate",
        "t0",
        "level",
        "version",
        "owner",
        "start_t",
        "prev_rate",
        "weight",
        "bneck",
        "slot",
    )

    def __init__(self, fid: int, links: tuple[Link, ...], size: float, level: int, t: float, owner: object = None):
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
        self.slot = -1  # its row in the network's arrays (allocator "numba")

    @property
    def sent(self) -> float:
        return self.size - self.rem

    def __repr__(self) -> str:
        return f"FluidFlow({self.fid}, level={self.level}, rem={self.rem:.0f}, rate={self.rate:.0f})"


class FluidNetwork:
    """Holds active flows and their rates; the event loop owns the clock."""

    def __init__(self, nlevels: int = 8, window_s: float = WINDOW_S, allocator: str | None = None) -> None:
        allocator = allocator or DEFAULT_ALLOCATOR
        if allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator {allocator!r}: choose one of " f"{', '.join(ALLOCATORS)}")
        self.nlevels = nlevels
        # the re-allocation: "python" (heap-based progressive filling over the flow objects,
        # the reference) or "numba" (the default: the state in arrays, compiled; module doc)
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
        # "numba": the fluid state mirrored in arrays, the whole re-allocation compiled
        self._arr = _Arrays(nlevels) if allocator == "numba" else None

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
        if f.slot >= 0:
            a = self._arr
            assert a is not None  # a flow has a slot only in the arrays
            row = a.f_f[f.slot]
            row[FF_REM] = f.rem
            row[FF_T0] = t

    def add(self, f: FluidFlow) -> None:
        self.flows.add(f)
        self._dirty.update(f.links)
        if self._arr is not None:
            self._arr.add(f)
        else:  # the python allocator finds components through the links' flow sets
            for ln in f.links:
                ln.flows.add(f)

    def remove(self, f: FluidFlow) -> None:
        self.flows.discard(f)
        self._dirty.update(f.links)
        if self._arr is not None:
            self._arr.remove(f)
        else:
            for ln in f.links:
                ln.flows.discard(f)
        f.rate = 0.0
        f.version += 1

    def set_level(self, f: FluidFlow, level: int, t: float) -> None:
        if level != f.level:
            self.settle(f, t)
            f.level = level
            self._dirty.update(f.links)
            if f.slot >= 0:
                a = self._arr
                assert a is not None  # a flow has a slot only in the arrays
                a.f_i[f.slot, FI_LEVEL] = level

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
        if self._arr is not None:
            return self._recompute_arrays(t)
        # one pass: component search, settling to t, grouping into (level, path) classes
        level_bytes = self.level_bytes
        links: set[Link] = set()
        seen: set[FluidFlow] = set()
        classes: dict[tuple[int, int], _FillClass] = {}
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

    def _recompute_arrays(self, t: float) -> list[FluidFlow]:
        a = self._arr
        assert a is not None  # called only with the arrays (allocator "numba")
        # a flow still in its setup latency can change level: its links are dirty, unindexed
        try:
            dirty = np.fromiter(map(a.lidx.__getitem__, self._dirty), np.int64, len(self._dirty))
        except KeyError:
            dirty = np.fromiter(map(a._link, self._dirty), np.int64, len(self._dirty))
        self._dirty.clear()
        no = a.recompute(t, self.window_s, dirty)
        if not no:
            return []
        out = []
        slots = a.slots
        for s, (r, rem) in zip(a.out_s[:no].tolist(), a.out_f[:no].tolist(), strict=True):
            f = slots[s]
            assert f is not None  # a changed slot holds a live flow
            f.rate = r
            f.rem = rem
            f.t0 = t
            out.append(f)
        return out

    def bottleneck(self, f: FluidFlow) -> Link | None:
        """The link that fixed `f`'s rate at the last allocation, if other flows of its level
        share it (else None)."""
        if f.slot >= 0:
            a = self._arr
            assert a is not None  # a flow has a slot only in the arrays
            b = int(a.f_i[f.slot, FI_BNECK])
            return a.links[b] if b >= 0 else None
        return f.bneck

    def close_meters(self, t: float) -> None:
        """Account every link's utilisation up to the horizon `t` (and fold the bytes the
        compiled re-allocation settled into the links' and levels' counts, and its meters into
        `meters`)."""
        a = self._arr
        if a is not None:
            for i in np.flatnonzero(a.l_i[: len(a.links), LI_MON]).tolist():
                m = LinkMeter(a.links[i].capacity, self.window_s)
                m.t, m.rate, m.wbytes = a.l_f[i, LF_MT : LF_MWBYTES + 1].tolist()
                m.k = int(a.l_i[i, LI_MK])
                m.hist = a.m_hist[i].tolist()
                self.meters[a.links[i]] = m
            a.l_i[:, LI_MON] = 0
        for m in self.meters.values():
            m.close(t)
        if a is not None:
            for ln, b in zip(a.links, a.l_f[:, LF_BYTES].tolist(), strict=False):
                ln.bytes += b
            a.l_f[:, LF_BYTES] = 0.0
            for i, b in enumerate(a.lvbytes.tolist()):
                self.level_bytes[i] += b
            a.lvbytes[:] = 0.0


def allocate(links: set[Link], flows: set[FluidFlow], allocator: str = "python") -> None:
    """Strict priority across levels, max-min fair within a level (progressive filling).

    Flows of one level on the same path get the same max-min rate, so they are filled as one
    class of n flows (paths are shared tuples from `Fabric.path`)."""
    classes: dict[tuple[int, int], _FillClass] = {}
    for f in flows:
        k = (f.level, id(f.links))
        c = classes.get(k)
        if c is None:
            classes[k] = [f.level, f.links, [f], False, f.weight]
        else:
            c[2].append(f)
            c[4] += f.weight
    ALLOCATORS[allocator](links, classes)


def _fill(links: set[Link], classes: dict[tuple[int, int], _FillClass]) -> dict[Link, float]:
    """Progressive filling of classes [level, path, flows, frozen, real flow count], level by
    level; a fluid flow standing for w real flows gets w shares. Returns each link's capacity
    left unallocated."""
    resid = {ln: ln.capacity for ln in links}
    by_level: dict[int, list[_FillClass]] = {}
    for c in classes.values():
        by_level.setdefault(c[0], []).append(c)
    for level in sorted(by_level):
        group = by_level[level]
        if len(group) == 1:
            _, path, fs, _, n = group[0]
            share = min(resid[ln] for ln in path) / n
            if share < 0:
                share = 0.0
            bl = None  # a band of one flow: no queue of others
            if len(fs) > 1:
                bl = _tight(path, resid, {ln: n for ln in path}, share, n, len(fs))
            for f in fs:
                f.rate = share * f.weight
                f.bneck = bl
            for ln in path:
                resid[ln] -= share * n
            continue
        cnt: dict[Link, int] = {}
        members: dict[Link, list[_FillClass]] = {}
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
            todo = [c for c in members[ln] if not c[3]]
            # each class's first link (path order) at this share whose band other flows of
            # its level share: decided before this round's classes take their bytes
            bls = [_tight(c[1], resid, cnt, cur, c[4], len(c[2]), cnt0) for c in todo]
            for c, bl in zip(todo, bls, strict=False):
                c[3] = True
                n = c[4]
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


def _tight(
    path: tuple[Link, ...],
    resid: dict[Link, float],
    cnt: dict[Link, int],
    share: float,
    n: float,
    nflows: int,
    cnt0: dict[Link, int] | None = None,
) -> Link | None:
    """The first link of `path` where a class of `n` real flows (`nflows` fluid flows) gets
    `share` (within rounding) and other flows of its level cross too (its band's queue is shared),
    else None."""
    for ln in path:
        k = cnt[ln]
        if k > 0 and resid[ln] / k <= share * (1 + 1e-9) + 1e-12:
            if nflows > 1 or (cnt0 if cnt0 is not None else cnt)[ln] > n:
                return ln
    return None


def _fill_numba(links: set[Link], classes: dict[tuple[int, int], _FillClass]) -> dict[Link, float]:
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
        np.asarray(ptr, np.int64),
        np.asarray(idx, np.int64),
        np.fromiter((len(c[2]) for c in cl), np.int64, nc),
    )
    lks = list(lidx)
    for c, r, b in zip(cl, rate.tolist(), bott.tolist(), strict=False):
        c[3] = True
        bl = lks[b] if b >= 0 else None
        for f in c[2]:
            f.rate = r * f.weight
            f.bneck = bl
    return dict(zip(lks, resid.tolist(), strict=False))


ALLOCATORS = {"python": _fill}
if waterfill.available():
    ALLOCATORS["numba"] = _fill_numba
DEFAULT_ALLOCATOR = "numba" if waterfill.available() else "python"


_Scalar = TypeVar("_Scalar", bound=np.generic)


class _Arrays:
    """The fluid state of a network as arrays (allocator "numba"; the layout is `waterfill`'s),
    kept in step with the flow objects: links (capacity, bytes settled by the kernel, meter, the
    live flows crossing each), paths (their links), flow rows (remaining bytes, rate, t0, weight,
    level, path, bottleneck). The flow objects stay the truth for the engine; the kernel writes
    back only flows whose rate changed (a flow whose rate did not change needs no settling).
    Flows join and leave the links' lists of live flows at the next re-allocation (pending
    operations, in order); a slot is reused only after its flow left them."""

    def __init__(self, nlevels: int) -> None:
        self.lidx: dict[Link, int] = {}
        self.links: list[Link] = []
        nl, nf = 16, 64
        self.l_f: npt.NDArray[np.float64] = np.zeros((nl, 5))
        self.l_i: npt.NDArray[np.int32] = np.zeros((nl, 5), np.int32)
        self.l_flows: npt.NDArray[np.int32] = np.zeros((nl, 8), np.int32)
        self.m_hist: npt.NDArray[np.int64] = np.zeros((nl, BINS + 1), np.int64)
        self.lvbytes: npt.NDArray[np.float64] = np.zeros(nlevels)
        self.pid: dict[int, int] = {}
        self.paths: list[tuple[Link, ...]] = []  # kept alive: their ids key `pid`
        self.p_links: npt.NDArray[np.int32] = np.zeros((16, 1 + 4), np.int32)
        self.f_f: npt.NDArray[np.float64] = np.zeros((nf, 4))
        self.f_i: npt.NDArray[np.int32] = np.zeros((nf, FI_POS + 4), np.int32)
        self.out_s: npt.NDArray[np.int64] = np.zeros(nf, np.int64)
        self.out_f: npt.NDArray[np.float64] = np.zeros((nf, 2))
        self.slots: list[FluidFlow | None] = []
        self.free: list[int] = []
        # (op, slot, path) of the joins and leaves not applied yet (waterfill.OP_*), flattened;
        # the slots of flows that left, free once the leave is applied
        self.ops: list[int] = []
        self.leaving: list[int] = []

    @staticmethod
    def _grown(a: npt.NDArray[_Scalar], n: int, fill: float = 0) -> npt.NDArray[_Scalar]:
        b = np.full((n, *a.shape[1:]), fill, a.dtype)
        b[: len(a)] = a
        return b

    @staticmethod
    def _widened(a: npt.NDArray[_Scalar], w: int) -> npt.NDArray[_Scalar]:
        b = np.zeros((len(a), w), a.dtype)
        b[:, : a.shape[1]] = a
        return b

    def _link(self, ln: Link) -> int:
        i = self.lidx.get(ln)
        if i is None:
            i = self.lidx[ln] = len(self.links)
            self.links.append(ln)
            if i >= len(self.l_f):
                n = 2 * len(self.l_f)
                for name in ("l_f", "l_i", "l_flows", "m_hist"):
                    setattr(self, name, self._grown(getattr(self, name), n))
            self.l_f[i, LF_CAP] = ln.capacity
        return i

    def _path(self, path: tuple[Link, ...]) -> int:
        p = self.pid.get(id(path))
        if p is None:
            p = self.pid[id(path)] = len(self.paths)
            self.paths.append(path)
            if p >= len(self.p_links):
                self.p_links = self._grown(self.p_links, 2 * len(self.p_links))
            if 1 + len(path) > self.p_links.shape[1]:
                self.p_links = self._widened(self.p_links, 1 + len(path))
                self.f_i = self._widened(self.f_i, FI_POS + len(path))
            for k, ln in enumerate(path):
                self.p_links[p, 1 + k] = self._link(ln)
            self.p_links[p, 0] = len(path)
        return p

    def add(self, f: FluidFlow) -> None:
        p = self._path(f.links)
        if self.free:
            s = self.free.pop()
            self.slots[s] = f
        else:
            s = len(self.slots)
            self.slots.append(f)
            if s >= len(self.f_f):
                n = 2 * len(self.f_f)
                for name in ("f_f", "f_i", "out_s", "out_f"):
                    setattr(self, name, self._grown(getattr(self, name), n))
        f.slot = s
        row = self.f_f[s]
        row[FF_REM] = f.rem
        row[FF_RATE] = f.rate
        row[FF_T0] = f.t0
        row[FF_W] = f.weight
        ir = self.f_i[s]
        ir[FI_LEVEL] = f.level
        ir[FI_PID] = p
        ir[FI_BNECK] = -1
        self.ops += (OP_LINK, s, p)

    def remove(self, f: FluidFlow) -> None:
        s = f.slot
        self.ops += (OP_UNLINK, s, int(self.f_i[s, FI_PID]))
        self.f_f[s, FF_RATE] = 0.0
        self.slots[s] = None
        self.leaving.append(s)
        f.slot = -1

    def recompute(self, t: float, window: float, dirty: npt.NDArray[np.int64]) -> int:
        """The pending joins and leaves, then the re-allocation of `dirty`'s component
        (`waterfill.recompute_arrays`): how many flows' rates changed (in out_s, out_f)."""
        ops = np.array(self.ops, np.int64).reshape(-1, 3)
        while True:
            no: int = waterfill.recompute_arrays(
                t,
                window,
                dirty,
                ops,
                self.l_f,
                self.l_i,
                self.l_flows,
                self.m_hist,
                self.p_links,
                self.f_f,
                self.f_i,
                self.lvbytes,
                self.out_s,
                self.out_f,
            )
            if no >= 0:
                break
            # a link's list of live flows is full: wider lists, the rest of the operations
            ops = ops[-1 - no :]
            self.l_flows = self._widened(self.l_flows, 2 * self.l_flows.shape[1])
        self.ops.clear()
        if self.leaving:
            self.free += self.leaving
            self.leaving.clear()
        return no
