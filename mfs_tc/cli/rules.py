"""CLI verbs on operator rules: rule add, rule list, rule del."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import MfsError
from .output import emit_json, human_bytes, print_table

if TYPE_CHECKING:
    from ..maps import PinnedMaps

rule_app = typer.Typer(help="Rules by prefix, port and protocol (after exact entries, before the default).", no_args_is_help=True)

Iface = Annotated[str, typer.Argument(help="Attached interface, e.g. eth0")]
Netns = Annotated[Optional[str], typer.Option("--netns", "-n", help="Network namespace (ip netns name)")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _maps(iface: str, netns: str | None) -> PinnedMaps:
    from ..maps import PinnedMaps
    from ..netlink import check_ifname, check_netns_name

    check_ifname(iface)
    check_netns_name(netns)
    return PinnedMaps.open(iface, netns)


def rule_rows(maps: PinnedMaps) -> list[dict[str, Any]]:
    from ..rules import RuleTable

    return [r.as_dict() for r in RuleTable(maps).rows()]


def print_rules(rows: list[dict[str, Any]]) -> None:
    if not rows:
        typer.echo("no rules")
        return
    print_table(
        ["prio", "id", "proto", "src", "sport", "dst", "dport", "level", "stage", "packets", "bytes"],
        [
            [
                r["priority"],
                r["id"],
                r["proto"] or "any",
                r["src"] or "any",
                r["sport"] or "any",
                r["dst"] or "any",
                r["dport"] or "any",
                r["level"],
                r["stage"] or "-",
                r["packets"],
                human_bytes(r["bytes"]),
            ]
            for r in rows
        ],
    )


def add(
    iface: Iface,
    netns: Netns = None,
    src: Annotated[Optional[str], typer.Option("--src", help="Source prefix (CIDR, or one address)")] = None,
    dst: Annotated[Optional[str], typer.Option("--dst", help="Destination prefix (CIDR, or one address)")] = None,
    sport: Annotated[Optional[str], typer.Option("--sport", help="Source port N or range A-B")] = None,
    dport: Annotated[Optional[str], typer.Option("--dport", help="Destination port N or range A-B")] = None,
    proto: Annotated[Optional[str], typer.Option("--proto", help="tcp or udp (default: both)")] = None,
    level: Annotated[Optional[int], typer.Option("--level", help="Level of matching packets (0 = most urgent)")] = None,
    stage: Annotated[Optional[str], typer.Option("--stage", help="kv_fetch | collective | p2d: that stage's level")] = None,
    priority: Annotated[
        Optional[int], typer.Option("--priority", help="Position in the table, 1 = looked at first (default: last)")
    ] = None,
    json_out: Json = False,
) -> None:
    """Add a rule: TCP/UDP packets without an exact entry that match it get its level."""
    from ..rules import RuleSpec, RuleTable, rules_lock

    spec = RuleSpec(src, dst, sport, dport, proto, level, stage)
    with _maps(iface, netns) as maps, rules_lock(iface, netns):
        t = RuleTable(maps)
        spec.record(t.nlevels)  # validate before anything else
        rec = t.add(spec, priority)
        pos = next(i + 1 for i, r in enumerate(t.records()) if r.id == rec.id)
    if json_out:
        emit_json({"id": rec.id, "priority": pos, "level": rec.level, "rule": spec.describe()})
        return
    typer.echo(f"rule {rec.id} (priority {pos}): {spec.describe()}" + (f" = level {rec.level}" if stage else ""))


def list_(iface: Iface, netns: Netns = None, json_out: Json = False) -> None:
    """The rules in lookup order, with the packets and bytes each matched."""
    with _maps(iface, netns) as maps:
        rows = rule_rows(maps)
    if json_out:
        emit_json(rows)
    else:
        print_rules(rows)


def delete(
    iface: Iface,
    rule_id: Annotated[Optional[int], typer.Argument(help="Rule id (see rule list)")] = None,
    netns: Netns = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every rule")] = False,
    json_out: Json = False,
) -> None:
    """Delete a rule by id, or all of them."""
    from ..rules import RuleTable, rules_lock

    if (rule_id is None) == (not all_):
        raise MfsError("rule del needs a rule id or --all")
    with _maps(iface, netns) as maps, rules_lock(iface, netns):
        t = RuleTable(maps)
        if all_:
            gone = t.clear()
        else:
            assert rule_id is not None  # exactly one of rule id / --all: checked above
            gone = [t.delete(rule_id)]
    if json_out:
        emit_json({"removed": [r.id for r in gone]})
        return
    typer.echo(f"removed {len(gone)} rule(s)" + (f": {', '.join(str(r.id) for r in gone)}" if gone else ""))


def register(app: typer.Typer) -> None:
    rule_app.command("add")(add)
    rule_app.command("list")(list_)
    rule_app.command("del")(delete)
    app.add_typer(rule_app, name="rule")
