"""Robust Effective Deadline (DESIGN section 2): how tight a batch of requests really is.

Sort the batch's deadlines, split them at the largest gap into a tight and a loose set, and take
RED = f * min(tight) + (1 - f) * min(loose), f the tight fraction. A few tight requests cannot
make a loose batch look urgent; a uniformly tight batch keeps its earliest deadline.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

_Key = TypeVar("_Key", bound=Hashable)  # what red_ranks ranks (a batch id, a request id)


def red_split(deadlines_ns: Sequence[int]) -> tuple[list[int], list[int]]:
    """(tight, loose), sorted: split after the largest gap between consecutive deadlines.

    Ties between equal largest gaps split at the earliest one. One deadline, or all equal (no
    gap): every deadline is tight and the loose set is empty."""
    if not deadlines_ns:
        raise ValueError("RED of an empty batch: give at least one deadline")
    d = sorted(int(x) for x in deadlines_ns)
    gaps = [b - a for a, b in zip(d, d[1:], strict=False)]
    if not gaps or max(gaps) == 0:
        return d, []
    k = gaps.index(max(gaps)) + 1
    return d[:k], d[k:]


def red(deadlines_ns: Sequence[int]) -> int:
    """The batch's Robust Effective Deadline in ns (integer arithmetic, rounded down).

    >>> red([100, 100, 500, 500, 500, 500])   # f = 2/6: (2*100 + 4*500) // 6
    366
    """
    tight, loose = red_split(deadlines_ns)
    if not loose:
        return tight[0]
    n = len(tight) + len(loose)
    return (len(tight) * tight[0] + len(loose) * loose[0]) // n


def red_ranks(reds: Mapping[_Key, int]) -> dict[_Key, tuple[int, int]]:
    """The one ranking rule: each key's (rank, n) among `reds` (key -> RED, or a single request's
    deadline), rank 0 the earliest; ties by key order of arrival in the mapping."""
    keys = list(reds)
    n = len(keys)
    # a stable sort: equal REDs stay in the mapping's order
    order = sorted(range(n), key=list(reds.values()).__getitem__)
    return {keys[i]: (r, n) for r, i in enumerate(order)}


def rank_bucket(rank: tuple[int, int] | None, buckets: int) -> int:
    """Which of `buckets` equal slices of the ranking a (rank, n) falls in (0: the tightest)."""
    if rank is None or buckets <= 1:
        return 0
    r, n = rank
    return min(r * buckets // max(n, 1), buckets - 1)
