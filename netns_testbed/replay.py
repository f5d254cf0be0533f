"""The agents: replay a ReplayScenario on a Topology as real TCP flows with emulated compute.

One dispatcher thread per prefill group takes batches from its queue (the workload's batching
rule) and runs them layer by layer (see netns_testbed.plan for the dependencies). Every flow is a
fresh TCP connection made from inside the sending host's namespace, registered with that host's
controller (through a Scheduler) before its first data byte, and counted delivered only when the
receiving host's sink acknowledges the byte count. Compute and the decode step are sleeps.
Times are CLOCK_MONOTONIC nanoseconds, the clock the classifier reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from mfs_tc.results import RequestRow
from mfs_tc.workload import BatchPlan, RequestSpec, Transfer, request_estimate, work_ahead

from .netns import enter_netns
from .plan import ReplayScenario, check_plan
from .sched import Scheduler, level_bytes
from .topology import Topology
from .transfer import Sink, open_flow_here

LEAD_NS = 300_000_000  # time between start() and the first arrival


@dataclass(slots=True)
class ReplayResult:
    policy: str
    requests: list[RequestRow]
    ccts_s: list[float]
    level_bytes: list[int]
    bytes_intended: int
    bytes_delivered: int
    flows: int
    duration_s: float
    errors: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return sum(1 for r in self.requests if r.ttft_s is not None)


ProgressFn = Callable[[int, int], None]


class Replay:
    def __init__(
        self,
        topology: Topology,
        scenario: ReplayScenario,
        scheduler: Scheduler,
        *,
        seed: int = 0,
        progress: ProgressFn | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.topo = topology
        self.sc = scenario
        self.sched = scheduler
        self.seed = seed
        self.progress = progress
        specs = scenario.requests
        last = max((r.arrival_s for r in specs), default=0.0)
        slack = max((r.slo_s for r in specs), default=1.0)
        self.timeout_s = timeout_s if timeout_s is not None else last + max(60.0, 10 * slack)
        self.specs = {r.request_id: r for r in specs}
        self.results = {
            r.request_id: RequestRow(
                r.request_id, r.arrival_s, r.slo_s, prefill_group=r.prefill_group, unloaded_ttft_s=r.unloaded_ttft_s
            )
            for r in specs
        }
        self.arrival_ns: dict[int, int] = {}
        self.ccts: list[float] = []
        self.errors: list[str] = []
        self.flows = 0
        self.intended = 0
        self.delivered = 0
        self._lock = threading.Lock()
        self._done = 0
        self._all_done = threading.Event()
        self._stop = threading.Event()
        ngroups = topology.config.prefill_groups
        self._queues: list[list[RequestSpec]] = [[] for _ in range(ngroups)]
        self._cv = threading.Condition()
        self._arrivals_over = False
        self._batch_seq = 0
        for r in specs:
            if not 0 <= r.prefill_group < ngroups:
                raise ValueError(f"request {r.request_id}: prefill group {r.prefill_group} not in " f"0..{ngroups - 1}")

    # ---- public -------------------------------------------------------------------------------
    def run(self) -> ReplayResult:
        before = level_bytes(self.topo)
        t_start = time.monotonic_ns()
        self.t0 = t_start + LEAD_NS
        groups = [
            threading.Thread(target=self._group_loop, args=(g,), daemon=True, name=f"group{g}") for g in range(len(self._queues))
        ]
        for t in groups:
            t.start()
        if not self.specs:
            self._all_done.set()
        self._arrivals()
        deadline = self.t0 + int(self.timeout_s * 1e9)
        while not self._all_done.is_set():
            left = (deadline - time.monotonic_ns()) / 1e9
            if left <= 0:
                self._note(f"timed out after {self.timeout_s:.0f}s with " f"{len(self.specs) - self._done} requests unfinished")
                break
            self._all_done.wait(min(left, 1.0))
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        for t in groups:
            t.join(5)
        after = level_bytes(self.topo)
        return ReplayResult(
            policy=self.sched.policy,
            requests=[self.results[r.request_id] for r in self.sc.requests],
            ccts_s=list(self.ccts),
            level_bytes=[a - b for a, b in zip(after, before, strict=False)],
            bytes_intended=self.intended,
            bytes_delivered=self.delivered,
            flows=self.flows,
            duration_s=(time.monotonic_ns() - t_start) / 1e9,
            errors=list(self.errors),
        )

    # ---- arrivals and dispatch ----------------------------------------------------------------
    def _arrivals(self) -> None:
        for spec in self.sc.requests:
            at = self.t0 + int(spec.arrival_s * 1e9)
            while (wait := at - time.monotonic_ns()) > 0 and not self._stop.is_set():
                time.sleep(min(wait / 1e9, 0.5))
            self.arrival_ns[spec.request_id] = at
            est = self.sc.arrival_estimates[spec.request_id]
            self._safe(partial(self.sched.open_request, spec, at, est))
            with self._cv:
                self._queues[spec.prefill_group].append(spec)
                self._cv.notify_all()
        with self._cv:
            self._arrivals_over = True
            self._cv.notify_all()

    def _group_loop(self, g: int) -> None:
        q = self._queues[g]
        while True:
            with self._cv:
                while not q and not self._stop.is_set():
                    if self._arrivals_over and not q:
                        return
                    self._cv.wait(0.5)
                if self._stop.is_set():
                    return
                members = self.sc.batcher(list(q)) or [q[0]]
                for m in members:
                    q.remove(m)
                self._batch_seq += 1
                bid = self._batch_seq
            try:
                plan = self.sc.planner(members)
                check_plan(plan)
                self._run_batch(bid, plan)
            except Exception as exc:  # keep the group going; the request is reported failed
                self._note(f"batch {bid} on group {g}: {type(exc).__name__}: {exc}")
                for m in members:
                    self._finish(m.request_id, None, f"{type(exc).__name__}: {exc}")

    # ---- one batch ----------------------------------------------------------------------------
    def _run_batch(self, bid: int, plan: BatchPlan) -> None:
        start = time.monotonic_ns()
        rids = list(plan.members)
        for rid in rids:
            res = self.results[rid]
            res.batch_id = bid
            res.queue_s = (start - self.arrival_ns[rid]) / 1e9
        nl = len(plan.layers)
        compute_after = [sum(lp.compute_s for lp in plan.layers[i:]) + plan.decode_step_s for i in range(nl + 1)]
        self._safe(lambda: self.sched.begin_batch(bid, rids))
        # all kv_fetch flows start now; layer g waits for its own
        kv_threads: list[list[threading.Thread]] = []
        kv_ends: list[int] = []
        rate = self.topo.config.rate_bps
        kv_work = work_ahead(plan, None, 0, rate).total_s  # the batch's critical path now
        for g, lp in enumerate(plan.layers):
            sb = sum(t.bytes for t in lp.kv_fetch)
            kv_threads.append(
                [self._spawn("kv_fetch", lp.layer, t, bid, None, sb, compute_after[g], kv_ends, kv_work) for t in lp.kv_fetch]
            )
        coll_s = 0.0
        compute_s = 0.0  # measured: what the layers' sleeps really took
        for g, lp in enumerate(plan.layers):
            for t in kv_threads[g]:
                t.join()
            est, whole = self._estimates(plan, g, rate)
            self._safe(lambda: self.sched.update_estimates(bid, est, whole))  # noqa: B023 (called at once)
            self._safe(lambda: self.sched.at_layer(bid, g))  # noqa: B023 (called at once)
            if lp.compute_s > 0:
                s0 = time.monotonic_ns()
                time.sleep(lp.compute_s)
                compute_s += (time.monotonic_ns() - s0) / 1e9
            if lp.collective:
                c0 = time.monotonic_ns()
                sb = sum(t.bytes for t in lp.collective)
                coll_work = work_ahead(plan, None, g, rate).total_s - lp.compute_s
                ths = [
                    self._spawn("collective", lp.layer, t, bid, None, sb, compute_after[g + 1], None, coll_work)
                    for t in lp.collective
                ]
                for t in ths:
                    t.join()
                cct = (time.monotonic_ns() - c0) / 1e9
                coll_s += cct
                with self._lock:
                    self.ccts.append(cct)
        kv_end = max(kv_ends, default=start)
        est, whole = self._estimates(plan, nl, rate)
        self._safe(lambda: self.sched.update_estimates(bid, est, whole))
        self._safe(lambda: self.sched.at_layer(bid, nl))
        self._safe(lambda: self.sched.end_batch(bid))
        for rid in rids:
            res = self.results[rid]
            res.kv_fetch_s = (kv_end - start) / 1e9
            res.collective_s = coll_s
            res.compute_s = compute_s
            flows = plan.p2d.get(rid, [])
            threading.Thread(target=self._p2d, args=(rid, flows, nl, plan.decode_step_s), daemon=True, name=f"p2d-{rid}").start()

    @staticmethod
    def _estimates(plan: BatchPlan, layer: int, rate_bps: float) -> tuple[dict[int, tuple[int, float]], tuple[int, float]]:
        """(per member, the batch as a whole): (remaining bytes, remaining compute s) from
        `layer` on, from the one work estimator (the critical path per bottleneck link)."""

        def est(rid: int | None) -> tuple[int, float]:
            nbytes, compute_ns = request_estimate(plan, rid, layer, rate_bps)
            return nbytes, compute_ns / 1e9

        return {rid: est(rid) for rid in plan.members}, est(None)

    def _p2d(self, rid: int, flows: Sequence[Transfer], nlayers: int, decode_step_s: float) -> None:
        p0 = time.monotonic_ns()
        sb = sum(t.bytes for t in flows)
        true_s = sb * 8 / self.topo.config.rate_bps + decode_step_s  # its decode downlink
        ths = [self._spawn("p2d", nlayers, t, None, rid, sb, decode_step_s, None, true_s) for t in flows]
        for t in ths:
            t.join()
        p1 = time.monotonic_ns()
        res = self.results[rid]
        res.p2d_s = (p1 - p0) / 1e9
        deadline = self.arrival_ns[rid] + int(self.specs[rid].slo_s * 1e9)
        res.p2d_earliness_s = (deadline - p1) / 1e9
        if decode_step_s > 0:
            time.sleep(decode_step_s)
        self._finish(rid, time.monotonic_ns())

    def _finish(self, rid: int, token_ns: int | None, error: str = "") -> None:
        res = self.results[rid]
        if token_ns is not None:
            res.ttft_s = (token_ns - self.arrival_ns[rid]) / 1e9
            res.met = res.ttft_s <= res.slo_s
        if error:
            res.error = error
        self._safe(lambda: setattr(res, "scavenged", self.sched.scavenged(rid)))
        self._safe(lambda: self.sched.done(rid))
        with self._lock:
            self._done += 1
            done = self._done
        if self.progress:
            self.progress(done, len(self.specs))
        if done >= len(self.specs):
            self._all_done.set()

    # ---- flows --------------------------------------------------------------------------------
    def _spawn(
        self,
        stage: str,
        layer: int,
        t: Transfer,
        bid: int | None,
        rid: int | None,
        stage_bytes: int,
        compute_after_s: float,
        ends: list[int] | None = None,
        true_work_s: float | None = None,
    ) -> threading.Thread:
        """A thread that sends `t`, a flow of `stage` with target layer `layer` (p2d: the layer
        count), owned by batch `bid` (kv_fetch, collective) or request `rid` (p2d)."""
        th = threading.Thread(
            target=self._transfer, args=(stage, layer, t, bid, rid, stage_bytes, compute_after_s, ends, true_work_s), daemon=True
        )
        th.start()
        return th

    def _transfer(
        self,
        stage: str,
        layer: int,
        t: Transfer,
        bid: int | None,
        rid: int | None,
        stage_bytes: int,
        compute_after_s: float,
        ends: list[int] | None = None,
        true_work_s: float | None = None,
    ) -> None:
        if t.bytes == 0:
            return
        src, dst = self.topo.host(t.src), self.topo.host(t.dst)
        delivered = 0
        try:
            enter_netns(src.netns)
            conn = open_flow_here(dst.addr, t.bytes)
            # the oracle's work ahead (the plan is known exactly here): the owner's critical
            # path per bottleneck link (workload.estimate), at least this flow at link rate
            own_s = t.bytes * 8 / self.topo.config.rate_bps + compute_after_s
            true_ns = int(max(true_work_s or 0.0, own_s) * 1e9)
            try:
                self.sched.add_flow(
                    t.src,
                    stage,
                    layer,
                    t,
                    conn.key,
                    batch_id=bid,
                    request_id=rid,
                    stage_bytes=stage_bytes,
                    compute_after_s=compute_after_s,
                    true_remaining_ns=true_ns,
                )
            except Exception as exc:
                self._note(f"register {conn.key} ({stage}, batch {bid}, request {rid}): " f"{type(exc).__name__}: {exc}")
            delivered = conn.send_all()
            if delivered != t.bytes:
                self._note(f"{stage} {t.src}->{t.dst}: delivered {delivered} of {t.bytes} bytes")
        except Exception as exc:
            self._note(f"{stage} {t.src}->{t.dst} ({t.bytes} B): {type(exc).__name__}: {exc}")
        with self._lock:
            self.flows += 1
            self.intended += t.bytes
            self.delivered += delivered
            if ends is not None:
                ends.append(time.monotonic_ns())

    def _safe(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:
            self._note(f"scheduler: {type(exc).__name__}: {exc}")

    def _note(self, msg: str) -> None:
        with self._lock:
            if len(self.errors) < 200:
                self.errors.append(msg)


def start_sinks(topology: Topology) -> list[Sink]:
    return [Sink(h.netns, h.addr).start() for h in topology.hosts]
