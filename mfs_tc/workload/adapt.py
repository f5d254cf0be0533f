"""Turn workload specs into the policy inputs of `mfs_tc.model`, the same in testbed and simulator.

Estimates given to policies (what a serving process knows from its plan, not the oracle's truth)
come from the one estimator, `workload.estimate.work_ahead`: the request's critical path from the
batch's compute cursor on, per bottleneck link (see that module):
- remaining_bytes: the network time on that path as bytes at the link rate;
- remaining_compute_ns: the batch's compute for layers >= cursor plus one decode step.
A batch as a whole (the owner of its kv_fetch and collective flows) has the same prefill path and
every member's p2d (`batch_request`).
"""

from __future__ import annotations

from ..model import Batch, Request
from .batching import BatchPlan
from .estimate import work_ahead
from .spec import RequestSpec


def request_estimate(plan: BatchPlan, request_id: int | None, cursor: int, link_rate_bps: float) -> tuple[int, int]:
    """(remaining_bytes, remaining_compute_ns) of member `request_id` (None: the whole batch)."""
    return work_ahead(plan, request_id, cursor, link_rate_bps).as_estimate(link_rate_bps)


def to_model_request(
    spec: RequestSpec,
    arrival_ns: int,
    plan: BatchPlan | None = None,
    *,
    link_rate_bps: float = 0.0,
    cursor: int = 0,
    batch: Batch | None = None,
    num_layers: int | None = None,
) -> Request:
    """`mfs_tc.model.Request` for `spec`, arrived at `arrival_ns` on the caller's clock
    (CLOCK_MONOTONIC in the testbed, virtual ns in the simulator). Without a plan (not yet
    batched) the estimates are zero; with one, `link_rate_bps` is the host link rate."""
    slo_ns = max(1, int(round(spec.slo_s * 1e9)))
    if plan is None:
        return Request(
            request_id=spec.request_id,
            arrival_ns=arrival_ns,
            slo_ns=slo_ns,
            num_layers=num_layers or 1,
            cursor=cursor,
            batch=batch,
        )
    nbytes, compute_ns = request_estimate(plan, spec.request_id, cursor, link_rate_bps)
    return Request(
        request_id=spec.request_id,
        arrival_ns=arrival_ns,
        slo_ns=slo_ns,
        num_layers=num_layers or len(plan.layers),
        cursor=cursor,
        remaining_bytes=nbytes,
        remaining_compute_ns=compute_ns,
        batch=batch,
    )


def batch_of(batch_id: int, members: list[RequestSpec], arrival_ns_of: dict[int, int]) -> Batch:
    """A `mfs_tc.model.Batch` (for RED) from the members and their arrival times in ns."""
    return Batch(
        batch_id=batch_id,
        deadlines_ns=sorted(arrival_ns_of[m.request_id] + int(round(m.slo_s * 1e9)) for m in members),
    )
