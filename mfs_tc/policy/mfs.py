"""`mfs`: the published form of MFS (DESIGN section 2), evaluated per packet in the kernel.

- p2d: MODE_MLU. MLU = (remaining bytes at the reference rate) / (time left before the p2d
  deadline), with the p2d deadline = request deadline - compute after p2d (the decode step).
  Low MLU: deferred; the level rises as MLU crosses `mlu_thresholds`. Deadline passed: scavenger
  (F_AUTO_SCAVENGE).
- kv_fetch, collective: MODE_RLI. RLI = target_layer - the request's layer cursor (the kernel
  reads the cursor from the `requests` map). RLI 0 blocks the GPU now: most urgent; far layers
  wait and are promoted as compute approaches them.
- RED: deadline order within a level. The batches in prefill (and single requests, whose RED is
  their deadline) are ranked by their Robust Effective Deadline (`red.red_ranks`, by the caller
  at every batch start, layer boundary and batch end: `request.red_rank`); the kv_fetch and
  collective flows of a batch in the looser (red_buckets-1)/red_buckets of the ranking have
  their table shifted `red_shift` levels down (less urgent, capped at K-2): at the same RLI they
  rank below the tighter batches, and a few tight requests cannot lift a loose batch (RED, not
  the earliest deadline). A caller that ranks nothing (one batch in view) gets the absolute
  rule: loose when RED - now > `red_loose_ns`.
- Scavenger: a request that can no longer meet its SLO (is_hopeless) gets a static entry at the
  scavenger level K-1; the controller also sets the request's scavenger flag, which the kernel
  checks for every entry carrying the request id.
- p2d admission: of the p2d stages converging on one decode host's downlink, the fewest that
  keep the others from making their deadlines (Moore-Hodgson, policy.admission) are scavenged
  by the caller that sees them all.
- Every entry has F_MONOTONIC: a live flow's level only ever rises.

Reference layout (K = 8, default thresholds):
  0  p2d MLU >= 0.9 (needs nearly the whole link: it shares it with nothing), control packets
     of unknown flows
  1  RLI 0 (GPU blocked now), p2d 0.6 <= MLU < 0.9
  2  RLI 1, p2d 0.4 <= MLU < 0.6
  3  RLI 2, p2d 0.25 <= MLU < 0.4
  4  RLI 3, p2d 0.1 <= MLU < 0.25
  5  RLI 4..7, p2d MLU < 0.1 (deferred)
  6  RLI >= 8 (far layers), payload of unknown flows (the datapath's default level)
  7  scavenger
(a loose-RED batch's RLI rows move one level down, capped at 6). Fewer levels squeeze this
layout proportionally (levels.squeeze).

Why urgent p2d is alone on top: a p2d stage at MLU >= 0.9 can only make its deadline with at
least 90% of its link from now on. Sharing a level with an RLI-0 collective (strict priority
shares a level fairly) gives it at most half, so it would miss for certain, and then be
scavenged as its MLU passes 1. Above the collective, it delays the collective's batch by at most
the p2d's remaining time, which is short by then (the stage is nearly due). The prefill host's
uplink is where this happens: the next batch's collectives (RLI 0/1, layer after layer) hold it
while the previous batch's p2d waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..entry import FlowEntry, mlu_fixed, ps_per_byte
from ..layout import F_AUTO_SCAVENGE, F_MONOTONIC, MLU_ONE, MODE_MLU, MODE_RLI
from ..model import Flow, Request, Stage
from .base import Policy, PolicyConfig
from .levels import (
    LevelTable,
    as_tuple,
    ascending,
    int_levels,
    layout,
    make_entry,
    spread_levels,
    static_table,
)
from .red import rank_bucket, red
from .work import check_estimator, hopeless, work_ahead_ns

DEFAULT_MLU_THRESHOLDS = (0.1, 0.25, 0.4, 0.6, 0.9)
DEFAULT_RLI_THRESHOLDS = (1, 2, 3, 4, 8)
REF_RLI_LEVELS = (1, 2, 3, 4, 5, 6)  # K = 8 layout for the default RLI thresholds: level 0 is urgent p2d's alone
PS_MAX = 1 << 32  # a stage rate term beyond 4.3 ms/byte (under 2 kbit/s) is clamped


@dataclass(slots=True)
class MfsConfig(PolicyConfig):
    """Configuration of `mfs` (all keys optional; see docs/policy.md)."""

    mlu_thresholds: tuple[float, ...] = DEFAULT_MLU_THRESHOLDS  # ascending MLU (1.0 = whole link)
    mlu_levels: tuple[int, ...] | None = None  # level per MLU interval; None: descending layout
    rli_thresholds: tuple[int, ...] = DEFAULT_RLI_THRESHOLDS  # ascending RLI (layers)
    rli_levels: tuple[int, ...] | None = None  # level per RLI interval; None: reference layout
    red_buckets: int = 2  # ranked batches: the tighter 1/red_buckets keep the table, the rest are loose
    red_loose_ns: int = 500_000_000  # unranked batches: loose when RED is further away than this
    red_shift: int = 1  # levels a loose batch's table moves down
    estimator: str = "request"  # work estimator for feasibility (mfs_tc.policy.work)
    scavenger: bool = True  # demote requests that can no longer meet their SLO
    hopeless_margin_ns: int = 0  # benefit of the doubt before a request is declared hopeless
    p2d_admission: bool = True  # give up the p2d stages a decode link cannot carry in time

    def __post_init__(self) -> None:
        PolicyConfig.__post_init__(self)
        self.mlu_thresholds = as_tuple(self.mlu_thresholds, "mlu_thresholds")
        ascending(self.mlu_thresholds, "mlu_thresholds", positive=True)
        if any(x > 64 for x in self.mlu_thresholds):
            raise ValueError(f"mlu_thresholds: MLU is capped at 64 in the kernel, got {self.mlu_thresholds}")
        self.rli_thresholds = as_tuple(self.rli_thresholds, "rli_thresholds")
        if any(isinstance(x, bool) or not isinstance(x, int) for x in self.rli_thresholds):
            raise ValueError(f"rli_thresholds must be whole layers, got {list(self.rli_thresholds)}")
        ascending(self.rli_thresholds, "rli_thresholds")
        self.mlu_levels = int_levels(self.mlu_levels, "mlu_levels")
        self.rli_levels = int_levels(self.rli_levels, "rli_levels")
        if self.red_loose_ns < 0:
            raise ValueError(f"red_loose_ns must not be negative, got {self.red_loose_ns}")
        if self.red_buckets < 1:
            raise ValueError(f"red_buckets must be >= 1, got {self.red_buckets}")
        if self.red_shift < 0:
            raise ValueError(f"red_shift must not be negative, got {self.red_shift}")
        check_estimator(self.estimator)


def mlu_table(config: MfsConfig) -> LevelTable:
    th = tuple(mlu_fixed(x) for x in config.mlu_thresholds)
    if len(set(th)) != len(th):
        raise ValueError(f"mlu_thresholds too close for 1/{MLU_ONE} fixed point: {config.mlu_thresholds}")
    if config.mlu_levels is None:
        table = LevelTable(MODE_MLU, th, tuple(reversed(spread_levels(len(th))))).squeezed(config.nlevels)
    else:
        table = LevelTable(MODE_MLU, th, config.mlu_levels)
    table.check(config.nlevels, "mlu_levels")
    return table


def rli_table(config: MfsConfig) -> LevelTable:
    th = tuple(config.rli_thresholds)
    if config.rli_levels is not None:
        table = LevelTable(MODE_RLI, th, config.rli_levels)
    elif th == DEFAULT_RLI_THRESHOLDS:
        table = LevelTable(MODE_RLI, th, REF_RLI_LEVELS).squeezed(config.nlevels)
    else:
        table = LevelTable(MODE_RLI, th, spread_levels(len(th))).squeezed(config.nlevels)
    table.check(config.nlevels, "rli_levels")
    return table


def stage_ps(ps: int, stage: Stage, flow: Flow) -> int:
    """The rate term that makes one flow's MLU its stage's: a stage's flows converge on one
    bottleneck (p2d: the decode host's downlink), so a flow carrying 1/G of the stage's bytes
    moves at 1/G of the link while its siblings move too: ps x stage bytes / flow bytes (the
    flow's own rate when the stage is unknown or the flow is all of it)."""
    if stage.bytes > flow.bytes > 0:
        return min(ps * stage.bytes // flow.bytes, PS_MAX)
    return ps


def _mlu_str(fixed: int) -> str:
    return f"{fixed / MLU_ONE:.4g}"


class MfsPolicy(Policy[MfsConfig]):
    name = "mfs"
    config_class = MfsConfig

    def __init__(self, config: MfsConfig | None = None) -> None:
        super().__init__(config)
        self.ps = ps_per_byte(self.config.ref_rate_bps)
        self.mlu = mlu_table(self.config)
        self.rli = rli_table(self.config)
        self.rli_loose = self.rli.shifted(self.config.red_shift, self.config.nlevels - 2)

    # ---- decisions ---------------------------------------------------------------------------
    def is_hopeless(self, request: Request, now_ns: int) -> bool:
        if not self.config.scavenger:
            return False
        return hopeless(request, now_ns, self.ps, self.config.hopeless_margin_ns)

    def hopeless_flow(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> bool:
        """is_hopeless, or (estimator `max`) the flow's own view of the work already exceeds the
        time left."""
        c = self.config
        if not c.scavenger:
            return False
        if hopeless(request, now_ns, self.ps, c.hopeless_margin_ns):  # is_hopeless
            return True
        if c.estimator == "request":  # the work ahead is the request's own: hopeless() judged it
            return False
        work = work_ahead_ns(c.estimator, request, stage, flow, self.ps)
        return request.deadline_ns - now_ns + c.hopeless_margin_ns < work

    def p2d_admission(self) -> bool:
        return self.config.scavenger and self.config.p2d_admission

    def red_loose(self, request: Request, now_ns: int) -> bool:
        """The request's batch ranks loose: in the looser of `red_buckets` slices of the RED
        ranking of the batches in prefill now (`request.red_rank`, what the caller ranked with
        policy.red.red_ranks at the last layer boundary). Unranked (a controller that sees one
        batch): its RED is further away than `red_loose_ns`."""
        if request.red_rank is not None:
            return rank_bucket(request.red_rank, self.config.red_buckets) > 0
        batch = request.batch
        if batch is None or not batch.deadlines_ns:
            return False
        return red(batch.deadlines_ns) - now_ns > self.config.red_loose_ns

    def entry(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> FlowEntry:
        if self.hopeless_flow(request, stage, flow, now_ns):
            return make_entry(request, stage, flow, now_ns, static_table(self.config.scavenger_level))
        if stage.name == "p2d":
            flags = F_MONOTONIC | (F_AUTO_SCAVENGE if self.config.scavenger else 0)
            deadline = request.deadline_ns - stage.compute_after_ns
            return make_entry(
                request,
                stage,
                flow,
                now_ns,
                self.mlu,
                flags=flags,
                deadline_ns=deadline,
                ps=stage_ps(self.ps, stage, flow),
            )
        table = self.rli_loose if self.red_loose(request, now_ns) else self.rli
        return make_entry(request, stage, flow, now_ns, table, flags=F_MONOTONIC, deadline_ns=request.deadline_ns)

    @property
    def entry_key_per_request(self) -> bool:  # Policy.entry_key_per_request
        return self.config.estimator == "request"  # `max` reads the flow's bytes sent

    def entry_key(self, request: Request, stage: Stage, flow: Flow, now_ns: int) -> tuple[bool, int] | tuple[bool, int, bool]:
        """`entry` reads the time, the request's estimates, flags and RED rank (and, estimator
        `max`, the flow's bytes sent) only through `hopeless_flow` and, for kv_fetch and
        collective, `red_loose`; the rest is fixed for a flow (Policy.entry_key)."""
        if self.hopeless_flow(request, stage, flow, now_ns):
            return (True, request.deadline_ns)
        if stage.name == "p2d":
            return (False, request.deadline_ns)
        return (False, request.deadline_ns, self.red_loose(request, now_ns))

    # ---- description -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        c = self.config
        rows = self.mlu.rows("p2d", _mlu_str, "MLU")
        rows += self.rli.rows("kv_fetch, collective", str, "RLI")
        if c.red_shift and self.rli_loose.levels != self.rli.levels:
            rows += self.rli_loose.rows("kv_fetch, collective of a loose-RED batch", str, "RLI")
        return {
            "policy": self.name,
            "levels": c.nlevels,
            "default_level": c.nlevels - 2,  # the datapath's default for unknown payload
            "scavenger_level": c.scavenger_level,
            "ref_rate_bps": c.ref_rate_bps,
            "ref_ns_per_byte": self.ps / 1000,
            "stages": {
                "p2d": {
                    "mode": "mlu",
                    "flags": ["monotonic"] + (["auto_scavenge"] if c.scavenger else []),
                    "deadline": "request deadline - compute after p2d (decode step)",
                    "thresholds_mlu": [round(t / MLU_ONE, 4) for t in self.mlu.thresholds],
                    "levels": list(self.mlu.levels),
                },
                "kv_fetch": self._rli_desc(),
                "collective": self._rli_desc(),
            },
            "red": {
                "loose_when": "ranked: in the looser (buckets-1)/buckets of the RED ranking of the "
                "batches in prefill; unranked: RED - now > loose_ms",
                "buckets": c.red_buckets,
                "loose_ms": c.red_loose_ns / 1e6,
                "shift_levels": c.red_shift,
                "loose_levels": list(self.rli_loose.levels),
            },
            "scavenger": {
                "enabled": c.scavenger,
                "hopeless_when": "deadline - now + margin < remaining bytes at ref rate + remaining compute",
                "margin_ms": c.hopeless_margin_ns / 1e6,
                "estimator": c.estimator,
                "p2d_admission": self.p2d_admission(),
            },
            "layout": layout(c.nlevels, rows, scavenger="scavenger: requests that can no longer meet their SLO"),
        }

    def _rli_desc(self) -> dict[str, Any]:
        return {
            "mode": "rli",
            "flags": ["monotonic"],
            "metric": "target_layer - request cursor",
            "thresholds_layers": list(self.rli.thresholds),
            "levels": list(self.rli.levels),
        }
