"""CLI verbs: `mfs-tc sim run` (flow-level simulator; the testbed's policy and workload flags)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import MfsError
from .args import floats, ints, policy_config_items

sim_app = typer.Typer(help="Flow-level simulator: the same policies and workloads at cluster scale.", no_args_is_help=True)


ISOLATE_HELP = (
    "Stages whose every instance has the network to itself (comma-separated: kv_fetch,collective,p2d): "
    "what their contention costs"
)


@sim_app.command("run")
def run_cmd(
    policy: Annotated[str, typer.Option("--policy", "-p", help="Comma-separated policies")] = "mfs,fair,edf,karuna,sjf,pias",
    workload: Annotated[
        str, typer.Option(help="mooncake | azure (Azure conversation trace, splitwise_conv.csv) | trace (--trace FILE) | poisson")
    ] = "mooncake",
    requests: Annotated[int, typer.Option(help="Requests per run")] = 200,
    load: Annotated[
        Optional[str], typer.Option(help="Arrival rate(s) in requests/s, comma-separated (sweep); default: the trace's own times")
    ] = None,
    slo_scale: Annotated[str, typer.Option(help="SLO scale(s) x unloaded TTFT, comma-separated (sweep)")] = "5",
    seeds: Annotated[str, typer.Option("--seed", "--seeds", help="Seeds: 1,2,3 or 1-3")] = "1",
    model: Annotated[
        str,
        typer.Option(
            help="dense-small | dense-70b | moe-8x, or from real configs and GPU profiles: qwen-72b | llama3-70b | llama3-8b | mixtral-8x7b [:h100|:a100][:tpG] (docs/hardware.md)"
        ),
    ] = "dense-small",
    cluster: Annotated[
        str,
        typer.Option(
            help="testbed | c256 | c1024 | paper (8x4 GPUs, 100G, one switch) | ls256-200g | ls576-400g (leaf-spine, docs/hardware.md)"
        ),
    ] = "testbed",
    rate: Annotated[Optional[str], typer.Option(help="Host link rate, e.g. 200mbit, 400gbit (default: the cluster's)")] = None,
    byte_scale: Annotated[
        Optional[float], typer.Option(help="Multiply every byte count (default: 1/32 on the testbed cluster, 1 on the others)")
    ] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="Requests per prefill batch")] = None,
    time_scale: Annotated[Optional[float], typer.Option(help="Multiply trace inter-arrival times")] = None,
    trace: Annotated[
        Optional[Path],
        typer.Option(
            help="Trace file: Mooncake JSONL or Splitwise/Azure CSV, detected from the content (default: the workload's trace in shared/traces)"
        ),
    ] = None,
    spread_bursts: Annotated[bool, typer.Option(help="Spread the trace's same-timestamp bursts over the gap to the next")] = True,
    levels: Annotated[int, typer.Option("--levels", "-k", help="Strict-priority levels K")] = 8,
    tick_ms: Annotated[float, typer.Option(help="Re-level tick in simulated ms (the model's resolution)")] = 1.0,
    flow_setup_ms: Annotated[
        float, typer.Option(help="Per-flow setup latency in ms (connection + registration; 0: fluid ideal)")
    ] = 0.0,
    goodput: Annotated[
        float, typer.Option(help="Payload fraction of the link rate (TCP/IP headers: 1448/1514 = 0.956; 1: fluid ideal)")
    ] = 1.0,
    queue_kb: Annotated[
        float,
        typer.Option(
            help="Standing queue of a shared saturated band in kB: such flows land queue/rate after their last byte (0: fluid ideal)"
        ),
    ] = 0.0,
    promotion_rto_ms: Annotated[
        float,
        typer.Option(
            help="A starved flow's promotion waits for a packet: its band moving again or TCP's retransmission "
            "timeout, this long after it stalled and doubling (200: Linux's minimum; 0: fluid ideal)"
        ),
    ] = 0.0,
    aggregate_groups: Annotated[
        bool, typer.Option(help="Simulate each prefill group's G symmetric rank flows as one weighted flow (exact; much faster)")
    ] = True,
    policy_config: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE policy setting (repeatable)")] = None,
    bound: Annotated[
        bool,
        typer.Option(help="Compute the reference bound per point (mfs_tc.bound: an LP no schedule beats) and the coupled bound"),
    ] = True,
    isolate: Annotated[
        Optional[str],
        typer.Option(help=ISOLATE_HELP),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Results directory (requests.csv, summary.json, plots)")
    ] = None,
    plots: Annotated[bool, typer.Option(help="Write PNG plots")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Simulate every policy on the same workload; print a table, write results under --out."""
    from ..sim.runner import SimRunConfig, run_sim
    from ..units import parse_rate

    try:
        cfg = SimRunConfig(
            policies=[p.strip() for p in policy.split(",") if p.strip()],
            seeds=ints(seeds, "seed"),
            loads=list(floats(load, "load")) if load else [None],
            slo_scales=floats(slo_scale, "slo scale"),
            workload=workload,
            num_requests=requests,
            model=model,
            cluster=cluster,
            rate_bps=float(parse_rate(rate)) if rate else None,
            byte_scale=byte_scale,
            max_batch=max_batch,
            time_scale=time_scale,
            trace_path=trace,
            spread_bursts=spread_bursts,
            levels=levels,
            tick_s=tick_ms / 1e3,
            flow_setup_s=flow_setup_ms / 1e3,
            goodput=goodput,
            queue_bytes=queue_kb * 1e3,
            promotion_rto_s=promotion_rto_ms / 1e3,
            aggregate_groups=aggregate_groups,
            policy_config=policy_config_items(policy_config or []),
            bound=bound,
            isolate=isolated_stages(isolate),
        )
        summary = run_sim(cfg, out, plots=plots)
    except ValueError as exc:
        raise MfsError(str(exc)) from None
    if json_out:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    from ..results import summary_table

    typer.echo(summary_table(summary))
    if out:
        typer.echo(f"results in {out}/ (requests.csv, summary.json, plots)")


@sim_app.command("matrix")
def matrix_cmd(
    scenario: Annotated[
        Optional[list[str]],
        typer.Option(
            "--scenario",
            "-s",
            help="Scenario preset name or KEY=VALUE,... (name, workload, model, cluster, loads=1/2/3, slo=3, requests, byte_scale); repeatable; default: the documented matrix (--list)",
        ),
    ] = None,
    policy: Annotated[str, typer.Option("--policy", "-p", help="Comma-separated policies")] = "mfs,fair,edf,karuna,sjf,pias",
    seeds: Annotated[str, typer.Option("--seed", "--seeds", help="Seeds: 1,2,3 or 1-5")] = "1-5",
    requests: Annotated[Optional[int], typer.Option(help="Override every scenario's request count")] = None,
    load: Annotated[Optional[str], typer.Option(help="Override every scenario's loads (comma-separated req/s)")] = None,
    slo_scale: Annotated[Optional[str], typer.Option(help="Override every scenario's SLO scales (comma-separated)")] = None,
    jobs: Annotated[
        Optional[int], typer.Option("--jobs", "-j", help="Parallel worker processes (default: all cores; 1: serial)")
    ] = None,
    executor: Annotated[str, typer.Option(help="local (process pool) | ray (pip install 'mfs-tc[ray]')")] = "local",
    address: Annotated[
        Optional[str], typer.Option(help="Ray cluster address (with --executor ray; default: a local Ray)")
    ] = None,
    levels: Annotated[int, typer.Option("--levels", "-k", help="Strict-priority levels K")] = 8,
    tick_ms: Annotated[float, typer.Option(help="Re-level tick in simulated ms")] = 1.0,
    flow_setup_ms: Annotated[float, typer.Option(help="Per-flow setup latency in ms")] = 0.0,
    promotion_rto_ms: Annotated[
        float, typer.Option(help="A starved flow's promotion waits for a packet (as in `sim run`; 0: fluid ideal)")
    ] = 0.0,
    bound: Annotated[bool, typer.Option(help="Compute the reference bound and the coupled bound per point")] = True,
    policy_config: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE policy setting (repeatable)")] = None,
    isolate: Annotated[
        Optional[str],
        typer.Option(help=ISOLATE_HELP),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Results directory (runs.jsonl appended as runs finish: rerun to resume; matrix.json, matrix.png)"
        ),
    ] = Path("results/matrix"),
    plots: Annotated[bool, typer.Option(help="Write matrix.png")] = True,
    list_scenarios: Annotated[bool, typer.Option("--list", help="List the scenario presets and exit")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the matrix summary as JSON")] = False,
) -> None:
    """Every policy on every point of the scenarios (seeds x loads x SLO scales), in parallel;
    per point attainment with a 95% CI, the bound, network utilisation; load held at 90%."""
    from dataclasses import replace

    from ..sim.matrix import DEFAULT_SCENARIOS, SCENARIOS, MatrixConfig, parse_scenario, run_matrix

    if list_scenarios:
        for name, sc in SCENARIOS.items():
            mark = "*" if name in DEFAULT_SCENARIOS else " "
            typer.echo(
                f"{mark} {name:<24} {sc.workload:<9} {sc.model:<12} {sc.cluster:<8} "
                f"loads {'/'.join(f'{x:g}' for x in sc.loads)}  slo {'/'.join(f'{x:g}' for x in sc.slo_scales)}  "
                f"{sc.requests} requests"
            )
        return
    try:
        scs = [parse_scenario(s) for s in (scenario or DEFAULT_SCENARIOS)]
        over = matrix_overrides(requests, load, slo_scale)
        scs = [replace(s, **over) for s in scs]
        cfg = MatrixConfig(
            scenarios=scs,
            policies=[p.strip() for p in policy.split(",") if p.strip()],
            seeds=ints(seeds, "seed"),
            levels=levels,
            tick_s=tick_ms / 1e3,
            flow_setup_s=flow_setup_ms / 1e3,
            promotion_rto_s=promotion_rto_ms / 1e3,
            bound=bound,
            policy_config=policy_config_items(policy_config or []),
            isolate=isolated_stages(isolate),
        )
        if tick_ms <= 0 or flow_setup_ms < 0 or promotion_rto_ms < 0:
            raise ValueError("--tick-ms must be positive, --flow-setup-ms and --promotion-rto-ms not negative")
        summary = run_matrix(cfg, out, jobs=jobs, executor=executor, address=address, plots=plots)
    except ValueError as exc:
        raise MfsError(str(exc)) from None
    echo_matrix(summary, out, plots=plots, json_out=json_out)


@sim_app.command("compare")
def compare_cmd(
    a: Annotated[Path, typer.Argument(help="A results directory (e.g. `testbed run -o A`)")],
    b: Annotated[Path, typer.Argument(help="Another one on the same workload (e.g. `sim run -o B`)")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON")] = False,
) -> None:
    """Two results directories side by side, request by request: per point (policy, load, SLO
    scale) the attainment in each, the difference, and the mean time of every stage."""
    from ..results import compare_results, comparison_table

    try:
        points = compare_results(a, b)
    except (FileNotFoundError, ValueError) as exc:
        raise MfsError(str(exc)) from exc
    if json_out:
        typer.echo(json.dumps([p.as_dict() for p in points], indent=2))
        return
    typer.echo(comparison_table(points, a.name or str(a), b.name or str(b)))


def isolated_stages(text: str | None) -> tuple[str, ...]:
    """--isolate: stage names, comma-separated."""
    from ..model import STAGES

    names = tuple(dict.fromkeys(x.strip() for x in (text or "").split(",") if x.strip()))
    bad = [x for x in names if x not in STAGES]
    if bad:
        raise ValueError(f"--isolate: unknown stage(s) {', '.join(bad)}: choose from {', '.join(STAGES)}")
    return names


def matrix_overrides(requests: int | None, load: str | None, slo_scale: str | None) -> dict[str, Any]:
    """Scenario fields a matrix command's --requests/--load/--slo-scale override."""
    over: dict[str, Any] = {}
    if requests is not None:
        if requests < 1:
            raise ValueError("--requests must be at least 1")
        over["requests"] = requests
    if load:
        over["loads"] = tuple(floats(load, "load"))
    if slo_scale:
        over["slo_scales"] = tuple(floats(slo_scale, "slo-scale"))
    return over


def echo_matrix(summary: dict[str, Any], out: Path, *, plots: bool, json_out: bool) -> None:
    """A matrix summary as JSON or as the table, with where the files are."""
    from ..sim.matrix import matrix_table

    if json_out:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    typer.echo(matrix_table(summary))
    typer.echo(f"results in {out}/ (runs.jsonl, matrix.json" + (", matrix.png)" if plots else ")"))


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
