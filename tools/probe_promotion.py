#!/usr/bin/env python3
"""How long a promotion waits for a packet on the testbed: the promotion lag, measured.

The classifier sets a packet's level as the packet leaves its sender, and a queued packet keeps
its band. A flow whose band is starved sends no packet, so when its level comes due for a
promotion (its MLU crossed a threshold, its layer came near) nothing carries the new level until
one of its queued packets leaves or TCP retransmits. The simulator's `promotion_rto_s` models
this (docs/simulator.md); this probe measures it on the netns testbed.

It runs `mfs-tc testbed run`'s replay with the controllers' scheduler wrapped: a thread reads
every registered flow's kernel state (`FlowHandle.state()`: bytes counted, cur_level) each
--interval-ms and evaluates its entry there with the Python mirror of the level function
(`FlowEntry.level`, at the request's cursor). A promotion is pending from the first sample where
the level due is more urgent than the kernel's cur_level until the sample where cur_level reached
it; the lag is that time (to the sampling interval). Promotions still pending when their request
was given up (the scavenger) or their flow ended are counted apart ("censored"), with how long
they had waited. Only MONOTONIC entries are followed (mfs: every flow; their cur_level only ever
falls).

    sudo .venv/bin/python tools/probe_promotion.py [--policy mfs] [--load 2.5] [--seed 1,2] [--requests 40]
                                                   [--rto-min-ms 0]

Prints JSON: per run the attainment, and over all runs the lag's quantiles in ms, per stage too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mfs_tc.layout import F_MONOTONIC  # noqa: E402
from mfs_tc.results import percentile  # noqa: E402
from mfs_tc.workload import Transfer  # noqa: E402
from netns_testbed.runner import RunConfig, run_testbed  # noqa: E402
from netns_testbed.sched import ControllerScheduler  # noqa: E402
from netns_testbed.topology import Topology  # noqa: E402

if TYPE_CHECKING:
    from mfs_tc.controller import FlowHandle
    from mfs_tc.layout import FlowKey


@dataclass
class Followed:
    """One flow under watch, and its pending promotion."""

    stage: str
    host: str
    fh: FlowHandle
    pending_since: float | None = None
    pending_to: int = 0
    done: bool = False


@dataclass
class Lags:
    lags_s: dict[str, list[float]] = field(default_factory=dict)  # stage -> lags
    censored_s: dict[str, list[float]] = field(default_factory=dict)
    # pending when the flow's last byte was counted: it finished at its old level
    finished_s: dict[str, list[float]] = field(default_factory=dict)
    followed: dict[str, int] = field(default_factory=dict)

    def add(self, into: dict[str, list[float]], stage: str, v: float) -> None:
        into.setdefault(stage, []).append(v)


class SamplingScheduler(ControllerScheduler):
    """The testbed's controllers, with every MONOTONIC flow's kernel state read each interval."""

    def __init__(self, topology: Topology, policy: str, config: dict[str, Any], *, interval_s: float, out: Lags) -> None:
        super().__init__(topology, policy, config)
        self.interval_s = interval_s
        self.out = out
        self._followed: list[Followed] = []
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True, name="promotion-probe")
        self._sampler.start()

    def add_flow(self, host: str, stage: str, layer: int, t: Transfer, key: FlowKey, **kw: Any) -> None:
        super().add_flow(host, stage, layer, t, key, **kw)
        bid, rid = kw.get("batch_id"), kw.get("request_id")
        skey = (host, "b", bid, stage, layer) if bid is not None else (host, "r", rid, stage, layer)
        with self._lock:
            handle = self._stages.get(skey)  # type: ignore[arg-type]
            if handle is not None and handle.flows:
                fh = handle.flows[-1]
                if fh.entry is not None and fh.entry.flags & F_MONOTONIC:
                    self._followed.append(Followed(stage, host, fh))
                    self.out.followed[stage] = self.out.followed.get(stage, 0) + 1

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                now_s = time.monotonic()
                for f in self._followed:
                    if not f.done:
                        self._sample(f, now_s)
                self._followed = [f for f in self._followed if not f.done]

    def _sample(self, f: Followed, now_s: float) -> None:
        fh = f.fh
        owner = fh.owner
        if fh.removed or owner.closed or owner.scavenged:
            if f.pending_since is not None:
                self.out.add(self.out.censored_s, f.stage, now_s - f.pending_since)
            f.done = True
            return
        try:
            st = fh.state()
        except Exception:  # the map went away with the run
            f.done = True
            return
        if st is None or fh.entry is None:
            return
        if fh.entry.total_bytes and st.sent_bytes >= fh.entry.total_bytes:
            if f.pending_since is not None:
                self.out.add(self.out.finished_s, f.stage, now_s - f.pending_since)
            f.done = True  # nothing left to carry a level
            return
        cfg = owner.ctl.policy.config
        due = fh.entry.level(
            time.monotonic_ns(),
            sent=st.sent_bytes,
            cursor=owner.model.cursor,
            cur_level=st.cur_level,
            nlevels=cfg.nlevels,
            scavenger_level=cfg.scavenger_level,
        )
        if f.pending_since is None:
            if due < st.cur_level and due != cfg.scavenger_level:
                f.pending_since, f.pending_to = now_s, due
        elif st.cur_level <= f.pending_to:
            self.out.add(self.out.lags_s, f.stage, now_s - f.pending_since)
            f.pending_since = None

    def close(self) -> None:
        super().close()
        self._sampler.join(timeout=2)


def quantiles_ms(xs: list[float]) -> dict[str, float | int]:
    if not xs:
        return {"n": 0}

    def q(p: float) -> float:
        v = percentile(xs, p)
        assert v is not None  # (xs is not empty)
        return round(v * 1e3, 1)

    return {
        "n": len(xs),
        "mean": round(statistics.fmean(xs) * 1e3, 1),
        **{f"p{p}": q(p) for p in (50, 75, 90, 99)},
        "max": q(100),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="mfs")
    ap.add_argument("--load", type=float, default=2.5)
    ap.add_argument("--seed", default="1,2")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--interval-ms", type=float, default=10.0)
    ap.add_argument("--rto-min-ms", type=float, default=0.0, help="the hosts' routes' rto_min (0: the kernel's 200 ms)")
    a = ap.parse_args(argv)
    out = Lags()
    interval = a.interval_ms / 1e3

    def factory(topo: Topology, policy: str, datapath: str, config: dict[str, Any]) -> SamplingScheduler:
        return SamplingScheduler(topo, policy, dict(config), interval_s=interval, out=out)

    cfg = RunConfig(
        policies=[a.policy],
        num_requests=a.requests,
        loads=[a.load],
        seeds=[int(x) for x in a.seed.split(",")],
        pause_s=0.5,
        rto_min_ms=a.rto_min_ms,
    )
    summary = run_testbed(cfg, None, progress_out=sys.stderr, scheduler=factory)
    every = [x for v in out.lags_s.values() for x in v]
    cens = [x for v in out.censored_s.values() for x in v]
    print(
        json.dumps(
            {
                "policy": a.policy,
                "load": a.load,
                "interval_ms": a.interval_ms,
                "rto_min_ms": a.rto_min_ms,
                "attainment": {str(r["seed"]): r["attainment"] for r in summary["runs"]},
                "lag_ms": quantiles_ms(every),
                "lag_ms_by_stage": {k: quantiles_ms(v) for k, v in sorted(out.lags_s.items())},
                "followed": out.followed,
                "censored_ms": quantiles_ms(cens),
                "censored_ms_by_stage": {k: quantiles_ms(v) for k, v in sorted(out.censored_s.items())},
                "finished_pending_ms_by_stage": {k: quantiles_ms(v) for k, v in sorted(out.finished_s.items())},
                "over_50ms": sum(1 for x in every if x > 0.05),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
