"""p2d admission on a decode link (policy.admission): Moore-Hodgson by hand, against brute force,
and in the simulator where two p2d stages cannot both make it."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from sim_workloads import at_once

from mfs_tc.policy import make_policy
from mfs_tc.policy.admission import admission_slack_ns, moore_hodgson
from mfs_tc.sim.engine import simulate


def test_moore_hodgson_by_hand() -> None:
    assert moore_hodgson({}, 0) == []
    assert moore_hodgson({"a": (5, 10), "b": (6, 11)}, 0) == []  # 5 by 10, 11 by 11: both
    assert moore_hodgson({"a": (5, 10), "b": (7, 11)}, 0) == ["b"]  # 12 > 11: the larger goes
    # c (4 by 9), a (8 by 10)? 12 > 10: a, the larger, goes; then b (2 by 11): 6 <= 11
    assert moore_hodgson({"a": (8, 10), "b": (2, 11), "c": (4, 9)}, 0) == ["a"]
    # equal sizes, all due together: the one met last goes
    assert moore_hodgson({"x": (4, 10), "y": (4, 10), "z": (4, 10)}, 0) == ["z"]
    assert moore_hodgson({"late": (1, 5)}, 6) == ["late"]  # already past its deadline


def _feasible(jobs: list[tuple[int, int]], now: int) -> bool:
    t = now
    for need, deadline in sorted(jobs, key=lambda j: j[1]):
        t += need
        if t > deadline:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 120)), min_size=0, max_size=7))
def test_moore_hodgson_keeps_the_most(jobs: list[tuple[int, int]]) -> None:
    """What it keeps is EDF-feasible, and no larger set is (brute force over every subset)."""
    d = dict(enumerate(jobs))
    dropped = set(moore_hodgson(d, 0))
    kept = [j for k, j in d.items() if k not in dropped]
    assert _feasible(kept, 0)
    best = max(n for n in range(len(jobs) + 1) if any(_feasible(list(c), 0) for c in itertools.combinations(jobs, n)))
    assert len(kept) == best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 120)), min_size=1, max_size=7),
    st.lists(st.integers(0, 50), min_size=7, max_size=7),
    st.integers(0, 60),
)
def test_admission_slack_is_how_long_nothing_is_given_up(jobs: list[tuple[int, int]], sent: list[int], later: int) -> None:
    """Slack >= 0 exactly when Moore-Hodgson gives up nothing; and while it lasts, with the
    stages' needs only falling (any amounts sent), it still gives up nothing."""
    d = dict(enumerate(jobs))
    slack = admission_slack_ns(d, 0)
    assert (slack >= 0) == (moore_hodgson(d, 0) == [])
    if slack >= 0 and later <= slack:
        after = {k: (max(need - sent[k], 0), deadline) for k, (need, deadline) in d.items()}
        assert moore_hodgson(after, later) == []
    assert admission_slack_ns({}, 0) > 1 << 60  # nothing to give up, ever


def test_two_p2d_stages_that_cannot_both_make_it() -> None:
    """1000 B/s decode link, two 1000 B p2d stages due at 1.5 s: sharing it they both end at
    2 s and both miss (each is scavenged only when its own MLU passes 1, together); with the
    admission one is given up at the first tick and the other ends at 1 s."""
    w = at_once([1000] * 2, 8000.0, slo_s=1.5, unloaded_s=1.0)
    out = {}
    for admission in (False, True):
        pol = make_policy("mfs", ref_rate_bps=8000.0, p2d_admission=admission)
        assert pol.p2d_admission() is admission
        res = simulate(w, pol, tick_s=0.001)
        out[admission] = {r.request_id: (r.met, r.scavenged, r.ttft_s) for r in res.requests}
    assert [m for m, _, _ in out[False].values()] == [False, False]
    (met1, scav1, t1), (met2, scav2, _t2) = out[True][1], out[True][2]
    assert met1 and not scav1 and abs(t1 - 1.01) < 0.01
    assert not met2 and scav2  # the one given up (equal sizes and deadlines: the later in order)
