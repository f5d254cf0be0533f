"""The controller library serving processes import: requests, stages and flows -> pinned maps.

    ctl = Controller.open("eth0", policy="mfs")
    with ctl.request("req-17", slo_s=0.5) as req:
        st = req.stage("kv_fetch", bytes=64 << 20, layer=3)
        st.add_flow(sock, bytes=16 << 20)          # or ("10.0.0.1", "10.0.0.2", 40000, 5201, "tcp")
        req.at_layer(1)                             # one map write: its rli flows re-level in the kernel
        req.update_estimate(remaining_bytes=...)    # re-asks the policy, rewrites its flows
    # leaving the block (or req.done()) removes the request and its flows

It opens the maps through the bpf syscall (mfs_tc.bpfsys) and never imports bcc, so importing it is
cheap. Thread-safe (one lock per Controller); several processes may write the same maps, each owns
the entries it wrote.

Where a flow is a connected socket and the kernel has socket storage, its entry is attached to the
socket (`sk_flows`, one map write keyed by the fd): it dies with the socket. Other flows (5-tuples,
sockets of other processes) go to the `flows` hash (full: a clear MapFullError, never an
eviction of a live flow). The controller writes only decisions;
what the kernel counts (bytes sent, current level) is in `flow_state`/`sk_state`, which user space
never writes, so rewrites lose no byte. `gc()` (`mfs-tc gc`) demotes the flows of requests long
past their deadline or whose owner died to the scavenger level (it never promotes anything).

Deadlines are CLOCK_MONOTONIC nanoseconds of this host. A request that travels between hosts
carries a wall-clock (UNIX) deadline or arrival: `request(..., deadline_wall=...)` converts it to
this host's monotonic clock once, at registration (see docs/controller.md for the clock-sync
assumption and the error a clock offset causes).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from . import access, bpfsys
from .bpfsys import BpfMap, BpfSyscallError
from .entry import FlowEntry
from .errors import LayoutMismatchError, MfsError, NotAttachedError, PermissionDeniedError
from .layout import (
    COUNTER_FMT,
    DEFAULT_DSCP,
    DSCP_KEEP,
    LAYOUT_MAGIC,
    LAYOUT_VERSION,
    LEVEL_NONE,
    MAP_NAMES,
    MAP_SHAPES,
    MAX_LEVELS,
    NSTATS,
    R_SCAVENGER,
    SK_MAP_NAMES,
    STAGE_CODES,
    STAT_NAMES,
    STAT_STALE,
    ConfigRecord,
    FlowKey,
    FlowState,
    LevelRecord,
    Owner,
    RequestRecord,
    dscp_mask,
    dscp_to_level_table,
    pack_key,
    pidns_inode,
    pin_dir,
    proc_start_ticks,
)
from .model import Batch, Flow, Request, Stage, check_stage
from .policy.base import Policy

__all__ = [
    "Controller",
    "RequestHandle",
    "BatchHandle",
    "StageHandle",
    "FlowHandle",
    "PinnedMaps",
    "FlowView",
    "GcResult",
    "request_key",
    "pack_flow_key",
    "rdma_table",
    "gc",
    "wall_to_monotonic_ns",
    "owner_alive",
]

FlowTarget = Union[socket.socket, FlowKey, tuple]

# map type each pinned map must have (the loader may pick HASH for flows where LRU is missing)
_MAP_TYPES = {
    "flows": {bpfsys.MAP_TYPE_LRU_HASH, bpfsys.MAP_TYPE_HASH},
    "flow_state": {bpfsys.MAP_TYPE_LRU_HASH, bpfsys.MAP_TYPE_HASH},
    "sk_flows": {bpfsys.MAP_TYPE_SK_STORAGE},
    "sk_state": {bpfsys.MAP_TYPE_SK_STORAGE},
    "requests": {bpfsys.MAP_TYPE_HASH, bpfsys.MAP_TYPE_LRU_HASH},
    "levels": {bpfsys.MAP_TYPE_ARRAY},
    "config": {bpfsys.MAP_TYPE_ARRAY},
    "stats": {bpfsys.MAP_TYPE_PERCPU_ARRAY},
    "rules": {bpfsys.MAP_TYPE_ARRAY},
    "rule_stats": {bpfsys.MAP_TYPE_PERCPU_ARRAY},
}
_CREATE_TYPES = {
    "flows": bpfsys.MAP_TYPE_HASH,
    "flow_state": bpfsys.MAP_TYPE_LRU_HASH,
    "requests": bpfsys.MAP_TYPE_HASH,
    "levels": bpfsys.MAP_TYPE_ARRAY,
    "config": bpfsys.MAP_TYPE_ARRAY,
    "stats": bpfsys.MAP_TYPE_PERCPU_ARRAY,
    "rules": bpfsys.MAP_TYPE_ARRAY,
    "rule_stats": bpfsys.MAP_TYPE_PERCPU_ARRAY,
}
_U32_0 = b"\0\0\0\0"
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_GEN_OFF = 20  # offset of mfs_flow_entry.gen
SO_COOKIE = 57


def wall_to_monotonic_ns(wall_ns: int) -> int:
    """This host's CLOCK_MONOTONIC time of the wall-clock (CLOCK_REALTIME, UNIX ns) instant
    `wall_ns`: the offset between the two clocks is read now, from the tightest of three
    bracketed reads (error well under a microsecond; the real error is the hosts' clock sync)."""
    best = None
    for _ in range(3):
        m0 = time.monotonic_ns()
        w = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, w - (m0 + m1) // 2)
    assert best is not None
    return int(wall_ns) - best[1]


# ---- identifiers ----------------------------------------------------------------------------------
def request_key(request_id: int | str) -> int:
    """The 64-bit map key of a request id: ints as they are (1..2**64-1), strings hashed
    (BLAKE2b, stable across processes and runs, never 0)."""
    if isinstance(request_id, bool):
        raise ValueError("request id must be an int or a str, not a bool")
    if isinstance(request_id, int):
        if not 0 < request_id < 1 << 64:
            raise ValueError(f"request id {request_id} out of range: use 1..2**64-1 or a string")
        return request_id
    if isinstance(request_id, str):
        if not request_id:
            raise ValueError("request id must not be empty")
        h = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")
        return h or 1
    raise ValueError(f"request id must be an int or a str, got {type(request_id).__name__}")


_PROTOS: dict[Any, int] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, 6: 6, 17: 17}


def pack_flow_key(target: FlowTarget) -> bytes:
    """The `flows` map key of a connected socket, a FlowKey, or a tuple
    (saddr, daddr, sport, dport[, proto]) with proto "tcp"/"udp"/6/17 (default tcp).
    The source is this host (the classifier runs on egress)."""
    if isinstance(target, tuple):
        n = len(target)
        if n == 5:
            saddr, daddr, sport, dport, proto = target
        elif n == 4:
            saddr, daddr, sport, dport = target
            proto = socket.IPPROTO_TCP
        else:
            raise ValueError(f"a 5-tuple is (saddr, daddr, sport, dport[, proto]), got {n} items")
        p = _PROTOS.get(proto) if isinstance(proto, (str, int)) else None
        if p is None:
            p = _PROTOS.get(proto.lower()) if isinstance(proto, str) else None
            if p is None:
                raise ValueError(f"protocol {proto!r}: only tcp and udp flows are classified")
        return pack_key(saddr, daddr, sport, dport, p)
    if isinstance(target, FlowKey):
        return target.pack()
    if isinstance(target, socket.socket):
        return FlowKey.from_socket(target).pack()
    raise ValueError(
        f"a flow is a connected socket, a FlowKey or a (saddr, daddr, sport, dport[, proto]) tuple, "
        f"got {type(target).__name__}"
    )


def _seconds_to_ns(s: float, what: str) -> int:
    try:
        ns = int(round(float(s) * 1e9))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a number of seconds, got {s!r}") from exc
    return ns


def _nonneg(v: int | float, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} must be a number, got {v!r}")
    if v < 0:
        raise ValueError(f"{what} must not be negative, got {v}")
    return int(v)


# ---- the pinned maps ------------------------------------------------------------------------------
@dataclass
class FlowView:
    """One live `flows` entry as `mfs-tc flows` shows it."""

    key: FlowKey | None  # None: a socket-storage entry (seen through its socket only)
    entry: FlowEntry
    level: int
    cursor: int | None
    scavenged: bool
    request_id: int
    owner_pid: int | None
    state: FlowState | None = None

    def as_dict(self) -> dict:
        e = self.entry
        st = self.state if self.state is not None and self.state.gen == e.gen else None
        return {
            "saddr": self.key.saddr,
            "daddr": self.key.daddr,
            "sport": self.key.sport,
            "dport": self.key.dport,
            "proto": {6: "tcp", 17: "udp"}.get(self.key.proto, self.key.proto),
            "stage": e.stage_name,
            "mode": e.mode_name,
            "level": self.level,
            "cur_level": None if st is None or st.cur_level == LEVEL_NONE else st.cur_level,
            "target_layer": e.target_layer,
            "cursor": self.cursor,
            "scavenged": self.scavenged,
            "sent_bytes": st.sent_bytes if st else e.sent_bytes,
            "sent_pkts": st.sent_pkts if st else 0,
            "total_bytes": e.total_bytes,
            "request_id": self.request_id,
            "owner_pid": self.owner_pid,
            "deadline_ns": e.deadline_ns,
            "thresholds": list(e.thresholds),
            "levels": list(e.levels),
        }


class DeniedMap:
    """A pinned map this process did not open because it is root's (access.MEMBER_ACCESS):
    any use is a PermissionDeniedError naming the fix."""

    fd = -1

    def __init__(self, name: str) -> None:
        self.name = name

    def close(self) -> None:
        pass

    def __getattr__(self, attr: str) -> Any:
        raise access.root_only(self.name, attr.strip("_") or "use")

    def __len__(self) -> int:
        raise access.root_only(self.name, "count")


class PinnedMaps:
    """The maps of one attached interface, opened once. Serves the controller and the
    `flows`/`status`/`gc` commands. `sk_flows`/`sk_state` are None where the attach has no
    socket storage (kernel without it, or maps made by `create`): sockets then use `flows`."""

    def __init__(self, path: Path, maps: dict[str, BpfMap]) -> None:
        self.path = path
        self.flows = maps["flows"]
        self.flow_state = maps["flow_state"]
        self.sk_flows: BpfMap | None = maps.get("sk_flows")
        self.sk_state: BpfMap | None = maps.get("sk_state")
        self.requests = maps["requests"]
        self.levels = maps["levels"]
        self.config_map = maps["config"]
        self.stats_map = maps["stats"]
        self.rules = maps["rules"]
        self.rule_stats = maps["rule_stats"]
        self.config = self.read_config()
        self._level_records: list[LevelRecord] | None = None
        self.member = False  # opened with the access group's share only (not root: docs/access.md)
        self.shared = False  # the pins give an access group some access

    # -- open / create
    @classmethod
    def open(cls, ifname: str, netns: str | None = None, root: Path | str | None = None) -> PinnedMaps:
        """`root` None: the pin root visible from this mount namespace (pinpath.pin_root)."""
        if root is None:
            from .pinpath import pin_root

            root = pin_root()
        return cls.open_dir(pin_dir(ifname, netns, Path(root)), what=_describe(ifname, netns))

    @classmethod
    def open_dir(cls, path: Path | str, what: str | None = None) -> PinnedMaps:
        path = Path(path)
        what = what or str(path)
        try:
            present = path.is_dir()
        except PermissionError:
            raise PermissionDeniedError(
                f"cannot look into {path}: pin directories are root's, mode 0755 (re-attach makes them so: "
                f"`mfs-tc attach {_attach_arg(what)}`); or run as root"
            ) from None
        if not present:
            raise NotAttachedError(f"mfs-tc is not attached to {what} ({path} is missing): "
                                   f"run `mfs-tc attach {_attach_arg(what)}`")
        if access.is_root():
            try:
                return cls._open_maps(path, what, member=False)
            except PermissionDeniedError:
                pass  # root of a user namespace (a container): the host's root owns the pins
        return cls._open_maps(path, what, member=True)

    @classmethod
    def _open_maps(cls, path: Path, what: str, member: bool) -> PinnedMaps:
        """Open every map read-write (root), or (`member`) each with the least access a serving
        process needs (access.MEMBER_ACCESS): root-only maps are not opened (DeniedMap)."""
        maps: dict[str, Any] = {}
        names = MAP_NAMES + (SK_MAP_NAMES if all((path / n).exists() for n in SK_MAP_NAMES) else ())
        try:
            for name in names:
                p = path / name
                flags = access.open_flags(name) if member else 0
                if flags is None:
                    if not p.exists():
                        raise NotAttachedError(f"mfs-tc is not (fully) attached to {what}: {p} is missing: "
                                               f"run `mfs-tc attach {_attach_arg(what)}`")
                    maps[name] = DeniedMap(name)
                    continue
                try:
                    maps[name] = BpfMap.open(p, name, flags)
                except NotAttachedError:
                    raise NotAttachedError(
                        f"mfs-tc is not (fully) attached to {what}: {p} is missing: run `mfs-tc attach {_attach_arg(what)}`"
                    ) from None
                except PermissionDeniedError:
                    if not member:
                        raise
                    raise access.denied(p, what, _attach_arg(what)) from None
                _check_shape(name, maps[name], p)
            pm = cls(path, maps)
            pm.member = member
            pm.shared = access.pins_gid(path) is not None
            return pm
        except BaseException:
            for m in maps.values():
                m.close()
            raise

    @classmethod
    def create(
        cls,
        path: Path | str,
        *,
        nlevels: int = MAX_LEVELS,
        default_level: int | None = None,
        scavenger_level: int | None = None,
        dscp: Sequence[int] | None = None,
        priorities: Sequence[int] | None = None,
        flags: int = 0,
        flows_max: int | None = None,
        requests_max: int | None = None,
        control_level: int = 0,
        keep_dscp: Iterable[int] = (),
    ) -> PinnedMaps:
        """Create the maps of MAP_NAMES shaped per layout.MAP_SHAPES (not the socket-storage
        ones: they need BTF, which only the compiled program brings), pin them in `path` (made
        if missing, under a mounted bpffs) and write config and levels. For tests, benchmarks
        and loaders that do not get their maps from the compiled program."""
        if not 2 <= nlevels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 2..{MAX_LEVELS}, got {nlevels}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        maps: dict[str, BpfMap] = {}
        try:
            for name in MAP_NAMES:
                ks, vs, n = MAP_SHAPES[name]
                if name in ("flows", "flow_state") and flows_max:
                    n = flows_max
                if name == "requests" and requests_max:
                    n = requests_max
                # maps user space updates: freed after an RCU grace period (see the classifier)
                fl = bpfsys.BPF_F_NO_PREALLOC if name in ("flows", "requests") else 0
                m = BpfMap.create(_CREATE_TYPES[name], ks, vs, n, name, fl)
                m.pin(path / name)
                maps[name] = m
            dl = nlevels - 2 if default_level is None else default_level
            sl = nlevels - 1 if scavenger_level is None else scavenger_level
            dscps = list(dscp) if dscp is not None else list(DEFAULT_DSCP[: nlevels - 1]) + [DEFAULT_DSCP[-1]]
            prios = list(priorities) if priorities is not None else list(range(nlevels))
            write_config(maps["config"], maps["levels"], nlevels, dl, sl, flags, dscps, prios,
                         control_level=control_level, keep_dscp=keep_dscp)
            return cls(path, maps)
        except BaseException:
            for m in maps.values():
                m.close()
            raise

    @staticmethod
    def unpin(path: Path | str) -> None:
        """Remove the pins in `path` and the directory (maps go when the last fd closes)."""
        path = Path(path)
        for name in MAP_NAMES + SK_MAP_NAMES:
            try:
                (path / name).unlink()
            except FileNotFoundError:
                pass
        try:
            path.rmdir()
        except OSError:
            pass

    def close(self) -> None:
        for m in (self.flows, self.flow_state, self.sk_flows, self.sk_state, self.requests, self.levels,
                  self.config_map, self.stats_map, self.rules, self.rule_stats):
            if m is not None:
                m.close()

    def __enter__(self) -> PinnedMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads
    def read_config(self) -> ConfigRecord:
        raw = self.config_map.lookup(_U32_0)
        if raw is None:
            raise LayoutMismatchError(f"{self.path}/config has no record 0")
        cfg = ConfigRecord.unpack(raw)
        if cfg.magic != LAYOUT_MAGIC or cfg.version != LAYOUT_VERSION:
            raise LayoutMismatchError(
                f"{self.path}: maps have layout magic {cfg.magic:#x} version {cfg.version}, this "
                f"mfs-tc speaks {LAYOUT_MAGIC:#x} version {LAYOUT_VERSION}: detach and re-attach "
                f"with this mfs-tc (`mfs-tc detach IFACE && mfs-tc attach IFACE`), or use the "
                f"mfs-tc that attached them"
            )
        if not 1 <= cfg.nlevels <= MAX_LEVELS:
            raise LayoutMismatchError(f"{self.path}/config: nlevels {cfg.nlevels} out of range")
        return cfg

    def level_records(self, refresh: bool = False) -> list[LevelRecord]:
        if self._level_records is None or refresh:
            recs = []
            for lv in range(MAX_LEVELS):
                raw = self.levels.lookup(lv.to_bytes(4, "little"))
                recs.append(LevelRecord.unpack(raw) if raw else LevelRecord(lv, DSCP_KEEP))
            self._level_records = recs
        return self._level_records

    def dscp(self, level: int) -> int:
        """DSCP of `level`: what the levels map says, or the default table where it keeps DSCP."""
        n = self.config.nlevels
        if not isinstance(level, int) or not 0 <= level < n:
            raise ValueError(f"level {level!r} out of range: this interface has levels 0..{n - 1}")
        d = self.level_records()[level].dscp
        return DEFAULT_DSCP[level] if d == DSCP_KEEP else d

    def request_records(self) -> dict[int, RequestRecord]:
        return {_U64.unpack(k)[0]: RequestRecord.unpack(v) for k, v in self.requests.items()}

    def flow_entries(self) -> Iterator[tuple[FlowKey, FlowEntry]]:
        for k, v in self.flows.items():
            yield FlowKey.unpack(k), FlowEntry.unpack(v)

    def flow_states(self) -> dict[bytes, FlowState]:
        return {k: FlowState.unpack(v) for k, v in self.flow_state.items()}

    def state_of(self, key: bytes) -> FlowState | None:
        """The kernel's counts for the 5-tuple `key` (any registration: compare gen)."""
        raw = self.flow_state.lookup(key)
        return FlowState.unpack(raw) if raw else None

    def sk_state_of(self, fd: int) -> FlowState | None:
        if self.sk_state is None:
            return None
        raw = self.sk_state.lookup(_I32.pack(fd))
        return FlowState.unpack(raw) if raw else None

    def pressure(self) -> dict[str, Any]:
        """How full the 5-tuple maps are, and what fell out of them (status)."""
        n = len(self.flows)
        mx = self.flows.info.max_entries
        counters = read_counters(self.stats_map)
        return {
            "flows": n,
            "flows_max": mx,
            "flows_fill": round(n / mx, 4) if mx else None,
            "flow_states": len(self.flow_state),
            "eviction": "flows: none (a full map refuses new entries: MapFullError; gc removes "
                        "idle orphans); flow_state: LRU, a state lost under pressure restarts at the "
                        "decision's sent_base; packets whose entry is gone get the default level",
            "stale_packets": counters[STAT_STALE][0],
            "socket_storage": self.sk_flows is not None,
        }

    def flow_views(self, now_ns: int | None = None) -> list[FlowView]:
        """Live 5-tuple flows with the level the classifier would pick now."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        cfg = self.config
        raw = list(self.flows.items())
        states = self.flow_states()
        reqs = self.request_records()
        out = []
        for k, v in raw:
            key, e = FlowKey.unpack(k), FlowEntry.unpack(v)
            st = states.get(k)
            live = st is not None and st.gen == e.gen
            rec = reqs.get(e.request_id) if e.request_id else None
            scav = bool(rec and rec.scavenged)
            cursor = rec.cursor if rec else None
            lv = e.level(
                now,
                sent=st.sent_bytes if live else None,
                cursor=cursor or 0,
                scavenged=scav,
                scavenger_level=cfg.scavenger_level,
                nlevels=cfg.nlevels,
                cur_level=st.cur_level if live else LEVEL_NONE,
                default_level=cfg.default_level,
            )
            out.append(FlowView(key, e, lv, cursor, scav, e.request_id, rec.owner_pid if rec else None, st))
        return out

    def stats(self) -> dict[str, Any]:
        """Per-level and event counters summed over CPUs."""
        per_level = []
        events: dict[str, dict[str, int]] = {}
        for slot, (pk, by) in enumerate(read_counters(self.stats_map)):
            if slot < MAX_LEVELS:
                per_level.append({"level": slot, "packets": pk, "bytes": by})
            elif slot in STAT_NAMES:
                events[STAT_NAMES[slot]] = {"packets": pk, "bytes": by}
        return {"levels": per_level, "events": events}


def read_counters(stats_map: BpfMap) -> list[tuple[int, int]]:
    """(packets, bytes) of every `stats` slot, summed over CPUs."""
    out = []
    for slot in range(NSTATS):
        pk = by = 0
        for v in stats_map.lookup_percpu(slot.to_bytes(4, "little")) or []:
            p, b = struct.unpack(COUNTER_FMT, v)
            pk += p
            by += b
        out.append((pk, by))
    return out


def _describe(ifname: str, netns: str | None) -> str:
    return f"{ifname} (netns {netns})" if netns else ifname


def _attach_arg(what: str) -> str:
    if " (netns " in what:
        ifname, ns = what.split(" (netns ", 1)
        return f"{ifname} --netns {ns.rstrip(')')}"
    return what


def _check_shape(name: str, m: BpfMap, path: Path) -> None:
    ks, vs, n = MAP_SHAPES[name]
    info = m.info
    problems = []
    if info.type not in _MAP_TYPES[name]:
        want = "/".join(sorted(bpfsys.MAP_TYPE_NAMES[t] for t in _MAP_TYPES[name]))
        problems.append(f"type {info.type_name} (want {want})")
    if info.key_size != ks:
        problems.append(f"key size {info.key_size} (want {ks})")
    if info.value_size != vs:
        problems.append(f"value size {info.value_size} (want {vs})")
    if info.type in bpfsys.ARRAY_TYPES and info.max_entries != n:
        problems.append(f"{info.max_entries} entries (want {n})")
    if problems:
        raise LayoutMismatchError(
            f"{path} does not have the layout {LAYOUT_VERSION} shape: {', '.join(problems)}. It was "
            f"made by another mfs-tc version: detach and re-attach with this one"
        )


def write_config(
    config_map: BpfMap,
    levels_map: BpfMap,
    nlevels: int,
    default_level: int,
    scavenger_level: int,
    flags: int,
    dscp: Sequence[int],
    priorities: Sequence[int],
    trust_table: Sequence[int] | None = None,
    control_level: int = 0,
    keep_dscp: Iterable[int] = (),
) -> None:
    """Write the `levels` records (skb->priority and DSCP per level; levels past nlevels map to
    the last) and then the `config` record: the classifier acts only once config carries the
    magic, so a half-written set is never used. `trust_table`: the DSCPs the trust-dscp table is
    built from (default: `dscp`). `default_level`: payload of unknown flows; `control_level`:
    their pure control packets (SYN/FIN/RST/ACK without payload); `keep_dscp`: DSCP values that
    untracked traffic keeps (all other untracked IP traffic leaves with its level's DSCP)."""
    if len(dscp) != nlevels or len(priorities) != nlevels:
        raise ValueError(f"{len(dscp)} DSCP values and {len(priorities)} priorities for {nlevels} levels")
    for what, lv in (("default level", default_level), ("control level", control_level),
                     ("scavenger level", scavenger_level)):
        if not 0 <= lv < nlevels:
            raise ValueError(f"{what} {lv} out of range: levels are 0..{nlevels - 1}")
    for lv in range(MAX_LEVELS):
        i = min(lv, nlevels - 1)
        levels_map.update(lv.to_bytes(4, "little"), LevelRecord(priorities[i], dscp[i]).pack())
    table = dscp_to_level_table(list(trust_table if trust_table is not None else dscp), default_level)
    config_map.update(
        _U32_0,
        ConfigRecord(nlevels, default_level, scavenger_level, flags, table, control_level, dscp_mask(keep_dscp)).pack(),
    )


# ---- policy resolution ----------------------------------------------------------------------------
def resolve_policy(policy: Policy | str, nlevels: int, **config: Any) -> Policy:
    if isinstance(policy, Policy):
        if config:
            raise ValueError("policy options go to make_policy: pass a policy name, not an instance, with options")
        return policy
    if not isinstance(policy, str):
        raise ValueError(f"policy must be a name or a Policy, got {type(policy).__name__}")
    try:
        from .policy import make_policy  # type: ignore[attr-defined]
    except ImportError as exc:
        raise MfsError(f"policy {policy!r}: the policy registry (mfs_tc.policy.make_policy) is not available") from exc
    config.setdefault("nlevels", nlevels)
    return make_policy(policy, **config)


# ---- handles -------------------------------------------------------------------------------------
class FlowHandle:
    """One registered flow. `update()` re-asks the policy with new bytes/target; `remove()`.

    `key` identifies the flow in this controller: the 5-tuple map key, or for a socket-storage
    flow b"sk" + the socket's fd (`sock` is then the socket). `gen` is the registration the
    kernel's counts belong to."""

    __slots__ = ("owner", "stage", "key", "flow", "entry", "removed", "gen", "sock")

    def __init__(
        self,
        owner: _Owner,
        stage: StageHandle,
        key: bytes,
        flow: Flow,
        entry: FlowEntry | None = None,
        gen: int = 0,
        sock: socket.socket | None = None,
    ) -> None:
        self.owner = owner
        self.stage = stage
        self.key = key
        # replaced on change, never mutated here: flows of one add_flows call may share one
        # object, so change a flow through update(), not by assigning its fields
        self.flow = flow
        self.entry = entry  # the decision last written (shared by flows of one decision)
        self.removed = False
        self.gen = gen
        self.sock = sock

    @property
    def on_socket(self) -> bool:
        """Whether the entry lives in the socket's storage (else in the 5-tuple map)."""
        return self.sock is not None

    @property
    def flow_key(self) -> FlowKey:
        if self.sock is not None:
            return FlowKey.from_socket(self.sock)
        return FlowKey.unpack(self.key)

    def state(self) -> FlowState | None:
        """What the kernel counted for this registration (None before its first packet)."""
        maps = self.owner.ctl.maps
        if self.sock is not None:
            fd = self.sock.fileno()
            st = maps.sk_state_of(fd) if fd >= 0 else None
        else:
            st = maps.state_of(self.key)
        return st if st is not None and st.gen == self.gen else None

    def update(
        self,
        *,
        bytes: int | None = None,
        target_layer: int | None = None,
        true_remaining_work_ns: int | None = None,
    ) -> None:
        """New estimates for this flow (the oracle's true remaining work for `llf-oracle`): the
        policy is asked again and the entry rewritten, keeping the kernel's counters."""
        f = self.flow
        changes: dict[str, Any] = {}
        if bytes is not None:
            changes["bytes"] = _nonneg(bytes, "flow bytes")
        if target_layer is not None:
            changes["target_layer"] = _nonneg(target_layer, "target layer")
        if true_remaining_work_ns is not None:
            changes["true_remaining_work_ns"] = _nonneg(true_remaining_work_ns, "true_remaining_work_ns")
        with self.owner.ctl._lock:
            if self.removed:
                raise MfsError("this flow was removed (or its connection re-registered): add it again")
            if changes:
                self.flow = dataclasses.replace(f, **changes)
            self.owner._rewrite([self])

    def read(self) -> FlowEntry | None:
        """The decision in the map now, with the kernel's counts of this registration filled in
        (sent_bytes, cur_level; before the first packet: the decision's own sent_bytes)."""
        maps = self.owner.ctl.maps
        if self.sock is not None:
            fd = self.sock.fileno()
            raw = maps.sk_flows.lookup(_I32.pack(fd)) if fd >= 0 and maps.sk_flows is not None else None
        else:
            raw = maps.flows.lookup(self.key)
        if not raw:
            return None
        e = FlowEntry.unpack(raw)
        st = self.state()
        if st is not None and st.gen == e.gen:
            e.sent_bytes, e.cur_level = st.sent_bytes, st.cur_level
        return e

    def remove(self) -> None:
        with self.owner.ctl._lock:
            self.owner._drop([self])


class StageHandle:
    """A stage of a request (or batch): registers its flows."""

    def __init__(self, owner: _Owner, stage: Stage) -> None:
        self.owner = owner
        self.stage = stage
        self.flows: list[FlowHandle] = []
        # (owner version, bytes, target, sent) -> (decided at, packed, entry): see _entry_for
        self._cache: dict[tuple, tuple[int, bytes, FlowEntry]] = {}

    @property
    def name(self) -> str:
        return self.stage.name

    def _default_layer(self) -> int:
        return self.stage.layer if self.stage.layer is not None else 0

    def add_flow(
        self, target: FlowTarget, *, bytes: int = 0, target_layer: int | None = None, sent: int = 0
    ) -> FlowHandle:
        """Register one flow (a socket, FlowKey or 5-tuple) of this stage. A socket goes to its
        own storage where the attach has it (one map write keyed by its fd), else to the
        5-tuple map (then it must be connected)."""
        ctl = self.owner.ctl
        sock = target if isinstance(target, socket.socket) and ctl.maps.sk_flows is not None else None
        if sock is not None:
            fd = sock.fileno()
            if fd < 0:
                raise ValueError("the socket is closed")
            key = b"sk" + _I32.pack(fd)
        else:
            key = pack_flow_key(target)
        if type(bytes) is not int or bytes < 0:
            bytes = _nonneg(bytes, "flow bytes")
        tl = self._default_layer() if target_layer is None else target_layer
        if type(tl) is not int or tl < 0:
            tl = _nonneg(tl, "target layer")
        if sent and (type(sent) is not int or sent < 0):
            sent = _nonneg(sent, "sent bytes")
        flow = Flow(bytes, tl, None, sent)
        owner = self.owner
        with ctl._lock:
            owner._check_live()
            v, e = owner._entry_for(self, flow, ctl.clock())
            gen = ctl._next_gen()
            v = v[:_GEN_OFF] + _U32.pack(gen) + v[_GEN_OFF + 4 :]
            fh = FlowHandle(owner, self, key, flow, e, gen, sock)
            if sock is not None:
                ctl.maps.sk_flows.update(key[2:], v)
            else:
                ctl.maps.flows.update(key, v)
            ctl._claim(fh)
            self.flows.append(fh)
        return fh

    def add_flows(
        self,
        targets: Iterable[FlowTarget],
        *,
        bytes: int | Sequence[int] = 0,
        target_layer: int | Sequence[int] | None = None,
        sent: int = 0,
    ) -> list[FlowHandle]:
        """Register many flows in one batched map write (BPF_MAP_UPDATE_BATCH). `bytes` and
        `target_layer` are one value for all or one per flow. Sockets go to their storage where
        the attach has it (see add_flow)."""
        ctl = self.owner.ctl
        targets = list(targets)
        socks: list[socket.socket | None] = [None] * len(targets)
        if ctl.maps.sk_flows is not None:
            keys = []
            for i, t in enumerate(targets):
                if isinstance(t, socket.socket):
                    if t.fileno() < 0:
                        raise ValueError("a socket is closed")
                    socks[i] = t
                    keys.append(b"sk" + _I32.pack(t.fileno()))
                else:
                    keys.append(pack_flow_key(t))
        else:
            keys = [pack_flow_key(t) for t in targets]
        n = len(keys)
        if n == 0:
            return []
        s = _nonneg(sent, "sent bytes")
        tl = self._default_layer() if target_layer is None else target_layer
        uniform = not isinstance(bytes, (list, tuple)) and not isinstance(tl, (list, tuple))
        if uniform:
            flows = [Flow(_nonneg(bytes, "flow bytes"), _nonneg(tl, "target layer"), None, s)] * n
        else:
            bl = _per_flow(bytes, n, "bytes")
            tll = _per_flow(tl, n, "target_layer")
            flows = [Flow(_nonneg(b, "flow bytes"), _nonneg(t, "target layer"), None, s) for b, t in zip(bl, tll, strict=False)]
        owner = self.owner
        with ctl._lock:
            owner._check_live()
            now = ctl.clock()
            gen = ctl._next_gen()
            g = _U32.pack(gen)
            if uniform:
                v, e = owner._entry_for(self, flows[0], now)
                v = v[:_GEN_OFF] + g + v[_GEN_OFF + 4 :]
                f0 = flows[0]
                if not any(socks):  # all 5-tuples: one batch write of one decision, n times
                    handles = [FlowHandle(owner, self, k, f0, e, gen) for k in keys]
                    ctl.maps.flows.update_batch_raw(b"".join(keys), v * n, n)
                    ctl._claim_many(handles, keys)
                    self.flows.extend(handles)
                    return handles
                handles = [FlowHandle(owner, self, k, f0, e, gen, sk) for k, sk in zip(keys, socks, strict=False)]
                vals = [v] * n
            else:
                handles, vals = [], []
                for k, f, sk in zip(keys, flows, socks, strict=False):
                    v, e = owner._entry_for(self, f, now)
                    handles.append(FlowHandle(owner, self, k, f, e, gen, sk))
                    vals.append(v[:_GEN_OFF] + g + v[_GEN_OFF + 4 :])
            ctl._write_entries(handles, vals)
            ctl._claim_many(handles, keys)
            self.flows.extend(handles)
        return handles

    def update(self, *, bytes: int | None = None, compute_after_s: float | None = None) -> None:
        """New estimates for the stage; its flows are rewritten."""
        with self.owner.ctl._lock:
            if bytes is not None:
                self.stage.bytes = _nonneg(bytes, "stage bytes")
            if compute_after_s is not None:
                self.stage.compute_after_ns = _nonneg(_seconds_to_ns(compute_after_s, "compute_after_s"), "compute_after_s")
            self.owner._version += 1
            self.owner._rewrite([f for f in self.flows if not f.removed])


def _per_flow(v: Any, n: int, what: str) -> list:
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ValueError(f"{len(v)} values of {what} for {n} flows")
        return list(v)
    return [v] * n


class _Owner:
    """What requests and batches share: a map record (cursor, scavenger flag) and flows."""

    def __init__(self, ctl: Controller, key: int, model: Request, deadline_ns: int) -> None:
        self.ctl = ctl
        self.id = key
        self._rkey = _U64.pack(key)  # the `requests` key, packed once (at_layer writes it often)
        self.model = model
        self.label = key  # request_key(the caller's id): this controller's name for it
        o = ctl.owner
        self.record = RequestRecord(0, 0, deadline_ns, o.pid, o.start, o.pidns)
        self.stages: list[StageHandle] = []
        self.flows: dict[bytes, FlowHandle] = {}
        self.closed = False
        self._version = 0  # bumped whenever what the policy sees of this request changes

    # -- lifecycle
    def _check_live(self) -> None:
        if self.closed:
            raise MfsError(f"request {self.id:#x} is done: register flows before done()")

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()

    def done(self) -> None:
        """Remove the record and every flow this request still owns. Idempotent."""
        with self.ctl._lock:
            if self.closed:
                return
            self.closed = True
            self._drop(list(self.flows.values()))
            key = self._rkey
            # a private key was inserted with BPF_NOEXIST: the record is ours. A shared one (the id
            # or its hash) may hold another process's record by now: delete only our own
            if self.ctl.private_keys or self._record_owner() == self.ctl.owner:
                self.ctl.maps.requests.delete(key)
            self.ctl._owners.pop(self.label, None)

    # -- stages
    def stage(
        self, name: str, *, bytes: int = 0, compute_after_s: float = 0.0, layer: int | None = None
    ) -> StageHandle:
        """A stage of this request: "kv_fetch", "collective" or "p2d"."""
        check_stage(name)
        st = Stage(
            name,
            _nonneg(bytes, "stage bytes"),
            _nonneg(_seconds_to_ns(compute_after_s, "compute_after_s"), "compute_after_s"),
            None if layer is None else _nonneg(layer, "layer"),
        )
        with self.ctl._lock:
            self._check_live()
            h = StageHandle(self, st)
            self.stages.append(h)
            self._check_hopeless()
        return h

    # -- cursor
    def at_layer(self, layer: int) -> None:
        """Move the compute cursor: one write of the request record; the kernel re-levels this
        request's rli flows on their next packet."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not -(1 << 31) <= layer < 1 << 31:
            raise ValueError(f"layer must be a 32-bit integer, got {layer!r}")
        with self.ctl._lock:
            self._check_live()
            self.model.cursor = layer
            self.record.cursor = layer
            self._version += 1
            if not self._check_hopeless():
                self._write_record()

    # -- policy plumbing
    def _hopeless(self, now: int) -> bool:
        return self.ctl.policy.is_hopeless(self.model, now)

    def _check_hopeless(self) -> bool:
        """Set the scavenger flag (sticky) when the policy gives up on this request and write
        the record; True if it wrote."""
        if self.record.flags & R_SCAVENGER:
            return False
        if self._hopeless(self.ctl.clock()):
            self.record.flags |= R_SCAVENGER
            self.model.scavenged = True
            self._version += 1
            self._write_record()
            return True
        return False

    def _write_record(self) -> None:
        self.ctl.maps.requests.update(self._rkey, self.record.pack())

    def _record_owner(self) -> Owner | None:
        raw = self.ctl.maps.requests.lookup(self._rkey)
        return RequestRecord.unpack(raw).owner if raw is not None else None

    def _create_record(self) -> None:
        """Write the record the first time. With private keys (controller.private_keys) the map
        key is 64 random bits, inserted with BPF_NOEXIST: nobody else's record is overwritten,
        and a process that may only write `requests` cannot find it to change it."""
        if not self.ctl.private_keys:
            self._write_record()
            return
        for _ in range(8):
            key = secrets.randbits(64) or 1
            try:
                self.ctl.maps.requests.update(_U64.pack(key), self.record.pack(), bpfsys.BPF_NOEXIST)
            except BpfSyscallError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                raise
            self.id = self.model.request_id = key
            self._rkey = _U64.pack(key)
            return
        raise MfsError("no free request key after 8 random tries: the requests map is corrupt or under attack")

    def _entry_for(self, stage: StageHandle, flow: Flow, now: int) -> tuple[bytes, FlowEntry]:
        """The packed entry for a new flow. Flows of one stage with the same bytes, target layer
        and sent bytes, registered at the same instant (one add_flows call) or within the
        controller's `entry_cache_ns` of each other while nothing the policy sees of the request
        changed, share one policy decision."""
        ck = (self._version, flow.bytes, flow.target_layer, flow.sent)
        hit = stage._cache.get(ck)
        if hit is not None and now - hit[0] <= self.ctl.entry_cache_ns:
            return hit[1], hit[2]
        e = self.ctl.policy.entry(self.model, stage.stage, flow, now)
        e.request_id = self.id
        e.stage = STAGE_CODES.get(stage.stage.name, 0)
        e.created_ns = now
        if not e.total_bytes:  # unused by modes that ignore it; shown by `mfs-tc flows`
            e.total_bytes = flow.bytes
        v = e.pack()
        if len(stage._cache) >= 64:
            stage._cache.clear()
        stage._cache[ck] = (now, v, e)
        return v, e

    def _rewrite(self, handles: list[FlowHandle]) -> None:
        """Re-ask the policy with what the kernel counted so far and write the new decisions
        (same gen). The kernel's counts are in another map that this never writes: nothing the
        kernel counts meanwhile is lost."""
        self._check_live()
        now = self.ctl.clock()
        vals = []
        for fh in handles:
            st = fh.state()
            if st is not None and st.sent_bytes != fh.flow.sent:
                fh.flow = dataclasses.replace(fh.flow, sent=st.sent_bytes)
            e = self.ctl.policy.entry(self.model, fh.stage.stage, fh.flow, now)
            e.request_id = self.id
            e.stage = STAGE_CODES.get(fh.stage.stage.name, 0)
            if not e.total_bytes:
                e.total_bytes = fh.flow.bytes
            # sent_bytes (the policy's flow.sent) is where a lost state would restart
            e.created_ns = fh.entry.created_ns if fh.entry is not None else now
            e.gen = fh.gen
            fh.entry = e
            vals.append(e.pack())
        if handles:
            self.ctl._write_entries(handles, vals)

    def _drop(self, handles: list[FlowHandle]) -> None:
        """Remove the entries of these flows that are still ours: in the map with our gen (an
        entry another controller wrote since on the same 5-tuple stays)."""
        ctl = self.ctl
        mine = [fh for fh in handles if not fh.removed and ctl._owner_of.get(fh.key) is fh]
        for fh in handles:
            fh.removed = True
            self.flows.pop(fh.key, None)
        if not mine:
            return
        tuples = []
        for fh in mine:
            ctl._owner_of.pop(fh.key, None)
            if fh.sock is not None:
                fd = fh.sock.fileno()
                if fd >= 0 and ctl.maps.sk_flows is not None:
                    raw = ctl.maps.sk_flows.lookup(fh.key[2:])
                    if raw is not None and _U32.unpack_from(raw, _GEN_OFF)[0] == fh.gen:
                        ctl.maps.sk_flows.delete(fh.key[2:])
                continue
            tuples.append(fh)
        if tuples:
            self._delete_own(tuples)

    def _delete_own(self, handles: list[FlowHandle]) -> None:
        """Delete these 5-tuple entries where they are still this registration's: the map's
        entry carries our gen and our request id, and our request record names this process
        (pid + start time + pid namespace) as its owner. Each is removed with one atomic
        lookup-and-delete and checked after: an entry another controller wrote in between is
        put back at once (BPF_NOEXIST: a still newer one wins). Its packets in those few
        microseconds get the rules' or default level (docs/access.md)."""
        flows, ctl = self.ctl.maps.flows, self.ctl
        owner = self._record_owner()
        if owner is not None and owner != ctl.owner:
            return  # our request key holds someone else's record: none of these entries is ours
        rid = _U64.pack(self.id)
        for fh in handles:
            try:
                v = flows.lookup_and_delete(fh.key)
            except BpfSyscallError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, bpfsys.ENOTSUPP):
                    raise
                v = flows.lookup(fh.key)  # kernel before 5.14: check, then delete (a short race)
                if v is not None and _U32.unpack_from(v, _GEN_OFF)[0] == fh.gen and v[24:32] == rid:
                    flows.delete(fh.key)
                continue
            if v is not None and (_U32.unpack_from(v, _GEN_OFF)[0] != fh.gen or v[24:32] != rid):
                try:
                    flows.update(fh.key, v, bpfsys.BPF_NOEXIST)
                except BpfSyscallError as exc:
                    if exc.errno != errno.EEXIST:
                        raise

    def update_estimate(
        self,
        *,
        remaining_bytes: int | None = None,
        remaining_compute_s: float | None = None,
        slo_s: float | None = None,
    ) -> None:
        """New estimates of the work ahead: the policy is asked again for every flow (kernel
        counters kept) and the scavenger flag is set if the request became hopeless."""
        with self.ctl._lock:
            self._check_live()
            if remaining_bytes is not None:
                self.model.remaining_bytes = _nonneg(remaining_bytes, "remaining_bytes")
            if remaining_compute_s is not None:
                self.model.remaining_compute_ns = _nonneg(
                    _seconds_to_ns(remaining_compute_s, "remaining_compute_s"), "remaining_compute_s"
                )
            if slo_s is not None:
                ns = _seconds_to_ns(slo_s, "slo_s")
                if ns <= 0:
                    raise ValueError(f"SLO must be positive, got {slo_s} s")
                self.model.slo_ns = ns
                self.record.deadline_ns = self.model.deadline_ns
                self._write_record()
            self._version += 1
            self._check_hopeless()
            self._rewrite([fh for fh in self.flows.values() if not fh.removed])

    def scavenge(self) -> None:
        """Give this request up: its flows go to the scavenger level (the kernel reads the
        request's flag for every entry carrying its id; sticky). For a decision made beside the
        policy, e.g. a decode-side p2d admission (policy.admission.moore_hodgson)."""
        with self.ctl._lock:
            self._check_live()
            if self.record.flags & R_SCAVENGER:
                return
            self.record.flags |= R_SCAVENGER
            self.model.scavenged = True
            self._version += 1
            self._write_record()

    @property
    def scavenged(self) -> bool:
        return bool(self.record.flags & R_SCAVENGER)

    def read_record(self) -> RequestRecord | None:
        raw = self.ctl.maps.requests.lookup(_U64.pack(self.id))
        return RequestRecord.unpack(raw) if raw else None


class RequestHandle(_Owner):
    """A request: its record in `requests` (cursor, scavenger flag) and its flows."""

    @property
    def deadline_ns(self) -> int:
        return self.model.deadline_ns


class BatchHandle(_Owner):
    """Requests prefilled together. Flows added through the batch serve all members: the policy
    sees the members' deadlines (RED), the entries point at the batch's own record, whose cursor
    `at_layer` moves (with the members'). The batch is scavenged only when every member is."""

    def __init__(self, ctl: Controller, key: int, members: list[RequestHandle]) -> None:
        deadlines = sorted(m.model.deadline_ns for m in members)
        tight = min(members, key=lambda m: m.model.deadline_ns).model
        model = Request(
            request_id=key,
            arrival_ns=tight.arrival_ns,
            slo_ns=tight.slo_ns,
            num_layers=max(m.model.num_layers for m in members),
            cursor=0,
            remaining_bytes=sum(m.model.remaining_bytes for m in members),
            remaining_compute_ns=max(m.model.remaining_compute_ns for m in members),
            batch=Batch(key, deadlines),
        )
        super().__init__(ctl, key, model, deadlines[-1])
        self.members = members
        for m in members:
            m.model.batch = model.batch

    def _hopeless(self, now: int) -> bool:
        return all(m.scavenged or m._hopeless(now) for m in self.members)

    def at_layer(self, layer: int) -> None:
        """Move the batch's cursor and its live members' (one batched write)."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not -(1 << 31) <= layer < 1 << 31:
            raise ValueError(f"layer must be a 32-bit integer, got {layer!r}")
        with self.ctl._lock:
            self._check_live()
            now = self.ctl.clock()
            owners: list[_Owner] = [m for m in self.members if not m.closed]
            for o in owners:
                o.model.cursor = o.record.cursor = layer
                o._version += 1
                if not o.record.flags & R_SCAVENGER and o._hopeless(now):
                    o.record.flags |= R_SCAVENGER
                    o.model.scavenged = True
            self.model.cursor = self.record.cursor = layer
            self._version += 1
            if not self.record.flags & R_SCAVENGER and self._hopeless(now):
                self.record.flags |= R_SCAVENGER
                self.model.scavenged = True
            owners.append(self)
            self.ctl.maps.requests.update_batch_raw(
                b"".join(_U64.pack(o.id) for o in owners), b"".join(o.record.pack() for o in owners), len(owners)
            )


# ---- the controller -------------------------------------------------------------------------------
class Controller:
    """Registers requests, stages and flows of one attached interface."""

    def __init__(
        self,
        maps: PinnedMaps,
        policy: Policy,
        *,
        clock=time.monotonic_ns,
        owner_pid: int | None = None,
        entry_cache_ns: int = 1_000_000,
        private_keys: bool | None = None,
    ) -> None:
        """`entry_cache_ns`: flows of one stage with equal bytes/target registered within this
        long of each other (and no request change between) reuse the policy's decision; 0 asks
        the policy for every add_flow (one add_flows call always asks once per distinct shape).
        `private_keys`: request records under random 64-bit keys (BPF_NOEXIST) instead of the
        request id (or its hash); default: where an access group shares the maps, or this process
        is not root (docs/access.md)."""
        if entry_cache_ns < 0:
            raise ValueError("entry_cache_ns must not be negative")
        self.maps = maps
        self.policy = policy
        self.clock = clock
        self.entry_cache_ns = entry_cache_ns
        self.owner = Owner.of(owner_pid)
        self.owner_pid = self.owner.pid
        self.private_keys = (maps.member or maps.shared) if private_keys is None else private_keys
        self._gen = random.getrandbits(32)
        self._lock = threading.RLock()
        self._owners: dict[int, _Owner] = {}
        self._owner_of: dict[bytes, FlowHandle] = {}

    @classmethod
    def open(
        cls,
        ifname: str,
        netns: str | None = None,
        policy: Policy | str = "mfs",
        *,
        root: Path | str | None = None,
        pin_path: Path | str | None = None,
        entry_cache_ns: int = 1_000_000,
        private_keys: bool | None = None,
        **config: Any,
    ) -> Controller:
        """Open the maps mfs-tc pinned for `ifname` (in `netns`) and build the policy
        (`make_policy(policy, **config)`; nlevels defaults to the attached level count)."""
        maps = PinnedMaps.open_dir(pin_path) if pin_path is not None else PinnedMaps.open(ifname, netns, root)
        try:
            pol = resolve_policy(policy, maps.config.nlevels, **config)
        except BaseException:
            maps.close()
            raise
        return cls(maps, pol, entry_cache_ns=entry_cache_ns, private_keys=private_keys)

    def close(self) -> None:
        """Finish every open request of this controller and close the maps."""
        with self._lock:
            for o in list(self._owners.values()):
                if isinstance(o, BatchHandle):
                    o.done()
            for o in list(self._owners.values()):
                o.done()
            self.maps.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests
    def request(
        self,
        request_id: int | str,
        slo_s: float | None = None,
        arrival: float | None = None,
        *,
        arrival_ns: int | None = None,
        arrival_wall: float | None = None,
        deadline_wall: float | None = None,
        num_layers: int = 1,
        remaining_bytes: int = 0,
        remaining_compute_s: float = 0.0,
    ) -> RequestHandle:
        """Register a request: `slo_s` its TTFT SLO in seconds, `arrival` in seconds of
        time.monotonic() (or `arrival_ns` of time.monotonic_ns(); default now).

        Across hosts, pass wall-clock (UNIX, time.time()) seconds instead, as serving systems
        carry them in request metadata: `arrival_wall` (with `slo_s`) and/or `deadline_wall`
        (the absolute TTFT deadline; then `slo_s` may be left out). They are converted once, here,
        to this host's CLOCK_MONOTONIC (`wall_to_monotonic_ns`); the deadline is then as exact
        as the hosts' clocks agree (see docs/controller.md)."""
        key = request_key(request_id)
        if arrival_wall is not None:
            if arrival is not None or arrival_ns is not None:
                raise ValueError("give one arrival: arrival, arrival_ns or arrival_wall")
            arrival_ns = wall_to_monotonic_ns(_seconds_to_ns(arrival_wall, "arrival_wall"))
        if arrival_ns is None:
            arrival_ns = self.clock() if arrival is None else _seconds_to_ns(arrival, "arrival")
        if deadline_wall is not None:
            dl = wall_to_monotonic_ns(_seconds_to_ns(deadline_wall, "deadline_wall"))
            if slo_s is not None:
                raise ValueError("give slo_s or deadline_wall, not both")
            slo_ns = dl - int(arrival_ns)
            if slo_ns <= 0:
                raise ValueError(
                    f"deadline_wall {deadline_wall} is {-slo_ns / 1e9:.6f} s before the arrival: already "
                    f"missed (or this host's clock is off: check chrony/PTP sync)"
                )
        else:
            if slo_s is None:
                raise ValueError("a request needs slo_s or deadline_wall")
            slo_ns = _seconds_to_ns(slo_s, "slo_s")
            if slo_ns <= 0:
                raise ValueError(f"SLO must be positive, got {slo_s} s")
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        model = Request(
            request_id=key,
            arrival_ns=int(arrival_ns),
            slo_ns=slo_ns,
            num_layers=num_layers,
            remaining_bytes=_nonneg(remaining_bytes, "remaining_bytes"),
            remaining_compute_ns=_nonneg(_seconds_to_ns(remaining_compute_s, "remaining_compute_s"), "remaining_compute_s"),
        )
        with self._lock:
            if key in self._owners:
                raise ValueError(f"request {request_id!r} is already registered: call done() on it first")
            h = RequestHandle(self, key, model, model.deadline_ns)
            if policy_hopeless(self.policy, model, self.clock()):
                h.record.flags |= R_SCAVENGER
                model.scavenged = True
            h._create_record()
            self._owners[key] = h
        return h

    def batch(self, requests: Sequence[RequestHandle], batch_id: int | str | None = None) -> BatchHandle:
        """Group requests prefilled together; flows added through it serve all of them."""
        members = list(requests)
        if not members:
            raise ValueError("a batch needs at least one request")
        for m in members:
            if not isinstance(m, RequestHandle) or m.ctl is not self:
                raise ValueError("batch members must be requests of this controller")
            if m.closed:
                raise ValueError(f"request {m.id:#x} is done: it cannot join a batch")
        if batch_id is None:
            batch_id = "batch:" + ",".join(str(m.id) for m in sorted(members, key=lambda m: m.id))
        key = request_key(batch_id)
        with self._lock:
            if key in self._owners:
                raise ValueError(f"batch {batch_id!r} is already registered")
            b = BatchHandle(self, key, members)
            if b._hopeless(self.clock()):
                b.record.flags |= R_SCAVENGER
                b.model.scavenged = True
            b._create_record()
            self._owners[key] = b
        return b

    def _next_gen(self) -> int:
        """A registration id: per controller a counter from a random start, never 0."""
        self._gen = (self._gen + 1) & 0xFFFFFFFF or 1
        return self._gen

    def _write_entries(self, handles: list[FlowHandle], vals: list[bytes]) -> None:
        """Write decisions: 5-tuple ones in one batch, socket ones keyed by their fd."""
        tk, tv = [], []
        for fh, v in zip(handles, vals, strict=False):
            if fh.sock is not None:
                self.maps.sk_flows.update(fh.key[2:], v)  # type: ignore[union-attr]
            else:
                tk.append(fh.key)
                tv.append(v)
        if tk:
            self.maps.flows.update_batch_raw(b"".join(tk), b"".join(tv), len(tk))

    def _claim(self, fh: FlowHandle) -> None:
        k = fh.key
        prev = self._owner_of.get(k)
        if prev is not None and prev is not fh:
            prev.owner.flows.pop(k, None)  # the connection now belongs to the new flow
            prev.removed = True
        self._owner_of[k] = fh
        fh.owner.flows[k] = fh

    def _claim_many(self, handles: list[FlowHandle], keys: list[bytes]) -> None:
        new = dict(zip(keys, handles, strict=False))
        if len(new) != len(handles) or not self._owner_of.keys().isdisjoint(new):
            for fh in handles:  # some connections change hands (or repeat): one by one
                self._claim(fh)
            return
        self._owner_of.update(new)
        handles[0].owner.flows.update(new)

    # -- static entries (operators, `mfs-tc set`)
    def set_static(self, target: FlowTarget, level: int) -> bytes:
        return set_static(self.maps, target, level, now_ns=self.clock())

    # -- RoCE
    def traffic_class(self, level: int) -> int:
        """The RoCE/IB traffic class of `level` (DSCP << 2) for NCCL_IB_TC, UCX_IB_TRAFFIC_CLASS
        and MC_IB_TC: RDMA bypasses tc, so the application marks its own queue pairs."""
        return self.maps.dscp(level) << 2

    def rdma_table(self) -> list[dict]:
        return rdma_table(self.maps.level_records()[: self.maps.config.nlevels])

    def flows(self) -> list[FlowView]:
        return self.maps.flow_views(self.clock())


def policy_hopeless(policy: Policy, model: Request, now: int) -> bool:
    return policy.is_hopeless(model, now)


def set_static(maps: PinnedMaps, target: FlowTarget, level: int, now_ns: int | None = None) -> bytes:
    """Write a static entry (no request) for an operator: `level` for every packet of the flow."""
    n = maps.config.nlevels
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < n:
        raise ValueError(f"level {level!r} out of range: this interface has levels 0..{n - 1}")
    key = pack_flow_key(target)
    e = FlowEntry.static(level, created_ns=time.monotonic_ns() if now_ns is None else now_ns,
                         gen=random.getrandbits(32) or 1)
    maps.flows.update(key, e.pack())
    return key


def rdma_table(levels: int | Sequence[LevelRecord | int]) -> list[dict]:
    """Per level: DSCP and the traffic class (DSCP << 2) to give NCCL_IB_TC,
    UCX_IB_TRAFFIC_CLASS and MC_IB_TC. `levels` is a level count (default DSCP table), a list of
    DSCPs or the LevelRecords of an attached interface."""
    if isinstance(levels, int):
        if not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 1..{MAX_LEVELS}, got {levels}")
        dscps = list(DEFAULT_DSCP[: levels - 1]) + [DEFAULT_DSCP[-1]] if levels > 1 else [DEFAULT_DSCP[0]]
    else:
        dscps = []
        for i, lv in enumerate(levels):
            d = lv.dscp if isinstance(lv, LevelRecord) else int(lv)
            if d == DSCP_KEEP:
                d = DEFAULT_DSCP[min(i, len(DEFAULT_DSCP) - 1)]
            if not 0 <= d < 64:
                raise ValueError(f"DSCP {d} of level {i} out of range 0..63")
            dscps.append(d)
    out = []
    for i, d in enumerate(dscps):
        tc = d << 2
        out.append(
            {"level": i, "dscp": d, "traffic_class": tc, "NCCL_IB_TC": tc, "UCX_IB_TRAFFIC_CLASS": tc, "MC_IB_TC": tc}
        )
    return out


# ---- garbage collection ---------------------------------------------------------------------------
STAGE_ORPHAN = 0xFF  # `stage` of a flow entry gc demoted because its request or owner is gone


@dataclass
class GcResult:
    requests_removed: list[int] = field(default_factory=list)  # owner gone
    requests_scavenged: list[int] = field(default_factory=list)  # past deadline + grace, owner alive
    flows_demoted: int = 0  # orphaned 5-tuple flows rewritten to the scavenger level
    flows_removed: int = 0  # demoted flows that sent nothing since the previous gc

    def as_dict(self) -> dict:
        return {
            "requests_removed": [f"{r:#x}" for r in self.requests_removed],
            "requests_scavenged": [f"{r:#x}" for r in self.requests_scavenged],
            "flows_demoted": self.flows_demoted,
            "flows_removed": self.flows_removed,
        }


def pid_alive(pid: int) -> bool:
    """Whether process `pid` (of this pid namespace) exists (a pid of 0 or less, unknown, counts
    as alive). For a request's owner use owner_alive, which survives pid reuse and namespaces."""
    if pid <= 0:
        return True  # unknown owner: judge by deadline only
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _nspid(pid: str, proc: str) -> list[int]:
    try:
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def owner_alive(owner: Owner, proc: str = "/proc") -> bool:
    """Whether the process that registered a request still runs. Same pid namespace as this
    one: the pid exists with the recorded start time (a recycled pid is not the owner). Another
    namespace (a container): a process of that namespace whose innermost pid and start time
    match; when no process of that namespace is visible from here at all, the owner cannot be
    judged and counts as alive (its requests then go by deadline only), except from the initial
    pid namespace, which sees every other: there the namespace is gone, and with it the owner."""
    if owner.pid <= 0:
        return True
    mine = pidns_inode(os.getpid(), proc)
    if not owner.pidns or owner.pidns == mine:
        start = proc_start_ticks(owner.pid, proc)
        if start is None:
            return False
        return not owner.start or start == owner.start
    seen_ns = False
    in_init_ns = len(_nspid("self", proc)) == 1  # every other pid namespace is visible from here
    for d in os.listdir(proc):
        if not d.isdigit() or pidns_inode(int(d), proc) != owner.pidns:
            continue
        seen_ns = True
        ns = _nspid(d, proc)
        if ns and ns[-1] == owner.pid:
            start = proc_start_ticks(int(d), proc)
            return start is not None and (not owner.start or start == owner.start)
    return False if seen_ns or in_init_ns else True


def gc(maps: PinnedMaps, grace_s: float = 10.0, now_ns: int | None = None, check_pids: bool = True) -> GcResult:
    """Never promotes, never drops a live flow to the top. Requests whose deadline passed more
    than `grace_s` ago and whose owner lives are flagged scavenger (their flows go to the
    scavenger level; the owner's done() removes them). Requests whose owner is gone are
    removed, and every flow of a missing request is rewritten as a static scavenger-level entry
    (same gen: the kernel's counts go on) marked orphan; an orphan entry whose flow sent nothing
    since the previous gc more than `grace_s` ago is removed (its socket is most likely gone:
    were it not, its next packets would get the default level, never a higher one). Static
    entries (no request) that gc did not demote stay."""
    if grace_s < 0:
        raise ValueError(f"grace must not be negative, got {grace_s}")
    now = time.monotonic_ns() if now_ns is None else now_ns
    grace = _seconds_to_ns(grace_s, "grace")
    # flows first, then requests: a request is always written before its flows, so a flow seen
    # here whose request is missing below really lost it
    flows = [(k, FlowEntry.unpack(v)) for k, v in maps.flows.items()]
    states = maps.flow_states()
    reqs = maps.request_records()
    res = GcResult()
    live = set()
    for rid, rec in reqs.items():
        if check_pids and not owner_alive(rec.owner):
            if maps.requests.delete(_U64.pack(rid)):
                res.requests_removed.append(rid)
            continue
        live.add(rid)
        if rec.deadline_ns + grace < now and not rec.flags & R_SCAVENGER:
            rec.flags |= R_SCAVENGER
            try:
                maps.requests.update(_U64.pack(rid), rec.pack(), bpfsys.BPF_EXIST)
            except MfsError:
                continue  # finished meanwhile
            res.requests_scavenged.append(rid)
    scav = maps.config.scavenger_level
    dk, dv, dead = [], [], []
    for k, e in flows:
        st = states.get(k)
        pkts = st.sent_pkts if st is not None and st.gen == e.gen else 0
        if e.stage == STAGE_ORPHAN and not e.request_id:
            # total_bytes holds the packet count at demotion (unused by a static entry)
            if pkts == e.total_bytes and e.created_ns + grace < now:
                dead.append(k)
            elif pkts != e.total_bytes:
                dk.append(k)
                dv.append(FlowEntry.static(scav, stage=STAGE_ORPHAN, gen=e.gen, created_ns=now,
                                           total_bytes=pkts).pack())
            continue
        if e.request_id and e.request_id not in live:
            dk.append(k)
            dv.append(FlowEntry.static(scav, stage=STAGE_ORPHAN, gen=e.gen, created_ns=now,
                                       total_bytes=pkts).pack())
            res.flows_demoted += 1
    if dk:
        maps.flows.update_batch_raw(b"".join(dk), b"".join(dv), len(dk))
    res.flows_removed = maps.flows.delete_batch(dead) if dead else 0
    return res
