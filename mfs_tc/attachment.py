"""What attach recorded and what tc shows now: the attach state (/run/mfs-tc/<netns>/<ifname>.json)
and the tc queries that find our filter and root qdisc. The loader writes the state and acts on
these queries; `mfs-tc status` reads them. No bcc here (the loader compiles), only pyroute2 / tc.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .backends import Backend
from .errors import MfsError
from .layout import netns_label
from .netlink import check_ifname, iproute, tc_json

STATE_ROOT = Path("/run/mfs-tc")
FILTER_PREF = 0xC0DE  # tc filter priority ("pref") of our egress filter
FILTER_HANDLE = 1
FILTER_NAME = "mfs_egress"


@dataclass
class AttachState:
    ifname: str
    netns: str | None
    backend: str
    nlevels: int
    rate_bps: int | None
    dscp: list[int]
    default_level: int
    trust_dscp: bool
    pin_dir: str
    prev_root: dict[str, Any] | None = None  # root qdisc found before the first attach
    created_clsact: bool = False
    attached_at: float = field(default_factory=time.time)
    program: str = FILTER_NAME
    hook: str = "clsact"  # how the classifier is on egress: "tcx" (a pinned BPF link) or "clsact" (cls_bpf)
    ifindex: int | None = None  # the device attached to: found again after a rename
    prog_id: int | None = None  # the classifier program the filter was given (its identity, with
    prog_tag: str | None = None  # the tag: our filter is the one running this program)
    control_level: int = 0
    keep_dscp: list[int] = field(default_factory=list)
    socket_storage: bool = True
    access_gid: int | None = None  # the access group given the serving processes' maps (None: root only)

    @property
    def scavenger_level(self) -> int:
        return self.nlevels - 1

    def backend_obj(self) -> Backend:
        return Backend(self.backend, self.nlevels, self.rate_bps, self.default_level)


def state_path(ifname: str, netns: str | None) -> Path:
    check_ifname(ifname)
    return STATE_ROOT / netns_label(netns) / f"{ifname}.json"


def lock_path(ifname: str, netns: str | None) -> Path:
    return STATE_ROOT / netns_label(netns) / f"{ifname}.lock"


def load_state(ifname: str, netns: str | None = None) -> AttachState | None:
    p = state_path(ifname, netns)
    try:
        return AttachState(**json.loads(p.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise MfsError(f"attach state {p} is unreadable ({exc}); remove it and run detach again") from exc


def save_state(st: AttachState) -> None:
    p = state_path(st.ifname, st.netns)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(st), indent=2))
    tmp.replace(p)


def root_qdisc(ifname: str, netns: str | None) -> dict[str, Any] | None:
    roots = [q for q in tc_json(["qdisc", "show", "dev", ifname, "root"], netns) if q.get("root")]
    return roots[0] if roots else None


def egress_filters(ifname: str, netns: str | None) -> list[dict[str, Any]]:
    try:
        return tc_json(["filter", "show", "dev", ifname, "egress"], netns)
    except MfsError:
        return []


def is_ours(f: dict[str, Any], st: AttachState | None) -> bool:
    """Our filter: at our pref and handle, a bpf filter running a program named mfs_egress, and,
    when attach recorded it, that very program (its id, or its tag: the same classifier build
    re-attached by a run that was killed before it could record the new id)."""
    opts = f.get("options") or {}
    prog = opts.get("prog") or {}
    if f.get("pref") != FILTER_PREF or f.get("kind") != "bpf" or opts.get("handle") != hex(FILTER_HANDLE):
        return False
    if prog.get("name") != FILTER_NAME and opts.get("bpf_name") != FILTER_NAME:
        return False
    if st is not None and (st.prog_id or st.prog_tag):
        return prog.get("id") == st.prog_id or (st.prog_tag is not None and prog.get("tag") == st.prog_tag)
    return True


def our_filters(ifname: str, netns: str | None, st: AttachState | None = None) -> list[dict[str, Any]]:
    return [f for f in egress_filters(ifname, netns) if is_ours(f, st)]


def foreign_filters(ifname: str, netns: str | None, st: AttachState | None) -> list[dict[str, Any]]:
    """Filters at our pref that are not ours (someone else's, or a classifier we did not record)."""
    return [f for f in egress_filters(ifname, netns) if f.get("pref") == FILTER_PREF and f.get("options") and not is_ours(f, st)]


def describe_filter(f: dict[str, Any]) -> str:
    opts = f.get("options") or {}
    prog = opts.get("prog") or {}
    name = prog.get("name") or opts.get("bpf_name") or "?"
    return f"{f.get('kind')} filter handle {opts.get('handle')} ({name}, prog id {prog.get('id')})"


def has_clsact(ifname: str, netns: str | None) -> bool:
    return any(q.get("kind") == "clsact" for q in tc_json(["qdisc", "show", "dev", ifname], netns))


def link_name(netns: str | None, idx: int) -> str | None:
    """The current name of the device with ifindex `idx` in `netns`, or None when there is none."""
    try:
        with iproute(netns) as ipr:
            links = ipr.get_links(idx)
    except Exception:  # pyroute2 NetlinkError (ENODEV) or the namespace is gone
        return None
    return links[0].get_attr("IFLA_IFNAME") if links else None


def attached() -> list[tuple[str | None, str]]:
    """(netns, ifname) of every attachment with a state file."""
    out = []
    for p in sorted(STATE_ROOT.glob("*/*.json")):
        ns = None if p.parent.name == "host" else p.parent.name
        out.append((ns, p.stem))
    return out
