#!/usr/bin/env python3
"""Kernel check of the classifier and the qdisc backend, run inside a throwaway VM by
tools/vm_check.sh (or by hand on any root shell whose kernel is under test).

Steps (each recorded in the result; the first failure stops the run):
  verifier  compile + load bpf/mfs_classifier.c through mfs_tc.loader.compile_classifier()
            against maps pinned in a private directory (the verifier passes, or the load fails)
  attach    a netns + veth pair, attach(AttachOptions(..., qdisc=<qdisc>)); the backend is the
            expected one and `tc qdisc show` shows it (ets: K bands, all K strict)
  classify  two TCP flows with static levels 1 and 5 (K = 8) sent at once; the qdisc class of each
            level carries that flow's bytes (`tc -s -j class show`), no other class carries
            anything of size, and `mfs-tc status --json` per-level bytes agree
  access    re-attach with an access group (numeric gid, docs/access.md) with
            kernel.unprivileged_bpf_disabled=2 (Debian's default); a process dropped to a uid in
            that group opens the pins (BPF_OBJ_GET as non-root), registers its own UDP socket at
            level 3 (the receiver sees that level's DSCP), is refused get_next_key on requests and
            writes to config (EPERM), and tries BPF_MAP_FREEZE (recorded: refused before 6.5)
  detach    detach() restores `tc qdisc show` / `tc filter show` and removes the pins

Prints one line `MFS_VM_RESULT {json}` and exits 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mfs_tc import bpfsys, layout  # noqa: E402
from mfs_tc.backends import HANDLE  # noqa: E402
from mfs_tc.cursors import CursorSlots  # noqa: E402
from mfs_tc.entry import FlowEntry  # noqa: E402
from mfs_tc.layout import FlowKey  # noqa: E402
from mfs_tc.loader import AttachOptions, attach, compile_classifier, detach  # noqa: E402
from mfs_tc.netlink import socket_in  # noqa: E402

RESULT_TAG = "MFS_VM_RESULT"
IP_A, IP_B = "10.78.0.1", "10.78.0.2"  # only inside the namespaces this script makes
PORTS = ((45001, 9101), (45002, 9102))  # (sport, dport) of the higher, then the lower flow


def flow_levels(nlevels: int) -> tuple[int, int]:
    """The two flows' levels: 1 and 5 with K = 8; clipped into 0..K-1 for smaller K."""
    if nlevels <= 2:
        return 0, 1
    return 1, min(5, nlevels - 1)


class CheckFailed(Exception):
    """A step's assertion did not hold (its message says what was seen)."""


def sh(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


@dataclass
class Net:
    """Two namespaces joined by a veth pair: dev_a in a (mfs-tc attaches here), dev_b in b."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    dev_a: str = "mfsv0"
    dev_b: str = "mfsv1"

    @property
    def a(self) -> str:
        return f"mfsvm-a{self.tag}"

    @property
    def b(self) -> str:
        return f"mfsvm-b{self.tag}"

    def up(self) -> None:
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        sh("ip", "link", "add", self.dev_a, "type", "veth", "peer", "name", self.dev_b, ns=self.a)
        sh("ip", "link", "set", self.dev_b, "netns", self.b, ns=self.a)
        for ns, dev, ip in ((self.a, self.dev_a, IP_A), (self.b, self.dev_b, IP_B)):
            sh("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)

    def down(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def tc(self, *args: str) -> str:
        return sh("tc", *args, ns=self.a)

    def tc_json(self, *args: str) -> list[dict]:
        out = sh("tc", "-j", *args, ns=self.a)
        return json.loads(out) if out.strip() else []


# ---- step (a): verifier -----------------------------------------------------------------------
def step_verifier() -> dict:
    bpfsys.ensure_bpffs()
    pin = Path("/sys/fs/bpf") / f"mfs-vmcheck-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    pin.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        b, fn = compile_classifier(pin)
        secs = time.monotonic() - t0
        require(fn.fd >= 0, f"no program fd ({fn.fd})")
        pinned = sorted(p.name for p in pin.iterdir())
        require(set(layout.MAP_NAMES) <= set(pinned), f"maps pinned: {pinned}")
        # the cursor array is mapped into user space (BPF_F_MMAPABLE), as controllers map it
        with bpfsys.BpfMap.open(pin / "cursors") as cm, bpfsys.BpfMap.open(pin / "cursor_owners") as om:
            cs = CursorSlots.open(cm, om)
            mmap_cursors = cs is not None
            if cs is not None:
                cs.write(3, -42)
                require(cm.lookup((3).to_bytes(4, "little"))[:4] == (-42).to_bytes(4, "little", signed=True), "mmap write")
                cs.close()
        del b
    finally:
        for p in pin.iterdir():
            p.unlink()
        pin.rmdir()
    # the socket-storage variant loaded (else compile_classifier fell back to the 5-tuple one)
    return {
        "compile_load_s": round(secs, 2),
        "maps_pinned": pinned,
        "socket_storage": set(layout.SK_MAP_NAMES) <= set(pinned),
        "mmap_cursors": mmap_cursors,
    }


# ---- step (b): attach -------------------------------------------------------------------------
def step_attach(net: Net, qdisc: str, expect: str, levels: int, rate_bps: int | None) -> dict:
    st = attach(AttachOptions(net.dev_a, netns=net.a, levels=levels, qdisc=qdisc, rate_bps=rate_bps))
    require(st.backend == expect, f"backend {st.backend!r}, expected {expect!r}")
    roots = [q for q in net.tc_json("qdisc", "show", "dev", net.dev_a) if q.get("root")]
    require(len(roots) == 1, f"root qdiscs: {roots}")
    root = roots[0]
    require(
        root.get("kind") == expect and root.get("handle") == HANDLE,
        f"root qdisc is {root.get('kind')} {root.get('handle')}, expected {expect} {HANDLE}",
    )
    info: dict[str, Any] = {"backend": st.backend, "root": {k: root.get(k) for k in ("kind", "handle", "options")}}
    if expect == "ets":
        opts = root.get("options", {})
        text = net.tc("qdisc", "show", "dev", net.dev_a)
        require(f"bands {levels} strict {levels}" in text, f"not {levels} strict bands: {text.strip()}")
        info["tc_qdisc_show"] = text.strip().splitlines()
        info["bands"] = opts.get("bands")
        info["strict"] = opts.get("strict")
    filt = net.tc("filter", "show", "dev", net.dev_a, "egress")
    require("mfs_egress" in filt and "direct-action" in filt, f"egress filter: {filt.strip()}")
    return info


# ---- step (c): classification -----------------------------------------------------------------


class Sink(threading.Thread):
    """Accepts one connection and counts what it receives until the peer closes."""

    def __init__(self, ns: str, port: int) -> None:
        super().__init__(daemon=True)
        self.srv = socket_in(ns)
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind((IP_B, port))
        self.srv.listen(1)
        self.srv.settimeout(30)
        self.received = 0

    def run(self) -> None:
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        conn.settimeout(30)
        with conn:
            while True:
                try:
                    n = len(conn.recv(1 << 20))
                except OSError:
                    break
                if n == 0:
                    break
                self.received += n
        self.srv.close()


class Source(threading.Thread):
    """Sends from a fixed source port as fast as it can for `secs`, then closes."""

    def __init__(self, ns: str, sport: int, dport: int, secs: float) -> None:
        super().__init__(daemon=True)
        self.sock = socket_in(ns)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((IP_A, sport))
        self.sock.settimeout(30)
        self.dport = dport
        self.secs = secs
        self.sent = 0
        self.error: str | None = None

    def run(self) -> None:
        buf = b"\x5a" * (64 << 10)
        try:
            with self.sock:
                end = time.monotonic() + self.secs
                while time.monotonic() < end:
                    self.sent += self.sock.send(buf)
        except OSError as exc:
            self.error = str(exc)


CLASS_RE = re.compile(r"^class \S+ (\S+) .*?\n\s*Sent (\d+) bytes", re.M | re.S)


def _class_bytes(net: Net) -> dict[str, int]:
    """Bytes sent per qdisc class, from the text of `tc -s class show` (iproute2 6.1 prints
    class statistics as text even with -j)."""
    text = net.tc("-s", "class", "show", "dev", net.dev_a)
    out = {}
    for block in re.split(r"\n(?=class )", text):
        m = CLASS_RE.match(block)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def _status(net: Net) -> dict:
    exe = Path(sys.executable).parent / "mfs-tc"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mfs_tc.cli"]
    r = subprocess.run(cmd + ["status", net.dev_a, "--netns", net.a, "--json"], capture_output=True, text=True, timeout=120)
    require(r.returncode == 0, f"mfs-tc status failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout)


def step_classify(net: Net, levels: int, secs: float) -> dict:
    from mfs_tc.backends import Backend

    flows = dict(zip(flow_levels(levels), PORTS, strict=False))  # level: (sport, dport)
    pin = layout.pin_dir(net.dev_a, net.a)
    with bpfsys.BpfMap.open(pin / "flows") as m:
        for lv, (sport, dport) in flows.items():
            m.update(FlowKey(IP_A, IP_B, sport, dport).pack(), FlowEntry.static(lv).pack())
    cls_before = _class_bytes(net)
    st_before = {lv["level"]: lv["bytes"] for lv in _status(net)["levels"]}
    sinks = {lv: Sink(net.b, dport) for lv, (_s, dport) in flows.items()}
    sources = {lv: Source(net.a, sport, dport, secs) for lv, (sport, dport) in flows.items()}
    for lv in flows:
        sinks[lv].start()
        sources[lv].sock.connect((IP_B, flows[lv][1]))
    for s in sources.values():
        s.start()
    for s in sources.values():
        s.join(secs + 60)
    for s in sinks.values():
        s.join(60)
    errors = {lv: s.error for lv, s in sources.items() if s.error}
    require(not errors, f"senders failed: {errors}")
    time.sleep(0.2)
    cls_after = _class_bytes(net)
    status = _status(net)
    st_after = {lv["level"]: lv["bytes"] for lv in status["levels"]}
    backend = Backend(status["backend"], levels)
    per_class = {
        backend.class_of(lv): cls_after.get(backend.class_of(lv), 0) - cls_before.get(backend.class_of(lv), 0)
        for lv in range(levels)
    }
    per_level = {lv: st_after[lv] - st_before[lv] for lv in range(levels)}
    delivered = {lv: sinks[lv].received for lv in flows}
    offered = {lv: sources[lv].sent for lv in flows}
    detail = {"class_bytes": per_class, "status_level_bytes": per_level, "delivered": delivered, "offered": offered}
    for lv in flows:
        require(
            delivered[lv] == offered[lv] and offered[lv] > 1_000_000,
            f"flow at level {lv}: delivered {delivered[lv]} of {offered[lv]} bytes: {detail}",
        )
        cb = per_class[backend.class_of(lv)]
        # the class carries the flow's frames: payload + headers (a few % at MTU 1500), retransmits
        require(
            offered[lv] <= cb <= 1.10 * offered[lv] + 200_000,
            f"class {backend.class_of(lv)} (level {lv}) carried {cb} bytes for {offered[lv]} sent: {detail}",
        )
        sb = per_level[lv]
        # the classifier counts skb->len (a GSO packet once, with one set of headers), the qdisc
        # counts the wire length of every segment: payload <= status <= class
        require(
            offered[lv] <= sb <= cb + 20_000,
            f"status says {sb} bytes at level {lv}, the qdisc class {cb}, {offered[lv]} sent: {detail}",
        )
    other = sum(b for c, b in per_class.items() if c not in {backend.class_of(lv) for lv in flows})
    require(other < 100_000, f"{other} bytes went through classes of other levels: {detail}")
    require(status["attached"] and not status["problems"], f"status problems: {status['problems']}")
    return detail


# ---- step (d): detach -------------------------------------------------------------------------
def snapshot(net: Net) -> dict:
    return {
        "qdisc": net.tc("qdisc", "show", "dev", net.dev_a),
        "egress": net.tc("filter", "show", "dev", net.dev_a, "egress"),
        "pins": layout.pin_dir(net.dev_a, net.a).exists(),
    }


# ---- step (d): a serving process without root ---------------------------------------------------
ACCESS_GID, ACCESS_UID, ACCESS_LEVEL, ACCESS_PORT = 64500, 64501, 3, 9201
ACCESS_CHILD = r"""
import ctypes, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from mfs_tc import bpfsys
from mfs_tc.controller import Controller
from mfs_tc.entry import FlowEntry
from mfs_tc.errors import MfsError
from mfs_tc.policy.base import Policy

class Static(Policy):
    name = "static"
    def entry(self, request, stage, flow, now_ns):
        return FlowEntry.static(int(sys.argv[4]))
    def is_hopeless(self, request, now_ns):
        return False

os.setgroups([int(sys.argv[5])]); os.setgid(int(sys.argv[6])); os.setuid(int(sys.argv[6]))
os.chdir("/")
out = {"uid": os.getuid()}
ctl = Controller.open(sys.argv[2], netns=sys.argv[3], policy=Static())
out["member"], out["private_keys"] = ctl.maps.member, ctl.private_keys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[7], int(sys.argv[8])))
req = ctl.request("vm", slo_s=60)
out["on_socket"] = req.stage("p2d").add_flow(s).on_socket
for _ in range(5):
    s.send(b"v" * 64)
for name, fn in (("next_key", lambda: ctl.maps.requests.next_key(None)),
                 ("config_write", lambda: ctl.maps.config_map.update(b"\0" * 4, bytes(ctl.maps.config_map.value_size)))):
    try:
        fn()
        out[name] = "ok"
    except MfsError as e:
        out[name] = str(e)
class Fd(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32)]
r = bpfsys.bpf(22, Fd(ctl.maps.requests.fd))
out["freeze"] = "ok" if r == 0 else os.strerror(-r)
print(json.dumps(out))
"""


def step_access(net: Net, qdisc: str, levels: int, rate_bps: int | None) -> dict:
    sysctl = Path("/proc/sys/kernel/unprivileged_bpf_disabled")
    found = int(sysctl.read_text())
    if found == 0:
        sysctl.write_text("2")  # Debian's default (CONFIG_BPF_UNPRIV_DEFAULT_OFF): what is checked
    value = int(sysctl.read_text())
    attach(AttachOptions(net.dev_a, netns=net.a, levels=levels, qdisc=qdisc, rate_bps=rate_bps, group=ACCESS_GID))
    pin = layout.pin_dir(net.dev_a, net.a)
    modes = {p.name: f"{os.stat(p).st_mode & 0o777:04o}:{os.stat(p).st_gid}" for p in sorted(pin.iterdir())}
    rx = socket_in(net.b, socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
    rx.bind((IP_B, ACCESS_PORT))
    rx.settimeout(10)
    try:
        r = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                net.a,
                sys.executable,
                "-c",
                ACCESS_CHILD,
                str(REPO),
                net.dev_a,
                net.a,
                str(ACCESS_LEVEL),
                str(ACCESS_GID),
                str(ACCESS_UID),
                IP_B,
                str(ACCESS_PORT),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        require(r.returncode == 0, f"the serving process failed: {r.stderr.strip()[-600:]}")
        child = json.loads(r.stdout.strip().splitlines()[-1])
        dscps = []
        for _ in range(5):
            _d, anc, _f, _a = rx.recvmsg(2048, socket.CMSG_SPACE(1))
            dscps += [c[2][0] >> 2 for c in anc if c[0] == socket.IPPROTO_IP and c[1] == socket.IP_TOS]
    finally:
        rx.close()
    want = layout.default_dscp(levels)[ACCESS_LEVEL]
    require(child["member"] and child["on_socket"], f"not a member socket flow: {child}")
    require(dscps == [want] * 5, f"the member's packets carried DSCP {dscps}, level {ACCESS_LEVEL} is {want}")
    require("write-only" in child["next_key"] and "read-only" in child["config_write"], f"refusals: {child}")
    return {
        "unprivileged_bpf_disabled": {"found": found, "checked": value},
        "pin_modes": modes,
        "child": child,
        "dscp_seen": dscps,
    }


def step_detach(net: Net, before: dict) -> dict:
    removed = detach(net.dev_a, net.a)
    after = snapshot(net)
    require(after == before, f"after detach {after}, before attach {before}")
    return {"removed": removed, "qdisc_after": after["qdisc"].strip()}


# ---- driver -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qdisc", default="auto", help="attach's --qdisc (default auto)")
    ap.add_argument("--expect-backend", default="ets", help="backend attach must pick (default ets)")
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--rate-bps", type=int, default=None, help="rate for an htb backend")
    ap.add_argument("--secs", type=float, default=2.0, help="traffic duration of the classify step")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("vm_check_inner.py needs root (netns, bpf, tc)", file=sys.stderr)
        return 2

    result: dict[str, Any] = {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "expect_backend": args.expect_backend,
        "steps": {},
        "ok": False,
    }
    t_start = time.monotonic()

    def run_step(name: str, fn: Callable[[], dict]) -> bool:
        t0 = time.monotonic()
        try:
            info = fn()
            result["steps"][name] = {"ok": True, "secs": round(time.monotonic() - t0, 2), **info}
            return True
        except Exception as exc:  # record and stop: the JSON line says which step and why
            result["steps"][name] = {
                "ok": False,
                "secs": round(time.monotonic() - t0, 2),
                "error": f"{type(exc).__name__}: {exc}",
            }
            traceback.print_exc(file=sys.stderr)
            return False

    net = Net()
    try:
        ok = run_step("verifier", step_verifier)
        if ok:
            net.up()
            before = snapshot(net)
            ok = run_step("attach", lambda: step_attach(net, args.qdisc, args.expect_backend, args.levels, args.rate_bps))
            if ok:
                ok = run_step("classify", lambda: step_classify(net, args.levels, args.secs))
            if ok:
                ok = run_step("access", lambda: step_access(net, args.qdisc, args.levels, args.rate_bps))
            # detach runs even after a failed attach/classify: it must leave the link clean
            ok = run_step("detach", lambda: step_detach(net, before)) and ok
        result["ok"] = ok
    finally:
        try:
            detach(net.dev_a, net.a)
        except Exception:
            pass
        net.down()
        result["secs"] = round(time.monotonic() - t_start, 2)
        print(f"{RESULT_TAG} {json.dumps(result, sort_keys=True)}", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
