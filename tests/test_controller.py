"""The controller library on real pinned maps (created in a scratch bpffs dir, no classifier)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from controller_helpers import TinyPolicy, count_as_kernel, remove_root, scratch_root

from mfs_tc import bpfsys
from mfs_tc.controller import (
    STAGE_ORPHAN,
    BatchHandle,
    Controller,
    FlowBatch,
    PinnedMaps,
    gc,
    owner_alive,
    pack_flow_key,
    pack_flow_keys,
    rdma_table,
    request_key,
)
from mfs_tc.entry import FlowEntry
from mfs_tc.errors import LayoutMismatchError, MapFullError, MfsError, NotAttachedError
from mfs_tc.layout import (
    CURSORS_MAX,
    DSCP_KEEP,
    MODE_MLU,
    MODE_RLI,
    R_SCAVENGER,
    STAGE_CODES,
    CursorOwner,
    FlowKey,
    FlowState,
    LevelRecord,
    Owner,
    RequestRecord,
    pin_dir,
)

TESTS = Path(__file__).parent
IF = "veth0"


# ---- no root needed -------------------------------------------------------------------------------
def test_request_key_ints_and_stable_string_hash():
    assert request_key(5) == 5
    assert request_key((1 << 64) - 1) == (1 << 64) - 1
    a = request_key("req-17")
    assert a == request_key("req-17") and a != request_key("req-18") and 0 < a < 1 << 64
    other = subprocess.run(
        [sys.executable, "-c", "from mfs_tc.controller import request_key; print(request_key('req-17'))"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert int(other.stdout) == a  # same in another process, whatever its hash seed
    for bad in (0, -1, 1 << 64, "", True, 1.5, None):
        with pytest.raises(ValueError, match="request id"):
            request_key(bad)


def test_pack_flow_key_tuples_match_flowkey():
    assert pack_flow_key(("10.0.0.1", "10.0.0.2", 40000, 5201)) == FlowKey("10.0.0.1", "10.0.0.2", 40000, 5201).pack()
    k6 = pack_flow_key(("fd77::1", "fd77::2", 1, 2, "udp"))
    assert FlowKey.unpack(k6) == FlowKey("fd77::1", "fd77::2", 1, 2, socket.IPPROTO_UDP)
    assert pack_flow_key(("10.0.0.1", "10.0.0.2", 1, 2, 17)) == pack_flow_key(("10.0.0.1", "10.0.0.2", 1, 2, "UDP"))
    fk = FlowKey("10.0.0.1", "10.0.0.2", 1, 2)
    assert pack_flow_key(fk) == fk.pack()
    for bad, msg in (
        (("10.0.0.1", "fd77::2", 1, 2), "families differ"),
        (("10.0.0.1", "10.0.0.2", 1, 70000), "ports"),
        (("10.0.0.1", "10.0.0.2", 1, 2, "icmp"), "only tcp and udp"),
        (("10.0.0.300", "10.0.0.2", 1, 2), "bad IP address"),
        (("10.0.0.1", "10.0.0.2", 1), "5-tuple"),
        ("10.0.0.1:1", "a connected socket"),
    ):
        with pytest.raises(ValueError, match=msg):
            pack_flow_key(bad)
        with pytest.raises(ValueError, match=msg):  # the batch packer names the same problem
            pack_flow_keys([("10.0.0.1", "10.0.0.2", 1, 2, "tcp"), bad])
    # the batch packer's fast path gives exactly pack_flow_key's keys, on every kind of target
    import ipaddress

    targets = [
        ("10.0.0.1", "10.0.0.2", 40000, 5201, "tcp"),
        ("fd77::1", "fd77::2", 1, 2, "udp"),
        ("10.0.0.1", "10.0.0.2", 1, 2, 17),
        ("10.0.0.1", "10.0.0.2", 1, 2, "UDP"),
        ("10.0.0.1", "10.0.0.2", 1, 2),
        (ipaddress.ip_address("10.0.0.1"), "10.0.0.2", 1, 2, "tcp"),
        fk,
    ]
    assert pack_flow_keys(targets) == [pack_flow_key(t) for t in targets]
    with pytest.raises(ValueError, match="ports"):
        pack_flow_keys([("10.0.0.1", "10.0.0.2", True, 2, "tcp")])


def test_pack_flow_key_from_sockets_v4_v6_tcp_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.connect(("127.0.0.1", 9))
        port = u.getsockname()[1]
        assert FlowKey.unpack(pack_flow_key(u)) == FlowKey("127.0.0.1", "127.0.0.1", port, 9, 17)
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.bind(("::1", 0))
    srv.listen(1)
    with srv, socket.create_connection(("::1", srv.getsockname()[1])) as c:
        k = FlowKey.unpack(pack_flow_key(c))
        assert (k.saddr, k.daddr, k.dport, k.proto) == ("::1", "::1", srv.getsockname()[1], 6)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(ValueError, match="not connected"):
        pack_flow_key(s)


def test_rdma_table_traffic_classes():
    t = rdma_table(8)
    assert [r["dscp"] for r in t] == [46, 40, 34, 26, 18, 10, 12, 1]
    assert t[0]["traffic_class"] == 184 and t[0]["NCCL_IB_TC"] == t[0]["UCX_IB_TRAFFIC_CLASS"] == t[0]["MC_IB_TC"] == 184
    assert [r["dscp"] for r in rdma_table(3)] == [46, 40, 1]
    recs = [LevelRecord(0, 10), LevelRecord(1, DSCP_KEEP)]
    assert [r["traffic_class"] for r in rdma_table(recs)] == [40, 160]
    with pytest.raises(ValueError):
        rdma_table([70])
    with pytest.raises(ValueError):
        rdma_table(9)


# ---- fixtures on real maps ----------------------------------------------------------------------
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
def policy():
    return TinyPolicy()


@pytest.fixture
def ctl(root, maps, policy):
    c = Controller.open(IF, policy=policy, root=root)
    yield c
    c.close()


def raw_entry(maps: PinnedMaps, target) -> FlowEntry | None:
    raw = maps.flows.lookup(pack_flow_key(target))
    return FlowEntry.unpack(raw) if raw else None


def views_by_sport(ctl: Controller) -> dict[int, object]:
    return {v.key.sport: v for v in ctl.flows()}


# ---- opening --------------------------------------------------------------------------------------
@pytest.mark.privileged
def test_open_not_attached_says_how(root):
    with pytest.raises(NotAttachedError, match=r"not attached to eth9.*mfs-tc attach eth9"):
        Controller.open("eth9", policy=TinyPolicy(), root=root)
    with pytest.raises(NotAttachedError, match=r"mfs-tc attach eth9 --netns blue"):
        Controller.open("eth9", netns="blue", policy=TinyPolicy(), root=root)


@pytest.mark.privileged
def test_open_partial_pins_is_not_attached(root, maps):
    (maps.path / "stats").unlink()
    with pytest.raises(NotAttachedError, match="stats is missing"):
        Controller.open(IF, policy=TinyPolicy(), root=root)


@pytest.mark.privileged
def test_layout_version_mismatch(root, maps):
    cfg = maps.read_config()
    cfg.version = 1
    maps.config_map.update(b"\0" * 4, cfg.pack())
    with pytest.raises(LayoutMismatchError, match="version 1.*re-attach"):
        Controller.open(IF, policy=TinyPolicy(), root=root)
    cfg.version, cfg.magic = 2, 0
    maps.config_map.update(b"\0" * 4, cfg.pack())
    with pytest.raises(LayoutMismatchError, match="magic 0x0"):
        Controller.open(IF, policy=TinyPolicy(), root=root)


@pytest.mark.privileged
def test_map_shape_mismatch(root, maps):
    (maps.path / "flows").unlink()
    with bpfsys.BpfMap.create(bpfsys.MAP_TYPE_LRU_HASH, 40, 128, 64, "flows") as wrong:  # layout v5's
        wrong.pin(maps.path / "flows")
    with pytest.raises(LayoutMismatchError, match="value size 128 \\(want 136\\)"):
        Controller.open(IF, policy=TinyPolicy(), root=root)


@pytest.mark.privileged
def test_bad_arguments_are_clear(ctl):
    with pytest.raises(ValueError, match="SLO must be positive"):
        ctl.request("r", 0)
    with pytest.raises(ValueError, match="SLO must be positive"):
        ctl.request("r", -1.0)
    r = ctl.request("r", 1.0)
    with pytest.raises(ValueError, match="already registered"):
        ctl.request("r", 1.0)
    with pytest.raises(ValueError, match="unknown stage 'prefill'"):
        r.stage("prefill")
    with pytest.raises(ValueError, match="stage bytes must not be negative"):
        r.stage("p2d", bytes=-1)
    st = r.stage("p2d", bytes=10)
    with pytest.raises(ValueError, match="flow bytes must not be negative"):
        st.add_flow(("10.0.0.1", "10.0.0.2", 1, 2), bytes=-5)
    with pytest.raises(ValueError, match="layer must be"):
        r.at_layer("3")
    with pytest.raises(ValueError, match="remaining_bytes must not be negative"):
        r.update_estimate(remaining_bytes=-1)
    with pytest.raises(ValueError, match="level 8 out of range"):
        ctl.traffic_class(8)
    assert len(ctl.maps.flows) == 0  # nothing half-written


# ---- registration and levels ---------------------------------------------------------------------
@pytest.mark.privileged
def test_flows_written_with_request_stage_and_policy_entry(ctl, maps, policy):
    req = ctl.request(42, slo_s=2.0)
    kv = req.stage("kv_fetch", bytes=3000, layer=4)
    kv.add_flow(("10.0.0.1", "10.0.0.2", 1001, 5201), bytes=1000)
    kv.add_flows([("fd77::1", "fd77::2", 1002 + i, 5201, "udp") for i in range(3)], bytes=[100, 200, 300])
    p2d = req.stage("p2d", bytes=10_000)
    p2d.add_flow(("10.0.0.1", "10.0.0.3", 2001, 5201), bytes=10_000)
    e = raw_entry(maps, ("10.0.0.1", "10.0.0.2", 1001, 5201))
    assert (e.mode, e.request_id, e.stage, e.target_layer) == (MODE_RLI, 42, STAGE_CODES["kv_fetch"], 4)
    assert 0 < e.created_ns <= time.monotonic_ns() and e.cur_level == 0xFF
    e6 = raw_entry(maps, ("fd77::1", "fd77::2", 1004, 5201, "udp"))
    assert e6 is not None and e6.target_layer == 4
    ep = raw_entry(maps, ("10.0.0.1", "10.0.0.3", 2001, 5201))
    assert (ep.mode, ep.total_bytes, ep.deadline_ns) == (MODE_MLU, 10_000, req.deadline_ns)
    rec = req.read_record()
    assert rec.cursor == 0 and rec.owner_pid == os.getpid() and rec.deadline_ns == req.deadline_ns
    # the policy saw each distinct flow shape once
    assert sorted(c[2].bytes for c in policy.calls) == [100, 200, 300, 1000, 10_000]
    assert len(ctl.flows()) == 5


@pytest.mark.privileged
def test_at_layer_is_one_record_write_that_relevels_rli_flows(ctl, maps):
    req = ctl.request("r-rli", slo_s=5.0)
    st = req.stage("collective", layer=4)
    st.add_flows([("10.0.0.1", "10.0.0.2", 3000 + i, 80) for i in range(4)], bytes=500)
    before = dict(maps.flows.items())
    assert {v.level for v in ctl.flows()} == {5}  # RLI 4: far away, deferred
    req.at_layer(2)
    assert dict(maps.flows.items()) == before  # flows untouched: only the request record moved
    assert req.read_record().cursor == 2
    assert {v.level for v in ctl.flows()} == {2}  # RLI 2
    req.at_layer(4)
    assert {(v.level, v.cursor) for v in ctl.flows()} == {(0, 4)}  # RLI 0: blocks the GPU now


@pytest.mark.privileged
def test_update_estimate_keeps_kernel_counters(ctl, maps, policy):
    req = ctl.request("r-upd", slo_s=1.0)
    fh = req.stage("p2d").add_flow(("10.0.0.1", "10.0.0.2", 4000, 80), bytes=1_000_000)
    # what the classifier would have done: count bytes and remember the level, in its own map
    e = fh.read()
    st = FlowState(fh.gen, 3, 400_000, 300, owner=fh.gen)
    assert count_as_kernel(maps, fh.key, st) == "slot"  # (the controller gave the flow a state slot)
    req.update_estimate(remaining_bytes=600_000, remaining_compute_s=0.01)
    e2 = fh.read()
    assert (e2.sent_bytes, e2.cur_level, e2.gen, e2.state_slot) == (400_000, 3, fh.gen, fh.slot)
    assert fh.state() == st and maps.entry_state(e2, fh.key) == st  # never written
    assert e2.created_ns == e.created_ns
    assert policy.calls[-1][2].sent == 400_000  # the policy was told what was sent
    assert policy.calls[-1][0].remaining_bytes == 600_000
    fh.update(bytes=2_000_000)
    e3 = fh.read()
    assert (e3.total_bytes, e3.sent_bytes) == (2_000_000, 400_000)
    req.update_estimate(slo_s=3.0)
    assert req.read_record().deadline_ns == req.deadline_ns == req.model.arrival_ns + 3_000_000_000
    assert fh.read().deadline_ns == req.deadline_ns


@pytest.mark.privileged
def test_done_and_context_manager_remove_everything(ctl, maps):
    with ctl.request("r-cm", slo_s=1.0) as req:
        req.stage("kv_fetch", layer=1).add_flows([("10.0.0.1", "10.0.0.2", 5000 + i, 80) for i in range(10)])
        assert len(maps.flows) == 10 and len(maps.requests) == 1
    assert len(maps.flows) == 0 and len(maps.requests) == 0
    req.done()  # idempotent
    with pytest.raises(MfsError, match="is done"):
        req.stage("p2d")
    with pytest.raises(MfsError, match="is done"):
        req.at_layer(1)
    # the id can be used again afterwards
    ctl.request("r-cm", slo_s=1.0).done()


@pytest.mark.privileged
def test_a_reused_connection_belongs_to_the_newest_flow(ctl, maps):
    a = ctl.request("a", slo_s=1.0)
    b = ctl.request("b", slo_s=1.0)
    conn = ("10.0.0.1", "10.0.0.2", 6000, 80)
    a.stage("p2d").add_flow(conn, bytes=10)
    b.stage("p2d").add_flow(conn, bytes=20)
    a.done()
    e = raw_entry(maps, conn)
    assert e is not None and e.request_id == b.id and e.total_bytes == 20
    b.done()
    assert raw_entry(maps, conn) is None


@pytest.mark.privileged
def test_scavenger_flag_when_policy_gives_up(ctl, maps, policy):
    req = ctl.request("r-scav", slo_s=1.0)
    req.stage("kv_fetch", layer=3).add_flow(("10.0.0.1", "10.0.0.2", 7000, 80))
    assert not req.scavenged and req.read_record().flags == 0
    policy.hopeless = True
    req.at_layer(1)
    rec = req.read_record()
    assert rec.flags & R_SCAVENGER and rec.cursor == 1
    (v,) = ctl.flows()
    assert v.scavenged and v.level == maps.config.scavenger_level == 7
    # also on stage calls and at registration
    r2 = ctl.request("r-scav2", slo_s=1.0)
    assert r2.read_record().flags & R_SCAVENGER


@pytest.mark.privileged
def test_scavenge_gives_a_feasible_request_up(ctl, maps):
    """A decision made beside the policy (a decode-side p2d admission): the record's flag, read
    by the kernel for every entry of the request; another request stays."""
    req = ctl.request("given-up", slo_s=10.0)
    other = ctl.request("kept", slo_s=10.0)
    req.stage("p2d", bytes=1 << 20).add_flow(("10.0.0.1", "10.0.0.2", 7100, 80), bytes=1 << 20)
    other.stage("p2d", bytes=1 << 20).add_flow(("10.0.0.1", "10.0.0.2", 7101, 80), bytes=1 << 20)
    assert not req.scavenged and not req.read_record().flags & R_SCAVENGER
    req.scavenge()
    assert req.scavenged and req.read_record().flags & R_SCAVENGER
    req.scavenge()  # idempotent
    levels = {v.key.sport: (v.scavenged, v.level) for v in ctl.flows()}
    assert levels[7100] == (True, maps.config.scavenger_level)
    assert levels[7101][0] is False and levels[7101][1] < maps.config.scavenger_level
    req.done()
    with pytest.raises(MfsError):
        req.scavenge()


@pytest.mark.privileged
def test_scavenger_by_deadline_with_real_policy_logic(ctl, maps):
    req = ctl.request("late", slo_s=0.05, arrival=time.monotonic() - 1.0)  # deadline long gone
    assert req.scavenged
    ok = ctl.request("fine", slo_s=10.0)
    assert not ok.scavenged


@pytest.mark.privileged
def test_batch_gives_policy_all_deadlines_and_moves_all_cursors(ctl, maps, policy):
    now = time.monotonic()
    members = [ctl.request(f"m{i}", slo_s=s, arrival=now) for i, s in enumerate((0.2, 0.25, 5.0, 6.0))]
    batch = ctl.batch(members)
    assert isinstance(batch, BatchHandle)
    batch.stage("collective", layer=2).add_flows([("10.0.0.1", "10.0.0.2", 8000 + i, 80) for i in range(3)])
    req_model = policy.calls[-1][0]
    assert req_model.batch is not None
    assert req_model.batch.deadlines_ns == sorted(m.deadline_ns for m in members)
    assert req_model.deadline_ns == min(m.deadline_ns for m in members)
    assert all(m.model.batch is req_model.batch for m in members)
    assert {v.request_id for v in ctl.flows()} == {batch.id}
    batch.at_layer(2)
    recs = maps.request_records()
    assert {maps.request_cursor(recs[o.id]) for o in [batch, *members]} == {2}  # through their slots
    assert {v.level for v in ctl.flows()} == {0}
    assert recs[batch.id].deadline_ns == max(m.deadline_ns for m in members)
    # scavenged only when every member is hopeless
    policy.hopeless = True
    for m in members[:3]:
        m.at_layer(2)
    batch.at_layer(3)
    recs = maps.request_records()
    assert recs[batch.id].flags & R_SCAVENGER  # all four hopeless now
    batch.done()
    assert len(maps.flows) == 0 and set(maps.request_records()) == {m.id for m in members}


@pytest.mark.privileged
def test_batch_not_scavenged_while_one_member_is_feasible(ctl, maps):
    now = time.monotonic()
    late = ctl.request("late", slo_s=0.01, arrival=now - 1)
    fine = ctl.request("fine", slo_s=10.0, arrival=now)
    b = ctl.batch([late, fine])
    b.at_layer(1)
    assert late.scavenged and not fine.scavenged and not b.scavenged
    with pytest.raises(ValueError, match="at least one"):
        ctl.batch([])


@pytest.mark.privileged
def test_full_requests_map_raises_map_full(root):
    m = PinnedMaps.create(pin_dir(IF, None, root), requests_max=3)
    m.close()
    with Controller.open(IF, policy=TinyPolicy(), root=root) as c:
        for i in range(3):
            c.request(i + 1, 1.0)
        with pytest.raises(MapFullError, match="full.*gc"):
            c.request(99, 1.0)


@pytest.mark.privileged
def test_traffic_class_from_levels_map(root):
    m = PinnedMaps.create(pin_dir(IF, None, root), nlevels=4, dscp=[46, DSCP_KEEP, 10, 1])
    m.close()
    with Controller.open(IF, policy=TinyPolicy(), root=root) as c:
        assert [c.traffic_class(lv) for lv in range(4)] == [184, 40 << 2, 40, 4]
        assert [r["dscp"] for r in c.rdma_table()] == [46, 40, 10, 1]
        with pytest.raises(ValueError, match="levels 0..3"):
            c.traffic_class(4)


# ---- gc, threads, processes -----------------------------------------------------------------------
@pytest.mark.privileged
def test_gc_removes_expired_dead_and_orphaned(ctl, maps):
    now = time.monotonic_ns()
    live = ctl.request("live", slo_s=60.0)
    live.stage("p2d").add_flow(("10.0.0.1", "10.0.0.2", 9000, 80), bytes=1)
    old = ctl.request("old", slo_s=0.1, arrival_ns=now - 30_000_000_000)
    old.stage("p2d").add_flow(("10.0.0.1", "10.0.0.2", 9001, 80), bytes=1)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    maps.requests.update(struct.pack("<Q", 777), RequestRecord(0, 0, now + 10**12, int(dead_pid)).pack())
    e = FlowEntry(mode=MODE_RLI, levels=[0, 1], thresholds=[1], request_id=777)
    maps.flows.update(pack_flow_key(("10.0.0.1", "10.0.0.2", 9002, 80)), e.pack())
    e.request_id = 888  # no such request at all
    maps.flows.update(pack_flow_key(("10.0.0.1", "10.0.0.2", 9003, 80)), e.pack())
    ctl.set_static(("10.0.0.1", "10.0.0.2", 9004, 80), 3)
    res = gc(maps, grace_s=10.0)
    # the dead owner's request goes; the expired one of a live owner stays, scavenged (the
    # policy had flagged it at registration already)
    assert res.requests_removed == [777] and maps.request_records()[old.id].scavenged
    assert res.flows_demoted == 2 and res.flows_removed == 0
    views = {v.key.sport: v for v in ctl.flows()}
    assert set(views) == {9000, 9001, 9002, 9003, 9004}
    assert views[9001].level == 7 and views[9001].scavenged  # its request's flag
    for sp in (9002, 9003):  # orphans: a static scavenger entry, never a higher level
        assert views[sp].level == 7 and views[sp].entry.stage == STAGE_ORPHAN
        assert views[sp].entry.request_id == 0
    assert views[9000].entry.request_id == live.id and views[9004].level == 3
    assert set(maps.request_records()) == {live.id, old.id}
    # orphans that sent nothing for longer than the grace are removed by a later gc
    res = gc(maps, grace_s=10.0, now_ns=time.monotonic_ns() + 11_000_000_000)
    assert res.flows_removed == 2 and res.requests_scavenged == []
    assert {v.key.sport for v in ctl.flows()} == {9000, 9001, 9004}
    with pytest.raises(ValueError, match="grace"):
        gc(maps, grace_s=-1)


@pytest.mark.privileged
def test_owner_judged_by_pid_start_time_and_pid_namespace():
    me = Owner.of()
    assert me.start > 0 and me.pidns > 0 and owner_alive(me)
    assert not owner_alive(Owner(me.pid, me.start + 1, me.pidns))  # a recycled pid is not the owner
    p = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sleep", "30"])
    try:
        for _ in range(100):  # the sleeper: pid 1 of its new namespace
            kids = [int(c) for c in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
            if kids:
                break
            time.sleep(0.02)
        child = kids[0]
        ns = Owner.of(child).pidns
        assert ns != me.pidns
        inner = Owner(1, Owner.of(child).start, ns)  # how the sleeper sees itself
        assert owner_alive(inner)
        assert not owner_alive(Owner(2, inner.start, ns))  # no pid 2 in that namespace
    finally:
        p.kill()
        p.wait()
    for _ in range(100):  # the sleeper dies with unshare (--kill-child), then its namespace
        if not owner_alive(inner):
            break
        time.sleep(0.05)
    assert not owner_alive(inner)  # its namespace is gone


@pytest.mark.privileged
def test_threads_register_concurrently_without_loss(ctl, maps):
    errors: list[BaseException] = []
    reqs = []
    lock = threading.Lock()

    def work(t: int) -> None:
        try:
            for i in range(50):
                r = ctl.request(f"t{t}-{i}", slo_s=5.0)
                st = r.stage("kv_fetch", layer=2)
                for j in range(4):
                    st.add_flow(("10.1.0.1", f"10.2.{t}.{i}", 10000 + j, 80), bytes=j)
                r.at_layer(1)
                with lock:
                    reqs.append(r)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(maps.flows) == 8 * 50 * 4 and len(maps.requests) == 8 * 50
    assert {v.cursor for v in ctl.flows()} == {1}
    done = [threading.Thread(target=lambda rs=reqs[k::4]: [r.done() for r in rs]) for k in range(4)]
    for th in done:
        th.start()
    for th in done:
        th.join()
    assert len(maps.flows) == 0 and len(maps.requests) == 0


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from mfs_tc.controller import Controller
    from controller_helpers import TinyPolicy
    me, n, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ctl = Controller.open("veth0", policy=TinyPolicy(), root=root)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        r = ctl.request(f"p{{me}}-{{i}}", slo_s=30.0)
        r.stage("kv_fetch", layer=3).add_flows(
            [("10.3.0.1", f"10.{{me}}.{{i // 250}}.{{i % 250}}", 20000 + j, 80) for j in range(3)]
        )
        r.at_layer(i % 3)
    print("wrote", n, flush=True)
    """
)


@pytest.mark.privileged
def test_two_processes_writing_at_once_lose_no_entry(root, maps):
    n = 1500
    code = WRITER.format(tests=str(TESTS))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(me), str(n), str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for me in (1, 2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # start both together
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and f"wrote {n}" in out
    assert len(maps.flows) == 2 * n * 3
    recs = maps.request_records()
    assert len(recs) == 2 * n
    assert {r.owner_pid for r in recs.values()} == {p.pid for p in procs}
    # each request got a cursor slot of its own (the two claimed slots at the same time), and
    # its cursor, written through the writer's mapping, is in its slot
    slots = [r.slot for r in recs.values()]
    assert len(set(slots)) == 2 * n and max(slots) < CURSORS_MAX
    for me in (1, 2):
        for i in range(n):
            assert maps.request_cursor(recs[request_key(f"p{me}-{i}")]) == i % 3
    claims = dict(maps.cursor_owners.items())
    assert {int.from_bytes(k, "little") for k in claims} == set(slots)
    assert {CursorOwner.unpack(v).owner.pid for v in claims.values()} == {p.pid for p in procs}
    # both writers have exited without done(): gc finds their owners dead, removes their
    # requests and demotes their flows; a later gc removes the flows that stayed idle
    res = gc(maps, grace_s=3600)
    assert len(res.requests_removed) == 2 * n and res.flows_demoted == 2 * n * 3
    assert res.slots_freed == sorted(slots) and len(maps.cursor_owners) == 0  # crashed owners' slots
    res = gc(maps, grace_s=3600, now_ns=time.monotonic_ns() + 3601 * 10**9)
    assert res.flows_removed == 2 * n * 3
    assert len(maps.flows) == 0


# ---- CLI ------------------------------------------------------------------------------------------
def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from mfs_tc.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.privileged
def test_cli_set_flows_unset_gc(ctl, root, capsys):
    r = ctl.request("cli", slo_s=30.0)
    r.stage("kv_fetch", layer=2).add_flow(("10.0.0.1", "10.0.0.2", 11000, 80), bytes=4096)
    pr = ["--pin-root", str(root)]
    code, out, err = run_cli(
        [
            "set",
            IF,
            "--src",
            "fd77::1",
            "--dst",
            "fd77::2",
            "--sport",
            "5",
            "--dport",
            "6",
            "--proto",
            "udp",
            "--level",
            "3",
            *pr,
        ],
        capsys,
    )
    assert code == 0, err
    code, out, err = run_cli(["flows", IF, "--json", *pr], capsys)
    assert code == 0, err
    rows = {d["sport"]: d for d in json.loads(out)}
    assert rows[5]["mode"] == "static" and rows[5]["level"] == 3 and rows[5]["proto"] == "udp"
    assert rows[11000]["mode"] == "rli" and rows[11000]["level"] == 2 and rows[11000]["cursor"] == 0
    assert rows[11000]["request_id"] == r.id and rows[11000]["total_bytes"] == 4096
    code, out, err = run_cli(["flows", *pr], capsys)  # every attached interface, as a table
    assert code == 0 and "kv_fetch" in out and "[fd77::1]:5" in out and "LEVEL" in out
    code, out, err = run_cli(
        ["set", IF, "--src", "10.0.0.1", "--dst", "10.0.0.2", "--sport", "1", "--dport", "2", "--level", "9", *pr], capsys
    )
    assert code == 1 and "level 9 out of range" in err
    code, out, err = run_cli(
        ["unset", IF, "--src", "fd77::1", "--dst", "fd77::2", "--sport", "5", "--dport", "6", "--proto", "udp", *pr], capsys
    )
    assert code == 0, err
    code, out, err = run_cli(
        ["unset", IF, "--src", "fd77::1", "--dst", "fd77::2", "--sport", "5", "--dport", "6", "--proto", "udp", *pr], capsys
    )
    assert code == 1 and "no entry" in err
    code, out, err = run_cli(["gc", IF, "--json", *pr], capsys)
    assert code == 0 and json.loads(out)["flows_removed"] == 0
    code, out, err = run_cli(["flows", "nope0", *pr], capsys)
    assert code == 1 and "mfs-tc attach nope0" in err


# ---- entry cache and the real policies --------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.t = time.monotonic_ns()

    def __call__(self) -> int:
        return self.t


@pytest.mark.privileged
def test_entry_cache_shares_decisions_only_while_nothing_changed(maps, policy):
    clock = FakeClock()
    ctl = Controller(maps, policy, clock=clock, entry_cache_ns=1_000_000)
    req = ctl.request("cache", slo_s=5.0)
    st = req.stage("kv_fetch", layer=2)
    n0 = len(policy.calls)
    st.add_flow(("10.0.0.1", "10.0.0.2", 12000, 80), bytes=10)
    clock.t += 500_000
    st.add_flow(("10.0.0.1", "10.0.0.2", 12001, 80), bytes=10)  # same shape, 0.5 ms later: shared
    assert len(policy.calls) == n0 + 1
    st.add_flow(("10.0.0.1", "10.0.0.2", 12002, 80), bytes=11)  # other bytes: asked
    assert len(policy.calls) == n0 + 2
    clock.t += 2_000_000
    st.add_flow(("10.0.0.1", "10.0.0.2", 12003, 80), bytes=10)  # too old: asked
    assert len(policy.calls) == n0 + 3
    req.at_layer(1)
    st.add_flow(("10.0.0.1", "10.0.0.2", 12004, 80), bytes=10)  # request moved: asked
    assert len(policy.calls) == n0 + 4
    off = Controller(maps, policy, clock=clock, entry_cache_ns=0)
    st2 = off.request("nocache", slo_s=5.0).stage("kv_fetch", layer=2)
    for i in range(3):
        clock.t += 1
        st2.add_flow(("10.0.0.1", "10.0.0.2", 12100 + i, 80), bytes=10)
    assert len(policy.calls) == n0 + 7
    clock.t += 1
    st2.add_flows([("10.0.0.1", "10.0.0.2", 12200 + i, 80) for i in range(50)], bytes=10)
    assert len(policy.calls) == n0 + 8  # one call per distinct shape in a batch
    with pytest.raises(ValueError, match="entry_cache_ns"):
        Controller(maps, policy, entry_cache_ns=-1)


@pytest.mark.privileged
def test_register_flows_is_one_write_and_one_handle(ctl, maps, policy):
    req = ctl.request("r-fb", slo_s=30.0)
    st = req.stage("kv_fetch", layer=4)
    conns = [("10.0.0.1", "10.0.0.2", 14000 + i, 80) for i in range(300)] + [("fd77::1", "fd77::2", 1, 2, "udp")]
    n0 = len(policy.calls)
    fb = st.register_flows(conns + conns[:5], bytes=700)  # a connection listed twice is one flow
    assert isinstance(fb, FlowBatch) and len(fb) == 301 and len(policy.calls) == n0 + 1  # one decision
    assert set(fb.flow_keys()) == {FlowKey.unpack(pack_flow_key(c)) for c in conns}
    for c in conns:
        e = raw_entry(maps, c)
        assert e is not None and (e.gen, e.request_id, e.target_layer, e.total_bytes) == (fb.gen, req.id, 4, 700)
    assert {v.level for v in ctl.flows()} == {5}  # RLI 4 (>= 3: TinyPolicy's level 5)
    req.at_layer(4)
    assert {v.level for v in ctl.flows()} == {0}  # RLI 0
    # the kernel's counts of a flow are kept by a rewrite (update), and tell the policy `sent`
    key = pack_flow_key(conns[0])
    count_as_kernel(maps, key, FlowState(fb.gen, 0, 5000, 5))
    fb.update(target_layer=6)
    assert raw_entry(maps, conns[0]).target_layer == 6 and fb.states()[FlowKey.unpack(key)].sent_bytes == 5000
    assert sorted(c[2].sent for c in policy.calls[-2:]) == [0, 5000]  # once per distinct count
    # a connection registered again (single add_flow) belongs to the newer flow: the batch lets go
    fh = req.stage("p2d").add_flow(conns[1], bytes=9)
    assert len(fb) == 300 and pack_flow_key(conns[1]) not in fb.keys()
    req.update_estimate(remaining_bytes=1)  # rewrites the batch's flows, not the re-registered one
    assert raw_entry(maps, conns[1]).gen == fh.gen
    fb.remove()
    assert len(maps.flows) == 1 and raw_entry(maps, conns[1]).gen == fh.gen and len(fb) == 0
    with pytest.raises(MfsError, match="removed"):
        fb.update(bytes=1)
    fb2 = st.register_flows(conns[2:10])
    req.done()  # done() removes the batches' flows too
    assert len(maps.flows) == 0 and len(fb2) == 0
    with pytest.raises(MfsError, match="done"):
        st.register_flows(conns[:1])


@pytest.mark.privileged
def test_open_with_the_mfs_policy_by_name(root, maps):
    with Controller.open(IF, policy="mfs", root=root, ref_rate_bps=1e9) as c:
        assert c.policy.name == "mfs" and c.policy.config.nlevels == maps.config.nlevels
        now = time.monotonic()
        r = c.request("mfs-1", slo_s=0.5, arrival=now, remaining_bytes=1 << 20, remaining_compute_s=0.05)
        kv = r.stage("kv_fetch", bytes=1 << 20, layer=4)
        kv.add_flows([("10.0.0.1", "10.0.0.2", 13000 + i, 80) for i in range(4)], bytes=1 << 18)
        p2d = r.stage("p2d", bytes=1 << 24, compute_after_s=0.01)
        p2d.add_flow(("fd77::1", "fd77::2", 13100, 80, "udp"), bytes=1 << 24)
        views = {v.key.sport: v for v in c.flows()}
        assert {views[13000 + i].entry.mode_name for i in range(4)} == {"rli"}
        assert views[13100].entry.mode_name == "mlu"
        far = views[13000].level
        r.at_layer(4)
        assert {v.level for v in c.flows() if v.entry.mode_name == "rli"} == {1} and far > 1  # RLI 0
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        Controller.open(IF, policy="nope", root=root)
    with pytest.raises(ValueError, match="no config key"):
        Controller.open(IF, policy="mfs", root=root, bogus=1)


@pytest.mark.privileged
def test_open_without_permission_names_the_fix(root, maps):
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        from mfs_tc.controller import Controller
        from mfs_tc.errors import PermissionDeniedError
        from controller_helpers import TinyPolicy
        os.setgroups([]); os.setgid(65534); os.setuid(65534)  # after the imports: the checkout may be unreadable to nobody
        try:
            Controller.open({IF!r}, policy=TinyPolicy(), root={str(root)!r})
        except PermissionDeniedError as e:
            print("DENIED", e)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "DENIED" in r.stdout, r.stderr
    assert "root" in r.stdout and "--group" in r.stdout


@pytest.mark.privileged
def test_flow_update_keeps_oracle_fields(ctl, policy):
    req = ctl.request("oracle", slo_s=5.0)
    fh = req.stage("p2d").add_flow(("10.0.0.1", "10.0.0.2", 14000, 80), bytes=100)
    fh.update(true_remaining_work_ns=123)
    assert policy.calls[-1][2].true_remaining_work_ns == 123
    fh.flow.true_remaining_work_ns = 456  # the testbed's pattern: set the field, then update()
    fh.update(bytes=200)
    assert policy.calls[-1][2].true_remaining_work_ns == 456 and policy.calls[-1][2].bytes == 200
    fh.remove()
    assert fh.read() is None
    with pytest.raises(MfsError, match="removed"):
        fh.update(bytes=1)


def test_cli_policy_show(capsys):
    code, out, err = run_cli(["policy", "show", "--json"], capsys)
    assert code == 0, err
    d = json.loads(out)
    assert d["policy"] == "mfs" and d["levels"] == 8
    code, out, err = run_cli(["policy", "show", "--policy", "sjf", "--levels", "4"], capsys)
    assert code == 0 and "policy: sjf" in out and "levels: 4" in out
    code, out, err = run_cli(["policy", "show", "--policy", "nope"], capsys)
    assert code == 1 and "unknown policy 'nope'" in err


@pytest.mark.privileged
def test_wall_clock_deadlines_converted_once_per_host(ctl):
    """A deadline from another host's request metadata (UNIX time) becomes this host's
    CLOCK_MONOTONIC deadline at registration; the conversion error is the clocks' offset."""
    from mfs_tc.controller import wall_to_monotonic_ns

    w, m = time.time_ns(), time.monotonic_ns()
    assert abs(wall_to_monotonic_ns(w) - m) < 2_000_000
    req = ctl.request("wall-1", deadline_wall=time.time() + 2.0)
    assert abs(req.deadline_ns - (time.monotonic_ns() + 2_000_000_000)) < 20_000_000
    assert req.read_record().deadline_ns == req.deadline_ns
    req2 = ctl.request("wall-2", slo_s=0.5, arrival_wall=time.time() - 0.1)
    assert abs(req2.deadline_ns - (time.monotonic_ns() + 400_000_000)) < 20_000_000
    with pytest.raises(ValueError, match="clock"):
        ctl.request("wall-3", deadline_wall=time.time() - 1.0)
    with pytest.raises(ValueError, match="not both"):
        ctl.request("wall-4", slo_s=1.0, deadline_wall=time.time() + 1)
    with pytest.raises(ValueError, match="slo_s or deadline_wall"):
        ctl.request("wall-5")
    req.done()
    req2.done()
