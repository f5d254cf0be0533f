"""`mfs-laxity`: our single effective-laxity variant of MFS (DESIGN section 2).

One signal for every stage: the request's effective laxity
    L_hat(t) = D - t - W(t),   W = remaining bytes at the reference rate + remaining compute,
evaluated per packet in the kernel as MODE_LAXITY: metric = base + sent * ps_per_byte - now with
    base = D - W(decision) - (bytes the flow had already sent at decision, at the ref rate),
so sending at the reference rate keeps L_hat constant, waiting lowers it (promotion). Thresholds
are on L_hat in ns; a smaller laxity is more urgent. D is the request's deadline; for batch
flows (kv_fetch, collective of a request with a batch) it is the batch's Robust Effective
Deadline (`use_red`). Hopeless requests go to the scavenger level. F_MONOTONIC: a live flow is
only ever promoted.

Reference layout (K = 8, default thresholds): L_hat < 10 ms -> 0, < 25 ms -> 1, < 50 ms -> 2,
< 100 ms -> 3, < 250 ms -> 4, otherwise 5 (deferred); 7 scavenger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..entry import FlowEntry, ps_per_byte
from ..layout import F_MONOTONIC, MODE_LAXITY
from ..model import Flow, Request, Stage
from .base import Policy, PolicyConfig
from .levels import build_table, int_levels, int_thresholds, layout, make_entry, ms, spread_levels, static_table
from .red import red
from .work import bytes_ns, check_estimator, hopeless, work_ahead_ns

DEFAULT_LAXITY_THRESHOLDS_NS = (10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000)


@dataclass(slots=True)
class MfsLaxityConfig(PolicyConfig):
    """Configuration of `mfs-laxity` (all keys optional; see docs/policy.md)."""

    laxity_thresholds_ns: tuple[int, ...] = DEFAULT_LAXITY_THRESHOLDS_NS  # ascending L_hat, ns
    laxity_levels: tuple[int, ...] | None = None  # level per laxity interval; None: 0, 1, ...
    estimator: str = "request"  # work estimator (mfs_tc.policy.work)
    use_red: bool = True  # batch flows take their batch's RED as the deadline
    scavenger: bool = True
    hopeless_margin_ns: int = 0

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        self.laxity_thresholds_ns = int_thresholds(self.laxity_thresholds_ns, "laxity_thresholds_ns", positive=False)
        self.laxity_levels = int_levels(self.laxity_levels, "laxity_levels")
        check_estimator(self.estimator)


def effective_deadline(request: Request, stage: Stage, use_red: bool) -> int:
    """The request's deadline, or for a batch flow its batch's RED."""
    batch = request.batch
    if use_red and stage.name != "p2d" and batch is not None and batch.deadlines_ns:
        return red(batch.deadlines_ns)
    return request.deadline_ns


class MfsLaxityPolicy(Policy[MfsLaxityConfig]):
    name = "mfs-laxity"
    config_class = MfsLaxityConfig

    def __init__(self, config: MfsLaxityConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.ps = ps_per_byte(c.ref_rate_bps)
        th = c.laxity_thresholds_ns
        self.table = build_table(MODE_LAXITY, th, c.laxity_levels, c.nlevels, "laxity_levels", spread_levels(len(th)))

    def is_hopeless(self, request: Request, now_ns: int) -> bool:
        if not self.config.scavenger:
            return False
        return hopeless(request, now_ns, self.ps, self.config.hopeless_margin_ns)

    def base_ns(self, request: Request, stage: Stage, flow: Flow) -> int:
        """D - W - (already sent bytes at the ref rate): L_hat at sent = flow.sent, now = 0."""
        work = work_ahead_ns(self.config.estimator, request, stage, flow, self.ps)
        deadline = effective_deadline(request, stage, self.config.use_red)
        return deadline - work - bytes_ns(flow.sent, self.ps)

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        base = self.base_ns(request, stage, flow)
        if self.is_hopeless(request, now_ns) or (
            self.config.scavenger and base + bytes_ns(flow.sent, self.ps) - now_ns + self.config.hopeless_margin_ns < 0
        ):
            return make_entry(request, stage, flow, now_ns, static_table(self.config.scavenger_level))
        return make_entry(request, stage, flow, now_ns, self.table, flags=F_MONOTONIC, deadline_ns=base, ps=self.ps)

    def describe(self) -> dict[str, Any]:
        c = self.config
        rows = self.table.rows("all stages", ms, "L_hat")
        return {
            "policy": self.name,
            "levels": c.nlevels,
            "default_level": c.nlevels - 2,  # the datapath's default for unknown payload
            "scavenger_level": c.scavenger_level,
            "ref_rate_bps": c.ref_rate_bps,
            "ref_ns_per_byte": self.ps / 1000,
            "mode": "laxity",
            "flags": ["monotonic"],
            "metric": "L_hat = deadline - now - work ahead (remaining bytes at ref rate + compute)",
            "deadline": "request deadline; batch flows: the batch's RED" if c.use_red else "request deadline",
            "estimator": c.estimator,
            "thresholds_ms": [t / 1e6 for t in self.table.thresholds],
            "table_levels": list(self.table.levels),
            "scavenger": {
                "enabled": c.scavenger,
                "hopeless_when": "deadline - now + margin < work ahead",
                "margin_ms": c.hopeless_margin_ns / 1e6,
            },
            "layout": layout(c.nlevels, rows, scavenger="scavenger: requests that can no longer meet their SLO"),
        }
