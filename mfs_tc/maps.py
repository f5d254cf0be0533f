"""The pinned maps of one attached interface, below both the loader (which enforces) and the
controller (which decides): opening and checking them (PinnedMaps, the layout's map specs),
writing config and levels, reading counters and flows, static entries, the RDMA table and gc.

It uses the bpf syscall (mfs_tc.bpfsys) only, never bcc, and imports nothing of the controller
or the loader: `mfs-tc status/flows/set/gc`, the loader, the exporter, the testbed and the tools
use it directly; mfs_tc.controller re-exports what serving processes use of it.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import access, bpfsys
from .bpfsys import BpfMap
from .cursors import CursorSlots
from .entry import FlowEntry
from .errors import LayoutMismatchError, MfsError, NotAttachedError, PermissionDeniedError
from .layout import (
    COUNTER_FMT,
    CURSORS_MAX,
    DSCP_KEEP,
    KEY_STRUCT,
    LAYOUT_MAGIC,
    LAYOUT_VERSION,
    LEVEL_NONE,
    MAP_NAMES,
    MAP_SPECS,
    MAX_LEVELS,
    NSTATS,
    R_SCAVENGER,
    SK_MAP_NAMES,
    STAT_NAMES,
    STAT_STALE,
    STAT_STATE_LOOKUP,
    STATE_CHUNK,
    STATE_NONE,
    ConfigRecord,
    CursorOwner,
    FlowKey,
    FlowState,
    LevelRecord,
    Owner,
    RequestRecord,
    addr16,
    default_dscp,
    dscp_mask,
    dscp_to_level_table,
    level_dscp,
    pack_key,
    pidns_inode,
    pin_dir,
    proc_start_ticks,
)
from .pinpath import pin_root
from .stateslots import STATE_QUADS, clear_chunk, map_states
from .units import seconds_to_ns

__all__ = [
    "PinnedMaps",
    "DeniedMap",
    "FlowView",
    "FlowTarget",
    "GcResult",
    "STAGE_ORPHAN",
    "pack_flow_key",
    "pack_flow_keys",
    "read_counters",
    "write_config",
    "set_static",
    "rdma_table",
    "gc",
    "owner_alive",
    "pid_alive",
]

# (saddr, daddr, sport, dport[, proto]): proto "tcp"/"udp"/6/17, tcp when left out
FlowTuple = tuple[str, str, int, int] | tuple[str, str, int, int, str | int]
FlowTarget = socket.socket | FlowKey | FlowTuple


_U32_0 = b"\0\0\0\0"
_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")

_PROTOS: dict[Any, int] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, 6: 6, 17: 17}


def pack_flow_keys(targets: Iterable[FlowTarget]) -> list[bytes]:
    """pack_flow_key of each target. 5-tuples of address strings, tcp/udp and int ports (what a
    batch of connections is) take a fast path: each address is parsed once per call and the key
    packed in one struct call; anything else (or anything bad) goes through pack_flow_key, which
    names the problem."""
    addrs: dict[str, tuple[bytes, bool]] = {}
    protos = _PROTOS
    pack = KEY_STRUCT.pack
    out: list[bytes] = []
    append = out.append
    for t in targets:
        try:
            sa, da, sp, dp, pr = t  # type: ignore[misc]
            s = addrs.get(sa)
            if s is None:
                s = addrs[sa] = addr16(sa)
            d = addrs.get(da)
            if d is None:
                d = addrs[da] = addr16(da)
            if s[1] is not d[1] or type(sp) is not int or type(dp) is not int:
                raise ValueError
            append(pack(s[0], d[0], sp, dp, protos[pr]))
        except (TypeError, ValueError, KeyError, struct.error):
            append(pack_flow_key(t))
    return out


def pack_flow_key(target: FlowTarget) -> bytes:
    """The `flows` map key of a connected socket, a FlowKey, or a tuple
    (saddr, daddr, sport, dport[, proto]) with proto "tcp"/"udp"/6/17 (default tcp).
    The source is this host (the classifier runs on egress)."""
    if isinstance(target, tuple):
        proto: str | int
        if len(target) == 5:
            saddr, daddr, sport, dport, proto = target
        elif len(target) == 4:
            saddr, daddr, sport, dport = target
            proto = socket.IPPROTO_TCP
        else:
            raise ValueError(f"a 5-tuple is (saddr, daddr, sport, dport[, proto]), got {len(target)} items")
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


# ---- the pinned maps ------------------------------------------------------------------------------
@dataclass
class FlowView:
    """One live `flows` entry as `mfs-tc flows` shows it."""

    key: FlowKey
    entry: FlowEntry
    level: int
    cursor: int | None
    scavenged: bool
    request_id: int
    owner_pid: int | None
    state: FlowState | None = None

    def as_dict(self) -> dict[str, Any]:
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
    socket storage (kernel without it, or maps made by `create`): sockets then use `flows`.
    `cursor_slots` is the mapped cursor array (mfs_tc.cursors), None where the kernel cannot
    map it (no BPF_F_MMAPABLE) or this process may not write it (an access-group member): request
    cursors then live in the request records."""

    def __init__(self, path: Path, maps: dict[str, BpfMap]) -> None:
        self.path = path
        self.cursors = maps["cursors"]
        self.cursor_owners = maps["cursor_owners"]
        self.cursor_slots: CursorSlots | None = None
        if isinstance(self.cursors, BpfMap) and isinstance(self.cursor_owners, BpfMap):
            self.cursor_slots = CursorSlots.open(self.cursors, self.cursor_owners)
        # the kernel's states at the slots entries name (layout v6), mapped where it can be
        self.states = maps["states"]
        self.state_owners = maps["state_owners"]
        mapped = map_states(self.states)
        self._states_mm = mapped[0] if mapped else None
        self.state_words: memoryview | None = mapped[1] if mapped else None
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
            raise NotAttachedError(
                f"mfs-tc is not attached to {what} ({path} is missing): " f"run `mfs-tc attach {_attach_arg(what)}`"
            )
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
                        raise NotAttachedError(
                            f"mfs-tc is not (fully) attached to {what}: {p} is missing: "
                            f"run `mfs-tc attach {_attach_arg(what)}`"
                        )
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
        mmap_cursors: bool = True,
    ) -> PinnedMaps:
        """Create the maps of MAP_NAMES as layout.MAP_SPECS says (type, shape, flags; not the socket-storage
        ones: they need BTF, which only the compiled program brings), pin them in `path` (made
        if missing, under a mounted bpffs) and write config and levels. For tests, benchmarks
        and loaders that do not get their maps from the compiled program. `mmap_cursors` False
        makes `cursors` without BPF_F_MMAPABLE, as on a kernel before 5.5."""
        if not 2 <= nlevels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 2..{MAX_LEVELS}, got {nlevels}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        maps: dict[str, BpfMap] = {}
        try:
            for name in MAP_NAMES:
                spec = MAP_SPECS[name]
                n = spec.max_entries
                if name in ("flows", "flow_state") and flows_max:
                    n = flows_max
                if name == "requests" and requests_max:
                    n = requests_max
                # maps user space updates: freed after an RCU grace period (see the classifier)
                fl = bpfsys.BPF_F_NO_PREALLOC if spec.no_prealloc else 0
                if spec.mmapable and mmap_cursors:
                    fl |= bpfsys.BPF_F_MMAPABLE
                m = BpfMap.create(bpfsys.MAP_TYPE_BY_NAME[spec.kind], spec.key_size, spec.value_size, n, name, fl)
                m.pin(path / name)
                maps[name] = m
            dl = nlevels - 2 if default_level is None else default_level
            sl = nlevels - 1 if scavenger_level is None else scavenger_level
            dscps = list(dscp) if dscp is not None else default_dscp(nlevels)
            prios = list(priorities) if priorities is not None else list(range(nlevels))
            write_config(
                maps["config"],
                maps["levels"],
                nlevels,
                dl,
                sl,
                flags,
                dscps,
                prios,
                control_level=control_level,
                keep_dscp=keep_dscp,
            )
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
        if self.cursor_slots is not None:
            self.cursor_slots.close()
            self.cursor_slots = None
        if self.state_words is not None and self._states_mm is not None:
            self.state_words.release()
            self._states_mm.close()
            self.state_words = self._states_mm = None
        for m in (
            self.cursors,
            self.cursor_owners,
            self.states,
            self.state_owners,
            self.flows,
            self.flow_state,
            self.sk_flows,
            self.sk_state,
            self.requests,
            self.levels,
            self.config_map,
            self.stats_map,
            self.rules,
            self.rule_stats,
        ):
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
        return level_dscp(level, d)

    def request_records(self) -> dict[int, RequestRecord]:
        return {_U64.unpack(k)[0]: RequestRecord.unpack(v) for k, v in self.requests.items()}

    def request_cursor(self, rec: RequestRecord) -> int:
        """The cursor the classifier reads for a request record: its slot's in `cursors` (through
        the mapping where there is one), else the record's own (RequestRecord.kernel_cursor)."""
        slot_cursor = None
        if rec.slot < CURSORS_MAX:
            cs = self.cursor_slots
            if cs is not None and rec.slot < cs.max_entries:
                slot_cursor = cs.read(rec.slot)
            elif isinstance(self.cursors, BpfMap):
                raw = self.cursors.lookup(rec.slot.to_bytes(4, "little"))
                slot_cursor = _I32.unpack_from(raw)[0] if raw else None
        return rec.kernel_cursor(slot_cursor)

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

    def slot_state(self, slot: int, gen: int) -> FlowState | None:
        """The state at state slot `slot` where registration `gen` owns it (mirror of the
        classifier's slot_state), else None: then the kernel counts in the lookup maps."""
        if not gen or slot == STATE_NONE:
            return None
        w = self.state_words
        if w is not None:
            i = slot * STATE_QUADS
            if i >= len(w) or w[i + STATE_QUADS - 1] != gen:
                return None
            return FlowState(*w[i : i + STATE_QUADS].tolist())
        if not isinstance(self.states, BpfMap) or slot >= self.states.info.max_entries:
            return None
        raw = self.states.lookup(slot.to_bytes(4, "little"))
        st = FlowState.unpack(raw) if raw else None
        return st if st is not None and st.owner == gen else None

    def entry_state(self, e: FlowEntry, key: bytes | None = None, fd: int | None = None) -> FlowState | None:
        """Where the kernel counts for entry `e` (of 5-tuple `key`, or of the socket `fd`): its
        state slot where it owns one, else the lookup map's state (any registration: compare gen)."""
        st = self.slot_state(e.state_slot, e.gen)
        if st is not None:
            return st
        if fd is not None:
            return self.sk_state_of(fd) if fd >= 0 else None
        return self.state_of(key) if key is not None else None

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
            # layout v6: controllers' chunks of `states`; packets whose entry named no slot of its own
            "state_slots_max": self.states.info.max_entries if isinstance(self.states, BpfMap) else 0,
            "state_slots_claimed": len(self.state_owners) * STATE_CHUNK if isinstance(self.state_owners, BpfMap) else None,
            "state_slots_mapped": self.state_words is not None,
            "state_lookup_packets": counters[STAT_STATE_LOOKUP][0],
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
            st = self.slot_state(e.state_slot, e.gen) or states.get(k)
            live = st if st is not None and st.gen == e.gen else None  # this registration's counts
            rec = reqs.get(e.request_id) if e.request_id else None
            scav = bool(rec and rec.scavenged)
            cursor = self.request_cursor(rec) if rec else None
            lv = e.level(
                now,
                sent=live.sent_bytes if live is not None else None,
                cursor=cursor or 0,
                scavenged=scav,
                scavenger_level=cfg.scavenger_level,
                nlevels=cfg.nlevels,
                cur_level=live.cur_level if live is not None else LEVEL_NONE,
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
    spec = MAP_SPECS[name]
    ks, vs, n = spec.shape
    info = m.info
    problems = []
    if info.type_name not in spec.kinds:
        problems.append(f"type {info.type_name} (want {'/'.join(sorted(spec.kinds))})")
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
    for what, lv in (("default level", default_level), ("control level", control_level), ("scavenger level", scavenger_level)):
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


def set_static(maps: PinnedMaps, target: FlowTarget, level: int, now_ns: int | None = None) -> bytes:
    """Write a static entry (no request) for an operator: `level` for every packet of the flow."""
    n = maps.config.nlevels
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < n:
        raise ValueError(f"level {level!r} out of range: this interface has levels 0..{n - 1}")
    key = pack_flow_key(target)
    e = FlowEntry.static(level, created_ns=time.monotonic_ns() if now_ns is None else now_ns, gen=random.getrandbits(32) or 1)
    maps.flows.update(key, e.pack())
    return key


def rdma_table(levels: int | Sequence[LevelRecord | int]) -> list[dict[str, int]]:
    """Per level: DSCP and the traffic class (DSCP << 2) to give NCCL_IB_TC,
    UCX_IB_TRAFFIC_CLASS and MC_IB_TC. `levels` is a level count (default DSCP table), a list of
    DSCPs or the LevelRecords of an attached interface."""
    if isinstance(levels, int):
        if not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels must be in 1..{MAX_LEVELS}, got {levels}")
        dscps = default_dscp(levels)
    else:
        dscps = []
        for i, lv in enumerate(levels):
            d = level_dscp(i, lv.dscp if isinstance(lv, LevelRecord) else int(lv))
            if not 0 <= d < 64:
                raise ValueError(f"DSCP {d} of level {i} out of range 0..63")
            dscps.append(d)
    out = []
    for i, d in enumerate(dscps):
        tc = d << 2
        out.append({"level": i, "dscp": d, "traffic_class": tc, "NCCL_IB_TC": tc, "UCX_IB_TRAFFIC_CLASS": tc, "MC_IB_TC": tc})
    return out


# ---- garbage collection ---------------------------------------------------------------------------
STAGE_ORPHAN = 0xFF  # `stage` of a flow entry gc demoted because its request or owner is gone


@dataclass
class GcResult:
    requests_removed: list[int] = field(default_factory=list)  # owner gone
    requests_scavenged: list[int] = field(default_factory=list)  # past deadline + grace, owner alive
    flows_demoted: int = 0  # orphaned 5-tuple flows rewritten to the scavenger level
    flows_removed: int = 0  # demoted flows that sent nothing since the previous gc
    slots_freed: list[int] = field(default_factory=list)  # cursor slots of owners that are gone
    state_chunks_freed: list[int] = field(default_factory=list)  # state slot chunks of owners that are gone

    def as_dict(self) -> dict[str, Any]:
        return {
            "slots_freed": self.slots_freed,
            "state_chunks_freed": self.state_chunks_freed,
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
    entries (no request) that gc did not demote stay. Cursor slots whose owner is gone are freed
    (with `check_pids`)."""
    if grace_s < 0:
        raise ValueError(f"grace must not be negative, got {grace_s}")
    now = time.monotonic_ns() if now_ns is None else now_ns
    grace = seconds_to_ns(grace_s, "grace")
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
            cs = maps.cursor_slots  # and where the kernel reads it for entries naming the slot
            if cs is not None and rec.slot < cs.max_entries and cs.read_key(rec.slot) == rid:
                cs.set_flags(rec.slot, cs.read_flags(rec.slot) | R_SCAVENGER)
            res.requests_scavenged.append(rid)
    scav = maps.config.scavenger_level
    dk, dv, dead = [], [], []
    for k, e in flows:
        st = maps.slot_state(e.state_slot, e.gen) or states.get(k)
        pkts = st.sent_pkts if st is not None and st.gen == e.gen else 0
        if e.stage == STAGE_ORPHAN and not e.request_id:
            # total_bytes holds the packet count at demotion (unused by a static entry)
            if pkts == e.total_bytes and e.created_ns + grace < now:
                dead.append(k)
            elif pkts != e.total_bytes:
                dk.append(k)
                dv.append(FlowEntry.static(scav, stage=STAGE_ORPHAN, gen=e.gen, created_ns=now, total_bytes=pkts).pack())
            continue
        if e.request_id and e.request_id not in live:
            # the demoted entry names no state slot (its owner's chunks are freed below): it
            # counts in flow_state from here, so its packets are those counted there
            lk = states.get(k)
            base = lk.sent_pkts if lk is not None and lk.gen == e.gen else 0
            dk.append(k)
            dv.append(FlowEntry.static(scav, stage=STAGE_ORPHAN, gen=e.gen, created_ns=now, total_bytes=base).pack())
            res.flows_demoted += 1
    if dk:
        maps.flows.update_batch_raw(b"".join(dk), b"".join(dv), len(dk))
    res.flows_removed = maps.flows.delete_batch(dead) if dead else 0
    if check_pids and isinstance(maps.cursor_owners, BpfMap):
        res.slots_freed = _free_dead_slots(maps.cursor_owners, maps.cursor_slots)
    if check_pids and isinstance(maps.state_owners, BpfMap):
        res.state_chunks_freed = _free_dead_chunks(maps)
    return res


def _free_dead_chunks(maps: PinnedMaps) -> list[int]:
    """Delete the `state_owners` claims of owners that are gone (mfs_tc.stateslots), the
    chunks' slots cleared first (owner 0: no entry counts there any more)."""
    owners = maps.state_owners
    freed = []
    for k, v in list(owners.items()):
        if owner_alive(CursorOwner.unpack(v).owner):
            continue
        c = int.from_bytes(k, "little")
        w = maps.state_words
        if w is not None:
            clear_chunk(w, c)
        elif isinstance(maps.states, BpfMap):
            for s in range(c * STATE_CHUNK, (c + 1) * STATE_CHUNK):
                if s < maps.states.info.max_entries:
                    maps.states.update(s.to_bytes(4, "little"), FlowState(gen=0, cur_level=LEVEL_NONE).pack())
        if owners.delete(k):
            freed.append(c)
    return sorted(freed)


def _free_dead_slots(owners: BpfMap, slots: CursorSlots | None) -> list[int]:
    """Delete the `cursor_owners` claims of owners that are gone (mfs_tc.cursors), their
    slots' request keys cleared first (an entry of the request no longer reads it there)."""
    freed = []
    for k, v in list(owners.items()):
        if owner_alive(CursorOwner.unpack(v).owner):
            continue
        s = int.from_bytes(k, "little")
        if slots is not None and s < slots.max_entries:
            slots.clear_key(s)
        if owners.delete(k):
            freed.append(s)
    return sorted(freed)
