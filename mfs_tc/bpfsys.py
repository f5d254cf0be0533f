"""The bpf(2) system call through ctypes: maps, pins, object info. No bcc, no LLVM.

Reusable by the controller, the loader and `mfs-tc status`. Every failure becomes an MfsError that
names the operation, the map and what to do:

  EPERM/EACCES      -> PermissionDeniedError (run as root / CAP_BPF, or fix the pin's mode)
  E2BIG/ENOSPC      -> MapFullError (on update)
  ENOENT            -> `None` from lookups, False from deletes, NotAttachedError from obj_get
  anything else     -> BpfSyscallError (an MfsError carrying `errno`)

Keys and values are `bytes`; the caller packs them (mfs_tc.layout). Per-CPU maps read and write a
value per possible CPU, each slot rounded up to 8 bytes.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import platform
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import KernelFeatureError, MapFullError, MfsError, NotAttachedError, PermissionDeniedError

# ---- constants (include/uapi/linux/bpf.h) ---------------------------------------------------------
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_F_NO_PREALLOC = 1 << 0
BPF_F_RDONLY = 1 << 3
BPF_F_WRONLY = 1 << 4
BPF_F_MMAPABLE = 1 << 10  # an array user space can mmap (5.5+)

MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_HASH = 5
MAP_TYPE_PERCPU_ARRAY = 6
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_LRU_PERCPU_HASH = 10
MAP_TYPE_SK_STORAGE = 24
MAP_TYPE_NAMES = {
    MAP_TYPE_HASH: "hash",
    MAP_TYPE_ARRAY: "array",
    MAP_TYPE_PERCPU_HASH: "percpu_hash",
    MAP_TYPE_PERCPU_ARRAY: "percpu_array",
    MAP_TYPE_LRU_HASH: "lru_hash",
    MAP_TYPE_LRU_PERCPU_HASH: "lru_percpu_hash",
    MAP_TYPE_SK_STORAGE: "sk_storage",
}
MAP_TYPE_BY_NAME = {v: k for k, v in MAP_TYPE_NAMES.items()}  # layout.MapSpec.kind -> type
PERCPU_TYPES = frozenset({MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH})
ARRAY_TYPES = frozenset({MAP_TYPE_ARRAY, MAP_TYPE_PERCPU_ARRAY})

ENOTSUPP = 524  # kernel-internal "operation not supported" (batch ops on old kernels)
_UNSUPPORTED = frozenset({E.EINVAL, ENOTSUPP, E.EOPNOTSUPP})
_SYSCALL_NR = {"x86_64": 321, "amd64": 321, "aarch64": 280, "arm64": 280}


class BpfSyscallError(MfsError):
    """A bpf(2) call failed for a reason with no more specific MfsError."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


# ---- the raw call ---------------------------------------------------------------------------------
class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_char_p),
        ("value", ctypes.c_void_p),  # value or next_key
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_void_p),
        ("out_batch", ctypes.c_void_p),
        ("keys", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_char_p),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_void_p),
    ]


class _CreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


def _load_syscall() -> tuple[int, Callable[..., int], Callable[..., int]]:
    """The bpf(2) number and libc's syscall(2) twice (with and without argtypes): each returns a long."""
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise KernelFeatureError(f"bpf(2) syscall number unknown for {platform.machine()}: mfs-tc supports x86_64 and aarch64")
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
    # the same function without argtypes, for the per-element hot paths: called with ctypes
    # objects built once (c_long each: syscall(2) reads longs), it skips the per-call argument
    # conversion (about 0.4 us of a 1.6 us update on the development machine)
    raw = libc["syscall"]
    raw.restype = ctypes.c_long
    return nr, fn, raw


_NR, _SYSCALL, _SYSCALL_RAW = _load_syscall()
_C_NR = ctypes.c_long(_NR)
_C_LOOKUP, _C_UPDATE, _C_DELETE = (ctypes.c_long(c) for c in (BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM))
_ELEM_SIZE = ctypes.sizeof(_ElemAttr)
_C_ELEM_SIZE = ctypes.c_long(_ELEM_SIZE)
_BATCH_SIZE = ctypes.sizeof(_BatchAttr)
_byref = ctypes.byref
_get_errno = ctypes.get_errno


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Raw bpf(cmd, &attr, sizeof attr). Returns the result or -errno (never raises)."""
    r = _SYSCALL(_NR, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
    return r if r >= 0 else -_get_errno()


_CMD_NAMES = {
    BPF_MAP_CREATE: "map create",
    BPF_MAP_LOOKUP_ELEM: "lookup",
    BPF_MAP_UPDATE_ELEM: "update",
    BPF_MAP_DELETE_ELEM: "delete",
    BPF_MAP_GET_NEXT_KEY: "get next key",
    BPF_MAP_LOOKUP_AND_DELETE_ELEM: "lookup and delete",
    BPF_OBJ_PIN: "pin",
    BPF_OBJ_GET: "open pin",
    BPF_OBJ_GET_INFO_BY_FD: "object info",
    BPF_MAP_LOOKUP_BATCH: "batch lookup",
    BPF_MAP_UPDATE_BATCH: "batch update",
    BPF_MAP_DELETE_BATCH: "batch delete",
}


_READS = frozenset({BPF_MAP_LOOKUP_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_BATCH, BPF_MAP_LOOKUP_AND_DELETE_ELEM})
_WRITES = frozenset(
    {BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH, BPF_MAP_LOOKUP_AND_DELETE_ELEM}
)


def map_frozen(fd: int) -> bool:
    """Whether the map behind `fd` was frozen (BPF_MAP_FREEZE: no more writes from user space)."""
    try:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("frozen:"):
                return line.split(":", 1)[1].strip() == "1"
    except OSError:
        pass
    return False


def error_for(cmd: int, err: int, what: str, opened: int = 0, fd: int = -1) -> MfsError:
    """The MfsError for a failed bpf command `cmd` on `what` (a map name or a path); `opened`:
    the BPF_OBJ_GET flags the map's fd was opened with (what a denied fd was allowed); `fd`: the
    map's fd (a write refused because the map is frozen says so)."""
    op = _CMD_NAMES.get(cmd, f"bpf cmd {cmd}")
    text = f"{op} {what}: {os.strerror(err)}"
    if err == E.EPERM and cmd in _WRITES and fd >= 0 and map_frozen(fd):
        return PermissionDeniedError(
            f"{text}: {what} is frozen (BPF_MAP_FREEZE by a process that holds it writable, e.g. a member of "
            f"the access group: docs/access.md): nothing can change it any more; detach and attach again "
            f"(new maps)"
        )
    if err in (E.EPERM, E.EACCES):
        if opened & BPF_F_WRONLY and cmd in _READS:
            return PermissionDeniedError(
                f"{text}: this process holds {what} write-only (the access group writes entries whose keys "
                f"it made, and cannot read or list any: docs/access.md); reading it needs root"
            )
        if opened & BPF_F_RDONLY and cmd in _WRITES:
            return PermissionDeniedError(
                f"{text}: this process holds {what} read-only (it is root's: the access group may only read "
                f"it, docs/access.md); changing it needs root"
            )
        return PermissionDeniedError(
            f"{text}. Run as root (or with CAP_BPF and CAP_NET_ADMIN), or run the serving process in the "
            f"interface's access group (`mfs-tc attach IFACE --group GROUP`: docs/access.md)"
        )
    if cmd in (BPF_MAP_UPDATE_ELEM, BPF_MAP_UPDATE_BATCH) and err in (E.E2BIG, E.ENOSPC):
        return MapFullError(
            f"{text}: the map is full. Finish requests (`done()`), run `mfs-tc gc`, or attach with " f"larger maps"
        )
    if cmd == BPF_OBJ_GET and err == E.ENOENT:
        return NotAttachedError(f"{text}: nothing is pinned there")
    if err == E.ENOSYS:
        return KernelFeatureError(f"{text}: this kernel has no bpf(2) (CONFIG_BPF_SYSCALL)")
    return BpfSyscallError(text, err)


# ---- helpers ---------------------------------------------------------------------------------------
def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """Number of possible CPUs (what per-CPU map values are sized by), e.g. "0-1" -> 2."""
    text = Path(path).read_text().strip()
    n = 0
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            n = max(n, int(b) + 1)
        elif part:
            n = max(n, int(part) + 1)
    return n


def _round8(n: int) -> int:
    return (n + 7) & ~7


def is_bpffs(path: str | Path = "/sys/fs/bpf") -> bool:
    """True when `path` is a mounted bpf filesystem."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == target and parts[2] == "bpf":
                return True
    return False


def ensure_bpffs(path: str | Path = "/sys/fs/bpf") -> None:
    """Mount bpffs at `path` unless one is already there (pins need it)."""
    if is_bpffs(path):
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.mount(b"bpf", os.fsencode(str(path)), b"bpf", 0, None)
    if r != 0:
        err = ctypes.get_errno()
        if err == E.EBUSY and is_bpffs(path):
            return
        msg = f"mount bpffs on {path}: {os.strerror(err)}"
        if err in (E.EPERM, E.EACCES):
            raise PermissionDeniedError(msg + ": run as root, or `mount -t bpf bpf " + str(path) + "`")
        raise KernelFeatureError(msg)


# ---- maps ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, str(self.type))


def obj_get(path: str | Path, flags: int = 0) -> int:
    """Open a pinned object; returns its fd. Missing pin -> NotAttachedError."""
    p = os.fsencode(str(path))
    attr = _ObjAttr(p, 0, flags)
    r = bpf(BPF_OBJ_GET, attr)
    if r < 0:
        raise error_for(BPF_OBJ_GET, -r, str(path))
    return r


def obj_pin(fd: int, path: str | Path) -> None:
    attr = _ObjAttr(os.fsencode(str(path)), fd, 0)
    r = bpf(BPF_OBJ_PIN, attr)
    if r < 0:
        raise error_for(BPF_OBJ_PIN, -r, str(path))


def map_info(fd: int, what: str = "map") -> MapInfo:
    info = _MapInfo()
    attr = _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info))
    r = bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    if r < 0:
        raise error_for(BPF_OBJ_GET_INFO_BY_FD, -r, what)
    return MapInfo(
        info.type,
        info.id,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.map_flags,
        info.name.decode(errors="replace"),
    )


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> int:
    """Create a map; returns its fd (the caller owns it)."""
    nm = name.encode()[:15]
    attr = _CreateAttr(map_type, key_size, value_size, max_entries, flags, 0, 0, nm)
    r = bpf(BPF_MAP_CREATE, attr)
    if r < 0:
        raise error_for(BPF_MAP_CREATE, -r, name or MAP_TYPE_NAMES.get(map_type, "map"))
    return r


class _ThreadScratch(threading.local):
    """A thread's _Scratch for one map, `s`, set on that thread's first element call."""

    s: _Scratch


class BpfMap:
    """An open map fd with typed element operations. Thread-safe: each call builds its own attr.

    For per-CPU maps `lookup` returns the raw buffer of all CPUs (use `lookup_percpu` to split)
    and `update` expects one (use `update_percpu`)."""

    def __init__(self, fd: int, name: str = "map", info: MapInfo | None = None, flags: int = 0) -> None:
        self.fd = fd
        self.name = name
        self.open_flags = flags  # BPF_F_RDONLY / BPF_F_WRONLY: what this fd may do (0: both)
        self.info = info or map_info(fd, name)
        self.key_size = self.info.key_size
        self.percpu = self.info.type in PERCPU_TYPES
        self.ncpus = possible_cpus() if self.percpu else 1
        self.slot_size = _round8(self.info.value_size) if self.percpu else self.info.value_size
        self.value_size = self.slot_size * self.ncpus
        self._batch_ok: dict[int, bool] = {}
        self._tls = _ThreadScratch()

    # -- lifecycle
    @classmethod
    def open(cls, path: str | Path, name: str | None = None, flags: int = 0) -> BpfMap:
        fd = obj_get(path, flags)
        try:
            return cls(fd, name or Path(path).name, flags=flags)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def create(cls, map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "", flags: int = 0) -> BpfMap:
        fd = map_create(map_type, key_size, value_size, max_entries, name, flags)
        return cls(fd, name or "map")

    def pin(self, path: str | Path) -> None:
        obj_pin(self.fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._tls = _ThreadScratch()  # drop scratch attrs naming the old fd

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- single elements
    def _check_key(self, key: bytes) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"{self.name}: key of {len(key)} bytes, the map wants {self.key_size}")

    def _scratch(self) -> _Scratch:
        """This thread's preallocated attr + key/value buffers (no allocation per call)."""
        try:
            return self._tls.s
        except AttributeError:
            sc = self._tls.s = _Scratch(self.fd, self.key_size, self.value_size)
            return sc

    def _raise_unless_absent(self, cmd: int) -> None:
        """After an element call `cmd` failed: return when the key was absent (ENOENT), raise the
        error for anything else."""
        err = _get_errno()
        if err != E.ENOENT:
            raise error_for(cmd, err, self.name, self.open_flags, self.fd)

    def lookup(self, key: bytes) -> bytes | None:
        if len(key) != self.key_size:
            self._check_key(key)
        sc = self._scratch()
        sc.kbuf.raw = key
        sc.attr.flags = 0
        r = _SYSCALL_RAW(_C_NR, _C_LOOKUP, sc.caddr, _C_ELEM_SIZE)
        if r < 0:
            self._raise_unless_absent(BPF_MAP_LOOKUP_ELEM)
            return None
        return sc.vbuf.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(key) != self.key_size or len(value) != self.value_size:
            self._check_key(key)
            raise ValueError(f"{self.name}: value of {len(value)} bytes, the map wants {self.value_size}")
        try:  # self._scratch(), without the call: one update per flow registration
            sc = self._tls.s
        except AttributeError:
            sc = self._scratch()
        sc.kbuf.raw = key
        sc.vbuf.raw = value
        sc.attr.flags = flags
        r = _SYSCALL_RAW(_C_NR, _C_UPDATE, sc.caddr, _C_ELEM_SIZE)
        if r < 0:
            raise error_for(BPF_MAP_UPDATE_ELEM, _get_errno(), self.name, self.open_flags, self.fd)

    def delete(self, key: bytes) -> bool:
        """Delete `key`; False when it was not there."""
        if len(key) != self.key_size:
            self._check_key(key)
        sc = self._scratch()
        sc.kbuf.raw = key
        r = _SYSCALL_RAW(_C_NR, _C_DELETE, sc.cdaddr, _C_ELEM_SIZE)
        if r < 0:
            self._raise_unless_absent(BPF_MAP_DELETE_ELEM)
            return False
        return True

    def lookup_and_delete(self, key: bytes) -> bytes | None:
        """Remove `key` and return the value it had, in one step (hash maps, Linux 5.14+);
        None when it was not there."""
        self._check_key(key)
        val = ctypes.create_string_buffer(self.value_size)
        attr = _ElemAttr(self.fd, 0, key, ctypes.addressof(val), 0)
        r = _SYSCALL(_NR, BPF_MAP_LOOKUP_AND_DELETE_ELEM, ctypes.addressof(attr), _ELEM_SIZE)
        if r < 0:
            self._raise_unless_absent(BPF_MAP_LOOKUP_AND_DELETE_ELEM)
            return None
        return val.raw

    def next_key(self, key: bytes | None) -> bytes | None:
        """The key after `key` (the first key for None); None at the end."""
        buf = ctypes.create_string_buffer(self.key_size)
        attr = _ElemAttr(self.fd, 0, key, ctypes.addressof(buf), 0)
        r = _SYSCALL(_NR, BPF_MAP_GET_NEXT_KEY, ctypes.addressof(attr), _ELEM_SIZE)
        if r < 0:
            self._raise_unless_absent(BPF_MAP_GET_NEXT_KEY)
            return None
        return buf.raw

    def keys(self) -> Iterator[bytes]:
        """All keys (a hash map may change under the walk: keys deleted meanwhile are skipped)."""
        if self.info.type in ARRAY_TYPES:
            for i in range(self.info.max_entries):
                yield i.to_bytes(4, "little")
            return
        k = self.next_key(None)
        seen = 0
        while k is not None:
            yield k
            seen += 1
            if seen > 4 * self.info.max_entries + 16:  # concurrent churn: never loop forever
                return
            k = self.next_key(k)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs; batched lookup where the kernel has it, else a key walk."""
        if self.info.type not in ARRAY_TYPES and self._batch_supported(BPF_MAP_LOOKUP_BATCH):
            try:
                yield from self._items_batched()
                return
            except _BatchUnsupported:
                self._batch_ok[BPF_MAP_LOOKUP_BATCH] = False
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def __len__(self) -> int:
        return sum(1 for _ in self.keys()) if self.info.type not in ARRAY_TYPES else self.info.max_entries

    # -- per-CPU helpers
    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        raw = self.lookup(key)
        if raw is None:
            return None
        vs, ss = self.info.value_size, self.slot_size
        return [raw[i * ss : i * ss + vs] for i in range(self.ncpus)]

    def update_percpu(self, key: bytes, values: list[bytes] | bytes, flags: int = BPF_ANY) -> None:
        """Write one value per CPU (a single `bytes` is written to every CPU)."""
        if isinstance(values, bytes):
            values = [values] * self.ncpus
        if len(values) != self.ncpus:
            raise ValueError(f"{self.name}: {len(values)} values for {self.ncpus} possible CPUs")
        pad = b"\0" * (self.slot_size - self.info.value_size)
        self.update(key, b"".join(v + pad for v in values), flags)

    # -- batches
    def _batch_supported(self, cmd: int) -> bool:
        return self._batch_ok.get(cmd, True)

    def update_batch(self, keys: list[bytes], values: list[bytes], flags: int = BPF_ANY) -> None:
        """Write many elements in one syscall (BPF_MAP_UPDATE_BATCH), or a loop where the kernel
        lacks it. All or raise: on failure, elements before the failing one are written."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        if not keys:
            return
        ks, vs = b"".join(keys), b"".join(values)
        if len(ks) != len(keys) * self.key_size or len(vs) != len(values) * self.value_size:
            raise ValueError(f"{self.name}: keys/values of the wrong size for this map")
        self.update_batch_raw(ks, vs, len(keys), flags)

    def update_batch_raw(self, keys: bytes, values: bytes, count: int, flags: int = BPF_ANY) -> None:
        """Like update_batch with keys and values already concatenated."""
        done = 0
        if self._batch_supported(BPF_MAP_UPDATE_BATCH):
            kb, vb = ctypes.c_char_p(keys), ctypes.c_char_p(values)
            attr = _BatchAttr(
                None, None, ctypes.cast(kb, ctypes.c_void_p), ctypes.cast(vb, ctypes.c_void_p), count, self.fd, flags, 0
            )
            r = bpf(BPF_MAP_UPDATE_BATCH, attr)
            if r >= 0:
                return
            err = -r
            done = attr.count
            if err in _UNSUPPORTED and done == 0:
                self._batch_ok[BPF_MAP_UPDATE_BATCH] = False
            else:
                raise error_for(BPF_MAP_UPDATE_BATCH, err, self.name, self.open_flags, self.fd)
        ksz, vsz = self.key_size, self.value_size
        for i in range(done, count):
            self.update(keys[i * ksz : (i + 1) * ksz], values[i * vsz : (i + 1) * vsz], flags)

    def delete_batch(self, keys: list[bytes]) -> int:
        """Delete many keys; returns how many were deleted (missing keys are skipped)."""
        if not keys:
            return 0
        if self._batch_supported(BPF_MAP_DELETE_BATCH):
            ks = b"".join(keys)
            if len(ks) != len(keys) * self.key_size:
                raise ValueError(f"{self.name}: keys of the wrong size for this map")
            kb = ctypes.c_char_p(ks)
            attr = _BatchAttr(None, None, ctypes.cast(kb, ctypes.c_void_p), None, len(keys), self.fd, 0, 0)
            r = bpf(BPF_MAP_DELETE_BATCH, attr)
            if r >= 0:
                return len(keys)
            err = -r
            if err == E.ENOENT:  # stops at the first missing key: finish one by one
                done = int(attr.count)
                return done + sum(self.delete(k) for k in keys[done + 1 :])
            if err in _UNSUPPORTED and attr.count == 0:
                self._batch_ok[BPF_MAP_DELETE_BATCH] = False
            else:
                raise error_for(BPF_MAP_DELETE_BATCH, err, self.name, self.open_flags, self.fd)
        return sum(self.delete(k) for k in keys)

    def _items_batched(self, chunk: int = 1024) -> Iterator[tuple[bytes, bytes]]:
        ksz, vsz = self.key_size, self.value_size
        keys = ctypes.create_string_buffer(chunk * ksz)
        vals = ctypes.create_string_buffer(chunk * vsz)
        # batch tokens are opaque; for hash maps 4 bytes (a bucket index), keep 8 to be safe
        tok_in = ctypes.create_string_buffer(max(8, ksz))
        tok_out = ctypes.create_string_buffer(max(8, ksz))
        first = True
        while True:
            attr = _BatchAttr(
                None if first else ctypes.addressof(tok_in),
                ctypes.addressof(tok_out),
                ctypes.addressof(keys),
                ctypes.addressof(vals),
                chunk,
                self.fd,
                0,
                0,
            )
            r = bpf(BPF_MAP_LOOKUP_BATCH, attr)
            n = attr.count
            if r < 0 and -r not in (E.ENOENT,):
                if -r == E.ENOSPC and n == 0:  # a bucket bigger than the chunk
                    chunk *= 4
                    keys = ctypes.create_string_buffer(chunk * ksz)
                    vals = ctypes.create_string_buffer(chunk * vsz)
                    continue
                if first and -r in _UNSUPPORTED:
                    raise _BatchUnsupported()
                raise error_for(BPF_MAP_LOOKUP_BATCH, -r, self.name, self.open_flags, self.fd)
            kr, vr = keys.raw, vals.raw
            for i in range(n):
                yield kr[i * ksz : (i + 1) * ksz], vr[i * vsz : (i + 1) * vsz]
            if r < 0:  # ENOENT: that was the last chunk
                return
            ctypes.memmove(tok_in, tok_out, len(tok_out))
            first = False


class _BatchUnsupported(Exception):
    pass


class _Scratch:
    """Per-thread element attr whose key and value pointers aim at owned buffers."""

    __slots__ = ("kbuf", "vbuf", "attr", "addr", "caddr", "dattr", "daddr", "cdaddr")

    def __init__(self, fd: int, key_size: int, value_size: int) -> None:
        self.kbuf = ctypes.create_string_buffer(key_size)
        self.vbuf = ctypes.create_string_buffer(value_size)
        self.attr = _ElemAttr(fd, 0, None, ctypes.addressof(self.vbuf), 0)
        # the key field is a c_char_p: point it at kbuf by address
        ctypes.c_void_p.from_address(ctypes.addressof(self.attr) + _ElemAttr.key.offset).value = ctypes.addressof(self.kbuf)
        self.addr = ctypes.addressof(self.attr)
        # delete wants every field after the key zero
        self.dattr = _ElemAttr(fd, 0, None, None, 0)
        ctypes.c_void_p.from_address(ctypes.addressof(self.dattr) + _ElemAttr.key.offset).value = ctypes.addressof(self.kbuf)
        self.daddr = ctypes.addressof(self.dattr)
        self.caddr, self.cdaddr = ctypes.c_void_p(self.addr), ctypes.c_void_p(self.daddr)
