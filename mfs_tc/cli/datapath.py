"""CLI verbs of the datapath: attach, detach, status, plan, doctor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import MfsError
from ..layout import MAX_LEVELS
from ..units import format_rate, parse_dscp_list, parse_rate
from .output import emit_json, human_bytes, print_table

if TYPE_CHECKING:
    from ..loader import AttachOptions

Iface = Annotated[str, typer.Argument(help="Interface name, e.g. eth0")]
Netns = Annotated[Optional[str], typer.Option("--netns", "-n", help="Network namespace (ip netns name)")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _options(
    iface: str,
    netns: str | None,
    levels: int,
    qdisc: str,
    rate: str | None,
    dscp: str | None,
    default_level: int | None,
    trust_dscp: bool,
    control_level: int = 0,
    keep_dscp: str | None = None,
    hook: str = "auto",
    group: str | None = None,
) -> AttachOptions:
    from ..loader import AttachOptions

    try:
        rate_bps = parse_rate(rate) if rate is not None else None  # '' is an error, not "link speed"
        dscp_list = parse_dscp_list(dscp)
        keep = [int(x) for x in keep_dscp.split(",") if x.strip()] if keep_dscp else []
    except ValueError as exc:
        raise MfsError(f"{exc} (--keep-dscp takes a list like 46,34)") from exc
    opts = AttachOptions(
        iface,
        netns,
        levels,
        qdisc,
        rate_bps,
        dscp_list,
        default_level,
        trust_dscp,
        control_level=control_level,
        keep_dscp=keep,
        hook=hook,
        group=group,
    )
    opts.validate()
    return opts


def attach(
    iface: Iface,
    netns: Netns = None,
    levels: Annotated[int, typer.Option("--levels", "-k", help=f"Strict-priority levels K (2..{MAX_LEVELS})")] = MAX_LEVELS,
    qdisc: Annotated[str, typer.Option(help="auto | ets | mqprio | htb | none (mark only)")] = "auto",
    rate: Annotated[Optional[str], typer.Option(help="Link rate for HTB, e.g. 10gbit (default: link speed)")] = None,
    dscp: Annotated[Optional[str], typer.Option(help="DSCP per level: 'default', 'none' (keep), or a list 46,40,...")] = None,
    default_level: Annotated[
        Optional[int], typer.Option(help="Level of unknown flows' payload, non-IP and fragments (default: K-2, the bulk level)")
    ] = None,
    trust_dscp: Annotated[bool, typer.Option("--trust-dscp", help="Switch port: level from the packet's DSCP")] = False,
    control_level: Annotated[
        int, typer.Option(help="Level of unknown flows' pure control packets (SYN, FIN, RST, ACK without payload)")
    ] = 0,
    keep_dscp: Annotated[
        Optional[str], typer.Option(help="DSCP values untracked traffic keeps, e.g. 46,34 (others leave with their level's DSCP)")
    ] = None,
    hook: Annotated[
        str, typer.Option(help="auto (tcx where the kernel has it) | tcx (pinned BPF link) | clsact (cls_bpf filter)")
    ] = "auto",
    group: Annotated[
        Optional[str],
        typer.Option(
            "--group",
            "-g",
            help="Access group (name or gid) of serving processes without root: what they need of the maps, nothing else (docs/access.md)",
        ),
    ] = None,
    json_out: Json = False,
) -> None:
    """Compile and attach the classifier on IFACE egress, pin its maps, set up the root qdisc."""
    from dataclasses import asdict

    from ..access import group_name
    from ..loader import attach as do_attach

    opts = _options(iface, netns, levels, qdisc, rate, dscp, default_level, trust_dscp, control_level, keep_dscp, hook, group)
    st = do_attach(opts)
    if json_out:
        emit_json(asdict(st))
        return
    where = f" in netns {netns}" if netns else ""
    typer.echo(
        f"attached to {iface}{where} ({st.hook}): {st.nlevels} levels, backend {st.backend}"
        + (f" at {format_rate(st.rate_bps)}" if st.backend == "htb" else "")
        + (", trust-dscp" if st.trust_dscp else "")
        + f"; maps in {st.pin_dir}"
        + (f"; access group {group_name(st.access_gid)}" if st.access_gid is not None else "")
    )


def detach(iface: Iface, netns: Netns = None, json_out: Json = False) -> None:
    """Remove what attach created and restore the previous root qdisc (safe to repeat)."""
    from ..loader import detach as do_detach

    result = do_detach(iface, netns)
    notes = [r[len("note: ") :] for r in result if r.startswith("note: ")]
    removed = [r for r in result if not r.startswith("note: ")]
    if json_out:
        emit_json({"ifname": iface, "netns": netns, "removed": removed, "notes": notes})
        return
    for n in notes:
        typer.echo(f"note: {n}")
    if removed:
        typer.echo(f"detached from {iface}: removed " + ", ".join(removed))
    else:
        typer.echo(f"nothing of mfs-tc on {iface}: nothing to do")


def status(
    iface: Annotated[Optional[str], typer.Argument(help="Interface (default: every attached one)")] = None,
    netns: Netns = None,
    json_out: Json = False,
) -> None:
    """Backend, levels and per-level packets/bytes, counters, flow count."""
    from ..access import group_name
    from ..attachment import attached
    from ..netlink import check_ifname, check_netns_name
    from ..status import read_status

    if iface is not None:
        check_ifname(iface)
    check_netns_name(netns)
    targets = [(netns, iface)] if iface else attached()
    if not targets:
        if json_out:
            emit_json([])
        else:
            typer.echo("mfs-tc is not attached anywhere")
        return
    results = [read_status(i, n) for n, i in targets]
    if json_out:
        emit_json(results if not iface else results[0])
        return
    for s in results:
        where = f" (netns {s['netns']})" if s["netns"] else ""
        typer.echo(
            f"{s['ifname']}{where} ({s['hook']}): backend {s['backend']}"
            + (f" {format_rate(s['rate_bps'])}" if s["backend"] == "htb" else "")
            + f", {len(s['levels'])} levels, default {s['default_level']}, scavenger {s['scavenger_level']}"
            + (", trust-dscp" if s["trust_dscp"] else "")
            + (f", access group {group_name(s['access_gid'])}" if s.get("access_gid") is not None else "")
            + f"; {s['flows']} flows, {s['requests']} requests"
        )
        print_table(
            ["level", "class", "dscp", "packets", "bytes"],
            [
                [l["level"], l["class"], "-" if l["dscp"] is None else l["dscp"], l["packets"], human_bytes(l["bytes"])]
                for l in s["levels"]
            ],
        )
        c = s["counters"]
        typer.echo("counters: " + ", ".join(f"{k} {v['packets']}" for k, v in c.items()))
        pr = s["pressure"]
        typer.echo(
            f"5-tuple map: {pr['flows']}/{pr['flows_max']} entries ({100 * (pr['flows_fill'] or 0):.1f}%), "
            f"{pr['flow_states']} kernel states; stale {pr['stale_packets']}; "
            f"socket storage {'on' if pr['socket_storage'] else 'off (kernel lacks it)'}"
        )
        if pr["state_slots_mapped"]:
            typer.echo(
                f"state slots: {pr['state_slots_claimed']}/{pr['state_slots_max']} in controllers' chunks; "
                f"{pr['state_lookup_packets']} packets looked their state up (no slot of their own)"
            )
        else:
            typer.echo("state slots: not mapped (no BPF_F_MMAPABLE): every flow's state is looked up")
        if s["rules"]:
            from .rules import print_rules

            typer.echo(f"rules ({len(s['rules'])}, first match wins):")
            print_rules(s["rules"])
            for stage, d in s["rule_stages"].items():
                typer.echo(f"stage {stage}: {d['packets']} packets, {human_bytes(d['bytes'])} by {d['rules']} rule(s)")
        for p in s["problems"]:
            typer.echo(f"warning: {p}")
        typer.echo("")


def plan(
    iface: Iface,
    netns: Netns = None,
    levels: Annotated[int, typer.Option("--levels", "-k")] = MAX_LEVELS,
    qdisc: Annotated[str, typer.Option()] = "auto",
    rate: Annotated[Optional[str], typer.Option()] = None,
    dscp: Annotated[Optional[str], typer.Option()] = None,
    default_level: Annotated[Optional[int], typer.Option()] = None,
    trust_dscp: Annotated[bool, typer.Option("--trust-dscp")] = False,
    hook: Annotated[str, typer.Option(help="auto | tcx | clsact")] = "auto",
    group: Annotated[Optional[str], typer.Option("--group", "-g", help="Access group of serving processes")] = None,
    rdma: Annotated[bool, typer.Option("--rdma", help="Per-level traffic classes for RoCE (NCCL, UCX, Mooncake)")] = False,
    json_out: Json = False,
) -> None:
    """Dry run: print the exact commands attach would run (nothing is changed)."""
    from ..loader import plan as make_plan

    opts = _options(iface, netns, levels, qdisc, rate, dscp, default_level, trust_dscp, hook=hook, group=group)
    if rdma:
        from ..maps import rdma_table

        rows = rdma_table(opts.dscp_table())
        if json_out:
            emit_json(rows)
        else:
            typer.echo("RoCE bypasses tc: set these on the transport per level (traffic class = DSCP << 2)")
            headers = list(rows[0].keys())
            print_table(headers, [[r[h] for h in headers] for r in rows])
        return
    p = make_plan(opts)
    if json_out:
        emit_json({"backend": p.backend.name, "notes": p.notes, "commands": [" ".join(c) for c in p.commands]})
    else:
        typer.echo(p.as_text())


def doctor(json_out: Json = False) -> None:
    """Check kernel features, bpffs, bcc and headers, each with a fix."""
    from dataclasses import asdict

    from ..doctor import run_checks

    checks = run_checks()
    if json_out:
        emit_json([asdict(c) for c in checks])
    else:
        print_table(
            ["check", "ok", "detail", "fix"],
            [[c.name, "yes" if c.ok else ("NO" if c.required else "no"), c.detail, "" if c.ok else c.fix] for c in checks],
        )
    if any(c.required and not c.ok for c in checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    for fn in (attach, detach, status, plan, doctor):
        app.command(fn.__name__)(fn)
