"""`mfs-tc doctor`: is this host able to run mfs-tc? Each check says how to fix what fails."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import access, bpfsys, tcx
from .access import OBJ_GET_UNPRIV_SINCE, member_open_problem, unprivileged_bpf_disabled
from .backends import ProbeError, cleanup_stale_probes, probe_qdisc_kinds
from .cursors import mmap_supported
from .layout import PIN_ROOT
from .pinroot import UnsafePinRootError, secure_pin_dir
from .sim import accel


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _kallsyms(*names: str) -> dict[str, bool]:
    found = {n: False for n in names}
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                sym = line.rstrip().split(" ")[2].split("\t")[0]
                if sym in found:
                    found[sym] = True
    except OSError:
        pass
    return found


def run_checks() -> list[Check]:
    checks: list[Check] = []
    root = os.geteuid() == 0
    checks.append(
        Check(
            "root",
            root,
            "running as root" if root else f"uid {os.geteuid()}",
            "run with sudo (attach needs CAP_BPF + CAP_NET_ADMIN)",
        )
    )
    kver = os.uname().release
    checks.append(Check("kernel", True, kver, required=False))
    bpffs = bpfsys.is_bpffs()
    checks.append(
        Check(
            "bpffs",
            bpffs,
            "/sys/fs/bpf is bpffs" if bpffs else "/sys/fs/bpf not mounted",
            "mount -t bpf bpf /sys/fs/bpf (attach mounts it when needed)",
            required=False,
        )
    )
    try:
        secure_pin_dir(PIN_ROOT, PIN_ROOT, create=False)
        checks.append(Check("pin root", True, f"{PIN_ROOT} absent or root-owned, not writable by others", required=False))
    except UnsafePinRootError as exc:
        checks.append(Check("pin root", False, str(exc).split(": ")[0], str(exc).split("; ")[-1]))

    problem = member_open_problem()
    val = unprivileged_bpf_disabled()
    checks.append(
        Check(
            "non-root serving",
            problem is None,
            f"kernel.unprivileged_bpf_disabled={val}: only map creation and program load are refused "
            f"(Linux >= {'.'.join(map(str, OBJ_GET_UNPRIV_SINCE))}), so an access group (attach --group) can "
            f"open the pinned maps"
            if problem is None
            else problem.split(": use ")[0],
            "" if problem is None else "use " + problem.split(": use ", 1)[1],
            required=False,
        )
    )
    btf = Path("/sys/kernel/btf/vmlinux").exists()
    checks.append(
        Check(
            "BTF",
            btf,
            "/sys/kernel/btf/vmlinux" if btf else "no kernel BTF",
            "a kernel with CONFIG_DEBUG_INFO_BTF=y (not needed by the classifier itself)",
            required=False,
        )
    )
    syms = _kallsyms("cls_bpf_classify", "bpf_fd_sk_storage_update_elem", "bpf_sk_fullsock")
    sk = syms["bpf_fd_sk_storage_update_elem"] and syms["bpf_sk_fullsock"]
    checks.append(
        Check(
            "socket storage",
            sk,
            "BPF_MAP_TYPE_SK_STORAGE + bpf_sk_fullsock: per-socket entries"
            if sk
            else "no socket storage: every flow uses the 5-tuple map (slower, LRU-evicted)",
            "a kernel >= 5.2 with CONFIG_BPF_SYSCALL and CONFIG_INET",
            required=False,
        )
    )
    stamp = access.kernel_version() >= access.TSTAMP_TYPE_SINCE
    checks.append(
        Check(
            "tcp departure stamps",
            stamp,
            "mlu/laxity rank TCP segments at the stamp TCP gave them (__sk_buff.tstamp_type): no clock call per packet"
            if stamp
            else "no __sk_buff.tstamp_type: mlu/laxity read the clock on every packet (slower, same levels)",
            "a kernel >= 5.18",
            required=False,
        )
    )
    if root:
        mm = mmap_supported()
        checks.append(
            Check(
                "mmap cursors",
                mm,
                "BPF_F_MMAPABLE arrays: at_layer is a store into mapped memory (no syscall), and flows "
                "keep their kernel state at state slots (one lookup a packet fewer)"
                if mm
                else "no BPF_F_MMAPABLE: request cursors live in the request records (at_layer is one update "
                "syscall) and every flow's kernel state is looked up (sk_state / flow_state)",
                "a kernel >= 5.5",
                required=False,
            )
        )
        have_cls = syms["cls_bpf_classify"]
        checks.append(
            Check(
                "cls_bpf",
                have_cls,
                "cls_bpf classifier in the kernel" if have_cls else "cls_bpf not found",
                "a kernel with CONFIG_NET_CLS_BPF",
            )
        )
        stale = cleanup_stale_probes()
        if stale:
            checks.append(
                Check(
                    "stale probes", True, f"removed {len(stale)} leftover probe namespaces: " + ", ".join(stale), required=False
                )
            )
        try:
            kinds = probe_qdisc_kinds()
        except ProbeError as exc:
            checks.append(Check("qdisc probe", False, str(exc), "run as root (attach needs it anyway)"))
            kinds = {k: False for k in ("clsact", "ets", "mqprio", "htb")}
        checks.append(
            Check(
                "clsact",
                kinds["clsact"],
                "clsact qdisc" if kinds["clsact"] else "missing",
                "a kernel with CONFIG_NET_SCH_INGRESS",
            )
        )

        has_tcx = tcx.available(1)
        checks.append(
            Check(
                "tcx",
                has_tcx,
                "tcx egress (BPF link): attach uses it (--hook auto)" if has_tcx else "no tcx: attach uses clsact + cls_bpf",
                "Linux 6.6+ for tcx (clsact works without it)",
                required=False,
            )
        )
        fix = {
            "ets": "CONFIG_NET_SCH_ETS (else HTB is used)",
            "mqprio": "CONFIG_NET_SCH_MQPRIO and a NIC with DCB offload (else HTB is used)",
            "htb": "CONFIG_NET_SCH_HTB",
        }
        for k in ("ets", "mqprio", "htb"):
            checks.append(
                Check(
                    f"qdisc {k}",
                    kinds[k],
                    "available" if kinds[k] else "not in this kernel",
                    fix[k],
                    required=(k == "htb" and not (kinds["ets"] or kinds["mqprio"])),
                )
            )
    try:
        import bcc  # noqa: F401

        checks.append(Check("bcc", True, f"bcc {getattr(bcc, '__version__', '')} (python3-bpfcc)".strip()))
    except ImportError:
        checks.append(
            Check(
                "bcc",
                False,
                "python bcc not importable",
                "apt-get install python3-bpfcc and use a venv with --system-site-packages (sudo ./tools/install.sh)",
            )
        )
    hdr = Path(f"/lib/modules/{kver}/build")
    checks.append(
        Check(
            "kernel headers",
            hdr.exists(),
            str(hdr.resolve()) if hdr.exists() else f"{hdr} missing",
            "sudo ./tools/install.sh (installs linux-headers and links them for this kernel)",
        )
    )
    sim, _ = accel.state()
    checks.append(
        Check(
            "compiled simulator",
            sim == "compiled",
            sim,
            f"{accel.BUILD_COMMAND} (tools/install.sh runs it); the simulator runs its source meanwhile",
            required=False,
        )
    )
    return checks
