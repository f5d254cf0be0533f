"""The scheduling model of DESIGN.md section 1, as plain data the policies read.

Times are integer nanoseconds of CLOCK_MONOTONIC (`time.monotonic_ns()`), the clock the
classifier reads with bpf_ktime_get_ns(). The testbed and the simulator fill the same objects
(the simulator with its own virtual clock), so one policy object serves the kernel, the testbed
and the simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .layout import FlowKey

STAGES = ("kv_fetch", "collective", "p2d")


def check_stage(name: str) -> str:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}: expected one of {', '.join(STAGES)}")
    return name


@dataclass(slots=True)
class Batch:
    """Requests prefilled together on one prefill group; they share kv_fetch and collective
    flows. `deadlines_ns` are the member requests' deadlines (for RED)."""

    batch_id: int
    deadlines_ns: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Request:
    """What a policy knows of a request at decision time."""

    request_id: int
    arrival_ns: int
    slo_ns: int
    num_layers: int = 1
    cursor: int = 0  # compute layer the request (its batch) is at
    remaining_bytes: int = 0  # estimate of bytes still to move for this request, all stages
    remaining_compute_ns: int = 0  # estimate of compute still ahead (layers left + decode step)
    batch: Batch | None = None
    scavenged: bool = False
    # RED rank among the batches (and single requests) in prefill now: (rank, how many), rank 0
    # the tightest (policy.red.red_ranks); None: not ranked
    red_rank: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.slo_ns <= 0:
            raise ValueError(f"SLO must be positive, got {self.slo_ns} ns")
        if self.remaining_bytes < 0 or self.remaining_compute_ns < 0:
            raise ValueError("remaining work must not be negative")

    @property
    def deadline_ns(self) -> int:
        return self.arrival_ns + self.slo_ns


@dataclass(slots=True)
class Stage:
    name: str
    bytes: int = 0  # bytes of the whole stage (all its flows)
    compute_after_ns: int = 0  # compute that follows this stage before the first token
    layer: int | None = None  # layer the stage feeds (kv_fetch, collective)

    def __post_init__(self) -> None:
        check_stage(self.name)
        if self.bytes < 0:
            raise ValueError(f"stage bytes must not be negative, got {self.bytes}")


@dataclass(slots=True)
class Flow:
    bytes: int
    target_layer: int = 0
    key: FlowKey | None = None
    sent: int = 0  # bytes already sent when the decision is made
    true_remaining_work_ns: int | None = None  # only the testbed/simulator oracle knows this

    def __post_init__(self) -> None:
        if self.bytes < 0:
            raise ValueError(f"flow bytes must not be negative, got {self.bytes}")


# ---- the one batch rule (the controller's BatchHandle, the simulator and, through the
# controller, the testbed all use it) ----------------------------------------------------------
def batch_request(
    request_id: int, members: Sequence[Request], *, remaining_bytes: int, remaining_compute_ns: int, batch: Batch | None
) -> Request:
    """What a batch's kv_fetch and collective flows belong to: a request with the tightest
    member's arrival and SLO (equal deadlines: the lowest request id), as many layers as its
    longest member, the batch's work ahead as the caller estimates it, and the members'
    deadlines in `batch` (for RED). It is scavenged only when `batch_hopeless` says so."""
    if not members:
        raise ValueError("a batch needs at least one member")
    tight = min(members, key=lambda r: (r.deadline_ns, r.request_id))
    return Request(
        request_id=request_id,
        arrival_ns=tight.arrival_ns,
        slo_ns=tight.slo_ns,
        num_layers=max(r.num_layers for r in members),
        cursor=0,
        remaining_bytes=remaining_bytes,
        remaining_compute_ns=remaining_compute_ns,
        batch=batch,
    )


def batch_hopeless(members: Iterable[Request], hopeless: Callable[[Request], bool]) -> bool:
    """A batch gives up only when every member is scavenged or hopeless: its flows serve them
    all, so one feasible member keeps them at their levels."""
    return all(m.scavenged or hopeless(m) for m in members)
