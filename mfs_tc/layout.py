"""The map contract, Python side: mirrors bpf/mfs_maps.h (layout version 6).

Every struct here has the same size and field order as its C twin; tests/test_layout.py checks
the sizes against what the C compiler lays out. Nothing here needs root or bcc.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

LAYOUT_MAGIC = 0x4D465331  # "MFS1"
LAYOUT_VERSION = 6
MAX_LEVELS = 8
MAX_THRESH = MAX_LEVELS - 1
MLU_ONE = 65536
MLU_CAP = 64 * MLU_ONE
DSCP_KEEP = 0xFF
LEVEL_NONE = 0xFF  # state.cur_level before the first packet
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)

# modes
MODE_STATIC = 0
MODE_MLU = 1
MODE_RLI = 2
MODE_LAXITY = 3
MODE_SENT = 4
MODE_REMAINING = 5
MODE_NAMES = {
    MODE_STATIC: "static",
    MODE_MLU: "mlu",
    MODE_RLI: "rli",
    MODE_LAXITY: "laxity",
    MODE_SENT: "sent",
    MODE_REMAINING: "remaining",
}
MODE_BY_NAME = {v: k for k, v in MODE_NAMES.items()}

# flow flags
F_MONOTONIC = 0x01
F_AUTO_SCAVENGE = 0x02

# request flags
R_SCAVENGER = 0x01

# flow state flags (kernel)
S_ACKED = 0x01

# config flags
C_TRUST_DSCP = 0x01

# stats slots
STAT_MISS = 8
STAT_MALFORMED = 9
STAT_NONIP = 10
STAT_FRAGMENT = 11
STAT_NOL4 = 12
STAT_HIT = 13
STAT_SCAVENGED = 14
STAT_DSCP_SET = 15
STAT_SK_HIT = 16
STAT_CONTROL = 17
STAT_ORPHAN = 18
STAT_STALE = 19
STAT_BAD_LEVEL = 20
STAT_RULE = 21
STAT_REQ_RECORD = 22
STAT_STATE_LOOKUP = 23
NSTATS = 24
RULES_MAX = 64
CURSORS_MAX = 16384  # = REQUESTS_MAX: one cursor slot per request record
SLOT_NONE = 0xFFFFFFFF  # request.slot: the cursor is the record's own (no mmapable cursors)
SLOT16_NONE = 0xFFFF  # entry.slot: the entry names no cursor slot (the kernel reads the record)
STATES_MAX = 65536  # state slots (version 6) = FLOWS_MAX
STATE_CHUNK = 64  # state slots a controller claims at once (`state_owners`)
STATE_NONE = 0xFFFFFFFF  # entry.state: no state slot (the kernel looks the state up)
STAT_NAMES = {
    STAT_MISS: "miss",
    STAT_MALFORMED: "malformed",
    STAT_NONIP: "non_ip",
    STAT_FRAGMENT: "fragment",
    STAT_NOL4: "no_l4",
    STAT_HIT: "hit",
    STAT_SCAVENGED: "scavenged",
    STAT_DSCP_SET: "dscp_set",
    STAT_SK_HIT: "sk_hit",
    STAT_CONTROL: "control",
    STAT_ORPHAN: "reserved",
    STAT_STALE: "stale",
    STAT_BAD_LEVEL: "bad_level",
    STAT_RULE: "rule",
    STAT_REQ_RECORD: "request_record",
    STAT_STATE_LOOKUP: "state_lookup",
}

# stage codes carried in entries (informational)
STAGE_CODES = {"other": 0, "kv_fetch": 1, "collective": 2, "p2d": 3}
STAGE_NAMES = {v: k for k, v in STAGE_CODES.items()}

# default DSCP per level: EF, CS5, AF41, AF31, AF21, AF11, AF12, LE (RFC 8622) for scavenger.
# No level has DSCP 0: on a trust-dscp port DSCP 0 (traffic of hosts without mfs-tc) is the
# default level, never a level some other traffic was marked for.
DEFAULT_DSCP = (46, 40, 34, 26, 18, 10, 12, 1)


def default_dscp(nlevels: int) -> list[int]:
    """The default DSCP per level of an interface with `nlevels` levels: the first nlevels-1 of
    DEFAULT_DSCP and LE (1) for the last, the scavenger (a single level: EF)."""
    if nlevels <= 1:
        return [DEFAULT_DSCP[0]]
    return list(DEFAULT_DSCP[: nlevels - 1]) + [DEFAULT_DSCP[-1]]


def level_dscp(level: int, dscp: int) -> int:
    """The DSCP of `level` whose levels record says `dscp`: where the level keeps the packets'
    DSCP (DSCP_KEEP), DEFAULT_DSCP's at that index (what RoCE traffic classes are given)."""
    return DEFAULT_DSCP[min(level, len(DEFAULT_DSCP) - 1)] if dscp == DSCP_KEEP else dscp


BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "mfs"
FLOWS_MAX = 65536
REQUESTS_MAX = 16384

KEY_FMT = "<16s16sHHB3x"
ENTRY_FMT = "<BBBB8BIHHIQqQQ7qQqII"
STATE_FMT = "<QQQQQQ"
REQUEST_FMT = "<iIqQQQII"
CURSOR_FMT = "<iIQ"
CURSOR_OWNER_FMT = "<QQQQ"
LEVEL_FMT = "<IB3x"
CONFIG_FMT = "<8IQ64s"
COUNTER_FMT = "<QQ"
RULE_FMT = "<16s16s16s16sHHHHBBBBIII"
KEY_SIZE = struct.calcsize(KEY_FMT)
ENTRY_SIZE = struct.calcsize(ENTRY_FMT)
STATE_SIZE = struct.calcsize(STATE_FMT)
REQUEST_SIZE = struct.calcsize(REQUEST_FMT)
LEVEL_SIZE = struct.calcsize(LEVEL_FMT)
CONFIG_SIZE = struct.calcsize(CONFIG_FMT)
COUNTER_SIZE = struct.calcsize(COUNTER_FMT)
RULE_SIZE = struct.calcsize(RULE_FMT)
CURSOR_SIZE = struct.calcsize(CURSOR_FMT)
CURSOR_OWNER_SIZE = struct.calcsize(CURSOR_OWNER_FMT)
assert (KEY_SIZE, ENTRY_SIZE, STATE_SIZE, REQUEST_SIZE, LEVEL_SIZE, CONFIG_SIZE, RULE_SIZE) == (40, 136, 48, 48, 8, 104, 88)
assert (CURSOR_SIZE, CURSOR_OWNER_SIZE) == (16, 32)


@dataclass(frozen=True, slots=True)
class MapSpec:
    """One pinned map: what the classifier declares (bpf/mfs_classifier.c's BPF_TABLE_PINNED and
    MFS_SK_STORAGE lines; tests/test_layout.py checks them against this table), what the maps
    layer checks before it writes and creates for tests, and the access group's share of it."""

    name: str
    kind: str  # the map type the classifier declares: "hash", "lru_hash", "array", ...
    key_size: int
    value_size: int
    max_entries: int  # 0: socket storage (no limit of its own)
    also: tuple[str, ...] = ()  # other map types accepted when opening (hash and LRU hash alike)
    no_prealloc: bool = False  # BPF_F_NO_PREALLOC: elements freed after an RCU grace period
    mmapable: bool = False  # BPF_F_MMAPABLE where the kernel has it (5.5+): user space maps it
    # the access group's share ("r", "w", "rw", "": none; docs/access.md): not part of the kernel
    # contract (no layout version), it sets the pins' modes and a non-root process's open flags
    member: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.key_size, self.value_size, self.max_entries

    @property
    def kinds(self) -> tuple[str, ...]:
        return (self.kind, *self.also)

    @property
    def socket_storage(self) -> bool:
        return self.kind == "sk_storage"


# the one table of map specs: maps every attach has, then (SK_MAP_NAMES) those only where the
# kernel has socket storage
MAP_SPECS: dict[str, MapSpec] = {
    s.name: s
    for s in (
        MapSpec("flows", "hash", KEY_SIZE, ENTRY_SIZE, FLOWS_MAX, also=("lru_hash",), no_prealloc=True),
        MapSpec("flow_state", "lru_hash", KEY_SIZE, STATE_SIZE, FLOWS_MAX, also=("hash",)),
        MapSpec("requests", "hash", 8, REQUEST_SIZE, REQUESTS_MAX, also=("lru_hash",), no_prealloc=True, member="w"),
        MapSpec("cursors", "array", 4, CURSOR_SIZE, CURSORS_MAX, mmapable=True),
        MapSpec("cursor_owners", "hash", 4, CURSOR_OWNER_SIZE, CURSORS_MAX, no_prealloc=True),
        MapSpec("states", "array", 4, STATE_SIZE, STATES_MAX, mmapable=True),
        MapSpec("state_owners", "hash", 4, CURSOR_OWNER_SIZE, STATES_MAX // STATE_CHUNK, no_prealloc=True),
        MapSpec("levels", "array", 4, LEVEL_SIZE, MAX_LEVELS, member="r"),
        MapSpec("config", "array", 4, CONFIG_SIZE, 1, member="r"),
        MapSpec("stats", "percpu_array", 4, COUNTER_SIZE, NSTATS),
        MapSpec("rules", "array", 4, RULE_SIZE, RULES_MAX),
        MapSpec("rule_stats", "percpu_array", 4, COUNTER_SIZE, RULES_MAX),
        MapSpec("sk_flows", "sk_storage", 4, ENTRY_SIZE, 0, no_prealloc=True, member="rw"),
        MapSpec("sk_state", "sk_storage", 4, STATE_SIZE, 0, no_prealloc=True, member="r"),
    )
}
MAP_NAMES = tuple(n for n, s in MAP_SPECS.items() if not s.socket_storage)
SK_MAP_NAMES = tuple(n for n, s in MAP_SPECS.items() if s.socket_storage)

# byte offsets in a packed mfs_flow_entry of the fields user space compares without unpacking
# (after mode, flags, nthresh, rsvd0, lvl[8], target_layer, stage, slot); tests/test_layout.py checks them
ENTRY_GEN_OFFSET = struct.calcsize("<4B8BIHH")
ENTRY_REQUEST_ID_OFFSET = struct.calcsize("<4B8BIHHI")
ENTRY_STATE_OFFSET = struct.calcsize("<4B8BIHHIQqQQ7qQq")  # the state slot (version 6)


def netns_label(netns: str | None) -> str:
    """Directory name of a network namespace under the pin root ("host" for the initial one)."""
    return netns if netns else "host"


def pin_dir(ifname: str, netns: str | None = None, root: Path = PIN_ROOT) -> Path:
    if not ifname or "/" in ifname or ifname in (".", ".."):
        raise ValueError(f"bad interface name {ifname!r}")
    return root / netns_label(netns) / ifname


_V4MAPPED = b"\0" * 10 + b"\xff\xff"
_KEY = KEY_STRUCT = struct.Struct(KEY_FMT)
_REQUEST = struct.Struct(REQUEST_FMT)
_CURSOR_OWNER = struct.Struct(CURSOR_OWNER_FMT)


@functools.lru_cache(maxsize=65536)
def addr16(addr: str) -> tuple[bytes, bool]:
    """(16-byte key address, is_v4) of a textual address; IPv4 as IPv4-mapped IPv6 (cached:
    serving processes register many flows between few hosts)."""
    try:
        if ":" in addr:
            raw = socket.inet_pton(socket.AF_INET6, addr.split("%", 1)[0])
            return raw, raw[:12] == _V4MAPPED
        return _V4MAPPED + socket.inet_pton(socket.AF_INET, addr), True
    except (OSError, TypeError) as exc:
        raise ValueError(f"bad IP address {addr!r}") from exc


def pack_key(saddr: str, daddr: str, sport: int, dport: int, proto: int) -> bytes:
    """The `flows` map key of a 5-tuple (egress view: the source is this host)."""
    s, s4 = addr16(saddr if type(saddr) is str else str(saddr))
    d, d4 = addr16(daddr if type(daddr) is str else str(daddr))
    if s4 is not d4:
        raise ValueError(f"address families differ: {saddr} -> {daddr}")
    if type(sport) is not int or type(dport) is not int:
        raise ValueError(f"ports must be integers in 0..65535, got {sport!r}, {dport!r}")
    try:
        return _KEY.pack(s, d, sport, dport, proto)
    except struct.error:
        raise ValueError(f"ports must be integers in 0..65535, got {sport!r}, {dport!r}") from None


def _addr_str(raw: bytes) -> str:
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A 5-tuple as the classifier sees it on egress: source is this host."""

    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int = socket.IPPROTO_TCP

    def __post_init__(self) -> None:
        for p in (self.sport, self.dport):
            if not 0 <= p <= 0xFFFF:
                raise ValueError(f"port {p} out of range")
        if self.proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            raise ValueError(f"protocol {self.proto}: only TCP (6) and UDP (17) flows are classified")
        a, b = ipaddress.ip_address(self.saddr), ipaddress.ip_address(self.daddr)
        if a.version != b.version:
            raise ValueError(f"address families differ: {self.saddr} -> {self.daddr}")

    def pack(self) -> bytes:
        return pack_key(self.saddr, self.daddr, self.sport, self.dport, self.proto)

    @classmethod
    def unpack(cls, raw: bytes) -> FlowKey:
        s, d, sp, dp, pr = struct.unpack(KEY_FMT, raw)
        return cls(_addr_str(s), _addr_str(d), sp, dp, pr)

    def reversed(self) -> FlowKey:
        return FlowKey(self.daddr, self.saddr, self.dport, self.sport, self.proto)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> FlowKey:
        """The egress 5-tuple of a connected socket (local -> peer)."""
        if sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            raise ValueError("only TCP and UDP sockets")
        proto = socket.IPPROTO_TCP if sock.type == socket.SOCK_STREAM else socket.IPPROTO_UDP
        local = sock.getsockname()
        try:
            peer = sock.getpeername()
        except OSError as exc:
            raise ValueError("socket is not connected: its peer is unknown") from exc
        return cls(_unmap(local[0]), _unmap(peer[0]), local[1], peer[1], proto)

    def __str__(self) -> str:
        proto = {6: "tcp", 17: "udp"}.get(self.proto, str(self.proto))
        return f"{proto} {_fmt_ep(self.saddr, self.sport)} -> {_fmt_ep(self.daddr, self.dport)}"


def _unmap(addr: str) -> str:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _fmt_ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who registered a request, in a form that survives pid reuse and PID namespaces: the pid
    as its own namespace sees it, its start time (clock ticks after boot) and the inode of its
    pid namespace. 0 fields: unknown."""

    pid: int
    start: int = 0
    pidns: int = 0

    @classmethod
    def of(cls, pid: int | None = None) -> Owner:
        pid = os.getpid() if pid is None else pid
        return cls(pid, proc_start_ticks(pid) or 0, pidns_inode(pid) or 0)


def proc_start_ticks(pid: int, proc: str = "/proc") -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks after boot); None if no such process."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def pidns_inode(pid: int, proc: str = "/proc") -> int | None:
    try:
        return os.stat(f"{proc}/{pid}/ns/pid").st_ino
    except OSError:
        return None


@dataclass(slots=True)
class RequestRecord:
    """A request's record in `requests`. `slot`: the index of its cursor in `cursors` (then
    `cursor` here is not what the kernel reads), or SLOT_NONE (the kernel reads `cursor`)."""

    cursor: int = 0
    flags: int = 0
    deadline_ns: int = 0
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int = 0
    owner_pidns: int = 0
    slot: int = SLOT_NONE

    def pack(self) -> bytes:
        return _REQUEST.pack(
            self.cursor, self.flags, self.deadline_ns, self.owner_pid, self.owner_start, self.owner_pidns, self.slot, 0
        )

    @property
    def owner(self) -> Owner:
        return Owner(self.owner_pid, self.owner_start, self.owner_pidns)

    @classmethod
    def unpack(cls, raw: bytes) -> RequestRecord:
        *vals, _rsvd = _REQUEST.unpack(raw)
        return cls(*vals)

    @property
    def scavenged(self) -> bool:
        return bool(self.flags & R_SCAVENGER)

    def kernel_cursor(self, slot_cursor: int | None) -> int:
        """The cursor the classifier reads for this record (mirror of mfs_classifier.c's
        flow_level): the slot's (`slot_cursor`, what cursors[slot] holds; None where the
        array has no such element) when the slot is below CURSORS_MAX, else the record's own."""
        if self.slot < CURSORS_MAX and slot_cursor is not None:
            return slot_cursor
        return self.cursor


@dataclass(frozen=True, slots=True)
class CursorOwner:
    """Who owns a cursor slot (`cursor_owners`): the request's key and its owner process."""

    request_key: int
    owner: Owner

    def pack(self) -> bytes:
        return _CURSOR_OWNER.pack(self.request_key, self.owner.pid, self.owner.start, self.owner.pidns)

    @classmethod
    def unpack(cls, raw: bytes) -> CursorOwner:
        key, pid, start, pidns = _CURSOR_OWNER.unpack(raw)
        return cls(key, Owner(pid, start, pidns))


@dataclass(slots=True)
class LevelRecord:
    priority: int
    dscp: int = DSCP_KEEP

    def pack(self) -> bytes:
        return struct.pack(LEVEL_FMT, self.priority, self.dscp)

    @classmethod
    def unpack(cls, raw: bytes) -> LevelRecord:
        return cls(*struct.unpack(LEVEL_FMT, raw))


@dataclass(slots=True)
class ConfigRecord:
    """`default_level`: payload of unknown flows (and non-IP, malformed, fragments, ICMP);
    `control_level`: pure control packets (SYN, FIN, RST, ACK without payload) of unknown flows
    (None: the same as default_level); `keep_dscp`: DSCP values (a set, or the raw 64-bit mask)
    that untracked traffic keeps, all others leave with the DSCP of their level."""

    nlevels: int
    default_level: int
    scavenger_level: int
    flags: int = 0
    dscp2level: bytes = b"\0" * 64
    control_level: int | None = None
    keep_dscp: int = 0
    magic: int = LAYOUT_MAGIC
    version: int = LAYOUT_VERSION

    def pack(self) -> bytes:
        return struct.pack(
            CONFIG_FMT,
            self.magic,
            self.version,
            self.nlevels,
            self.default_level,
            self.scavenger_level,
            self.flags,
            self.default_level if self.control_level is None else self.control_level,
            0,
            self.keep_dscp,
            self.dscp2level,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> ConfigRecord:
        magic, version, n, dl, sl, fl, cl, _rsvd, keep, table = struct.unpack(CONFIG_FMT, raw)
        return cls(n, dl, sl, fl, table, cl, keep, magic, version)


def dscp_mask(dscps: Iterable[int]) -> int:
    """The keep_dscp mask of a collection of DSCP values (0..63)."""
    m = 0
    for d in dscps:
        if not 0 <= int(d) < 64:
            raise ValueError(f"DSCP {d} out of range 0..63")
        m |= 1 << int(d)
    return m


@dataclass(slots=True)
class FlowState:
    """What the kernel counted for one registration (flow_state / sk_state / states): never
    written by user space, but for `owner` in `states` (the gen whose entries count at that
    slot; layout version 6)."""

    gen: int = 0
    cur_level: int = LEVEL_NONE
    sent_bytes: int = 0
    sent_pkts: int = 0
    flags: int = 0
    owner: int = 0

    def pack(self) -> bytes:
        return struct.pack(STATE_FMT, self.gen, self.cur_level, self.sent_bytes, self.sent_pkts, self.flags, self.owner)

    @classmethod
    def unpack(cls, raw: bytes) -> FlowState:
        return cls(*struct.unpack(STATE_FMT, raw))


def dscp_to_level_table(dscp_per_level: tuple[int, ...] | list[int], default_level: int) -> bytes:
    """trust-dscp table: DSCP value -> level; DSCPs no level uses, and DSCP 0 always (what hosts
    without mfs-tc send: handshakes, ACKs, unknown flows), map to the default level."""
    table = [default_level] * 64
    for level, dscp in enumerate(dscp_per_level):
        if dscp != DSCP_KEEP and 0 < dscp < 64 and table[dscp] == default_level:
            table[dscp] = level
    return bytes(table)


# rule families
FAMILY_ANY, FAMILY_V4, FAMILY_V6 = 0, 4, 6


@dataclass(slots=True)
class RuleRecord:
    """One slot of `rules` (struct mfs_rule): prefixes as 16-byte network + mask (IPv4-mapped for
    IPv4, as in the flow key), inclusive port ranges in host order, proto 0 (any) / 6 / 17,
    family 0 (any) / 4 / 6. id 0 ends the table."""

    src: bytes = b"\0" * 16
    smask: bytes = b"\0" * 16
    dst: bytes = b"\0" * 16
    dmask: bytes = b"\0" * 16
    sport_lo: int = 0
    sport_hi: int = 0xFFFF
    dport_lo: int = 0
    dport_hi: int = 0xFFFF
    proto: int = 0
    family: int = FAMILY_ANY
    level: int = 0
    stage: int = 0
    id: int = 0
    cslot: int = 0

    def pack(self) -> bytes:
        return struct.pack(
            RULE_FMT,
            self.src,
            self.smask,
            self.dst,
            self.dmask,
            self.sport_lo,
            self.sport_hi,
            self.dport_lo,
            self.dport_hi,
            self.proto,
            self.family,
            self.level,
            self.stage,
            self.id,
            self.cslot,
            0,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> RuleRecord:
        *vals, _rsvd = struct.unpack(RULE_FMT, raw)
        return cls(*vals)
