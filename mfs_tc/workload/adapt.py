"""Turn workload specs into the policy inputs of `mfs_tc.model`, the same in testbed and simulator.

Estimates given to policies (what a serving process knows, not the oracle's truth):
- remaining_bytes: the request's share of its batch's bytes still to move, i.e. its kv_fetch
  bytes for layers >= cursor, the batch's collective bytes for layers >= cursor divided by the
  batch size, and its p2d bytes;
- remaining_compute_ns: the batch's compute for layers >= cursor plus one decode step.
"""

from __future__ import annotations

from .batching import BatchPlan
from .spec import RequestSpec
from ..model import Batch, Request


def request_bytes(spec: RequestSpec, plan: BatchPlan, from_layer: int = 0) -> int:
    rid = spec.request_id
    n = max(len(plan.members), 1)
    total = 0
    for lp in plan.layers[from_layer:]:
        for t in lp.kv_fetch:
            if rid in t.request_ids:
                total += t.bytes // max(len(t.request_ids), 1)
        total += sum(t.bytes for t in lp.collective) // n
    total += sum(t.bytes for t in plan.p2d.get(rid, []))
    return total


def to_model_request(
    spec: RequestSpec,
    arrival_ns: int,
    plan: BatchPlan | None = None,
    *,
    cursor: int = 0,
    batch: Batch | None = None,
    num_layers: int | None = None,
    decode_step_s: float | None = None,
) -> Request:
    """`mfs_tc.model.Request` for `spec`, arrived at `arrival_ns` on the caller's clock
    (CLOCK_MONOTONIC in the testbed, virtual ns in the simulator). Without a plan (not yet
    batched) the estimates are zero."""
    slo_ns = max(1, int(round(spec.slo_s * 1e9)))
    if plan is None:
        return Request(
            request_id=spec.request_id, arrival_ns=arrival_ns, slo_ns=slo_ns,
            num_layers=num_layers or 1, cursor=cursor, batch=batch,
        )
    layers = len(plan.layers)
    compute_s = sum(lp.compute_s for lp in plan.layers[cursor:])
    compute_s += plan.decode_step_s if decode_step_s is None else decode_step_s
    return Request(
        request_id=spec.request_id,
        arrival_ns=arrival_ns,
        slo_ns=slo_ns,
        num_layers=num_layers or layers,
        cursor=cursor,
        remaining_bytes=request_bytes(spec, plan, cursor),
        remaining_compute_ns=int(round(compute_s * 1e9)),
        batch=batch,
    )


def batch_of(batch_id: int, members: list[RequestSpec], arrival_ns_of: dict[int, int]) -> Batch:
    """A `mfs_tc.model.Batch` (for RED) from the members and their arrival times in ns."""
    return Batch(
        batch_id=batch_id,
        deadlines_ns=sorted(arrival_ns_of[m.request_id] + int(round(m.slo_s * 1e9)) for m in members),
    )
