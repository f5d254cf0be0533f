"""`mfs-tc apply`: make the host match the config file, idempotently, and say what changed.

Per configured interface: attach when it is not attached, when its attachment differs from the
config (levels, qdisc, rate, DSCP, default/control level, trust, hook, access group), or when what attach made
is gone (the device was re-created, the filter or tcx link or root qdisc vanished); then make
its rule table exactly the configured rules. Interfaces an earlier apply attached that the
config no longer names are detached. Nothing that already matches is touched, so a second run
changes nothing and prints no change. What apply manages is recorded per config file in
/run/mfs-tc/apply-<hash of the config's path>.json (two config files never detach each other's).

`watch()` (`apply --watch`, the systemd unit) applies, then re-applies whenever a configured
interface appears or changes (netlink link events, one socket per network namespace) and every
`period` seconds, and detaches everything it manages on SIGTERM/SIGINT.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from .access import group_name
from .attachment import load_state
from .config import HostConfig, InterfaceConfig
from .errors import MfsError
from .layout import pin_dir
from .loader import attach, detach, plan
from .maps import PinnedMaps
from .netlink import check_netns, ifindex, iproute
from .rules import RuleSpec, RuleTable, rules_lock, same_match
from .status import read_status

if TYPE_CHECKING:
    from pyroute2 import IPRoute

    from .attachment import AttachState
    from .rules import RuleSpec

# a configured interface: (netns, ifname), InterfaceConfig.ident
IfaceId = tuple[str | None, str]

MANAGED_DIR = Path("/run/mfs-tc")


def managed_path(config_file: Path) -> Path:
    import hashlib  # noqa: PLC0415

    h = hashlib.sha1(str(Path(config_file).resolve()).encode()).hexdigest()[:12]
    return MANAGED_DIR / f"apply-{h}.json"


@dataclass
class Change:
    iface: str  # label: name (netns NS)
    what: str  # attach, re-attach, detach, rule +, rule -
    detail: list[str] = field(default_factory=list)  # tc commands, the rule

    def lines(self) -> list[str]:
        return [f"{self.iface}: {self.what}"] + [f"    {d}" for d in self.detail]


@dataclass
class Result:
    changes: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changes": [{"interface": c.iface, "action": c.what, "detail": c.detail} for c in self.changes],
            "errors": self.errors,
            "notes": self.notes,
        }


def _managed(config_file: Path) -> list[tuple[str | None, str]]:
    try:
        doc = json.loads(managed_path(config_file).read_text())
        return [(n, i) for n, i in doc["interfaces"]]
    except (FileNotFoundError, ValueError, TypeError, KeyError):
        return []


def _save_managed(config_file: Path, items: list[tuple[str | None, str]]) -> None:
    path = managed_path(config_file)
    if not items:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {"config": str(Path(config_file).resolve()), "interfaces": sorted(set(items), key=lambda t: (t[0] or "", t[1]))}
        )
    )
    tmp.replace(path)


def _differences(ic: InterfaceConfig, st: AttachState) -> list[str]:
    """How the recorded attachment differs from the config (empty: the same)."""
    o = ic.opts
    diff: list[str] = []

    def cmp(what: str, have: object, want: object) -> None:
        if have != want:
            diff.append(f"{what} {have} -> {want}")

    cmp("levels", st.nlevels, o.levels)
    if o.qdisc != "auto":
        cmp("qdisc", st.backend, o.qdisc)
    if o.rate_bps is not None and st.backend == "htb":
        cmp("rate", st.rate_bps, o.rate_bps)
    cmp("dscp", st.dscp, o.dscp_table())
    cmp("default_level", st.default_level, o.default_level)
    cmp("control_level", st.control_level, o.control_level)
    cmp("trust_dscp", st.trust_dscp, o.trust_dscp)
    cmp("keep_dscp", sorted(st.keep_dscp), sorted(o.keep_dscp))
    if o.hook != "auto":
        cmp("hook", st.hook, o.hook)
    if getattr(st, "access_gid", None) != o.gid:
        diff.append(f"access_group {group_name(st.access_gid)} -> {group_name(o.gid)}")
    return diff


def _attach_reason(ic: InterfaceConfig) -> tuple[str | None, bool]:
    """(why attach must run, or None; whether a detach must come first)."""

    st = load_state(ic.opts.ifname, ic.opts.netns)
    if st is None:
        return "attach", False
    diff = _differences(ic, st)
    if diff:
        hook_change = any(d.startswith("hook ") for d in diff)
        return "re-attach (" + ", ".join(diff) + ")", hook_change
    try:
        s = read_status(ic.opts.ifname, ic.opts.netns)
    except MfsError as exc:
        return f"re-attach ({exc})", False
    frozen = [p for p in s["problems"] if " is frozen " in p]
    if frozen:  # a re-attach keeps the pinned maps: it would not help (docs/access.md)
        raise MfsError(frozen[0].replace("detach and attach again", "`mfs-tc apply --detach-all` and apply again"))
    if s["problems"]:
        # attach itself re-creates what is missing and keeps the pinned maps (a device that was
        # re-created gets the classifier again; controllers keep their entries)
        return "re-attach (" + "; ".join(s["problems"]) + ")", False
    return None, False


def _rule_diff(ic: InterfaceConfig, dry_run: bool, attached: bool) -> tuple[list[RuleSpec], list[RuleSpec]]:
    if not attached:  # dry run of an interface not attached yet: every rule is new
        return [], list(ic.rules)
    with PinnedMaps.open(ic.opts.ifname, ic.opts.netns) as maps, rules_lock(ic.opts.ifname, ic.opts.netns):
        t = RuleTable(maps)
        if not dry_run:
            gone, new = t.replace(ic.rules)
            return [RuleSpec.of(r) for r in gone], [RuleSpec.of(r) for r in new]
        cur = t.records()
        want = [s.record(t.nlevels) for s in ic.rules]
        if len(cur) == len(want) and all(same_match(a, b) for a, b in zip(cur, want, strict=False)):
            return [], []
        removed = [RuleSpec.of(r) for r in cur if not any(same_match(r, w) for w in want)]
        added = [s for s, w in zip(ic.rules, want, strict=False) if not any(same_match(r, w) for r in cur)]
        if not removed and not added:  # the same rules in another order
            removed = [RuleSpec.of(r) for r in cur]
            added = list(ic.rules)
        return removed, added


def apply_config(cfg: HostConfig, dry_run: bool = False, only: set[IfaceId] | None = None) -> Result:
    """Make the host match `cfg` (or say what that would change, with dry_run). `only`: apply
    just these (netns, ifname) (the watcher, after a link event); others are left alone."""

    res = Result()
    wanted = {ic.ident for ic in cfg.interfaces}
    for ic in cfg.interfaces:
        if only is not None and ic.ident not in only:
            continue
        label = ic.label()
        try:
            check_netns(ic.opts.netns)
            with iproute(ic.opts.netns) as ipr:
                ifindex(ipr, ic.opts.ifname, ic.opts.netns)
        except MfsError as exc:
            res.errors.append(f"{label}: {exc}")
            continue
        try:
            reason, detach_first = _attach_reason(ic)
            # a dry run compares the rules with the table that is there (a re-attach keeps it)
            attached = reason is None or (not detach_first and (pin_dir(*ic.ident[::-1]) / "rules").exists())
            if reason is not None:
                p = plan(ic.opts)
                cmds = [" ".join(c) for c in p.commands]
                if detach_first:
                    cmds.insert(0, f"mfs-tc detach {ic.opts.ifname}" + (f" -n {ic.opts.netns}" if ic.opts.netns else ""))
                res.changes.append(Change(label, reason, cmds))
                if not dry_run:
                    if detach_first:
                        detach(ic.opts.ifname, ic.opts.netns)
                    attach(ic.opts)
                    attached = True
            removed, added = _rule_diff(ic, dry_run, attached)
            for r in removed:
                res.changes.append(Change(label, f"rule - {r.describe()}"))
            for r in added:
                res.changes.append(Change(label, f"rule + {r.describe()}"))
        except MfsError as exc:
            res.errors.append(f"{label}: {exc}")
    if only is None:
        for ns, name in _managed(cfg.file):
            if (ns, name) in wanted:
                continue
            label = name + (f" (netns {ns})" if ns else "")
            res.changes.append(Change(label, "detach (no longer in the config)"))
            if not dry_run:
                try:
                    detach(name, ns)
                except MfsError as exc:
                    res.errors.append(f"{label}: {exc}")
        if not dry_run:
            _save_managed(cfg.file, list(wanted))
    return res


def detach_all(cfg: HostConfig | None, config_file: Path) -> Result:
    """Detach every interface of the config and every one an earlier apply attached."""

    res = Result()
    targets = set(_managed(config_file)) | ({ic.ident for ic in cfg.interfaces} if cfg else set())
    for ns, name in sorted(targets, key=lambda t: (t[0] or "", t[1])):
        label = name + (f" (netns {ns})" if ns else "")
        if load_state(name, ns) is None and not pin_dir(name, ns).exists():
            continue
        try:
            removed = detach(name, ns)
        except MfsError as exc:
            res.errors.append(f"{label}: {exc}")
            continue
        if removed:
            res.changes.append(Change(label, "detach", removed))
    _save_managed(config_file, [])
    return res


def print_result(res: Result, out: TextIO | None = None, err: TextIO | None = None) -> None:
    out = out or sys.stdout
    err = err or sys.stderr
    for n in res.notes:
        print(f"note: {n}", file=err)
    for c in res.changes:
        for line in c.lines():
            print(line, file=out)
    for e in res.errors:
        print(f"mfs-tc: error: {e}", file=err)
    out.flush()
    err.flush()


def _safe_apply(cfg: HostConfig, only: set[IfaceId] | None) -> None:
    """One apply of the watcher: an unexpected failure is reported, and the watcher goes on
    (the next link event or period tries again)."""
    try:
        print_result(apply_config(cfg, only=only))
    except MfsError as exc:
        print_result(Result(errors=[str(exc)]))
    except Exception as exc:  # pyroute2/netlink errors: report, keep watching
        print_result(Result(errors=[f"unexpected {type(exc).__name__}: {exc}"]))


# ---- watch ------------------------------------------------------------------------------------
def _link_socket(netns: str | None) -> IPRoute | None:
    """An IPRoute socket in `netns` subscribed to link events (RTMGRP_LINK), or None when the
    namespace does not exist (yet)."""
    from pyroute2 import IPRoute  # noqa: PLC0415
    from pyroute2.netlink.rtnl import RTMGRP_LINK  # noqa: PLC0415
    from pyroute2.netns import popns, pushns  # noqa: PLC0415

    try:
        check_netns(netns)
    except MfsError:
        return None
    if netns:
        pushns(netns)
    try:
        ipr = IPRoute()
        ipr.bind(groups=RTMGRP_LINK)
    finally:
        if netns:
            popns()
    return ipr


def watch(load: Callable[[], HostConfig], period: float = 10.0, log: TextIO | None = None) -> int:
    """Apply, then re-apply on link events of configured interfaces and every `period` s; on
    SIGTERM/SIGINT detach what it manages and return 0."""
    log = log or sys.stdout
    stop = {"flag": False}

    def on_signal(signo: int, _frame: FrameType | None) -> None:
        stop["flag"] = True

    # the handler only sets the flag; the wakeup pipe makes the select() below return (Python
    # retries an interrupted select otherwise), so a stop never cuts an attach in half
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cfg = load()
    _safe_apply(cfg, None)
    socks: dict[str | None, IPRoute | None] = {}

    def refresh_sockets() -> None:
        for ns in cfg.netns_names():
            if ns not in socks or socks[ns] is None:
                socks[ns] = _link_socket(ns)

    refresh_sockets()
    names = {ic.opts.ifname for ic in cfg.interfaces}
    print(f"mfs-tc apply --watch: watching {len(cfg.interfaces)} interface(s) of {cfg.file}", file=log, flush=True)
    next_full = time.monotonic() + period
    try:
        while not stop["flag"]:
            live = {ns: s for ns, s in socks.items() if s is not None}
            timeout = max(0.0, next_full - time.monotonic())
            try:
                ready, _, _ = select.select([wake_r] + [s.fileno() for s in live.values()], [], [], timeout)
            except InterruptedError:
                continue
            if wake_r in ready:
                os.read(wake_r, 512)
            if stop["flag"]:
                break
            touched: set[IfaceId] = set()
            for ns, s in live.items():
                if s.fileno() not in ready:
                    continue
                try:
                    msgs = s.get()
                except Exception:  # the namespace went away under the socket
                    socks[ns] = None
                    continue
                for m in msgs:
                    name = m.get_attr("IFLA_IFNAME") if hasattr(m, "get_attr") else None
                    if name is not None and name in names and m.get("event") == "RTM_NEWLINK":
                        touched.add((ns, name))
            if touched:
                time.sleep(0.2)  # let a device being set up (addresses, peer moved) settle
                for _ns, s in list(socks.items()):
                    if s is None:
                        continue
                    while select.select([s.fileno()], [], [], 0)[0]:
                        try:
                            s.get()
                        except Exception:
                            break
                _safe_apply(cfg, touched)
            if time.monotonic() >= next_full:
                refresh_sockets()
                _safe_apply(cfg, None)
                next_full = time.monotonic() + period
    finally:
        for s in socks.values():
            if s is not None:
                s.close()
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
    res = detach_all(cfg, cfg.file)
    print_result(res)
    print("mfs-tc apply --watch: stopped, detached", file=log, flush=True)
    return 0
