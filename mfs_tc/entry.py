"""Flow entries: what a policy produces, what the controller writes, what the classifier reads.

A FlowEntry is the controller's decision (layout v2: the kernel never writes it; what the
kernel counts, bytes sent and the current level, is a layout.FlowState in another map).
`FlowEntry.level()` and `next_cur_level()` are the exact Python mirror of the classifier's level
function in bpf/mfs_classifier.c (integers only, same rounding, same saturation). The simulator
and the testbed's oracle use it to know what the kernel would do;
tests/test_classifier_equivalence.py runs both on the same inputs through BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    SLOT16_NONE,
    STAGE_CODES,
    STATE_NONE,
)

_ENTRY = struct.Struct(ENTRY_FMT)
# ENTRY_FMT with the threshold table's bytes as two runs: (mode, flags, nthresh, rsvd0, lvl[8])
# and thresh[7]; what FlowEntry.pack writes around the per-flow fields
_ENTRY_SPLIT = struct.Struct("<12sIHHIQqQQ56sQqII")
_TABLE_END, _THRESH_AT, _THRESH_END = 12, 56, 112  # byte offsets of those runs in a packed entry
assert _ENTRY_SPLIT.size == _ENTRY.size
_S64_MIN = -(1 << 63)
_S64_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1
LEVEL_NONE = 0xFF
_ZEROS = (0,) * MAX_THRESH


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
    """One `flows` / `sk_flows` map value (the decision). Thresholds ascend; `levels[i]` is the
    level when the metric is at or above exactly i thresholds. len(levels) == len(thresholds) + 1.

    An entry is a value: replace its `levels`/`thresholds` lists, never change them in place
    (the entries a policy makes from one table share that table's two lists).

    `sent_bytes`: bytes the flow had sent when the decision was made (what the policy saw);
    packed as the entry's sent_base, where the kernel's count starts for a new registration.
    `gen`: the registration (the controller sets it); `cur_level`: the kernel's current level
    the mirror starts from (not part of the entry: it lives in the kernel's state)."""

    mode: int = MODE_STATIC
    levels: list[int] = field(default_factory=lambda: [0])
    thresholds: list[int] = field(default_factory=list)
    flags: int = 0
    target_layer: int = 0
    stage: int = 0
    request_id: int = 0
    slot: int = SLOT16_NONE  # request_id's cursor slot (the kernel reads the request there)
    deadline_ns: int = 0  # mlu: deadline; laxity: base
    total_bytes: int = 0
    ps_per_byte: int = 0
    sent_bytes: int = 0
    created_ns: int = 0
    gen: int = 0
    cur_level: int = LEVEL_NONE
    state_slot: int = STATE_NONE  # the registration's slot in `states` (the controller's; v6)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_table(self.mode, self.thresholds, self.levels)
        if self.total_bytes < 0 or self.ps_per_byte < 0:
            raise ValueError("bytes and rate term must not be negative")
        if self.mode == MODE_STATIC and self.thresholds:
            raise ValueError("a static entry has no thresholds")

    @classmethod
    def static(
        cls,
        level: int,
        *,
        flags: int = 0,
        target_layer: int = 0,
        stage: int = 0,
        request_id: int = 0,
        deadline_ns: int = 0,
        total_bytes: int = 0,
        ps_per_byte: int = 0,
        sent_bytes: int = 0,
        created_ns: int = 0,
        gen: int = 0,
        cur_level: int = LEVEL_NONE,
    ) -> FlowEntry:
        """`level` for every packet: no thresholds (the other fields as the constructor's)."""
        return cls(
            mode=MODE_STATIC,
            levels=[level],
            flags=flags,
            target_layer=target_layer,
            stage=stage,
            request_id=request_id,
            deadline_ns=deadline_ns,
            total_bytes=total_bytes,
            ps_per_byte=ps_per_byte,
            sent_bytes=sent_bytes,
            created_ns=created_ns,
            gen=gen,
            cur_level=cur_level,
        )

    @classmethod
    def from_table(
        cls,
        mode: int,
        levels: list[int],
        thresholds: list[int],
        flags: int = 0,
        target_layer: int = 0,
        stage: int = 0,
        request_id: int = 0,
        deadline_ns: int = 0,
        total_bytes: int = 0,
        ps_per_byte: int = 0,
        sent_bytes: int = 0,
        created_ns: int = 0,
    ) -> FlowEntry:
        """An entry whose threshold table the caller has already checked (check_table: a
        policy's LevelTable is checked once, when it is built); only the per-flow numbers are
        checked here. What policies use per registration: the same entry as the constructor's,
        without re-checking the same table for every flow. `levels` and `thresholds` are
        taken as they are, not copied (policy.levels.make_entry passes its table's lists)."""
        if total_bytes < 0 or ps_per_byte < 0:
            raise ValueError("bytes and rate term must not be negative")
        c: Any = cls  # (looked up as any object's: mypyc compiles no call of a class's __new__)
        e: FlowEntry = c.__new__(c)
        e.mode = mode
        e.levels = levels
        e.thresholds = thresholds
        e.flags = flags
        e.target_layer = target_layer
        e.stage = stage
        e.request_id = request_id
        e.slot = SLOT16_NONE
        e.deadline_ns = deadline_ns
        e.total_bytes = total_bytes
        e.ps_per_byte = ps_per_byte
        e.sent_bytes = sent_bytes
        e.created_ns = created_ns
        e.gen = 0
        e.cur_level = LEVEL_NONE
        e.state_slot = STATE_NONE
        return e

    @property
    def mode_name(self) -> str:
        return MODE_NAMES[self.mode]

    @property
    def stage_name(self) -> str:
        return {v: k for k, v in STAGE_CODES.items()}.get(self.stage, "other")

    # ---- wire format -------------------------------------------------------------------------
    def pack(self, gen: int | None = None) -> bytes:
        """The map value (`gen`: the registration to pack instead of this entry's own). The
        table's bytes (mode, flags, levels, thresholds) are packed once per distinct table
        (entries of one policy share a few tables) and reused."""
        lv, th = self.levels, self.thresholds
        tk = (self.mode, self.flags, len(lv), *lv, *th)
        tb = _TABLE_BYTES.get(tk)
        if tb is None:
            tb = _table_bytes(tk, self.mode, self.flags, lv, th)
        return _ENTRY_SPLIT.pack(
            tb[0],
            self.target_layer,
            self.stage,
            self.slot,
            self.gen if gen is None else gen,
            self.request_id,
            self.deadline_ns,
            self.total_bytes,
            self.ps_per_byte,
            tb[1],
            self.sent_bytes,
            self.created_ns,
            self.state_slot,
            0,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> FlowEntry:
        v = struct.unpack(ENTRY_FMT, raw)
        mode, flags, n, _rsvd = v[0:4]
        lv = list(v[4:12])
        target, stage, slot, gen, rid, dl, total, ps = v[12:20]
        th = list(v[20:27])
        sent, created, state_slot = v[27:30]
        n = min(n, MAX_THRESH)
        c: Any = cls  # (looked up as any object's: mypyc compiles no call of a class's __new__)
        e: FlowEntry = c.__new__(c)
        e.mode, e.flags, e.cur_level = mode, flags, LEVEL_NONE
        e.levels, e.thresholds = lv[: n + 1], th[:n]
        e.target_layer, e.stage, e.request_id, e.gen, e.slot = target, stage, rid, gen, slot
        e.deadline_ns, e.total_bytes, e.ps_per_byte = dl, total, ps
        e.sent_bytes, e.created_ns, e.state_slot = sent, created, state_slot
        return e

    # ---- the level function (mirror of the kernel) -------------------------------------------
    def metric(self, now_ns: int, sent: int | None = None, cursor: int = 0) -> int:
        sent = self.sent_bytes if sent is None else sent
        if self.mode == MODE_MLU:
            return mlu_metric(self.total_bytes, sent, self.ps_per_byte, self.deadline_ns, now_ns)
        if self.mode == MODE_RLI:
            return self.target_layer - cursor
        if self.mode == MODE_LAXITY:
            return laxity_metric(self.deadline_ns, sent, self.ps_per_byte, now_ns)
        if self.mode == MODE_SENT:
            return min(sent, _S64_MAX)
        if self.mode == MODE_REMAINING:
            return min(self.total_bytes - sent, _S64_MAX) if self.total_bytes > sent else 0
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
        default_level: int | None = None,
    ) -> int:
        """The level the classifier picks for a packet of this flow at `now_ns`, with `sent`
        bytes already counted and the request's layer cursor at `cursor`. A table level >=
        nlevels gives `default_level` (None: nlevels - 2), not the scavenger."""
        cur = self.cur_level if cur_level is None else cur_level
        if scavenged or (self.flags & F_AUTO_SCAVENGE and self.mode == MODE_MLU and self.deadline_ns <= now_ns):
            return min(scavenger_level, nlevels - 1)
        m = self.metric(now_ns, sent, cursor)
        if self.flags & F_AUTO_SCAVENGE and self.mode == MODE_MLU and m > MLU_ONE:
            return min(scavenger_level, nlevels - 1)
        i = bisect_right(self.thresholds, m)  # the thresholds ascend (check_table): how many are <= m
        lv = self.levels[i]
        if lv >= nlevels:
            dl = max(nlevels - 2, 0) if default_level is None else default_level
            lv = dl if dl < nlevels else nlevels - 1
        if self.flags & F_MONOTONIC and cur < lv:
            lv = cur
        return lv

    def next_cur_level(self, cur: int, level: int, scavenged: bool = False) -> int:
        """The kernel state's cur_level after a packet sent at `level`: MONOTONIC entries only
        ever lower it (and a scavenged packet leaves it), others record the last level."""
        if self.flags & F_MONOTONIC:
            return level if not scavenged and level < cur else cur
        return level


# packed table runs by (mode, flags, len(levels), *levels, *thresholds): FlowEntry.pack
_TABLE_BYTES: dict[tuple[int, ...], tuple[bytes, bytes]] = {}
_TABLE_BYTES_MAX = 4096  # policies have a few tables each; past this many, start over


def _table_bytes(
    key: tuple[int, ...], mode: int, flags: int, levels: Sequence[int], thresholds: Sequence[int]
) -> tuple[bytes, bytes]:
    """The two packed runs of a table, levels padded with the last one and thresholds with
    zeros (struct.error, as for any unpackable field, where the table cannot be packed)."""
    lv, th = list(levels), list(thresholds)
    n = len(th)
    if len(lv) < MAX_LEVELS:
        lv = [*lv, *[lv[-1]] * (MAX_LEVELS - len(lv))]
    if n < MAX_THRESH:
        th = [*th, *_ZEROS[: MAX_THRESH - n]]
    raw = _ENTRY.pack(mode, flags, n, 0, *lv, 0, 0, 0, 0, 0, 0, 0, 0, *th, 0, 0, 0, 0)
    tb = raw[:_TABLE_END], raw[_THRESH_AT:_THRESH_END]
    if len(_TABLE_BYTES) >= _TABLE_BYTES_MAX:
        _TABLE_BYTES.clear()
    _TABLE_BYTES[key] = tb
    return tb


def check_table(mode: int, thresholds: Sequence[int], levels: Sequence[int]) -> None:
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
    if any(a > b for a, b in zip(thresholds, thresholds[1:], strict=False)):
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
    need = mul_ps(remaining, ps)
    for _ in range(3):  # keep time_left < 2^40 so that need << 16 fits 64 bits
        if time_left >= 1 << 40:
            need >>= 10
            time_left >>= 10
    if need >= time_left * (MLU_CAP // MLU_ONE):
        return MLU_CAP
    return (need << 16) // time_left


def mul_ps(a: int, ps: int) -> int:
    """a * ps / 1000 with the product saturated at 2^64 - 1, as the kernel computes it."""
    return min(a * ps, _U64_MAX) // 1000


def laxity_metric(base_ns: int, sent: int, ps: int, now_ns: int) -> int:
    """base + sent*ps/1000 - now in signed 64 bits, saturating at both ends (the kernel's now
    is never negative)."""
    a = max(_S64_MIN, min(_S64_MAX, base_ns - now_ns))
    return min(_S64_MAX, a + mul_ps(sent, ps))
