"""What is attached where, read back from the attach state, the pinned maps and tc."""

from __future__ import annotations

from pathlib import Path

from . import bpfsys
from .backends import HANDLE
from .errors import NotAttachedError
from .layout import (
    COUNTER_FMT,
    MAP_NAMES,
    NSTATS,
    STAT_NAMES,
    LevelRecord,
    pin_dir,
)
from .loader import _our_filter, _root_qdisc, load_state
import struct


def read_counters(pin: Path) -> list[tuple[int, int]]:
    """(packets, bytes) per stats slot, summed over CPUs."""
    out = []
    with bpfsys.BpfMap.open(pin / "stats") as m:
        for slot in range(NSTATS):
            per_cpu = m.lookup_percpu(slot.to_bytes(4, "little")) or []
            pk = by = 0
            for raw in per_cpu:
                p, b = struct.unpack(COUNTER_FMT, raw[:16])
                pk += p
                by += b
            out.append((pk, by))
    return out


def read_status(ifname: str, netns: str | None = None) -> dict:
    st = load_state(ifname, netns)
    pin = pin_dir(ifname, netns)
    if st is None and not (pin / "stats").exists():
        raise NotAttachedError(f"mfs-tc is not attached to {ifname}: run `mfs-tc attach {ifname}`")
    counters = read_counters(pin)
    with bpfsys.BpfMap.open(pin / "levels") as m:
        lrecs = [LevelRecord.unpack(m.lookup(i.to_bytes(4, "little"))) for i in range(st.nlevels if st else 8)]
    with bpfsys.BpfMap.open(pin / "flows") as m:
        nflows = len(m)
    with bpfsys.BpfMap.open(pin / "requests") as m:
        nreq = len(m)
    backend = st.backend_obj() if st else None
    levels = []
    for i, rec in enumerate(lrecs):
        levels.append({
            "level": i,
            "class": backend.class_of(i) if backend else "-",
            "priority": f"{rec.priority >> 16:x}:{rec.priority & 0xFFFF:x}" if rec.priority > 0xFFFF else str(rec.priority),
            "dscp": None if rec.dscp == 0xFF else rec.dscp,
            "packets": counters[i][0],
            "bytes": counters[i][1],
        })
    filt = _our_filter(ifname, netns)
    root = _root_qdisc(ifname, netns)
    problems = []
    if not filt:
        problems.append("our egress filter is missing (run attach again)")
    if st and st.backend not in ("none",) and not (root and root.get("handle") == HANDLE):
        problems.append(f"root qdisc is not ours any more ({root.get('kind') if root else 'none'})")
    return {
        "ifname": ifname,
        "netns": netns,
        "attached": bool(filt),
        "backend": st.backend if st else None,
        "rate_bps": st.rate_bps if st else None,
        "levels": levels,
        "default_level": st.default_level if st else None,
        "scavenger_level": st.scavenger_level if st else None,
        "trust_dscp": st.trust_dscp if st else None,
        "counters": {STAT_NAMES[s]: {"packets": counters[s][0], "bytes": counters[s][1]} for s in STAT_NAMES},
        "flows": nflows,
        "requests": nreq,
        "pin_dir": str(pin),
        "maps": {n: (pin / n).exists() for n in MAP_NAMES},
        "problems": problems,
    }
