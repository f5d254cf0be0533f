"""The testbed's side of the controller: one mfs_tc.controller.Controller per host egress.

A flow is registered in the controller of the host that sends it (its classifier sees it), with
its request's deadline, its stage and its target layer. A batch's kv_fetch and collective flows
serve every member: they are registered through the controller's batch (RED over the members'
deadlines; a batch of one is just its request); p2d flows through their own request. When the
prefill group's compute reaches layer g the testbed moves the cursor of the batch and its
members in every host's maps that know them (the request metadata travels).
`NullScheduler` registers nothing (datapath "plain").
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mfs_tc.errors import MfsError
from mfs_tc.layout import COUNTER_FMT, MAX_LEVELS, FlowKey, pin_dir
from mfs_tc.policy.admission import moore_hodgson
from mfs_tc.workload import RequestSpec, Transfer

from .plan import ArrivalEstimate
from .topology import Topology

if TYPE_CHECKING:
    from mfs_tc.controller import BatchHandle, Controller, FlowHandle, RequestHandle, StageHandle

# a registered stage: (host, "b" batch / "r" request, the batch or request id, stage, layer)
StageKey = tuple[str, str, int, str, int]


class Scheduler:
    """No-op base: what the agents call. Subclasses register with real controllers."""

    policy: str = "none"

    def open_request(self, spec: RequestSpec, arrival_ns: int, estimate: ArrivalEstimate) -> None:
        """The request arrived (its deadline is known from now on; its work ahead as `estimate`
        until the first update)."""

    def begin_batch(self, batch_id: int, request_ids: list[int]) -> None:
        """The prefill group starts a batch of these members."""

    def add_flow(
        self,
        host: str,
        stage: str,
        layer: int,
        t: Transfer,
        key: FlowKey,
        *,
        batch_id: int | None,
        request_id: int | None,
        stage_bytes: int,
        compute_after_s: float,
        true_remaining_ns: int | None,
    ) -> None:
        """Register a flow sent by `host`, of `stage` with target layer `layer`: a batch's
        (kv_fetch, collective) or a request's (p2d)."""

    def update_estimates(
        self, batch_id: int | None, estimates: dict[int, tuple[int, float]], batch_estimate: tuple[int, float] | None = None
    ) -> None:
        """New work estimates per request (bytes still to move, compute still ahead in s) and of
        the batch as a whole, so policies that judge feasibility (scavenger) see the work left,
        not the work at arrival."""

    def at_layer(self, batch_id: int, layer: int) -> None:
        """The batch's compute reached `layer`: move its and its members' cursors everywhere."""

    def end_batch(self, batch_id: int) -> None:
        """The batch's kv_fetch and collective flows are over."""

    def scavenged(self, request_id: int) -> bool:
        """Whether the request was given up (the scavenger level) on some host, so far: what
        the simulator reports as `scavenged`. Asked before `done`."""
        return False

    def done(self, request_id: int) -> None:
        """The request has its first token (or failed)."""

    def close(self) -> None:
        pass


class NullScheduler(Scheduler):
    policy = "plain"


@dataclass
class ControllerScheduler(Scheduler):
    """One Controller per host egress; requests and batches registered lazily per host."""

    topology: Topology
    policy: str
    config: dict[str, Any] = field(default_factory=dict)
    _ctls: dict[str, Controller] = field(default_factory=dict)
    _reqs: dict[tuple[str, int], RequestHandle] = field(default_factory=dict)
    _handles: dict[int, list[RequestHandle]] = field(default_factory=dict)  # request id -> _reqs of it
    # (host, batch id) -> the batch's owner there: its BatchHandle, or a batch of one's request
    _batches: dict[tuple[str, int], RequestHandle | BatchHandle] = field(default_factory=dict)
    _members: dict[int, list[int]] = field(default_factory=dict)
    _stages: dict[StageKey, StageHandle] = field(default_factory=dict)
    # request id -> (spec, its arrival estimate, its TTFT deadline as wall-clock seconds): what a
    # serving system carries in request metadata; each host's controller converts the deadline
    # to its own CLOCK_MONOTONIC
    _jobs: dict[int, tuple[RequestSpec, ArrivalEstimate, float]] = field(default_factory=dict)
    _est: dict[int, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    # p2d admission (policy.admission), as a decode-side scheduler would run it: the live p2d
    # stages per decode host, request id -> (its flows, stage bytes, p2d deadline ns)
    admission_tick_s: float = 0.001
    _p2d: dict[str, dict[int, tuple[list[FlowHandle], int, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _admitter: threading.Thread | None = None

    def __post_init__(self) -> None:
        from mfs_tc.controller import Controller  # noqa: PLC0415 - the plain datapath needs none

        cfg = dict(self.config)
        cfg.setdefault("ref_rate_bps", float(self.topology.config.rate_bps))
        if self.policy == "llf-oracle":
            # the controller registers a flow before the testbed hands it the true work ahead
            # (add_flow has no such argument): register on the estimate, then rewrite at once
            cfg.setdefault("allow_estimate", True)
        try:
            for h in self.topology.hosts:
                self._ctls[h.name] = Controller.open(h.ifname, netns=h.netns, policy=self.policy, **cfg)
        except BaseException:
            self.close()
            raise
        if any(c.policy.p2d_admission() for c in self._ctls.values()):
            self._admitter = threading.Thread(target=self._admit_loop, daemon=True, name="p2d-admission")
            self._admitter.start()

    def _admit_loop(self) -> None:
        """Every tick, on each decode host with two or more live p2d stages: the stages
        Moore-Hodgson gives up (bytes the kernel has not counted yet, at the link rate, against
        the p2d deadline) are scavenged on every host that knows the request."""
        ns_per_byte = 8e9 / float(self.topology.config.rate_bps)
        while not self._stop.wait(self.admission_tick_s):
            with self._lock:
                drop: list[int] = []
                for on in self._p2d.values():
                    if len(on) < 2:
                        continue
                    jobs: dict[int, tuple[int, int]] = {}
                    for rid, (fhs, stage_bytes, deadline) in on.items():
                        if any(r.scavenged for r in self._handles.get(rid, ())):
                            continue
                        sent = 0
                        for fh in fhs:
                            st = fh.state()
                            sent += st.sent_bytes if st is not None else 0
                        jobs[rid] = (int(max(stage_bytes - sent, 0) * ns_per_byte), deadline)
                    if len(jobs) >= 2:
                        drop += moore_hodgson(jobs, time.monotonic_ns())
                for rid in drop:
                    for r in self._handles.get(rid, ()):
                        _quiet(r.scavenge)

    def _req(self, host: str, request_id: int) -> RequestHandle:
        key = (host, request_id)
        r = self._reqs.get(key)
        if r is None:
            spec, first, deadline_wall = self._jobs[request_id]
            b, c = self._est.get(request_id, (first.remaining_bytes, first.remaining_compute_s))
            r = self._ctls[host].request(
                request_id,
                deadline_wall=deadline_wall,
                arrival_wall=deadline_wall - spec.slo_s,
                num_layers=first.num_layers,
                remaining_bytes=b,
                remaining_compute_s=c,
            )
            self._reqs[key] = r
            self._handles.setdefault(request_id, []).append(r)
        return r

    def _owner(self, host: str, batch_id: int) -> RequestHandle | BatchHandle:
        key = (host, batch_id)
        b = self._batches.get(key)
        if b is None:
            members = [self._req(host, rid) for rid in self._members[batch_id]]
            b = members[0] if len(members) == 1 else self._ctls[host].batch(members, batch_id=f"batch:{batch_id}")
            self._batches[key] = b
        return b

    def open_request(self, spec: RequestSpec, arrival_ns: int, estimate: ArrivalEstimate) -> None:
        # the deadline travels as wall-clock time, converted once here (where the request
        # arrives), as the request's metadata would carry it to every host
        deadline_wall = time.time() - (time.monotonic_ns() - arrival_ns) / 1e9 + spec.slo_s
        with self._lock:
            self._jobs[spec.request_id] = (spec, estimate, deadline_wall)

    def begin_batch(self, batch_id: int, request_ids: list[int]) -> None:
        with self._lock:
            self._members[batch_id] = list(request_ids)

    def add_flow(
        self,
        host: str,
        stage: str,
        layer: int,
        t: Transfer,
        key: FlowKey,
        *,
        batch_id: int | None,
        request_id: int | None,
        stage_bytes: int,
        compute_after_s: float,
        true_remaining_ns: int | None,
    ) -> None:
        with self._lock:
            req: RequestHandle | None = None  # the owner when it is a request (p2d)
            owner: RequestHandle | BatchHandle
            if batch_id is not None:
                owner = self._owner(host, batch_id)
                skey: StageKey = (host, "b", batch_id, stage, layer)
            elif request_id is not None:
                owner = req = self._req(host, request_id)
                skey = (host, "r", request_id, stage, layer)
            else:
                raise ValueError("a flow belongs to a batch or a request")
            handle = self._stages.get(skey)
            if handle is None:
                handle = owner.stage(stage, bytes=stage_bytes, compute_after_s=compute_after_s, layer=layer)
                self._stages[skey] = handle
            fh = handle.add_flow(key, bytes=t.bytes, target_layer=layer)
            if true_remaining_ns is not None and self.policy == "llf-oracle":
                fh.update(true_remaining_work_ns=true_remaining_ns)
            if self._admitter is not None and stage == "p2d" and request_id is not None and req is not None:
                on = self._p2d.setdefault(t.dst, {})
                deadline = req.deadline_ns - int(round(compute_after_s * 1e9))
                fhs = on.get(request_id, ([], stage_bytes, deadline))[0]
                fhs.append(fh)
                on[request_id] = (fhs, stage_bytes, deadline)

    def update_estimates(
        self, batch_id: int | None, estimates: dict[int, tuple[int, float]], batch_estimate: tuple[int, float] | None = None
    ) -> None:
        with self._lock:
            self._est.update(estimates)
            for (_host, rid), r in list(self._reqs.items()):
                if rid in estimates:
                    b, c = estimates[rid]
                    r.update_estimate(remaining_bytes=b, remaining_compute_s=c)
            if batch_id is None or len(self._members.get(batch_id, [])) < 2:
                return
            if batch_estimate is not None:
                tot, comp = batch_estimate
            else:
                tot = sum(b for b, _ in estimates.values())
                comp = max((c for _, c in estimates.values()), default=0.0)
            for (_host, bid), owner in list(self._batches.items()):
                if bid == batch_id:
                    owner.update_estimate(remaining_bytes=tot, remaining_compute_s=comp)

    def at_layer(self, batch_id: int, layer: int) -> None:
        with self._lock:
            rids = self._members.get(batch_id, [])
            for (_host, bid), owner in list(self._batches.items()):
                if bid == batch_id:
                    owner.at_layer(layer)
            # members registered on hosts where the batch itself has no flows yet (p2d senders)
            for (host, rid), r in list(self._reqs.items()):
                if rid in rids and (host, batch_id) not in self._batches:
                    r.at_layer(layer)

    def end_batch(self, batch_id: int) -> None:
        with self._lock:
            for key in [k for k in self._batches if k[1] == batch_id]:
                owner = self._batches.pop(key)
                if len(self._members.get(batch_id, [])) > 1:
                    _quiet(owner.done)
            for skey in [k for k in self._stages if k[1] == "b" and k[2] == batch_id]:
                del self._stages[skey]
            self._members.pop(batch_id, None)

    def scavenged(self, request_id: int) -> bool:
        with self._lock:
            return any(r.scavenged for r in self._handles.get(request_id, ()))

    def done(self, request_id: int) -> None:
        with self._lock:
            for key in [k for k in self._reqs if k[1] == request_id]:
                _quiet(self._reqs.pop(key).done)
            self._handles.pop(request_id, None)
            for skey in [k for k in self._stages if k[1] == "r" and k[2] == request_id]:
                del self._stages[skey]
            self._jobs.pop(request_id, None)
            self._est.pop(request_id, None)
            for on in self._p2d.values():
                on.pop(request_id, None)

    def close(self) -> None:
        self._stop.set()
        if self._admitter is not None:
            self._admitter.join(timeout=2)
        with self._lock:
            for ctl in self._ctls.values():
                _quiet(ctl.close)
            self._ctls.clear()
            self._reqs.clear()
            self._handles.clear()
            self._batches.clear()
            self._stages.clear()


def _quiet(fn: Callable[[], object]) -> None:
    try:
        fn()
    except MfsError:
        pass


def level_bytes(topology: Topology) -> list[int]:
    """Bytes sent per level, summed over every host egress (the classifier's stats slots 0..7).
    Zeros where no classifier is attached."""
    out = [0] * MAX_LEVELS
    from mfs_tc.bpfsys import BpfMap  # noqa: PLC0415

    for h in topology.hosts:
        path = pin_dir(h.ifname, h.netns) / "stats"
        if not Path(path).exists():
            continue
        with BpfMap.open(path) as m:
            for lv in range(MAX_LEVELS):
                vals = m.lookup_percpu(struct.pack("<I", lv)) or []
                out[lv] += sum(struct.unpack_from(COUNTER_FMT, v)[1] for v in vals)
    return out
