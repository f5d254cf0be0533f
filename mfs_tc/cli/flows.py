"""CLI verbs on live map entries: flows, set, unset, gc, policy show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..errors import MfsError, NotAttachedError
from .output import human_bytes, print_table

if TYPE_CHECKING:
    from ..maps import PinnedMaps

policy_app = typer.Typer(help="Inspect scheduling policies.", no_args_is_help=True)


def _open(iface: str, netns: Optional[str], root: Optional[Path]) -> PinnedMaps:
    from ..maps import PinnedMaps

    try:
        return PinnedMaps.open(iface, netns, root)
    except ValueError as exc:
        raise MfsError(str(exc)) from None


def _attached(root: Path) -> list[tuple[Optional[str], str]]:
    """(netns, ifname) of every pin directory under `root`."""
    out: list[tuple[Optional[str], str]] = []
    if not root.is_dir():
        return out
    for ns_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for if_dir in sorted(p for p in ns_dir.iterdir() if p.is_dir()):
            if (if_dir / "flows").exists():
                out.append((None if ns_dir.name == "host" else ns_dir.name, if_dir.name))
    return out


def _proto(p: str) -> str:
    p = p.lower()
    if p not in ("tcp", "udp"):
        raise MfsError(f"--proto {p!r}: use tcp or udp")
    return p


def flows_cmd(
    iface: Optional[str] = typer.Argument(None, help="Interface (default: every attached one)."),
    netns: Optional[str] = typer.Option(None, "--netns", "-n", help="Network namespace (ip netns name)"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    root: Optional[Path] = typer.Option(None, "--pin-root", hidden=True),
) -> None:
    """List live flow entries with the level the classifier picks for them now."""
    try:
        if iface:
            targets = [(netns, iface)]
        else:
            if root is None:
                from ..pinpath import pin_root

                root = pin_root()
            targets = _attached(root)
    except PermissionError as exc:
        raise MfsError(f"cannot read {exc.filename}: run as root, or name the interface") from None
    if not targets:
        raise NotAttachedError(f"mfs-tc is attached nowhere (no pins under {root}): run `mfs-tc attach IFACE`")
    result: list[dict[str, Any]] = []
    skipped: list[str] = []
    for ns, ifn in targets:
        try:
            maps = _open(ifn, ns, root)
        except MfsError as exc:
            if iface:
                raise
            typer.echo(f"mfs-tc: warning: skipping {ifn}{f' (netns {ns})' if ns else ''}: {exc}", err=True)
            skipped.append(str(exc))
            continue
        try:
            for v in maps.flow_views():
                d = v.as_dict()
                d["interface"] = ifn
                d["netns"] = ns
                result.append(d)
        finally:
            maps.close()
    if len(skipped) == len(targets):
        raise MfsError(f"could not read the flow entries of any attached interface: {skipped[0]}")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if not result:
        typer.echo("no flow entries")
        return
    rows = []
    for d in result:
        proto = d["proto"]
        src = f"[{d['saddr']}]:{d['sport']}" if ":" in d["saddr"] else f"{d['saddr']}:{d['sport']}"
        dst = f"[{d['daddr']}]:{d['dport']}" if ":" in d["daddr"] else f"{d['daddr']}:{d['dport']}"
        rows.append(
            [
                d["interface"] if d["netns"] is None else f"{d['netns']}/{d['interface']}",
                f"{proto} {src} -> {dst}",
                d["stage"],
                d["mode"],
                str(d["level"]),
                "-" if d["cursor"] is None else str(d["cursor"]),
                "yes" if d["scavenged"] else "",
                f"{human_bytes(d['sent_bytes'])}/{human_bytes(d['total_bytes'])}",
                f"{d['request_id']:#x}" if d["request_id"] else "static",
            ]
        )
    print_table(["IFACE", "FLOW", "STAGE", "MODE", "LEVEL", "CURSOR", "SCAV", "SENT/TOTAL", "REQUEST"], rows)


def set_cmd(
    iface: str = typer.Argument(..., help="Attached interface."),
    src: str = typer.Option(..., "--src", help="Source address (this host)."),
    dst: str = typer.Option(..., "--dst", help="Destination address."),
    sport: int = typer.Option(..., "--sport", help="Source port."),
    dport: int = typer.Option(..., "--dport", help="Destination port."),
    proto: str = typer.Option("tcp", "--proto", help="tcp or udp."),
    level: int = typer.Option(..., "--level", help="Level for every packet of the flow (0 = most urgent)."),
    netns: Optional[str] = typer.Option(None, "--netns", "-n", help="Network namespace (ip netns name)"),
    root: Optional[Path] = typer.Option(None, "--pin-root", hidden=True),
) -> None:
    """Add (or replace) a static entry: the flow always gets LEVEL."""
    from ..maps import set_static

    maps = _open(iface, netns, root)
    try:
        try:
            set_static(maps, (src, dst, sport, dport, _proto(proto)), level)
        except ValueError as exc:
            raise MfsError(str(exc)) from None
    finally:
        maps.close()
    typer.echo(f"{proto} {src}:{sport} -> {dst}:{dport}: level {level}")


def unset_cmd(
    iface: str = typer.Argument(..., help="Attached interface."),
    src: str = typer.Option(..., "--src"),
    dst: str = typer.Option(..., "--dst"),
    sport: int = typer.Option(..., "--sport"),
    dport: int = typer.Option(..., "--dport"),
    proto: str = typer.Option("tcp", "--proto"),
    netns: Optional[str] = typer.Option(None, "--netns", "-n", help="Network namespace (ip netns name)"),
    root: Optional[Path] = typer.Option(None, "--pin-root", hidden=True),
) -> None:
    """Remove a flow entry (static or not)."""
    from ..maps import pack_flow_key

    maps = _open(iface, netns, root)
    try:
        try:
            key = pack_flow_key((src, dst, sport, dport, _proto(proto)))
        except ValueError as exc:
            raise MfsError(str(exc)) from None
        if not maps.flows.delete(key):
            raise MfsError(f"no entry for {proto} {src}:{sport} -> {dst}:{dport} on {iface}")
    finally:
        maps.close()
    typer.echo("removed")


def gc_cmd(
    iface: str = typer.Argument(..., help="Attached interface."),
    grace: float = typer.Option(10.0, "--grace", help="Seconds past a request's deadline before it goes."),
    netns: Optional[str] = typer.Option(None, "--netns", "-n", help="Network namespace (ip netns name)"),
    as_json: bool = typer.Option(False, "--json"),
    root: Optional[Path] = typer.Option(None, "--pin-root", hidden=True),
) -> None:
    """Remove requests long past their deadline (or whose process died) and their flows."""
    from ..maps import gc

    if grace < 0:
        raise MfsError(f"--grace must not be negative, got {grace}")
    maps = _open(iface, netns, root)
    try:
        res = gc(maps, grace)
    finally:
        maps.close()
    if as_json:
        typer.echo(json.dumps(res.as_dict()))
    else:
        typer.echo(
            f"removed {len(res.requests_removed)} requests of dead owners, scavenged {len(res.requests_scavenged)} "
            f"past their deadline; demoted {res.flows_demoted} orphaned flows to the scavenger level, "
            f"removed {res.flows_removed} idle orphans; freed {len(res.slots_freed)} cursor slots of dead owners"
        )


def policy_show_cmd(
    policy: str = typer.Option("mfs", "--policy", help="Policy name."),
    levels: Optional[int] = typer.Option(None, "--levels", help="Number of levels (default: the policy's)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print a policy's level layout and thresholds."""
    from ..layout import MAX_LEVELS
    from ..policy import make_policy

    if levels is not None and not 2 <= levels <= MAX_LEVELS:
        raise MfsError(f"--levels must be 2..{MAX_LEVELS}, got {levels}")
    try:
        pol = make_policy(policy, **({"nlevels": levels} if levels is not None else {}))
    except (ValueError, KeyError) as exc:
        raise MfsError(str(exc).strip("'\"")) from None
    desc = pol.describe()
    if as_json:
        typer.echo(json.dumps(desc, indent=2, default=str))
        return
    typer.echo(_describe_human(desc))


def _describe_human(desc: dict[str, Any], indent: int = 0) -> str:
    pad = " " * indent
    lines = []
    for k, v in desc.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k}:")
            lines.append(_describe_human(v, indent + 2))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"{pad}{k}:")
            for x in v:
                lines.append(f"{pad}  - " + ", ".join(f"{a}={b}" for a, b in x.items()))
        else:
            lines.append(f"{pad}{k}: {v}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("flows")(flows_cmd)
    app.command("set")(set_cmd)
    app.command("unset")(unset_cmd)
    app.command("gc")(gc_cmd)
    policy_app.command("show")(policy_show_cmd)
    app.add_typer(policy_app, name="policy")
