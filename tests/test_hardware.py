"""Hardware presets: model shapes from config.json numbers, compute from Vidur's measured operator
times (re-fitted here from the CSVs, with the documented error bounds), cluster presets."""

from __future__ import annotations

import csv

import pytest

from mfs_tc.workload import WorkloadConfig, cluster_preset, generate, model_preset, vidur
from mfs_tc.workload import hardware as hw

HAVE_VIDUR = (vidur.default_vidur_dir() / "profiling").is_dir()
needs_vidur = pytest.mark.skipif(not HAVE_VIDUR, reason="../shared/vidur not present")


def test_bytes_follow_the_configs():
    q = hw.HF_CONFIGS["qwen-72b"]
    assert q.kv_bytes_per_token_per_layer == 2 * 64 * 128 * 2  # MHA: 32 KiB
    assert hw.HF_CONFIGS["llama3-70b"].kv_bytes_per_token_per_layer == 2 * 8 * 128 * 2
    assert hw.HF_CONFIGS["llama3-8b"].act_bytes_per_token_per_layer == 2 * 4096 * 2
    mix = hw.HF_CONFIGS["mixtral-8x7b"]
    assert mix.moe and mix.act_bytes_per_token_per_layer == 2 * 4096 * 2  # top-2 copies
    m = model_preset("llama3-70b", tp=8)
    assert m.layer_groups == 8 and m.tp == 8 and m.gpu == "h100"
    assert m.kv_bytes_per_token_per_group == 10 * 4096
    assert m.act_bytes_per_token_per_group == 10 * 2 * 8192 * 2
    assert m.collective == "all_reduce"
    assert model_preset("mixtral-8x7b", tp=8).collective == "all_to_all"


def test_compute_scales_with_tp_and_gpu():
    t = {g: model_preset(f"qwen-72b:h100:tp{g}").compute_s([4096], [4096]) for g in (1, 2, 4, 8)}
    assert t[1] > 1.7 * t[2] > 1.7 * 1.7 * t[4]  # tensor parallelism roughly halves the time
    assert (
        model_preset("llama3-70b:a100", tp=4).compute_b_s_per_token
        > 2 * model_preset("llama3-70b:h100", tp=4).compute_b_s_per_token
    )
    # attention term: 4 heads x head_dim FLOPs per pair, 0.75 causal, over G at ATTN_FLOPS
    m = model_preset("llama3-8b:a100:tp4")
    assert m.compute_c_s_per_token2 == pytest.approx(4 * 0.75 * 4 * 32 * 128 / (4 * 190e12))
    # decode: layers x the one-token per-layer time
    f = hw.PROFILE_FITS[("a100", "Meta-Llama-3-8B", 4)]
    assert m.decode_step_s == pytest.approx(32 * (f.attn_floor_ms + f.mlp_floor_ms) / 1e3)


def test_model_names_and_tp_errors():
    with pytest.raises(ValueError, match="unknown model shape"):
        model_preset("gpt-9")
    with pytest.raises(ValueError, match=r"qwen-72b\[:h100\|:a100\]"):
        model_preset("qwen-72b:v100")
    with pytest.raises(ValueError, match="TP degree 3 not profiled"):
        model_preset("qwen-72b", tp=3)
    with pytest.raises(ValueError, match="drop ':tp4'"):
        model_preset("qwen-72b:tp4", tp=8)
    # the cluster's group size picks the TP degree; a fixed TP that disagrees is named
    cfg = WorkloadConfig(kind="poisson", load=1.0, num_requests=3, model="llama3-70b", cluster="paper")
    assert cfg.model_shape().tp == cluster_preset("paper").group_size
    with pytest.raises(ValueError, match="have 4 GPUs: drop .:tp8."):
        WorkloadConfig(kind="poisson", load=1.0, model="llama3-70b:tp8", cluster="paper")
    # the synthetic presets still work on any cluster
    assert model_preset("dense-70b", tp=2).name == "dense-70b"


@needs_vidur
def test_profile_shapes_match_the_csvs():
    for (_gpu, name), sub in vidur.PROFILES.items():
        path = vidur.default_vidur_dir() / "profiling" / "compute" / sub / "mlp.csv"
        with path.open() as fh:
            row = next(csv.DictReader(fh))
        s = hw.PROFILE_SHAPES[name]
        assert (int(row["n_head"]), int(row["n_kv_head"]), int(row["n_embd"]), int(row["n_expanded_embd"])) == (
            s.num_attention_heads,
            s.num_key_value_heads,
            s.hidden_size,
            s.intermediate_size,
        ), name
    # the hardware configs agree with the profiles Vidur measured for the same model
    for ours, prof in (("qwen-72b", "Qwen-72B"), ("llama3-70b", "Meta-Llama-3-70B"), ("llama3-8b", "Meta-Llama-3-8B")):
        a, b = hw.HF_CONFIGS[ours], hw.PROFILE_SHAPES[prof]
        assert (a.attn_weights, a.mlp_weights) == (b.attn_weights, b.mlp_weights)


@needs_vidur
def test_refit_matches_the_table_and_the_error_bounds():
    """Re-fit every profile: the coefficients in hardware.PROFILE_FITS are the fit's, and the
    layer-time error over the prefill range stays within docs/hardware.md's bounds."""
    fits = vidur.fit_all()
    assert set(fits) == set(hw.PROFILE_FITS)
    for key, (f, (mx, mean, n)) in fits.items():
        t = hw.PROFILE_FITS[key]
        for got, want in (
            (f.attn.a_ms, t.attn.a_ms),
            (f.attn.b_ms_per_token, t.attn.b_ms_per_token),
            (f.mlp.a_ms, t.mlp.a_ms),
            (f.mlp.b_ms_per_token, t.mlp.b_ms_per_token),
            (f.attn_floor_ms, t.attn_floor_ms),
            (f.mlp_floor_ms, t.mlp_floor_ms),
        ):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-9), key
        assert n >= 190, key
        assert mean < 0.05, (key, mean)  # mean relative error over N >= 512 below 5%
        assert mx < 0.40, (key, mx)  # worst point (at the N = 512 knee) below 40%
        pts = vidur.load_points(*key)
        mx2, mean2, _ = vidur.rel_errors(pts, f.layer_ms, 1024)
        assert mx2 < 0.15 and mean2 < 0.04, (key, mx2, mean2)


@needs_vidur
def test_shape_scaling_predicts_another_profiled_model():
    """The rule that carries a profile to another layer shape (used for llama3-8b and mixtral on
    H100), checked where both are measured: Qwen-72B's H100 fit scaled to Llama-2-70B's shape
    against Llama-2-70B's measured times."""
    src, dst = hw.PROFILE_SHAPES["Qwen-72B"], hw.PROFILE_SHAPES["Llama-2-70b-hf"]
    for tp in (1, 2, 4, 8):
        pred = hw.fit_for(dst, src, hw.PROFILE_FITS[("h100", "Qwen-72B", tp)])
        mx, mean, _ = vidur.rel_errors(vidur.load_points("h100", "Llama-2-70b-hf", tp), pred.layer_ms, 1024)
        assert mean < 0.12 and mx < 0.2, (tp, mean, mx)  # measured: 2.7%, 3.8%, 6.2%, 10.1%


def test_cluster_presets_as_deployed():
    p = cluster_preset("paper")
    assert p.num_hosts == 32 and p.link_rate_bps == 100e9 and p.hosts_per_rack == 0
    assert p.group_size == 4
    for name, rate, over in (("ls256-200g", 200e9, 2.0), ("ls576-400g", 400e9, 3.0)):
        c = cluster_preset(name)
        assert c.num_hosts >= 256 and c.link_rate_bps == rate and c.oversubscription == over
        # prefill groups sit inside one rack (the simulator's group aggregation needs it)
        assert c.hosts_per_rack % c.group_size == 0 and c.kv_hosts % c.group_size == 0
    # the existing presets keep their names
    for name in ("testbed", "c256", "c1024"):
        cluster_preset(name)


def test_hardware_workload_generates():
    wl = generate(WorkloadConfig(kind="poisson", load=2.0, num_requests=20, model="qwen-72b", cluster="paper", byte_scale=1.0))
    assert wl.model.name == "qwen-72b:h100:tp4"
    assert all(r.unloaded_ttft_s > 0 for r in wl.requests)
