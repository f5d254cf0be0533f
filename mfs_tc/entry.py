"""Flow entries: what a policy produces, what the controller writes, what the classifier reads.

`FlowEntry.level()` is the exact Python mirror of the classifier's level function in
bpf/mfs_classifier.c (integers only, same rounding). The simulator and the testbed's oracle use
it to know what the kernel would do; tests/test_classifier_equivalence.py runs both on the same
inputs through BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .layout import (
    ENTRY_FMT,
    F_AUTO_SCAVENGE,
    F_MONOTONIC,
    MAX_LEVELS,
    MAX_THRESH,
    MLU_CAP,
    MLU_ONE,
    MODE_LAXITY,
    MODE_MLU,
    MODE_NAMES,
    MODE_REMAINING,
    MODE_RLI,
    MODE_SENT,
    MODE_STATIC,
    STAGE_CODES,
)

_S64_MIN = -(1 << 63)
_S64_MAX = (1 << 63) - 1


def ps_per_byte(rate_bps: float) -> int:
    """Fixed-point rate term: picoseconds per byte at `rate_bps` bits/s (100G: 80, 100M: 80000)."""
    if rate_bps <= 0:
        raise ValueError(f"rate must be positive, got {rate_bps}")
    return max(1, round(8e12 / rate_bps))


def mlu_fixed(mlu: float) -> int:
    """An MLU threshold (1.0 = the flow needs the whole link for all the time left) in fixed point."""
    return int(round(mlu * MLU_ONE))


@dataclass(slots=True)
class FlowEntry:
    """One `flows` map value. Thresholds ascend; `levels[i]` is the level when the metric is at
    or above exactly i thresholds. len(levels) == len(thresholds) + 1."""

    mode: int = MODE_STATIC
    levels: list[int] = field(default_factory=lambda: [0])
    thresholds: list[int] = field(default_factory=list)
    flags: int = 0
    target_layer: int = 0
    stage: int = 0
    request_id: int = 0
    deadline_ns: int = 0  # mlu: deadline; laxity: base
    total_bytes: int = 0
    ps_per_byte: int = 0
    sent_bytes: int = 0
    sent_pkts: int = 0
    created_ns: int = 0
    cur_level: int = 0xFF

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_table(self.mode, self.thresholds, self.levels)
        if self.total_bytes < 0 or self.ps_per_byte < 0:
            raise ValueError("bytes and rate term must not be negative")
        if self.mode == MODE_STATIC and self.thresholds:
            raise ValueError("a static entry has no thresholds")

    @classmethod
    def static(cls, level: int, **kw: int) -> "FlowEntry":
        return cls(mode=MODE_STATIC, levels=[level], **kw)

    @property
    def mode_name(self) -> str:
        return MODE_NAMES[self.mode]

    @property
    def stage_name(self) -> str:
        return {v: k for k, v in STAGE_CODES.items()}.get(self.stage, "other")

    # ---- wire format -------------------------------------------------------------------------
    def pack(self) -> bytes:
        lv = list(self.levels) + [self.levels[-1]] * (MAX_LEVELS - len(self.levels))
        th = list(self.thresholds) + [0] * (MAX_THRESH - len(self.thresholds))
        return struct.pack(
            ENTRY_FMT,
            self.mode,
            self.flags,
            len(self.thresholds),
            self.cur_level,
            *lv,
            self.target_layer,
            self.stage,
            0,
            self.request_id,
            self.deadline_ns,
            self.total_bytes,
            self.ps_per_byte,
            *th,
            self.sent_bytes,
            self.sent_pkts,
            self.created_ns,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> "FlowEntry":
        v = struct.unpack(ENTRY_FMT, raw)
        mode, flags, n, cur = v[0:4]
        lv = list(v[4:12])
        target, stage, _rsvd, rid, dl, total, ps = v[12:19]
        th = list(v[19:26])
        sent, pkts, created = v[26:29]
        n = min(n, MAX_THRESH)
        e = cls.__new__(cls)
        e.mode, e.flags, e.cur_level = mode, flags, cur
        e.levels, e.thresholds = lv[: n + 1], th[:n]
        e.target_layer, e.stage, e.request_id = target, stage, rid
        e.deadline_ns, e.total_bytes, e.ps_per_byte = dl, total, ps
        e.sent_bytes, e.sent_pkts, e.created_ns = sent, pkts, created
        return e

    # ---- the level function (mirror of the kernel) -------------------------------------------
    def metric(self, now_ns: int, sent: int | None = None, cursor: int = 0) -> int:
        sent = self.sent_bytes if sent is None else sent
        if self.mode == MODE_MLU:
            return mlu_metric(self.total_bytes, sent, self.ps_per_byte, self.deadline_ns, now_ns)
        if self.mode == MODE_RLI:
            return self.target_layer - cursor
        if self.mode == MODE_LAXITY:
            return _wrap64(self.deadline_ns + (sent * self.ps_per_byte) // 1000 - now_ns)
        if self.mode == MODE_SENT:
            return sent
        if self.mode == MODE_REMAINING:
            return max(self.total_bytes - sent, 0)
        return 0

    def level(
        self,
        now_ns: int,
        *,
        sent: int | None = None,
        cursor: int = 0,
        scavenged: bool = False,
        scavenger_level: int = MAX_LEVELS - 1,
        nlevels: int = MAX_LEVELS,
        cur_level: int | None = None,
    ) -> int:
        """The level the classifier picks for a packet of this flow at `now_ns`, with `sent`
        bytes already counted and the request's layer cursor at `cursor`."""
        cur = self.cur_level if cur_level is None else cur_level
        if scavenged or (
            self.flags & F_AUTO_SCAVENGE and self.mode == MODE_MLU and self.deadline_ns <= now_ns
        ):
            return min(scavenger_level, nlevels - 1)
        m = self.metric(now_ns, sent, cursor)
        i = sum(1 for t in self.thresholds if m >= t)
        lv = min(self.levels[i], nlevels - 1)
        if self.flags & F_MONOTONIC and cur < lv:
            lv = cur
        return lv


def check_table(mode: int, thresholds, levels) -> None:
    """A threshold table the kernel can evaluate: known mode, at most 7 ascending signed 64-bit
    thresholds, one level (0..7) per threshold count."""
    if mode not in MODE_NAMES:
        raise ValueError(f"unknown mode {mode}")
    if len(thresholds) > MAX_THRESH:
        raise ValueError(f"at most {MAX_THRESH} thresholds, got {len(thresholds)}")
    if len(levels) != len(thresholds) + 1:
        raise ValueError(f"{len(thresholds)} thresholds need {len(thresholds) + 1} levels, got {len(levels)}")
    if any(not 0 <= lv < MAX_LEVELS for lv in levels):
        raise ValueError(f"levels must be in 0..{MAX_LEVELS - 1}: {list(levels)}")
    if any(a > b for a, b in zip(thresholds, thresholds[1:])):
        raise ValueError(f"thresholds must ascend: {list(thresholds)}")
    if any(not _S64_MIN <= t <= _S64_MAX for t in thresholds):
        raise ValueError("threshold out of signed 64-bit range")


def mlu_metric(total: int, sent: int, ps: int, deadline_ns: int, now_ns: int) -> int:
    """MLU * 65536 as the kernel computes it: capped at 64.0, and at the cap once the deadline
    has passed."""
    time_left = deadline_ns - now_ns
    if time_left <= 0:
        return MLU_CAP
    remaining = total - sent if total > sent else 0
    need = (remaining * ps) // 1000
    if time_left >= 1 << 40:
        need >>= 10
        time_left >>= 10
    if need >= time_left * (MLU_CAP // MLU_ONE):
        return MLU_CAP
    return (need << 16) // time_left


def _wrap64(x: int) -> int:
    return ((x + (1 << 63)) % (1 << 64)) - (1 << 63)
