"""Threshold tables and the level layout every policy shares.

A `LevelTable` is what one flow entry's threshold table holds, in the kernel's units: for a
metric m, level = levels[number of thresholds <= m]. Policies build tables from their
configuration (in human units), then stamp them into a `FlowEntry` with `make_entry`.

The reference layout is written for K = 8 levels: 0 most urgent (also where the datapath sends
unknown flows' control packets), 1..6 ever less urgent (6 = K-2 also carries unknown flows'
payload, the datapath's default level), 7 the scavenger. `squeeze` maps a level of
that layout onto fewer levels (K = 2..7), keeping 0 at 0 and never reaching the scavenger.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from ..entry import FlowEntry, check_table
from ..layout import MAX_LEVELS, MAX_THRESH, MODE_STATIC, STAGE_CODES
from ..model import Flow, Request, Stage

REF_TOP = MAX_LEVELS - 2  # 6: the least urgent non-scavenger level of the K = 8 layout


def squeeze(level: int, nlevels: int) -> int:
    """A level of the K = 8 reference layout on K = `nlevels` levels.

    0..6 map proportionally (rounded half up) onto 0..K-2; 7 (scavenger) maps onto K-1."""
    if level >= MAX_LEVELS - 1:
        return nlevels - 1
    return (level * (nlevels - 2) * 2 + REF_TOP) // (2 * REF_TOP)


def spread_levels(n_thresholds: int, top: int = REF_TOP) -> tuple[int, ...]:
    """Ascending levels 0..min(n, top) for a table of n thresholds (reference layout)."""
    hi = min(n_thresholds, top)
    if n_thresholds == 0:
        return (0,)
    return tuple((i * hi * 2 + n_thresholds) // (2 * n_thresholds) for i in range(n_thresholds + 1))


@dataclass(frozen=True, slots=True)
class LevelTable:
    """One threshold table: `levels[i]` applies when the metric is >= exactly i thresholds."""

    mode: int
    thresholds: tuple[int, ...]
    levels: tuple[int, ...]
    # the (levels, thresholds) lists of the entries made from this table (make_entry): one pair,
    # built once and shared by all those entries (a FlowEntry's lists are never changed in place)
    entry_lists: tuple[list[int], list[int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_table(self.mode, self.thresholds, self.levels)
        if any(a >= b for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)):
            raise ValueError(f"thresholds must strictly ascend: {list(self.thresholds)}")
        static = self.mode == MODE_STATIC
        lists = ([self.levels[0]], []) if static else (list(self.levels), list(self.thresholds))
        object.__setattr__(self, "entry_lists", lists)

    def level_for(self, metric: int) -> int:
        return self.levels[sum(1 for t in self.thresholds if metric >= t)]

    def shifted(self, by: int, cap: int) -> LevelTable:
        """The same table with every level `by` steps less urgent, capped at `cap`."""
        return LevelTable(self.mode, self.thresholds, tuple(min(lv + by, max(cap, lv)) for lv in self.levels))

    def squeezed(self, nlevels: int) -> LevelTable:
        return LevelTable(self.mode, self.thresholds, tuple(squeeze(lv, nlevels) for lv in self.levels))

    def check(self, nlevels: int, what: str) -> None:
        bad = [lv for lv in self.levels if lv >= nlevels]
        if bad:
            raise ValueError(
                f"{what}: levels {list(self.levels)} do not fit nlevels={nlevels}: "
                f"use levels 0..{nlevels - 1} (or raise nlevels)"
            )

    def rows(self, label: str, fmt: Callable[[int], str], metric: str) -> list[tuple[int, str]]:
        """(level, human condition) for each interval of the table, for the level layout."""
        if not self.thresholds:
            return [(self.levels[0], label)]
        out: list[tuple[int, str]] = []
        n = len(self.thresholds)
        for i, lv in enumerate(self.levels):
            if i == 0:
                cond = f"{metric} < {fmt(self.thresholds[0])}"
            elif i == n:
                cond = f"{metric} >= {fmt(self.thresholds[-1])}"
            else:
                cond = f"{fmt(self.thresholds[i - 1])} <= {metric} < {fmt(self.thresholds[i])}"
            out.append((lv, f"{label}: {cond}"))
        return out


def build_table(
    mode: int,
    thresholds: Sequence[int],
    levels: Sequence[int] | None,
    nlevels: int,
    key: str,
    ref_levels: Sequence[int],
) -> LevelTable:
    """A table from configured thresholds (kernel units) and levels; levels None: `ref_levels`
    (written for the K = 8 reference layout) squeezed onto `nlevels`."""
    if levels is None:
        table = LevelTable(mode, tuple(thresholds), tuple(ref_levels)).squeezed(nlevels)
    else:
        table = LevelTable(mode, tuple(thresholds), tuple(levels))
    table.check(nlevels, key)
    return table


def int_thresholds(value: Sequence[int], key: str, *, positive: bool = True) -> tuple[int, ...]:
    t = as_tuple(value, key)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in t):
        raise ValueError(f"{key} must be whole numbers, got {list(t)}")
    ascending(t, key, positive=positive)
    return t


def check_level(level: int, nlevels: int, key: str) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < nlevels:
        raise ValueError(f"{key} must be a level in 0..{nlevels - 1}, got {level!r}")


@overload
def as_tuple(value: None, key: str) -> None: ...
@overload
def as_tuple(value: Sequence[float] | Sequence[int], key: str) -> tuple[Any, ...]: ...
def as_tuple(value: Sequence[float] | Sequence[int] | None, key: str) -> tuple[Any, ...] | None:
    """Config values arrive as lists (JSON, CLI) or tuples; keep tuples (elements unchecked:
    the caller checks them)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{key} must be a list of numbers, got {value!r}")
    return tuple(value)


def int_levels(value: Sequence[int] | None, key: str) -> tuple[int, ...] | None:
    t = as_tuple(value, key)
    if t is None:
        return None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in t):
        raise ValueError(f"{key} must be a list of integer levels, got {list(t)}")
    return t


def ascending(values: Sequence[float], key: str, *, positive: bool = False) -> None:
    if len(values) > MAX_THRESH:
        raise ValueError(f"{key}: at most {MAX_THRESH} thresholds (K <= 8 levels), got {len(values)}")
    if any(a >= b for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{key} must strictly ascend, got {list(values)}")
    if positive and any(v <= 0 for v in values):
        raise ValueError(f"{key} must be positive, got {list(values)}")


def make_entry(
    request: Request,
    stage: Stage,
    flow: Flow,
    now_ns: int,
    table: LevelTable,
    *,
    flags: int = 0,
    deadline_ns: int = 0,
    ps: int = 0,
) -> FlowEntry:
    """A flow entry carrying `table` and the fields every policy sets. Its level and threshold
    lists are the table's own (`LevelTable.entry_lists`), shared with the table's other entries."""
    levels, thresholds = table.entry_lists
    # the table was checked when it was built (LevelTable): no check per flow. Positional, in
    # from_table's order (flags, target_layer, stage, request_id, deadline_ns, total_bytes,
    # ps_per_byte, sent_bytes, created_ns): this runs for every registration. The target
    # layer: the flow's own, else its stage's
    return FlowEntry.from_table(
        table.mode,
        levels,
        thresholds,
        flags,
        flow.target_layer or stage.layer or 0,
        STAGE_CODES.get(stage.name, 0),
        request.request_id,
        deadline_ns,
        flow.bytes,
        ps,
        flow.sent,
        now_ns,
    )


@functools.lru_cache(maxsize=64)
def static_table(level: int) -> LevelTable:
    """The static table of `level` (every flow at that level), built and checked once."""
    return LevelTable(MODE_STATIC, (), (level,))


def layout(nlevels: int, rows: Sequence[tuple[int, str]], *, scavenger: str) -> list[dict[str, Any]]:
    """The level layout of a policy: for each level, what traffic it carries."""
    table: list[list[str]] = [[] for _ in range(nlevels)]
    table[0].append(
        "control packets of unknown flows (SYN, FIN, RST, pure ACKs of reverse " "flows): the datapath's control level"
    )
    table[max(nlevels - 2, 0)].append("payload of unknown flows: the datapath's default level")
    for lv, what in rows:
        table[min(lv, nlevels - 1)].append(what)
    table[nlevels - 1].append(scavenger)
    return [{"level": i, "carries": what} for i, what in enumerate(table)]


def ms(ns: int) -> str:
    return f"{ns / 1e6:g} ms"


def nbytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"
