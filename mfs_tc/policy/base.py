"""The policy interface: (request, stage, flow, now) -> flow entry.

A policy turns what is known of a request, one of its stages and one flow of that stage into the
`FlowEntry` the classifier evaluates per packet. Entries that depend on time, bytes sent or the
request's layer cursor (modes mlu, rli, laxity, sent, remaining) keep re-levelling themselves in
the kernel with no controller action; a policy is asked again only when the serving process
updates its estimates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, cast

from typing_extensions import TypeVar

from ..entry import FlowEntry
from ..layout import MAX_LEVELS
from ..model import Flow, Request, Stage


@dataclass(slots=True)
class PolicyConfig:
    """What every policy shares. Policies add their own fields in subclasses."""

    nlevels: int = MAX_LEVELS  # K strict-priority levels, 0 most urgent
    ref_rate_bps: float = 200e6  # reference (bottleneck) rate for byte -> time conversions

    def __post_init__(self) -> None:
        if not 2 <= self.nlevels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 2..{MAX_LEVELS}, got {self.nlevels}")
        if self.ref_rate_bps <= 0:
            raise ValueError("reference rate must be positive")

    @property
    def scavenger_level(self) -> int:
        return self.nlevels - 1


# a policy's configuration class (Policy[MfsConfig] reads an MfsConfig); bare `Policy` is any
C = TypeVar("C", bound=PolicyConfig, covariant=True, default=PolicyConfig)


class Policy(ABC, Generic[C]):
    name: ClassVar[str] = ""
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig  # the configuration this policy reads
    config: C

    def __init__(self, config: C | None = None) -> None:
        cfg: Any = self.config_class() if config is None else config
        if not isinstance(cfg, self.config_class):
            raise ValueError(
                f"policy {self.name or type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(cfg).__name__}: build it with mfs_tc.policy.make_policy(name, **keys)"
            )
        self.config = cast(C, cfg)  # (an instance of config_class, which is C's)

    # True: entry() reads only what stays fixed for one flow (ids, sizes, deadlines, arrival,
    # batch, stage, layer), never now_ns, flow.sent or the request's cursor, estimates, RED rank
    # or scavenged flag; so entry_key() is () and a caller asking again gets an equal entry
    fixed_entry: ClassVar[bool] = False

    @property
    def entry_key_per_request(self) -> bool:
        """True: entry_key reads of the stage only its name and nothing of the flow, so one key
        serves every flow of one stage of a request at one instant (callers may share it)."""
        return False

    @abstractmethod
    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        """The map entry for `flow` of `stage` of `request`, decided at `now_ns`."""

    def entry_key(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> Hashable | None:
        """For callers that ask again and again for the same flow (the simulator re-asks every
        live flow of a batch at each layer boundary and RED re-ranking): a value such that, for
        one flow (the same request, stage and flow, whose fixed fields stay as they were), two
        calls returning equal keys get entries from `entry` equal in every field but the
        bookkeeping stamps `created_ns` and `sent_bytes`; the caller may then keep the entry it
        has. It must be cheaper than `entry`, and not read `flow.true_remaining_work_ns` (the
        oracle's input to `entry`; a caller may leave it stale here). None (the default, unless
        `fixed_entry`): no promise, ask `entry`. tests/test_sim.py checks the promise (and
        `entry_key_per_request`) for every policy."""
        return () if self.fixed_entry else None

    def is_hopeless(self, request: Request, now_ns: int) -> bool:
        """True when the request should go to the scavenger level (only MFS-style policies)."""
        return False

    def p2d_admission(self) -> bool:
        """True when the p2d stages a decode link cannot carry in time should be given up to the
        scavenger level by whoever sees them all (policy.admission.moore_hodgson)."""
        return False

    def describe(self) -> dict[str, Any]:
        """Thresholds and level layout, for `mfs-tc policy show`."""
        return {"policy": self.name, "levels": self.config.nlevels}
