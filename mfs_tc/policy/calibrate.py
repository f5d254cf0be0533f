"""Thresholds from a workload description.

    cfg = calibrate("mfs", CalibrationWorkload(flow_sizes=[...], slos_ns=[...], link_rate_bps=200e6))
    policy = make_policy("mfs", **cfg)

`calibrate` returns the configuration keys of the named policy (always nlevels and
ref_rate_bps = the link rate), derived from quantiles so that each level carries a comparable
share of the traffic:
  sjf, srpt, pias   size thresholds at the j/(K-1) quantiles of the flow sizes, levels 0..K-2.
  karuna            deadline flows on levels 0..min(3, K-2)-1, deadline thresholds at SLO
                    quantiles; sent thresholds at quantiles of the non-deadline flow sizes on
                    the levels below them, down to K-2.
  mfs               MLU thresholds geometric from the median initial MLU of p2d flows (median
                    p2d time at the link rate over each SLO less the compute after p2d;
                    clamped to 0.01..0.5) up to 0.9; red_loose_ns = median SLO.
  mfs-laxity,
  llf-oracle        laxity thresholds at the j/(n+1) quantiles of the initial laxity
                    (SLO - median flow time - compute), at least 1 ms.
  edf, fifo         deadline / age thresholds at the j/(n+1) quantiles of the SLOs.
  fair, stage       nothing to derive.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..entry import ps_per_byte
from ..layout import MAX_LEVELS
from .registry import policy_class

MIN_LAXITY_NS = 1_000_000
_Num = TypeVar("_Num", int, float)  # _distinct keeps its input's number type


@dataclass(slots=True)
class CalibrationWorkload:
    """What calibration needs to know of a workload."""

    flow_sizes: list[int]  # bytes of the flows (all stages)
    slos_ns: list[int]  # TTFT SLOs of the requests
    link_rate_bps: float  # bottleneck (reference) rate
    p2d_sizes: list[int] = field(default_factory=list)  # bytes of p2d flows (default: flow_sizes)
    compute_ns: list[int] = field(default_factory=list)  # compute ahead of a request at arrival
    decode_ns: int = 0  # compute after p2d (the decode step)

    def __post_init__(self) -> None:
        for key in ("flow_sizes", "slos_ns", "p2d_sizes", "compute_ns"):
            values = getattr(self, key)
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ValueError(f"workload {key} must be a list of numbers, got {values!r}")
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in values):
                raise ValueError(f"workload {key} must hold non-negative numbers")
            setattr(self, key, [int(v) for v in values])
        if not self.flow_sizes:
            raise ValueError("workload flow_sizes is empty: give the byte sizes of its flows")
        if not self.slos_ns or min(self.slos_ns) <= 0:
            raise ValueError("workload slos_ns must list positive SLOs (ns)")
        if not self.link_rate_bps or self.link_rate_bps <= 0:
            raise ValueError("workload link_rate_bps must be positive (bits/s)")
        if self.decode_ns < 0:
            raise ValueError("workload decode_ns must not be negative")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalibrationWorkload:
        keys = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - keys)
        if unknown:
            raise ValueError(f"workload has no field {', '.join(unknown)}: valid fields are {', '.join(sorted(keys))}")
        missing = sorted(k for k in ("flow_sizes", "slos_ns", "link_rate_bps") if k not in d)
        if missing:
            raise ValueError(f"workload needs {', '.join(missing)}")
        return cls(**d)


def quantile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated quantile of `values` (p in 0..1)."""
    s = sorted(values)
    if not s:
        raise ValueError("quantile of no values")
    pos = p * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _distinct(values: Sequence[_Num]) -> tuple[_Num, ...]:
    out: list[_Num] = []
    for v in values:
        if not out or v > out[-1]:
            out.append(v)
    return tuple(out)


def _spread(n: int, lo: int, hi: int) -> tuple[int, ...]:
    """n + 1 ascending levels from lo to hi (as evenly as integers allow)."""
    if n == 0:
        return (lo,)
    return tuple(lo + (i * (hi - lo) * 2 + n) // (2 * n) for i in range(n + 1))


def _quantile_thresholds(values: Sequence[int], n: int, floor: int = 1) -> tuple[int, ...]:
    if n <= 0:
        return ()
    return _distinct([max(floor, round(quantile(values, j / (n + 1)))) for j in range(1, n + 1)])


def calibrate(policy: str, workload: CalibrationWorkload | Mapping[str, Any], nlevels: int = MAX_LEVELS) -> dict[str, Any]:
    """Configuration keys for `policy` (make_policy(policy, **result)) derived from `workload`."""
    cls = policy_class(policy)
    w = workload if isinstance(workload, CalibrationWorkload) else CalibrationWorkload.from_dict(workload)
    if not 2 <= nlevels <= MAX_LEVELS:
        raise ValueError(f"nlevels must be in 2..{MAX_LEVELS}, got {nlevels}")
    top = nlevels - 2  # least urgent non-scavenger level
    ps = ps_per_byte(w.link_rate_bps)
    out: dict[str, Any] = {"nlevels": nlevels, "ref_rate_bps": float(w.link_rate_bps)}
    name = cls.name

    if name in ("sjf", "srpt", "pias"):
        th = _quantile_thresholds(w.flow_sizes, top)
        out |= {"size_thresholds": th, "size_levels": _spread(len(th), 0, top)}
    elif name == "karuna":
        # deadline flows: the top min(3, K-1) levels, thresholds at SLO quantiles; the others below
        nd = min(3, top)  # deadline levels 0..nd-1 (nd >= 1 when K >= 3)
        dth = _quantile_thresholds(w.slos_ns, max(nd - 1, 0)) if nd > 1 else ()
        out |= {"deadline_thresholds_ns": dth, "deadline_levels": _spread(len(dth), 0, max(nd - 1, 0))}
        below = min(nd, top)
        th = _quantile_thresholds(w.flow_sizes, max(top - below, 0))
        out |= {"sent_thresholds": th, "sent_levels": _spread(len(th), below, top)}
    elif name == "mfs":
        sizes = w.p2d_sizes or w.flow_sizes
        need = quantile(sizes, 0.5) * ps / 1000
        mlus = [need / max(s - w.decode_ns, 1) for s in w.slos_ns]
        lo = min(max(quantile(mlus, 0.5), 0.01), 0.5)
        n = min(5, top)
        if n == 0:
            mlu_th: tuple[float, ...] = ()
        elif n == 1:
            mlu_th = (0.9,)
        else:
            mlu_th = tuple(round(lo * (0.9 / lo) ** (i / (n - 1)), 4) for i in range(n))
        out |= {
            "mlu_thresholds": _distinct(mlu_th),
            "mlu_levels": tuple(reversed(_spread(len(_distinct(mlu_th)), 0, min(len(_distinct(mlu_th)), top)))),
            "red_loose_ns": int(quantile(w.slos_ns, 0.5)),
        }
    elif name in ("mfs-laxity", "llf-oracle"):
        flow_ns = quantile(w.flow_sizes, 0.5) * ps / 1000
        compute = quantile(w.compute_ns, 0.5) if w.compute_ns else 0
        lax = [int(s - flow_ns - compute) for s in w.slos_ns]
        th = _quantile_thresholds(lax, min(5, top), floor=MIN_LAXITY_NS)
        out |= {"laxity_thresholds_ns": th, "laxity_levels": _spread(len(th), 0, min(len(th), top))}
    elif name == "edf":
        th = _quantile_thresholds(w.slos_ns, min(6, top))
        out |= {"deadline_thresholds_ns": th, "deadline_levels": _spread(len(th), 0, min(len(th), top))}
    elif name == "fifo":
        th = _quantile_thresholds(w.slos_ns, min(6, top))
        out |= {"age_thresholds_ns": th, "age_levels": tuple(reversed(_spread(len(th), 0, min(len(th), top))))}
    return out
