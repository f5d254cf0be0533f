"""The testbed's side of the controller: one mfs_tc.controller.Controller per host egress.

A flow is registered in the controller of the host that sends it (its classifier sees it), with
its request's deadline, its stage and its target layer. A batch's kv_fetch and collective flows
serve every member: they are registered under the batch's lead request (earliest deadline) and
the members are tied into one batch (RED). When the prefill group's compute reaches layer g the
testbed moves the cursor of every member in every host's maps (the request metadata travels).
`NullScheduler` registers nothing (datapath "plain").
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from mfs_tc.errors import MfsError
from mfs_tc.layout import COUNTER_FMT, MAX_LEVELS, FlowKey, pin_dir

from .plan import RequestJob, Transfer
from .topology import Topology


class Scheduler:
    """No-op base: what the agents call. Subclasses register with real controllers."""

    policy: str = "none"

    def open_request(self, host: str, job: RequestJob, arrival_ns: int) -> None:
        pass

    def tie_batch(self, host: str, request_ids: list[int]) -> None:
        pass

    def add_flow(self, host: str, request_id: int, t: Transfer, key: FlowKey, *,
                 stage_bytes: int, compute_after_s: float, true_remaining_ns: int | None) -> None:
        pass

    def at_layer(self, request_id: int, layer: int) -> None:
        pass

    def done(self, request_id: int) -> None:
        pass

    def close(self) -> None:
        pass


class NullScheduler(Scheduler):
    policy = "plain"


@dataclass
class ControllerScheduler(Scheduler):
    topology: Topology
    policy: str
    config: dict = field(default_factory=dict)
    _ctls: dict[str, object] = field(default_factory=dict)
    _reqs: dict[tuple[str, int], object] = field(default_factory=dict)
    _stages: dict[tuple[str, int, str, int], object] = field(default_factory=dict)
    _jobs: dict[int, tuple[RequestJob, int]] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        try:
            from mfs_tc.controller import Controller
        except ImportError as exc:
            raise MfsError(f"mfs_tc.controller is not available ({exc}): use --datapath plain") from exc
        cfg = dict(self.config)
        cfg.setdefault("ref_rate_bps", self.topology.config.rate_bps)
        cfg.setdefault("nlevels", self.topology.config.levels)
        for h in self.topology.hosts:
            self._ctls[h.name] = Controller.open(h.ifname, netns=h.netns, policy=self.policy, **cfg)

    def _req(self, host: str, request_id: int) -> object:
        key = (host, request_id)
        r = self._reqs.get(key)
        if r is None:
            job, arrival_ns = self._jobs[request_id]
            ctl = self._ctls[host]
            r = ctl.request(request_id, job.slo_s, arrival=arrival_ns,  # type: ignore[attr-defined]
                            num_layers=job.num_layers, remaining_bytes=job.remaining_bytes,
                            remaining_compute_s=job.remaining_compute_s)
            self._reqs[key] = r
        return r

    def open_request(self, host: str, job: RequestJob, arrival_ns: int) -> None:
        with self._lock:
            self._jobs[job.request_id] = (job, arrival_ns)

    def tie_batch(self, host: str, request_ids: list[int]) -> None:
        with self._lock:
            reqs = [self._req(host, rid) for rid in request_ids]
            self._ctls[host].batch(reqs)  # type: ignore[attr-defined]

    def add_flow(self, host: str, request_id: int, t: Transfer, key: FlowKey, *,
                 stage_bytes: int, compute_after_s: float, true_remaining_ns: int | None) -> None:
        with self._lock:
            req = self._req(host, request_id)
            skey = (host, request_id, t.stage, t.target_layer)
            stage = self._stages.get(skey)
            if stage is None:
                stage = req.stage(t.stage, bytes=stage_bytes,  # type: ignore[attr-defined]
                                  compute_after_s=compute_after_s)
                self._stages[skey] = stage
            stage.add_flow(key, bytes=t.nbytes, target_layer=t.target_layer,  # type: ignore[attr-defined]
                           true_remaining_work_ns=true_remaining_ns)

    def at_layer(self, request_id: int, layer: int) -> None:
        with self._lock:
            for (host, rid), r in list(self._reqs.items()):
                if rid == request_id:
                    r.at_layer(layer)  # type: ignore[attr-defined]

    def done(self, request_id: int) -> None:
        with self._lock:
            for key in [k for k in self._reqs if k[1] == request_id]:
                try:
                    self._reqs.pop(key).done()  # type: ignore[attr-defined]
                except MfsError:
                    pass
            for skey in [k for k in self._stages if k[1] == request_id]:
                del self._stages[skey]
            self._jobs.pop(request_id, None)

    def close(self) -> None:
        with self._lock:
            for rid in {k[1] for k in self._reqs}:
                self.done(rid)
            for ctl in self._ctls.values():
                close = getattr(ctl, "close", None)
                if close:
                    close()
            self._ctls.clear()


def level_bytes(topology: Topology) -> list[int]:
    """Bytes sent per level, summed over every host egress (the classifier's stats slots 0..7).
    Zeros where no classifier is attached."""
    out = [0] * MAX_LEVELS
    try:
        from mfs_tc.bpfsys import BpfMap
    except ImportError:
        return out
    for h in topology.hosts:
        path = pin_dir(h.ifname, h.netns) / "stats"
        if not Path(path).exists():
            continue
        with BpfMap.open(path) as m:
            for lv in range(MAX_LEVELS):
                vals = m.lookup_percpu(struct.pack("<I", lv)) or []
                out[lv] += sum(struct.unpack_from(COUNTER_FMT, v)[1] for v in vals)
    return out
