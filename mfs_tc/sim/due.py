"""When can a flow's level next change? The re-level tick skips flows whose level provably
stays put until then; a flow's bound is recomputed whenever it is evaluated and whenever its rate
changes (rates are constant between fluid recomputations), so skipping changes nothing.

- sent / remaining: linear in bytes: the exact time the next threshold is reached at the current
  rate (never, at rate 0).
- laxity (base + sent * ps / 1000 - now): linear in time at the current rate: the exact time it
  reaches the nearest threshold below or above.
- mlu with F_MONOTONIC (only promotions apply): remaining bytes never grow, so MLU reaches the next
  threshold above its value no sooner than with nothing more sent (time_left <= need * 65536 / T);
  the AUTO_SCAVENGE deadline is another change point.
- static, rli: never change with time or bytes (rli moves with the cursor, re-levelled then).
Anything else (non-monotonic mlu) returns `now` (evaluate at every tick).
"""

from __future__ import annotations

from ..entry import FlowEntry
from ..layout import (
    F_AUTO_SCAVENGE,
    F_MONOTONIC,
    MLU_ONE,
    MODE_LAXITY,
    MODE_MLU,
    MODE_REMAINING,
    MODE_SENT,
)

NEVER = 1 << 62
_MARGIN_NS = 1_000


def next_change_ns(e: FlowEntry, metric: int, sent: int, now_ns: int, rate_Bps: float) -> int:
    th = e.thresholds
    mode = e.mode
    if mode == MODE_MLU:
        if not e.flags & F_MONOTONIC:
            return now_ns
        due = e.deadline_ns if e.flags & F_AUTO_SCAVENGE else NEVER
        marks = (*th, MLU_ONE + 1) if e.flags & F_AUTO_SCAVENGE else th
        for t in marks:
            if t > metric:
                need = ((e.total_bytes - sent if e.total_bytes > sent else 0) * e.ps_per_byte) // 1000
                due = min(due, e.deadline_ns - (need * MLU_ONE) // t)
                break
        return max(now_ns, due - _MARGIN_NS)
    if mode == MODE_LAXITY:
        slope = rate_Bps * e.ps_per_byte / 1e12 - 1.0  # metric change per ns
        due = NEVER
        if slope < 0:
            below = [t for t in th if t <= metric]
            if below:
                due = now_ns + int((metric - max(below)) / -slope)
        elif slope > 0:
            above = [t for t in th if t > metric]
            if above:
                due = now_ns + int((min(above) - metric) / slope)
        return max(now_ns, due - _MARGIN_NS) if due < NEVER else NEVER
    if mode == MODE_SENT or mode == MODE_REMAINING:
        if rate_Bps <= 0:
            return NEVER
        if mode == MODE_SENT:
            above = [t for t in th if t > metric]
            if not above:
                return NEVER
            nbytes = min(above) - metric
        else:
            below = [t for t in th if t <= metric]
            if not below:
                return NEVER
            nbytes = metric - max(below) + 1
        return max(now_ns, now_ns + int(nbytes / rate_Bps * 1e9) - _MARGIN_NS)
    return NEVER
