"""What is attached where, read back from the attach state, the pinned maps and tc."""

from __future__ import annotations

from typing import Any

from . import access, bpfsys, tcx
from .attachment import link_name, load_state, our_filters, root_qdisc
from .backends import HANDLE
from .errors import MfsError, NotAttachedError
from .layout import MAP_NAMES, SK_MAP_NAMES, pin_dir
from .maps import PinnedMaps
from .rules import RuleTable


def read_status(ifname: str, netns: str | None = None) -> dict[str, Any]:
    st = load_state(ifname, netns)
    pin = pin_dir(ifname, netns)
    if st is None and not (pin / "stats").exists():
        raise NotAttachedError(f"mfs-tc is not attached to {ifname}: run `mfs-tc attach {ifname}`")
    with PinnedMaps.open_dir(pin, what=ifname) as maps:
        stats = maps.stats()
        lrecs = maps.level_records()[: maps.config.nlevels]
        nflows, nreq = len(maps.flows), len(maps.requests)
        pressure = maps.pressure()
        rules = [r.as_dict() for r in RuleTable(maps).rows()]
        frozen = [
            m.name
            for m in (maps.requests, maps.sk_flows, maps.flows, maps.config_map, maps.levels, maps.rules)
            if m is not None and bpfsys.map_frozen(m.fd)
        ]
    backend = st.backend_obj() if st else None
    levels = []
    for i, rec in enumerate(lrecs):
        levels.append(
            {
                "level": i,
                "class": backend.class_of(i) if backend else "-",
                "priority": f"{rec.priority >> 16:x}:{rec.priority & 0xFFFF:x}" if rec.priority > 0xFFFF else str(rec.priority),
                "dscp": None if rec.dscp == 0xFF else rec.dscp,
                "packets": stats["levels"][i]["packets"],
                "bytes": stats["levels"][i]["bytes"],
            }
        )
    hook = st.hook if st else "clsact"
    problems = [
        f"map {n} is frozen (BPF_MAP_FREEZE by a process holding it writable, e.g. a member of the access "
        f"group: docs/access.md): controllers cannot change it; detach and attach again"
        for n in frozen
    ]
    dev: str | None = ifname
    if st is not None and st.ifindex is not None:
        current = link_name(netns, st.ifindex)
        if current is None:
            dev = None
            problems.append(f"the device attached to (ifindex {st.ifindex}) is gone")
        elif current != ifname:
            dev = current
            problems.append(f"{ifname} was renamed to {current} (ifindex {st.ifindex}): `mfs-tc detach {ifname}` still finds it")
    if hook == "tcx":
        try:
            on = st is not None and st.ifindex is not None and st.prog_id in tcx.egress_progs(st.ifindex, netns)
        except MfsError:
            on = False
        if not on:
            problems.append("our tcx egress program is not on the device (run attach again)")
    else:
        on = dev is not None and bool(our_filters(dev, netns, st))
        if not on:
            problems.append("our egress filter is missing (run attach again)")
    root = root_qdisc(dev, netns) if dev is not None else None
    if st and st.backend not in ("none",) and not (root and root.get("handle") == HANDLE):
        problems.append(f"root qdisc is not ours any more ({root.get('kind') if root else 'none'})")
    return {
        "ifname": ifname,
        "netns": netns,
        "attached": on,
        "hook": hook,
        "backend": st.backend if st else None,
        "rate_bps": st.rate_bps if st else None,
        "levels": levels,
        "default_level": st.default_level if st else None,
        "scavenger_level": st.scavenger_level if st else None,
        "trust_dscp": st.trust_dscp if st else None,
        "counters": stats["events"],
        "flows": nflows,
        "requests": nreq,
        "pressure": pressure,
        "control_level": st.control_level if st else None,
        "rules": rules,
        "rule_stages": _per_stage(rules),
        "pin_dir": str(pin),
        "access_gid": access.pins_gid(pin),  # the access group the pins give (None: root only)
        "maps": {n: (pin / n).exists() for n in MAP_NAMES + SK_MAP_NAMES},
        "problems": problems,
    }


def _per_stage(rules: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Packets and bytes matched by --stage rules, per stage (rules that are still installed)."""
    out: dict[str, dict[str, int]] = {}
    for r in rules:
        if r["stage"]:
            d = out.setdefault(r["stage"], {"rules": 0, "packets": 0, "bytes": 0})
            d["rules"] += 1
            d["packets"] += r["packets"]
            d["bytes"] += r["bytes"]
    return out
