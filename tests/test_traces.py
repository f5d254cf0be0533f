"""Trace files: Mooncake JSONL and Splitwise/Azure CSV detected by content, the conversation
reuse model for hash-less traces, trace windows per seed, and the bad-format error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfs_tc.errors import MfsError
from mfs_tc.workload import WorkloadConfig, generate, trace_window
from mfs_tc.workload.comparison import ComparisonConfig
from mfs_tc.workload.config import default_trace_path
from mfs_tc.workload.shapes import cluster_preset
from mfs_tc.workload.traces import ConversationReuse, count_records, read_records, trace_format

SPLITWISE = default_trace_path("azure")


def _csv(tmp_path: Path, rows: list[tuple[float, int, int]], name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + "".join(f"{t},{i},{o}\n" for t, i, o in rows))
    return p


def test_formats_detected_by_content(tmp_path: Path) -> None:
    j = tmp_path / "m.txt"  # the name does not decide
    j.write_text(json.dumps({"timestamp": 1500, "input_length": 700, "output_length": 3, "hash_ids": [1, 2]}) + "\n")
    assert trace_format(j) == "mooncake"
    assert len(list(read_records(j))) == 1
    assert next(read_records(j)).t_s == 1.5 and next(read_records(j)).hashes == (1, 2)
    c = _csv(tmp_path, [(0.0, 100, 5), (0.5, 200, 6)], name="c.jsonl")
    assert trace_format(c) == "splitwise" and count_records(c) == 2
    r = list(read_records(c))
    assert [(x.t_s, x.input_tokens, x.output_tokens, x.hashes) for x in r] == [(0.0, 100, 5, None), (0.5, 200, 6, None)]
    a = tmp_path / "azure.csv"  # the Azure public dataset's own columns, in another order
    a.write_text(
        "ContextTokens,TIMESTAMP,GeneratedTokens\n" "374,2023-11-16 18:15:46.6805900,44\n396,2023-11-16 18:15:50.9951690,109\n"
    )
    assert trace_format(a) == "azure"
    r = list(read_records(a))
    assert r[0].input_tokens == 374 and r[1].output_tokens == 109
    assert r[1].t_s - r[0].t_s == pytest.approx(4.314579, abs=1e-6)


def test_bad_format_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("time,prompt,answer\n1,2,3\n")
    with pytest.raises(MfsError, match="not a known trace format.*arrived_at,num_prefill_tokens"):
        generate(WorkloadConfig(trace_path=bad, num_requests=1))
    row = _csv(tmp_path, [(0.0, 100, 5)])
    row.write_text(row.read_text() + "1.0,lots,3\n")
    with pytest.raises(MfsError, match=r"t.csv:3: bad splitwise trace row"):
        generate(WorkloadConfig(trace_path=row, num_requests=2))
    with pytest.raises(MfsError, match="trace not found.*--trace"):
        generate(WorkloadConfig(kind="azure", trace_path=tmp_path / "none.csv"))
    with pytest.raises(ValueError, match="--trace FILE"):
        WorkloadConfig(kind="trace")


def test_conversation_reuse_model() -> None:
    m = ConversationReuse(block_tokens=100, continue_fraction=1.0)
    assert m.next(250, 50) == (0, 1)  # nothing to continue: a new conversation
    assert m.next(200, 10) == (0, 2)  # 250 + 50 tokens of history do not fit in 200
    reused, conv = m.next(1000, 10)  # continues 1 (history 300) or 2 (history 210)
    assert (reused, conv) in ((300, 1), (200, 2))
    never = ConversationReuse(block_tokens=100, continue_fraction=0.0)
    assert all(never.next(1000, 10)[0] == 0 for _ in range(20))
    # deterministic: a property of the trace, not of the run's seed
    a = ConversationReuse(100, 0.5)
    b = ConversationReuse(100, 0.5)
    seq = [(i * 37 % 900 + 50, 20) for i in range(200)]
    assert [a.next(*x) for x in seq] == [b.next(*x) for x in seq]


def test_csv_workload_reuse_windows_and_routing(tmp_path: Path) -> None:
    rows = [(0.25 * i, 600 + 97 * (i % 13) * 8, 30) for i in range(60)]
    p = _csv(tmp_path, rows)
    cfg = dict(trace_path=p, num_requests=20, max_input_tokens=0, byte_scale=1.0)
    w = generate(WorkloadConfig(**cfg))
    assert w.summary()["trace_format"] == "splitwise"
    assert [r.input_tokens for r in w.requests] == [r[1] for r in rows[:20]]
    assert w.requests[-1].arrival_s == pytest.approx(19 * 0.25)
    assert any(r.reused_tokens > 0 for r in w.requests)
    assert all(r.reused_tokens % 512 == 0 and r.reused_tokens < r.input_tokens for r in w.requests)
    none = generate(WorkloadConfig(**cfg, conversation_continue=0.0))
    assert all(r.reused_tokens == 0 for r in none.requests)
    # a window sees the history before it: the same request gets the same reuse
    w2 = generate(WorkloadConfig(**cfg, trace_offset=10))
    assert [r.reused_tokens for r in w2.requests[:10]] == [r.reused_tokens for r in w.requests[10:]]
    # seeds pick windows of the CSV trace (header not counted) through the comparison config
    assert count_records(p) == 60 and trace_window(p, 2, 20) == 20
    cc = ComparisonConfig(workload="trace", trace_path=p, num_requests=20)
    assert cc.point_config(2, None, 5.0, cluster_preset("testbed")).trace_offset == 20
    assert cc.point_config(3, None, 5.0, cluster_preset("testbed")).trace_offset == 0  # wraps


@pytest.mark.skipif(not SPLITWISE.is_file(), reason="splitwise_conv.csv not present")
def test_the_azure_conversation_trace() -> None:
    w = generate(WorkloadConfig(kind="azure", num_requests=400, load=4.0))
    assert w.cfg.trace_path.name == "splitwise_conv.csv" and len(w.requests) == 400
    assert w.rate == pytest.approx(4.0, rel=0.05)
    reuse = sum(r.reused_tokens for r in w.requests) / sum(r.input_tokens for r in w.requests)
    assert 0.05 < reuse < 0.6  # docs/hardware.md: the model's reuse on this trace
    # the same file through the default (mooncake) kind with --trace: detected as CSV
    same = generate(WorkloadConfig(trace_path=SPLITWISE, num_requests=400, load=4.0))
    assert [r.input_tokens for r in same.requests] == [r.input_tokens for r in w.requests]


def test_sim_run_takes_a_csv_trace_and_hardware_presets(tmp_path: Path, capsys) -> None:
    """`mfs-tc sim run --trace FILE.csv` (default workload kind) on the paper's testbed with a
    real model: seeds pick windows, the summary names the trace's format; a bad file is a clean
    error."""
    from mfs_tc.cli import main

    p = _csv(tmp_path, [(0.1 * i, 400 + 211 * (i % 7), 20) for i in range(40)])
    out = tmp_path / "res"
    rc = main(
        [
            "sim",
            "run",
            "-p",
            "mfs,fair",
            "--trace",
            str(p),
            "--requests",
            "15",
            "--seeds",
            "1,2",
            "--load",
            "30",
            "--cluster",
            "paper",
            "--model",
            "llama3-8b",
            "--no-plots",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    wls = [r["workload"] for r in summary["runs"]]
    assert {w["trace_format"] for w in wls} == {"splitwise"}
    assert {w["trace_offset"] for w in wls} == {0, 15}
    assert {w["model"] for w in wls} == {"llama3-8b:h100:tp4"} and wls[0]["hosts"] == 32
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["sim", "run", "-p", "mfs", "--trace", str(bad), "--requests", "2"]) != 0
    assert "not a known trace format" in capsys.readouterr().err
