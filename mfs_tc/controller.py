"""The controller library serving processes import: requests, stages and flows -> pinned maps.

    ctl = Controller.open("eth0", policy="mfs")
    with ctl.request("req-17", slo_s=0.5) as req:
        st = req.stage("kv_fetch", bytes=64 << 20, layer=3)
        st.add_flow(sock, bytes=16 << 20)          # or ("10.0.0.1", "10.0.0.2", 40000, 5201, "tcp")
        req.at_layer(1)                             # one map write: its rli flows re-level in the kernel
        req.update_estimate(remaining_bytes=...)    # re-asks the policy, rewrites its flows
    # leaving the block (or req.done()) removes the request and its flows

It opens the maps through the pinned-map layer (mfs_tc.maps, over the bpf syscall; PinnedMaps, gc,
rdma_table, ... are re-exported from there) and never imports bcc, pyroute2 or the loader, so
importing it is cheap. Thread-safe (one lock per Controller, in its Registrations); several
processes may write the same maps, each owns the entries it wrote.

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
import random
import secrets
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

from . import bpfsys
from .bpfsys import BpfSyscallError
from .entry import FlowEntry
from .errors import MfsError
from .layout import (
    ENTRY_GEN_OFFSET,
    ENTRY_REQUEST_ID_OFFSET,
    ENTRY_SIZE,
    ENTRY_STATE_OFFSET,
    R_SCAVENGER,
    SLOT16_NONE,
    SLOT_NONE,
    STAGE_CODES,
    STATE_NONE,
    FlowKey,
    FlowState,
    Owner,
    RequestRecord,
)
from .maps import (  # the pinned-map layer: re-exported for serving processes (docs/controller.md)
    STAGE_ORPHAN,
    FlowTarget,
    FlowTuple,
    FlowView,
    GcResult,
    PinnedMaps,
    gc,
    owner_alive,
    pack_flow_key,
    pack_flow_keys,
    pid_alive,
    rdma_table,
    set_static,
)
from .model import Batch, Flow, Request, Stage, batch_hopeless, batch_request, check_stage
from .policy.base import Policy
from .stateslots import StateSlots
from .units import seconds_to_ns

__all__ = [
    "Controller",
    "RequestHandle",
    "BatchHandle",
    "StageHandle",
    "FlowHandle",
    "FlowBatch",
    "PinnedMaps",
    "FlowView",
    "GcResult",
    "STAGE_ORPHAN",
    "request_key",
    "pack_flow_key",
    "rdma_table",
    "set_static",
    "gc",
    "wall_to_monotonic_ns",
    "owner_alive",
    "pid_alive",
]

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_GEN_OFF = ENTRY_GEN_OFFSET  # where a packed entry's gen is (layout)
_RID_OFF = ENTRY_REQUEST_ID_OFFSET  # and its request id
_SLOT_OFF = ENTRY_STATE_OFFSET  # and its state slot (layout v6: the entry's last 8 bytes start with it)
_SLOT_END = _SLOT_OFF + 4


# a packed entry around its gen and state slot: (head, gen, middle, slot, tail)
_GEN_SLOT = struct.Struct(f"<{_GEN_OFF}sI{_SLOT_OFF - _GEN_OFF - 4}sI{ENTRY_SIZE - _SLOT_END}s")


def _split(v: bytes) -> tuple[bytes, bytes, bytes]:
    """A packed entry's bytes around its gen and state slot (for _GEN_SLOT)."""
    return v[:_GEN_OFF], v[_GEN_OFF + 4 : _SLOT_OFF], v[_SLOT_END:]


def _with_gen_slot(v: bytes, gen: int, slot: int) -> bytes:
    """A packed entry `v` with registration `gen` and state slot `slot`."""
    return _GEN_SLOT.pack(v[:_GEN_OFF], gen, v[_GEN_OFF + 4 : _SLOT_OFF], slot, v[_SLOT_END:])


def _stamp_slots(v: bytes, slots: list[int]) -> bytes:
    """`v` once per slot, each copy naming its slot (one strided store, no loop per flow)."""
    buf = bytearray(v * len(slots))
    memoryview(buf).cast("I")[_SLOT_OFF // 4 :: len(v) // 4] = array("I", slots)
    return bytes(buf)


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


def _nonneg(v: object, what: str) -> int:
    """`v` (a caller's value, any type) as a non-negative int, or a ValueError saying what it is."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} must be a number, got {v!r}")
    if v < 0:
        raise ValueError(f"{what} must not be negative, got {v}")
    return int(v)


# ---- policy resolution ----------------------------------------------------------------------------
def resolve_policy(policy: Policy | str, nlevels: int, **config: Any) -> Policy:
    if isinstance(policy, Policy):
        if config:
            raise ValueError("policy options go to make_policy: pass a policy name, not an instance, with options")
        return policy
    if not isinstance(policy, str):
        raise ValueError(f"policy must be a name or a Policy, got {type(policy).__name__}")
    from .policy import make_policy  # noqa: PLC0415 - the registry imports every policy

    config.setdefault("nlevels", nlevels)
    return make_policy(policy, **config)


# ---- handles -------------------------------------------------------------------------------------
class FlowHandle:
    """One registered flow. `update()` re-asks the policy with new bytes/target; `remove()`.

    `key` identifies the flow in this controller: the 5-tuple map key, or for a socket-storage
    flow b"sk" + the socket's fd (`sock` is then the socket). `gen` is the registration the
    kernel's counts belong to, `slot` the state slot they are kept at (STATE_NONE: in the
    lookup maps)."""

    __slots__ = ("owner", "stage", "key", "flow", "entry", "removed", "gen", "sock", "slot")

    def __init__(
        self,
        owner: _Owner,
        stage: StageHandle,
        key: bytes,
        flow: Flow,
        entry: FlowEntry | None = None,
        gen: int = 0,
        sock: socket.socket | None = None,
        slot: int = STATE_NONE,
    ) -> None:
        self.owner = owner
        self.slot = slot
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
        st = maps.slot_state(self.slot, self.gen)
        if st is None:
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
        with self.owner.ctl.registrations.lock:
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
        with self.owner.ctl.registrations.lock:
            self.owner._drop([self])


class FlowBatch:
    """Flows registered together by `StageHandle.register_flows`: one decision (`entry`), one
    registration id (`gen`) and their packed 5-tuple keys, with no handle per flow. A flow of
    the batch whose connection is registered again (in this process) belongs to the newer
    registration from then on: `keys()` and everything below leave it alone."""

    __slots__ = ("owner", "stage", "_keys", "_slots", "flow", "entry", "gen", "removed")

    def __init__(
        self, owner: _Owner, stage: StageHandle, keys: list[bytes], flow: Flow, entry: FlowEntry, gen: int, slots: list[int]
    ) -> None:
        self.owner = owner
        self.stage = stage
        self._keys = keys  # distinct
        self._slots = slots  # the state slot of each key (STATE_NONE: counted in flow_state)
        self.flow = flow  # replaced on change, never mutated
        self.entry = entry
        self.gen = gen
        self.removed = False

    def keys(self) -> list[bytes]:
        """The packed keys of the flows this batch still owns."""
        if self.removed:
            return []
        return self.owner.ctl.registrations.owned_keys(self)

    def __len__(self) -> int:
        return len(self.keys())

    def flow_keys(self) -> list[FlowKey]:
        return [FlowKey.unpack(k) for k in self.keys()]

    def _owned(self) -> list[tuple[bytes, int]]:
        """(key, state slot) of the flows this batch still owns."""
        if self.removed:
            return []
        owner_of = self.owner.ctl.registrations._owner_of
        return [(k, s) for k, s in zip(self._keys, self._slots, strict=True) if owner_of.get(k) is self]

    def _state(self, key: bytes, slot: int) -> FlowState | None:
        maps = self.owner.ctl.maps
        st = maps.slot_state(slot, self.gen) or maps.state_of(key)
        return st if st is not None and st.gen == self.gen else None

    def states(self) -> dict[FlowKey, FlowState]:
        """What the kernel counted for the flows of this registration that sent packets."""
        out = {}
        for k, s in self._owned():
            st = self._state(k, s)
            if st is not None:
                out[FlowKey.unpack(k)] = st
        return out

    def update(self, *, bytes: int | None = None, target_layer: int | None = None) -> None:
        """New estimates for every flow of the batch: the policy is asked again and the entries
        rewritten (same gen: the kernel's counts stay)."""
        changes: dict[str, Any] = {}
        if bytes is not None:
            changes["bytes"] = _nonneg(bytes, "flow bytes")
        if target_layer is not None:
            changes["target_layer"] = _nonneg(target_layer, "target layer")
        with self.owner.ctl.registrations.lock:
            if self.removed:
                raise MfsError("this flow batch was removed: register its flows again")
            if changes:
                self.flow = dataclasses.replace(self.flow, **changes)
            self.rewrite()

    def rewrite(self) -> None:
        """Re-ask the policy (once per distinct count of bytes the kernel saw sent) and write
        the decisions of the flows still owned, keeping gen. Caller holds the lock."""
        owner = self.owner
        owner._check_live()
        owned = self._owned()
        if not owned:
            return
        maps, now = owner.ctl.maps, owner.ctl.clock()
        by_sent: dict[int, bytes] = {}
        vals = []
        for k, s in owned:
            st = self._state(k, s)
            sent = st.sent_bytes if st is not None else self.flow.sent
            v = by_sent.get(sent)
            if v is None:
                f = self.flow if sent == self.flow.sent else dataclasses.replace(self.flow, sent=sent)
                e = owner.decide(self.stage.stage, f, now, self.entry.created_ns, self.gen)
                v = by_sent[sent] = e.pack()
                if sent == self.flow.sent:
                    self.entry = e
            vals.append(_with_gen_slot(v, self.gen, s))
        maps.flows.update_batch_raw(b"".join(k for k, _ in owned), b"".join(vals), len(owned))

    def remove(self) -> None:
        """Remove the entries of the flows this batch still owns (those in the map with its gen)."""
        with self.owner.ctl.registrations.lock:
            if not self.removed:
                self.owner._drop_batch(self)


class StageHandle:
    """A stage of a request (or batch): registers its flows."""

    def __init__(self, owner: _Owner, stage: Stage) -> None:
        self.owner = owner
        self.stage = stage
        self.flows: list[FlowHandle] = []
        self.batches: list[FlowBatch] = []
        # (owner version, bytes, target, sent) -> (decided at, packed, entry, packed split around
        # gen and slot): see _entry_for
        self._cache: dict[tuple[int, int, int, int], tuple[int, bytes, FlowEntry, tuple[bytes, bytes, bytes]]] = {}

    @property
    def name(self) -> str:
        return self.stage.name

    def _default_layer(self) -> int:
        return self.stage.layer if self.stage.layer is not None else 0

    def _entry_for(self, flow: Flow, now: int) -> tuple[bytes, FlowEntry]:
        """The packed entry for a new flow of this stage (owner.decide). Flows with the same
        bytes, target layer and sent bytes, registered at the same instant (one add_flows call) or
        within the controller's `entry_cache_ns` of each other while nothing the policy sees of
        the request changed, share one policy decision."""
        owner, cache = self.owner, self._cache
        ck = (owner._version, flow.bytes, flow.target_layer, flow.sent)
        hit = cache.get(ck)
        if hit is not None and now - hit[0] <= owner.ctl.entry_cache_ns:
            return hit[1], hit[2]
        e = owner.decide(self.stage, flow, now, now)
        v = e.pack()
        if len(cache) >= 64:
            cache.clear()
        cache[ck] = (now, v, e, _split(v))
        return v, e

    def _parts_for(self, flow: Flow, now: int) -> tuple[tuple[bytes, bytes, bytes], FlowEntry]:
        """_entry_for's decision as its bytes around gen and state slot (add_flow packs each
        flow's with _GEN_SLOT: one call)."""
        self._entry_for(flow, now)
        hit = self._cache[(self.owner._version, flow.bytes, flow.target_layer, flow.sent)]
        return hit[3], hit[2]

    def add_flow(self, target: FlowTarget, *, bytes: int = 0, target_layer: int | None = None, sent: int = 0) -> FlowHandle:
        """Register one flow (a socket, FlowKey or 5-tuple) of this stage. A socket goes to its
        own storage where the attach has it (one map write keyed by its fd), else to the
        5-tuple map (then it must be connected)."""
        owner = self.owner
        ctl = owner.ctl
        maps = ctl.maps
        sk_flows = maps.sk_flows
        if sk_flows is not None and isinstance(target, socket.socket):
            sock: socket.socket | None = target
            fd = target.fileno()
            if fd < 0:
                raise ValueError("the socket is closed")
            fdkey = _I32.pack(fd)
            key = b"sk" + fdkey
        else:
            sock = None
            key = pack_flow_key(target)
        if type(bytes) is not int or bytes < 0:
            bytes = _nonneg(bytes, "flow bytes")
        tl = self._default_layer() if target_layer is None else target_layer
        if type(tl) is not int or tl < 0:
            tl = _nonneg(tl, "target layer")
        if sent and (type(sent) is not int or sent < 0):
            sent = _nonneg(sent, "sent bytes")
        flow = Flow(bytes, tl, None, sent)
        reg = ctl.registrations
        with reg.lock:
            if owner.closed:
                owner._check_live()
            now = ctl.clock()
            slots = ctl.state_slots
            if ctl.entry_cache_ns:
                (head, mid, tail), e = self._parts_for(flow, now)
                gen = reg.next_gen()
                slot = slots.claim(gen) if slots is not None else STATE_NONE
                v = _GEN_SLOT.pack(head, gen, mid, slot, tail)
            else:  # the policy asked for this flow: packed once, with its gen and slot
                e = owner.decide(self.stage, flow, now, now)
                gen = reg.next_gen()
                slot = e.state_slot = slots.claim(gen) if slots is not None else STATE_NONE
                v = e.pack(gen)
            fh = FlowHandle(owner, self, key, flow, e, gen, sock, slot)
            if sock is not None and sk_flows is not None:  # (a sock only where there is sk_flows)
                sk_flows.update(fdkey, v)
            else:
                maps.flows.update(key, v)
            reg.claim_one(fh)
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
            keys = pack_flow_keys(targets)
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
        with ctl.registrations.lock:
            owner._check_live()
            now = ctl.clock()
            gen = ctl.registrations.next_gen()
            g = _U32.pack(gen)
            sl = ctl.state_slots
            slots = sl.claim_many(n, gen) if sl is not None else [STATE_NONE] * n
            if uniform:
                v, e = self._entry_for(flows[0], now)
                v = v[:_GEN_OFF] + g + v[_GEN_OFF + 4 :]
                f0 = flows[0]
                if not any(socks):  # all 5-tuples: one batch write of one decision, n times
                    handles = [FlowHandle(owner, self, k, f0, e, gen, None, s) for k, s in zip(keys, slots, strict=True)]
                    ctl.maps.flows.update_batch_raw(b"".join(keys), _stamp_slots(v, slots), n)
                    ctl.registrations.claim(handles)
                    self.flows.extend(handles)
                    return handles
                handles = [FlowHandle(owner, self, k, f0, e, gen, sk, s) for k, sk, s in zip(keys, socks, slots, strict=True)]
                vals = [_with_gen_slot(v, gen, s) for s in slots]
            else:
                handles, vals = [], []
                for k, f, sk, s in zip(keys, flows, socks, slots, strict=True):
                    v, e = self._entry_for(f, now)
                    handles.append(FlowHandle(owner, self, k, f, e, gen, sk, s))
                    vals.append(_with_gen_slot(v, gen, s))
            _write_decisions(ctl.maps, handles, vals)
            ctl.registrations.claim(handles)
            self.flows.extend(handles)
        return handles

    def register_flows(
        self, targets: Iterable[FlowTuple | FlowKey], *, bytes: int = 0, target_layer: int | None = None, sent: int = 0
    ) -> FlowBatch:
        """Register many 5-tuple flows of one shape (same bytes, target layer, sent) with one
        policy decision, one gen and one BPF_MAP_UPDATE_BATCH, and return one FlowBatch for all
        of them instead of a FlowHandle each: no Python object per flow but its packed key
        (what add_flows costs beyond the kernel's insert is mostly the handles). Sockets: use
        add_flow/add_flows (their entries go to the socket's storage)."""
        owner, ctl = self.owner, self.owner.ctl
        keys = list(dict.fromkeys(pack_flow_keys(targets)))  # a connection listed twice is one flow
        flow = Flow(
            _nonneg(bytes, "flow bytes"),
            _nonneg(self._default_layer() if target_layer is None else target_layer, "target layer"),
            None,
            _nonneg(sent, "sent bytes"),
        )
        reg = ctl.registrations
        with reg.lock:
            owner._check_live()
            now = ctl.clock()
            v, e = self._entry_for(flow, now)
            gen = reg.next_gen()
            n = len(keys)
            sl = ctl.state_slots
            slots = sl.claim_many(n, gen) if sl is not None else [STATE_NONE] * n
            fb = FlowBatch(owner, self, keys, flow, e, gen, slots)
            if n:
                v = v[:_GEN_OFF] + _U32.pack(gen) + v[_GEN_OFF + 4 :]
                ctl.maps.flows.update_batch_raw(b"".join(keys), _stamp_slots(v, slots), n)
            reg.claim_batch(fb)
            owner.batches.append(fb)
            self.batches.append(fb)
        return fb

    def update(self, *, bytes: int | None = None, compute_after_s: float | None = None) -> None:
        """New estimates for the stage; its flows are rewritten."""
        with self.owner.ctl.registrations.lock:
            if bytes is not None:
                self.stage.bytes = _nonneg(bytes, "stage bytes")
            if compute_after_s is not None:
                self.stage.compute_after_ns = _nonneg(seconds_to_ns(compute_after_s, "compute_after_s"), "compute_after_s")
            self.owner._version += 1
            self.owner._rewrite([f for f in self.flows if not f.removed])
            for fb in self.batches:
                fb.rewrite()


def _layer_arg(layer: object) -> int:
    """A layer given as something other than a plain int in range: an int subclass in range
    (not a bool), or a ValueError."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not -(1 << 31) <= layer < 1 << 31:
        raise ValueError(f"layer must be a 32-bit integer, got {layer!r}")
    return int(layer)


def _per_flow(v: object, n: int, what: str) -> list[object]:
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
        self._lock = ctl.registrations.lock
        # the cursor's place in the mapped cursor array (mfs_tc.cursors): _cursors[_ci]; None
        # where the record keeps the cursor (no mapping: one update syscall per at_layer)
        self._cursors: memoryview | None = None
        self._ci = 0
        self.stages: list[StageHandle] = []
        self.flows: dict[bytes, FlowHandle] = {}
        self.batches: list[FlowBatch] = []  # register_flows' batches
        self.closed = False
        self._version = 0  # bumped whenever what the policy sees of this request changes

    # -- lifecycle
    def _check_live(self) -> None:
        if self.closed:
            raise MfsError(f"request {self.id:#x} is done: register flows before done()")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()

    def done(self) -> None:
        """Remove the record and every flow this request still owns. Idempotent."""
        with self.ctl.registrations.lock:
            if self.closed:
                return
            self.closed = True
            self._drop(list(self.flows.values()))
            for fb in list(self.batches):
                self._drop_batch(fb)
            key = self._rkey
            # a private key was inserted with BPF_NOEXIST: the record is ours. A shared one (the id
            # or its hash) may hold another process's record by now: delete only our own
            if self.ctl.private_keys or self._record_owner() == self.ctl.owner:
                self.ctl.maps.requests.delete(key)
            self._release_slot()
            self.ctl.registrations.discard(self.label)

    # -- stages
    def stage(self, name: str, *, bytes: int = 0, compute_after_s: float = 0.0, layer: int | None = None) -> StageHandle:
        """A stage of this request: "kv_fetch", "collective" or "p2d"."""
        check_stage(name)
        st = Stage(
            name,
            _nonneg(bytes, "stage bytes"),
            _nonneg(seconds_to_ns(compute_after_s, "compute_after_s"), "compute_after_s"),
            None if layer is None else _nonneg(layer, "layer"),
        )
        with self.ctl.registrations.lock:
            self._check_live()
            h = StageHandle(self, st)
            self.stages.append(h)
            self._check_hopeless()
        return h

    # -- cursor
    def at_layer(self, layer: int) -> None:
        """Move the compute cursor; the kernel re-levels this request's rli flows on their next
        packet. With a cursor slot (mfs_tc.cursors) one store into the mapped cursor array, no
        syscall; without, one write of the request record. The record is written too when the
        policy gives the request up now (scavenger flag)."""
        if type(layer) is not int or not -0x80000000 <= layer <= 0x7FFFFFFF:
            layer = _layer_arg(layer)
        with self._lock:
            if self.closed:
                self._check_live()
            self.model.cursor = self.record.cursor = layer
            self._version += 1
            cur = self._cursors
            if cur is not None:
                cur[self._ci] = layer
                self._check_hopeless()
            elif not self._check_hopeless():
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
            self._mark_scavenged()
            self._write_record()
            return True
        return False

    def _mark_scavenged(self) -> None:
        """The scavenger flag, set in the record (sticky), the cursor slot (where the kernel
        reads it for entries that name the slot) and the policy's model; the caller writes the
        record."""
        self.record.flags |= R_SCAVENGER
        self.model.scavenged = True
        self._version += 1
        cs = self.ctl.maps.cursor_slots
        if cs is not None and self._cursors is not None:
            cs.set_flags(self.record.slot, self.record.flags)

    def _write_record(self) -> None:
        self.ctl.maps.requests.update(self._rkey, self.record.pack())

    def _record_owner(self) -> Owner | None:
        raw = self.ctl.maps.requests.lookup(self._rkey)
        return RequestRecord.unpack(raw).owner if raw is not None else None

    def _create_record(self) -> None:
        """Write the record the first time, after claiming a cursor slot where the cursor array is
        mapped (the record names it). With private keys (controller.private_keys) the map key
        is 64 random bits, inserted with BPF_NOEXIST: nobody else's record is overwritten, and a
        process that may only write `requests` cannot find it to change it."""
        ctl = self.ctl
        key = (secrets.randbits(64) or 1) if ctl.private_keys else self.id
        cs = ctl.maps.cursor_slots
        if cs is not None:
            slot = cs.claim(key, ctl.owner, self.record.cursor, self.record.flags)
            self.record.slot = slot
            self._cursors, self._ci = cs.view, cs.index(slot)
        try:
            self._insert_record(key)
        except BaseException:
            self._release_slot()
            raise

    def _insert_record(self, key: int) -> None:
        if not self.ctl.private_keys:
            self._write_record()
            return
        cs = self.ctl.maps.cursor_slots
        for i in range(8):
            if i:
                key = secrets.randbits(64) or 1
                if cs is not None and self.record.slot != SLOT_NONE:
                    cs.set_key(self.record.slot, key, self.ctl.owner)
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

    def _release_slot(self) -> None:
        """Free this request's cursor slot (if it has one and still owns it)."""
        slot = self.record.slot
        if slot == SLOT_NONE:
            return
        self.record.slot = SLOT_NONE
        self._cursors = None
        cs = self.ctl.maps.cursor_slots
        if cs is not None:
            cs.release(slot, self.ctl.owner)

    def decide(self, stage: Stage, flow: Flow, now: int, created_ns: int, gen: int | None = None) -> FlowEntry:
        """Ask the policy for the entry of `flow` of `stage` now and stamp what the controller
        owns of it: this request's key, the stage code, when the flow was registered
        (`created_ns`), the flow's bytes where the policy's mode leaves total_bytes unused (shown by
        `mfs-tc flows`) and, for a registered flow, its registration's `gen`."""
        e = self.ctl.policy.entry(self.model, stage, flow, now)
        e.request_id = self.id
        e.slot = self.record.slot if self.record.slot < SLOT16_NONE else SLOT16_NONE
        e.stage = STAGE_CODES.get(stage.name, 0)
        e.created_ns = created_ns
        if not e.total_bytes:
            e.total_bytes = flow.bytes
        if gen is not None:
            e.gen = gen
        return e

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
            # sent_bytes (the policy's flow.sent) is where a lost state would restart
            created = fh.entry.created_ns if fh.entry is not None else now
            fh.entry = e = self.decide(fh.stage.stage, fh.flow, now, created, fh.gen)
            e.state_slot = fh.slot  # the same registration keeps its slot (and counts)
            vals.append(e.pack())
        if handles:
            _write_decisions(self.ctl.maps, handles, vals)

    def _drop(self, handles: list[FlowHandle]) -> None:
        """Remove the entries of these flows that are still ours: in the map with our gen (an
        entry another controller wrote since on the same 5-tuple stays)."""
        ctl = self.ctl
        mine = ctl.registrations.release(handles)
        freed = [fh for fh in handles if not fh.removed]
        for fh in handles:
            fh.removed = True
            self.flows.pop(fh.key, None)
        if not mine:
            ctl.release_slots(freed)
            return
        tuples = []
        for fh in mine:
            if fh.sock is not None:
                fd = fh.sock.fileno()
                if fd >= 0 and ctl.maps.sk_flows is not None:
                    raw = ctl.maps.sk_flows.lookup(fh.key[2:])
                    if raw is not None and _U32.unpack_from(raw, _GEN_OFF)[0] == fh.gen:
                        ctl.maps.sk_flows.delete(fh.key[2:])
                continue
            tuples.append((fh.key, fh.gen))
        if tuples:
            self._delete_own(tuples)
        ctl.release_slots(freed)  # after their entries are gone

    def _drop_batch(self, fb: FlowBatch) -> None:
        """Remove the entries of a FlowBatch that are still its own (as _drop)."""
        mine = self.ctl.registrations.release_batch(fb)
        fb.removed = True
        if fb in self.batches:
            self.batches.remove(fb)
        if fb in fb.stage.batches:
            fb.stage.batches.remove(fb)
        if mine:
            self._delete_own([(k, fb.gen) for k in mine])
        if self.ctl.state_slots is not None:  # every slot of the batch: its keys' entries are gone or newer
            self.ctl.state_slots.release_many(fb._slots, fb.gen)

    def _delete_own(self, handles: list[tuple[bytes, int]]) -> None:
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

        def ours(v: bytes, gen: int) -> bool:
            return _U32.unpack_from(v, _GEN_OFF)[0] == gen and v[_RID_OFF : _RID_OFF + 8] == rid

        for key, gen in handles:
            try:
                v = flows.lookup_and_delete(key)
            except BpfSyscallError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, bpfsys.ENOTSUPP):
                    raise
                v = flows.lookup(key)  # kernel before 5.14: check, then delete (a short race)
                if v is not None and ours(v, gen):
                    flows.delete(key)
                continue
            if v is not None and not ours(v, gen):
                try:
                    flows.update(key, v, bpfsys.BPF_NOEXIST)
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
        with self.ctl.registrations.lock:
            self._check_live()
            if remaining_bytes is not None:
                self.model.remaining_bytes = _nonneg(remaining_bytes, "remaining_bytes")
            if remaining_compute_s is not None:
                self.model.remaining_compute_ns = _nonneg(
                    seconds_to_ns(remaining_compute_s, "remaining_compute_s"), "remaining_compute_s"
                )
            if slo_s is not None:
                ns = seconds_to_ns(slo_s, "slo_s")
                if ns <= 0:
                    raise ValueError(f"SLO must be positive, got {slo_s} s")
                self.model.slo_ns = ns
                self.record.deadline_ns = self.model.deadline_ns
                self._write_record()
            self._version += 1
            self._check_hopeless()
            self._rewrite([fh for fh in self.flows.values() if not fh.removed])
            for fb in self.batches:
                fb.rewrite()

    def scavenge(self) -> None:
        """Give this request up: its flows go to the scavenger level (the kernel reads the
        request's flag for every entry carrying its id; sticky). For a decision made beside the
        policy, e.g. a decode-side p2d admission (policy.admission.moore_hodgson)."""
        with self.ctl.registrations.lock:
            self._check_live()
            if self.record.flags & R_SCAVENGER:
                return
            self._mark_scavenged()
            self._write_record()

    @property
    def scavenged(self) -> bool:
        return bool(self.record.flags & R_SCAVENGER)

    def read_record(self) -> RequestRecord | None:
        """The record in `requests`, its `cursor` the one the kernel reads (its slot's, where it
        has one: PinnedMaps.request_cursor)."""
        raw = self.ctl.maps.requests.lookup(_U64.pack(self.id))
        if not raw:
            return None
        rec = RequestRecord.unpack(raw)
        rec.cursor = self.ctl.maps.request_cursor(rec)
        return rec


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
        models = [m.model for m in members]
        model = batch_request(
            key,
            models,
            remaining_bytes=sum(m.remaining_bytes for m in models),
            remaining_compute_ns=max(m.remaining_compute_ns for m in models),
            batch=Batch(key, deadlines),
        )
        super().__init__(ctl, key, model, deadlines[-1])
        self.members = members
        for m in members:
            m.model.batch = model.batch

    def _hopeless(self, now: int) -> bool:
        return batch_hopeless((m.model for m in self.members), lambda r: self.ctl.policy.is_hopeless(r, now))

    def at_layer(self, layer: int) -> None:
        """Move the batch's cursor and its live members': stores into the mapped cursor array
        where they have slots; one batched write of the records that have none or that the
        policy gives up now (scavenger flag)."""
        if type(layer) is not int or not -0x80000000 <= layer <= 0x7FFFFFFF:
            layer = _layer_arg(layer)
        with self.ctl.registrations.lock:
            self._check_live()
            now = self.ctl.clock()
            owners: list[_Owner] = [m for m in self.members if not m.closed]
            owners.append(self)
            write = []
            for o in owners:
                o.model.cursor = o.record.cursor = layer
                o._version += 1
                changed = not o.record.flags & R_SCAVENGER and o._hopeless(now)
                if changed:
                    o._mark_scavenged()
                cur = o._cursors
                if cur is not None:
                    cur[o._ci] = layer
                if changed or cur is None:
                    write.append(o)
            if write:
                self.ctl.maps.requests.update_batch_raw(
                    b"".join(o._rkey for o in write), b"".join(o.record.pack() for o in write), len(write)
                )


# ---- what a controller registered ----------------------------------------------------------------
class Registrations:
    """What one controller has registered, and the lock every handle holds while it changes
    anything: the registration ids (gen) it hands out, which flow owns each connection key, and
    its open requests and batches. With the controller's maps, policy and clock, the handles'
    whole interface to their controller."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.gen = random.getrandbits(32)  # the last registration id handed out
        self._owner_of: dict[bytes, FlowHandle | FlowBatch] = {}
        self._open: dict[int, _Owner] = {}

    def next_gen(self) -> int:
        """A registration id: per controller a counter from a random start, never 0."""
        self.gen = (self.gen + 1) & 0xFFFFFFFF or 1
        return self.gen

    def claim_one(self, fh: FlowHandle) -> None:
        """This new flow owns its connection now: a flow registered earlier on the same
        connection is removed from its request (its entry was overwritten)."""
        k = fh.key
        prev = self._owner_of.setdefault(k, fh)
        if prev is not fh:
            self._taken(k, prev)
            self._owner_of[k] = fh
        fh.owner.flows[k] = fh

    @staticmethod
    def _taken(k: bytes, prev: FlowHandle | FlowBatch) -> None:
        """The connection `k` of `prev` now belongs to a newer registration. (A FlowBatch
        only stops owning it: owned_keys looks the owner up.)"""
        if isinstance(prev, FlowHandle):
            prev.owner.flows.pop(k, None)
            if not prev.removed:
                prev.removed = True
                prev.owner.ctl.release_slots([prev])  # its entry was overwritten by the newer one

    def claim_batch(self, fb: FlowBatch) -> None:
        """claim_one for each connection of a new FlowBatch, in one dict update."""
        new = dict.fromkeys(fb._keys, fb)  # distinct (register_flows), parallel to fb._slots
        owner_of = self._owner_of
        if not owner_of.keys().isdisjoint(new):
            for k in new:
                prev = owner_of.get(k)
                if prev is not None:
                    self._taken(k, prev)
        owner_of.update(new)

    def owned_keys(self, fb: FlowBatch) -> list[bytes]:
        """The keys of `fb` no newer registration has taken."""
        owner_of = self._owner_of
        return [k for k in fb._keys if owner_of.get(k) is fb]

    def release_batch(self, fb: FlowBatch) -> list[bytes]:
        """release for a FlowBatch: the keys it still owned, which now it does not."""
        mine = self.owned_keys(fb)
        for k in mine:
            del self._owner_of[k]
        return mine

    def claim(self, handles: list[FlowHandle]) -> None:
        """claim_one for each of these new flows of one stage, in one dict update where no
        connection changes hands."""
        new: dict[bytes, FlowHandle | FlowBatch] = {fh.key: fh for fh in handles}
        if len(new) != len(handles) or not self._owner_of.keys().isdisjoint(new):
            for fh in handles:  # some connections change hands (or repeat): one by one
                self.claim_one(fh)
            return
        self._owner_of.update(new)
        if handles:
            handles[0].owner.flows.update({fh.key: fh for fh in handles})

    def release(self, handles: list[FlowHandle]) -> list[FlowHandle]:
        """Those of these flows that still owned their connection (not removed, not re-registered
        since), which now do not: their entries are theirs to delete."""
        owner_of = self._owner_of
        mine = [fh for fh in handles if not fh.removed and owner_of.get(fh.key) is fh]
        for fh in mine:
            del self._owner_of[fh.key]
        return mine

    def add(self, key: int, owner: _Owner) -> None:
        self._open[key] = owner

    def discard(self, key: int) -> None:
        self._open.pop(key, None)

    def __contains__(self, key: int) -> bool:
        return key in self._open

    def open_owners(self) -> list[_Owner]:
        """The open requests and batches, batches first (closing a batch before its members)."""
        owners = list(self._open.values())
        return [o for o in owners if isinstance(o, BatchHandle)] + [o for o in owners if not isinstance(o, BatchHandle)]


def _write_decisions(maps: PinnedMaps, handles: list[FlowHandle], vals: list[bytes]) -> None:
    """Write decisions: 5-tuple ones in one batch, socket ones keyed by their fd."""
    tk, tv = [], []
    sk_flows = maps.sk_flows
    for fh, v in zip(handles, vals, strict=False):
        if fh.sock is not None and sk_flows is not None:  # (a sock only where there is sk_flows)
            sk_flows.update(fh.key[2:], v)
        else:
            tk.append(fh.key)
            tv.append(v)
    if tk:
        maps.flows.update_batch_raw(b"".join(tk), b"".join(tv), len(tk))


# ---- the controller -------------------------------------------------------------------------------
class Controller:
    """Registers requests, stages and flows of one attached interface."""

    def __init__(
        self,
        maps: PinnedMaps,
        policy: Policy,
        *,
        clock: Callable[[], int] = time.monotonic_ns,
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
        self.registrations = Registrations()
        # the state slots this controller gives its flows (None: the kernel looks states up)
        self.state_slots = StateSlots.of(maps.state_words, maps.state_owners, self.owner)

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
        with self.registrations.lock:
            for o in self.registrations.open_owners():
                o.done()
            if self.state_slots is not None:
                self.state_slots.close()
                self.state_slots = None
            self.maps.close()

    def release_slots(self, handles: Iterable[FlowHandle]) -> None:
        """Give back the state slots of these flows (their entries are gone or overwritten)."""
        sl = self.state_slots
        if sl is not None:
            for fh in handles:
                if fh.slot != STATE_NONE:
                    sl.release(fh.slot, fh.gen)
                    fh.slot = STATE_NONE

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
            arrival_ns = wall_to_monotonic_ns(seconds_to_ns(arrival_wall, "arrival_wall"))
        if arrival_ns is None:
            arrival_ns = self.clock() if arrival is None else seconds_to_ns(arrival, "arrival")
        if deadline_wall is not None:
            dl = wall_to_monotonic_ns(seconds_to_ns(deadline_wall, "deadline_wall"))
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
            slo_ns = seconds_to_ns(slo_s, "slo_s")
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
            remaining_compute_ns=_nonneg(seconds_to_ns(remaining_compute_s, "remaining_compute_s"), "remaining_compute_s"),
        )
        with self.registrations.lock:
            if key in self.registrations:
                raise ValueError(f"request {request_id!r} is already registered: call done() on it first")
            h = RequestHandle(self, key, model, model.deadline_ns)
            if policy_hopeless(self.policy, model, self.clock()):
                h._mark_scavenged()
            h._create_record()
            self.registrations.add(key, h)
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
        with self.registrations.lock:
            if key in self.registrations:
                raise ValueError(f"batch {batch_id!r} is already registered")
            b = BatchHandle(self, key, members)
            if b._hopeless(self.clock()):
                b._mark_scavenged()
            b._create_record()
            self.registrations.add(key, b)
        return b

    # -- static entries (operators, `mfs-tc set`)
    def set_static(self, target: FlowTarget, level: int) -> bytes:
        return set_static(self.maps, target, level, now_ns=self.clock())

    # -- RoCE
    def traffic_class(self, level: int) -> int:
        """The RoCE/IB traffic class of `level` (DSCP << 2) for NCCL_IB_TC, UCX_IB_TRAFFIC_CLASS
        and MC_IB_TC: RDMA bypasses tc, so the application marks its own queue pairs."""
        return self.maps.dscp(level) << 2

    def rdma_table(self) -> list[dict[str, int]]:
        return rdma_table(self.maps.level_records()[: self.maps.config.nlevels])

    def flows(self) -> list[FlowView]:
        return self.maps.flow_views(self.clock())


def policy_hopeless(policy: Policy, model: Request, now: int) -> bool:
    return policy.is_hopeless(model, now)
