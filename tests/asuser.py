"""Run mfs-tc (or a snippet) as an unprivileged user from a checkout that user cannot read.

`runuser -u nobody -- .venv/bin/mfs-tc` needs the checkout (and its .venv) to be readable by
nobody, which a clone under /root is not. Instead the child starts as root, imports every
mfs_tc module (and so the libraries they use), then drops to the user's uid/gid and runs: the
kernel checks that matter (bpf object access, netns, qdisc changes) see the unprivileged
credentials, and no file of the checkout has to be read after the drop.
"""

from __future__ import annotations

import pwd
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

PRELUDE = """
import importlib, os, pkgutil, pwd, sys
sys.path.insert(0, {tests!r})
import mfs_tc
for m in pkgutil.walk_packages(mfs_tc.__path__, "mfs_tc."):
    if m.name.endswith("__main__"):
        continue  # runs the CLI on import
    try:
        importlib.import_module(m.name)
    except Exception:
        pass
import mfs_tc.cli, typer, click, pyroute2, pyroute2.iproute, pyroute2.netns
{preload}
{drop}
os.chdir("/")
"""
DROP_USER = """pw = pwd.getpwnam({user!r})
os.setgroups([]); os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)
os.environ.update(HOME="/", USER=pw.pw_name, LOGNAME=pw.pw_name)"""
DROP_IDS = """os.setgroups({groups!r}); os.setgid({gid}); os.setuid({uid})
os.environ.update(HOME="/", USER="uid{uid}", LOGNAME="uid{uid}")"""


def as_user(
    user: str, code: str, *args: str, netns: str | None = None, env: dict | None = None, preload: str = "", timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run python `code` (after the prelude) as `user`; sys.argv[1:] = args."""
    pwd.getpwnam(user)  # a missing user is the test's error, not the child's
    full = PRELUDE.format(tests=str(TESTS), preload=preload, drop=DROP_USER.format(user=user)) + code
    pre = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(pre + [sys.executable, "-c", full, *args], capture_output=True, text=True, timeout=timeout, env=env)


def ids_argv(
    uid: int, gid: int, groups: list[int], code: str, *args: str, netns: str | None = None, preload: str = ""
) -> list[str]:
    """The command that runs python `code` as numeric `uid`/`gid` with supplementary `groups`
    (no passwd entry needed), after the same prelude as as_user."""
    drop = DROP_IDS.format(uid=uid, gid=gid, groups=list(groups))
    full = PRELUDE.format(tests=str(TESTS), preload=preload, drop=drop) + code
    pre = ["ip", "netns", "exec", netns] if netns else []
    return pre + [sys.executable, "-c", full, *args]


def mfs_as(
    user: str, *args: str, netns: str | None = None, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`mfs-tc ARGS` as `user` (optionally inside `ip netns exec NETNS`)."""
    code = "from mfs_tc.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return as_user(user, code, *args, netns=netns, env=env, timeout=timeout)
