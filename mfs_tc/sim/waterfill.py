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

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the python allocator remains
    numba = None


def available() -> bool:
    return numba is not None


def _kernel(cap, level, n, ptr, idx, nfl):  # pragma: no cover - compiled
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
    order = np.argsort(level, kind="mergesort")
    i = 0
    while i < nc:
        lv = level[order[i]]
        j = i
        while j < nc and level[order[j]] == lv:
            j += 1
        # real flows per link at this level
        for l in range(nl):
            cnt[l] = 0.0
        for q in range(i, j):
            c = order[q]
            for k in range(ptr[c], ptr[c + 1]):
                cnt[idx[k]] += n[c]
        for l in range(nl):
            cnt0[l] = cnt[l]
        left = j - i
        while left > 0:
            best = -1
            bshare = 0.0
            for l in range(nl):
                if cnt[l] > 0.0:
                    s = resid[l] / cnt[l]
                    if best < 0 or s < bshare:
                        best = l
                        bshare = s
            if best < 0:
                break
            cur = bshare if bshare > 0.0 else 0.0
            for k in range(deg[best], deg[best + 1]):
                c = lcls[k]
                if frozen[c] or level[c] != lv:
                    continue
                frozen[c] = True
                left -= 1
                rate[c] = cur
                if cnt0[best] > n[c] or nfl[c] > 1:
                    bott[c] = best
                for kk in range(ptr[c], ptr[c + 1]):
                    l2 = idx[kk]
                    resid[l2] -= cur * n[c]
                    cnt[l2] -= n[c]
            cnt[best] = 0.0
        i = j
    return rate, resid, bott


waterfill = numba.njit(cache=True, nogil=True)(_kernel) if numba is not None else None
