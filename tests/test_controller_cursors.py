"""Request cursors in the mapped cursor array (layout v4, mfs_tc.cursors), on the real kernel:
`at_layer` is a store into the mapping that the classifier reads (BPF_PROG_TEST_RUN), each
request owns its slot, slots are freed at done() and by gc, a full array is a clear error, and
a kernel without BPF_F_MMAPABLE falls back to the record's own cursor. Since layout v5 the flow
entries name their request's slot, and the classifier reads the request there (cursor and
scavenger flag) without looking its record up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from controller_helpers import TinyPolicy, remove_root, scratch_root
from datapath_support import LoadedClassifier
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from mfs_tc import bpfsys
from mfs_tc.controller import Controller, PinnedMaps, gc
from mfs_tc.errors import MapFullError
from mfs_tc.layout import CURSORS_MAX, SLOT_NONE, STAT_REQ_RECORD, CursorOwner, Owner, RequestRecord, pin_dir

pytestmark = pytest.mark.privileged

IF = "veth0"
SRC, DST, SPORT, DPORT = "10.9.1.1", "10.9.1.2", 42000, 5201
PACKET = bytes(
    Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    / IP(src=SRC, dst=DST)
    / TCP(sport=SPORT, dport=DPORT, flags="A")
    / Raw(b"\x55" * 100)
)


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


def claims(maps: PinnedMaps) -> dict[int, CursorOwner]:
    return {int.from_bytes(k, "little"): CursorOwner.unpack(v) for k, v in maps.cursor_owners.items()}


def test_controller_cursor_changes_the_classifiers_level() -> None:
    """End to end: a controller on the classifier's own pins; at_layer moves the level the
    kernel gives a packet of the request's rli flow, with no write to the request record."""
    with LoadedClassifier() as clf:
        ctl = Controller.open(IF, policy=TinyPolicy(), pin_path=clf.pin)
        try:
            assert ctl.maps.cursor_slots is not None
            req = ctl.request("e2e", slo_s=30.0)
            req.stage("kv_fetch", layer=6).add_flow((SRC, DST, SPORT, DPORT))  # TinyPolicy: RLI 0/1-2/>=3 -> 0/2/5
            rkey = req.id.to_bytes(8, "little")
            record = ctl.maps.requests.lookup(rkey)
            assert RequestRecord.unpack(record).slot < CURSORS_MAX
            for layer, want in [(0, 5), (4, 2), (5, 2), (6, 0), (2, 5), (7, 0)]:
                req.at_layer(layer)
                assert clf.level_of(PACKET) == want, layer
            assert ctl.maps.requests.lookup(rkey) == record  # the record was never rewritten
            req.done()
            assert len(ctl.maps.cursor_owners) == 0
        finally:
            ctl.close()


def test_flows_read_their_request_at_its_slot_without_the_record() -> None:
    """The entry the controller writes names the request's slot, and the slot carries the
    request's key: the kernel reads cursor and scavenger flag there. With the record deleted
    behind the controller's back, the level still follows at_layer and scavenge(); once the
    request is done its slot no longer names it (its key cleared)."""
    with LoadedClassifier() as clf:
        ctl = Controller.open(IF, policy=TinyPolicy(), pin_path=clf.pin)
        try:
            cs = ctl.maps.cursor_slots
            assert cs is not None
            req = ctl.request("fast", slo_s=30.0)
            fh = req.stage("kv_fetch", layer=6).add_flow((SRC, DST, SPORT, DPORT))
            slot = req.record.slot
            e = fh.read()
            assert e is not None and e.slot == slot and cs.read_key(slot) == req.id
            ctl.maps.requests.delete(req.id.to_bytes(8, "little"))  # only the slot is left
            before = clf.stats()[STAT_REQ_RECORD][0]
            for layer, want in [(0, 5), (4, 2), (6, 0)]:
                req.at_layer(layer)
                assert clf.level_of(PACKET) == want, layer
            req.at_layer(0)
            req.scavenge()
            assert cs.read_flags(slot) & 1 and clf.level_of(PACKET) == clf.nlevels - 1  # the scavenger level
            assert clf.stats()[STAT_REQ_RECORD][0] == before  # no packet needed the record
            # the slot no longer names it: the record is looked up (scavenge() wrote it again)
            cs.publish(slot, 0)
            assert clf.level_of(PACKET) == clf.nlevels - 1 and clf.stats()[STAT_REQ_RECORD][0] == before + 1
            cs.publish(slot, req.id)
            req.done()
            assert cs.read_key(slot) == 0
        finally:
            ctl.close()


def test_at_layer_stores_into_the_slot_not_the_record(ctl, maps) -> None:
    req = ctl.request("r1", slo_s=30.0)
    rec = req.read_record()
    assert rec is not None and rec.slot < CURSORS_MAX
    assert claims(maps) == {rec.slot: CursorOwner(req.id, ctl.owner)}
    raw = maps.requests.lookup(req.id.to_bytes(8, "little"))
    req.at_layer(-7)
    assert maps.requests.lookup(req.id.to_bytes(8, "little")) == raw
    # the kernel's array (read with a lookup syscall, not through our mapping) holds the cursor
    val = maps.cursors.lookup(rec.slot.to_bytes(4, "little"))
    assert val is not None and int.from_bytes(val[:4], "little", signed=True) == -7
    assert req.read_record().cursor == -7  # read_record: the cursor the kernel reads
    req.done()
    assert claims(maps) == {}


def test_two_controllers_never_share_a_slot_and_done_frees_them(root, maps) -> None:
    a = Controller.open(IF, policy=TinyPolicy(), root=root)
    b = Controller.open(IF, policy=TinyPolicy(), root=root)
    b.maps.cursor_slots._next = a.maps.cursor_slots._next  # both look at the same slots first
    reqs = [c.request(f"{name}-{i}", slo_s=30.0) for i in range(40) for c, name in ((a, "a"), (b, "b"))]
    batch = a.batch([r for r in reqs if r.ctl is a][:3])  # a batch has a slot of its own
    owners = [*reqs, batch]
    slots = [o.record.slot for o in owners]
    assert len(set(slots)) == len(owners) and max(slots) < CURSORS_MAX
    assert set(claims(maps)) == set(slots)
    for i, o in enumerate(reqs):
        o.at_layer(i)
    batch.at_layer(1000)
    recs = maps.request_records()
    assert [maps.request_cursor(recs[o.id]) for o in reqs] == [1000 if o in batch.members else i for i, o in enumerate(reqs)]
    assert maps.request_cursor(recs[batch.id]) == 1000
    a.close()  # done() of each open request: their slots are free
    assert {co.owner for co in claims(maps).values()} == {b.owner} and len(claims(maps)) == 40
    b.close()
    assert claims(maps) == {} and len(maps.requests) == 0


def test_private_keys_name_the_random_key_in_the_claim(root, maps) -> None:
    c = Controller.open(IF, policy=TinyPolicy(), root=root, private_keys=True)
    try:
        req = c.request("priv", slo_s=30.0)
        assert claims(maps) == {req.record.slot: CursorOwner(req.id, c.owner)}
        req.at_layer(3)
        assert maps.request_cursor(maps.request_records()[req.id]) == 3
        req.done()
        assert claims(maps) == {}
    finally:
        c.close()


def test_a_full_slot_array_is_a_clear_error(ctl, maps) -> None:
    other = CursorOwner(1, Owner(os.getpid() + 1_000_000, 1, 1)).pack()  # never a live process here
    keys = b"".join(s.to_bytes(4, "little") for s in range(CURSORS_MAX))
    maps.cursor_owners.update_batch_raw(keys, other * CURSORS_MAX, CURSORS_MAX)
    with pytest.raises(MapFullError, match="cursor slots.*mfs-tc gc"):
        ctl.request("full", slo_s=30.0)
    assert len(maps.requests) == 0  # nothing left behind
    res = gc(maps)  # their owner is gone: gc frees every slot
    assert res.slots_freed == list(range(CURSORS_MAX)) and len(maps.cursor_owners) == 0
    req = ctl.request("full", slo_s=30.0)
    assert req.record.slot < CURSORS_MAX


def test_done_leaves_a_slot_another_controller_owns_now(ctl, maps) -> None:
    """gc may free a slot (owner misjudged dead) and another controller claim it: the first
    request's done() must not free the new owner's slot."""
    req = ctl.request("r", slo_s=30.0)
    slot = req.record.slot
    theirs = CursorOwner(99, Owner(1, 0, 0))
    maps.cursor_owners.update(slot.to_bytes(4, "little"), theirs.pack())
    req.done()
    assert claims(maps) == {slot: theirs}


def test_gc_frees_only_slots_of_dead_owners(ctl, maps) -> None:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = Owner(int(p.stdout), 1, 0)  # exited (start time 1: not a recycled pid's either)
    maps.cursor_owners.update((5).to_bytes(4, "little"), CursorOwner(7, dead).pack(), bpfsys.BPF_NOEXIST)
    cs = maps.cursor_slots
    assert cs is not None
    cs.publish(5, 7)  # the dead owner's request, as its claim left it
    live = ctl.request("live", slo_s=30.0)
    res = gc(maps)
    assert res.slots_freed == [5] and set(claims(maps)) == {live.record.slot}
    # a freed slot names no request any more (its entries read their record); the live one does
    assert cs.read_key(5) == 0 and cs.read_key(live.record.slot) == live.id
    assert gc(maps, check_pids=False).slots_freed == []


def test_gc_scavenging_a_request_past_its_deadline_sets_the_flag_in_its_slot(ctl, maps) -> None:
    """Where the kernel reads the flag for entries naming the slot: gc's scavenging must reach
    the slot as well as the record, or those flows would stay at their levels."""
    req = ctl.request("late", slo_s=1.0)
    cs = maps.cursor_slots
    assert cs is not None and not cs.read_flags(req.record.slot)
    res = gc(maps, grace_s=0.0, now_ns=req.record.deadline_ns + 10**9)
    assert res.requests_scavenged == [req.id]
    assert maps.request_records()[req.id].scavenged and cs.read_flags(req.record.slot) & 1
    req.done()


def test_without_mmapable_cursors_the_record_carries_the_cursor(root) -> None:
    """Maps made as on a kernel before 5.5 (no BPF_F_MMAPABLE): no mapping, no slots; at_layer
    writes the record (its cursor is what the kernel reads)."""
    path = pin_dir(IF, None, root)
    with PinnedMaps.create(path, mmap_cursors=False) as maps:
        assert maps.cursor_slots is None and not maps.cursors.info.flags & bpfsys.BPF_F_MMAPABLE
        c = Controller.open(IF, policy=TinyPolicy(), root=root)
        try:
            assert c.maps.cursor_slots is None
            assert c.state_slots is None  # nor state slots: flows keep their state in the lookup maps
            req = c.request("r", slo_s=30.0)
            req.at_layer(4)
            rec = RequestRecord.unpack(maps.requests.lookup(req.id.to_bytes(8, "little")))
            assert (rec.slot, rec.cursor) == (SLOT_NONE, 4) and maps.request_cursor(rec) == 4
            assert len(maps.cursor_owners) == 0
        finally:
            c.close()
