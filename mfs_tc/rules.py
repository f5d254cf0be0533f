"""Operator rules by prefix, port range and protocol: the `rules` table of an attachment.

A rule gives every packet of a TCP/UDP flow that has no exact entry (socket storage or the
5-tuple map) and matches it a level; the first matching rule in table order wins, the default
level applies when none does. The table is an array of at most RULES_MAX slots
(layout.RuleRecord) scanned in order by the classifier; its counters are per-CPU in
`rule_stats`, at a slot that stays with the rule when the table is reordered.

Writes are ordered for a classifier reading the table concurrently: inserting shifts the tail
down from the end (each step duplicates one rule), deleting shifts it up and then clears the
last slot, so between slot writes the table is the old or the new one with at most one rule
present twice, never one missing. A slot write itself is a plain copy of the 88-byte value (array
maps are not RCU-replaced), so a packet classified on another CPU during that very copy may see
fields of the two rules involved: that packet alone can get the wrong one of their levels.
`mfs-tc rule` and `mfs-tc apply` serialise their writes on a lock file per interface.
"""

from __future__ import annotations

import ipaddress
import socket
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .attachment import STATE_ROOT
from .errors import MapFullError, MfsError
from .ifacelock import interface_lock
from .layout import (
    C_TRUST_DSCP,
    COUNTER_SIZE,
    FAMILY_ANY,
    FAMILY_V4,
    FAMILY_V6,
    RULES_MAX,
    STAGE_CODES,
    STAGE_NAMES,
    RuleRecord,
    netns_label,
)
from .policy.baselines import STAGE_DEFAULT_LEVELS

if TYPE_CHECKING:
    from .maps import PinnedMaps

RULE_STAGES = ("kv_fetch", "collective", "p2d")
PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
_V4MAPPED = b"\0" * 10 + b"\xff\xff"


def stage_level(stage: str, nlevels: int) -> int:
    """The level a --stage rule gets: the `stage` policy's static layout for K levels
    (collective 0, kv_fetch 1, p2d 2, each capped at K-2 so that none is the scavenger)."""

    if stage not in RULE_STAGES:
        raise MfsError(f"--stage {stage!r}: use one of {', '.join(RULE_STAGES)}")
    return min(STAGE_DEFAULT_LEVELS[stage], nlevels - 2)


def parse_cidr(text: str, what: str) -> tuple[bytes, bytes, int]:
    """'10.0.0.0/24', '10.0.0.1' (a /32), 'fd00::/64' -> (16-byte network, 16-byte mask, family)."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise MfsError(f"--{what} {text!r}: not a CIDR prefix (e.g. 10.0.2.0/24, fd00:1::/64 or one address)") from None
    if net.version == 4:
        addr = _V4MAPPED + net.network_address.packed
        plen = 96 + net.prefixlen
        fam = FAMILY_V4
    else:
        addr = net.network_address.packed
        plen = net.prefixlen
        fam = FAMILY_V6
    mask = ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
    return addr, mask.to_bytes(16, "big"), fam


def parse_ports(text: str | int | None, what: str) -> tuple[int, int]:
    """None -> any; 'N' or N -> (N, N); 'A-B' -> (A, B), inclusive, 0 <= A <= B <= 65535."""
    if text is None:
        return 0, 0xFFFF
    s = str(text).strip()
    try:
        if "-" in s:
            a, b = (int(x) for x in s.split("-", 1))
        else:
            a = b = int(s)
    except ValueError:
        raise MfsError(f"--{what} {text!r}: use a port N or a range A-B (0..65535)") from None
    if not (0 <= a <= b <= 0xFFFF):
        raise MfsError(f"--{what} {text!r}: ports must be 0..65535 with A <= B")
    return a, b


def _fmt_prefix(addr: bytes, mask: bytes) -> str | None:
    m = int.from_bytes(mask, "big")
    if m == 0:
        return None
    plen = bin(m).count("1")
    if addr[:12] == _V4MAPPED and plen >= 96:
        return str(ipaddress.IPv4Network((addr[12:], plen - 96)))
    return str(ipaddress.IPv6Network((addr, plen)))


def _fmt_ports(lo: int, hi: int) -> str | None:
    if (lo, hi) == (0, 0xFFFF):
        return None
    return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """What a rule matches and the level it gives: the operator's side (CLI, config file)."""

    src: str | None = None
    dst: str | None = None
    sport: str | None = None
    dport: str | None = None
    proto: str | None = None
    level: int | None = None
    stage: str | None = None

    def record(self, nlevels: int) -> RuleRecord:
        """The table record (without id and counter slot); a clear error for bad input."""
        if (self.level is None) == (self.stage is None):
            raise MfsError("a rule needs exactly one of --level N or --stage kv_fetch|collective|p2d")
        if self.stage is not None:
            level = stage_level(self.stage, nlevels)
            stage = STAGE_CODES[self.stage]
        else:
            assert self.level is not None  # exactly one of level / stage: checked above
            level, stage = int(self.level), 0
            if not 0 <= level < nlevels:
                raise MfsError(f"--level {level}: this interface has levels 0..{nlevels - 1}")
        r = RuleRecord(level=level, stage=stage)
        fams = set()
        if self.src is not None:
            r.src, r.smask, f = parse_cidr(self.src, "src")
            fams.add(f)
        if self.dst is not None:
            r.dst, r.dmask, f = parse_cidr(self.dst, "dst")
            fams.add(f)
        if len(fams) > 1:
            raise MfsError(f"--src {self.src} and --dst {self.dst} are of different address families")
        r.family = fams.pop() if fams else FAMILY_ANY
        r.sport_lo, r.sport_hi = parse_ports(self.sport, "sport")
        r.dport_lo, r.dport_hi = parse_ports(self.dport, "dport")
        if self.proto is not None:
            p = self.proto.lower()
            if p not in PROTOS:
                raise MfsError(f"--proto {self.proto!r}: use tcp or udp")
            r.proto = PROTOS[p]
        return r

    @classmethod
    def of(cls, r: RuleRecord) -> RuleSpec:
        stage = STAGE_NAMES.get(r.stage) if r.stage else None
        return cls(
            src=_fmt_prefix(r.src, r.smask),
            dst=_fmt_prefix(r.dst, r.dmask),
            sport=_fmt_ports(r.sport_lo, r.sport_hi),
            dport=_fmt_ports(r.dport_lo, r.dport_hi),
            proto=PROTO_NAMES.get(r.proto),
            level=None if stage else r.level,
            stage=stage,
        )

    def describe(self) -> str:
        parts = [
            f"{k} {v}"
            for k, v in (
                ("proto", self.proto),
                ("src", self.src),
                ("sport", self.sport),
                ("dst", self.dst),
                ("dport", self.dport),
            )
            if v is not None
        ]
        what = " ".join(parts) or "all TCP/UDP"
        return f"{what} -> " + (f"stage {self.stage}" if self.stage else f"level {self.level}")


def same_match(a: RuleRecord, b: RuleRecord) -> bool:
    """Equal match, level and stage (id and counter slot aside)."""
    return a.pack()[:-12] == b.pack()[:-12]


@dataclass
class RuleRow:
    position: int  # 1-based, table order
    record: RuleRecord
    packets: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        spec = RuleSpec.of(self.record)
        return {
            "id": self.record.id,
            "priority": self.position,
            "src": spec.src,
            "dst": spec.dst,
            "sport": spec.sport,
            "dport": spec.dport,
            "proto": spec.proto,
            "level": self.record.level,
            "stage": spec.stage,
            "packets": self.packets,
            "bytes": self.bytes,
        }


class RuleTable:
    """The rules of one attachment, over its pinned `rules` and `rule_stats` maps."""

    def __init__(self, maps: PinnedMaps) -> None:
        self.rules = maps.rules
        self.stats = maps.rule_stats
        self.nlevels = maps.config.nlevels
        self.trust_dscp = bool(maps.config.flags & C_TRUST_DSCP)

    @staticmethod
    def _k(i: int) -> bytes:
        return i.to_bytes(4, "little")

    def records(self) -> list[RuleRecord]:
        out = []
        for i in range(RULES_MAX):
            raw = self.rules.lookup(self._k(i))
            r = RuleRecord.unpack(raw) if raw else None
            if r is None or r.id == 0:
                break
            out.append(r)
        return out

    def _count(self, cslot: int) -> tuple[int, int]:
        pk = by = 0
        for v in self.stats.lookup_percpu(self._k(cslot)) or []:
            pk += int.from_bytes(v[:8], "little")
            by += int.from_bytes(v[8:16], "little")
        return pk, by

    def rows(self) -> list[RuleRow]:
        return [RuleRow(i + 1, r, *self._count(r.cslot)) for i, r in enumerate(self.records())]

    def _write(self, i: int, r: RuleRecord) -> None:
        self.rules.update(self._k(i), r.pack())

    def add(self, spec: RuleSpec, priority: int | None = None) -> RuleRecord:
        """Insert at 1-based `priority` (None: append); returns the record with its id."""
        rec = spec.record(self.nlevels)
        self._check_trust()
        cur = self.records()
        if len(cur) >= RULES_MAX:
            raise MapFullError(
                f"the rule table is full ({RULES_MAX} rules): delete one (`mfs-tc rule del ID`) or merge "
                "rules into wider prefixes or port ranges"
            )
        pos = len(cur) if priority is None else priority - 1
        if not 0 <= pos <= len(cur):
            raise MfsError(f"--priority {priority}: use 1..{len(cur) + 1} (1 is looked at first)")
        return self._insert(cur, rec, pos)

    def _check_trust(self) -> None:
        if self.trust_dscp:
            raise MfsError(
                "this interface is attached with --trust-dscp (a switch port: the level comes from the "
                "packet's DSCP), where rules are not looked at: attach it without --trust-dscp"
            )

    def _insert(self, cur: list[RuleRecord], rec: RuleRecord, pos: int) -> RuleRecord:
        rec.id = max((r.id for r in cur), default=0) + 1
        used = {r.cslot for r in cur}
        rec.cslot = next(c for c in range(RULES_MAX) if c not in used)
        self.stats.update_percpu(self._k(rec.cslot), b"\0" * COUNTER_SIZE)  # a fresh counter
        # shift the tail down from the end: every step leaves one rule twice, none missing
        for i in range(len(cur), pos, -1):
            self._write(i, cur[i - 1])
        self._write(pos, rec)
        return rec

    def delete(self, rule_id: int) -> RuleRecord:
        cur = self.records()
        pos = next((i for i, r in enumerate(cur) if r.id == rule_id), None)
        if pos is None:
            ids = ", ".join(str(r.id) for r in cur) or "none"
            raise MfsError(f"no rule with id {rule_id} (rules: {ids}); see `mfs-tc rule list`")
        gone = cur[pos]
        for i in range(pos, len(cur) - 1):
            self._write(i, cur[i + 1])
        self._write(len(cur) - 1, RuleRecord())
        return gone

    def clear(self) -> list[RuleRecord]:
        cur = self.records()
        for i in reversed(range(len(cur))):
            self._write(i, RuleRecord())
        return cur

    def replace(self, specs: list[RuleSpec]) -> tuple[list[RuleRecord], list[RuleRecord]]:
        """Make the table exactly `specs`, in order, keeping (id, counter) of rules that stay
        where they are in relative order. Returns (removed, added); no writes when equal."""
        want = [s.record(self.nlevels) for s in specs]
        if want:
            self._check_trust()
        if len(want) > RULES_MAX:
            raise MapFullError(f"{len(want)} rules: the table holds at most {RULES_MAX}")
        cur = self.records()
        if len(cur) == len(want) and all(same_match(a, b) for a, b in zip(cur, want, strict=False)):
            return [], []
        removed = [r for r in cur if not any(same_match(r, w) for w in want)]
        for r in removed:
            self.delete(r.id)
        added: list[RuleRecord] = []
        for i, w in enumerate(want):
            cur = self.records()
            if i < len(cur) and same_match(cur[i], w):
                continue
            later = next((r for r in cur[i + 1 :] if same_match(r, w)), None)
            if later is not None:  # out of order: it moves (a new id and counter)
                self.delete(later.id)
                removed.append(later)
                cur = self.records()
            added.append(self._insert(cur, w, i))
        return removed, added


def rules_lock(ifname: str, netns: str | None) -> AbstractContextManager[None]:
    """The per-interface lock of rule table writes (rule add/del, apply)."""

    path: Path = STATE_ROOT / netns_label(netns) / f"{ifname}.rules.lock"
    return interface_lock(path, f"the rules of {ifname}", wait=True, prune=(path.parent, STATE_ROOT))
