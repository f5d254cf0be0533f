"""Attach/detach lifecycle on the real kernel (issue 10 §1, §2): concurrent attaches, killed
holders and probes, foreign filters at our pref, renamed interfaces, the pin root's owner,
exit codes and one-line errors for bad names and rates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from asuser import mfs_as
from attach_support import MFS, assert_one_line_error, veth_pair
from attach_support import mfs as run_mfs
from nettools import VethPair, sh

from mfs_tc import layout, tcx
from mfs_tc.ifacelock import BusyError, interface_lock
from mfs_tc.loader import AttachOptions, attach, detach, load_state, lock_path, state_path


def mfs(*args: str, user: str | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    if user:
        return mfs_as(user, *args, env=env, timeout=timeout)  # works from a checkout nobody can read
    return run_mfs(*args, env=env, timeout=timeout)


@pytest.fixture
def net():
    # also the name test_detach_follows_a_renamed_interface gives veth0
    with veth_pair(also_detach=(VethPair.dev_a + "r",), quiet=True) as n:
        yield n


def _tc(net: VethPair, *args: str, dev: str | None = None) -> str:
    return sh("tc", *args, ns=net.a)


def _filters(net: VethPair, dev: str) -> list[dict]:
    return json.loads(sh("tc", "-j", "filter", "show", "dev", dev, "egress", ns=net.a) or "[]")


# ---- two attaches at once ---------------------------------------------------------------------
@pytest.mark.privileged
def test_two_concurrent_attaches_leave_a_working_attachment(net: VethPair) -> None:
    """Both start together; each either attaches or fails with the busy error; the survivor's
    maps, filter and state agree and status reads them (the old loser unpinned the winner's maps)."""
    for _ in range(2):
        procs = [
            subprocess.Popen(
                MFS + ["attach", net.dev_a, "-n", net.a, "--rate", "100mbit"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            subprocess.Popen(
                MFS + ["attach", net.dev_a, "-n", net.a, "--levels", "4", "--rate", "1gbit"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        ]
        outs = [(p.wait(timeout=120), *p.communicate()) for p in procs]
        for rc, _out, err in outs:
            assert rc == 0 or ("another mfs-tc is attaching or detaching" in err and "Traceback" not in err), err
        assert any(rc == 0 for rc, _o, _e in outs)
        r = mfs("status", net.dev_a, "-n", net.a, "--json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["attached"] and all(s["maps"].values()) and not s["problems"], s
        st = load_state(net.dev_a, net.a)
        assert st.hook == "tcx" and tcx.egress_progs(st.ifindex, net.a) == [st.prog_id]  # one, the winner's
        assert len(s["levels"]) == st.nlevels
    assert detach(net.dev_a, net.a)
    assert not lock_path(net.dev_a, net.a).exists()


@pytest.mark.privileged
def test_attach_and_detach_while_locked_fail_cleanly_and_touch_nothing(net: VethPair) -> None:
    attach(AttachOptions(net.dev_a, netns=net.a, qdisc="htb", rate_bps=100_000_000))
    before = (
        _tc(net, "qdisc", "show", "dev", net.dev_a),
        _tc(net, "filter", "show", "dev", net.dev_a, "egress"),
        sorted(p.name for p in layout.pin_dir(net.dev_a, net.a).iterdir()),
    )
    with interface_lock(lock_path(net.dev_a, net.a), "test"):
        for args in (["attach", net.dev_a, "-n", net.a, "--levels", "4", "--rate", "1gbit"], ["detach", net.dev_a, "-n", net.a]):
            r = mfs(*args)
            assert_one_line_error(r, "another mfs-tc is attaching or detaching")
            assert f"pid {os.getpid()}" in r.stderr
        with pytest.raises(BusyError):
            detach(net.dev_a, net.a)
    after = (
        _tc(net, "qdisc", "show", "dev", net.dev_a),
        _tc(net, "filter", "show", "dev", net.dev_a, "egress"),
        sorted(p.name for p in layout.pin_dir(net.dev_a, net.a).iterdir()),
    )
    assert after == before
    assert load_state(net.dev_a, net.a).nlevels == 8


@pytest.mark.privileged
def test_a_killed_lock_holder_leaves_the_interface_unlocked(net: VethPair) -> None:
    code = (
        "import sys, time; from mfs_tc.ifacelock import interface_lock; from pathlib import Path\n"
        "with interface_lock(Path(sys.argv[1]), 'x'):\n    print('held', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(lock_path(net.dev_a, net.a))], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(BusyError):
        attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))
    p.send_signal(signal.SIGKILL)
    p.wait()
    attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))  # the kernel dropped the flock
    assert detach(net.dev_a, net.a)


# ---- probes -------------------------------------------------------------------------------
def _netns_names() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


@pytest.mark.privileged
def test_a_killed_qdisc_probe_leaves_no_namespace() -> None:
    code = "from mfs_tc.backends import probe_qdisc_kinds\nwhile True: probe_qdisc_kinds()\n"
    before = {n for n in _netns_names() if n.startswith("mfsprobe-")}
    for delay in (0.05, 0.2, 0.4, 0.7):
        p = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay + 0.3)  # python start-up, then somewhere inside a probe
        p.send_signal(signal.SIGKILL)
        p.wait()
    time.sleep(0.2)
    assert {n for n in _netns_names() if n.startswith("mfsprobe-")} <= before


@pytest.mark.privileged
def test_stale_probe_namespaces_are_removed_by_doctor_and_testbed_clean() -> None:
    for verb in (["doctor"], ["testbed", "clean"]):
        dead = subprocess.Popen(["true"])
        dead.wait()
        name = f"mfsprobe-{dead.pid}-abc123"
        sh("ip", "netns", "add", name)
        try:
            r = mfs(*verb)
            assert name not in _netns_names(), (verb, r.stdout, r.stderr)
            assert name in r.stdout
        finally:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


# ---- pins and filters ------------------------------------------------------------------------
@pytest.mark.privileged
def test_detach_removes_the_empty_pin_dir_of_a_killed_attach(net: VethPair) -> None:
    pin = layout.pin_dir(net.dev_a, net.a)
    pin.mkdir(parents=True)  # what an attach killed between mkdir and pinning leaves
    removed = detach(net.dev_a, net.a)
    assert removed == [f"empty pin directory {pin}"]
    assert not pin.exists() and not pin.parent.exists()


def _user_bpf_filter(net: VethPair, dev: str) -> None:
    """A user's own eBPF classifier at our pref 0xc0de and handle 1, named user_cls."""
    code = (
        "import sys\nfrom bcc import BPF\nfrom mfs_tc.netlink import iproute\n"
        "b = BPF(text=b'int user_cls(struct __sk_buff *skb) { return -1; }')\n"
        "fn = b.load_func(b'user_cls', BPF.SCHED_CLS)\n"
        "with iproute(sys.argv[1]) as ipr:\n"
        "    idx = ipr.link_lookup(ifname=sys.argv[2])[0]\n"
        "    if not any(q.get_attr('TCA_KIND') == 'clsact' for q in ipr.get_qdiscs(idx)):\n"
        "        ipr.tc('add', 'clsact', idx)\n"
        "    ipr.tc('add-filter', 'bpf', idx, 1, fd=fn.fd, name='user_cls', parent=0xFFFFFFF3,\n"
        "           direct_action=True, prio=0xC0DE, protocol=3)\n"
    )
    subprocess.run([sys.executable, "-c", code, net.a, dev], check=True, timeout=60)


@pytest.mark.privileged
def test_a_users_filter_at_our_pref_is_never_deleted(net: VethPair) -> None:
    _user_bpf_filter(net, net.dev_a)
    before = _tc(net, "filter", "show", "dev", net.dev_a, "egress")
    assert "user_cls" in before
    r = mfs("detach", net.dev_a, "-n", net.a)  # mfs-tc never attached here
    assert r.returncode == 0 and "nothing of mfs-tc" in r.stdout, r
    assert _tc(net, "filter", "show", "dev", net.dev_a, "egress") == before
    r = mfs("attach", net.dev_a, "-n", net.a, "--qdisc", "none")  # would replace it: refused
    assert_one_line_error(r, "not mfs-tc's")
    assert "user_cls" in r.stderr
    assert _tc(net, "filter", "show", "dev", net.dev_a, "egress") == before
    assert not layout.pin_dir(net.dev_a, net.a).exists() and not state_path(net.dev_a, net.a).exists()


@pytest.mark.privileged
def test_detach_keeps_a_filter_that_replaced_ours(net: VethPair) -> None:
    """Someone replaced our classifier at our pref with their own: detach removes our pins and
    qdisc but leaves their filter, and says so."""
    attach(AttachOptions(net.dev_a, netns=net.a, qdisc="htb", rate_bps=100_000_000, hook="clsact"))
    _tc(net, "filter", "del", "dev", net.dev_a, "egress", "pref", str(0xC0DE))
    _user_bpf_filter(net, net.dev_a)
    removed = detach(net.dev_a, net.a)
    assert "egress filter" not in removed and any("user_cls" in r and r.startswith("note:") for r in removed), removed
    assert "user_cls" in _tc(net, "filter", "show", "dev", net.dev_a, "egress")
    assert "4d46" not in _tc(net, "qdisc", "show", "dev", net.dev_a)


@pytest.mark.privileged
@pytest.mark.parametrize("hook", ["clsact", "tcx"])
def test_detach_follows_a_renamed_interface(net: VethPair, hook: str) -> None:
    st = attach(AttachOptions(net.dev_a, netns=net.a, qdisc="htb", rate_bps=100_000_000, hook=hook))
    new = net.dev_a + "r"
    sh("ip", "link", "set", net.dev_a, "down", ns=net.a)
    sh("ip", "link", "set", net.dev_a, "name", new, ns=net.a)
    sh("ip", "link", "set", new, "up", ns=net.a)
    if hook == "clsact":
        assert "mfs_egress" in _tc(net, "filter", "show", "dev", new, "egress")
    else:
        assert tcx.egress_progs(st.ifindex, net.a) == [st.prog_id]
    r = mfs("status", net.dev_a, "-n", net.a, "--json")
    assert r.returncode == 0 and f"renamed to {new}" in r.stdout and '"attached": true' in r.stdout, r
    r = mfs("attach", new, "-n", net.a, "--qdisc", "none")  # the same device under its new name
    assert_one_line_error(r, f"attached as {net.dev_a}")
    r = mfs("detach", net.dev_a, "-n", net.a)
    assert r.returncode == 0, r.stderr
    assert f"renamed to {new}" in r.stdout and "root htb qdisc" in r.stdout, r.stdout
    assert ("egress filter" if hook == "clsact" else "tcx egress link") in r.stdout, r.stdout
    assert "mfs_egress" not in _tc(net, "filter", "show", "dev", new, "egress")
    assert tcx.egress_progs(st.ifindex, net.a) == []
    q = _tc(net, "qdisc", "show", "dev", new)
    assert "4d46" not in q and "clsact" not in q
    assert not layout.pin_dir(net.dev_a, net.a).exists() and not state_path(net.dev_a, net.a).exists()


# ---- the pin root (issue 10 §2) ----------------------------------------------------------------
def _in_private_bpffs(script: str) -> subprocess.CompletedProcess:
    """Run `script` (sh) in a mount namespace of its own with a fresh bpffs on /sys/fs/bpf, so
    that the pin root it plays with is not the host's (other tests use that one)."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", "mount -t bpf bpf /sys/fs/bpf\n" + script],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.privileged
def test_pin_root_is_made_root_owned_0755(net: VethPair) -> None:
    mfsbin = MFS[0]
    r = _in_private_bpffs(
        f"{mfsbin} attach {net.dev_a} -n {net.a} --qdisc none >/dev/null\n"
        f"stat -c '%u %a %n' /sys/fs/bpf/mfs /sys/fs/bpf/mfs/{net.a} /sys/fs/bpf/mfs/{net.a}/{net.dev_a}\n"
        f"{mfsbin} detach {net.dev_a} -n {net.a} >/dev/null\n"
        "ls /sys/fs/bpf\n"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert [l.split()[:2] for l in lines[:3]] == [["0", "755"]] * 3, r.stdout
    assert "mfs" not in lines[3:]


@pytest.mark.privileged
@pytest.mark.parametrize(
    "squat",
    [
        "runuser -u nobody -- mkdir /sys/fs/bpf/mfs",
        "mkdir -m 0777 /sys/fs/bpf/mfs",
        "runuser -u nobody -- mkdir /sys/fs/bpf/elsewhere && ln -s /sys/fs/bpf/elsewhere /sys/fs/bpf/mfs",
    ],
)
def test_a_pin_root_another_user_can_change_is_refused(net: VethPair, squat: str) -> None:
    mfsbin = MFS[0]
    r = _in_private_bpffs(
        squat + "\n"
        f"if err=$({mfsbin} attach {net.dev_a} -n {net.a} --qdisc none 2>&1 >/dev/null); then echo attached; fi\n"
        'printf "%s\\n" "$err"\n'
        "echo LS: $(ls -A /sys/fs/bpf/mfs/)\n"
    )
    assert "attached" not in r.stdout.splitlines(), r.stdout
    err = [l for l in r.stdout.splitlines() if l.startswith("mfs-tc: error:")]
    assert len(err) == 1 and "Traceback" not in r.stdout, r.stdout
    assert "/sys/fs/bpf/mfs" in err[0] and ("rm -rf /sys/fs/bpf/mfs" in err[0] or "chmod 0755" in err[0]), err
    assert r.stdout.splitlines()[-1] == "LS:", r.stdout  # nothing was made under it
    assert "clsact" not in _tc(net, "qdisc", "show", "dev", net.dev_a)  # nothing was attached


@pytest.mark.privileged
def test_a_fixture_that_fails_during_setup_removes_its_namespaces() -> None:
    pair = VethPair(dev_a="x" * 20)  # longer than IFNAMSIZ: `ip link add` fails after both netns exist
    with pytest.raises(RuntimeError):
        pair.up()
    assert not {pair.a, pair.b} & _netns_names()


# ---- errors and exit codes --------------------------------------------------------------------
@pytest.mark.privileged
def test_doctor_exit_code_follows_its_checks() -> None:
    assert mfs("doctor").returncode == 0
    # the compiled simulator is reported, never required; tools/install.sh built it for CI
    sim = {c["name"]: c for c in json.loads(mfs("doctor", "--json").stdout)}["compiled simulator"]
    assert not sim["required"] and "mfs_tc.sim.accel build" in sim["fix"]
    assert sim["ok"] or not os.environ.get("CI"), sim
    r = mfs("doctor", user="nobody")  # the root check fails
    assert r.returncode == 1 and "NO" in r.stdout, r


@pytest.mark.privileged
def test_doctor_reports_the_kernel_features_this_kernel_has() -> None:
    """This kernel (6.18) maps BPF arrays (its probe writes a scratch array through the mapping
    and reads it back with a lookup), has socket storage and stamps TCP segments: each optional
    feature's line says so, or the classifier would be described as slower than it is."""
    checks = {c["name"]: c for c in json.loads(mfs("doctor", "--json").stdout)}
    for name in ("mmap cursors", "socket storage", "tcp departure stamps"):
        assert checks[name]["ok"] and not checks[name]["required"], checks[name]


@pytest.mark.privileged
@pytest.mark.parametrize(
    "args, needle",
    [
        (["attach", "veth0", "--netns", ".."], "bad network namespace name '..'"),
        (["attach", "veth0", "--netns", "."], "bad network namespace name '.'"),
        (["detach", "veth0", "--netns", ".."], "bad network namespace name '..'"),
        (["status", "veth0", "--netns", "."], "bad network namespace name '.'"),
        (["status", "a/b"], "bad interface name 'a/b'"),
        (["detach", "a/b"], "bad interface name 'a/b'"),
        (["attach", "a/b"], "bad interface name 'a/b'"),
        (["policy", "show", "--levels", "0"], "--levels must be 2..8"),
    ],
)
def test_bad_names_are_one_line_errors(args: list[str], needle: str) -> None:
    assert_one_line_error(mfs(*args), needle)


@pytest.mark.privileged
@pytest.mark.parametrize("rate, needle", [("", "bad rate ''"), ("100bit", "below what HTB can shape")])
def test_rates_htb_cannot_shape_are_refused(net: VethPair, rate: str, needle: str) -> None:
    for verb in ("plan", "attach"):
        assert_one_line_error(mfs(verb, net.dev_a, "-n", net.a, "--qdisc", "htb", "--rate", rate), needle)
    assert_one_line_error(mfs("attach", net.dev_a, "-n", net.a, "--rate", rate), needle)
    assert "clsact" not in _tc(net, "qdisc", "show", "dev", net.dev_a)
    assert mfs("plan", net.dev_a, "-n", net.a, "--qdisc", "htb", "--rate", "128kbit").returncode == 0


@pytest.mark.privileged
def test_non_root_plan_probes_or_says_it_could_not() -> None:
    import shutil
    import tempfile

    root_plan = mfs("plan", "lo", "--rate", "1gbit", "--json")
    assert root_plan.returncode == 0, root_plan.stderr
    r = mfs("plan", "lo", "--rate", "1gbit", "--json", user="nobody")  # an unprivileged user namespace probes
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == json.loads(root_plan.stdout)["backend"]
    # where the kernel refuses user namespaces to this user, plan says it could not probe
    fake = Path(tempfile.mkdtemp(prefix="mfs-fake-unshare-"))  # readable by nobody, unlike tmp_path
    try:
        fake.chmod(0o755)
        (fake / "unshare").write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
        (fake / "unshare").chmod(0o755)
        env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
        r = mfs("plan", "lo", "--rate", "1gbit", user="nobody", env=env)
    finally:
        shutil.rmtree(fake)
    assert_one_line_error(r, "could not probe which qdiscs this kernel has")
    assert "Operation not permitted" in r.stderr and "--qdisc htb" in r.stderr


@pytest.mark.privileged
def test_non_root_flows_that_could_read_nothing_fail(net: VethPair) -> None:
    attach(AttachOptions(net.dev_a, netns=net.a, qdisc="none"))
    r = mfs("flows", user="nobody")
    assert r.returncode != 0 and "could not read" in r.stderr and "Traceback" not in r.stderr, r
    assert "no flow entries" not in r.stdout


@pytest.mark.privileged
def test_attach_killed_anywhere_then_detach_leaves_the_host_as_found(net: VethPair) -> None:
    """SIGKILL an attach at points spread over its run; the next detach removes whatever it left
    (pins, an empty pin dir, a link or filter, the qdisc, state) and the lock is free again."""

    def snapshot() -> tuple:
        pins = layout.PIN_ROOT / net.a
        return (
            _tc(net, "qdisc", "show", "dev", net.dev_a),
            _tc(net, "filter", "show", "dev", net.dev_a, "egress"),
            tcx.egress_progs(int(sh("cat", f"/sys/class/net/{net.dev_a}/ifindex", ns=net.a)), net.a),
            sorted(str(p) for p in pins.rglob("*")) if pins.exists() else None,
            state_path(net.dev_a, net.a).exists(),
            lock_path(net.dev_a, net.a).exists(),
        )

    before = snapshot()
    for delay in (0.3, 0.5, 0.7, 0.9, 1.1, 1.4):
        p = subprocess.Popen(
            MFS + ["attach", net.dev_a, "-n", net.a, "--rate", "100mbit"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = mfs("detach", net.dev_a, "-n", net.a)
        assert r.returncode == 0, (delay, r.stderr)
        assert snapshot() == before, (delay, r.stdout)
