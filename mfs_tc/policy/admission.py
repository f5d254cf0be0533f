"""p2d admission on a decode host's downlink: which p2d stages to give up so that the most of
the others make their deadlines.

Every p2d stage sent to a decode host crosses its downlink, one link they all share. On one link
the problem "send these transfers so that as many as possible finish by their deadlines" is
1||sum U_j, and Moore-Hodgson's rule solves it exactly: go through the stages in deadline order,
accumulating the time each needs at the link's rate; whenever the running total passes the
current stage's deadline, drop the largest stage taken so far. The stages kept all finish in
time in deadline order, and no other choice keeps more.

Why MFS needs it: MFS defers p2d until its MLU rises, so p2d stages finish close to their
deadlines; when two of them become urgent on one decode link together they share it, and both
can miss (and then both are scavenged as their MLU passes 1), where giving one up early would
have saved the other. The per-stage rule (a stage whose own MLU exceeds 1) sees each stage
alone; this one sees the link. It is a scavenger rule: a stage it drops goes to the scavenger
level (`Request.scavenged`) and still takes whatever bandwidth is left.

Who calls it: whoever sees every p2d stage to a decode host (the simulator on its re-level
ticks, the testbed's replay, a decode-side scheduler), with each stage's remaining bytes on the
downlink; a policy says whether it wants it (`Policy.p2d_admission`).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)  # the caller's job key (request id, stage, ...)


def moore_hodgson(jobs: Mapping[K, tuple[int, int]], now_ns: int) -> list[K]:
    """The keys to give up, fewest possible: `jobs` maps key -> (time it still needs on the link
    in ns, deadline ns). Ties in deadline keep the mapping's order; of equal sizes the one met
    last is dropped."""
    keys = list(jobs)
    vals = list(jobs.values())
    order = sorted(range(len(vals)), key=lambda i: vals[i][1])
    taken: list[tuple[int, int, int]] = []  # (-need, -position, index): a max-heap on need
    t = now_ns
    dropped: list[K] = []
    for pos, i in enumerate(order):
        need, deadline = vals[i]
        need = max(int(need), 0)
        heapq.heappush(taken, (-need, -pos, i))
        t += need
        if t > deadline:
            neg, _, j = heapq.heappop(taken)
            t += neg
            dropped.append(keys[j])
    return dropped


def admission_slack_ns(jobs: Mapping[K, tuple[int, int]], now_ns: int) -> int:
    """How long `moore_hodgson(jobs, now_ns)` is sure to give up nothing: the least, over the
    deadline order, of deadline - (now + the time the stages up to it still need). It gives up
    nothing exactly when this is >= 0 (no prefix of the deadline order overruns, so no stage is
    ever dropped; ties in deadline do not matter: the whole tie group's prefix is the tightest).

    A caller may skip the check for this long: as time passes each stage's need only falls
    (bytes are sent, never added) while now grows by the elapsed time, so the slack falls no
    faster than the clock, until a stage is added."""
    t = now_ns
    least = None
    for need, deadline in sorted(jobs.values(), key=lambda v: v[1]):
        t += max(int(need), 0)
        s = deadline - t
        if least is None or s < least:
            least = s
    return least if least is not None else 1 << 62
