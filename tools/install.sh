#!/usr/bin/env bash
# Idempotent install for a fresh Debian 12 machine, run as root.
#   - system packages: python3-bpfcc (bcc), iproute2, tcpdump, util-linux (unshare: the qdisc probe),
#     gcc + libc6-dev (tests/test_layout.py compiles bpf/mfs_maps.h against layout.py), kernel headers
#   - kernel headers for the running kernel; where Debian has none for it, linux-headers-amd64
#     with /lib/modules/$(uname -r)/{build,source} linked to it (tc programs only use uapi headers)
#   - .venv from /usr/bin/python3 --system-site-packages (bcc lives in the system dist-packages;
#     the PyPI package named "bcc" is unrelated), the project installed in it (editable, with test extras)
#   - with --systemd: tools/mfs-tc.service in /etc/systemd/system (ExecStart = this .venv's mfs-tc)
#     and tools/mfs-tc.toml.example in /etc/mfs-tc/; the unit is enabled only with --enable too
#     (SYSTEMD_DIR, MFS_TC_ETC override the two directories)
set -euo pipefail
systemd=0
enable=0
for arg in "$@"; do
  case "$arg" in
    --systemd) systemd=1 ;;
    --enable) enable=1 ;;
    *) printf '[install] unknown option %s (use --systemd [--enable])\n' "$arg" >&2; exit 2 ;;
  esac
done
if [ "$enable" = 1 ] && [ "$systemd" = 0 ]; then
  printf '[install] --enable needs --systemd\n' >&2; exit 2
fi
cd "$(dirname "$0")/.."
say() { printf '[install] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "must run as root (apt-get, /lib/modules links)"; exit 1
fi

pkgs=(python3-bpfcc python3-venv python3-dev iproute2 tcpdump ethtool iperf3 util-linux gcc libc6-dev)
kver=$(uname -r)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
hdr_pkg="linux-headers-$kver"
need_generic_headers=0
if [ ! -e "/lib/modules/$kver/build/include" ]; then
  if apt-cache show "$hdr_pkg" >/dev/null 2>&1; then
    dpkg -s "$hdr_pkg" >/dev/null 2>&1 || missing+=("$hdr_pkg")
  else
    need_generic_headers=1
    dpkg -s linux-headers-amd64 >/dev/null 2>&1 || missing+=(linux-headers-amd64)
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "$need_generic_headers" = 1 ] || [ ! -e "/lib/modules/$kver/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$hdr" ]; then say "no kernel headers found under /usr/src"; exit 1; fi
  say "Debian has no headers for kernel $kver: linking /lib/modules/$kver/{build,source} to $hdr (tc programs only use uapi headers)"
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$hdr" "/lib/modules/$kver/build"
  ln -sfn "${common:-$hdr}" "/lib/modules/$kver/source"
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv (system site packages, for bcc)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.mfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "pip install -e .[test]"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
.venv/bin/python -c 'import bcc, pyroute2, typer, scapy, prometheus_client' || { say "import check failed"; exit 1; }
# the simulator's event loop compiled by mypyc (mfs_tc/sim/accel.py; ~1 min, only when its
# sources changed since the last build); without it the simulator runs its source, slower
.venv/bin/python -m mfs_tc.sim.accel build || say "the compiled simulator did not build: the simulator runs its source"
if [ "$systemd" = 1 ]; then
  unit_dir=${SYSTEMD_DIR:-/etc/systemd/system}
  etc_dir=${MFS_TC_ETC:-/etc/mfs-tc}
  mkdir -p "$unit_dir" "$etc_dir"
  sed -e "s|@MFS_TC@|$PWD/.venv/bin/mfs-tc|g" -e "s|@DOCS@|$PWD/docs|g" tools/mfs-tc.service > "$unit_dir/mfs-tc.service.tmp"
  mv "$unit_dir/mfs-tc.service.tmp" "$unit_dir/mfs-tc.service"
  cp tools/mfs-tc.toml.example "$etc_dir/mfs-tc.toml.example"
  say "installed $unit_dir/mfs-tc.service and $etc_dir/mfs-tc.toml.example (write $etc_dir/mfs-tc.toml)"
  if [ -d /run/systemd/system ] && [ -z "${SYSTEMD_DIR:-}" ]; then
    systemctl daemon-reload
    if [ "$enable" = 1 ]; then
      systemctl enable mfs-tc.service
      say "enabled mfs-tc.service (start it: systemctl start mfs-tc)"
    else
      say "not enabled: systemctl enable --now mfs-tc"
    fi
  elif [ "$enable" = 1 ]; then
    say "systemd is not running here: enable it later with systemctl enable mfs-tc"
  fi
fi
say "ready: .venv/bin/mfs-tc"
