"""State slots (layout v6, mfs_tc.stateslots) on real maps: every registration the controller
writes names a slot of `states` that its gen owns, claimed from this controller's chunks without
a syscall; a slot is given back when its flow's entry is gone or overwritten; two controllers
never share a chunk; a full array falls back to the lookup maps; close() and gc give chunks
back. The classifier side (a packet counts at its slot only while its gen owns it) is in
tests/test_classifier_equivalence.py and tests/test_datapath_state.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from controller_helpers import TinyPolicy, remove_root, scratch_root

from mfs_tc import bpfsys
from mfs_tc.controller import Controller, PinnedMaps, gc
from mfs_tc.entry import FlowEntry
from mfs_tc.layout import STATE_CHUNK, STATE_NONE, STATES_MAX, CursorOwner, FlowKey, Owner, pin_dir
from mfs_tc.maps import pack_flow_key
from mfs_tc.stateslots import STATE_QUADS

pytestmark = pytest.mark.privileged

IF = "veth0"


@pytest.fixture
def root():
    bpfsys.ensure_bpffs()
    r = scratch_root()
    yield r
    remove_root(r)


@pytest.fixture
def maps(root):
    m = PinnedMaps.create(pin_dir(IF, None, root))
    yield m
    m.close()


@pytest.fixture
def ctl(root, maps):
    c = Controller.open(IF, policy=TinyPolicy(), root=root)
    yield c
    c.close()


def conns(n: int, port: int = 20000) -> list[tuple[str, str, int, int]]:
    return [("10.7.0.1", "10.7.0.2", port + i, 80) for i in range(n)]


def entry_slot(maps: PinnedMaps, conn: tuple) -> int:
    raw = maps.flows.lookup(pack_flow_key(conn))
    assert raw is not None
    return FlowEntry.unpack(raw).state_slot


def owner_word(maps: PinnedMaps, slot: int) -> int:
    assert maps.state_words is not None
    return maps.state_words[slot * STATE_QUADS + STATE_QUADS - 1]


def chunk_claims(maps: PinnedMaps) -> dict[int, Owner]:
    return {int.from_bytes(k, "little"): CursorOwner.unpack(v).owner for k, v in maps.state_owners.items()}


def test_every_registration_names_a_slot_its_gen_owns(ctl, maps) -> None:
    assert ctl.state_slots is not None and maps.state_words is not None
    req = ctl.request("r", slo_s=30.0)
    st = req.stage("kv_fetch", layer=4)
    one = st.add_flow(("10.7.0.1", "10.7.0.2", 1000, 80), bytes=10)
    many = st.add_flows(conns(100), bytes=10)
    fb = st.register_flows(conns(150, 30000) + conns(3, 30000), bytes=10)  # listed twice: one flow each
    slots = [one.slot] + [fh.slot for fh in many] + list(fb._slots)
    assert STATE_NONE not in slots and len(set(slots)) == len(slots) == 1 + 100 + 150
    assert entry_slot(maps, ("10.7.0.1", "10.7.0.2", 1000, 80)) == one.slot
    assert [entry_slot(maps, c) for c in conns(100)] == [fh.slot for fh in many]
    assert [entry_slot(maps, c) for c in conns(150, 30000)] == list(fb._slots)
    assert owner_word(maps, one.slot) == one.gen and {owner_word(maps, fh.slot) for fh in many} == {many[0].gen}
    assert {owner_word(maps, s) for s in fb._slots} == {fb.gen}
    # chunks: this controller's, as few as the flows need
    assert set(chunk_claims(maps).values()) == {ctl.owner}
    assert len(chunk_claims(maps)) == len({s // STATE_CHUNK for s in slots})
    # a rewrite keeps slot and counts' place; remove() and done() give the slots back
    one.update(bytes=20)
    assert entry_slot(maps, ("10.7.0.1", "10.7.0.2", 1000, 80)) == one.slot
    held = one.slot
    one.remove()
    assert owner_word(maps, held) == 0 and one.slot == STATE_NONE
    fb.update(target_layer=6)
    assert [entry_slot(maps, c) for c in conns(150, 30000)] == list(fb._slots)
    kept = list(fb._slots) + [fh.slot for fh in many]
    req.done()
    assert all(owner_word(maps, s) == 0 for s in kept)
    assert ctl.state_slots.free >= 251  # back in this controller's chunks, for the next flows


def test_a_connection_registered_again_gives_its_old_slot_back(ctl, maps) -> None:
    req = ctl.request("r", slo_s=30.0)
    conn = ("10.7.0.1", "10.7.0.2", 1000, 80)
    a = req.stage("kv_fetch", layer=2).add_flow(conn, bytes=10)
    old = a.slot
    b = req.stage("p2d").add_flow(conn, bytes=10)
    assert b.slot != old and entry_slot(maps, conn) == b.slot
    assert owner_word(maps, old) == 0 and owner_word(maps, b.slot) == b.gen
    req.done()


def test_two_controllers_own_disjoint_chunks_and_close_gives_them_back(root, maps) -> None:
    c1 = Controller.open(IF, policy=TinyPolicy(), root=root)
    c2 = Controller.open(IF, policy=TinyPolicy(), root=root)
    try:
        r1, r2 = c1.request("a", slo_s=30.0), c2.request("b", slo_s=30.0)
        f1 = r1.stage("kv_fetch", layer=1).add_flows(conns(200), bytes=1)
        f2 = r2.stage("kv_fetch", layer=1).add_flows(conns(200, 40000), bytes=1)
        s1, s2 = {fh.slot for fh in f1}, {fh.slot for fh in f2}
        assert not s1 & s2
        assert c1.state_slots is not None and c2.state_slots is not None
        assert not c1.state_slots.chunks & c2.state_slots.chunks
        assert {s // STATE_CHUNK for s in s1} <= c1.state_slots.chunks
        both = c1.state_slots.chunks | c2.state_slots.chunks
        assert set(chunk_claims(maps)) == both
        c1.close()
        assert set(chunk_claims(maps)) == c2.state_slots.chunks  # c1's chunks given back
        assert all(owner_word(maps, s) == 0 for s in s1)
        assert all(owner_word(maps, fh.slot) == fh.gen for fh in f2)  # c2's flows untouched
    finally:
        c2.close()
        c1.close()
    assert chunk_claims(maps) == {}


def test_a_full_state_array_falls_back_to_the_lookup_maps(ctl, maps) -> None:
    """Every chunk held by another (live) process: flows are registered all the same, naming no
    slot (the kernel counts them in flow_state); a chunk given back is used after the retry."""
    other = Owner(1, 0, 0)  # pid 1 lives
    val = CursorOwner(0, other).pack()
    keys = [c.to_bytes(4, "little") for c in range(STATES_MAX // STATE_CHUNK)]
    maps.state_owners.update_batch_raw(b"".join(keys), val * len(keys), len(keys))
    req = ctl.request("r", slo_s=30.0)
    st = req.stage("kv_fetch", layer=1)
    fh = st.add_flow(("10.7.0.1", "10.7.0.2", 1000, 80), bytes=1)
    hs = st.add_flows(conns(10), bytes=1)
    assert fh.slot == STATE_NONE and {h.slot for h in hs} == {STATE_NONE}
    assert entry_slot(maps, ("10.7.0.1", "10.7.0.2", 1000, 80)) == STATE_NONE
    assert gc(maps).state_chunks_freed == []  # pid 1's chunks stay
    maps.state_owners.delete(keys[7])
    assert ctl.state_slots is not None
    ctl.state_slots._retry_at = 0  # (instead of waiting a second)
    got = st.add_flow(("10.7.0.1", "10.7.0.2", 2000, 80), bytes=1)
    assert got.slot // STATE_CHUNK == 7 and chunk_claims(maps)[7] == ctl.owner
    req.done()


def test_gc_frees_the_chunks_of_dead_owners(ctl, maps) -> None:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = Owner(int(p.stdout), 1, 0)  # exited
    maps.state_owners.update((3).to_bytes(4, "little"), CursorOwner(0, dead).pack(), bpfsys.BPF_NOEXIST)
    w = maps.state_words
    assert w is not None
    s = 3 * STATE_CHUNK + 5
    w[s * STATE_QUADS + STATE_QUADS - 1] = 77  # a registration of the dead owner counts here
    w[s * STATE_QUADS] = 77
    req = ctl.request("live", slo_s=30.0)
    fh = req.stage("kv_fetch", layer=1).add_flow(("10.7.0.1", "10.7.0.2", 1000, 80), bytes=1)
    res = gc(maps)
    assert res.state_chunks_freed == [3] and res.as_dict()["state_chunks_freed"] == [3]
    assert owner_word(maps, s) == 0 and w[s * STATE_QUADS] == 0  # no entry counts there any more
    assert owner_word(maps, fh.slot) == fh.gen and fh.slot // STATE_CHUNK in chunk_claims(maps)
    assert gc(maps, check_pids=False).state_chunks_freed == []
    req.done()


def test_flow_views_read_the_counts_at_the_slot(ctl, maps) -> None:
    req = ctl.request("r", slo_s=30.0)
    fh = req.stage("kv_fetch", layer=1).add_flow(("10.7.0.1", "10.7.0.2", 1000, 80), bytes=1)
    w = maps.state_words
    assert w is not None
    i = fh.slot * STATE_QUADS
    w[i : i + 5] = memoryview(bytes(40)).cast("Q")  # what the kernel writes: gen, level, bytes, packets, flags
    w[i], w[i + 1], w[i + 2], w[i + 3] = fh.gen, 2, 12345, 9
    (v,) = maps.flow_views()
    assert v.key == FlowKey("10.7.0.1", "10.7.0.2", 1000, 80)
    assert (v.as_dict()["sent_bytes"], v.as_dict()["sent_pkts"], v.as_dict()["cur_level"]) == (12345, 9, 2)
    st = fh.state()
    assert st is not None and (st.sent_bytes, st.owner) == (12345, fh.gen)
    req.done()


def test_a_forked_child_claims_chunks_of_its_own(ctl, maps) -> None:
    """A serving process that forks workers after opening its controller: the child must not
    hand out the free slots its parent holds (both would give one slot to two flows)."""
    import os  # noqa: PLC0415

    req = ctl.request("parent", slo_s=30.0)
    st = req.stage("kv_fetch", layer=1)
    st.add_flow(("10.7.0.1", "10.7.0.2", 1000, 80), bytes=1)  # the parent holds a chunk with 63 free slots
    assert ctl.state_slots is not None
    parent_chunks = set(ctl.state_slots.chunks)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one flow, its slot and chunk owner to the parent
        try:
            fh = st.add_flow(("10.7.0.1", "10.7.0.2", 1001, 80), bytes=1)
            assert ctl.state_slots is not None
            os.write(w, f"{fh.slot} {os.getpid()} {int(ctl.state_slots.owner.pid)}".encode())
        finally:
            os._exit(0)
    os.close(w)
    slot, child, owner_pid = (int(x) for x in os.read(r, 100).split())
    os.close(r)
    os.waitpid(pid, 0)
    assert slot // STATE_CHUNK not in parent_chunks
    assert owner_pid == child and chunk_claims(maps)[slot // STATE_CHUNK].pid == child
    assert gc(maps).state_chunks_freed == [slot // STATE_CHUNK]  # the child is gone
    req.done()
