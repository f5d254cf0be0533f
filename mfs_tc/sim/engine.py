"""Event-driven flow-level simulator of layer-wise prefill, with the real policy objects.

Model (what one run computes):
- Requests arrive as the shared workload says (`mfs_tc.workload`); each prefill group runs one
  batch at a time, formed by `form_batch` (FCFS) from the requests routed to it; the batch's
  transfers and compute come from `plan_batch`, with the dependencies documented there.
- Every transfer is a fluid flow on its fabric path (`fabric.Fabric`); rates follow strict
  priority across levels and max-min fairness within a level (`fluid.FluidNetwork`).
- A flow's level is its `FlowEntry.level(now, sent=..., cursor=..., scavenged=...)`, the kernel's
  exact function, with the kernel's MONOTONIC state (cur_level). Entries come from the policy as
  the controller asks for them: when a flow starts, and again for every live flow when the
  serving process updates its estimates (at each layer boundary, with the cursor move). Levels
  are re-evaluated then and at every re-level tick (`tick_s`, default 1 ms of simulated time):
  the model's time resolution for promotions that depend on time or bytes sent (modes mlu,
  laxity, sent, remaining). `policy.is_hopeless` is asked where the controller asks it (a flow's
  stage starts, a cursor move); a hopeless request is scavenged. A batch of several requests owns
  its kv_fetch and collective flows through a batch request (the controller's BatchHandle: the
  tightest member's deadline, summed remaining bytes, members' deadlines for RED; scavenged when
  every member is); p2d flows belong to their request.
- Compute and the decode step are fixed delays (no contention).
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import replace
from typing import Any

from ..entry import FlowEntry
from ..layout import MODE_RLI, MODE_STATIC
from ..model import STAGES, Batch, Flow, Request, Stage, batch_hopeless, batch_request
from ..policy.admission import admission_slack_ns, moore_hodgson
from ..policy.base import Policy
from ..policy.red import red, red_ranks
from ..results import RequestRow
from ..workload import RequestSpec, Workload
from ..workload.adapt import batch_of, request_estimate, to_model_request
from ..workload.batching import BatchPlan, Transfer, form_batch, plan_batch
from . import accel, netutil
from .due import NEVER, next_change_ns
from .fabric import Fabric, Link
from .fluid import FluidFlow, FluidNetwork
from .result import SimResult

NS = 1_000_000_000
_ARRIVAL, _DONE, _COMPUTE, _TOKEN, _FLOW, _LANDED, _PROMOTE = range(7)
# an event in the heap: (time s, sequence, kind, payload, extra); what payload and extra hold
# depends on the kind (the handler `run` dispatches it to). The re-level tick is an event too,
# but outside the heap (Simulator._tick_t): at most one is pending, ordered by (time, sequence)
# among the heap's events as if it were one of them
_Event = tuple[float, int, int, Any, Any]
# what a policy's entry is a function of (Simulator._entry): stage, layer, request id, cursor,
# RED rank, remaining bytes, remaining compute ns, flow bytes, bytes sent, stage bytes,
# compute after ns
_EntryKey = tuple[str, int, int, int, tuple[int, int] | None, int, int, float, int, int, int]
_QUIET_MARGIN_NS = 1_000
ENGINES = ("auto", "compiled", "python")


class _SimFlow(FluidFlow):
    """A fluid flow with what the simulator keeps per flow: its stage and batch, the policy's
    entry and what the policy is shown, the kernel's cur_level, and when its level may next
    change."""

    __slots__ = (
        "stage",
        "layer",
        "batch",
        "p2d_request_id",
        "entry",
        "request",
        "cur_level",
        "dynamic",
        "due",
        "due_entry",
        "due_heap_t",
        "stage_bytes",
        "compute_after_ns",
        "key",
        "lv_cursor",
        "policy_stage",
        "policy_flow",
        "starved_t",
        "promo_v",
        "promo_pending",
    )

    def __init__(
        self,
        fid: int,
        links: tuple[Link, ...],
        size: float,
        t: float,
        stage: str,
        layer: int,
        batch: _BatchRun,
        p2d_request_id: int,
        entry: FlowEntry,
        request: Request,
        stage_bytes: int,
        compute_after_ns: int,
        policy_stage: Stage,
        policy_flow: Flow,
    ) -> None:
        super().__init__(fid, links, size, 0, t)
        self.stage = stage
        self.layer = layer
        self.batch = batch
        self.p2d_request_id = p2d_request_id  # p2d: the request whose stage it is (else 0)
        self.entry = entry
        self.request = request  # whose flow it is to the policy (a batch's: its batch request)
        self.cur_level = entry.cur_level  # the kernel's MONOTONIC state
        self.dynamic = entry.mode not in (MODE_STATIC, MODE_RLI)  # level moves with time/bytes
        self.due = 0  # before this (ns) its level cannot change (sim.due)
        # its entry in the simulator's heap of dues (Simulator._set_due) and that entry's time
        self.due_entry = 0
        self.due_heap_t = NEVER
        self.stage_bytes = stage_bytes
        self.compute_after_ns = compute_after_ns
        self.key: Hashable | None = None  # policy.entry_key when `entry` was asked (None: no promise)
        self.lv_cursor = -1  # the request's cursor at the flow's last level evaluation
        # what the policy is shown for this flow (entry, entry_key)
        self.policy_stage = policy_stage
        self.policy_flow = policy_flow
        # promotion_rto_s: since when its rate is 0 (-1.0: it has a rate), and its promotion
        # waiting for a packet to carry it (the version of its _PROMOTE event)
        self.starved_t = -1.0
        self.promo_v = 0
        self.promo_pending = False


class _BatchRun:
    """A batch from its start on its prefill group to its members' last p2d flow."""

    __slots__ = (
        "bid",
        "group",
        "members",
        "plan",
        "reqs",
        "owner",
        "kv_left",
        "coll_left",
        "layer",
        "waiting_kv",
        "start_t",
        "coll_t0",
        "coll_total",
        "kv_end",
        "flows",
        "p2d_left",
        "p2d_t0",
        "compute_total",
        "fanouts",
        "compute_after",
        "model_batch",
        "red",
    )

    def __init__(
        self,
        bid: int,
        group: int,
        members: list[RequestSpec],
        plan: BatchPlan,
        reqs: dict[int, Request],
        t: float,
        model_batch: Batch | None,
        link_rate_bps: float,
    ) -> None:
        self.bid = bid
        self.group = group
        self.members = members
        self.plan = plan
        self.reqs = reqs  # request id -> its model.Request (what the policy sees)
        # who the kv_fetch and collective flows belong to (_owner_request)
        self.owner = _owner_request(bid, list(reqs.values()), model_batch, plan, link_rate_bps)
        self.kv_left = [0] * len(plan.layers)  # per layer, its kv_fetch flows still live
        self.coll_left = 0  # the current layer's collective flows still live
        self.layer = 0  # the layer computing or next to (len(plan.layers): prefill done)
        self.waiting_kv = False  # the layer waits for its kv_fetch
        self.start_t = t
        self.coll_t0 = 0.0  # the current collective's start
        self.coll_total = 0.0
        self.kv_end = t  # the last kv_fetch flow's end so far
        self.flows: set[_SimFlow] = set()  # its live flows
        self.p2d_left: dict[int, int] = {}  # per member, its p2d flows still live
        self.p2d_t0: dict[int, float] = {}  # per member, its p2d start
        self.compute_total = 0.0
        # per stage, the last layer's (transfers, fluid flows, stage bytes): Simulator._fanout_of
        self.fanouts: dict[str, tuple[list[Transfer], list[tuple[str, str, int, int]], int]] = {}
        self.compute_after: dict[int, int] = {}  # Simulator._compute_after
        self.model_batch = model_batch  # model.Batch (for RED) of a batch of several
        # its RED (a batch of one: its deadline), what _rank ranks by (deadlines are fixed)
        self.red = red(model_batch.deadlines_ns) if model_batch is not None else self.owner.deadline_ns


def _owner_request(bid: int, reqs: list[Request], model_batch: Batch | None, plan: BatchPlan, link_rate_bps: float) -> Request:
    """Who a batch's kv_fetch and collective flows belong to, as in the controller: the request
    itself for a batch of one; otherwise the batch request of the one rule
    (`model.batch_request`), with the batch's work ahead (`request_estimate` of the whole
    batch)."""
    if len(reqs) == 1:
        return reqs[0]
    nbytes, compute_ns = request_estimate(plan, None, 0, link_rate_bps)
    return batch_request(-bid, reqs, remaining_bytes=nbytes, remaining_compute_ns=compute_ns, batch=model_batch)


def _fanout(transfers: list[Transfer], host_map: dict[str, str] | None) -> list[tuple[str, str, int, int]]:
    """(src, dst, bytes, weight) of each fluid flow: with group aggregation, the transfers of one
    stage between the same (aggregated) endpoints with the same bytes become one flow of that
    many real flows."""
    if host_map is None:
        return [(t.src, t.dst, t.bytes, 1) for t in transfers]
    out: dict[tuple[str, str, int], int] = {}
    get = host_map.get
    for t in transfers:
        k = (get(t.src, t.src), get(t.dst, t.dst), t.bytes)
        out[k] = out.get(k, 0) + 1
    return [(src, dst, nbytes, w) for (src, dst, nbytes), w in out.items()]


class Simulator:
    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        *,
        tick_s: float = 0.001,
        fabric: Fabric | None = None,
        max_batch: int | None = None,
        max_batch_tokens: int | None = None,
        horizon_s: float | None = None,
        skip_unchanged: bool = True,
        flow_setup_s: float = 0.0,
        aggregate_groups: bool = False,
        allocator: str | None = None,
        goodput: float = 1.0,
        queue_bytes: float = 0.0,
        promotion_rto_s: float = 0.0,
        check_entry_keys: bool = False,
        isolate_stages: bool | Iterable[str] = False,
    ) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        if not 0.0 < goodput <= 1.0:
            raise ValueError(f"goodput must be in (0, 1], got {goodput}")
        if queue_bytes < 0:
            raise ValueError(f"queue_bytes must not be negative, got {queue_bytes}")
        # the standing queue of a saturated band that several flows share (a drop-tail FIFO
        # that loss-based TCP keeps filled): a flow whose rate such a link fixed (its bottleneck,
        # shared with other flows of its level) lands queue_bytes / link rate after its last
        # byte left the fluid; 0 in the fluid ideal
        self.queue_bytes = queue_bytes
        self.w = workload
        self.policy = policy
        self.tick_s = tick_s
        # aggregate_groups: a prefill group's G ranks as one host of G links' capacity and each
        # G-fold fan-out as one weighted flow: exact when every flow touching a rank belongs
        # to a group-symmetric fan-out (true of plan_batch) and a group sits in one rack
        self.host_map = Fabric.group_map(workload.cluster) if aggregate_groups else None
        # goodput: the fraction of a link's rate that carries payload (protocol headers: a TCP
        # segment of 1448 B rides in a 1514 B frame; 1.0 in the fluid ideal). It scales the
        # fabric only: the workload (SLOs, unloaded TTFTs) and the policies keep the link rate.
        cluster = workload.cluster
        if goodput != 1.0:
            cluster = replace(cluster, link_rate_bps=cluster.link_rate_bps * goodput)
        self.fabric = fabric or Fabric.for_cluster(cluster, aggregate_groups=aggregate_groups)
        # isolate_stages (True: every stage; or stage names): every instance of those stages
        # (a batch's kv_fetch or collective of one layer, a request's p2d) has the network to
        # itself: its flows get private copies of their path's links (same capacities) and
        # share only among themselves, so they neither slow nor are slowed by anything else.
        # The prefill groups still queue FCFS. All stages: the contention-free run behind the
        # coupled bound (mfs_tc.bound); some: what contention of those stages costs a policy.
        # Isolated flows do not count in the fabric's utilisation.
        if isolate_stages is True:
            isolate_stages = STAGES
        self._isolated = frozenset(isolate_stages or ())
        if not self._isolated <= set(STAGES):
            raise ValueError(
                f"isolate_stages: unknown stage(s) {sorted(self._isolated - set(STAGES))}: " f"choose from {', '.join(STAGES)}"
            )
        self._private_instance: tuple[int, str, int, int] | None = None
        self._private_links: dict[str, Link] = {}
        self.max_batch = max_batch or workload.cfg.max_batch
        self.max_batch_tokens = workload.cfg.max_batch_tokens if max_batch_tokens is None else max_batch_tokens
        self.horizon_s = horizon_s
        # False: evaluate every time-dependent flow and every decode host's p2d admission at
        # every tick (slow; for checking that skipping what provably cannot change changes
        # nothing)
        self.skip_unchanged = skip_unchanged
        if flow_setup_s < 0:
            raise ValueError(f"flow_setup_s must not be negative, got {flow_setup_s}")
        # time from a flow's registration to its first byte on the wire (connection setup,
        # controller registration); 0 in the fluid ideal
        self.flow_setup_s = flow_setup_s
        if promotion_rto_s < 0:
            raise ValueError(f"promotion_rto_s must not be negative, got {promotion_rto_s}")
        # a level is carried by packets: the classifier sets it as a packet leaves the sender,
        # and a packet already queued keeps its band. A flow whose rate is 0 (its band starved
        # somewhere on its path) sends no packet, so a promotion that comes due then waits for
        # the first packet that can carry it: the moment its old band moves again (its rate
        # turns positive) or TCP's retransmission timeout, which fires promotion_rto_s after
        # the flow stalled and again after each doubling (Linux: TCP_RTO_MIN, 200 ms, at
        # sub-millisecond round trips). 0: a level takes effect when it comes due (the fluid
        # ideal, and a datapath that ranks at dequeue)
        self.promotion_rto_s = promotion_rto_s
        self.nlevels = policy.config.nlevels
        self.scav_level = policy.config.scavenger_level
        # the fluid rate allocation (fluid.ALLOCATORS; None: the default, compiled if available)
        self.net = FluidNetwork(self.nlevels, allocator=allocator)
        self.link_rate_bps = workload.cluster.link_rate_bps
        self.rate_Bps = self.link_rate_bps / 8.0
        self._heap: list[_Event] = []
        self._seq = 0
        self.t = 0.0
        self.now = 0  # self.t in ns (the policies' clock)
        self.queues: list[deque[RequestSpec]] = [deque() for _ in range(workload.cluster.prefill_groups)]
        self.busy = [False] * workload.cluster.prefill_groups
        self.out: dict[int, RequestRow] = {}
        self.ccts: list[float] = []
        self.stage_bytes = {"kv_fetch": 0.0, "collective": 0.0, "p2d": 0.0}
        self._bid = 0
        # the pending re-level tick: its time (None: no tick pending) and sequence number
        self._tick_t: float | None = None
        self._tick_seq = 0
        # the live time-dependent flows by id
        self._dyn: dict[int, _SimFlow] = {}
        # (due, entry, flow id) of the time-dependent flows: what the next ticks evaluate (ids,
        # not flows: an entry outliving its flow keeps nothing alive)
        self._dues: list[tuple[int, int, int]] = []
        self._due_seq = 0
        self._req_flows: dict[int, set[_SimFlow]] = {}
        # p2d admission (policy.admission): the live p2d stages per decode host,
        # request id -> (request, its flows, p2d deadline ns)
        self._admission = policy.p2d_admission()
        self._p2d_on: dict[str, dict[int, tuple[Request, list[_SimFlow], int]]] = {}
        self._p2d_host: dict[int, str] = {}
        # per decode host, until when its admission surely gives up nothing (ns; a stage added
        # to the host resets it): policy.admission.admission_slack_ns
        self._p2d_quiet_until: dict[str, int] = {}
        self._p2d_next_check = 0  # the least of them
        self._entry_cache: dict[_EntryKey, FlowEntry] = {}
        # batches in prefill, ranked by RED at every batch start, layer boundary and batch end
        self._prefilling: dict[int, _BatchRun] = {}
        # the ranking changes only when a batch starts or ends (REDs are fixed)
        self._ranked = False
        self._entry_now = -1
        # the base class's is_hopeless is constant False: no need to ask it
        self._hopeless_enabled = type(policy).is_hopeless is not Policy.is_hopeless
        # re-asks keep a flow's entry while policy.entry_key stays the same (Policy.entry_key);
        # check_entry_keys: ask anyway and fail if the entry differs (tests)
        self._keyed = type(policy).entry_key is not Policy.entry_key or policy.fixed_entry
        self._key_per_request = policy.fixed_entry or policy.entry_key_per_request
        self.check_entry_keys = check_entry_keys
        self.events = 0
        self.flows_started = 0
        self._finished = 0

    # ---- event plumbing -----------------------------------------------------------------------
    def _push(self, t: float, kind: int, payload: object, extra: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload, extra))

    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        requests = self.w.requests
        for spec in requests:
            self.out[spec.request_id] = RequestRow(
                request_id=spec.request_id,
                arrival_s=spec.arrival_s,
                slo_s=spec.slo_s,
                unloaded_ttft_s=spec.unloaded_ttft_s,
                prefill_group=spec.prefill_group,
            )
        heap = self._heap
        heappop, heappush = heapq.heappop, heapq.heappush
        total = len(requests)
        # the arrivals enter the event heap one at a time, in (time, position) order, each with
        # its position as its sequence number: the order of events is that of pushing them all
        # first, the heap stays small (the live flows' events, not every future arrival)
        arrivals = iter(sorted(range(total), key=lambda i: requests[i].arrival_s))
        self._seq = max(self._seq, total)

        def push_next_arrival() -> None:
            i = next(arrivals, None)
            if i is not None:
                heappush(heap, (requests[i].arrival_s, i + 1, _ARRIVAL, requests[i], None))

        net = self.net
        dirty = net._dirty
        horizon = self.horizon_s
        skip = self.skip_unchanged
        on_done, on_arrival, launch = self._on_flow_event, self._on_arrival, self._launch
        on_compute, on_token, landed = self._on_compute_done, self._on_token, self._flow_landed
        on_tick, on_promote = self._on_tick, self._on_promote
        rto_on = self.promotion_rto_s > 0.0
        push_next_arrival()
        while (heap or self._tick_t is not None) and self._finished < total:
            tick = self._tick_t
            t = heap[0][0] if heap else tick
            assert t is not None  # (the loop's condition)
            if tick is not None and tick < t:
                t = tick
            if horizon is not None and t > horizon:
                break
            self.t = t
            self.now = now = int(round(t * NS))
            # every event of this instant (the tick among them in sequence order), then one
            # rate recomputation
            while True:
                due = heap and heap[0][0] <= t  # the heap's next event is of this instant
                if self._tick_t == t and (not due or self._tick_seq < heap[0][1]):
                    self.events += 1
                    on_tick()
                    continue
                if not due:
                    break
                _, _, kind, payload, extra = heappop(heap)
                self.events += 1
                if kind == _DONE:
                    on_done(payload, extra)
                elif kind == _ARRIVAL:
                    push_next_arrival()
                    on_arrival(payload)
                elif kind == _FLOW:
                    launch(payload)
                elif kind == _COMPUTE:
                    on_compute(payload)
                elif kind == _TOKEN:
                    on_token(payload, extra)
                elif kind == _PROMOTE:
                    on_promote(payload, extra)
                else:
                    landed(payload)
            if dirty:
                for f in net.recompute(t):
                    assert isinstance(f, _SimFlow)  # the simulator's network holds only its flows
                    f.version += 1
                    if f.rate > 0:
                        self._seq += 1
                        heappush(heap, (t + f.rem / f.rate, self._seq, _DONE, f, f.version))
                    if rto_on:
                        if f.rate > 0:
                            if f.starved_t >= 0.0:
                                f.starved_t = -1.0
                                if f.promo_pending:  # its band moved: the next packet carries it
                                    self._seq += 1
                                    heappush(heap, (t, self._seq, _PROMOTE, f, f.promo_v))
                        elif f.starved_t < 0.0:
                            f.starved_t = t
                    # a bound already reached stays: the next tick must evaluate the flow
                    if f.dynamic and skip and f.due > now:
                        w = f.weight
                        sent = int((f.size - f.rem) / w)
                        e = f.entry
                        self._set_due(f, next_change_ns(e, e.metric(now, sent, f.request.cursor), sent, now, f.rate / w))
        # settle bytes of anything still live (horizon reached)
        for f in list(self.net.flows):
            self.net.settle(f, self.t)
        self.net.close_meters(self.t)
        return SimResult(
            policy=self.policy.name,
            requests=[self.out[s.request_id] for s in self.w.requests],
            ccts_s=self.ccts,
            level_bytes=list(self.net.level_bytes),
            stage_bytes=self.stage_bytes,
            sim_time_s=self.t,
            wall_s=time.perf_counter() - wall0,
            events=self.events,
            recomputes=self.net.recomputes,
            flows=self.flows_started,
            tick_s=self.tick_s,
            net_util=netutil.summarize(self.fabric, self.net.meters, self.t, self.rate_Bps),
        )

    # ---- requests and batches -----------------------------------------------------------------
    def _on_arrival(self, spec: RequestSpec) -> None:
        self.queues[spec.prefill_group].append(spec)
        self._try_start(spec.prefill_group)

    def _try_start(self, group: int) -> None:
        if self.busy[group] or not self.queues[group]:
            return
        q = self.queues[group]
        members = form_batch(q, self.max_batch, self.max_batch_tokens)
        for _ in members:
            q.popleft()
        self.busy[group] = True
        self._bid += 1
        plan = plan_batch(members, self.w.model, self.w.cluster)
        arr = {spec.request_id: int(round(spec.arrival_s * NS)) for spec in members}
        model_batch = batch_of(self._bid, members, arr) if len(members) > 1 else None
        reqs = {
            spec.request_id: to_model_request(
                spec, arr[spec.request_id], plan, batch=model_batch, link_rate_bps=self.link_rate_bps
            )
            for spec in members
        }
        batch = _BatchRun(self._bid, group, members, plan, reqs, self.t, model_batch, self.link_rate_bps)
        self._prefilling[batch.bid] = batch
        self._ranked = False
        self._rank(batch)
        for spec in members:
            row = self.out[spec.request_id]
            row.queue_s = self.t - spec.arrival_s
            row.batch_id = batch.bid
        # is_hopeless is asked once per fan-out (nothing it reads changes between its flows)
        check = True
        keys: dict[str, Hashable] = {}
        for lp in plan.layers:
            fan, stage_bytes = self._fanout_of(batch, "kv_fetch", lp.kv_fetch)
            for src, dst, nbytes, wt in fan:
                self._start_flow(
                    batch,
                    "kv_fetch",
                    lp.layer,
                    src,
                    dst,
                    nbytes,
                    batch.owner,
                    stage_bytes,
                    self._compute_after(batch, lp.layer),
                    weight=wt,
                    check=check,
                    keys=keys,
                )
                check = False
                batch.kv_left[lp.layer] += 1
        self._layer_ready(batch)

    def _fanout_of(self, batch: _BatchRun, stage: str, transfers: list[Transfer]) -> tuple[list[tuple[str, str, int, int]], int]:
        """The fluid flows of one layer's kv_fetch or collective (`_fanout`) and the stage's
        bytes, reused while a layer's transfers are the previous layer's (plan_batch gives every
        layer the same Transfer objects; list equality checks them one by one)."""
        last = batch.fanouts.get(stage)
        if last is not None and last[0] == transfers:
            return last[1], last[2]
        fan = _fanout(transfers, self.host_map)
        stage_bytes = sum(t.bytes for t in transfers)
        batch.fanouts[stage] = (transfers, fan, stage_bytes)
        return fan, stage_bytes

    def _compute_after(self, batch: _BatchRun, layer: int) -> int:
        """The compute (and decode step) after layer `layer`'s flows, in ns, once per layer."""
        ns = batch.compute_after.get(layer)
        if ns is None:
            s = sum(lp.compute_s for lp in batch.plan.layers[layer:]) + batch.plan.decode_step_s
            ns = batch.compute_after[layer] = int(round(s * NS))
        return ns

    def _layer_ready(self, batch: _BatchRun) -> None:
        """Layer batch.layer may compute once its kv_fetch flows are done."""
        if batch.kv_left[batch.layer] > 0:
            batch.waiting_kv = True
            return
        batch.waiting_kv = False
        c = batch.plan.layers[batch.layer].compute_s
        batch.compute_total += c
        self._push(self.t + c, _COMPUTE, batch)

    def _on_compute_done(self, batch: _BatchRun) -> None:
        lp = batch.plan.layers[batch.layer]
        if lp.collective:
            batch.coll_t0 = self.t
            fan, stage_bytes = self._fanout_of(batch, "collective", lp.collective)
            ca = self._compute_after(batch, batch.layer + 1)
            batch.coll_left = len(fan)
            keys: dict[str, Hashable] = {}
            for i, (src, dst, nbytes, wt) in enumerate(fan):
                self._start_flow(
                    batch,
                    "collective",
                    batch.layer,
                    src,
                    dst,
                    nbytes,
                    batch.owner,
                    stage_bytes,
                    ca,
                    weight=wt,
                    check=i == 0,
                    keys=keys,
                )
        else:
            self._layer_done(batch)

    def _layer_done(self, batch: _BatchRun) -> None:
        batch.layer += 1
        self._set_cursor(batch, batch.layer)
        if batch.layer < len(batch.plan.layers):
            self._layer_ready(batch)
            return
        # prefill done: the group is free, p2d starts for every member
        self.busy[batch.group] = False
        del self._prefilling[batch.bid]
        self._ranked = False
        self._rank(None)
        for spec in batch.members:
            row = self.out[spec.request_id]
            row.kv_fetch_s = batch.kv_end - batch.start_t
            row.collective_s = batch.coll_total
            row.compute_s = batch.compute_total
            trs = batch.plan.p2d.get(spec.request_id, [])
            batch.p2d_t0[spec.request_id] = self.t
            if not trs:
                self._p2d_done(batch, spec.request_id)
                continue
            stage_bytes = sum(t.bytes for t in trs)
            req = batch.reqs[spec.request_id]
            fan = _fanout(trs, self.host_map)
            batch.p2d_left[spec.request_id] = len(fan)
            step_ns = int(round(batch.plan.decode_step_s * NS))
            if self._admission:
                host = fan[0][1]
                self._p2d_on.setdefault(host, {})[spec.request_id] = (req, [], req.deadline_ns - step_ns)
                self._p2d_host[spec.request_id] = host
            keys: dict[str, Hashable] = {}
            for i, (src, dst, nbytes, wt) in enumerate(fan):
                self._start_flow(
                    batch,
                    "p2d",
                    len(batch.plan.layers),
                    src,
                    dst,
                    nbytes,
                    req,
                    stage_bytes,
                    step_ns,
                    rid=spec.request_id,
                    weight=wt,
                    check=i == 0,
                    keys=keys,
                )
        self._try_start(batch.group)

    def _set_cursor(self, batch: _BatchRun, cursor: int) -> None:
        """The batch's compute reached `cursor`: the serving process moves the cursors, updates
        the work estimates (the controller then asks the policy again for every live flow and
        checks for hopelessness)."""
        for spec in batch.members:
            request = batch.reqs[spec.request_id]
            request.cursor = cursor
            request.remaining_bytes, request.remaining_compute_ns = request_estimate(
                batch.plan, spec.request_id, cursor, self.link_rate_bps
            )
        owner = batch.owner
        if owner.request_id < 0:
            owner.cursor = cursor
            owner.remaining_bytes, owner.remaining_compute_ns = request_estimate(batch.plan, None, cursor, self.link_rate_bps)
        now = self.now
        for request in batch.reqs.values():
            self._check_hopeless(request, batch, now)
        self._check_hopeless(owner, batch, now)
        if batch.layer < len(batch.plan.layers):
            self._rank(batch)
        self._reask(batch.flows, now)

    def _rank(self, asking: _BatchRun | None) -> None:
        """Rank the batches in prefill by RED (a batch of one: its deadline). Every batch whose
        rank changed is asked again, except `asking`, whose caller asks it. Nothing to do when no
        batch started or ended since the last ranking (every rank is as it was)."""
        if self._ranked:
            return
        self._ranked = True
        reds = {bid: batch.red for bid, batch in self._prefilling.items()}
        now = self.now
        for bid, rank in red_ranks(reds).items():
            batch = self._prefilling[bid]
            if batch.owner.red_rank != rank:
                batch.owner.red_rank = rank
                if batch is not asking:
                    self._reask(batch.flows, now)

    def _reask(self, flows: Iterable[_SimFlow], now: int) -> None:
        """New estimates: each live flow gets the policy's entry for them (sent counters and
        the kernel's cur_level kept), then its level is re-evaluated."""
        net = self.net
        keyed = self._keyed
        policy = self.policy
        skip = self.skip_unchanged
        check = self.check_entry_keys
        # one key per (request, stage) where the policy says a key reads no more
        memo: dict[tuple[int, str], Hashable | None] | None = {} if self._key_per_request else None
        # such a key does not read the flow's bytes sent: a flow that keeps its entry and its
        # level needs no settling (unless the keys are being checked)
        key_first = memo is not None and skip and not check
        key: object  # an entry key, or `memo` itself (the sentinel: not asked yet)
        for f in flows:
            if f.rem <= 0:
                continue
            if key_first:
                assert memo is not None  # key_first: one key per (request, stage)
                mk = (f.request.request_id, f.stage)
                key = memo.get(mk, memo)
                if key is memo:
                    key = memo[mk] = policy.entry_key(f.request, f.policy_stage, f.policy_flow, now)
                if key is not None and key == f.key and (f.due > now if f.dynamic else f.lv_cursor == f.request.cursor):
                    continue  # the same entry, and a level that cannot have moved (below)
            net.settle(f, self.t)
            w = f.weight
            sent = int((f.size - f.rem) / w)
            entry: FlowEntry | None = None  # None: ask the policy (below)
            if keyed:
                fl = f.policy_flow
                fl.sent = sent
                if key_first:
                    pass  # asked above
                elif memo is None:
                    key = policy.entry_key(f.request, f.policy_stage, fl, now)
                else:
                    mk = (f.request.request_id, f.stage)
                    key = memo.get(mk, memo)
                    if key is memo:
                        key = memo[mk] = policy.entry_key(f.request, f.policy_stage, fl, now)
                    elif check:
                        own = policy.entry_key(f.request, f.policy_stage, fl, now)
                        if own != key:
                            raise AssertionError(
                                f"policy {policy.name}: entry_key_per_request, but flows of one "
                                f"stage got keys {key!r} and {own!r}"
                            )
                if key is not None and key == f.key:
                    # the policy's answer is the entry the flow has (Policy.entry_key)
                    if check:
                        self._check_key(f, now, sent)
                    # and its level cannot have moved since it was last evaluated: same cursor
                    # (static, rli) or before its next change point (sim.due)
                    if skip and (f.due > now if f.dynamic else f.lv_cursor == f.request.cursor):
                        continue
                    entry = f.entry
                else:
                    f.key = key
            if entry is None:
                entry = self._entry(
                    f.stage,
                    f.layer,
                    f.request,
                    f.size // w,
                    f.stage_bytes,
                    f.compute_after_ns,
                    now,
                    sent,
                    f.policy_stage,
                    f.policy_flow,
                )
            if entry is not f.entry:
                dyn = entry.mode not in (MODE_STATIC, MODE_RLI)
                if dyn != f.dynamic:
                    if dyn:
                        self._dyn[f.fid] = f
                    else:
                        self._dyn.pop(f.fid, None)
                        f.due_heap_t = NEVER  # its entries in the heap of dues are stale
                    f.dynamic = dyn
                f.entry = entry
            cur0 = f.cur_level
            lv = self._level(f, sent, now, f.rate / w)
            if lv != f.level:
                self._set_level(f, lv, cur0)

    def _check_key(self, f: _SimFlow, now: int, sent: int) -> None:
        """check_entry_keys: the entry the policy gives now must be the one the flow keeps."""
        w = f.weight
        fresh = self._entry(f.stage, f.layer, f.request, f.size // w, f.stage_bytes, f.compute_after_ns, now, sent)
        now_cmp, kept_cmp = (replace(e, created_ns=0, sent_bytes=0, cur_level=0) for e in (fresh, f.entry))
        if now_cmp != kept_cmp:
            raise AssertionError(
                f"policy {self.policy.name}: equal entry_key {f.key!r} but a " f"different entry ({now_cmp} vs {kept_cmp})"
            )

    def _check_hopeless(self, req: Request, batch: _BatchRun, now: int) -> None:
        if not self._hopeless_enabled or req.scavenged:
            return
        if req.request_id < 0:  # a batch (model.batch_hopeless)
            if batch_hopeless(batch.reqs.values(), lambda r: self.policy.is_hopeless(r, now)):
                self._scavenge(req)
        elif self.policy.is_hopeless(req, now):
            self._scavenge(req)

    def _admit_p2d(self) -> None:
        """p2d admission on every decode host with two or more live p2d stages: the stages
        Moore-Hodgson gives up (remaining bytes at the downlink's rate against the p2d deadline)
        are scavenged. A host is looked at again only once it may give something up: when its
        slack (policy.admission.admission_slack_ns) ran out or a stage joined it."""
        now = self.now
        if self._p2d_next_check > now:
            return
        t = self.t
        quiet = self._p2d_quiet_until
        next_check = NEVER
        for host, on in self._p2d_on.items():
            until = quiet.get(host, 0)
            if until > now:
                next_check = min(next_check, until)
                continue
            if len(on) < 2:  # (stages only leave until one joins, which resets `until`)
                quiet[host] = NEVER
                continue
            jobs = {}
            for rid, (req, flows, deadline) in on.items():
                if req.scavenged:
                    continue
                rem = 0.0
                for f in flows:
                    left = f.rem - f.rate * (t - f.t0)
                    if left > 0:
                        rem += left
                jobs[rid] = (int(rem / self.rate_Bps * NS), deadline)
            if len(jobs) < 2:  # (a scavenged stage stays scavenged)
                quiet[host] = NEVER
                continue
            slack = admission_slack_ns(jobs, now)
            if slack >= 0 and self.skip_unchanged:
                # nothing to give up, nor before the slack runs out (the needs are truncated to
                # whole ns: a margin for that)
                quiet[host] = until = now + slack - _QUIET_MARGIN_NS - len(jobs)
                next_check = min(next_check, until)
                continue
            next_check = now  # look again at the next tick
            for rid in moore_hodgson(jobs, now):
                self._scavenge(on[rid][0])
        self._p2d_next_check = next_check

    def _p2d_done(self, batch: _BatchRun, rid: int) -> None:
        host = self._p2d_host.pop(rid, None)
        if host is not None:
            del self._p2d_on[host][rid]
        row = self.out[rid]
        row.p2d_s = self.t - batch.p2d_t0[rid]
        spec_deadline = row.arrival_s + row.slo_s
        row.p2d_earliness_s = spec_deadline - self.t
        self._push(self.t + batch.plan.decode_step_s, _TOKEN, batch, rid)

    def _on_token(self, batch: _BatchRun, rid: int) -> None:
        row = self.out[rid]
        row.ttft_s = self.t - row.arrival_s
        row.met = row.ttft_s <= row.slo_s * (1 + 1e-12)
        row.scavenged = batch.reqs[rid].scavenged
        self._finished += 1

    # ---- flows ------------------------------------------------------------------------------
    def _entry(
        self,
        stage: str,
        layer: int,
        req: Request,
        nbytes: float,
        stage_bytes: int,
        compute_after_ns: int,
        now: int,
        sent: int = 0,
        st: Stage | None = None,
        fl: Flow | None = None,
    ) -> FlowEntry:
        """The policy's entry. A policy is a function of its inputs: flows that ask with the
        same inputs at the same instant (a batch's kv_fetch / collective fan-out) share one
        entry object (the simulator never mutates entries; the kernel's cur_level lives in
        the _SimFlow). `st`, `fl`: the flow's own Stage and Flow (the same fields), shown to the
        policy with `sent` and the true work filled in."""
        key = (
            stage,
            layer,
            req.request_id,
            req.cursor,
            req.red_rank,
            req.remaining_bytes,
            req.remaining_compute_ns,
            nbytes,
            sent,
            stage_bytes,
            compute_after_ns,
        )
        if self._entry_now != now:
            self._entry_now = now
            self._entry_cache.clear()
        entry = self._entry_cache.get(key)
        if entry is None:
            true_work = self._true_work_ns(stage, req, nbytes - sent, stage_bytes, nbytes, compute_after_ns)
            if st is None:
                st = Stage(stage, bytes=stage_bytes, compute_after_ns=compute_after_ns, layer=layer)
                fl = Flow(bytes=int(nbytes), target_layer=layer, sent=sent, true_remaining_work_ns=true_work)
            else:
                assert fl is not None  # the caller passes its Stage and Flow together
                fl.sent = sent
                fl.true_remaining_work_ns = true_work
            entry = self.policy.entry(req, st, fl, now)
            self._entry_cache[key] = entry
        return entry

    def _true_work_ns(
        self, stage: str, req: Request, flow_rem: float, stage_bytes: int, flow_bytes: float, compute_after_ns: int
    ) -> int:
        """What only the simulator knows (llf-oracle's input): the work still ahead of the flow's
        owner per bottleneck link. p2d: the stage's remaining bytes on the decode host's
        downlink (its flows progress together: flow remaining x stage / flow bytes) at link rate,
        then the decode step; kv_fetch and collective: the owner's critical path from its
        cursor (`workload.estimate`), with this layer's collective or kv_fetch in it."""
        if stage == "p2d":
            share = stage_bytes / flow_bytes if flow_bytes > 0 else 1.0
            return compute_after_ns + int(flow_rem * share / self.rate_Bps * NS)
        return req.remaining_compute_ns + int(req.remaining_bytes / self.rate_Bps * NS)

    def _start_flow(
        self,
        batch: _BatchRun,
        stage: str,
        layer: int,
        src: str,
        dst: str,
        nbytes: int,
        req: Request,
        stage_bytes: int,
        compute_after_ns: int,
        rid: int = 0,
        weight: int = 1,
        check: bool = True,
        keys: dict[str, Hashable] | None = None,
    ) -> None:
        """A flow of a fan-out starts. `keys`: the fan-out's entry keys so far, by stage (one
        fan-out is one request's stage at one instant: with Policy.entry_key_per_request its
        flows share one key)."""
        now = self.now
        if check:
            self._check_hopeless(req, batch, now)
        st = Stage(stage, bytes=stage_bytes, compute_after_ns=compute_after_ns, layer=layer)
        fl = Flow(
            bytes=int(nbytes),
            target_layer=layer,
            sent=0,
            true_remaining_work_ns=self._true_work_ns(stage, req, nbytes, stage_bytes, nbytes, compute_after_ns),
        )
        entry = self._entry(stage, layer, req, nbytes, stage_bytes, compute_after_ns, now, st=st, fl=fl)
        if not self._keyed:
            key = None
        elif keys is not None and self._key_per_request and stage in keys:
            key = keys[stage]
            if self.check_entry_keys:
                own = self.policy.entry_key(req, st, fl, now)
                if own != key:
                    raise AssertionError(
                        f"policy {self.policy.name}: entry_key_per_request, but flows of "
                        f"one fan-out got keys {key!r} and {own!r}"
                    )
        else:
            key = self.policy.entry_key(req, st, fl, now)
            if keys is not None:
                keys[stage] = key
        path = self.fabric.path(src, dst)
        if stage in self._isolated:
            path = self._isolated_path(path, (batch.bid, stage, layer, -1 if stage == "collective" else rid))
        f = _SimFlow(
            self.net.new_id(),
            path,
            nbytes * weight,
            self.t,
            stage,
            layer,
            batch,
            rid,
            entry,
            req,
            stage_bytes,
            compute_after_ns,
            st,
            fl,
        )
        f.weight = weight
        f.key = key
        batch.flows.add(f)
        live = self._req_flows.get(req.request_id)
        if live is None:
            self._req_flows[req.request_id] = live = set()
        live.add(f)
        if stage == "p2d" and self._admission:
            host = self._p2d_host[rid]
            self._p2d_on[host][rid][1].append(f)
            self._p2d_quiet_until[host] = self._p2d_next_check = 0
        self.flows_started += 1
        self.stage_bytes[stage] += nbytes * weight
        if self.flow_setup_s > 0:
            self._push(self.t + self.flow_setup_s, _FLOW, f)
        else:
            self._launch(f)

    def _isolated_path(self, path: tuple[Link, ...], instance: tuple[int, str, int, int]) -> tuple[Link, ...]:
        """Private copies of `path`'s links for one stage instance (isolate_stages): (batch,
        stage, layer, p2d request or -1). A fan-out starts all of an instance's flows at once,
        so only the current instance's copies are kept (the fluid network holds the rest)."""
        if instance != self._private_instance:
            self._private_instance, self._private_links = instance, {}
        own = self._private_links
        for ln in path:
            if ln.name not in own:
                own[ln.name] = Link(ln.name, ln.capacity)
        return tuple(own[ln.name] for ln in path)

    def _launch(self, f: _SimFlow) -> None:
        """The flow's first byte: its level now, onto the fabric."""
        f.level = self._level(f, 0.0, self.now, 0.0)
        f.t0 = f.start_t = self.t
        if self.promotion_rto_s > 0.0:
            f.starved_t = self.t  # until its first allocation gives it a rate
        self.net.add(f)
        if f.dynamic:
            self._dyn[f.fid] = f
            if self._tick_t is None:
                self._next_tick(self.t + self.tick_s)

    def _level(self, f: _SimFlow, sent: float, now_ns: int, rate: float) -> int:
        e = f.entry
        isent = int(sent)
        lv = e.level(
            now_ns,
            sent=isent,
            cursor=f.request.cursor,
            scavenged=f.request.scavenged,
            scavenger_level=self.scav_level,
            nlevels=self.nlevels,
            cur_level=f.cur_level,
        )
        # the kernel's cur_level (a scavenged packet leaves a MONOTONIC flow's: a p2d flow whose
        # MLU falls back to <= 1 resumes its table level)
        f.cur_level = e.next_cur_level(f.cur_level, lv, scavenged=lv == self.scav_level)
        f.lv_cursor = f.request.cursor
        if f.dynamic and self.skip_unchanged:
            self._set_due(f, next_change_ns(e, e.metric(now_ns, isent, f.request.cursor), isent, now_ns, rate))
        return lv

    def _relevel(self, flows: Iterable[_SimFlow]) -> None:
        now = self.now
        net = self.net
        for f in flows:
            if f.rem <= 0:
                continue
            net.settle(f, self.t)
            cur0 = f.cur_level
            lv = self._level(f, (f.size - f.rem) / f.weight, now, f.rate / f.weight)
            if lv != f.level:
                self._set_level(f, lv, cur0)

    def _set_level(self, f: _SimFlow, lv: int, cur0: int) -> None:
        """Move `f` to level `lv` (its level evaluated to it; `cur0`: its cur_level before that
        evaluation). With promotion_rto_s, a promotion of a starved flow waits for the packet
        that carries it (a _PROMOTE event): its level and the kernel's cur_level stay."""
        if lv < f.level and f.starved_t >= 0.0 and self.promotion_rto_s > 0.0:
            f.cur_level = cur0
            if not f.promo_pending:
                f.promo_pending = True
                f.promo_v += 1
                rto = self.promotion_rto_s
                due = f.starved_t + rto
                while due < self.t:
                    rto *= 2.0
                    due += rto
                self._push(due, _PROMOTE, f, f.promo_v)
            return
        self.net.set_level(f, lv, self.t)

    def _on_promote(self, f: _SimFlow, version: int) -> None:
        """A packet of `f` leaves (a retransmission, or its band moved): it carries the level
        the flow has now."""
        if version != f.promo_v or not f.promo_pending:
            return
        f.promo_pending = False
        if f.rem <= 0 or f not in self.net.flows:
            return
        self.net.settle(f, self.t)
        lv = self._level(f, (f.size - f.rem) / f.weight, self.now, f.rate / f.weight)
        if lv != f.level:
            self.net.set_level(f, lv, self.t)

    def _scavenge(self, req: Request) -> None:
        req.scavenged = True
        live = self._req_flows.get(req.request_id)
        if live:
            self._relevel(live)

    def _on_flow_event(self, f: _SimFlow, version: int) -> None:
        if version != f.version or f not in self.net.flows:
            return
        self.net.settle(f, self.t)
        if f.rem > max(1e-9 * f.size, 1e-6):
            # finish time moved by float rounding: rescheduled by the next recompute
            self.net._dirty.update(f.links)
            return
        f.rem = 0.0
        shared = self.net.bottleneck(f) if self.queue_bytes > 0 else None
        self.net.remove(f)
        if shared is not None:
            self._push(self.t + self.queue_bytes / self.rate_Bps, _LANDED, f)
            return
        self._flow_landed(f)

    def _flow_landed(self, f: _SimFlow) -> None:
        """The flow's last byte arrived: its stage's bookkeeping."""
        batch = f.batch
        batch.flows.discard(f)
        if f.dynamic:
            self._dyn.pop(f.fid, None)
        rf = self._req_flows[f.request.request_id]
        rf.discard(f)
        if not rf:
            del self._req_flows[f.request.request_id]
        if f.stage == "kv_fetch":
            batch.kv_left[f.layer] -= 1
            if self.t > batch.kv_end:
                batch.kv_end = self.t
            if batch.kv_left[f.layer] == 0 and batch.waiting_kv and batch.layer == f.layer:
                self._layer_ready(batch)
        elif f.stage == "collective":
            batch.coll_left -= 1
            if batch.coll_left == 0:
                cct = self.t - batch.coll_t0
                self.ccts.append(cct)
                batch.coll_total += cct
                self._layer_done(batch)
        else:
            batch.p2d_left[f.p2d_request_id] -= 1
            if batch.p2d_left[f.p2d_request_id] == 0:
                self._p2d_done(batch, f.p2d_request_id)

    def _set_due(self, f: _SimFlow, due: int) -> None:
        """A time-dependent flow's level cannot change before `due` (ns): a tick looks at it
        again then. A heap of dues holds one live entry per flow, at or before its due (a due
        that moved later is pushed again when its old entry comes up)."""
        f.due = due
        if due < f.due_heap_t:
            self._due_seq += 1
            f.due_entry = self._due_seq
            f.due_heap_t = due
            heapq.heappush(self._dues, (due, self._due_seq, f.fid))

    def _on_tick(self) -> None:
        if not self._dyn:
            self._tick_t = None
            return
        if self._admission:
            self._admit_p2d()
        now = self.now
        t = self.t
        if self.skip_unchanged:
            # the flows whose due came (each once: a due pushed while evaluating waits for
            # the next tick)
            dues = self._dues
            todo = []
            dyn = self._dyn
            while dues and dues[0][0] <= now:
                _, entry, fid = heapq.heappop(dues)
                f = dyn.get(fid)
                if f is None or entry != f.due_entry:
                    continue  # ended or no longer time-dependent, or replaced by an earlier one
                f.due_heap_t = NEVER
                if f.due > now:
                    self._set_due(f, f.due)  # moved later
                else:
                    todo.append(f)
        else:
            todo = list(self._dyn.values())
        for f in todo:
            if f.due > now or (f.request.scavenged and f.level == self.scav_level):
                continue
            rem = f.rem - f.rate * (t - f.t0)
            w = f.weight
            cur0 = f.cur_level
            lv = self._level(f, (f.size - (rem if rem > 0 else 0.0)) / w, now, f.rate / w)
            if lv != f.level:
                self._set_level(f, lv, cur0)
        self._next_tick(t + self.tick_s)

    def _next_tick(self, t: float) -> None:
        """The next re-level tick at `t` (with the sequence number its event would have)."""
        self._seq += 1
        self._tick_t = t
        self._tick_seq = self._seq


def simulate(workload: Workload, policy: Policy, *, engine: str = "auto", **kw: Any) -> SimResult:
    """Run `workload` under `policy`; see `Simulator` for the keyword options. `engine`:
    "compiled" (this module compiled by mypyc, `sim.accel`: the same code and results, faster),
    "python" (this module as written), "auto" (compiled where it is built from these sources);
    the result says which ran (`SimResult.engine`)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine != "python":
        fast = accel.compiled_engine(required=engine == "compiled")
        # the compiled engine asks the policies compiled with it (the same classes, configured
        # alike); a policy they do not have runs on the source
        twin = accel.compiled_policy(policy, required=engine == "compiled") if fast is not None else None
        if fast is not None and twin is not None:
            res: SimResult = fast.Simulator(workload, twin, **kw).run()
            res.engine = "compiled"
            return res
    return Simulator(workload, policy, **kw).run()
