"""The one work estimator: W_r(t) of DESIGN section 1, per bottleneck link, from a batch's plan.

Used by the simulator, the netns testbed and (through `Request.remaining_bytes` /
`remaining_compute_ns`) every policy. What it computes, from compute layer `cursor` on, with each
stage's transfers at the link rate and nothing else on the network:

- per layer g >= cursor: kv_fetch of g takes its most loaded host link (kv_fetch of all layers
  start together, so they queue behind each other on that link: `kv_done += t_kv(g)`); the
  layer's compute starts when its kv_fetch and the previous layer's collective are done; its
  collective takes its most loaded host link. (The recurrence of `BatchPlan.ideal_ttft_s`.)
- then p2d: the most loaded host link of the p2d transfers counted (one request's own, or every
  member's for a batch), then the decode step.

So the bytes are counted per link (a ring all-reduce's G ranks send in parallel, and a p2d stage's
G flows share the decode host's downlink), never summed over parallel links: the old
"sum every byte, divide by one link's rate" overestimated W about G x on collectives.

The result is expressed the way a serving process hands it to the controller:
`remaining_compute_ns` (compute and decode step still ahead) and `remaining_bytes`, the
bytes-equivalent at the link rate of the network time on the critical path (W - compute), so that
`remaining_bytes * ps_per_byte + remaining_compute_ns` (what the policies compute) is W.
Host links only: a leaf-spine fabric's oversubscribed uplinks are not modelled here (the estimate
is the unloaded critical path, a lower bound on the true work ahead).
"""

from __future__ import annotations

from dataclasses import dataclass

from .batching import BatchPlan, prefill_path_s


@dataclass(frozen=True, slots=True)
class WorkAhead:
    """Work still ahead of a request (or a batch) on an idle network, in seconds."""

    network_s: float  # network time on the critical path (not overlapped by compute)
    compute_s: float  # compute of the layers still ahead plus the decode step

    @property
    def total_s(self) -> float:
        return self.network_s + self.compute_s

    def as_estimate(self, link_rate_bps: float) -> tuple[int, int]:
        """(remaining_bytes, remaining_compute_ns) for `Request` / `update_estimate`."""
        return (int(round(self.network_s * link_rate_bps / 8.0)), int(round(self.compute_s * 1e9)))


def work_ahead(plan: BatchPlan, request_id: int | None, cursor: int, link_rate_bps: float) -> WorkAhead:
    """W of member `request_id` of `plan` (None: the batch as a whole, every member's p2d) when
    the batch's compute is at layer `cursor` (len(plan.layers): prefill done, p2d ahead)."""
    if link_rate_bps <= 0:
        raise ValueError(f"link rate must be positive, got {link_rate_bps}")
    bps = link_rate_bps / 8.0
    path, compute = prefill_path_s(plan, cursor, bps)
    total = path + plan.p2d_time(request_id, bps) + plan.decode_step_s
    compute += plan.decode_step_s
    return WorkAhead(network_s=max(total - compute, 0.0), compute_s=compute)
