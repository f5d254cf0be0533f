"""`mfs-tc sim run`: results in the testbed's shape, sweeps, clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mfs_tc.cli import main


def test_sim_run_writes_testbed_shaped_results(tmp_path: Path, capsys) -> None:
    out = tmp_path / "res"
    rc = main(["sim", "run", "-p", "mfs,fair", "--workload", "poisson", "--requests", "40", "--load", "4,12", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "mfs-tc-results/1"
    assert summary["meta"]["source"] == "sim"
    assert {(a["policy"], a["load"]) for a in summary["policies"]} == {("mfs", 4.0), ("mfs", 12.0), ("fair", 4.0), ("fair", 12.0)}
    run = summary["runs"][0]
    for k in (
        "attainment",
        "ttft_p50_s",
        "ttft_p90_s",
        "ttft_p99_s",
        "cct_mean_s",
        "p2d_earliness_mean_s",
        "stage_times_mean_s",
        "level_bytes",
    ):
        assert k in run
    assert sum(run["level_bytes"]) == sum(run["stage_bytes"].values())
    assert summary["sweep"]["axis"] == "load"
    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert len(rows) == 4 * 40
    assert {
        "request_id",
        "policy",
        "arrival_s",
        "slo_s",
        "ttft_s",
        "met",
        "kv_fetch_s",
        "collective_s",
        "p2d_s",
        "p2d_earliness_s",
        "seed",
    } <= set(rows[0])
    assert (out / "attainment_vs_load.png").is_file()
    # heavier load cannot help attainment here (same seed, same requests)
    att = {(a["policy"], a["load"]): a["attainment"] for a in summary["policies"]}
    assert att[("fair", 12.0)] <= att[("fair", 4.0)]
    assert "mfs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--policy", "nope"], "unknown policy"),
        (["--load", "fast"], "--load"),
        (["--cluster", "huge"], "unknown cluster"),
        (["--model", "gpt"], "unknown model"),
        (["--tick-ms", "0"], "tick"),
        (["--policy-config", "oops"], "KEY=VALUE"),
        (["--policy", "mfs,edf", "--policy-config", "scavenger=false"], "no config key scavenger"),
        (["--promotion-rto-ms", "-1"], "--promotion-rto-ms"),
        (["--trace", "/no/such/trace.jsonl"], "--trace"),
    ],
)
def test_sim_run_bad_input_is_a_clear_error(args: list[str], msg: str, capsys) -> None:
    rc = main(["sim", "run", "--requests", "5", *args])
    assert rc != 0
    assert msg in capsys.readouterr().err


def test_sim_compare_of_two_runs(tmp_path: Path, capsys) -> None:
    # the same workload with and without a per-flow setup latency: every request is paired,
    # and the latency shows in the times it lengthens (every layer's collective waits for it)
    args = ["sim", "run", "-p", "fair", "--workload", "poisson", "--requests", "30", "--load", "6"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--flow-setup-ms", "20", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["sim", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    (p,) = json.loads(capsys.readouterr().out)
    assert p["policy"] == "fair" and p["requests"] == 30
    a_coll, b_coll = p["times_mean_s"]["collective_s"]
    assert b_coll >= a_coll + 0.02
    a_ttft, b_ttft = p["times_mean_s"]["ttft_s"]
    assert b_ttft > a_ttft
    assert p["difference"] == pytest.approx(p["attainment"][1] - p["attainment"][0])
    assert main(["sim", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["policy", "load", "slo"] and "largest attainment difference" in out
    assert main(["sim", "compare", str(tmp_path / "a"), str(tmp_path / "nothing")]) == 1
    assert "not found" in capsys.readouterr().err
