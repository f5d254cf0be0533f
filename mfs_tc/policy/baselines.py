"""Baselines (DESIGN section 2), each one small class: (request, stage, flow, now) -> entry.

The paper's:
  fair    one static level for everything: TCP fair sharing.
  sjf     static level by flow size (smaller flow, higher level; pFabric-like, size known).
  edf     MODE_LAXITY with no rate term: metric = deadline - now, promoted as the deadline nears.
          Batch flows take the earliest deadline of their batch.
  karuna  deadline flows (p2d) in the top queues, earliest deadline first; the others below,
          demoted by bytes sent (MODE_SENT, PIAS-like).
Ours:
  fifo    MODE_LAXITY with base = arrival: metric = -(age); older requests are more urgent.
  srpt    MODE_REMAINING: level by bytes still to send; promoted as the flow drains.
  pias    MODE_SENT: MLFQ, start at the top and demote by bytes sent (size unknown).
  stage   static level by stage: collective > kv_fetch > p2d.
  llf-oracle  MODE_LAXITY with the true per-bottleneck work ahead (flow.true_remaining_work_ns,
          which only the testbed and simulator know), rate term per stage, and admission: a
          request whose true laxity is negative goes to the scavenger level. A strong baseline,
          not a bound (LLF is not optimal with several bottlenecks or in overload).
Only llf-oracle scavenges; for the others is_hopeless is always False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..entry import FlowEntry, ps_per_byte
from ..layout import MODE_LAXITY, MODE_REMAINING, MODE_SENT, MODE_STATIC
from ..model import Flow, Request, Stage
from .base import Policy, PolicyConfig
from .laxity import DEFAULT_LAXITY_THRESHOLDS_NS
from .levels import (
    REF_TOP,
    LevelTable,
    build_table,
    check_level,
    int_levels,
    int_thresholds,
    layout,
    make_entry,
    ms,
    nbytes,
    spread_levels,
    squeeze,
    static_table,
)
from .mfs import stage_ps
from .work import bytes_ns, hopeless

KiB, MiB = 1 << 10, 1 << 20
DEFAULT_SIZE_THRESHOLDS = (64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB)
DEFAULT_KARUNA_THRESHOLDS = (64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB)
DEFAULT_DEADLINE_THRESHOLDS_NS = tuple(x * 1_000_000 for x in (50, 100, 200, 500, 1000, 2000))
DEFAULT_AGE_THRESHOLDS_NS = tuple(x * 1_000_000 for x in (10, 50, 100, 200, 500, 1000))
NO_SCAVENGER = "scavenger: unused by this policy"


def _static(level: int) -> LevelTable:
    return static_table(level)


def _header(policy: Policy) -> dict[str, Any]:
    c = policy.config
    return {
        "policy": policy.name,
        "levels": c.nlevels,
        "default_level": c.nlevels - 2,  # the datapath's default for unknown payload
        "scavenger_level": c.scavenger_level,
        "ref_rate_bps": c.ref_rate_bps,
    }


# ---- fair ------------------------------------------------------------------------------------
@dataclass(slots=True)
class FairConfig(PolicyConfig):
    level: int = 0  # the one level every flow uses

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        check_level(self.level, self.nlevels, "level")


class FairPolicy(Policy[FairConfig]):
    name = "fair"
    fixed_entry = True  # Policy.entry_key
    config_class = FairConfig

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        return make_entry(request, stage, flow, now_ns, _static(self.config.level))

    def describe(self) -> dict[str, Any]:
        lv = self.config.level
        return _header(self) | {
            "mode": "static",
            "level": lv,
            "layout": layout(self.config.nlevels, [(lv, "every flow")], scavenger=NO_SCAVENGER),
        }


# ---- size based: sjf, srpt, pias -------------------------------------------------------------
@dataclass(slots=True)
class SizeConfig(PolicyConfig):
    size_thresholds: tuple[int, ...] = DEFAULT_SIZE_THRESHOLDS  # ascending bytes
    size_levels: tuple[int, ...] | None = None  # level per size interval; None: 0, 1, ... (K-2)

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        self.size_thresholds = int_thresholds(self.size_thresholds, "size_thresholds")
        self.size_levels = int_levels(self.size_levels, "size_levels")


class _SizePolicy(Policy[SizeConfig]):
    fixed_entry = True  # Policy.entry_key
    config_class = SizeConfig
    mode = MODE_STATIC
    metric = "size"

    def __init__(self, config: SizeConfig | None = None) -> None:
        super().__init__(config)
        th = self.config.size_thresholds
        self.table = build_table(
            self.mode,  # sjf: a static lookup table evaluated here, not in the kernel
            th,
            self.config.size_levels,
            self.config.nlevels,
            "size_levels",
            spread_levels(len(th)),
        )

    def describe(self) -> dict[str, Any]:
        rows = self.table.rows("every flow", nbytes, self.metric)
        return _header(self) | {
            "mode": {MODE_STATIC: "static", MODE_REMAINING: "remaining", MODE_SENT: "sent"}[self.mode],
            "metric": self.metric,
            "thresholds_bytes": list(self.table.thresholds),
            "table_levels": list(self.table.levels),
            "layout": layout(self.config.nlevels, rows, scavenger=NO_SCAVENGER),
        }


class SjfPolicy(_SizePolicy):
    """Smallest flow first: a static level from the flow's total size."""

    name = "sjf"
    metric = "flow size"

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        return make_entry(request, stage, flow, now_ns, _static(self.table.level_for(flow.bytes)))


class SrptPolicy(_SizePolicy):
    """Shortest remaining first: the kernel re-levels by bytes still to send."""

    name = "srpt"
    mode = MODE_REMAINING
    metric = "remaining bytes"

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        return make_entry(request, stage, flow, now_ns, self.table)


class PiasPolicy(_SizePolicy):
    """PIAS MLFQ: every flow starts at the top, demoted as its bytes sent cross thresholds."""

    name = "pias"
    mode = MODE_SENT
    metric = "bytes sent"

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        return make_entry(request, stage, flow, now_ns, self.table)


# ---- karuna ----------------------------------------------------------------------------------
DEFAULT_KARUNA_DEADLINE_THRESHOLDS_NS = tuple(x * 1_000_000 for x in (100, 500))
KARUNA_DEADLINE_LEVELS = 3  # the top queues of the K = 8 layout that deadline flows use


@dataclass(slots=True)
class KarunaConfig(PolicyConfig):
    """Karuna (Chen et al., SIGCOMM'16) in strict-priority levels: deadline flows (p2d: the only
    stage with an explicit deadline) in the top queues, ordered by their deadline (earliest
    first: `deadline_thresholds_ns` on deadline - now, over levels 0..2); flows without a deadline
    (kv_fetch, collective: size not announced to the network) below them, demoted PIAS-like by
    bytes sent (`sent_thresholds` over levels 3..K-2). Karuna's deadline flows use MCP, a rate
    control that sends at the rate just needed to meet the deadline; strict priority has no rate
    control, so here they take their queue's share (what Karuna's own deployment falls back to
    without MCP: deadline flows first, EDF among them)."""

    deadline_thresholds_ns: tuple[int, ...] = DEFAULT_KARUNA_DEADLINE_THRESHOLDS_NS
    deadline_levels: tuple[int, ...] | None = None  # None: 0, 1, 2 (squeezed for K < 8)
    sent_thresholds: tuple[int, ...] = DEFAULT_KARUNA_THRESHOLDS  # ascending bytes sent
    sent_levels: tuple[int, ...] | None = None  # None: 3, 4, ... below the deadline flows

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        self.deadline_thresholds_ns = int_thresholds(self.deadline_thresholds_ns, "deadline_thresholds_ns", positive=False)
        self.deadline_levels = int_levels(self.deadline_levels, "deadline_levels")
        self.sent_thresholds = int_thresholds(self.sent_thresholds, "sent_thresholds")
        self.sent_levels = int_levels(self.sent_levels, "sent_levels")


class KarunaPolicy(Policy[KarunaConfig]):
    name = "karuna"
    fixed_entry = True  # Policy.entry_key
    config_class = KarunaConfig

    def __init__(self, config: KarunaConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        dth = c.deadline_thresholds_ns
        top = KARUNA_DEADLINE_LEVELS - 1
        self.deadline_table = build_table(
            MODE_LAXITY, dth, c.deadline_levels, c.nlevels, "deadline_levels", spread_levels(len(dth), top)
        )
        th = c.sent_thresholds
        below = max(self.deadline_table.levels) + 1
        ref = tuple(min(below + lv, REF_TOP) for lv in spread_levels(len(th), REF_TOP - below))
        if c.sent_levels is None:
            # squeeze the deadline rows and the sent rows alike, then keep the non-deadline
            # flows strictly below every deadline level whatever the squeeze did
            floor = min(max(self.deadline_table.levels) + 1, c.nlevels - 2)
            lv = tuple(max(squeeze(x, c.nlevels), floor) for x in ref)
            self.table = LevelTable(MODE_SENT, th, lv)
        else:
            self.table = LevelTable(MODE_SENT, th, c.sent_levels)
        self.table.check(c.nlevels, "sent_levels")

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        if stage.name == "p2d":
            deadline = request.deadline_ns - stage.compute_after_ns
            return make_entry(request, stage, flow, now_ns, self.deadline_table, deadline_ns=deadline, ps=0)
        return make_entry(request, stage, flow, now_ns, self.table)

    def describe(self) -> dict[str, Any]:
        c = self.config
        rows = self.deadline_table.rows("p2d (deadline flows)", ms, "deadline - now")
        rows += self.table.rows("kv_fetch, collective", nbytes, "bytes sent")
        return _header(self) | {
            "stages": {
                "p2d": {
                    "mode": "laxity",
                    "metric": "p2d deadline - now",
                    "thresholds_ms": [t / 1e6 for t in self.deadline_table.thresholds],
                    "levels": list(self.deadline_table.levels),
                },
                "kv_fetch": {"mode": "sent", "thresholds_bytes": list(self.table.thresholds), "levels": list(self.table.levels)},
                "collective": {
                    "mode": "sent",
                    "thresholds_bytes": list(self.table.thresholds),
                    "levels": list(self.table.levels),
                },
            },
            "layout": layout(c.nlevels, rows, scavenger=NO_SCAVENGER),
        }


# ---- edf -------------------------------------------------------------------------------------
@dataclass(slots=True)
class EdfConfig(PolicyConfig):
    deadline_thresholds_ns: tuple[int, ...] = DEFAULT_DEADLINE_THRESHOLDS_NS  # ascending time to deadline
    deadline_levels: tuple[int, ...] | None = None  # None: 0, 1, ... (K-2)

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        self.deadline_thresholds_ns = int_thresholds(self.deadline_thresholds_ns, "deadline_thresholds_ns", positive=False)
        self.deadline_levels = int_levels(self.deadline_levels, "deadline_levels")


class EdfPolicy(Policy[EdfConfig]):
    name = "edf"
    fixed_entry = True  # Policy.entry_key
    config_class = EdfConfig

    def __init__(self, config: EdfConfig | None = None) -> None:
        super().__init__(config)
        th = self.config.deadline_thresholds_ns
        self.table = build_table(
            MODE_LAXITY,
            th,
            self.config.deadline_levels,
            self.config.nlevels,
            "deadline_levels",
            spread_levels(len(th)),
        )

    @staticmethod
    def deadline(request: Request, stage: Stage) -> int:
        """The request's deadline; a batch flow serves its whole batch: the earliest one."""
        batch = request.batch
        if stage.name != "p2d" and batch is not None and batch.deadlines_ns:
            return min(min(batch.deadlines_ns), request.deadline_ns)
        return request.deadline_ns

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        return make_entry(request, stage, flow, now_ns, self.table, deadline_ns=self.deadline(request, stage), ps=0)

    def describe(self) -> dict[str, Any]:
        rows = self.table.rows("every flow", ms, "deadline - now")
        return _header(self) | {
            "mode": "laxity",
            "metric": "deadline - now (batch flows: earliest deadline of the batch)",
            "thresholds_ms": [t / 1e6 for t in self.table.thresholds],
            "table_levels": list(self.table.levels),
            "layout": layout(self.config.nlevels, rows, scavenger=NO_SCAVENGER),
        }


# ---- fifo ------------------------------------------------------------------------------------
@dataclass(slots=True)
class FifoConfig(PolicyConfig):
    age_thresholds_ns: tuple[int, ...] = DEFAULT_AGE_THRESHOLDS_NS  # ascending request ages
    age_levels: tuple[int, ...] | None = None  # level when the age exceeds exactly i thresholds

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        self.age_thresholds_ns = int_thresholds(self.age_thresholds_ns, "age_thresholds_ns")
        self.age_levels = int_levels(self.age_levels, "age_levels")


class FifoPolicy(Policy[FifoConfig]):
    """First come first served by request arrival: metric = arrival - now = -age (the kernel's
    laxity mode with no rate term), so the table is the age table mirrored."""

    name = "fifo"
    fixed_entry = True  # Policy.entry_key
    config_class = FifoConfig

    def __init__(self, config: FifoConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        ages = c.age_thresholds_ns
        age_levels = c.age_levels
        if age_levels is None:
            age_levels = tuple(squeeze(lv, c.nlevels) for lv in reversed(spread_levels(len(ages))))
        if len(age_levels) != len(ages) + 1:
            raise ValueError(f"age_levels: {len(ages)} age thresholds need {len(ages) + 1} levels")
        # age > a_j  <=>  -age < -a_j: kernel index = #{j: a_j >= age} = n - #{j: a_j < age}
        self.age_levels = tuple(age_levels)
        self.table = LevelTable(MODE_LAXITY, tuple(-a for a in reversed(ages)), tuple(reversed(age_levels)))
        self.table.check(c.nlevels, "age_levels")

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        return make_entry(request, stage, flow, now_ns, self.table, deadline_ns=request.arrival_ns, ps=0)

    def describe(self) -> dict[str, Any]:
        ages = self.config.age_thresholds_ns
        rows = []
        for i, lv in enumerate(self.age_levels):
            if i == 0:
                cond = f"age <= {ms(ages[0])}"
            elif i == len(ages):
                cond = f"age > {ms(ages[-1])}"
            else:
                cond = f"{ms(ages[i - 1])} < age <= {ms(ages[i])}"
            rows.append((lv, f"every flow: request {cond}"))
        return _header(self) | {
            "mode": "laxity",
            "metric": "arrival - now (= -age of the request)",
            "age_thresholds_ms": [a / 1e6 for a in ages],
            "age_levels": list(self.age_levels),
            "layout": layout(self.config.nlevels, rows, scavenger=NO_SCAVENGER),
        }


# ---- stage -----------------------------------------------------------------------------------
STAGE_DEFAULT_LEVELS = {"collective": 0, "kv_fetch": 1, "p2d": 2}


@dataclass(slots=True)
class StageConfig(PolicyConfig):
    # None: collective 0, kv_fetch 1, p2d 2 (capped at K-2 when K < 4)
    collective_level: int | None = None
    kv_fetch_level: int | None = None
    p2d_level: int | None = None

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        for stage, default in STAGE_DEFAULT_LEVELS.items():
            key = f"{stage}_level"
            if getattr(self, key) is None:
                setattr(self, key, min(default, self.nlevels - 2))
            check_level(getattr(self, key), self.nlevels, key)


class StagePolicy(Policy[StageConfig]):
    name = "stage"
    fixed_entry = True  # Policy.entry_key
    config_class = StageConfig

    def level_of(self, stage: Stage) -> int:
        level: int = getattr(self.config, f"{stage.name}_level")
        return level

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        return make_entry(request, stage, flow, now_ns, _static(self.level_of(stage)))

    def describe(self) -> dict[str, Any]:
        c = self.config
        levels = {s: getattr(c, f"{s}_level") for s in ("collective", "kv_fetch", "p2d")}
        return _header(self) | {
            "mode": "static",
            "stage_levels": levels,
            "layout": layout(c.nlevels, [(lv, s) for s, lv in levels.items()], scavenger=NO_SCAVENGER),
        }


# ---- llf-oracle ------------------------------------------------------------------------------
@dataclass(slots=True)
class LlfOracleConfig(PolicyConfig):
    laxity_thresholds_ns: tuple[int, ...] = DEFAULT_LAXITY_THRESHOLDS_NS  # ascending laxity
    laxity_levels: tuple[int, ...] | None = None  # None: 0, 1, ...
    allow_estimate: bool = False  # no true work on the flow: use the request's estimates
    admission: bool = True  # negative true laxity: the request goes to the scavenger level

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        self.laxity_thresholds_ns = int_thresholds(self.laxity_thresholds_ns, "laxity_thresholds_ns", positive=False)
        self.laxity_levels = int_levels(self.laxity_levels, "laxity_levels")


class LlfOraclePolicy(Policy[LlfOracleConfig]):
    """Exact least-laxity-first: base = deadline - true work ahead (at decision, as the testbed or
    simulator knows it), ps_per_byte at the reference rate so sending keeps the laxity honest."""

    name = "llf-oracle"
    config_class = LlfOracleConfig

    def __init__(self, config: LlfOracleConfig | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.ps = ps_per_byte(c.ref_rate_bps)
        th = c.laxity_thresholds_ns
        self.table = build_table(MODE_LAXITY, th, c.laxity_levels, c.nlevels, "laxity_levels", spread_levels(len(th)))

    def true_work_ns(self, request: Request, flow: Flow) -> int:
        if flow.true_remaining_work_ns is not None:
            return flow.true_remaining_work_ns
        if self.config.allow_estimate:
            return bytes_ns(request.remaining_bytes, self.ps) + request.remaining_compute_ns
        raise ValueError(
            "llf-oracle needs flow.true_remaining_work_ns (the testbed or simulator fills it); "
            "pass allow_estimate=True to fall back to the request's estimates"
        )

    def is_hopeless(self, request: Request, now_ns: int) -> bool:
        """Admission: a request whose laxity on its own work ahead is negative cannot make it
        (the simulator's and testbed's estimates are the true per-bottleneck critical path)."""
        return self.config.admission and hopeless(request, now_ns, self.ps, 0)

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        work = self.true_work_ns(request, flow)
        if self.config.admission and (request.scavenged or request.deadline_ns - now_ns < work):
            return make_entry(request, stage, flow, now_ns, _static(self.config.scavenger_level))
        base = request.deadline_ns - work - bytes_ns(flow.sent, self.ps)
        return make_entry(request, stage, flow, now_ns, self.table, deadline_ns=base, ps=stage_ps(self.ps, stage, flow))

    def describe(self) -> dict[str, Any]:
        rows = self.table.rows("every flow", ms, "laxity")
        return _header(self) | {
            "mode": "laxity",
            "metric": "deadline - now - true work ahead (flow.true_remaining_work_ns)",
            "ref_ns_per_byte": self.ps / 1000,
            "allow_estimate": self.config.allow_estimate,
            "thresholds_ms": [t / 1e6 for t in self.table.thresholds],
            "table_levels": list(self.table.levels),
            "layout": layout(self.config.nlevels, rows, scavenger=NO_SCAVENGER),
        }
