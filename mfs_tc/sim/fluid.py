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
            a.f_rem[f.slot] = f.rem
            a.f_t0[f.slot] = t

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
                a.f_level[f.slot] = level

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
        lidx = a.lidx
        d = []
        for ln in self._dirty:
            i = lidx.get(ln)
            d.append(a._link(ln) if i is None else i)
        dirty = np.array(d, np.int64)
        self._dirty.clear()
        changed, rates, rems = waterfill.recompute_arrays(t, dirty, self.window_s, *a.kernel_args())
        out = []
        slots = a.slots
        for s, r, rem in zip(changed.tolist(), rates.tolist(), rems.tolist(), strict=True):
            f = slots[s]
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
            b = int(a.f_bneck[f.slot])
            return a.links[b] if b >= 0 else None
        return f.bneck

    def close_meters(self, t: float) -> None:
        """Account every link's utilisation up to the horizon `t` (and fold the bytes the
        compiled re-allocation settled into the links' and levels' counts, and its meters into
        `meters`)."""
        a = self._arr
        if a is not None:
            for i in np.flatnonzero(a.m_on[: len(a.links)]).tolist():
                m = LinkMeter(a.links[i].capacity, self.window_s)
                m.t, m.rate, m.wbytes = a.m_f[i].tolist()
                m.k = int(a.m_k[i])
                m.hist = a.m_hist[i].tolist()
                self.meters[a.links[i]] = m
            a.m_on[:] = False
        for m in self.meters.values():
            m.close(t)
        if a is not None:
            for ln, b in zip(a.links, a.lbytes.tolist(), strict=False):
                ln.bytes += b
            a.lbytes[:] = 0.0
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
    """The fluid state of a network as arrays (allocator "numba"), kept in step with the flow
    objects: links (capacity, bytes settled by the kernel, the live flows crossing each), paths
    (their links), flow rows (remaining bytes, rate, t0, weight, level, path, bottleneck). The
    flow objects stay the truth for the engine; the kernel writes back only flows whose rate
    changed (a flow whose rate did not change needs no settling)."""

    # the arrays recompute_arrays takes, in its order (after t, dirty, window)
    KERNEL_ARRAYS = (
        "cap",
        "lbytes",
        "lvbytes",
        "p_links",
        "p_len",
        "f_rem",
        "f_rate",
        "f_t0",
        "f_w",
        "f_level",
        "f_pid",
        "f_bneck",
        "l_flows",
        "l_deg",
        "lmark",
        "fmark",
        "lloc",
        "m_f",
        "m_k",
        "m_hist",
        "m_on",
    )

    def __setattr__(self, name: str, value: object) -> None:
        if name in _Arrays.KERNEL_ARRAYS:  # an array replaced (grown): the tuple is stale
            object.__setattr__(self, "_kargs", None)
        object.__setattr__(self, name, value)

    # the KERNEL_ARRAYS as one tuple (None: stale); arrays of several dtypes
    _kargs: tuple[npt.NDArray[Any], ...] | None

    def kernel_args(self) -> tuple[npt.NDArray[Any], ...]:
        """The arrays recompute_arrays takes, as one tuple (rebuilt after an array grew)."""
        k = self._kargs
        if k is None:
            k = self._kargs = tuple(getattr(self, n) for n in _Arrays.KERNEL_ARRAYS)
        return k

    def __init__(self, nlevels: int) -> None:
        self._kargs = None
        self.lidx: dict[Link, int] = {}
        self.links: list[Link] = []
        self.cap: npt.NDArray[np.float64] = np.zeros(16)
        self.lbytes: npt.NDArray[np.float64] = np.zeros(16)
        self.lmark: npt.NDArray[np.bool_] = np.zeros(16, bool)
        self.lloc: npt.NDArray[np.int64] = np.zeros(16, np.int64)
        self.l_deg: npt.NDArray[np.int64] = np.zeros(16, np.int64)
        self.l_flows: npt.NDArray[np.int64] = np.zeros((16, 8), np.int64)
        # each link's utilisation meter (netutil.LinkMeter in arrays: t, rate, window bytes;
        # window index; histogram; whether it was ever in a re-allocation)
        self.m_f: npt.NDArray[np.float64] = np.zeros((16, 3))
        self.m_k: npt.NDArray[np.int64] = np.zeros(16, np.int64)
        self.m_hist: npt.NDArray[np.int64] = np.zeros((16, BINS + 1), np.int64)
        self.m_on: npt.NDArray[np.bool_] = np.zeros(16, bool)
        self.lvbytes: npt.NDArray[np.float64] = np.zeros(nlevels)
        self.pid: dict[int, int] = {}
        self.paths: list[tuple[Link, ...]] = []  # kept alive: their ids key `pid`
        self.p_links: npt.NDArray[np.int64] = np.zeros((16, 4), np.int64)
        self.p_len: npt.NDArray[np.int64] = np.zeros(16, np.int64)
        n = 64
        self.f_rem: npt.NDArray[np.float64] = np.zeros(n)
        self.f_rate: npt.NDArray[np.float64] = np.zeros(n)
        self.f_t0: npt.NDArray[np.float64] = np.zeros(n)
        self.f_w: npt.NDArray[np.float64] = np.zeros(n)
        self.f_level: npt.NDArray[np.int64] = np.zeros(n, np.int64)
        self.f_pid: npt.NDArray[np.int64] = np.zeros(n, np.int64)
        self.f_bneck: npt.NDArray[np.int64] = np.full(n, -1, np.int64)
        self.f_pos: npt.NDArray[np.int64] = np.zeros((n, 4), np.int64)
        self.fmark: npt.NDArray[np.bool_] = np.zeros(n, bool)
        self.slots: list[FluidFlow | None] = []
        self.free: list[int] = []

    @staticmethod
    def _grown(a: npt.NDArray[_Scalar], n: int, fill: float = 0) -> npt.NDArray[_Scalar]:
        b = np.full((n, *a.shape[1:]), fill, a.dtype)
        b[: len(a)] = a
        return b

    def _link(self, ln: Link) -> int:
        i = self.lidx.get(ln)
        if i is None:
            i = self.lidx[ln] = len(self.links)
            self.links.append(ln)
            if i >= len(self.cap):
                n = 2 * len(self.cap)
                for name in ("cap", "lbytes", "lmark", "lloc", "l_deg", "l_flows", "m_f", "m_k", "m_hist", "m_on"):
                    setattr(self, name, self._grown(getattr(self, name), n))
            self.cap[i] = ln.capacity
        return i

    def _path(self, path: tuple[Link, ...]) -> int:
        p = self.pid.get(id(path))
        if p is None:
            p = self.pid[id(path)] = len(self.paths)
            self.paths.append(path)
            if p >= len(self.p_len):
                self.p_links = self._grown(self.p_links, 2 * len(self.p_len))
                self.p_len = self._grown(self.p_len, 2 * len(self.p_len))
            if len(path) > self.p_links.shape[1]:
                w = len(path)
                self.p_links = np.hstack([self.p_links, np.zeros((len(self.p_links), w - self.p_links.shape[1]), np.int64)])
                self.f_pos = np.hstack([self.f_pos, np.zeros((len(self.f_pos), w - self.f_pos.shape[1]), np.int64)])
            for k, ln in enumerate(path):
                self.p_links[p, k] = self._link(ln)
            self.p_len[p] = len(path)
        return p

    def add(self, f: FluidFlow) -> None:
        p = self._path(f.links)
        if self.free:
            s = self.free.pop()
            self.slots[s] = f
        else:
            s = len(self.slots)
            self.slots.append(f)
            if s >= len(self.f_rem):
                n = 2 * len(self.f_rem)
                for name in ("f_rem", "f_rate", "f_t0", "f_w", "f_level", "f_pid", "f_pos", "fmark"):
                    setattr(self, name, self._grown(getattr(self, name), n))
                self.f_bneck = self._grown(self.f_bneck, n, -1)
        f.slot = s
        self.f_rem[s] = f.rem
        self.f_rate[s] = f.rate
        self.f_t0[s] = f.t0
        self.f_w[s] = f.weight
        self.f_level[s] = f.level
        self.f_pid[s] = p
        self.f_bneck[s] = -1
        while not waterfill.link_flow(s, p, self.p_links, self.p_len, self.f_pos, self.l_flows, self.l_deg):
            self.l_flows = np.hstack([self.l_flows, np.zeros_like(self.l_flows)])

    def remove(self, f: FluidFlow) -> None:
        s = f.slot
        waterfill.unlink_flow(s, self.f_pid[s], self.p_links, self.p_len, self.f_pid, self.f_pos, self.l_flows, self.l_deg)
        self.f_rate[s] = 0.0
        self.slots[s] = None
        self.free.append(s)
        f.slot = -1
