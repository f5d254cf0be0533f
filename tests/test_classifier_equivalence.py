"""The kernel's level function equals FlowEntry.level() (its Python mirror) on many random entries.

The classifier runs through BPF_PROG_TEST_RUN on a crafted packet of the entry's flow; the level
comes back as skb->priority (the test's levels map writes PRIO_BASE + level). The kernel reads
bpf_ktime_get_ns() during the run: the oracle is evaluated at CLOCK_MONOTONIC just before and just
after, and the kernel's level must be one of the two (they differ only when a threshold is crossed
inside those few microseconds, which the test counts and bounds).
"""

from __future__ import annotations

import random
import time

import pytest
from datapath_support import LoadedClassifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from mfs_tc import layout
from mfs_tc.cursors import CursorSlots
from mfs_tc.entry import FlowEntry, mlu_fixed, ps_per_byte
from mfs_tc.layout import MLU_CAP, FlowKey, FlowState, RequestRecord

pytestmark = pytest.mark.privileged

KEY = FlowKey("10.9.0.1", "10.9.0.2", 41000, 5201)
PAYLOAD = 1000
PACKET = bytes(
    Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    / IP(src=KEY.saddr, dst=KEY.daddr)
    / TCP(sport=KEY.sport, dport=KEY.dport, flags="A")
    / Raw(b"\x55" * PAYLOAD)
)
RID = 77
RATES = [ps_per_byte(r) for r in (100e9, 10e9, 1e9, 100e6)]


@pytest.fixture(scope="module")
def clf():
    with LoadedClassifier() as c:
        yield c


@pytest.fixture(scope="module")
def slots(clf: LoadedClassifier):
    """The classifier's cursor array, mapped into this process as a controller maps it."""
    with clf.map("cursors") as cursors, clf.map("cursor_owners") as owners:
        cs = CursorSlots.open(cursors, owners)
        assert cs is not None, "this kernel maps BPF arrays (BPF_F_MMAPABLE, 5.5+)"
        yield cs
        cs.close()


def _thresholds(rng: random.Random, lo: int, hi: int) -> list[int]:
    n = rng.randint(0, layout.MAX_THRESH)
    return sorted(rng.randint(lo, hi) for _ in range(n))


def random_entry(rng: random.Random, mode: int, now: int) -> tuple[FlowEntry, RequestRecord | None, int]:
    """A random entry; its sent_bytes and cur_level are the kernel state the test plants. With
    its request record (which names a cursor slot, none, or one past the array) and the cursor
    planted in that slot."""
    sec = 1_000_000_000
    th: list[int] = []
    kw: dict = {}
    if mode == layout.MODE_MLU:
        total = rng.choice([rng.randint(1, 10_000), rng.randint(10_000, 1 << 30)])
        kw = dict(
            total_bytes=total,
            ps_per_byte=rng.choice(RATES),
            deadline_ns=now + rng.randint(-sec, 5 * sec),
            sent_bytes=rng.randint(0, total + total // 4),
        )
        th = sorted(mlu_fixed(rng.uniform(0.001, 3.0)) for _ in range(rng.randint(0, 7)))
    elif mode == layout.MODE_RLI:
        kw = dict(target_layer=rng.randint(0, 80))
        th = _thresholds(rng, -4, 60)
    elif mode == layout.MODE_LAXITY:
        kw = dict(
            deadline_ns=now + rng.randint(-2 * sec, 4 * sec), ps_per_byte=rng.choice(RATES), sent_bytes=rng.randint(0, 1 << 26)
        )
        th = _thresholds(rng, -sec, 6 * sec)
    elif mode == layout.MODE_SENT:
        kw = dict(sent_bytes=rng.randint(0, 1 << 24))
        th = _thresholds(rng, 0, 1 << 24)
    elif mode == layout.MODE_REMAINING:
        total = rng.randint(0, 1 << 24)
        kw = dict(total_bytes=total, sent_bytes=rng.randint(0, total + 5000))
        th = _thresholds(rng, 0, 1 << 24)
    levels = [rng.randint(0, 7) for _ in range(len(th) + 1)]
    flags = rng.choice([0, layout.F_MONOTONIC, layout.F_AUTO_SCAVENGE, layout.F_MONOTONIC | layout.F_AUTO_SCAVENGE])
    cur = rng.choice([0xFF, rng.randint(0, 7)])
    req = None
    rid = 0
    eslot = layout.SLOT16_NONE
    if rng.random() < 0.6:
        rid = RID
        if rng.random() < 0.9:  # else: the entry names a request that is not in the map
            slot = rng.choice([layout.SLOT_NONE, layout.CURSORS_MAX, rng.randrange(layout.CURSORS_MAX)])
            rflags = layout.R_SCAVENGER if rng.random() < 0.1 else 0
            req = RequestRecord(cursor=rng.randint(-5, 70), flags=rflags, slot=slot)
        # the entry names the record's slot (as the controller writes it), none, or another one
        choices = [layout.SLOT16_NONE, rng.randrange(layout.CURSORS_MAX)]
        if req is not None and req.slot < layout.CURSORS_MAX:
            choices += [req.slot] * 2
        eslot = rng.choice(choices)
    e = FlowEntry(
        mode=mode,
        levels=levels,
        thresholds=th,
        flags=flags,
        cur_level=cur,
        request_id=rid,
        slot=eslot,
        gen=rng.getrandbits(32),
        **kw,
    )
    return e, req, rng.randint(-5, 70)


def _check(
    clf: LoadedClassifier,
    e: FlowEntry,
    req: RequestRecord | None,
    nlevels: int,
    pkts: int = 0,
    slots: CursorSlots | None = None,
    slot_cursor: int = 0,
    slot_key: int = 0,
    slot_flags: int = 0,
    state_at: str = "lookup",
    state_slot: int = layout.STATES_MAX - 1,
) -> bool:
    """Plant the entry, a kernel state of the same registration (sent e.sent_bytes, level
    e.cur_level), the request record and (through the mapping `slots`) `slot_cursor` at the
    record's cursor slot; at the slot the entry names, `slot_cursor` too, with `slot_flags` and
    the request key `slot_key` (the kernel reads the request there when that key is the
    entry's request id, else from the record); run one packet; assert the kernel agrees with the
    oracle, in its level and in the state it leaves. True when the oracle was ambiguous (a
    threshold crossed mid-run).

    `state_at` is where the registration's state is (layout v6): "lookup" (flow_state; the entry
    names no state slot), "slot" (the entry names `state_slot`, which its gen owns: the kernel
    counts there and leaves flow_state alone) or "stale" (the entry names `state_slot`, which
    another registration owns: the kernel counts in flow_state and leaves the slot alone)."""
    flows, states, requests = clf.map("flows"), clf.map("flow_state"), clf.map("requests")
    slot_states = clf.map("states")
    if state_at == "slot" and not e.gen:
        state_at = "lookup"  # gen 0 is no registration: no slot is ever its own
    e.state_slot = layout.STATE_NONE if state_at == "lookup" else state_slot
    st0 = FlowState(e.gen, e.cur_level, e.sent_bytes, pkts)
    decoy = FlowState((e.gen ^ 0x5A5A) or 1, 3, 12345, 6, 0, owner=(e.gen ^ 0x5A5A) or 1)
    skey = state_slot.to_bytes(4, "little")
    in_array = req is not None and req.slot < layout.CURSORS_MAX
    if in_array:
        assert slots is not None and req is not None
        slots.write(req.slot, slot_cursor)
    named = e.request_id and e.slot < layout.CURSORS_MAX
    if named:
        assert slots is not None
        slots.write(e.slot, slot_cursor)
        slots.set_flags(e.slot, slot_flags)
        slots.publish(e.slot, slot_key)
    try:
        rkey = RID.to_bytes(8, "little")
        if req is not None:
            requests.update(rkey, req.pack())
        else:
            requests.delete(rkey)
        flows.update(KEY.pack(), e.pack())
        if state_at == "slot":
            st0.owner = e.gen
            slot_states.update(skey, st0.pack())
            states.update(KEY.pack(), decoy.pack())
        else:
            states.update(KEY.pack(), st0.pack())
            slot_states.update(skey, decoy.pack())
        lookups0 = clf.stats()[layout.STAT_STATE_LOOKUP][0]
        t0 = time.monotonic_ns()
        r = clf.run(PACKET)
        t1 = time.monotonic_ns()
        lookups = clf.stats()[layout.STAT_STATE_LOOKUP][0] - lookups0
        if state_at == "slot":
            after = FlowState.unpack(slot_states.lookup(skey))
            assert after.owner == e.gen  # the kernel never writes the owner
            assert FlowState.unpack(states.lookup(KEY.pack())) == decoy  # nor the lookup map
        else:
            after = FlowState.unpack(states.lookup(KEY.pack()))
            assert FlowState.unpack(slot_states.lookup(skey)) == decoy  # a slot not its own: untouched
        assert lookups == (0 if state_at == "slot" else 1)
    finally:
        flows.close()
        states.close()
        requests.close()
        slot_states.close()
    if named and slot_key == e.request_id:  # read at the entry's slot
        cursor, scav = slot_cursor, bool(slot_flags & layout.R_SCAVENGER)
    else:
        cursor = req.kernel_cursor(slot_cursor if in_array else None) if req else 0
        scav = bool(req and req.scavenged)
    kw = dict(
        cursor=cursor,
        scavenged=scav,
        scavenger_level=nlevels - 1,
        nlevels=nlevels,
        default_level=clf.default_level,
    )
    expect = {e.level(t0, **kw), e.level(t1, **kw)}
    got = r.priority - 0x100
    assert r.retval == 0  # TC_ACT_OK: never drops
    assert got in expect, f"kernel level {got}, oracle {expect} for {e} request {req}"
    # the kernel records what it chose and counts the packet's L4 payload (saturating nowhere:
    # the count wraps only past 2^64 bytes, which the planted states stay below)
    auto = bool(e.flags & layout.F_AUTO_SCAVENGE and e.mode == layout.MODE_MLU)
    assert after.cur_level in {e.next_cur_level(e.cur_level, got, scav or auto), e.next_cur_level(e.cur_level, got, scav)}
    assert after.gen == e.gen
    assert after.sent_bytes == (e.sent_bytes + PAYLOAD) % (1 << 64)
    assert after.sent_pkts == pkts + 1
    assert r.data == PACKET  # levels keep DSCP here: the packet is untouched
    return len(expect) > 1


@pytest.mark.parametrize("nlevels", [8, 4])
@pytest.mark.parametrize(
    "mode",
    [layout.MODE_STATIC, layout.MODE_MLU, layout.MODE_RLI, layout.MODE_LAXITY, layout.MODE_SENT, layout.MODE_REMAINING],
    ids=lambda m: layout.MODE_NAMES[m],
)
def test_kernel_level_equals_python_mirror(clf: LoadedClassifier, slots: CursorSlots, mode: int, nlevels: int) -> None:
    clf.nlevels = nlevels
    clf.configure()
    rng = random.Random(1000 * mode + nlevels)
    n, ambiguous = 1000, 0
    levels_seen: set[int] = set()
    for _ in range(n):
        e, req, slot_cursor = random_entry(rng, mode, time.monotonic_ns())
        # the slot's key: this request (the fast path), another one (a slot taken since), none;
        # its flags drawn apart from the record's, so the level shows which one the kernel read
        key = rng.choice([RID, RID, RID ^ 1, 0])
        sflags = layout.R_SCAVENGER if rng.random() < 0.15 else 0
        # the state at its slot (as the controller registers flows), looked up, or behind a slot
        # another registration owns
        at = rng.choice(["slot", "slot", "lookup", "stale"])
        ss = rng.randrange(layout.STATES_MAX)
        ambiguous += _check(
            clf,
            e,
            req,
            nlevels,
            slots=slots,
            slot_cursor=slot_cursor,
            slot_key=key,
            slot_flags=sflags,
            state_at=at,
            state_slot=ss,
        )
        with clf.map("flow_state") as m, clf.map("states") as sm:
            raw = sm.lookup(ss.to_bytes(4, "little")) if e.state_slot != layout.STATE_NONE and at == "slot" else None
            levels_seen.add(FlowState.unpack(raw or m.lookup(KEY.pack())).cur_level)
    assert ambiguous <= n // 100, f"{ambiguous} of {n} runs crossed a threshold mid-run"
    assert len(levels_seen) >= min(nlevels, 4)  # the random entries exercise many levels


def test_mlu_large_values_and_cap(clf: LoadedClassifier) -> None:
    """Extremes of the fixed point: far deadlines (the >= 2^40 ns rescale), huge flows (cap 64)."""
    clf.nlevels = 8
    clf.configure()
    rng = random.Random(7)
    now = time.monotonic_ns()
    cases = []
    for _ in range(100):
        far = now + rng.randint(1 << 40, 1 << 50)
        total = rng.randint(1 << 30, 1 << 44)
        th = sorted(mlu_fixed(x) for x in rng.sample([0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 63.9], 5))
        cases.append(
            FlowEntry(
                mode=layout.MODE_MLU,
                levels=[6, 5, 4, 3, 2, 1],
                thresholds=th,
                total_bytes=total,
                ps_per_byte=rng.choice(RATES),
                deadline_ns=far,
            )
        )
    cases.append(
        FlowEntry(
            mode=layout.MODE_MLU,
            levels=[5, 0],
            thresholds=[layout.MLU_CAP],
            total_bytes=1 << 40,
            ps_per_byte=80000,
            deadline_ns=now + 10**9,
        )
    )
    for e in cases:
        _check(clf, e, None, 8)


RLI_STEPS = [(10, 0), (9, 2), (8, 2), (7, 4), (5, 4), (4, 6), (0, 6), (12, 0)]


def test_request_cursor_drives_rli_level(clf: LoadedClassifier) -> None:
    """An rli entry's level follows its request's cursor, read at each packet (a record
    without a cursor slot: the cursor is the record's)."""
    clf.nlevels = 8
    clf.configure()
    e = FlowEntry(mode=layout.MODE_RLI, levels=[0, 2, 4, 6], thresholds=[1, 3, 6], target_layer=10, request_id=RID)
    for cursor, want in RLI_STEPS:
        _check(clf, e, RequestRecord(cursor=cursor), 8)
        assert clf.level_of(PACKET) == want, cursor


def test_cursor_written_through_the_mapping_drives_rli_level(clf: LoadedClassifier, slots: CursorSlots) -> None:
    """A record naming a cursor slot: the kernel reads the slot, which a plain store into the
    mapped array changes (no syscall between packets), not the record's own cursor."""
    clf.nlevels = 8
    clf.configure()
    e = FlowEntry(mode=layout.MODE_RLI, levels=[0, 2, 4, 6], thresholds=[1, 3, 6], target_layer=10, request_id=RID)
    slot = layout.CURSORS_MAX - 1  # the last slot: the mapping covers the whole array
    _check(clf, e, RequestRecord(cursor=-100, slot=slot), 8, slots=slots, slot_cursor=0)
    assert clf.level_of(PACKET) == 6
    for cursor, want in RLI_STEPS:
        slots.view[slots.index(slot)] = cursor
        assert clf.level_of(PACKET) == want, cursor
    with clf.map("cursors") as m:  # the kernel's array holds what the store wrote
        assert m.lookup(slot.to_bytes(4, "little"))[:4] == (12).to_bytes(4, "little", signed=True)


def test_entry_counters_accumulate_over_packets(clf: LoadedClassifier) -> None:
    """The kernel makes the state on the first packet (starting at the entry's sent_base),
    counts into it, and restarts it when a new registration (another gen) replaces the entry;
    a rewrite with the same gen keeps the counts."""
    clf.nlevels = 8
    clf.configure()
    with clf.map("flows") as m, clf.map("flow_state") as sm:
        sm.delete(KEY.pack())
        m.update(KEY.pack(), FlowEntry.static(2, gen=5, sent_bytes=300).pack())
        for _ in range(10):
            assert clf.level_of(PACKET) == 2
        st = FlowState.unpack(sm.lookup(KEY.pack()))
        assert (st.gen, st.sent_pkts, st.sent_bytes, st.cur_level) == (5, 10, 300 + 10 * PAYLOAD, 2)
        m.update(KEY.pack(), FlowEntry.static(3, gen=5, sent_bytes=0).pack())  # a rewrite
        assert clf.level_of(PACKET) == 3
        st = FlowState.unpack(sm.lookup(KEY.pack()))
        assert (st.sent_pkts, st.sent_bytes, st.cur_level) == (11, 300 + 11 * PAYLOAD, 3)
        m.update(KEY.pack(), FlowEntry.static(1, gen=6, sent_bytes=7).pack())  # re-registered
        assert clf.level_of(PACKET) == 1
        st = FlowState.unpack(sm.lookup(KEY.pack()))
        assert (st.gen, st.sent_pkts, st.sent_bytes) == (6, 1, 7 + PAYLOAD)


# ---- adversarial inputs (hypothesis) ---------------------------------------------------------
U64 = (1 << 64) - 1
S64_MIN, S64_MAX = -(1 << 63), (1 << 63) - 1

_u64 = st.one_of(
    st.integers(0, U64),
    st.sampled_from([0, 1, 999, 1000, 1 << 32, (1 << 32) - 1, 1 << 40, (1 << 54), (1 << 63) - 1, 1 << 63, U64 - PAYLOAD]),
)
_s64 = st.one_of(st.integers(S64_MIN, S64_MAX), st.sampled_from([S64_MIN, S64_MIN + 1, -1, 0, 1, MLU_CAP, S64_MAX - 1, S64_MAX]))
_s32 = st.integers(-(1 << 31), (1 << 31) - 1)
_ps = st.one_of(st.sampled_from(RATES + [0, 1, (1 << 32) - 1, 1 << 32, U64]), st.integers(0, U64))


@st.composite
def adversarial(draw):
    mode = draw(st.sampled_from(sorted(layout.MODE_NAMES)))
    nlevels = draw(st.integers(2, 8))
    th = [] if mode == layout.MODE_STATIC else sorted(draw(st.lists(_s64, max_size=layout.MAX_THRESH)))
    levels = draw(st.lists(st.integers(0, 7), min_size=len(th) + 1, max_size=len(th) + 1))
    now = time.monotonic_ns()
    dl = draw(
        st.one_of(
            _s64, st.integers(-(10**10), 10**10).map(lambda d: now + d), st.integers(1 << 40, 1 << 62).map(lambda d: now + d)
        )
    )
    sent = draw(st.one_of(_u64, st.integers(0, 1 << 30))) % (U64 - PAYLOAD)  # the count stays < 2^64
    e = FlowEntry(
        mode=mode,
        levels=levels,
        thresholds=th,
        flags=draw(st.integers(0, 3)),
        target_layer=draw(st.integers(0, (1 << 32) - 1)),
        request_id=RID,
        slot=draw(st.one_of(st.just(layout.SLOT16_NONE), st.integers(0, layout.CURSORS_MAX + 2))),
        deadline_ns=dl,
        total_bytes=draw(_u64),
        ps_per_byte=draw(_ps),
        sent_bytes=sent,
        cur_level=draw(st.sampled_from([0xFF, 0, 1, 2, 3, 4, 5, 6, 7])),
        gen=draw(st.integers(0, (1 << 32) - 1)),
    )
    req = draw(
        st.one_of(
            st.none(),
            st.builds(
                RequestRecord,
                cursor=_s32,
                flags=st.sampled_from([0, layout.R_SCAVENGER]),
                slot=st.one_of(st.just(layout.SLOT_NONE), st.integers(0, layout.CURSORS_MAX + 2)),
            ),
        )
    )
    slot_key = draw(st.sampled_from([RID, RID ^ (1 << 63), 0]))
    slot_flags = draw(st.sampled_from([0, layout.R_SCAVENGER, 0xFFFFFFFF]))
    state_at = draw(st.sampled_from(["slot", "lookup", "stale"]))
    state_slot = draw(st.sampled_from([0, layout.STATES_MAX - 1, 4097]))
    return e, req, nlevels, draw(st.integers(0, U64 - 1)), draw(_s32), slot_key, slot_flags, state_at, state_slot


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(case=adversarial())
def test_kernel_equals_mirror_on_adversarial_inputs(clf: LoadedClassifier, slots: CursorSlots, case) -> None:
    """Byte counts up to 2^64, deadlines at the signed limits, rates that overflow a 64-bit
    product, every table shape and level count, every mode and flag: the kernel's saturating
    arithmetic and its Python mirror agree (a level >= nlevels gives the default level)."""
    e, req, nlevels, pkts, slot_cursor, slot_key, slot_flags, state_at, state_slot = case
    if clf.nlevels != nlevels:
        clf.nlevels = nlevels
        clf.configure()
    _check(
        clf,
        e,
        req,
        nlevels,
        pkts=pkts,
        slots=slots,
        slot_cursor=slot_cursor,
        slot_key=slot_key,
        slot_flags=slot_flags,
        state_at=state_at,
        state_slot=state_slot,
    )


def test_saturating_arithmetic_mirror_values() -> None:
    """The mirror itself at the edges (what the kernel is held to above)."""
    from mfs_tc.entry import laxity_metric, mlu_metric, mul_ps

    assert mul_ps(U64, U64) == U64 // 1000 and mul_ps(1 << 32, 1 << 32) == U64 // 1000
    assert mul_ps((1 << 32) - 1, (1 << 32) + 1) == ((1 << 64) - 1) // 1000
    assert laxity_metric(S64_MIN, 0, 0, 10) == S64_MIN  # no wrap to a huge positive laxity
    assert laxity_metric(S64_MAX, U64, U64, 0) == S64_MAX
    assert mlu_metric(U64, 0, U64, 10**9, 0) == MLU_CAP  # saturated need, not a wrapped small one
    assert mlu_metric(U64, 0, U64, S64_MAX, 0) == (U64 // 1000 >> 30 << 16) // (S64_MAX >> 30)
    e = FlowEntry(mode=layout.MODE_SENT, levels=[0, 5], thresholds=[0])
    assert e.metric(0, sent=1 << 63) == S64_MAX  # not negative
    e = FlowEntry(mode=layout.MODE_REMAINING, levels=[0, 5], thresholds=[0], total_bytes=U64)
    assert e.metric(0, sent=0) == S64_MAX
    bad = FlowEntry.static(6)
    assert bad.level(0, nlevels=4, default_level=1) == 1  # not silently the scavenger (3)
