"""Results schema, aggregation, table and plots of the testbed report (no root needed)."""

from __future__ import annotations

import json

import pytest

from mfs_tc.results import (
    CSV_FIELDS,
    SCHEMA,
    aggregate,
    compare_results,
    comparison_table,
    load_results,
    percentile,
    summarize_run,
    summary_table,
    sweep,
    write_results,
)


def _rows(policy: str, seed: int, load: float, ttfts: list[float | None], slo: float = 1.0) -> list[dict]:
    rows = []
    for i, t in enumerate(ttfts, start=1):
        rows.append(
            {
                "request_id": i,
                "policy": policy,
                "arrival_s": 0.1 * i,
                "slo_s": slo,
                "ttft_s": t,
                "met": t is not None and t <= slo,
                "kv_fetch_s": 0.1,
                "collective_s": 0.2,
                "p2d_s": 0.3,
                "p2d_earliness_s": 0.05,
                "seed": seed,
                "load": load,
                "slo_scale": 5.0,
                "queue_s": 0.0,
            }
        )
    return rows


def test_percentile_interpolates_and_handles_empty():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def test_summarize_counts_unfinished_as_missed():
    run = summarize_run(
        "mfs",
        _rows("mfs", 1, 2.0, [0.5, 0.9, 1.5, None]),
        ccts_s=[0.1, 0.3],
        level_bytes=[10, 0, 5],
        seed=1,
        load=2.0,
        slo_scale=5.0,
    )
    assert run["requests"] == 4 and run["finished"] == 3 and run["met"] == 2
    assert run["attainment"] == pytest.approx(0.5)
    assert run["ttft_p50_s"] == pytest.approx(0.9)
    assert run["cct_mean_s"] == pytest.approx(0.2)
    assert run["stage_times_mean_s"]["p2d_s"] == pytest.approx(0.3)
    assert run["level_bytes"] == [10, 0, 5]


def test_aggregate_over_seeds_and_sweep_finds_highest_load_at_target():
    runs = []
    for load, good in ((1.0, 10), (2.0, 9), (3.0, 5)):
        for seed in (1, 2):
            t = [0.5] * good + [2.0] * (10 - good)
            runs.append(summarize_run("mfs", _rows("mfs", seed, load, t), seed=seed, load=load, slo_scale=5.0))
            t2 = [0.5] * (good - 2) + [2.0] * (12 - good)
            runs.append(summarize_run("fair", _rows("fair", seed, load, t2), seed=seed, load=load, slo_scale=5.0))
    aggs = aggregate(runs)
    mfs1 = next(a for a in aggs if a["policy"] == "mfs" and a["load"] == 1.0)
    assert mfs1["seeds"] == [1, 2] and mfs1["attainment"] == pytest.approx(1.0)
    assert mfs1["attainment_std"] == pytest.approx(0.0)
    sw = sweep(aggs)
    assert sw["axis"] == "load"
    assert sw["max_load_at_target"]["mfs"] == 2.0
    # mfs: 0.9 at 2.0, 0.5 at 3.0 -> crosses 0.9 at 2.0; fair: 0.8 at 1.0 -> never held
    assert sw["load_at_target_interpolated"]["mfs"] == pytest.approx(2.0)
    assert sw["load_at_target_interpolated"]["fair"] is None
    assert sw["max_load_at_target"]["fair"] is None  # 0.8 at its lightest load: never held


def test_write_and_reload_round_trip_with_plots(tmp_path):
    runs = [
        summarize_run(p, _rows(p, 1, l, [0.5, 0.8, 1.2]), ccts_s=[0.01], seed=1, load=l, slo_scale=5.0)
        for p in ("mfs", "fair")
        for l in (1.0, 2.0)
    ]
    summary = write_results(tmp_path, runs, {"source": "test"})
    assert summary["schema"] == SCHEMA
    for name in ("requests.csv", "summary.json", "ttft_cdf.png", "attainment.png", "attainment_vs_load.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    header = (tmp_path / "requests.csv").read_text().splitlines()[0].split(",")
    assert header == CSV_FIELDS
    assert len((tmp_path / "requests.csv").read_text().splitlines()) == 1 + 4 * 3
    s2, runs2 = load_results(tmp_path)
    assert [len(r["rows"]) for r in runs2] == [3, 3, 3, 3]
    again = write_results(tmp_path, runs2, s2["meta"])
    assert again["policies"] == json.loads(json.dumps(summary["policies"]))
    text = summary_table(again)
    assert "mfs" in text and "fair" in text and "attain" in text


def test_load_results_rejects_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="testbed run"):
        load_results(tmp_path / "nope")


def _results_dir(tmp_path, name: str, runs: list[tuple[str, int, float, list[float | None]]]):
    d = tmp_path / name
    write_results(
        d,
        [summarize_run(p, _rows(p, seed, load, ttfts), seed=seed, load=load, slo_scale=5.0) for p, seed, load, ttfts in runs],
        plots=False,
    )
    return d


def test_compare_pairs_requests_and_differs_per_point(tmp_path):
    # a: mfs meets 2 of 3 at seed 1; b: the same requests, 3 of 3, plus a request and a point
    # a does not have (left out: only what both have is compared)
    a = _results_dir(tmp_path, "a", [("mfs", 1, 2.0, [0.5, 1.5, 0.9]), ("fair", 1, 2.0, [0.5, 0.5, 0.5])])
    b = _results_dir(
        tmp_path, "b", [("mfs", 1, 2.0, [0.5, 0.7, 0.9, 3.0]), ("fair", 1, 2.0, [0.5, None, 0.5]), ("edf", 1, 2.0, [0.1])]
    )
    pts = {p.policy: p for p in compare_results(a, b)}
    assert set(pts) == {"fair", "mfs"}
    mfs = pts["mfs"]
    assert mfs.requests == 3 and mfs.seeds == (1,) and mfs.load == 2.0
    assert mfs.attainment == pytest.approx((2 / 3, 1.0))
    assert mfs.difference == pytest.approx(1 / 3)
    assert mfs.times_s["ttft_s"] == pytest.approx(((0.5 + 1.5 + 0.9) / 3, (0.5 + 0.7 + 0.9) / 3))
    assert mfs.times_s["p2d_s"] == pytest.approx((0.3, 0.3))
    # an unfinished request is a miss, and has no TTFT to average
    assert pts["fair"].attainment == pytest.approx((1.0, 2 / 3))
    assert pts["fair"].times_s["ttft_s"] == pytest.approx((0.5, 0.5))
    table = comparison_table(list(pts.values()), "a", "b")
    assert "+0.333" in table and "-0.333" in table
    assert "largest attainment difference: -0.333 (fair at load 2.00)" in table  # the first of a tie
    assert pts["mfs"].as_dict()["difference"] == pytest.approx(1 / 3)


def test_compare_without_a_common_point_is_a_clear_error(tmp_path):
    a = _results_dir(tmp_path, "a", [("mfs", 1, 2.0, [0.5])])
    b = _results_dir(tmp_path, "b", [("mfs", 1, 3.0, [0.5])])
    with pytest.raises(ValueError, match="no point .* in common"):
        compare_results(a, b)
