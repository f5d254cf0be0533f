"""The compiled simulator (mfs_tc.sim.accel): built by tools/install.sh, fresh, and bit for bit
the engine it is compiled from."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from mfs_tc.errors import MfsError
from mfs_tc.sim import accel
from mfs_tc.sim.engine import simulate
from mfs_tc.sim.result import SimResult
from mfs_tc.sim.runner import make_sim_policy
from mfs_tc.workload import WorkloadConfig, generate

# tools/install.sh builds the compiled simulator: under CI a test that finds no build fails
pytestmark = pytest.mark.ci_required


def _compiled_or_skip() -> None:
    st = accel.status()
    if st != "compiled":
        pytest.skip(f"the compiled simulator is {st}")


def _same(a: SimResult, b: SimResult, what: str) -> None:
    """Everything a run computes (not its wall time, nor which engine ran it) equal: requests,
    collective times, events; the byte totals to 1e-12, since they sum per level and link in the
    order sets of flows iterate, which is the objects' addresses (the same holds between two runs
    of one engine)."""
    assert [dataclasses.asdict(x) for x in a.requests] == [dataclasses.asdict(x) for x in b.requests], what
    assert (a.ccts_s, a.sim_time_s, a.events, a.recomputes, a.flows) == (b.ccts_s, b.sim_time_s, b.events, b.recomputes, b.flows)
    assert b.level_bytes == pytest.approx(a.level_bytes, rel=1e-12, abs=1e-6), what
    assert b.stage_bytes == pytest.approx(a.stage_bytes, rel=1e-12), what
    assert b.net_util.keys() == a.net_util.keys()
    for k, v in a.net_util.items():
        assert b.net_util[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (what, k)


@pytest.mark.parametrize(
    "cfg,policies,kw",
    [
        # the testbed's workload with the testbed's emulation (setup latency, goodput, queue, promotion lag)
        (
            WorkloadConfig(kind="mooncake", num_requests=40, load=2.5),
            ("mfs", "fair", "edf", "sjf", "karuna", "llf-oracle"),
            {
                "aggregate_groups": True,
                "flow_setup_s": 0.006,
                "goodput": 1448 / 1514,
                "queue_bytes": 757e3,
                "promotion_rto_s": 0.2,
            },
        ),
        # the network-bound benchmark preset (RED re-ranking, p2d admission, leaf-spine)
        (
            WorkloadConfig(kind="poisson", load=63.0, num_requests=150, model="qwen-72b", cluster="c1024"),
            ("mfs", "pias"),
            {"aggregate_groups": True},
        ),
        # overload: batches of several requests, hopeless ones scavenged; every rank flow its own
        (
            WorkloadConfig(kind="poisson", load=40.0, num_requests=60, model="dense-small", cluster="testbed", byte_scale=1 / 32),
            ("mfs", "mfs-laxity", "fair", "fifo", "srpt", "stage"),
            {"check_entry_keys": True},
        ),
    ],
)
def test_compiled_engine_gives_what_the_source_gives(cfg: WorkloadConfig, policies: tuple[str, ...], kw: dict) -> None:
    _compiled_or_skip()
    w = generate(cfg)
    for name in policies:
        runs = [
            simulate(w, make_sim_policy(name, nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={}), engine=e, **kw)
            for e in ("python", "compiled")
        ]
        assert [r.engine for r in runs] == ["python", "compiled"]
        _same(runs[0], runs[1], name)
        assert runs[0].events > 0 and any(r.met for r in runs[0].requests)


def test_isolated_stages_bound_run_is_the_same() -> None:
    _compiled_or_skip()
    w = generate(WorkloadConfig(kind="mooncake", num_requests=30, load=2.0))
    pol = make_sim_policy("fair", nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={})
    a, b = (simulate(w, pol, isolate_stages=True, aggregate_groups=True, engine=e) for e in ("python", "compiled"))
    _same(a, b, "isolated")


def test_the_compiled_engine_asks_the_compiled_policies_configured_alike() -> None:
    """The compiled engine runs the policies compiled with it: the registry's class of the same
    name, with an equal configuration; a policy the registry does not have runs on the source
    (auto) or is one clear error (compiled)."""
    _compiled_or_skip()
    from mfs_tc.policy import make_policy
    from mfs_tc.policy.mfs import MfsPolicy

    pol = make_policy("mfs", nlevels=6, ref_rate_bps=1e9, red_shift=2)
    twin = accel.compiled_policy(pol)
    assert twin is not None and type(twin) is not type(pol) and type(twin).__name__ == "MfsPolicy"
    assert dataclasses.asdict(twin.config) == dataclasses.asdict(pol.config)  # type: ignore[attr-defined]

    class Mine(MfsPolicy):  # a caller's own policy: not the registry's class
        pass

    w = generate(WorkloadConfig(kind="mooncake", num_requests=4, load=1.0))
    assert accel.compiled_policy(Mine()) is None
    assert simulate(w, Mine(), engine="auto").engine == "python"
    with pytest.raises(MfsError, match="runs the registry's policies"):
        simulate(w, Mine(), engine="compiled")


def test_unknown_engine_is_one_clear_error() -> None:
    w = generate(WorkloadConfig(kind="mooncake", num_requests=2, load=1.0))
    pol = make_sim_policy("fair", nlevels=8, ref_rate_bps=w.cluster.link_rate_bps, config={})
    with pytest.raises(ValueError, match="engine 'rust': choose one of auto, compiled, python"):
        simulate(w, pol, engine="rust")


def test_copies_import_the_shared_modules_absolutely() -> None:
    src = (
        "from ..layout import MODE_RLI\n"
        "from ..entry import FlowEntry\n"
        "from . import accel, netutil\n"
        "from .due import NEVER\n"
        "from .fabric import Link\n"
        "    from ..policy.red import red\n"
        "from ..workload.batching import (\n"
        "from . import fluid\n"
    )
    assert accel.rewrite(src, "sim.engine") == (
        "from mfs_tc.layout import MODE_RLI\n"
        "from mfs_tc.sim._compiled.entry import FlowEntry\n"
        "from mfs_tc.sim import accel, netutil\n"
        "from mfs_tc.sim._compiled.due import NEVER\n"
        "from mfs_tc.sim.fabric import Link\n"
        "    from mfs_tc.sim._compiled.red import red\n"
        "from mfs_tc.sim._compiled.batching import (\n"
        "from mfs_tc.sim._compiled import fluid\n"
    )
    # a module one package down: `.` is its own package
    assert accel.rewrite("from .spec import RequestSpec\nfrom .estimate import work_ahead\n", "workload.adapt") == (
        "from mfs_tc.workload.spec import RequestSpec\nfrom mfs_tc.sim._compiled.estimate import work_ahead\n"
    )
    with pytest.raises(MfsError, match="mixes compiled and other modules"):
        accel.rewrite("from . import fluid, netutil\n", "sim.engine")


def _fake_build(out: Path, hashes: dict[str, str]) -> None:
    out.mkdir()
    (out / "__init__.py").write_text(f"SOURCE_SHA256 = {hashes!r}\n")
    for m in accel.COMPILED:
        (out / f"{m.rsplit('.', 1)[-1]}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")


def test_a_build_of_other_sources_is_stale_and_never_loaded(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    for m in accel.COMPILED:
        f = src.joinpath(*m.split(".")).with_suffix(".py")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"# {m}\n")
    assert accel.status(src, out).startswith("not built (run: ")
    assert accel.state(src, out) == ("not built", f"{sys.executable} -m mfs_tc.sim.accel build")
    _fake_build(out, accel.source_hashes(src))
    assert accel.status(src, out) == "compiled" and accel.state(src, out) == ("compiled", "")
    (src / "workload" / "batching.py").write_text("# batching, edited after the build\n")
    assert accel.status(src, out).startswith("stale: the sources changed since the build")
    # the real build: whatever it is, the engine the source runs by default is reported
    if accel.status() != "compiled":
        with pytest.raises(MfsError, match="the compiled simulator is "):
            accel.compiled_engine(required=True)


@pytest.mark.privileged
def test_a_build_by_someone_who_cannot_write_is_one_error_and_keeps_the_build() -> None:
    from asuser import as_user

    before = accel.status()
    r = as_user("nobody", "from mfs_tc.sim import accel\nsys.exit(accel.main(['build', '--force']))\n")
    assert r.returncode == 1, r
    assert "error: cannot write the build into" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert accel.status() == before
