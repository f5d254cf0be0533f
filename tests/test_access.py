"""The access group (issue 10 §3, issue 11 §5; docs/access.md), on the real kernel: an interface
attached with `--group G`, two serving processes of that group (uids 64101, 64102) and one
outside it (64103), each started as root, the project imported, then dropped to its uid (the
checkout need not be readable by them: tests/asuser.py).

- a member registers a flow on its own socket, it is marked on the wire, and its cursor moves it;
- a member cannot read, list or guess another member's request records, reach its sockets, or
  change config, levels, rules or 5-tuple entries (each attempt a clear one-line error, and the
  wire and the maps show nothing changed);
- a process outside the group gets the permission error naming the fix;
- neither can attach, detach, touch the qdisc, the filter or the pins;
- done() on the 5-tuple path removes only entries that are still its own.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from asuser import ids_argv
from attach_support import attached_veth, mfs
from nettools import VethPair, sh

from mfs_tc import access, layout, tcx
from mfs_tc.controller import Controller, PinnedMaps, pack_flow_key, request_key
from mfs_tc.errors import MfsError
from mfs_tc.layout import RequestRecord, default_dscp
from mfs_tc.loader import AttachOptions, attach
from mfs_tc.netlink import socket_in

pytestmark = pytest.mark.privileged

MEMBER_A, MEMBER_B, OUTSIDER = 64101, 64102, 64103
DSCP = default_dscp(8)
PORT = 7301

# member A: a long-lived serving process; commands on stdin, answers on stdout
SERVE = r"""
import socket, sys
from mfs_tc.controller import Controller
from controller_helpers import TinyPolicy
dev, ns, dst, dport = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctl = Controller.open(dev, netns=ns, policy=TinyPolicy())
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((dst, dport))
req = ctl.request("a", slo_s=600)
fh = req.stage("kv_fetch", layer=5).add_flow(s)   # TinyPolicy rli: 5 layers ahead -> level 5, 0 -> level 0
print("ready", req.id, s.fileno(), int(fh.on_socket), int(ctl.private_keys), int(ctl.maps.member), flush=True)
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "send":
            for _ in range(int(arg)):
                s.send(b"m" * 64)
        elif cmd == "layer":
            req.at_layer(int(arg))
        elif cmd == "read":
            req.read_record()
        elif cmd == "quit":
            break
        print("ok", flush=True)
    except Exception as e:
        print("error", type(e).__name__, str(e).replace("\n", " "), flush=True)
req.done()
ctl.close()
print("done", flush=True)
"""

# what another process tries against the maps; prints {attempt: "ok" | "<Error>: <message>"}
ATTEMPTS = r"""
import json, os, struct, sys
from mfs_tc import bpfsys
from mfs_tc.bpfsys import BpfMap
from mfs_tc.controller import Controller, PinnedMaps, pack_flow_key, request_key
from mfs_tc.layout import RequestRecord, pin_dir
from mfs_tc.errors import MfsError
from controller_helpers import TinyPolicy
dev, ns, what = sys.argv[1], sys.argv[2], sys.argv[3]
a_fd, a_pid = int(sys.argv[4]), int(sys.argv[5])
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except MfsError as e:
        out[name] = type(e).__name__ + ": " + str(e)
    except OSError as e:
        out[name] = "OSError: " + str(e)
attempt("open", lambda: out.setdefault("maps", PinnedMaps.open(dev, ns)))
m = out.pop("maps", None)
pins = pin_dir(dev, ns, __import__("mfs_tc.pinpath").pinpath.pin_root())
if m is not None:
    out["member"] = m.member
if what == "keys":
    guess = struct.pack("<Q", request_key("a"))   # A's id is known; its key (random) is not
    attempt("next_key", lambda: m.requests.next_key(None))
    attempt("items", lambda: list(m.requests.items()))
    attempt("lookup", lambda: m.requests.lookup(guess))
    attempt("write_guess", lambda: m.requests.update(guess, RequestRecord(cursor=5, owner_pid=os.getpid()).pack()))
    attempt("sk_other_fd", lambda: m.sk_flows.update(struct.pack("<i", a_fd), bytes(m.sk_flows.value_size)))
    attempt("proc_fd", lambda: open(f"/proc/{a_pid}/fd/{a_fd}", "rb"))
elif what == "config":
    attempt("config_write", lambda: m.config_map.update(b"\0" * 4, bytes(m.config_map.value_size)))
    attempt("levels_write", lambda: m.levels.update(b"\0" * 4, bytes(m.levels.value_size)))
    attempt("config_open_rw", lambda: BpfMap.open(pins / "config"))
    for name in ("rules", "flows", "flow_state", "stats"):
        attempt(f"{name}_open_ro", lambda name=name: BpfMap.open(pins / name, flags=bpfsys.BPF_F_RDONLY))
    attempt("rules_write", lambda: m.rules.update(b"\0" * 4, bytes(160)))
    ctl = Controller(m, TinyPolicy())
    attempt("set_static", lambda: ctl.set_static(("10.77.0.1", "10.77.0.2", 1, 2, "udp"), 0))
    attempt("five_tuple", lambda: ctl.request("b", slo_s=9).stage("p2d").add_flow(("10.77.0.1", "10.77.0.2", 3, 4)))
elif what == "freeze":
    import ctypes
    class Fd(ctypes.Structure):
        _fields_ = [("map_fd", ctypes.c_uint32)]
    r = bpfsys.bpf(22, Fd(m.requests.fd))   # BPF_MAP_FREEZE on its write-only fd
    out["freeze"] = "ok" if r == 0 else os.strerror(-r)
elif what == "controller":
    attempt("controller", lambda: Controller.open(dev, netns=ns, policy=TinyPolicy()))
elif what == "host":
    import subprocess
    for name, argv in (("qdisc", ["tc", "qdisc", "replace", "dev", dev, "root", "pfifo"]),
                       ("filter", ["tc", "filter", "del", "dev", dev, "egress"])):
        r = subprocess.run(argv, capture_output=True, text=True)
        out[name] = "ok" if r.returncode == 0 else "failed: " + r.stderr.strip()
    attempt("rename_pin", lambda: os.rename(pins / "config", pins / "config.x"))
    attempt("unlink_pin", lambda: os.unlink(pins / "requests"))
    attempt("new_pin", lambda: open(pins / "mine", "w"))
    attempt("link_pin", lambda: bpfsys.obj_get(pins / "tcx_egress"))
    from mfs_tc.cli import main
    for verb in ("attach", "detach"):
        out[verb] = main([verb, dev, "-n", ns, "--qdisc", "none"] if verb == "attach" else [verb, dev, "-n", ns])
print(json.dumps(out))
"""


def _groups(uid: int, gid: int | None) -> list[int]:
    return [gid] if gid is not None and uid != OUTSIDER else []


def run_as(uid: int, gid: int | None, what: str, net: VethPair, a_fd: int = -1, a_pid: int = -1) -> dict:
    argv = ids_argv(
        uid,
        uid,
        _groups(uid, gid),
        ATTEMPTS,
        net.dev_a,
        net.a,
        what,
        str(a_fd),
        str(a_pid),
        netns=net.a,
        preload="import controller_helpers",
    )
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


class Member:
    """Member A: a serving process of the group with one socket flow, driven over a pipe."""

    def __init__(self, net: VethPair, gid: int) -> None:
        argv = ids_argv(
            MEMBER_A,
            MEMBER_A,
            [gid],
            SERVE,
            net.dev_a,
            net.a,
            net.ip_b,
            str(PORT),
            netns=net.a,
            preload="import controller_helpers",
        )
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        assert line and line[0] == "ready", self.p.stderr.read() if self.p.poll() is not None else line
        self.key, self.fd = int(line[1]), int(line[2])
        self.on_socket, self.private_keys, self.member = (bool(int(x)) for x in line[3:6])

    def cmd(self, text: str) -> str:
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def close(self) -> str:
        out = self.cmd("quit")  # "done" once it finished its request
        self.p.wait(timeout=30)
        return out


@pytest.fixture(scope="module")
def group():
    name = f"mfsacc{os.getpid() % 100000}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture(scope="module")
def net(group):
    with attached_veth(qdisc="none", group=group[0]) as n:
        yield n


@pytest.fixture(scope="module")
def member(net, group):
    m = Member(net, group[1])
    try:
        yield m
    finally:
        if m.p.poll() is None:
            m.p.kill()
            m.p.wait()


@pytest.fixture
def rx(net):
    r = socket_in(net.b, socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    r.bind((net.ip_b, PORT))
    r.settimeout(5)
    yield r
    r.close()


def wire_levels(member: Member, rx: socket.socket, n: int = 4) -> list[int]:
    """Member A sends n datagrams; the level of each, from the DSCP the receiver sees."""
    assert member.cmd(f"send {n}") == "ok"
    out = []
    for _ in range(n):
        _d, anc, _f, _a = rx.recvmsg(2048, socket.CMSG_SPACE(1))
        tos = [c[2][0] for c in anc if c[0] == socket.IPPROTO_IP and c[1] == socket.IP_TOS]
        out.append(DSCP.index(tos[0] >> 2))
    return out


def _one_line(msg: str, *needles: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg, msg
    for n in needles:
        assert n in msg, msg


# ---- the modes attach gives ---------------------------------------------------------------------
def test_pins_carry_exactly_the_groups_share(net: VethPair, group) -> None:
    pin = layout.pin_dir(net.dev_a, net.a)
    want = {
        "config": 0o640,
        "levels": 0o640,
        "sk_flows": 0o660,
        "sk_state": 0o640,
        "requests": 0o620,
        "flows": 0o600,
        "flow_state": 0o600,
        "stats": 0o600,
        "rules": 0o600,
        "rule_stats": 0o600,
        "cursors": 0o600,  # members keep cursors in their records (docs/access.md)
        "cursor_owners": 0o600,
        "states": 0o600,  # members' flows keep their state in sk_state (docs/access.md)
        "state_owners": 0o600,
        tcx.LINK_PIN: 0o600,
    }
    seen = {}
    for p in pin.iterdir():
        st = os.stat(p)
        seen[p.name] = stat.S_IMODE(st.st_mode)
        assert st.st_uid == 0 and st.st_gid == (group[1] if st.st_mode & 0o070 else 0), p
    want = {k: v for k, v in want.items() if k in seen or k != tcx.LINK_PIN}
    assert seen == want
    for d in (pin, pin.parent, layout.PIN_ROOT):
        st = os.stat(d)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), d
    r = mfs("status", net.dev_a, "-n", net.a, "--json", timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["access_gid"] == group[1], r.stderr


def test_plan_shows_the_mode_changes(net: VethPair, group) -> None:
    r = mfs("plan", net.dev_a, "-n", net.a, "--qdisc", "none", "--group", group[0], "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    cmds = json.loads(r.stdout)["commands"]
    assert any(c.startswith(f"chgrp {group[1]} ") and "/requests" in c and "/flows " not in c for c in cmds), cmds
    assert {c.split()[1] for c in cmds if c.startswith("chmod")} == {"0620", "0640", "0660"}


# ---- a member ----------------------------------------------------------------------------------
def test_member_marks_its_own_socket_and_moves_its_cursor(net: VethPair, member: Member, rx) -> None:
    assert member.on_socket and member.member and member.private_keys
    assert member.key != request_key("a")  # a random key, not the id's hash anybody can compute
    with PinnedMaps.open(net.dev_a, net.a) as maps:  # root reads what the member wrote
        rec = RequestRecord.unpack(maps.requests.lookup(struct.pack("<Q", member.key)))
        assert rec.owner_pid == member.p.pid
    assert wire_levels(member, rx) == [5] * 4
    assert member.cmd("layer 5") == "ok"  # one write of its own record: the flow is at its layer now
    assert wire_levels(member, rx) == [0] * 4
    assert member.cmd("layer 0") == "ok"
    assert wire_levels(member, rx) == [5] * 4
    got = member.cmd("read")  # its own record cannot be read back either: write-only
    _one_line(got, "PermissionDeniedError", "write-only")


def test_member_cannot_read_list_or_guess_request_keys(net: VethPair, group, member: Member, rx) -> None:
    out = run_as(MEMBER_B, group[1], "keys", net, member.fd, member.p.pid)
    assert out["open"] == "ok" and out["member"] is True
    for k in ("next_key", "items", "lookup"):
        _one_line(out[k], "PermissionDeniedError", "Operation not permitted", "write-only")
    assert out["write_guess"] == "ok"  # B may write a record of its own, under any key it picks ...
    assert wire_levels(member, rx) == [5] * 4  # ... but the hash of A's id is not A's key: A is untouched
    with PinnedMaps.open(net.dev_a, net.a) as maps:
        rec = RequestRecord.unpack(maps.requests.lookup(struct.pack("<Q", member.key)))
        assert rec.cursor == 0


def test_member_cannot_reach_another_members_socket(net: VethPair, group, member: Member, rx) -> None:
    out = run_as(MEMBER_B, group[1], "keys", net, member.fd, member.p.pid)
    assert out["sk_other_fd"] != "ok" and "BpfSyscallError" in out["sk_other_fd"], out  # an fd of B's, not A's
    assert out["proc_fd"].startswith("OSError") and "Permission denied" in out["proc_fd"], out
    assert wire_levels(member, rx) == [5] * 4


def test_member_cannot_change_config_levels_rules_or_5_tuples(net: VethPair, group, member: Member, rx) -> None:
    with PinnedMaps.open(net.dev_a, net.a) as maps:
        before = (
            maps.config_map.lookup(b"\0" * 4),
            [maps.levels.lookup(i.to_bytes(4, "little")) for i in range(8)],
            list(maps.rules.items()),
            len(maps.flows),
        )
    out = run_as(MEMBER_B, group[1], "config", net)
    for k in ("config_write", "levels_write"):
        _one_line(out[k], "PermissionDeniedError", "read-only", "needs root")
    _one_line(out["config_open_rw"], "PermissionDeniedError", "Permission denied")
    for name in ("rules", "flows", "flow_state", "stats"):
        _one_line(out[f"{name}_open_ro"], "PermissionDeniedError", "Permission denied")
    _one_line(out["rules_write"], "PermissionDeniedError", "root only", "docs/access.md")
    for k in ("set_static", "five_tuple"):
        _one_line(out[k], "PermissionDeniedError", "flows: root only", "register the connected socket")
    with PinnedMaps.open(net.dev_a, net.a) as maps:
        after = (
            maps.config_map.lookup(b"\0" * 4),
            [maps.levels.lookup(i.to_bytes(4, "little")) for i in range(8)],
            list(maps.rules.items()),
            len(maps.flows),
        )
    assert after == before
    assert wire_levels(member, rx) == [5] * 4  # the classifier still runs with its config


# ---- outside the group, and the host ------------------------------------------------------------
def test_non_member_gets_the_permission_error_naming_the_fix(net: VethPair, group) -> None:
    out = run_as(OUTSIDER, group[1], "controller", net)
    _one_line(
        out["controller"],
        "PermissionDeniedError",
        f"uid {OUTSIDER}",
        f"is not in {group[0]}",
        f"usermod -aG {group[0]}",
        "or run it as root",
    )


@pytest.mark.parametrize("uid", [MEMBER_B, OUTSIDER])
def test_neither_can_attach_detach_or_touch_the_qdisc(net: VethPair, group, uid: int) -> None:
    def snapshot():
        pin = layout.pin_dir(net.dev_a, net.a)
        return (
            sh("tc", "qdisc", "show", "dev", net.dev_a, ns=net.a),
            sh("tc", "filter", "show", "dev", net.dev_a, "egress", ns=net.a),
            tcx.egress_progs(int(sh("cat", f"/sys/class/net/{net.dev_a}/ifindex", ns=net.a)), net.a),
            sorted((p.name, os.stat(p).st_mode, os.stat(p).st_gid) for p in pin.iterdir()),
        )

    before = snapshot()
    out = run_as(uid, group[1], "host", net)
    assert out["qdisc"].startswith("failed") and "Operation not permitted" in out["qdisc"], out
    assert out["filter"].startswith("failed"), out
    for k in ("rename_pin", "unlink_pin", "new_pin"):
        assert out[k].startswith("OSError") and ("Permission denied" in out[k] or "not permitted" in out[k]), out
    _one_line(out["link_pin"], "PermissionDeniedError", "Permission denied")
    assert out["attach"] == 1 and out["detach"] == 1, out
    assert snapshot() == before


# ---- done() on the 5-tuple path (root controllers) ----------------------------------------------
OTHER_WRITER = r"""
import sys
sys.path.insert(0, sys.argv[3])
from mfs_tc.controller import Controller
from controller_helpers import TinyPolicy
dev, ns, gen = sys.argv[1], sys.argv[2], int(sys.argv[4])
ctl = Controller.open(dev, netns=ns, policy=TinyPolicy(), private_keys=False)
ctl.registrations.gen = gen - 1   # the very gen the first controller used: only the owner tells them apart
req = ctl.request("shared", slo_s=600)
fh = req.stage("p2d").add_flow(("10.77.0.1", "10.77.0.2", 45001, 9, "udp"), bytes=100)
assert fh.gen == gen
print("registered", flush=True)
sys.stdin.readline()
"""


def test_done_leaves_a_5_tuple_entry_another_process_registered_since(net: VethPair) -> None:
    """Two root controllers register the same 5-tuple under the same request id (so the same
    hashed key) and even the same gen; the first one's done() must not remove the second's
    entry (nor its request record): the record's owner (pid + start time) is not the first."""
    tup = ("10.77.0.1", "10.77.0.2", 45001, 9, "udp")
    tests = str(Path(__file__).resolve().parent)
    ctl = Controller.open(net.dev_a, netns=net.a, policy="mfs", private_keys=False)
    other = None
    try:
        req = ctl.request("shared", slo_s=600)
        fh = req.stage("p2d").add_flow(tup, bytes=100)
        other = subprocess.Popen(
            [sys.executable, "-c", OTHER_WRITER, net.dev_a, net.a, tests, str(fh.gen)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert other.stdout.readline().strip() == "registered", other.stderr.read()
        key = fh.key
        theirs = ctl.maps.flows.lookup(key)
        assert theirs is not None
        req.done()
        assert ctl.maps.flows.lookup(key) == theirs  # the other process's entry stays
        rec = ctl.maps.requests.lookup(struct.pack("<Q", request_key("shared")))
        assert rec is not None and RequestRecord.unpack(rec).owner_pid == other.pid  # and its record
        # its own entries it does remove
        mine = ctl.request("mine", slo_s=600)
        k2 = mine.stage("p2d").add_flow(("10.77.0.1", "10.77.0.2", 45002, 9, "udp"), bytes=1).key
        mine.done()
        assert ctl.maps.flows.lookup(k2) is None
        assert ctl.maps.requests.lookup(struct.pack("<Q", request_key("mine"))) is None
    finally:
        if other is not None:
            other.communicate("x\n", timeout=30)
        ctl.maps.flows.delete(pack_flow_key(tup))
        ctl.close()


# ---- taking the group away ---------------------------------------------------------------------
def test_reattach_without_group_makes_the_pins_root_only(net: VethPair, group, member: Member, rx) -> None:
    """Re-attach without --group: every pin is root:root 0600 again and a member can no longer
    open them; fds a running member already holds keep working (they are capabilities: revoke
    by restarting the serving processes, or detach). Then the group is given back."""
    try:
        attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))
        pin = layout.pin_dir(net.dev_a, net.a)
        assert {(stat.S_IMODE(os.stat(p).st_mode), os.stat(p).st_gid) for p in pin.iterdir()} == {(0o600, 0)}
        out = run_as(MEMBER_B, group[1], "controller", net)
        _one_line(out["controller"], "PermissionDeniedError", "root's only", "--group GROUP")
        assert member.cmd("layer 5") == "ok"  # an fd opened before: still valid
        assert wire_levels(member, rx) == [0] * 4
        assert member.cmd("layer 0") == "ok"
    finally:
        attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none", group=group[0]))
    assert access.pins_gid(layout.pin_dir(net.dev_a, net.a)) == group[1]
    assert member.close() == "done" and member.p.returncode == 0


def test_a_member_freezing_requests_is_reported(net: VethPair, group) -> None:
    """Since Linux 6.5 BPF_MAP_FREEZE needs only a writable fd (before: CAP_BPF). A member that
    freezes `requests` denies service (no controller can write records any more), changes no
    priority; status reports it and the error names the fix (docs/access.md). Runs last: the
    module's maps stay frozen."""
    out = run_as(MEMBER_B, group[1], "freeze", net)
    if access.kernel_version() < (6, 5):
        assert out["freeze"] == "Operation not permitted", out
        return
    assert out["freeze"] == "ok", out
    r = mfs("status", net.dev_a, "-n", net.a, timeout=60)
    assert "warning: map requests is frozen" in r.stdout and "detach and attach again" in r.stdout, r.stdout
    assert f"access group {group[0]} (gid {group[1]})" in r.stdout, r.stdout
    with Controller.open(net.dev_a, netns=net.a, policy="mfs") as ctl:
        with pytest.raises(MfsError, match=r"requests is frozen .*detach and attach again"):
            ctl.request("after-freeze", slo_s=9)


def test_group_must_exist_and_not_be_root() -> None:
    with pytest.raises(MfsError, match="no such group: create it"):
        AttachOptions("veth0", qdisc="none", group="no-such-group-mfs").validate_static()
    with pytest.raises(MfsError, match="root's group"):
        AttachOptions("veth0", qdisc="none", group=0).validate_static()
