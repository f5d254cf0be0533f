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
    cap: float,
    window: float,
    m_f: npt.NDArray[np.float64],
    m_k: npt.NDArray[np.int64],
    m_hist: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled
    """netutil.LinkMeter.set_rate(t, rate) on link i's meter in arrays (m_f[i] = (t, rate,
    bytes of the current window), m_k[i] = its window, m_hist[i] = the histogram), the same
    arithmetic in the same order."""
    mt = m_f[i, 0]
    if t > mt:
        r = m_f[i, 1]
        k = m_k[i]
        end = (k + 1) * window
        if t < end:
            m_f[i, 2] += r * (t - mt)
        else:
            wb = m_f[i, 2] + r * (end - mt)
            m_hist[i, _bin(wb / (cap * window))] += 1
            k2 = int(t / window)
            if k2 <= k:
                k2 = k + 1
            full = k2 - k - 1
            if full > 0:
                m_hist[i, _bin(r / cap)] += full
            m_k[i] = k2
            rest = t - k2 * window
            m_f[i, 2] = r * (rest if rest > 0.0 else 0.0)
        m_f[i, 0] = t
    m_f[i, 1] = rate if rate > 0 else 0.0


if numba is not None:
    _bin = numba.njit(cache=True, nogil=True)(_bin)
    _meter = numba.njit(cache=True, nogil=True)(_meter)


def _recompute(
    t: float,
    dirty: npt.NDArray[np.int64],
    window: float,
    cap: npt.NDArray[np.float64],
    lbytes: npt.NDArray[np.float64],
    lvbytes: npt.NDArray[np.float64],
    p_links: npt.NDArray[np.int64],
    p_len: npt.NDArray[np.int64],
    f_rem: npt.NDArray[np.float64],
    f_rate: npt.NDArray[np.float64],
    f_t0: npt.NDArray[np.float64],
    f_w: npt.NDArray[np.float64],
    f_level: npt.NDArray[np.int64],
    f_pid: npt.NDArray[np.int64],
    f_bneck: npt.NDArray[np.int64],
    l_flows: npt.NDArray[np.int64],
    l_deg: npt.NDArray[np.int64],
    lmark: npt.NDArray[np.bool_],
    fmark: npt.NDArray[np.bool_],
    lloc: npt.NDArray[np.int64],
    m_f: npt.NDArray[np.float64],
    m_k: npt.NDArray[np.int64],
    m_hist: npt.NDArray[np.int64],
    m_on: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:  # pragma: no cover - compiled
    """A whole re-allocation over the fluid state in arrays: the component of the links in
    `dirty` (links reachable through live flows), its classes (level, path), the filling
    (`_kernel`), then the flows whose rate changed settled at their old rate and given the new
    one; every component flow's bottleneck (shared, else -1) into `f_bneck`; each component
    link's meter (netutil.LinkMeter, here in arrays: `_meter`) told its new aggregate rate.
    Returns the changed flow slots, their new rates and remaining bytes."""
    # component search
    links = np.empty(cap.shape[0], np.int64)
    flows = np.empty(f_rem.shape[0], np.int64)
    nl = 0
    nf = 0
    # links to visit (a link is pushed once per flow that reaches it: at most every path's)
    stack = np.empty(dirty.shape[0] + f_rem.shape[0] * p_links.shape[1], np.int64)
    top = 0
    for x in dirty:
        stack[top] = x
        top += 1
    while top > 0:
        top -= 1
        l = stack[top]
        if lmark[l]:
            continue
        lmark[l] = True
        links[nl] = l
        nl += 1
        for k in range(l_deg[l]):
            s = l_flows[l, k]
            if fmark[s]:
                continue
            fmark[s] = True
            flows[nf] = s
            nf += 1
            p = f_pid[s]
            for q in range(p_len[p]):
                l2 = p_links[p, q]
                if not lmark[l2]:
                    stack[top] = l2
                    top += 1
    for i in range(nl):
        lloc[links[i]] = i
    fl = np.empty(nf, np.int64)
    key = np.empty(nf, np.int64)
    npaths = p_len.shape[0]
    for i in range(nf):
        s = flows[i]
        fl[i] = s
        fmark[s] = False
        key[i] = f_level[s] * npaths + f_pid[s]
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
        level[c] = f_level[s]
        cpath[c] = f_pid[s]
        n[c] += f_w[s]
        nfl[c] += 1
    ptr = np.zeros(nc + 1, np.int64)
    for c in range(nc):
        ptr[c + 1] = ptr[c] + p_len[cpath[c]]
    idx = np.empty(ptr[nc], np.int64)
    for c in range(nc):
        p = cpath[c]
        for q in range(p_len[p]):
            idx[ptr[c] + q] = lloc[p_links[p, q]]
    lcap = np.empty(nl)
    for i in range(nl):
        lcap[i] = cap[links[i]]
        lmark[links[i]] = False
    rate, resid, bott = waterfill(lcap, level, n, ptr, idx, nfl)
    # changed flows: settle at the old rate, then the new rate
    out = np.empty(nf, np.int64)
    orate = np.empty(nf)
    orem = np.empty(nf)
    no = 0
    for i in range(nf):
        s = fl[i]
        c = cls_of[i]
        new = rate[c] * f_w[s]
        old = f_rate[s]
        f_bneck[s] = links[bott[c]] if bott[c] >= 0 else -1
        if new != old:
            dt = t - f_t0[s]
            if dt > 0 and old > 0:
                b = old * dt
                if b > f_rem[s]:
                    b = f_rem[s]
                f_rem[s] -= b
                lvbytes[f_level[s]] += b
                p = f_pid[s]
                for q in range(p_len[p]):
                    lbytes[p_links[p, q]] += b
            f_t0[s] = t
            f_rate[s] = new
            out[no] = s
            orate[no] = new
            orem[no] = f_rem[s]
            no += 1
    for i in range(nl):
        li = links[i]
        _meter(li, t, lcap[i] - resid[i], lcap[i], window, m_f, m_k, m_hist)
        m_on[li] = True
    return out[:no], orate[:no], orem[:no]


def _link_flow(
    s: int,
    p: int,
    p_links: npt.NDArray[np.int64],
    p_len: npt.NDArray[np.int64],
    f_pos: npt.NDArray[np.int64],
    l_flows: npt.NDArray[np.int64],
    l_deg: npt.NDArray[np.int64],
) -> bool:  # pragma: no cover - compiled
    """Flow slot `s` on path `p` joins each of its links' lists of live flows (f_pos: where).
    False (nothing changed) when a list is full: the caller widens l_flows and asks again."""
    for k in range(p_len[p]):
        if l_deg[p_links[p, k]] >= l_flows.shape[1]:
            return False
    for k in range(p_len[p]):
        li = p_links[p, k]
        d = l_deg[li]
        l_flows[li, d] = s
        f_pos[s, k] = d
        l_deg[li] = d + 1
    return True


def _unlink_flow(
    s: int,
    p: int | np.int64,
    p_links: npt.NDArray[np.int64],
    p_len: npt.NDArray[np.int64],
    f_pid: npt.NDArray[np.int64],
    f_pos: npt.NDArray[np.int64],
    l_flows: npt.NDArray[np.int64],
    l_deg: npt.NDArray[np.int64],
) -> None:  # pragma: no cover - compiled
    """Flow slot `s` (path `p`) leaves its links' lists: the last entry of each list takes its
    place (and that flow's f_pos follows)."""
    for k in range(p_len[p]):
        li = p_links[p, k]
        pos = f_pos[s, k]
        last = l_deg[li] - 1
        moved = l_flows[li, last]
        l_flows[li, pos] = moved
        if moved != s:
            mp = f_pid[moved]
            for k2 in range(p_len[mp]):
                if p_links[mp, k2] == li:
                    f_pos[moved, k2] = pos
                    break
        l_deg[li] = last


if numba is not None:
    recompute_arrays = numba.njit(cache=True, nogil=True)(_recompute)
    link_flow = numba.njit(cache=True, nogil=True)(_link_flow)
    unlink_flow = numba.njit(cache=True, nogil=True)(_unlink_flow)
else:  # pragma: no cover
    recompute_arrays = link_flow = unlink_flow = None
