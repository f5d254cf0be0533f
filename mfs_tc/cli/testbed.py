"""CLI verbs: testbed run / report / contention / clean (the netns testbed, netns_testbed/)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import MfsError
from .args import floats, ints, policy_config_items

testbed_app = typer.Typer(
    help="Emulated cluster in network namespaces: replay a workload under " "each policy, real TCP flows, SLO attainment.",
    no_args_is_help=True,
)


def _rate(text: str) -> float:
    from ..units import parse_rate

    try:
        return float(parse_rate(text))
    except ValueError as exc:
        raise MfsError(str(exc)) from exc


@testbed_app.command("run")
def run_cmd(
    policy: Annotated[
        str, typer.Option("--policy", "-p", help="Policies to compare, comma separated")
    ] = "mfs,fair,edf,karuna,sjf,pias",
    workload: Annotated[
        str, typer.Option(help="mooncake (the real trace), azure (the Azure conversation trace) or poisson")
    ] = "mooncake",
    requests: Annotated[int, typer.Option("--requests", "-n", help="Requests per run")] = 40,
    load: Annotated[
        str,
        typer.Option(
            help="Arrival rate(s) in requests/s, comma separated for a sweep; 'trace' replays the Mooncake trace at its own rate"
        ),
    ] = "3",
    slo_scale: Annotated[str, typer.Option(help="SLO = this x unloaded TTFT; comma separated for a sweep")] = "5",
    seed: Annotated[str, typer.Option(help="Seeds: 1,2,3 or 1-3")] = "1",
    rate: Annotated[str, typer.Option(help="Link rate of every host and switch port")] = "200mbit",
    model: Annotated[
        str,
        typer.Option(
            help="Model shape: dense-small, dense-70b, moe-8x, or qwen-72b, llama3-70b, llama3-8b, mixtral-8x7b (docs/hardware.md)"
        ),
    ] = "dense-small",
    max_batch: Annotated[Optional[int], typer.Option(help="Requests per prefill batch (workload default 4)")] = None,
    byte_scale: Annotated[Optional[float], typer.Option(help="Multiply every byte count (workload default 1/32)")] = None,
    spread_bursts: Annotated[
        bool,
        typer.Option(
            "--spread-bursts/--no-spread-bursts",
            help="Spread the trace's same-timestamp bursts over the gap to the next timestamp",
        ),
    ] = True,
    datapath: Annotated[
        str, typer.Option(help="mfs (classifier + strict-priority HTB) or plain (HTB only: no scheduling)")
    ] = "mfs",
    host_queue_ms: Annotated[
        float,
        typer.Option(
            help="Hosts' TCP small-queue budget and GSO size as this much time at the link rate (0: the kernel's "
            "byte defaults, which queue tens of ms at emulated rates)"
        ),
    ] = 1.0,
    rto_min_ms: Annotated[
        float,
        typer.Option(help="TCP's minimum retransmission timeout on the hosts' routes in ms (0: the kernel's 200 ms)"),
    ] = 0.0,
    policy_config: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE policy setting (repeatable)")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Results directory (default results/testbed-<time>)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Replay the same arrivals under each policy in turn; write requests.csv, summary.json, plots."""
    from mfs_tc.results import summary_table
    from netns_testbed.runner import RunConfig, run_testbed

    loads: list[float | None]
    if load.strip().lower() in ("trace", "native"):
        loads = [None]
    else:
        loads = list(floats(load, "load"))
        if not loads:
            raise MfsError("--load: give at least one rate, e.g. 3 or 1,2,3 (or 'trace')")
    try:
        cfg = RunConfig(
            policies=[p.strip() for p in policy.split(",") if p.strip()],
            seeds=ints(seed, "seed"),
            loads=loads,
            slo_scales=floats(slo_scale, "slo-scale"),
            workload=workload,
            num_requests=requests,
            model=model,
            rate_bps=_rate(rate),
            byte_scale=byte_scale,
            max_batch=max_batch,
            datapath=datapath,
            spread_bursts=spread_bursts,
            host_queue_ms=host_queue_ms,
            rto_min_ms=rto_min_ms,
            policy_config=policy_config_items(policy_config or []),
        )
        cfg.workload_config(cfg.seeds[0], cfg.loads[0], cfg.slo_scales[0])
    except ValueError as exc:
        raise MfsError(str(exc)) from exc
    out_dir = out or Path("results") / time.strftime("testbed-%Y%m%d-%H%M%S")
    summary = run_testbed(cfg, out_dir, progress_out=sys.stderr)
    if json_out:
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2, default=str))
        return
    typer.echo(summary_table(summary))
    typer.echo(f"\nresults in {out_dir}/ (requests.csv, summary.json, *.png)")


@testbed_app.command("matrix")
def matrix_cmd(
    policy: Annotated[str, typer.Option("--policy", "-p", help="Comma-separated policies")] = "mfs,fair,edf,karuna,sjf,pias",
    seeds: Annotated[str, typer.Option("--seed", "--seeds", help="Seeds: 1,2,3 or 1-3")] = "1-3",
    load: Annotated[
        Optional[str], typer.Option(help="Loads as fractions of the saturation load (comma-separated; default 0.5,0.85,1.2)")
    ] = None,
    slo_scale: Annotated[Optional[str], typer.Option(help="SLO scales (comma-separated; default 5)")] = None,
    requests: Annotated[Optional[int], typer.Option(help="Requests per run (default 40)")] = None,
    levels: Annotated[int, typer.Option("--levels", "-k", help="Strict-priority levels K")] = 8,
    bound: Annotated[bool, typer.Option(help="Compute the reference bound per point")] = True,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Results directory (runs.jsonl appended as runs finish: rerun to resume)")
    ] = Path("results/testbed-matrix"),
    plots: Annotated[bool, typer.Option(help="Write matrix.png")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the matrix summary as JSON")] = False,
) -> None:
    """The simulator's matrix, small, on the netns testbed (real TCP, points one after another):
    per point attainment with a 95% CI over seeds, the bound; load held at 90%."""
    from dataclasses import replace

    from mfs_tc.sim.matrix import MatrixConfig
    from netns_testbed.matrix import DEFAULT_SEEDS, TESTBED_SCENARIOS, run_testbed_matrix

    from .sim import echo_matrix, matrix_overrides

    try:
        sc = TESTBED_SCENARIOS["testbed-mooncake"]
        over = matrix_overrides(requests, load, slo_scale)
        cfg = MatrixConfig(
            scenarios=[replace(sc, **over)],
            policies=[p.strip() for p in policy.split(",") if p.strip()],
            seeds=ints(seeds, "seed") if seeds else DEFAULT_SEEDS,
            levels=levels,
            bound=bound,
        )
        summary = run_testbed_matrix(cfg, out, plots=plots)
    except ValueError as exc:
        raise MfsError(str(exc)) from None
    echo_matrix(summary, out, plots=plots, json_out=json_out)


@testbed_app.command("report")
def report_cmd(
    directory: Annotated[Path, typer.Argument(help="A directory written by `testbed run` (or the simulator)")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Only print the table")] = False,
) -> None:
    """Re-render the table, summary.json and the plots of a results directory."""
    from mfs_tc.results import load_results, summary_table, write_results

    try:
        summary, runs = load_results(directory)
    except (FileNotFoundError, ValueError) as exc:
        raise MfsError(str(exc)) from exc
    summary = write_results(directory, runs, summary.get("meta"), plots=not no_plots)
    if json_out:
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2, default=str))
        return
    typer.echo(summary_table(summary))


@testbed_app.command("contention")
def contention_cmd(
    policy: Annotated[str, typer.Option("--policy", "-p", help="Policies, comma separated")] = "mfs,fair",
    rate: Annotated[str, typer.Option(help="Link rate")] = "100mbit",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Results directory (none: do not write)")] = None,
) -> None:
    """The purpose-built case: a tight and a loose request's p2d on one bottleneck link."""
    from mfs_tc.results import summary_table
    from netns_testbed.runner import Progress, RunConfig, live_topology, run_scenarios
    from netns_testbed.scenarios import contention_scenario, contention_topology

    rbps = _rate(rate)
    try:
        cfg = RunConfig(policies=[p.strip() for p in policy.split(",") if p.strip()], rate_bps=rbps)
    except ValueError as exc:
        raise MfsError(str(exc)) from exc
    with live_topology(contention_topology(rbps)) as topo:
        summary = run_scenarios(
            topo,
            [(0, None, 1.0, lambda: contention_scenario(rbps))],
            cfg,
            out,
            Progress(sys.stderr),
            {"source": "testbed", "scenario": "contention"},
        )
    typer.echo(summary_table(summary))
    for r in summary["runs"]:
        typer.echo(
            f"{r['policy']}: "
            + ", ".join(
                f"{'tight' if int(x['request_id']) == 1 else 'loose'} TTFT "
                f"{float(x['ttft_s']) * 1e3:.0f} ms / SLO {float(x['slo_s']) * 1e3:.0f} ms"
                for x in (r.get("rows") or [])
                if x.get("ttft_s") not in (None, "")
            )
        )


@testbed_app.command("clean")
def clean_cmd(prefix: Annotated[str, typer.Option(help="Name prefix of testbed namespaces")] = "mfsb") -> None:
    """Remove namespaces and pins left by crashed testbed runs, and qdisc-probe namespaces of
    killed mfs-tc processes (live ones are kept)."""
    from netns_testbed.topology import cleanup_leftovers

    from ..backends import cleanup_stale_probes

    removed = cleanup_leftovers(prefix) + cleanup_stale_probes()
    typer.echo("removed: " + (", ".join(removed) if removed else "nothing"))


def register(app: typer.Typer) -> None:
    app.add_typer(testbed_app, name="testbed")
