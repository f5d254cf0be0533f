"""The config file's parsing and validation (no root needed): defaults, the backend alias,
rules, and errors that name the file, the line and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfs_tc.config import ConfigError, load

GOOD = """[defaults]
levels = 4
backend = "htb"
rate = "1gbit"

[[interface]]
name = "eth0"

[[interface]]
name = "eth1"
netns = "serving"
qdisc = "none"
dscp = [46, 34, 18, 1]
  [[interface.rule]]
  dst = "10.0.2.0/24"
  dport = 5000
  stage = "p2d"
"""


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "mfs-tc.toml"
    f.write_text(text)
    return f


def test_defaults_backend_alias_and_rules(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, GOOD))
    a, b = cfg.interfaces
    assert (a.opts.ifname, a.opts.netns, a.opts.levels, a.opts.qdisc, a.opts.rate_bps) == ("eth0", None, 4, "htb", 10**9)
    assert (b.opts.netns, b.opts.qdisc, b.opts.dscp, b.opts.default_level) == ("serving", "none", [46, 34, 18, 1], 2)
    (r,) = b.rules
    assert (r.dst, r.dport, r.stage) == ("10.0.2.0/24", "5000", "p2d")
    assert r.record(4).level == 2  # the stage policy's p2d level, capped at K-2
    assert cfg.netns_names() == [None, "serving"]


@pytest.mark.parametrize(
    "edit, where, needle",
    [
        (("dport = 5000", "dport = 5000.5"), 16, "interface[1].rule[0].dport: expected str or int"),
        (('stage = "p2d"', 'stage = "decode"'), 17, "interface[1].rule[0].stage: stage 'decode'"),
        (("dscp = [46, 34, 18, 1]", "dscp = [46, 34]"), 13, "interface[1].dscp: dscp needs 4 values"),
        (('netns = "serving"', 'netns = "a/b"'), 11, "interface[1].netns: bad network namespace name"),
        (('name = "eth1"\nnetns = "serving"', 'name = "eth0"'), 10, "interface[1].name: eth0 is configured twice"),
        (("levels = 4", 'levels = "4"'), 2, "defaults.levels: expected int"),
        (("[defaults]", "[default]"), 1, "default: unknown key"),
        (('rate = "1gbit"', 'rate = "1gbit"\n[[interface]]\nnetns = "x"'), 5, "interface[0]: needs name"),
        (('dst = "10.0.2.0/24"', 'dst = "10.0.2.0/24"\n  dport = 1'), 17, "TOML syntax error"),
        (
            ('qdisc = "none"', 'qdisc = "none"\naccess_group = "no-such-group-mfs"'),
            13,
            "interface[1].access_group: group 'no-such-group-mfs': no such group: create it (`groupadd",
        ),
        (('qdisc = "none"', 'qdisc = "none"\naccess_group = 0'), 13, "interface[1].access_group: group 0 is root's"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, edit: tuple[str, str], where: int, needle: str) -> None:
    f = _write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as ei:
        load(f)
    msg = str(ei.value)
    assert "\n" not in msg and needle in msg, msg
    assert msg.startswith(f"{f}:"), msg
    assert msg.startswith(f"{f}:{where}:"), msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "nope.toml")


def test_access_group_by_number_needs_no_group_entry(tmp_path: Path) -> None:
    cfg = load(_write(tmp_path, GOOD.replace('qdisc = "none"', 'qdisc = "none"\naccess_group = 64999')))
    assert cfg.interfaces[1].opts.gid == 64999 and cfg.interfaces[0].opts.gid is None
