"""make_policy, configuration errors, describe(), calibration."""

from __future__ import annotations

import json

import pytest

from mfs_tc.entry import FlowEntry
from mfs_tc.model import Batch, Flow, Request, Stage
from mfs_tc.policy import POLICY_NAMES, CalibrationWorkload, Policy, calibrate, config_keys, make_policy

MS = 1_000_000
T0 = 10**12


def test_names():
    assert POLICY_NAMES == (
        "mfs",
        "mfs-laxity",
        "fair",
        "sjf",
        "edf",
        "karuna",
        "fifo",
        "srpt",
        "pias",
        "stage",
        "llf-oracle",
    )


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names are mfs, mfs-laxity, fair"):
        make_policy("wfq")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="no config key mlu_thresh: valid keys are .*mlu_thresholds"):
        make_policy("mfs", mlu_thresh=(0.5,))
    with pytest.raises(ValueError, match="no config key mlu_thresholds"):
        make_policy("fair", mlu_thresholds=(0.5,))


@pytest.mark.parametrize(
    "name, keys, match",
    [
        ("mfs", {"nlevels": 9}, "levels must be in 2..8"),
        ("mfs", {"ref_rate_bps": 0}, "reference rate must be positive"),
        ("mfs", {"mlu_thresholds": (0.5, 0.2)}, "mlu_thresholds must strictly ascend"),
        ("mfs", {"mlu_thresholds": (0.1, 0.2), "mlu_levels": (3, 2)}, "2 thresholds need 3 levels"),
        ("mfs", {"mlu_levels": (9, 5, 4, 3, 2, 1)}, "levels must be in 0..7"),
        ("mfs", {"nlevels": 4, "rli_levels": (0, 1, 2, 3, 4, 5)}, "do not fit nlevels=4"),
        ("mfs", {"rli_thresholds": (1.5, 2)}, "whole layers"),
        ("mfs", {"estimator": "oracle"}, "unknown estimator"),
        ("mfs", {"mlu_thresholds": "0.5"}, "must be a list"),
        ("mfs-laxity", {"laxity_thresholds_ns": tuple(range(1, 10))}, "at most 7 thresholds"),
        ("sjf", {"size_thresholds": (0, 10)}, "must be positive"),
        ("stage", {"p2d_level": 8}, "p2d_level must be a level in 0..7"),
        ("fair", {"level": -1}, "level must be a level"),
        ("fifo", {"age_levels": (1, 2)}, "need 7 levels"),
    ],
)
def test_bad_config_is_a_value_error_naming_the_key(name, keys, match):
    with pytest.raises(ValueError, match=match):
        make_policy(name, **keys)


def test_lists_from_json_are_accepted():
    pol = make_policy("mfs", **json.loads('{"mlu_thresholds": [0.2, 0.8], "mlu_levels": [4, 2, 0]}'))
    assert pol.mlu.levels == (4, 2, 0)


def test_config_keys():
    assert {"nlevels", "ref_rate_bps", "mlu_thresholds", "rli_thresholds", "red_loose_ns"} <= set(config_keys("mfs"))


def scenario():
    b = Batch(1, [T0 + 100 * MS, T0 + 3000 * MS])
    r = Request(request_id=1, arrival_ns=T0, slo_ns=400 * MS, remaining_bytes=2_000_000, remaining_compute_ns=30 * MS, batch=b)
    for st in (Stage("kv_fetch", layer=2), Stage("collective", layer=1), Stage("p2d", compute_after_ns=5 * MS)):
        yield r, st, Flow(bytes=3_000_000, target_layer=st.layer or 0, true_remaining_work_ns=150 * MS)


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_every_policy_every_k(name, k):
    pol = make_policy(name, nlevels=k)
    assert isinstance(pol, Policy) and pol.name == name
    d = pol.describe()
    json.dumps(d)
    assert d["policy"] == name and d["levels"] == k and d["scavenger_level"] == k - 1
    assert [row["level"] for row in d["layout"]] == list(range(k))
    assert any("unknown flows" in w for w in d["layout"][0]["carries"])
    assert any("payload of unknown flows" in w for w in d["layout"][max(k - 2, 0)]["carries"])
    assert d["default_level"] == k - 2
    for r, st, fl in scenario():
        e = pol.entry(r, st, fl, T0)
        assert FlowEntry.unpack(e.pack()).levels == e.levels  # the kernel can hold it
        assert e.request_id == 1 and e.total_bytes == 3_000_000 and e.created_ns == T0
        # the policy laid its table out on K levels itself (the kernel would otherwise send a
        # level >= K to the default level and count it as bad), ...
        assert max(e.levels) < k, (name, k, e.levels)
        for dt in (0, 50, 200, 399, 500):
            for cursor in (0, 1, 2):
                lv = e.level(T0 + dt * MS, sent=dt * 1000, cursor=cursor, nlevels=k, scavenger_level=k - 1)
                # ... and only a scavenging policy ever reaches the scavenger level
                if name not in ("mfs", "mfs-laxity", "llf-oracle") and k > 2:
                    assert lv < k - 1, (name, k, dt, cursor, lv)


def test_only_mfs_policies_and_the_oracle_scavenge():
    late = Request(request_id=1, arrival_ns=T0, slo_ns=10 * MS, remaining_bytes=10**9)
    fine = Request(request_id=2, arrival_ns=T0, slo_ns=10 * MS, remaining_bytes=10)
    for name in POLICY_NAMES:
        scavenges = name in ("mfs", "mfs-laxity", "llf-oracle")
        assert make_policy(name).is_hopeless(late, T0) == scavenges, name
        assert not make_policy(name).is_hopeless(fine, T0), name
    assert not make_policy("llf-oracle", admission=False).is_hopeless(late, T0)


# ---- calibration -------------------------------------------------------------------------------
def test_calibrate_sizes_hand_values():
    w = CalibrationWorkload(flow_sizes=[100 * i for i in range(1, 11)], slos_ns=[MS], link_rate_bps=1e9)
    cfg = calibrate("sjf", w, nlevels=4)
    # K=4: 2 thresholds at the 1/3 and 2/3 quantiles of 100..1000 (positions 3 and 6)
    assert cfg == {"nlevels": 4, "ref_rate_bps": 1e9, "size_thresholds": (400, 700), "size_levels": (0, 1, 2)}
    pol = make_policy("sjf", **cfg)
    assert [pol.entry(Request(1, T0, MS), Stage("p2d"), Flow(bytes=b), T0).levels[0] for b in (150, 500, 900)] == [0, 1, 2]
    ka = calibrate("karuna", w, nlevels=4)
    # K=4: deadline flows on levels 0..1 split at the median SLO, the others on level 2
    assert ka["deadline_thresholds_ns"] == (MS,) and ka["deadline_levels"] == (0, 1)
    assert ka["sent_thresholds"] == () and ka["sent_levels"] == (2,)
    k8 = make_policy("karuna", **calibrate("karuna", w, nlevels=8))
    assert k8.deadline_table.levels[0] == 0 and max(k8.deadline_table.levels) == 2
    assert min(k8.table.levels) == 3  # every non-deadline flow below every deadline flow


def test_calibrate_mfs_hand_values():
    # p2d of 1 MB at 200 Mbit/s = 40 ms; SLO 400 ms: MLU at arrival 0.1 -> geometric 0.1 .. 0.9
    w = {"flow_sizes": [1_000_000], "slos_ns": [400 * MS] * 3, "link_rate_bps": 200e6}
    cfg = calibrate("mfs", w)
    assert cfg["mlu_thresholds"] == (0.1, 0.1732, 0.3, 0.5196, 0.9)
    assert cfg["mlu_levels"] == (5, 4, 3, 2, 1, 0)
    assert cfg["red_loose_ns"] == 400 * MS
    make_policy("mfs", **cfg)


def test_calibrate_laxity_hand_values():
    # flow 40 ms; laxities 60, 160, ..., 960 ms; quantiles j/6 at positions 1.5, 3, 4.5, 6, 7.5
    w = CalibrationWorkload(flow_sizes=[1_000_000], slos_ns=[(100 * i) * MS for i in range(1, 11)], link_rate_bps=200e6)
    cfg = calibrate("mfs-laxity", w)
    assert cfg["laxity_thresholds_ns"] == tuple(x * MS for x in (210, 360, 510, 660, 810))
    assert cfg["laxity_levels"] == (0, 1, 2, 3, 4, 5)
    assert calibrate("llf-oracle", w)["laxity_thresholds_ns"] == cfg["laxity_thresholds_ns"]


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("k", [2, 3, 8])
def test_calibrated_configs_build(name, k):
    w = CalibrationWorkload(
        flow_sizes=[10, 10, 5000, 10**6, 10**7], slos_ns=[50 * MS, 2000 * MS], link_rate_bps=1e9, compute_ns=[30 * MS]
    )
    cfg = calibrate(name, w, nlevels=k)
    pol = make_policy(name, **cfg)
    assert pol.config.nlevels == k and pol.config.ref_rate_bps == 1e9
    # every key calibrate derived is one the policy reads, with the value calibrate chose
    for key, value in cfg.items():
        got = getattr(pol.config, key)
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == (
            tuple(value) if isinstance(value, (list, tuple)) else value
        ), key
    # and the calibrated tables fit K: no entry of any stage names a level >= K
    r = Request(request_id=1, arrival_ns=T0, slo_ns=500 * MS, remaining_bytes=10**6)
    for stage in ("kv_fetch", "collective", "p2d"):
        e = pol.entry(r, Stage(stage, bytes=10**6, layer=1), Flow(bytes=10**6, target_layer=1, true_remaining_work_ns=MS), T0)
        assert max(e.levels) < k, (name, k, stage, e.levels)


def test_calibrate_bad_workload():
    with pytest.raises(ValueError, match="no field sizes"):
        calibrate("mfs", {"sizes": [1], "slos_ns": [1], "link_rate_bps": 1})
    with pytest.raises(ValueError, match="needs link_rate_bps"):
        calibrate("mfs", {"flow_sizes": [1], "slos_ns": [1]})
    with pytest.raises(ValueError, match="flow_sizes is empty"):
        CalibrationWorkload(flow_sizes=[], slos_ns=[1], link_rate_bps=1)
    with pytest.raises(ValueError, match="valid names"):
        calibrate("nope", CalibrationWorkload(flow_sizes=[1], slos_ns=[1], link_rate_bps=1))
