#!/usr/bin/env bash
# Boot a stock Debian kernel in a throwaway VM (virtme-ng over QEMU) and run
# tools/vm_check_inner.py inside it: the classifier passes that kernel's verifier, attach's `auto`
# backend picks ETS (K strict bands), two TCP flows at levels 1 and 5 land in their ETS bands,
# detach restores the link. Prints one JSON line (MFS_VM_RESULT's payload plus the wall time and
# the kernel image); exits non-zero on any failure.
#
#   sudo tools/vm_check.sh                       # newest Debian kernel in /boot (installs one)
#   MFS_VM_KERNEL=6.1.0-56-amd64 tools/vm_check.sh
#   tools/vm_check.sh -- --levels 4 --secs 3     # arguments after -- go to vm_check_inner.py
#
# Environment: MFS_VM_KERNEL (version to boot), MFS_VM_TIMEOUT (seconds, default 900),
# MFS_VM_KVM=1 (use KVM instead of TCG emulation), MFS_VM_MEMORY (default 2G),
# MFS_VM_CPUS (default 2), MFS_VM_LOG (full console log, default /tmp/mfs-vm-check.log).
#
# Installs, idempotently: qemu-system-x86, busybox-static, linux-image-amd64 (Debian's kernel),
# the linux-headers package of exactly the booted version (bcc in the VM compiles against
# /lib/modules/<ver>/build), and virtme-ng in .venv. The guest sees the host's / read-only
# (writes to /tmp, /run, /etc... go to a tmpfs overlay that dies with the VM), so nothing it does
# outlives it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
say() { printf '[vm_check] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

inner_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; inner_args=("$@"); break ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (inner arguments go after --)" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, /boot kernel images are root-only)"
[ -x .venv/bin/python ] || die "no .venv: run sudo ./tools/install.sh first"

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  say "apt-get install ${missing[*]}"
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

apt_install qemu-system-x86 busybox-static
if [ -n "${MFS_VM_KERNEL:-}" ]; then
  kver=$MFS_VM_KERNEL
  [ -e "/boot/vmlinuz-$kver" ] || apt_install "linux-image-$kver"
else
  ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 || apt_install linux-image-amd64
  kver=$(ls /boot/vmlinuz-*-amd64 | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n 1)
fi
image=/boot/vmlinuz-$kver
[ -r "$image" ] || die "no kernel image $image"
[ -d "/lib/modules/$kver/kernel" ] || die "no modules for $kver in /lib/modules/$kver (reinstall linux-image-$kver)"
# bcc inside the VM compiles against /lib/modules/<ver>/build: the headers of exactly this version
if [ ! -e "/lib/modules/$kver/build/include" ] || [ ! -d "/usr/src/linux-headers-$kver" ]; then
  apt_install "linux-headers-$kver"
fi
[ -e "/lib/modules/$kver/build/include" ] || die "/lib/modules/$kver/build does not lead to headers"

if [ ! -x .venv/bin/vng ]; then
  say "pip install virtme-ng (into .venv)"
  .venv/bin/python -m pip install -q --disable-pip-version-check virtme-ng
fi

accel=(--disable-kvm)
[ "${MFS_VM_KVM:-0}" = 1 ] && accel=()
log=${MFS_VM_LOG:-/tmp/mfs-vm-check.log}
inner=".venv/bin/python tools/vm_check_inner.py"
for a in "${inner_args[@]}"; do inner+=" $(printf '%q' "$a")"; done
say "booting $image (${accel[*]:-kvm}), running: $inner"
t0=$(date +%s.%N)
set +e
# vng finds virtme-run and friends on PATH
PATH="$REPO/.venv/bin:$PATH" timeout "${MFS_VM_TIMEOUT:-900}" .venv/bin/vng "${accel[@]}" \
  --run "$image" --user root --memory "${MFS_VM_MEMORY:-2G}" --cpus "${MFS_VM_CPUS:-2}" \
  --cwd "$REPO" --exec "$inner" </dev/null >"$log" 2>&1
vng_rc=$?
set -e
t1=$(date +%s.%N)
line=$(grep -a '^MFS_VM_RESULT ' "$log" | tail -n 1 | sed 's/^MFS_VM_RESULT //' | tr -d '\r')
if [ -z "$line" ]; then
  tail -n 40 "$log" >&2
  die "no result from the VM (vng exit $vng_rc; full log in $log)"
fi
.venv/bin/python - "$line" "$image" "$t0" "$t1" "$vng_rc" <<'EOF'
import json, sys
res = json.loads(sys.argv[1])
res["kernel_image"] = sys.argv[2]
res["wall_s"] = round(float(sys.argv[4]) - float(sys.argv[3]), 1)
res["vng_exit"] = int(sys.argv[5])
print(json.dumps(res, sort_keys=True))
sys.exit(0 if res.get("ok") else 1)
EOF
