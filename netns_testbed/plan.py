"""What the testbed replays: the workload's own plan types, nothing of its own.

Requests are `mfs_tc.workload.RequestSpec`s and every batch is a `BatchPlan` (its `LayerPlan`s
and `Transfer`s), made by the workload's `form_batch` and `plan_batch` for a generated workload
(`scenario_from_workload`) or by hand for purpose-made cases (`scenarios.py`, the tests). A
transfer's stage is where it stands in the plan (a layer's kv_fetch or collective, or a
request's p2d), its target layer the layer it stands in (p2d: the layer count).

Dependencies (DESIGN section 1, as `mfs_tc.workload.batching` states them): every kv_fetch flow
of a batch starts when the batch starts; layer g's compute waits for layer g's kv_fetch flows
(and for layer g-1's collective); layer g's collective starts after its compute, and layer g+1
waits for it; after the last collective each request's p2d flows start, and one decode step
after they end the request has its first token. The prefill group takes its next batch once the
last collective is done (p2d overlaps it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mfs_tc.workload import BatchPlan, RequestSpec, Workload, form_batch, plan_batch, request_estimate

# form a batch from a group's queue (returns the members taken, in queue order)
Batcher = Callable[[Sequence[RequestSpec]], list[RequestSpec]]
# the plan of a batch of these members
Planner = Callable[[Sequence[RequestSpec]], BatchPlan]


@dataclass(frozen=True, slots=True)
class ArrivalEstimate:
    """What a serving process knows of a request when it arrives, before it is batched: the work
    ahead of it alone (its batch-of-one plan through the one estimator, from layer 0) and its
    layer count. Later estimates come from the plan of the batch it is in."""

    remaining_bytes: int
    remaining_compute_s: float
    num_layers: int


@dataclass(slots=True)
class ReplayScenario:
    """Everything one replay needs besides the topology and the policy."""

    requests: list[RequestSpec]
    batcher: Batcher
    planner: Planner
    link_rate_bps: float  # the rate the arrival estimates are made at (the topology's)
    name: str = "custom"
    meta: dict[str, Any] = field(default_factory=dict)
    arrival_estimates: dict[int, ArrivalEstimate] = field(init=False)

    def __post_init__(self) -> None:
        ids = [r.request_id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique")
        if any(r <= 0 for r in ids):
            raise ValueError("request ids must be positive (0 means none in the maps)")
        for r in self.requests:
            if r.slo_s <= 0:
                raise ValueError(f"request {r.request_id}: SLO must be positive")
            if r.arrival_s < 0:
                raise ValueError(f"request {r.request_id}: arrival must not be negative")
        self.requests.sort(key=lambda r: (r.arrival_s, r.request_id))
        self.arrival_estimates = {r.request_id: self._alone(r) for r in self.requests}

    def _alone(self, spec: RequestSpec) -> ArrivalEstimate:
        solo = self.planner([spec])
        nbytes, compute_ns = request_estimate(solo, spec.request_id, 0, self.link_rate_bps)
        return ArrivalEstimate(nbytes, compute_ns / 1e9, len(solo.layers))


def check_plan(plan: BatchPlan) -> None:
    """A plan the testbed can replay: no transfer to its own sender, none of negative size."""
    layers = [
        (f"layer {lp.layer} {stage}", ts)
        for lp in plan.layers
        for stage, ts in (("kv_fetch", lp.kv_fetch), ("collective", lp.collective))
    ]
    for what, ts in [*layers, *((f"request {rid} p2d", ts) for rid, ts in plan.p2d.items())]:
        for t in ts:
            if t.bytes < 0:
                raise ValueError(f"{what}: transfer bytes must not be negative ({t.bytes})")
            if t.src == t.dst:
                raise ValueError(f"{what}: transfer from {t.src} to itself")


def fifo_batcher(max_batch: int) -> Batcher:
    def take(queue: Sequence[RequestSpec]) -> list[RequestSpec]:
        return list(queue[:max_batch])

    return take


def scenario_from_workload(wl: Workload) -> ReplayScenario:
    """A generated workload as the testbed replays it: the workload's requests, its `form_batch`
    rule and its `plan_batch` plans (the simulator replays the same objects)."""
    cfg = wl.cfg
    return ReplayScenario(
        list(wl.requests),
        partial(form_batch, max_batch=cfg.max_batch, max_batch_tokens=cfg.max_batch_tokens),
        partial(plan_batch, model=wl.model, cluster=wl.cluster),
        link_rate_bps=wl.cluster.link_rate_bps,
        name=f"{cfg.kind}",
        meta=wl.summary(),
    )
