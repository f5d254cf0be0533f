"""Robust Effective Deadline (DESIGN section 2): how tight a batch of requests really is.

Sort the batch's deadlines, split them at the largest gap into a tight and a loose set, and take
RED = f * min(tight) + (1 - f) * min(loose), f the tight fraction. A few tight requests cannot
make a loose batch look urgent; a uniformly tight batch keeps its earliest deadline.
"""

from __future__ import annotations

from collections.abc import Sequence


def red_split(deadlines_ns: Sequence[int]) -> tuple[list[int], list[int]]:
    """(tight, loose), sorted: split after the largest gap between consecutive deadlines.

    Ties between equal largest gaps split at the earliest one. One deadline, or all equal (no
    gap): every deadline is tight and the loose set is empty."""
    if not deadlines_ns:
        raise ValueError("RED of an empty batch: give at least one deadline")
    d = sorted(int(x) for x in deadlines_ns)
    gaps = [b - a for a, b in zip(d, d[1:])]
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
