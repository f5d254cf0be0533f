"""The netns testbed on the real kernel: topology life cycle, real TCP accounting, the
contention case (MFS serves the tight request first, fair sharing misses it) and a bounded run
of the real workload through the CLI. Names use the prefix "mfbt" so they never collide with a
concurrent `mfs-tc testbed run` (prefix "mfsb")."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid

import pytest

from netns_testbed.netns import list_netns
from netns_testbed.topology import Topology, TopologyConfig, cleanup_leftovers

PREFIX = "mfbt"
CLI = [sys.executable, "-c", "import sys; from mfs_tc.cli import main; sys.exit(main(sys.argv[1:]))"]
pytestmark = pytest.mark.privileged


def _tag() -> str:
    return f"{os.getpid()}x{uuid.uuid4().hex[:4]}"


def _ours(tag: str) -> list[str]:
    return [n for n in list_netns() if n.startswith(f"{PREFIX}{tag}-")]


def test_topology_up_down_and_plain_transfers_are_accounted():
    from netns_testbed.transfer import Sink, open_flow

    tag = _tag()
    topo = Topology(TopologyConfig(prefill_groups=1, group_size=2, rate_bps=100e6, datapath="plain", prefix=PREFIX), tag=tag)
    with topo:
        assert len(_ours(tag)) == 5  # kv0, p0r0, p0r1, d0, switch
        # the kernel's queue budgets scaled to 1 ms at 100 Mbit/s: TSQ 12.5 kB, GSO 8 kB on both
        # ends of every host's veth (the root namespace keeps its own)
        assert topo.config.host_queue_bytes() == (12500, 8192)
        for h in topo.hosts:
            tsq = subprocess.run(
                ["ip", "netns", "exec", h.netns, "sysctl", "-n", "net.ipv4.tcp_limit_output_bytes"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert int(tsq) == 12500
            for ns, dev in ((h.netns, h.ifname), (topo.switch_ns, h.port)):
                link = subprocess.run(["ip", "-d", "-n", ns, "link", "show", dev], capture_output=True, text=True, check=True)
                assert " gso_max_size 8192 " in link.stdout, link.stdout
        with open("/proc/sys/net/ipv4/tcp_limit_output_bytes") as f:
            assert int(f.read()) != 12500
        sinks = [Sink(h.netns, h.addr).start() for h in topo.hosts]
        kv, r0, r1 = topo.host("kv0"), topo.host("p0r0"), topo.host("p0r1")
        flows = [open_flow(kv.netns, r.addr, 2_500_000) for r in (r0, r1)]
        ths = [threading.Thread(target=f.send_all) for f in flows]
        for t in ths:
            t.start()
        for t in ths:
            t.join(30)
        assert [f.delivered for f in flows] == [2_500_000, 2_500_000]
        # both share kv0's 100 Mbit/s egress: 5 MB take at least 0.4 s
        assert max(f.end_ns for f in flows) - min(f.start_ns for f in flows) >= 0.38e9
        assert flows[0].key.saddr == kv.addr and flows[0].key.daddr == r0.addr
        for s in sinks:
            s.close()
    assert _ours(tag) == []


def test_host_queue_budgets_follow_the_link_rate() -> None:
    assert TopologyConfig().host_queue_bytes() == (25000, 16384)  # 200 Mbit/s, 1 ms
    assert TopologyConfig(rate_bps=10e9).host_queue_bytes() == (1_250_000, 65536)  # GSO at most 64 kB
    assert TopologyConfig(rate_bps=1e6).host_queue_bytes() == (8192, 8192)  # at least two 4 kB packets
    assert TopologyConfig(rate_bps=1e9, host_queue_ms=2).host_queue_bytes() == (250_000, 65536)
    assert TopologyConfig(host_queue_ms=0).host_queue_bytes() is None  # the kernel's defaults
    with pytest.raises(ValueError, match="host queue"):
        TopologyConfig(host_queue_ms=-1)


def test_minimum_retransmission_timeout_is_set_on_the_hosts_routes() -> None:
    import json as _json

    cfg = TopologyConfig(prefill_groups=1, group_size=1, datapath="plain", prefix=PREFIX, rto_min_ms=10)
    with Topology(cfg, tag=_tag()) as topo:
        for h in topo.hosts:
            out = subprocess.run(["ip", "-j", "-d", "-n", h.netns, "route"], capture_output=True, text=True, check=True).stdout
            (route,) = _json.loads(out)
            assert route["dst"] == "10.201.0.0/24" and route["prefsrc"] == h.addr
            assert route["metrics"] == [{"rto_min": 10}]
    with pytest.raises(ValueError, match="rto_min"):
        TopologyConfig(rto_min_ms=-1)


def test_leftovers_of_a_dead_run_are_removed_live_ones_kept():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"{PREFIX}{dead.pid}-sw"
    live = f"{PREFIX}{os.getpid()}xkeep-sw"
    for n in (stale, live):
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        removed = cleanup_leftovers(PREFIX)
        assert stale in removed
        assert stale not in list_netns() and live in list_netns()
    finally:
        for n in (stale, live):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_topology_is_removed_when_the_body_raises():
    tag = _tag()
    with pytest.raises(RuntimeError, match="boom"):
        with Topology(TopologyConfig(prefill_groups=1, group_size=1, datapath="plain", prefix=PREFIX), tag=tag):
            assert _ours(tag)
            raise RuntimeError("boom")
    assert _ours(tag) == []


def test_contention_mfs_serves_tight_first_where_fair_misses():
    from netns_testbed.runner import Progress, RunConfig, live_topology, run_scenarios
    from netns_testbed.scenarios import CONTENTION_LOOSE, CONTENTION_TIGHT, contention_scenario, contention_topology

    rate = 100e6
    cfg = RunConfig(policies=["mfs", "fair"], rate_bps=rate, pause_s=0.3)
    with live_topology(contention_topology(rate, prefix=PREFIX), tag=_tag()) as topo:
        summary = run_scenarios(topo, [(0, None, 1.0, lambda: contention_scenario(rate))], cfg, None, Progress(None), {})
    by = {r["policy"]: {int(x["request_id"]): x for x in r["rows"]} for r in summary["runs"]}
    for pol in ("mfs", "fair"):
        r = summary["runs"][[x["policy"] for x in summary["runs"]].index(pol)]
        assert r["requests"] == r["finished"] == 2, r["errors"]
        assert r["bytes_delivered"] == r["bytes_intended"] == 3 * 6_000_000  # tight 6 MB, loose 12 MB
    m, f = by["mfs"], by["fair"]
    # MFS: the tight request's p2d goes first and both meet their SLOs
    assert m[CONTENTION_TIGHT]["met"] and m[CONTENTION_LOOSE]["met"]
    assert m[CONTENTION_TIGHT]["ttft_s"] < m[CONTENTION_LOOSE]["ttft_s"]
    # fair sharing halves the link: the tight one misses
    assert not f[CONTENTION_TIGHT]["met"]
    mfs_run = next(r for r in summary["runs"] if r["policy"] == "mfs")
    assert sum(mfs_run["level_bytes"]) >= 3 * 6_000_000  # the classifier saw every byte


def test_cli_run_small_workload_accounts_for_every_request(tmp_path):
    out = tmp_path / "res"
    env = dict(os.environ)
    cmd = [*CLI, "testbed", "run", "--policy", "mfs,fair", "--requests", "12", "--load", "2", "--out", str(out)]
    r = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mfs" in r.stdout and "fair" in r.stdout and "attain" in r.stdout
    import json

    s = json.loads((out / "summary.json").read_text())
    assert [x["policy"] for x in s["runs"]] == ["mfs", "fair"]
    for run in s["runs"]:
        assert run["requests"] == 12 and run["finished"] == 12, run["errors"]
        assert run["bytes_delivered"] == run["bytes_intended"] > 0
        assert not run["errors"]
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 12
    for name in ("ttft_cdf.png", "attainment.png"):
        assert (out / name).stat().st_size > 0
    rep = subprocess.run([*CLI, "testbed", "report", str(out)], capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and "mfs" in rep.stdout
