"""`mfs-tc apply` on the real kernel (veth between two network namespaces): the config's
interface gets the classifier and its rules (checked on the wire), a second apply changes
nothing and says so, a broken config is an error naming the file and line and changes nothing,
`--detach-all` leaves the host as it was, and `apply --watch` (what the systemd unit runs)
brings classifier and rules back after a link flap and after the veth is deleted and
re-created, and detaches on SIGTERM."""

from __future__ import annotations

import grp
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from attach_support import MFS, assert_one_line_error, mfs, veth_pair
from datapath_support import udp_dscp
from nettools import VethPair, sh

from mfs_tc import layout, tcx
from mfs_tc.apply import managed_path
from mfs_tc.loader import load_state
from mfs_tc.netlink import ifindex, iproute

pytestmark = pytest.mark.privileged

DSCP = layout.DEFAULT_DSCP
DEFAULT = 5
GROUP = f"mfsap{os.getpid() % 100000}"  # the config's access_group, made for this module


@pytest.fixture(scope="module", autouse=True)
def access_group():
    subprocess.run(["groupadd", GROUP], check=True, capture_output=True)
    try:
        yield grp.getgrnam(GROUP).gr_gid
    finally:
        subprocess.run(["groupdel", GROUP], capture_output=True)


def config(net: VethPair, rules: str, extra: str = "") -> str:
    return f"""# test config
[defaults]
qdisc = "none"

[[interface]]
name = "{net.dev_a}"
netns = "{net.a}"
levels = 8
default_level = {DEFAULT}
control_level = 0
access_group = "{GROUP}"
{extra}
{rules}
"""


RULES = """
  [[interface.rule]]
  dport = "7000-7001"
  proto = "udp"
  level = 2

  [[interface.rule]]
  dst = "fd77::/64"
  stage = "kv_fetch"
"""


@pytest.fixture
def net():
    with veth_pair(quiet=True) as n:  # what apply attached is detached, as `mfs-tc detach` would
        yield n


@pytest.fixture
def f(net: VethPair, tmp_path: Path):
    """The test's config file; whatever happens, its record of managed interfaces goes too."""
    from mfs_tc.apply import managed_path

    path = tmp_path / "mfs-tc.toml"
    try:
        yield path
    finally:
        managed_path(path).unlink(missing_ok=True)


def _clean(net: VethPair) -> None:
    assert load_state(net.dev_a, net.a) is None
    assert not layout.pin_dir(net.dev_a, net.a).exists()
    assert "clsact" not in sh("tc", "qdisc", "show", "dev", net.dev_a, ns=net.a)
    assert "bpf" not in sh("tc", "filter", "show", "dev", net.dev_a, "egress", ns=net.a)
    with iproute(net.a) as ipr:
        idx = ifindex(ipr, net.dev_a, net.a)
    assert tcx.egress_progs(idx, net.a) == []  # no tcx program left either


def _marked(net: VethPair) -> bool:
    return (
        udp_dscp(net, 7000) == [DSCP[2]] * 3
        and udp_dscp(net, 7002) == [DSCP[DEFAULT]] * 3
        and udp_dscp(net, 7003, v6=True) == [DSCP[1]] * 3
    )


def _rules(net: VethPair) -> list[dict]:
    r = mfs("rule", "list", net.dev_a, "-n", net.a, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_apply_is_idempotent_and_detach_all_undoes_it(net: VethPair, f: Path, access_group: int) -> None:
    f.write_text(config(net, RULES))
    dry = mfs("apply", "--config", str(f), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"{net.dev_a} (netns {net.a}): attach" in dry.stdout and "rule + proto udp dport 7000-7001" in dry.stdout
    assert load_state(net.dev_a, net.a) is None  # a dry run changes nothing
    first = mfs("apply", "--config", str(f))
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert f"{net.dev_a} (netns {net.a}): attach" in out
    assert "bpf link create tcx_egress" in out or "tc filter replace" in out  # the plan's commands
    assert out.count("rule +") == 2 and "stage kv_fetch" in out
    assert "not enforced" not in first.stderr
    pin = layout.pin_dir(net.dev_a, net.a)  # the access group's share (docs/access.md), the rest root's
    modes = {p.name: (os.stat(p).st_mode & 0o777, os.stat(p).st_gid) for p in pin.iterdir()}
    assert modes["config"] == (0o640, access_group) and modes["requests"] == (0o620, access_group)
    assert modes["flows"] == (0o600, 0) and modes["rules"] == (0o600, 0)
    assert _marked(net)
    second = mfs("apply", "--config", str(f))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "no changes"
    assert mfs("apply", "--config", str(f), "--dry-run").stdout.strip() == "no changes"
    assert [r["packets"] for r in _rules(net)] == [3, 3]  # counters kept: the table was not rewritten
    # a changed config changes just that: one rule out, one in, the attachment untouched
    f.write_text(config(net, RULES.replace('dport = "7000-7001"', 'dport = "7002"')))
    want = [
        f"{net.dev_a} (netns {net.a}): rule - proto udp dport 7000-7001 -> level 2",
        f"{net.dev_a} (netns {net.a}): rule + proto udp dport 7002 -> level 2",
    ]
    assert mfs("apply", "--config", str(f), "--dry-run").stdout.strip().splitlines() == want
    assert [r["dport"] for r in _rules(net)] == ["7000-7001", None]  # the dry run changed nothing
    third = mfs("apply", "--config", str(f))
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip().splitlines() == want
    assert [r["dport"] for r in _rules(net)] == ["7002", None]
    assert udp_dscp(net, 7002) == [DSCP[2]] * 3 and udp_dscp(net, 7000) == [DSCP[DEFAULT]] * 3
    # an attach option changed: re-attach, rules kept
    f.write_text(
        config(net, RULES.replace('dport = "7000-7001"', 'dport = "7002"')).replace(
            f"default_level = {DEFAULT}", "default_level = 4"
        )
    )
    fourth = mfs("apply", "--config", str(f))
    assert "re-attach (default_level 5 -> 4)" in fourth.stdout and "rule" not in fourth.stdout
    assert udp_dscp(net, 7000) == [DSCP[4]] * 3
    # the access group taken out of the config: re-attach, every pin root's only again
    f.write_text(
        config(net, RULES.replace('dport = "7000-7001"', 'dport = "7002"'))
        .replace(f"default_level = {DEFAULT}", "default_level = 4")
        .replace(f'access_group = "{GROUP}"', "")
    )
    fifth = mfs("apply", "--config", str(f))
    assert f"re-attach (access_group {GROUP} (gid {access_group}) -> none)" in fifth.stdout, fifth.stdout
    assert {(os.stat(p).st_mode & 0o777, os.stat(p).st_gid) for p in pin.iterdir()} == {(0o600, 0)}
    gone = mfs("apply", "--config", str(f), "--detach-all")
    assert gone.returncode == 0, gone.stderr
    assert f"{net.dev_a} (netns {net.a}): detach" in gone.stdout
    _clean(net)
    assert not managed_path(f).exists()
    assert mfs("apply", "--config", str(f), "--detach-all").stdout.strip() == "nothing to detach"


def test_broken_config_names_the_line_and_changes_nothing(net: VethPair, f: Path, tmp_path: Path) -> None:
    f.write_text(config(net, RULES))
    assert mfs("apply", "--config", str(f)).returncode == 0
    before = (_rules(net), load_state(net.dev_a, net.a))
    good = config(net, RULES)
    lines = good.splitlines()
    syntax = "\n".join(lines[:8] + ["levels = = 4"] + lines[8:])  # line 9
    f.write_text(syntax)
    assert_one_line_error(mfs("apply", "--config", str(f)), f"{f}:9:", "TOML syntax error")
    # validation errors: the key path and its line
    bad_port = good.replace('dport = "7000-7001"', 'dport = "7000-70001"')
    f.write_text(bad_port)
    line = bad_port.splitlines().index('  dport = "7000-70001"') + 1
    assert_one_line_error(mfs("apply", "--config", str(f)), f"{f}:{line}:", "interface[0].rule[0].dport", "0..65535")
    bad_level = good.replace("level = 2", "level = 8")
    f.write_text(bad_level)
    assert_one_line_error(mfs("apply", "--config", str(f)), "interface[0].rule[0].level", "levels 0..7")
    # a second, broken interface: the first, valid one is not touched either
    two = good.replace("default_level = 5", "default_level = 3") + '\n[[interface]]\nname = "eth9"\nhook = "bpf"\n'
    f.write_text(two)
    assert_one_line_error(mfs("apply", "--config", str(f)), "interface[1].hook")
    f.write_text(good.replace("levels = 8", "levels = 8\ntrust_dscp = true"))
    assert_one_line_error(mfs("apply", "--config", str(f)), "interface[0].trust_dscp", "does not look at rules")
    f.write_text(good.replace("levels = 8", "levles = 8"))
    assert_one_line_error(mfs("apply", "--config", str(f)), "interface[0].levles: unknown key")
    assert_one_line_error(mfs("apply", "--config", str(tmp_path / "missing.toml")), "no such config file")
    assert (_rules(net), load_state(net.dev_a, net.a)) == before
    f.write_text(good)
    assert mfs("apply", "--config", str(f), "--detach-all").returncode == 0
    _clean(net)


def _recreate_veth(net: VethPair) -> None:
    sh("ip", "link", "del", net.dev_a, ns=net.a)
    net.link()


def _until(pred, timeout: float = 15.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except AssertionError:
            pass
        time.sleep(0.3)
    return False


class Lines:
    """A subprocess's stdout, collected by a thread (the watcher keeps running)."""

    def __init__(self, p: subprocess.Popen) -> None:
        self.text = ""
        self.t = threading.Thread(target=self._run, args=(p,), daemon=True)
        self.t.start()

    def _run(self, p: subprocess.Popen) -> None:
        for line in p.stdout:  # type: ignore[union-attr]
            self.text += line

    def wait_for(self, needle: str, timeout: float = 60.0) -> None:
        assert _until(lambda: needle in self.text, timeout), self.text


def test_watch_brings_classifier_and_rules_back(net: VethPair, f: Path) -> None:
    f.write_text(config(net, RULES))
    # a long period: what brings the classifier back is the link event, not the periodic run
    p = subprocess.Popen(
        MFS + ["apply", "--config", str(f), "--watch", "--period", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out = Lines(p)
        out.wait_for("watching 1 interface")
        assert _marked(net)
        # flap: down and up; the classifier and rules are still there and still mark
        sh("sysctl", "-qw", f"net.ipv6.conf.{net.dev_a}.keep_addr_on_down=1", ns=net.a)  # keep fd77::1
        sh("ip", "link", "set", net.dev_a, "down", ns=net.a)
        sh("ip", "link", "set", net.dev_a, "up", ns=net.a)
        assert _until(lambda: _marked(net))
        # delete and re-create the veth: a new device, nothing of ours on it until the watcher acts
        _recreate_veth(net)
        assert _until(lambda: _marked(net)), "the watcher did not re-attach the re-created veth"
        assert [r["dport"] for r in _rules(net)] == ["7000-7001", None]
        st = json.loads(mfs("status", net.dev_a, "-n", net.a, "--json").stdout)
        assert st["attached"] and not st["problems"], st
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        out.t.join(timeout=10)
        assert p.returncode == 0, p.stderr.read()  # type: ignore[union-attr]
        assert "stopped, detached" in out.text
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    _clean(net)


def test_install_systemd_copies_the_unit_without_enabling_it(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_DIR": str(tmp_path / "unit"), "MFS_TC_ETC": str(tmp_path / "etc")}
    r = subprocess.run([str(root / "tools" / "install.sh"), "--systemd"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "unit" / "mfs-tc.service").read_text()
    mfs_tc = root / ".venv" / "bin" / "mfs-tc"
    assert f"ExecStart={mfs_tc} apply --config /etc/mfs-tc/mfs-tc.toml --watch" in unit
    assert "Type=simple" in unit and "@" not in unit.split("[Unit]", 1)[1]
    assert not (tmp_path / "unit" / "multi-user.target.wants").exists()  # not enabled
    example = tmp_path / "etc" / "mfs-tc.toml.example"
    from mfs_tc.config import load

    cfg = load(example)  # the shipped example is a valid config
    (ic,) = cfg.interfaces
    assert ic.opts.ifname == "eth0" and [r.stage for r in ic.rules] == ["kv_fetch", None]
    bad = subprocess.run([str(root / "tools" / "install.sh"), "--enable"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and "--enable needs --systemd" in bad.stderr
