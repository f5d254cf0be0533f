"""Compiled progressive filling (numba): `fluid._fill`'s allocation on flat arrays.

Input: the component's links (residual capacity `cap`), its classes (`level`, `n` = real flows
the class stands for, `ptr`/`idx` = CSR of each class's links). Per level from the most urgent:
repeatedly take the link with the smallest fair share (residual / real flows of unfrozen classes
crossing it), freeze its unfrozen classes at that share (0 if negative) and take their bytes
from every link they cross. This is the textbook algorithm `fluid._fill` runs with a heap;
the order of equal shares may differ, so rates agree to rounding (tests: 1e-9).

Returns (rate per class, residual per link, the link that froze each class where other flows of
its level cross that link, else -1; `nfl` = fluid flows per class).
Compiled on first use (cached on disk by numba); `available()` says whether numba is installed.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .netutil import BINS

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the python allocator remains
    numba = None  # type: ignore[assignment]  # only on an install without numba (a pinned dependency): available() is False


# The fluid state in arrays (fluid._Arrays holds them, the kernels below read and write them):
# one row per link, path and flow slot, its fields in columns (a row's fields share cache lines).
# links: l_f (float) and l_i (int); the meter is netutil.LinkMeter's state
LF_CAP, LF_BYTES, LF_MT, LF_MRATE, LF_MWBYTES = range(5)  # capacity, bytes settled, meter t, rate, window bytes
LI_DEG, LI_LOC, LI_MK, LI_MON, LI_MARK = range(5)  # live flows, row in a component, meter window, metered, seen
# paths: p[0] its length, p[1:] its links
# flows: f_f (float) and f_i (int); from FI_POS on, the flow's place in each of its links' lists
FF_REM, FF_RATE, FF_T0, FF_W = range(4)  # remaining bytes, rate, t0, weight
FI_LEVEL, FI_PID, FI_BNECK, FI_MARK, FI_POS = range(5)  # level, path, bottleneck link (-1), seen
# pending list operations (fluid._Arrays.add / remove), applied by recompute_arrays first: rows of
# (OP_LINK or OP_UNLINK, flow slot, path)
OP_LINK, OP_UNLINK = 1, 2


def available() -> bool:
    return numba is not None


def _stable_order(a: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:  # pragma: no cover - compiled
    """np.argsort(a, kind="mergesort") (the same permutation: both are stable), by insertion
    for the short arrays a component has (cheaper there), by mergesort beyond 64."""
    n = a.shape[0]
    if n > 64:
        return np.argsort(a, kind="mergesort")
    o = np.empty(n, np.int64)
    for i in range(n):
        v = a[i]
        j = i
        while j > 0 and a[o[j - 1]] > v:
            o[j] = o[j - 1]
            j -= 1
        o[j] = i
    return o


if numba is not None:
    _stable_order = numba.njit(cache=True, nogil=True)(_stable_order)


def _kernel(
    cap: npt.NDArray[np.float64],
    level: npt.NDArray[np.int64],
    n: npt.NDArray[np.float64],
    ptr: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    nfl: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:  # pragma: no cover - compiled
    nl = cap.shape[0]
    nc = level.shape[0]
    resid = cap.copy()
    rate = np.zeros(nc)
    bott = np.full(nc, -1, np.int64)  # the link that froze each class, if shared (else -1)
    cnt0 = np.zeros(nl)
    # links -> classes (CSR), built once
    deg = np.zeros(nl + 1, np.int64)
    for k in range(idx.shape[0]):
        deg[idx[k] + 1] += 1
    for l in range(nl):
        deg[l + 1] += deg[l]
    lcls = np.empty(idx.shape[0], np.int64)
    fill = deg[:nl].copy()
    for c in range(nc):
        for k in range(ptr[c], ptr[c + 1]):
            l = idx[k]
            lcls[fill[l]] = c
            fill[l] += 1
    frozen = np.zeros(nc, np.bool_)
    cnt = np.zeros(nl)
    # the links crossed by this level's classes (only they can have cnt > 0 at this level)
    act = np.empty(nl, np.int64)
    nact = 0
    order = _stable_order(level)
    i = 0
    while i < nc:
        lv = level[order[i]]
        j = i
        while j < nc and level[order[j]] == lv:
            j += 1
        # real flows per link at this level (cnt is 0 wherever the last level left it)
        for a in range(nact):
            cnt[act[a]] = 0.0
        nact = 0
        for q in range(i, j):
            c = order[q]
            for k in range(ptr[c], ptr[c + 1]):
                l = idx[k]
                if cnt[l] == 0.0:
                    act[nact] = l
                    nact += 1
                cnt[l] += n[c]
        for a in range(nact):
            cnt0[act[a]] = cnt[act[a]]
        left = j - i
        while left > 0:
            # the link with the smallest fair share, the lowest index among equal shares (what
            # a scan of every link in index order picks)
            best = -1
            bshare = 0.0
            for a in range(nact):
                l = act[a]
                if cnt[l] > 0.0:
                    s = resid[l] / cnt[l]
                    if best < 0 or s < bshare or (s == bshare and l < best):
                        best = l
                        bshare = s
            if best < 0:
                break
            cur = bshare if bshare > 0.0 else 0.0
            # each class's first link (path order) at this share whose band other flows of its
            # level share, decided before this round's classes take their bytes
            for k in range(deg[best], deg[best + 1]):
                c = lcls[k]
                if frozen[c] or level[c] != lv:
                    continue
                for kk in range(ptr[c], ptr[c + 1]):
                    l2 = idx[kk]
                    if cnt[l2] > 0.0 and resid[l2] / cnt[l2] <= cur * (1 + 1e-9) + 1e-12:
                        if nfl[c] > 1 or cnt0[l2] > n[c]:
                            bott[c] = l2
                            break
            for k in range(deg[best], deg[best + 1]):
                c = lcls[k]
                if frozen[c] or level[c] != lv:
                    continue
                frozen[c] = True
                left -= 1
                rate[c] = cur
                for kk in range(ptr[c], ptr[c + 1]):
                    l2 = idx[kk]
                    resid[l2] -= cur * n[c]
                    cnt[l2] -= n[c]
            cnt[best] = 0.0
        i = j
    return rate, resid, bott


waterfill = numba.njit(cache=True, nogil=True)(_kernel) if numba is not None else None


def _bin(u: float) -> int:  # pragma: no cover - compiled
    """netutil.LinkMeter._bin: the utilisation histogram bin of `u`."""
    if u <= 1e-9:
        return 0
    return min(BINS, max(1, math.ceil(u * BINS - 1e-9)))


def _meter(
    i: int | np.int64,
    t: float,
    rate: float,
    window: float,
    l_f: npt.NDArray[np.float64],
    l_i: npt.NDArray[np.int32],
    m_hist: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled
    """netutil.LinkMeter.set_rate(t, rate) on link i's meter in arrays (l_f[i] has its t, rate
    and bytes of the current window, l_i[i, LI_MK] its window, m_hist[i] the histogram), the
    same arithmetic in the same order."""
    mt = l_f[i, LF_MT]
    if t > mt:
        r = l_f[i, LF_MRATE]
        cap = l_f[i, LF_CAP]
        k = l_i[i, LI_MK]
        end = (k + 1) * window
        if t < end:
            l_f[i, LF_MWBYTES] += r * (t - mt)
        else:
            wb = l_f[i, LF_MWBYTES] + r * (end - mt)
            m_hist[i, _bin(wb / (cap * window))] += 1
            k2 = int(t / window)
            if k2 <= k:
                k2 = k + 1
            full = k2 - k - 1
            if full > 0:
                m_hist[i, _bin(r / cap)] += full
            l_i[i, LI_MK] = k2
            rest = t - k2 * window
            l_f[i, LF_MWBYTES] = r * (rest if rest > 0.0 else 0.0)
        l_f[i, LF_MT] = t
    l_f[i, LF_MRATE] = rate if rate > 0 else 0.0


if numba is not None:
    _bin = numba.njit(cache=True, nogil=True)(_bin)
    _meter = numba.njit(cache=True, nogil=True)(_meter)


def _apply_ops(
    ops: npt.NDArray[np.int64],
    paths: npt.NDArray[np.int32],
    f_i: npt.NDArray[np.int32],
    l_i: npt.NDArray[np.int32],
    l_flows: npt.NDArray[np.int32],
) -> int:  # pragma: no cover - compiled
    """The pending joins and leaves of the links' lists of live flows, in order: a flow slot
    joins each of its path's links' lists (its place there into f_i[s, FI_POS + k]), or leaves
    them (the last entry of each list takes its place, and that flow's place follows). Returns
    how many were applied: fewer than all when a list is full (the caller widens l_flows and
    passes the rest again)."""
    width = l_flows.shape[1]
    for o in range(ops.shape[0]):
        s = ops[o, 1]
        p = ops[o, 2]
        n = paths[p, 0]
        if ops[o, 0] == OP_LINK:
            for k in range(n):
                if l_i[paths[p, 1 + k], LI_DEG] >= width:
                    return o
            for k in range(n):
                li = paths[p, 1 + k]
                d = l_i[li, LI_DEG]
                l_flows[li, d] = s
                f_i[s, FI_POS + k] = d
                l_i[li, LI_DEG] = d + 1
        else:
            for k in range(n):
                li = paths[p, 1 + k]
                pos = f_i[s, FI_POS + k]
                last = l_i[li, LI_DEG] - 1
                moved = l_flows[li, last]
                l_flows[li, pos] = moved
                if moved != s:
                    mp = f_i[moved, FI_PID]
                    for k2 in range(paths[mp, 0]):
                        if paths[mp, 1 + k2] == li:
                            f_i[moved, FI_POS + k2] = pos
                            break
                l_i[li, LI_DEG] = last
    return int(ops.shape[0])


if numba is not None:
    _apply_ops = numba.njit(cache=True, nogil=True)(_apply_ops)


def _recompute(
    t: float,
    window: float,
    dirty: npt.NDArray[np.int64],
    ops: npt.NDArray[np.int64],
    l_f: npt.NDArray[np.float64],
    l_i: npt.NDArray[np.int32],
    l_flows: npt.NDArray[np.int32],
    m_hist: npt.NDArray[np.int64],
    paths: npt.NDArray[np.int32],
    f_f: npt.NDArray[np.float64],
    f_i: npt.NDArray[np.int32],
    lvbytes: npt.NDArray[np.float64],
    out_s: npt.NDArray[np.int64],
    out_f: npt.NDArray[np.float64],
) -> int:  # pragma: no cover - compiled
    """A whole re-allocation over the fluid state in arrays (the layout above): the pending list
    operations `ops` (`_apply_ops`), then the component of the links in `dirty` (links reachable
    through live flows), its classes (level, path), the filling (`_kernel`), then the flows
    whose rate changed settled at their old rate and given the new one; every component flow's
    bottleneck (shared, else -1) into f_i; each component link's meter (netutil.LinkMeter, here
    in arrays: `_meter`) told its new aggregate rate. The changed flow slots go to `out_s`,
    their new rates and remaining bytes to `out_f`; returns how many. When a link's list of
    live flows is full, only the first k operations are applied and nothing else is done:
    returns -1 - k."""
    done = _apply_ops(ops, paths, f_i, l_i, l_flows)
    if done < ops.shape[0]:
        return -1 - done
    # component search
    links = np.empty(l_f.shape[0], np.int64)
    flows = np.empty(f_f.shape[0], np.int64)
    nl = 0
    nf = 0
    # links to visit (a link is pushed once per flow that reaches it: at most every path's)
    stack = np.empty(dirty.shape[0] + f_f.shape[0] * (paths.shape[1] - 1), np.int64)
    top = 0
    for x in dirty:
        stack[top] = x
        top += 1
    while top > 0:
        top -= 1
        l = stack[top]
        if l_i[l, LI_MARK]:
            continue
        l_i[l, LI_MARK] = 1
        links[nl] = l
        nl += 1
        for k in range(l_i[l, LI_DEG]):
            s = l_flows[l, k]
            if f_i[s, FI_MARK]:
                continue
            f_i[s, FI_MARK] = 1
            flows[nf] = s
            nf += 1
            p = f_i[s, FI_PID]
            for q in range(paths[p, 0]):
                l2 = paths[p, 1 + q]
                if not l_i[l2, LI_MARK]:
                    stack[top] = l2
                    top += 1
    for i in range(nl):
        l_i[links[i], LI_LOC] = i
    fl = np.empty(nf, np.int64)
    key = np.empty(nf, np.int64)
    npaths = paths.shape[0]
    for i in range(nf):
        s = flows[i]
        fl[i] = s
        f_i[s, FI_MARK] = 0
        key[i] = f_i[s, FI_LEVEL] * npaths + f_i[s, FI_PID]
    order = _stable_order(key)
    # classes: runs of equal key
    cls_of = np.empty(nf, np.int64)
    nc = 0
    for i in range(nf):
        if i == 0 or key[order[i]] != key[order[i - 1]]:
            nc += 1
        cls_of[order[i]] = nc - 1
    level = np.empty(nc, np.int64)
    n = np.zeros(nc)
    nfl = np.zeros(nc, np.int64)
    cpath = np.empty(nc, np.int64)
    for i in range(nf):
        c = cls_of[i]
        s = fl[i]
        level[c] = f_i[s, FI_LEVEL]
        cpath[c] = f_i[s, FI_PID]
        n[c] += f_f[s, FF_W]
        nfl[c] += 1
    ptr = np.zeros(nc + 1, np.int64)
    for c in range(nc):
        ptr[c + 1] = ptr[c] + paths[cpath[c], 0]
    idx = np.empty(ptr[nc], np.int64)
    for c in range(nc):
        p = cpath[c]
        for q in range(paths[p, 0]):
            idx[ptr[c] + q] = l_i[paths[p, 1 + q], LI_LOC]
    lcap = np.empty(nl)
    for i in range(nl):
        lcap[i] = l_f[links[i], LF_CAP]
        l_i[links[i], LI_MARK] = 0
    rate, resid, bott = waterfill(lcap, level, n, ptr, idx, nfl)
    # changed flows: settle at the old rate, then the new rate
    no = 0
    for i in range(nf):
        s = fl[i]
        c = cls_of[i]
        new = rate[c] * f_f[s, FF_W]
        old = f_f[s, FF_RATE]
        f_i[s, FI_BNECK] = links[bott[c]] if bott[c] >= 0 else -1
        if new != old:
            dt = t - f_f[s, FF_T0]
            if dt > 0 and old > 0:
                b = old * dt
                if b > f_f[s, FF_REM]:
                    b = f_f[s, FF_REM]
                f_f[s, FF_REM] -= b
                lvbytes[f_i[s, FI_LEVEL]] += b
                p = f_i[s, FI_PID]
                for q in range(paths[p, 0]):
                    l_f[paths[p, 1 + q], LF_BYTES] += b
            f_f[s, FF_T0] = t
            f_f[s, FF_RATE] = new
            out_s[no] = s
            out_f[no, 0] = new
            out_f[no, 1] = f_f[s, FF_REM]
            no += 1
    for i in range(nl):
        li = links[i]
        _meter(li, t, lcap[i] - resid[i], window, l_f, l_i, m_hist)
        l_i[li, LI_MON] = 1
    return no


recompute_arrays = numba.njit(cache=True, nogil=True)(_recompute) if numba is not None else None
