"""The map contract: bpf/mfs_maps.h (what the C compiler lays out) against mfs_tc/layout.py.

A small C program prints sizeof/offsetof of every field; the Python side computes the same from
its struct formats. Also the round trips of keys, entries and records.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from mfs_tc import layout
from mfs_tc.entry import FlowEntry

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"

# C struct -> (Python struct format, its fields in order; the key's C `pad` is the format's 3x)
STRUCTS = {
    "mfs_flow_key": (layout.KEY_FMT, ["saddr", "daddr", "sport", "dport", "proto"]),
    "mfs_flow_entry": (
        layout.ENTRY_FMT,
        [
            "mode",
            "flags",
            "nthresh",
            "rsvd0",
            "lvl",
            "target_layer",
            "stage",
            "slot",
            "gen",
            "request_id",
            "deadline_ns",
            "total_bytes",
            "ps_per_byte",
            "thresh",
            "sent_base",
            "created_ns",
            "state",
            "rsvd1",
        ],
    ),
    "mfs_flow_state": (layout.STATE_FMT, ["gen", "cur_level", "sent_bytes", "sent_pkts", "flags", "owner"]),
    "mfs_request": (
        layout.REQUEST_FMT,
        ["cursor", "flags", "deadline_ns", "owner_pid", "owner_start", "owner_pidns", "slot", "rsvd"],
    ),
    "mfs_cursor": (layout.CURSOR_FMT, ["cursor", "flags", "request_key"]),
    "mfs_cursor_owner": (layout.CURSOR_OWNER_FMT, ["request_key", "owner_pid", "owner_start", "owner_pidns"]),
    "mfs_level": (layout.LEVEL_FMT, ["priority", "dscp"]),
    "mfs_config": (
        layout.CONFIG_FMT,
        [
            "magic",
            "version",
            "nlevels",
            "default_level",
            "scavenger_level",
            "flags",
            "control_level",
            "rsvd",
            "keep_dscp",
            "dscp2level",
        ],
    ),
    "mfs_counter": (layout.COUNTER_FMT, ["packets", "bytes"]),
    "mfs_rule": (
        layout.RULE_FMT,
        [
            "src",
            "smask",
            "dst",
            "dmask",
            "sport_lo",
            "sport_hi",
            "dport_lo",
            "dport_hi",
            "proto",
            "family",
            "level",
            "stage",
            "id",
            "cslot",
            "rsvd",
        ],
    ),
}

DEFINES = {
    "MFS_LAYOUT_MAGIC": layout.LAYOUT_MAGIC,
    "MFS_LAYOUT_VERSION": layout.LAYOUT_VERSION,
    "MFS_MAX_LEVELS": layout.MAX_LEVELS,
    "MFS_MAX_THRESH": layout.MAX_THRESH,
    "MFS_MLU_ONE": layout.MLU_ONE,
    "MFS_MLU_CAP": layout.MLU_CAP,
    "MFS_DSCP_KEEP": layout.DSCP_KEEP,
    "MFS_LEVEL_NONE": layout.LEVEL_NONE,
    "MFS_MODE_STATIC": layout.MODE_STATIC,
    "MFS_MODE_MLU": layout.MODE_MLU,
    "MFS_MODE_RLI": layout.MODE_RLI,
    "MFS_MODE_LAXITY": layout.MODE_LAXITY,
    "MFS_MODE_SENT": layout.MODE_SENT,
    "MFS_MODE_REMAINING": layout.MODE_REMAINING,
    "MFS_F_MONOTONIC": layout.F_MONOTONIC,
    "MFS_F_AUTO_SCAVENGE": layout.F_AUTO_SCAVENGE,
    "MFS_R_SCAVENGER": layout.R_SCAVENGER,
    "MFS_S_ACKED": layout.S_ACKED,
    "MFS_C_TRUST_DSCP": layout.C_TRUST_DSCP,
    "MFS_STAT_MISS": layout.STAT_MISS,
    "MFS_STAT_MALFORMED": layout.STAT_MALFORMED,
    "MFS_STAT_NONIP": layout.STAT_NONIP,
    "MFS_STAT_FRAGMENT": layout.STAT_FRAGMENT,
    "MFS_STAT_NOL4": layout.STAT_NOL4,
    "MFS_STAT_HIT": layout.STAT_HIT,
    "MFS_STAT_SCAVENGED": layout.STAT_SCAVENGED,
    "MFS_STAT_DSCP_SET": layout.STAT_DSCP_SET,
    "MFS_STAT_SK_HIT": layout.STAT_SK_HIT,
    "MFS_STAT_CONTROL": layout.STAT_CONTROL,
    "MFS_STAT_ORPHAN": layout.STAT_ORPHAN,
    "MFS_STAT_STALE": layout.STAT_STALE,
    "MFS_STAT_BAD_LEVEL": layout.STAT_BAD_LEVEL,
    "MFS_STAT_RULE": layout.STAT_RULE,
    "MFS_NSTATS": layout.NSTATS,
    "MFS_RULES_MAX": layout.RULES_MAX,
    "MFS_CURSORS_MAX": layout.CURSORS_MAX,
    "MFS_SLOT_NONE": layout.SLOT_NONE,
    "MFS_STAT_REQ_RECORD": layout.STAT_REQ_RECORD,
    "MFS_STAT_STATE_LOOKUP": layout.STAT_STATE_LOOKUP,
    "MFS_STATES_MAX": layout.STATES_MAX,
    "MFS_STATE_CHUNK": layout.STATE_CHUNK,
    "MFS_STATE_CHUNKS": layout.STATES_MAX // layout.STATE_CHUNK,
    "MFS_STATE_NONE": layout.STATE_NONE,
}


def _py_offsets(fmt: str) -> list[int]:
    """Offset of each item of a struct format (an `Ns` string is one item, `8B` is eight)."""
    order = fmt[0]
    out = []
    prefix = order
    for m in re.finditer(r"(\d*)([a-zA-Z?])", fmt[1:]):
        n, code = int(m.group(1) or 1), m.group(2)
        if code == "x":
            prefix += f"{n}x"
            continue
        reps, one = (1, f"{n}s") if code == "s" else (n, code)
        for _ in range(reps):
            size = struct.calcsize(order + one)
            out.append(struct.calcsize(prefix + one) - size)
            prefix += one
    return out


ARRAYS = {"lvl": 8, "thresh": 7}  # fields that are arrays of items in the Python format


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.fail("no C compiler (cc): apt-get install gcc")
    d = tmp_path_factory.mktemp("layout")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>", '#include "mfs_maps.h"', "int main(void) {"]
    for cs, (_fmt, fields) in STRUCTS.items():
        lines.append(f'printf("sizeof {cs} %zu\\n", sizeof(struct {cs}));')
        for f in fields:
            lines.append(f'printf("{cs}.{f} %zu\\n", offsetof(struct {cs}, {f}));')
    for name in DEFINES:
        lines.append(f'printf("{name} %lld\\n", (long long)({name}));')
    lines += ["return 0;", "}"]
    src = d / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = d / "layout"
    subprocess.run([cc, f"-I{BPF_DIR}", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


@pytest.mark.parametrize("cstruct", sorted(STRUCTS))
def test_struct_size_and_offsets_match_c(c_layout: dict[str, int], cstruct: str) -> None:
    fmt, fields = STRUCTS[cstruct]
    assert c_layout[f"sizeof {cstruct}"] == struct.calcsize(fmt), cstruct
    items = _py_offsets(fmt)
    assert len(items) == sum(ARRAYS.get(f, 1) for f in fields), (cstruct, items, fields)
    i = 0
    for f in fields:
        off = items[i]
        assert c_layout[f"{cstruct}.{f}"] == off, f"{cstruct}.{f}: C {c_layout[f'{cstruct}.{f}']}, Python {off}"
        i += ARRAYS.get(f, 1)


def test_defines_match(c_layout: dict[str, int]) -> None:
    for name, value in DEFINES.items():
        assert c_layout[name] == value, name


def test_map_shapes_match_sizes() -> None:
    shapes = {n: s.shape for n, s in layout.MAP_SPECS.items()}
    assert shapes["flows"][:2] == (40, 136)
    assert shapes["flow_state"][:2] == (40, 48)
    assert shapes["sk_flows"][:2] == (4, 136)
    assert shapes["sk_state"][:2] == (4, 48)
    assert shapes["states"] == (4, 48, layout.STATES_MAX) and layout.MAP_SPECS["states"].mmapable
    assert shapes["state_owners"] == (4, 32, layout.STATES_MAX // layout.STATE_CHUNK)
    assert shapes["requests"][:2] == (8, 48)
    assert shapes["cursors"] == (4, 16, layout.CURSORS_MAX) and layout.MAP_SPECS["cursors"].mmapable
    assert shapes["cursor_owners"] == (4, 32, layout.CURSORS_MAX)
    assert shapes["levels"][:2] == (4, 8)
    assert shapes["config"][:2] == (4, 104)
    assert shapes["stats"] == (4, 16, layout.NSTATS)
    assert shapes["rules"] == (4, 88, layout.RULES_MAX)
    assert shapes["rule_stats"] == (4, 16, layout.RULES_MAX)


_C_SIZES = {"__u32": 4, "__u64": 8, "int": 4}


def _c_size(ctype: str, c_layout: dict[str, int]) -> int:
    ctype = " ".join(ctype.split())
    if ctype.startswith("struct "):
        return c_layout[f"sizeof {ctype.split()[1]}"]
    return _C_SIZES[ctype]


def test_classifier_map_declarations_match_the_spec_table(c_layout: dict[str, int]) -> None:
    """Every map the classifier declares (BPF_TABLE_PINNED, MFS_SK_STORAGE) is in layout.MAP_SPECS
    with its type, key and value sizes, entry count, pin name and BPF_F_NO_PREALLOC, and back."""
    src = (BPF_DIR / "mfs_classifier.c").read_text()
    limits = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define (MFS_\w+) (\d+)\n", src)}
    limits |= {k: v for k, v in c_layout.items() if k.startswith("MFS_")}
    seen = set()
    tables = re.finditer(
        r'BPF_TABLE_PINNED\("(\w+)",\s*([\w ]+?),\s*([\w ]+?),\s*(\w+),\s*(\w+),\s*MFS_PIN_DIR\s*"/(\w+)"'
        r"\s*(?:,\s*(\w+))?\s*\);",
        src,
    )
    for m in tables:
        kind, key, leaf, name, entries, pin, flags = m.groups()
        spec = layout.MAP_SPECS[name]
        assert (kind, pin) == (spec.kind, spec.name), name
        assert (_c_size(key, c_layout), _c_size(leaf, c_layout)) == (spec.key_size, spec.value_size), name
        assert (int(entries) if entries.isdigit() else limits[entries]) == spec.max_entries, name
        assert (flags == "BPF_F_NO_PREALLOC") == spec.no_prealloc, name
        # BPF_F_MMAPABLE, or 0 in the build for kernels without it (-DMFS_NO_MMAP_CURSORS)
        assert (flags == "MFS_CURSORS_FLAGS") == spec.mmapable, name
        seen.add(name)
    assert re.search(r"\.flags = BPF_F_NO_PREALLOC", src)  # what MFS_SK_STORAGE gives each sk map
    for m in re.finditer(r'^MFS_SK_STORAGE\((\w+), ([\w ]+?), MFS_PIN_DIR "/(\w+)"\);', src, re.M):
        name, leaf, pin = m.groups()
        spec = layout.MAP_SPECS[name]
        assert spec.socket_storage and spec.no_prealloc and pin == name, name
        assert (spec.key_size, _c_size(leaf, c_layout)) == (_C_SIZES["int"], spec.value_size), name
        seen.add(name)
    assert seen == set(layout.MAP_SPECS), set(layout.MAP_SPECS) ^ seen
    assert layout.MAP_NAMES + layout.SK_MAP_NAMES == tuple(layout.MAP_SPECS)


def test_entry_offsets_match_c(c_layout: dict[str, int]) -> None:
    assert layout.ENTRY_GEN_OFFSET == c_layout["mfs_flow_entry.gen"]
    assert layout.ENTRY_REQUEST_ID_OFFSET == c_layout["mfs_flow_entry.request_id"]
    assert layout.ENTRY_STATE_OFFSET == c_layout["mfs_flow_entry.state"]


def test_member_access_is_the_spec_tables_column() -> None:
    from mfs_tc import access  # noqa: PLC0415

    assert access.MEMBER_ACCESS == {n: s.member for n, s in layout.MAP_SPECS.items()}
    assert {n for n, a in access.MEMBER_ACCESS.items() if a} == {"config", "levels", "sk_flows", "sk_state", "requests"}
    assert access.pin_mode("requests", True) == 0o620 and access.pin_mode("sk_flows", True) == 0o660


def test_classifier_source_uses_the_layout_limits() -> None:
    src = (BPF_DIR / "mfs_classifier.c").read_text()
    m = re.search(r"#define MFS_FLOWS_MAX (\d+)", src)
    assert m and int(m.group(1)) == layout.FLOWS_MAX
    m = re.search(r"#define MFS_REQUESTS_MAX (\d+)", src)
    assert m and int(m.group(1)) == layout.REQUESTS_MAX


def test_flow_key_round_trip_v4_v6() -> None:
    k4 = layout.FlowKey("10.1.2.3", "10.1.2.4", 40000, 5201)
    raw = k4.pack()
    assert len(raw) == 40
    assert raw[:16] == b"\0" * 10 + b"\xff\xff" + bytes([10, 1, 2, 3])
    assert struct.unpack_from("<HH", raw, 32) == (40000, 5201)
    assert raw[36] == socket.IPPROTO_TCP and raw[37:] == b"\0\0\0"
    assert layout.FlowKey.unpack(raw) == k4
    k6 = layout.FlowKey("fd77::1", "fd77::2", 1, 2, socket.IPPROTO_UDP)
    assert layout.FlowKey.unpack(k6.pack()) == k6
    assert k6.reversed() == layout.FlowKey("fd77::2", "fd77::1", 2, 1, socket.IPPROTO_UDP)


@pytest.mark.parametrize(
    "kwargs, fix",
    [
        (dict(saddr="10.0.0.1", daddr="fd77::1", sport=1, dport=2), "families"),
        (dict(saddr="10.0.0.1", daddr="10.0.0.2", sport=70000, dport=2), "port"),
        (dict(saddr="10.0.0.1", daddr="10.0.0.2", sport=1, dport=2, proto=1), "TCP"),
    ],
)
def test_flow_key_rejects_bad_input(kwargs: dict, fix: str) -> None:
    with pytest.raises(ValueError, match=fix):
        layout.FlowKey(**kwargs)


def test_flow_entry_round_trip() -> None:
    e = FlowEntry(
        mode=layout.MODE_MLU,
        levels=[6, 4, 2, 0],
        thresholds=[100, 200, 300],
        flags=layout.F_MONOTONIC,
        target_layer=7,
        stage=3,
        request_id=(1 << 63) + 5,
        slot=16383,
        deadline_ns=-12345,
        total_bytes=1 << 40,
        ps_per_byte=80,
        sent_bytes=99,
        created_ns=42,
        gen=0xDEADBEEF,
        state_slot=65535,
    )
    raw = e.pack()
    assert len(raw) == 136
    back = FlowEntry.unpack(raw)
    for f in (
        "mode",
        "levels",
        "thresholds",
        "flags",
        "target_layer",
        "stage",
        "request_id",
        "slot",
        "deadline_ns",
        "total_bytes",
        "ps_per_byte",
        "sent_bytes",
        "created_ns",
        "gen",
        "state_slot",
    ):
        assert getattr(back, f) == getattr(e, f), f
    assert back.cur_level == layout.LEVEL_NONE  # the kernel's, not the decision's
    # unused level slots repeat the last level (the kernel masks the index, never reads junk)
    assert raw[4:12] == bytes([6, 4, 2, 0, 0, 0, 0, 0])


def _reference_pack(e: FlowEntry, gen: int) -> bytes:
    """ENTRY_FMT field by field (levels padded with the last, thresholds with zeros): what
    FlowEntry.pack, which packs each table once and reuses it, must equal byte for byte."""
    lv = list(e.levels) + [e.levels[-1]] * (layout.MAX_LEVELS - len(e.levels))
    th = list(e.thresholds) + [0] * (layout.MAX_THRESH - len(e.thresholds))
    return struct.pack(
        layout.ENTRY_FMT,
        e.mode,
        e.flags,
        len(e.thresholds),
        0,
        *lv,
        e.target_layer,
        e.stage,
        e.slot,
        gen,
        e.request_id,
        e.deadline_ns,
        e.total_bytes,
        e.ps_per_byte,
        *th,
        e.sent_bytes,
        e.created_ns,
        e.state_slot,
        0,
    )


def test_flow_entry_pack_is_the_format_field_by_field() -> None:
    import random  # noqa: PLC0415

    rnd = random.Random(9)
    tables = [(layout.MODE_STATIC, [rnd.randrange(8)], []) for _ in range(3)]
    for _ in range(40):
        n = rnd.randrange(layout.MAX_THRESH + 1)
        th = sorted(rnd.randrange(-(1 << 63), 1 << 63) for _ in range(n))
        tables.append(
            (
                rnd.choice([layout.MODE_MLU, layout.MODE_RLI, layout.MODE_LAXITY, layout.MODE_SENT]),
                [rnd.randrange(8) for _ in range(n + 1)],
                th,
            )
        )
    for i in range(2000):  # tables repeat (as a policy's do) with every flags value and field
        mode, lv, th = rnd.choice(tables)
        e = FlowEntry(
            mode=mode,
            levels=list(lv),
            thresholds=list(th),
            flags=rnd.randrange(4),
            target_layer=rnd.randrange(1 << 32),
            stage=rnd.randrange(4),
            request_id=rnd.randrange(1 << 64),
            deadline_ns=rnd.randrange(-(1 << 63), 1 << 63),
            total_bytes=rnd.randrange(1 << 64),
            ps_per_byte=rnd.randrange(1 << 64),
            sent_bytes=rnd.randrange(1 << 64),
            created_ns=rnd.randrange(-(1 << 63), 1 << 63),
            gen=rnd.randrange(1 << 32),
            state_slot=rnd.choice([layout.STATE_NONE, rnd.randrange(layout.STATES_MAX)]),
        )
        assert e.pack() == _reference_pack(e, e.gen), i
        g = rnd.randrange(1 << 32)
        assert e.pack(g) == _reference_pack(e, g), i
    with pytest.raises(struct.error):  # a level the u8 cannot hold is still refused at packing
        FlowEntry.from_table(layout.MODE_STATIC, [256], []).pack()


def test_records_round_trip() -> None:
    r = layout.RequestRecord(
        cursor=-3, flags=layout.R_SCAVENGER, deadline_ns=5, owner_pid=9, owner_start=123456, owner_pidns=4026531836, slot=77
    )
    assert layout.RequestRecord.unpack(r.pack()) == r and r.scavenged
    assert layout.RequestRecord().slot == layout.SLOT_NONE
    # the cursor the kernel reads: the slot's where the record has one, else the record's own
    assert r.kernel_cursor(12) == 12 and r.kernel_cursor(None) == -3
    assert layout.RequestRecord(cursor=5).kernel_cursor(12) == 5
    assert layout.RequestRecord(cursor=5, slot=layout.CURSORS_MAX).kernel_cursor(12) == 5
    co = layout.CursorOwner(1 << 63, layout.Owner(9, 123456, 4026531836))
    assert layout.CursorOwner.unpack(co.pack()) == co
    assert r.owner == layout.Owner(9, 123456, 4026531836)
    lv = layout.LevelRecord(0x4D460011, 46)
    assert layout.LevelRecord.unpack(lv.pack()) == lv
    c = layout.ConfigRecord(8, 6, 7, layout.C_TRUST_DSCP, bytes(range(64)), control_level=1, keep_dscp=layout.dscp_mask([46, 0]))
    assert layout.ConfigRecord.unpack(c.pack()) == c and c.keep_dscp == (1 << 46) | 1
    st = layout.FlowState(gen=7, cur_level=3, sent_bytes=1 << 63, sent_pkts=5)
    assert layout.FlowState.unpack(st.pack()) == st


def test_dscp_table_maps_each_level_dscp_back() -> None:
    table = layout.dscp_to_level_table(layout.DEFAULT_DSCP, 6)
    for level, dscp in enumerate(layout.DEFAULT_DSCP):
        assert table[dscp] == level
    assert table[63] == 6
    # no level is marked DSCP 0, and DSCP 0 (hosts without mfs-tc) is the default level
    assert 0 not in layout.DEFAULT_DSCP
    assert layout.dscp_to_level_table([0, 46, 34], 2)[0] == 2


def test_pin_dir_rejects_bad_names() -> None:
    assert layout.pin_dir("eth0", "ns1") == layout.PIN_ROOT / "ns1" / "eth0"
    assert layout.pin_dir("eth0") == layout.PIN_ROOT / "host" / "eth0"
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError):
            layout.pin_dir(bad)


def test_default_dscp_is_one_rule() -> None:
    """attach's default table, PinnedMaps.create's and the RDMA table's are the same list."""
    from mfs_tc.loader import AttachOptions  # noqa: PLC0415
    from mfs_tc.maps import rdma_table  # noqa: PLC0415

    assert layout.default_dscp(8) == list(layout.DEFAULT_DSCP)
    assert layout.default_dscp(4) == [46, 40, 34, 1]  # the scavenger (last) level is LE
    assert layout.default_dscp(1) == [46]
    for n in range(2, layout.MAX_LEVELS + 1):
        assert AttachOptions("eth0", levels=n).dscp_table() == layout.default_dscp(n)
        assert [r["dscp"] for r in rdma_table(n)] == layout.default_dscp(n)
    assert layout.level_dscp(2, layout.DSCP_KEEP) == 34 and layout.level_dscp(2, 7) == 7
