"""What the testbed executes: requests and batch jobs, in host names and seconds.

The workload (mfs_tc.workload) decides requests, batching and bytes; `workload_adapter` turns its
objects into these. Tests build them by hand for purpose-made contention cases.

Dependencies (DESIGN section 1): every kv_fetch flow of a batch starts when the batch starts;
layer g's compute waits for layer g's kv_fetch flows (and for layer g-1's collective); layer g's
collective starts after its compute, and layer g+1 waits for it; after the last collective each
request's p2d flows start, and one decode step after they end the request has its first token.
The prefill group takes its next batch once the last collective is done (p2d overlaps it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mfs_tc.model import STAGES
from mfs_tc.workload import BatchPlan, LayerPlan
from mfs_tc.workload import Transfer as WTransfer


@dataclass(frozen=True, slots=True)
class Transfer:
    """One TCP flow of `nbytes` from host `src` to host `dst`."""

    stage: str
    src: str
    dst: str
    nbytes: int
    target_layer: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}")
        if self.nbytes < 0:
            raise ValueError("transfer bytes must not be negative")
        if self.src == self.dst:
            raise ValueError(f"transfer from {self.src} to itself")


@dataclass(frozen=True, slots=True)
class LayerJob:
    kv_fetch: tuple[Transfer, ...] = ()
    compute_s: float = 0.0
    collective: tuple[Transfer, ...] = ()


@dataclass(frozen=True, slots=True)
class BatchJob:
    batch_id: int
    group: int
    request_ids: tuple[int, ...]
    layers: tuple[LayerJob, ...]
    p2d: dict[int, tuple[Transfer, ...]]  # request id -> its p2d flows
    decode_step_s: float = 0.0

    @property
    def intended_bytes(self) -> int:
        n = sum(t.nbytes for lj in self.layers for t in (*lj.kv_fetch, *lj.collective))
        return n + sum(t.nbytes for ts in self.p2d.values() for t in ts)

    def work_plan(self) -> BatchPlan:
        """The job as the workload's `BatchPlan`, for the one work estimator
        (`mfs_tc.workload.estimate`)."""
        def trs(ts: tuple[Transfer, ...]) -> list[WTransfer]:
            return [WTransfer(t.src, t.dst, t.nbytes) for t in ts]
        layers = [LayerPlan(layer=g, kv_fetch=trs(lj.kv_fetch), collective=trs(lj.collective),
                            compute_s=lj.compute_s) for g, lj in enumerate(self.layers)]
        return BatchPlan(group=self.group, ranks=[], members=list(self.request_ids), layers=layers,
                         p2d={rid: trs(ts) for rid, ts in self.p2d.items()},
                         decode_step_s=self.decode_step_s)


@dataclass(slots=True)
class RequestJob:
    """A request as the testbed replays it (times in seconds from the run's start)."""

    request_id: int
    arrival_s: float
    slo_s: float
    prefill_group: int
    unloaded_ttft_s: float = 0.0
    remaining_bytes: int = 0  # estimate of all its bytes (policy input)
    remaining_compute_s: float = 0.0  # estimate of its compute + decode step (policy input)
    num_layers: int = 1
    spec: object = None  # the workload's RequestSpec, handed back to the planner

    def __post_init__(self) -> None:
        if self.slo_s <= 0:
            raise ValueError(f"request {self.request_id}: SLO must be positive")
        if self.arrival_s < 0:
            raise ValueError(f"request {self.request_id}: arrival must not be negative")


# form a batch from a group's queue (returns the members taken, in queue order)
Batcher = Callable[[Sequence[RequestJob]], list[RequestJob]]
# turn a batch's members into its job
Planner = Callable[[int, int, Sequence[RequestJob]], BatchJob]


@dataclass(slots=True)
class Scenario:
    """Everything one replay needs besides the topology and the policy."""

    requests: list[RequestJob]
    batcher: Batcher
    planner: Planner
    name: str = "custom"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [r.request_id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request ids must be unique")
        if any(r <= 0 for r in ids):
            raise ValueError("request ids must be positive (0 means none in the maps)")
        self.requests.sort(key=lambda r: (r.arrival_s, r.request_id))


def fifo_batcher(max_batch: int) -> Batcher:
    def take(queue: Sequence[RequestJob]) -> list[RequestJob]:
        return list(queue[:max_batch])

    return take
