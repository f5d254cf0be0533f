"""Attach and detach the classifier: bcc compile, pinned maps, clsact + cls_bpf filter, root qdisc.

attach(opts) is all-or-nothing: on any failure the steps already taken are undone. It is
idempotent: attaching again replaces the program and qdisc in place and keeps the pinned maps
(flows, requests, stats) so controllers keep working. detach() removes only what attach created,
restores the previous root qdisc, and unpins. What attach found and made is recorded in
/run/mfs-tc/<netns>/<ifname>.json (mfs_tc.attachment, with the tc queries), which detach and status read.

Only this module (and the benchmark tools) import bcc; the controller library never does. It
works on the maps through mfs_tc.maps and never imports the controller (the serving library).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import access, bpfsys, tcx
from .attachment import (
    FILTER_HANDLE,
    FILTER_NAME,
    FILTER_PREF,
    STATE_ROOT,
    AttachState,
    attached,
    describe_filter,
    egress_filters,
    foreign_filters,
    has_clsact,
    link_name,
    load_state,
    lock_path,
    our_filters,
    root_qdisc,
    save_state,
    state_path,
)
from .backends import BACKENDS, HANDLE, MIN_LEAF_RATE_BPS, Backend, min_htb_rate_bps, probe_qdisc_kinds
from .errors import KernelFeatureError, LayoutMismatchError, MfsError, PermissionDeniedError
from .ifacelock import interface_lock
from .layout import (
    C_TRUST_DSCP,
    DSCP_KEEP,
    MAP_NAMES,
    MAX_LEVELS,
    PIN_ROOT,
    SK_MAP_NAMES,
    default_dscp,
    netns_label,
    pin_dir,
)
from .maps import PinnedMaps, write_config
from .netlink import (
    check_ifname,
    check_netns,
    check_netns_name,
    ifindex,
    iproute,
    is_root,
    link_speed_bps,
    run_command,
    tc_json,
)
from .pinpath import HOST_BPFFS, RUN_BPFFS
from .pinroot import secure_pin_dir

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
EGRESS_PARENT = 0xFFFFFFF3  # clsact egress (ffff:fff3)
ETH_P_ALL = 0x0003
HOOKS = ("auto", "tcx", "clsact")


@dataclass
class AttachOptions:
    ifname: str
    netns: str | None = None
    levels: int = MAX_LEVELS
    qdisc: str = "auto"
    rate_bps: int | None = None
    dscp: list[int] | None = None  # None: the default table; []: keep DSCP unchanged
    default_level: int | None = None  # unknown flows' payload; None: levels - 2 (bulk)
    trust_dscp: bool = False
    control_level: int = 0  # unknown flows' pure control packets (SYN/FIN/RST/pure ACK)
    keep_dscp: list[int] = field(default_factory=list)  # DSCPs untracked traffic keeps
    hook: str = "auto"  # auto (tcx where the kernel has it), tcx, clsact
    group: str | int | None = None  # access group of serving processes (docs/access.md)
    gid: int | None = field(default=None, init=False)  # `group` resolved by validate

    def validate(self) -> None:
        check_ifname(self.ifname)
        if self.netns is not None:
            check_netns(self.netns)
        self.validate_static()

    def validate_static(self) -> None:
        """Everything validate() checks except that the namespace exists (a config may name
        one that appears later)."""
        check_ifname(self.ifname)
        check_netns_name(self.netns)
        if not 2 <= self.levels <= MAX_LEVELS:
            raise MfsError(f"--levels must be 2..{MAX_LEVELS}, got {self.levels}")
        self.default_level = self.resolved_default_level
        if not 0 <= self.control_level < self.levels:
            raise MfsError(f"--control-level must be 0..{self.levels - 1}, got {self.control_level}")
        bad = [d for d in self.keep_dscp if not 0 <= d < 64]
        if bad:
            raise MfsError(f"--keep-dscp values must be 0..63: {bad}")
        if self.hook not in HOOKS:
            raise MfsError(f"--hook must be {', '.join(HOOKS)}; got {self.hook!r}")
        self.gid = access.resolve_group(self.group)
        if self.qdisc not in ("auto",) + BACKENDS:
            raise MfsError(f"--qdisc must be auto, {', '.join(BACKENDS)}; got {self.qdisc!r}")
        if not 0 <= self.default_level < self.levels:
            raise MfsError(f"--default-level must be 0..{self.levels - 1}, got {self.default_level}")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise MfsError("--rate must be positive")
        if self.dscp:
            if len(self.dscp) != self.levels:
                raise MfsError(f"--dscp needs {self.levels} values (one per level), got {len(self.dscp)}")
            bad = [d for d in self.dscp if not (0 <= d < 64 or d == DSCP_KEEP)]
            if bad:
                raise MfsError(f"DSCP values must be 0..63 (or 'keep'): {bad}")

    @property
    def resolved_default_level(self) -> int:
        """The level of unknown flows' payload: `default_level`, or levels - 2 (bulk) when not
        given (what validate() sets it to)."""
        return self.levels - 2 if self.default_level is None else self.default_level

    def dscp_table(self) -> list[int]:
        if self.dscp is None:
            return default_dscp(self.levels)
        if not self.dscp:
            return [DSCP_KEEP] * self.levels
        return list(self.dscp)


def _locked(ifname: str, netns: str | None) -> AbstractContextManager[None]:
    where = f" (netns {netns})" if netns else ""
    path = lock_path(ifname, netns)
    return interface_lock(path, f"{ifname}{where}", prune=(path.parent, STATE_ROOT))


# ---- planning ---------------------------------------------------------------------------------
@dataclass
class Plan:
    opts: AttachOptions
    backend: Backend
    commands: list[list[str]]
    notes: list[str]

    def as_text(self) -> str:
        lines = [f"# {n}" for n in self.notes]
        lines += [" ".join(c) for c in self.commands]
        return "\n".join(lines)


def _is_default_root(q: dict[str, Any] | None) -> bool:
    """Kernel-made default root qdiscs carry handle 0: (noqueue, pfifo_fast, mq, fq_codel...)."""
    return q is None or q.get("handle") in ("0:", None)


def choose_backend(opts: AttachOptions, probe: dict[str, bool] | None = None) -> tuple[Backend, list[str]]:
    notes: list[str] = []
    rate = opts.rate_bps
    if rate is None:
        rate = link_speed_bps(opts.ifname, opts.netns)
    names = [opts.qdisc] if opts.qdisc != "auto" else ["ets", "mqprio", "htb"]
    if opts.qdisc == "auto" or opts.qdisc in ("ets", "mqprio"):
        probe = probe or probe_qdisc_kinds(tuple(n for n in names if n != "none"))
        missing = [n for n in names if not probe.get(n, True)]
        if missing:
            notes.append(f"kernel lacks qdisc {', '.join(missing)}")
        names = [n for n in names if probe.get(n, True)]
    if opts.qdisc != "auto" and opts.qdisc in ("ets", "mqprio") and not names:
        raise KernelFeatureError(
            f"this kernel has no {opts.qdisc} qdisc (CONFIG_NET_SCH_{opts.qdisc.upper()}); "
            "use --qdisc htb (with --rate) or --qdisc none"
        )
    if opts.qdisc == "auto" and "mqprio" in names:
        names.remove("mqprio")  # mqprio only enforces priority in NIC hardware: tried at apply time
        names.insert(1 if "ets" in names else 0, "mqprio")
    for n in names:
        if n == "htb":
            if not rate:
                if opts.qdisc == "htb" or n == names[-1]:
                    raise MfsError(
                        f"the HTB backend shapes at the link rate and {opts.ifname} reports no speed: pass --rate "
                        "(e.g. --rate 10gbit)"
                    )
                continue
            if rate < min_htb_rate_bps(opts.levels):
                raise MfsError(
                    f"--rate {rate}bit is below what HTB can shape with {opts.levels} levels: each level is "
                    f"guaranteed {MIN_LEAF_RATE_BPS // 1000}kbit, so the link needs at least "
                    f"{min_htb_rate_bps(opts.levels) // 1000}kbit (or use --qdisc none to only mark packets)"
                )
        return Backend(n, opts.levels, rate if n == "htb" else opts.rate_bps, opts.resolved_default_level), notes
    if opts.qdisc == "none":
        return Backend("none", opts.levels, None, opts.resolved_default_level), notes
    raise KernelFeatureError("no strict-priority qdisc available (ets, mqprio, htb); use --qdisc none")


def filter_command(ifname: str, pin: Path) -> list[str]:
    return [
        "tc",
        "filter",
        "replace",
        "dev",
        ifname,
        "egress",
        "pref",
        str(FILTER_PREF),
        "handle",
        str(FILTER_HANDLE),
        "bpf",
        "direct-action",
        "name",
        FILTER_NAME,
        f"# fd of {FILTER_NAME} compiled from bpf/mfs_classifier.c, maps pinned in {pin}",
    ]


def plan(opts: AttachOptions) -> Plan:
    """What attach would do, without doing it (root not needed except for the qdisc probe)."""
    opts.validate()
    backend, notes = choose_backend(opts)
    pin = pin_dir(opts.ifname, opts.netns)
    notes.insert(0, f"backend {backend.name}, {opts.levels} levels, pins in {pin}")
    cmds = [["mount", "-t", "bpf", "bpf", "/sys/fs/bpf", "# only if not mounted"]]
    cmds += backend.commands(opts.ifname)
    hook = opts.hook
    if hook == "auto":
        hook = "tcx" if _kernel_has_tcx(opts.netns) else "clsact"
    notes.insert(1, f"hook {hook}" + (" (tcx: the kernel has it)" if opts.hook == "auto" and hook == "tcx" else ""))
    if hook == "tcx":
        cmds.append(
            ["bpf", "link", "create", "tcx_egress", "dev", opts.ifname, "prog", FILTER_NAME, f"# pinned at {pin / tcx.LINK_PIN}"]
        )
    else:
        cmds.append(["tc", "qdisc", "add", "dev", opts.ifname, "clsact", "# only if absent"])
        cmds.append(filter_command(opts.ifname, pin))
    if opts.netns:
        cmds = [(["ip", "netns", "exec", opts.netns] + c) if c[0] == "tc" else c for c in cmds]
    cmds += _access_commands(opts.gid, pin)
    if opts.gid is not None:
        problem = access.member_open_problem()
        notes.append(
            f"access group {access.group_name(opts.gid)}: serving processes open the maps without root"
            + (f"; BUT {problem}" if problem else " (other pins stay root:root 0600)")
        )
    return Plan(opts, backend, cmds, notes)


def _access_commands(gid: int | None, pin: Path) -> list[list[str]]:
    """What attach does to the pins' owners and modes (access.MEMBER_ACCESS)."""
    if gid is None:
        return []
    shared = [n for n in MAP_NAMES + SK_MAP_NAMES if access.MEMBER_ACCESS.get(n)]
    by_mode: dict[int, list[str]] = {}
    for n in shared:
        by_mode.setdefault(access.pin_mode(n, True), []).append(str(pin / n))
    cmds = [["chgrp", str(gid)] + [str(pin / n) for n in shared]]
    cmds += [["chmod", f"{m:04o}"] + files for m, files in sorted(by_mode.items())]
    return cmds


def _kernel_has_tcx(netns: str | None) -> bool:
    """tcx is there when a query answers (root); without root, judged by the version (6.6+)."""
    if is_root():
        try:
            with iproute(netns) as ipr:
                lo = ipr.link_lookup(ifname="lo") or [1]
        except MfsError:
            lo = [1]
        return tcx.available(lo[0], netns)
    return access.kernel_version() >= (6, 6)


def _choose_hook(opts: AttachOptions, prev: AttachState | None, idx: int) -> str:
    """tcx where the kernel has it and no other clsact egress filter would be skipped (our
    program ends the egress hook with TC_ACT_OK, and tcx runs before clsact), else clsact; a
    re-attach keeps the hook it has."""
    if prev is not None:
        if opts.hook not in ("auto", prev.hook):
            raise MfsError(f"{opts.ifname} is attached with --hook {prev.hook}: detach first to change the hook")
        return prev.hook
    if opts.hook == "clsact":
        return "clsact"
    has = tcx.available(idx, opts.netns)
    others = [f for f in egress_filters(opts.ifname, opts.netns) if f.get("options")]
    if opts.hook == "tcx":
        if not has:
            raise KernelFeatureError("this kernel has no tcx (Linux 6.6+): use --hook clsact (or auto)")
        if others:
            raise MfsError(
                f"{opts.ifname} has clsact egress filters ({describe_filter(others[0])}) that a tcx classifier "
                "would make the kernel skip: use --hook clsact"
            )
        return "tcx"
    return "tcx" if has and not others else "clsact"


# ---- compile & maps ---------------------------------------------------------------------------
def _check_pins(pin: Path) -> bool:
    """True when maps are already pinned here (and compatible); raises on an incompatible layout
    (shape or version): the controller's checks, as a serving process would meet them."""
    present = [n for n in MAP_NAMES if (pin / n).exists()]
    if not present:
        return False
    if len(present) != len(MAP_NAMES):
        raise LayoutMismatchError(f"{pin} holds only {', '.join(present)}: a partial pin set; run `mfs-tc detach` first")
    PinnedMaps.open_dir(pin).close()
    return True


def compile_classifier(pin: Path, socket_storage: bool = True, src_dir: Path | None = None) -> tuple[Any, Any]:
    """Compile bpf/mfs_classifier.c with bcc, creating or reusing the maps pinned in `pin`.
    Returns (bpf, fn): bcc's BPF object and its loaded function (bcc ships no types). Where the
    program with socket storage does not load, the 5-tuple-only variant is used (no
    sk_flows/sk_state pins). `src_dir`: another directory holding
    mfs_classifier.c and mfs_maps.h (benchmarks compare an older version in the same run)."""
    try:
        from bcc import BPF  # noqa: PLC0415 - only attach needs LLVM
    except ImportError as exc:
        raise KernelFeatureError(
            "bcc is missing: install Debian's python3-bpfcc (sudo ./tools/install.sh); " "the PyPI package named bcc is unrelated"
        ) from exc
    bpf_dir = BPF_DIR if src_dir is None else Path(src_dir)
    src = bpf_dir / "mfs_classifier.c"
    kver = os.uname().release
    if not Path(f"/lib/modules/{kver}/build").exists():
        raise KernelFeatureError(
            f"no kernel headers at /lib/modules/{kver}/build: run sudo ./tools/install.sh "
            "(links linux-headers-amd64 where Debian has none for this kernel)"
        )
    cflags = [f"-I{bpf_dir}", f'-DMFS_PIN_DIR="{pin}"', "-Wno-unused-function"]
    if access.kernel_version() < access.TSTAMP_TYPE_SINCE:  # mlu/laxity read the clock on TCP too
        cflags.append("-DMFS_NO_TSTAMP_TYPE=1")
    # a kernel without BPF_F_MMAPABLE (< 5.5) gets a cursor array controllers cannot map (they
    # keep cursors in the request records, `mfs-tc doctor` says so); one without socket
    # storage (< 5.2) also the 5-tuple-only program
    no_mmap, no_sk = "-DMFS_NO_MMAP_CURSORS=1", "-DMFS_NO_SK_STORAGE=1"
    variants = [[], [no_mmap], [no_sk], [no_mmap, no_sk]] if socket_storage else [[no_sk], [no_mmap, no_sk]]
    for i, extra in enumerate(variants):
        try:
            b = BPF(src_file=str(src).encode(), cflags=cflags + extra)
            fn = b.load_func(FILTER_NAME.encode(), BPF.SCHED_CLS)
            return b, fn
        except Exception as exc:  # bcc raises bare Exception with the verifier log printed
            if i + 1 < len(variants):
                # the next variant declares these maps differently (or not at all)
                for n in ("sk_flows", "sk_state", "cursors", "states"):
                    try:
                        (pin / n).unlink()
                    except FileNotFoundError:
                        pass
                continue
            raise KernelFeatureError(f"loading the classifier failed: {exc}") from exc
    raise AssertionError("unreachable")


def _write_config(pin: Path, opts: AttachOptions, backend: Backend) -> None:
    dscp = opts.dscp_table()
    marked = dscp if any(d != DSCP_KEEP for d in dscp) else default_dscp(opts.levels)
    with bpfsys.BpfMap.open(pin / "config") as config_map, bpfsys.BpfMap.open(pin / "levels") as levels_map:
        write_config(
            config_map,
            levels_map,
            opts.levels,
            opts.resolved_default_level,
            opts.levels - 1,
            C_TRUST_DSCP if opts.trust_dscp else 0,
            [DSCP_KEEP] * opts.levels if opts.trust_dscp else dscp,
            [backend.priority(i) for i in range(opts.levels)],
            trust_table=marked,
            control_level=opts.control_level,
            keep_dscp=opts.keep_dscp,
        )


def _unpin(pin: Path) -> None:
    PinnedMaps.unpin(pin)
    for d in (pin.parent, pin.parent.parent):  # <netns>/ and mfs/ when nothing else is there
        if d == PIN_ROOT.parent:
            break
        try:
            d.rmdir()
        except OSError:
            break


# ---- attach / detach --------------------------------------------------------------------------
def _require_root(what: str) -> None:
    if not is_root():
        raise PermissionDeniedError(f"{what} needs root (or CAP_BPF + CAP_NET_ADMIN): run it with sudo")


def _prog_ident(fd: int) -> tuple[int | None, str | None]:
    """(id, tag) of the BPF program behind `fd`, from /proc/self/fdinfo."""
    ident: dict[str, str] = {}
    try:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            k, _, v = line.partition(":")
            ident[k.strip()] = v.strip()
    except OSError:
        return None, None
    pid = ident.get("prog_id")
    return (int(pid) if pid and pid.isdigit() else None), ident.get("prog_tag")


def _renamed_from(ifname: str, netns: str | None, idx: int) -> str | None:
    """The name under which this device (ifindex `idx`) was attached, if it was renamed since."""
    for ns, name in attached():
        if ns == netns and name != ifname:
            other = load_state(name, ns)
            if other and other.ifindex == idx:
                return name
    return None


def attach(opts: AttachOptions) -> AttachState:
    opts.validate()
    _require_root("attach")
    check_netns(opts.netns)
    if opts.gid is not None:
        access.check_member_kernel()  # members could not open the maps: say so, change nothing
    with _locked(opts.ifname, opts.netns):
        return _attach_locked(opts)


def _attach_locked(opts: AttachOptions) -> AttachState:
    with iproute(opts.netns) as ipr:
        idx = ifindex(ipr, opts.ifname, opts.netns)
    old_name = _renamed_from(opts.ifname, opts.netns, idx)
    if old_name:
        raise MfsError(
            f"{opts.ifname} is the device attached as {old_name} (ifindex {idx}, renamed since): "
            f"`mfs-tc detach {old_name}{' -n ' + opts.netns if opts.netns else ''}` first"
        )
    prev_state = load_state(opts.ifname, opts.netns)
    if prev_state and prev_state.ifindex not in (None, idx):
        prev_state = None  # attached to an earlier device of that name, gone with its qdiscs
    hook = _choose_hook(opts, prev_state, idx)
    foreign = foreign_filters(opts.ifname, opts.netns, prev_state) if hook == "clsact" else []
    if foreign:
        raise MfsError(
            f"{opts.ifname} egress pref {FILTER_PREF} ({FILTER_PREF:#x}) holds a filter that is not "
            f"mfs-tc's: {describe_filter(foreign[0])}; move it to another pref (or delete it) first"
        )
    root = root_qdisc(opts.ifname, opts.netns)
    ours = root is not None and root.get("handle") == HANDLE
    if ours and prev_state:
        prev_root = prev_state.prev_root
    elif ours:
        prev_root = None  # our qdisc without a state file: treat the kernel default as previous
    else:
        prev_root = root
    backend, notes = choose_backend(opts)
    if backend.name != "none" and not ours and root is not None and not _is_default_root(root):
        raise MfsError(
            f"{opts.ifname} has a configured root qdisc ({root.get('kind')} {root.get('handle')}) that attach "
            "would replace: remove it first, or use --qdisc none to only mark packets"
        )
    pin = pin_dir(opts.ifname, opts.netns)
    bpfsys.ensure_bpffs()
    secure_pin_dir(pin, PIN_ROOT, create=True)  # root-owned 0755 from mfs/ down, or a clear error
    had_pins = _check_pins(pin)
    undo: list[Callable[[], object]] = [_release_run_bind]
    try:
        _ensure_run_bind()
        if not had_pins:
            undo.append(lambda: _unpin(pin))
        b, fn = compile_classifier(pin)
        prog_id, prog_tag = _prog_ident(fn.fd)
        _write_config(pin, opts, backend)
        # root qdisc
        if backend.name != "none":
            if not ours:
                undo.append(lambda: run_command(["tc", "qdisc", "del", "dev", opts.ifname, "root"], opts.netns, check=False))
            cmds = backend.commands(opts.ifname)
            htb_in_place = ours and root is not None and root.get("kind") == backend.name == "htb"
            if htb_in_place:
                cmds = cmds[1:]  # HTB cannot change in place: keep the qdisc, replace its classes
            elif ours:
                _restore_root(opts.ifname, opts.netns)
            try:
                for cmd in cmds:
                    run_command(cmd, opts.netns)
                if htb_in_place:
                    for lv in range(backend.nlevels, MAX_LEVELS):  # re-attach with fewer levels
                        run_command(
                            ["tc", "class", "del", "dev", opts.ifname, "classid", backend.class_of(lv)], opts.netns, check=False
                        )
            except MfsError:
                if opts.qdisc != "auto" or backend.name == "htb":
                    raise
                rate = opts.rate_bps or link_speed_bps(opts.ifname, opts.netns)
                fallback = Backend("htb", opts.levels, rate, opts.resolved_default_level)
                if not fallback.rate_bps:
                    raise MfsError(
                        f"{backend.name} could not be set up on {opts.ifname} and the HTB fallback needs --rate"
                    ) from None
                backend = fallback
                _write_config(pin, opts, backend)
                for cmd in backend.commands(opts.ifname):
                    run_command(cmd, opts.netns)
        elif ours:
            # re-attach with --qdisc none over our own qdisc: give the host its default back
            _restore_root(opts.ifname, opts.netns)
        created_clsact = prev_state.created_clsact if prev_state else False
        if hook == "tcx":
            link = pin / tcx.LINK_PIN
            if not link.exists():
                undo.append(lambda: tcx.detach_link(link))
            tcx.attach_link(fn.fd, idx, link, opts.netns)
        else:  # clsact + filter
            if not has_clsact(opts.ifname, opts.netns):
                with iproute(opts.netns) as ipr:
                    ipr.tc("add", "clsact", idx)
                created_clsact = True
                undo.append(lambda: run_command(["tc", "qdisc", "del", "dev", opts.ifname, "clsact"], opts.netns, check=False))
            if not prev_state or not our_filters(opts.ifname, opts.netns, prev_state):
                undo.append(lambda: _delete_our_filter(opts.ifname, opts.netns))
            with iproute(opts.netns) as ipr:
                ipr.tc(
                    "replace-filter",
                    "bpf",
                    idx,
                    FILTER_HANDLE,
                    fd=fn.fd,
                    name=FILTER_NAME,
                    parent=EGRESS_PARENT,
                    direct_action=True,
                    prio=FILTER_PREF,
                    protocol=ETH_P_ALL,
                )
        st = AttachState(
            ifname=opts.ifname,
            netns=opts.netns,
            backend=backend.name,
            nlevels=opts.levels,
            rate_bps=backend.rate_bps,
            dscp=opts.dscp_table(),
            default_level=opts.resolved_default_level,
            trust_dscp=opts.trust_dscp,
            pin_dir=str(pin),
            prev_root=prev_root,
            created_clsact=created_clsact,
            ifindex=idx,
            prog_id=prog_id,
            prog_tag=prog_tag,
            hook=hook,
            control_level=opts.control_level,
            keep_dscp=list(opts.keep_dscp),
            socket_storage=(pin / "sk_flows").exists(),
            access_gid=opts.gid,
        )
        # the access group's share of each map (its file mode), or root's only
        access.set_pin_modes(pin, opts.gid, MAP_NAMES + SK_MAP_NAMES + (tcx.LINK_PIN,))
        save_state(st)
        del b  # the filter holds the program, the pins hold the maps
        return st
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except Exception:
                pass
        raise


def _delete_our_filter(ifname: str, netns: str | None) -> None:
    """Delete exactly our filter (pref, handle and kind), never another at the same pref."""
    run_command(
        ["tc", "filter", "del", "dev", ifname, "egress", "pref", str(FILTER_PREF), "handle", hex(FILTER_HANDLE), "bpf"], netns
    )


def _restore_root(ifname: str, netns: str | None) -> None:
    """Delete our root qdisc: the kernel puts its default back (attach only ever replaces a
    kernel-made default root, so that is the previous one)."""
    root = root_qdisc(ifname, netns)
    if root is not None and root.get("handle") == HANDLE:
        run_command(["tc", "qdisc", "del", "dev", ifname, "root"], netns, check=False)


def detach(ifname: str, netns: str | None = None) -> list[str]:
    """Undo attach. Returns what was removed (empty when nothing was attached). When the
    interface or its whole network namespace is gone, the pins and the state are still removed.
    The device is found by the ifindex recorded at attach, so a renamed one is detached too."""
    check_ifname(ifname)
    _require_root("detach")
    check_netns_name(netns)  # the namespace itself may be gone: its leftovers are still removed
    with _locked(ifname, netns):
        return _detach_locked(ifname, netns)


def _detach_locked(ifname: str, netns: str | None) -> list[str]:
    removed: list[str] = []
    st = load_state(ifname, netns)
    pin = pin_dir(ifname, netns)
    secure_pin_dir(pin, PIN_ROOT, create=False)
    has_pins = pin.is_dir()
    try:
        with iproute(netns) as ipr:
            idx_now: int | None = ifindex(ipr, ifname, netns)
    except MfsError as exc:
        idx_now = None
        lookup_error = exc
    dev: str | None = ifname if idx_now is not None else None
    if st is not None and st.ifindex is not None:
        current = link_name(netns, st.ifindex)
        if current is not None and current != ifname:
            dev = current  # renamed since attach: detach the device, wherever its name went
            removed.append(f"note: {ifname} was renamed to {current} (ifindex {st.ifindex}): detached from {current}")
        elif current is None:
            dev = None  # the device attached to is gone (a device of the same name is another one)
            if idx_now is not None:
                removed.append(
                    f"note: the {ifname} attached to (ifindex {st.ifindex}) is gone; the "
                    f"{ifname} there now (ifindex {idx_now}) was not touched"
                )
    if dev is None and not (st or has_pins):  # no such interface, and nothing of ours under that name
        check_netns(netns)  # a wrong namespace gets its own clear error
        raise lookup_error
    if dev is not None:
        foreign = [] if st is None and not has_pins else foreign_filters(dev, netns, st)
        if our_filters(dev, netns, st) and (st is not None or has_pins):
            _delete_our_filter(dev, netns)
            removed.append("egress filter")
        for f in foreign:
            removed.append(f"note: kept {describe_filter(f)} at pref {FILTER_PREF}: not mfs-tc's")
        if st and st.created_clsact and has_clsact(dev, netns):
            others = tc_json(["filter", "show", "dev", dev, "egress"], netns) + tc_json(
                ["filter", "show", "dev", dev, "ingress"], netns
            )
            if not others:
                run_command(["tc", "qdisc", "del", "dev", dev, "clsact"], netns)
                removed.append("clsact qdisc")
        root = root_qdisc(dev, netns)
        if (st is not None or has_pins) and root is not None and root.get("handle") == HANDLE:
            _restore_root(dev, netns)
            removed.append(f"root {root.get('kind')} qdisc")
    if has_pins and tcx.detach_link(pin / tcx.LINK_PIN):
        removed.append("tcx egress link")
    if has_pins:
        full = any((pin / n).exists() for n in MAP_NAMES)
        _unpin(pin)
        removed.append(f"pinned maps in {pin}" if full else f"empty pin directory {pin}")
    sp = state_path(ifname, netns)
    if sp.exists():
        sp.unlink()
        for d in (sp.parent, STATE_ROOT):
            try:
                d.rmdir()
            except OSError:
                break
    if _release_run_bind():
        removed.append(f"bind mount {RUN_BPFFS}")
    return removed


# ---- the bpffs view that survives `ip netns exec` (see pinpath.py) ------------------------------
def _bind_lock() -> AbstractContextManager[None]:
    return interface_lock(STATE_ROOT / "bpffs.lock", "the bind mount of bpffs", wait=True, prune=(STATE_ROOT,))


def _ensure_run_bind() -> None:
    """Bind the host's bpffs on /run/mfs-tc/bpffs, where processes started by `ip netns exec`
    (whose /sys is a fresh sysfs) still find the pins."""
    with _bind_lock():
        if bpfsys.is_bpffs(RUN_BPFFS):
            return
        RUN_BPFFS.mkdir(mode=0o755, parents=True, exist_ok=True)
        run_command(["mount", "--bind", str(HOST_BPFFS), str(RUN_BPFFS)])


def _release_run_bind() -> bool:
    """Unmount /run/mfs-tc/bpffs once nothing is attached any more (no attach state, nothing
    pinned under the pin root: empty directories do not count)."""
    with _bind_lock():
        if attached() or not bpfsys.is_bpffs(RUN_BPFFS):
            return False
        try:
            if any(not p.is_dir() for p in PIN_ROOT.rglob("*")):
                return False
        except OSError:
            return False
        run_command(["umount", str(RUN_BPFFS)], check=False)
        try:
            RUN_BPFFS.rmdir()
        except OSError:
            pass
        return True


def detach_all(netns: str | None) -> list[str]:
    """Detach every interface of `netns` that has mfs-tc pins or attach state (also after the
    namespace was deleted: what is left of it is removed)."""
    label = netns_label(netns)
    names = {p.name for p in (PIN_ROOT / label).glob("*") if p.is_dir()}
    names |= {p.stem for p in (STATE_ROOT / label).glob("*.json")}
    removed: list[str] = []
    for ifname in sorted(names):
        removed += [f"{ifname}: {r}" for r in detach(ifname, netns)]
    return removed
