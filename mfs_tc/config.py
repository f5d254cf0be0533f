"""The declarative host configuration, /etc/mfs-tc/mfs-tc.toml: what `mfs-tc apply` makes true.

    [defaults]                      # optional: keys every [[interface]] inherits
    levels = 8

    [[interface]]
    name = "eth0"
    netns = "serving"               # optional (ip netns name); absent: the host namespace
    qdisc = "auto"                  # auto | ets | mqprio | htb | none (or backend = ...)
    rate = "25gbit"                 # HTB's link rate
    dscp = "default"                # "default" | "none" | [46, 40, 34, ...] (one per level)
    default_level = 6
    control_level = 0
    keep_dscp = [46]
    trust_dscp = false
    hook = "auto"                   # auto | tcx | clsact
    access_group = "mfs"            # serving processes' group (or a gid): attach --group (docs/access.md)

      [[interface.rule]]            # in priority order: the first match wins
      dst = "10.0.2.0/24"
      dport = 5000                  # or "5000-5010"
      proto = "tcp"
      stage = "kv_fetch"            # or level = 3

Every error names the file and the line (TOML syntax errors carry it; validation errors name
the key path, e.g. interface[1].rule[0].dport, and the line of its table or key).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MfsError
from .layout import RULES_MAX
from .loader import AttachOptions
from .rules import RuleSpec
from .units import parse_dscp_list, parse_rate

if TYPE_CHECKING:
    from .loader import AttachOptions
    from .rules import RuleSpec

DEFAULT_CONFIG = Path("/etc/mfs-tc/mfs-tc.toml")

IFACE_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "netns": str,
    "levels": int,
    "qdisc": str,
    "rate": (str, int),
    "dscp": (str, list),
    "default_level": int,
    "control_level": int,
    "keep_dscp": list,
    "trust_dscp": bool,
    "hook": str,
    "access_group": (str, int),
    "rule": list,
    "backend": str,
}
RULE_KEYS: dict[str, type | tuple[type, ...]] = {
    "src": str,
    "dst": str,
    "sport": (str, int),
    "dport": (str, int),
    "proto": str,
    "level": int,
    "stage": str,
}
TOP_KEYS = {"interface", "defaults"}


class ConfigError(MfsError):
    """A config file that cannot be applied: names the file and the line."""


@dataclass
class InterfaceConfig:
    opts: AttachOptions  # validated
    rules: list[RuleSpec]  # in priority order
    access_group: str | int | None = None  # a group name or a gid
    path: str = ""  # key path, e.g. interface[0]

    @property
    def ident(self) -> tuple[str | None, str]:
        return self.opts.netns, self.opts.ifname

    def label(self) -> str:
        return self.opts.ifname + (f" (netns {self.opts.netns})" if self.opts.netns else "")


@dataclass
class HostConfig:
    file: Path
    interfaces: list[InterfaceConfig] = field(default_factory=list)

    def netns_names(self) -> list[str | None]:
        return sorted({i.opts.netns for i in self.interfaces}, key=lambda n: n or "")


def _locate(text: str, path: list[str | int]) -> int | None:
    """Best-effort line (1-based) of a key path like ["interface", 1, "rule", 0, "dport"] in
    the file: the key inside the n-th [[interface]] / m-th [[interface.rule]] table, or the
    table's header line."""
    lines = text.splitlines()
    if len(path) == 1 and path[0] not in TOP_KEYS:  # an unknown top-level table or key
        for n, raw in enumerate(lines, 1):
            s = raw.split("#", 1)[0].strip()
            if re.fullmatch(rf"\[\[?\s*{re.escape(str(path[0]))}[\s.\]].*", s) or re.match(rf"{re.escape(str(path[0]))}\s*=", s):
                return n
        return None
    iface_i, rule_i = -1, -1
    section: str | None = None
    want_i = path[1] if len(path) > 1 and path[0] == "interface" else None
    want_r = path[3] if len(path) > 3 and path[2] == "rule" else None
    key = path[-1] if isinstance(path[-1], str) else None
    if path[0] == "defaults":
        want_i, section_want = None, "defaults"
    else:
        section_want = "interface.rule" if want_r is not None else "interface"
    header_line: int | None = None
    for n, raw in enumerate(lines, 1):
        s = raw.split("#", 1)[0].strip()
        m = re.fullmatch(r"\[\[?\s*([A-Za-z0-9_.\s]+?)\s*\]\]?", s)
        if m:
            section = m.group(1).replace(" ", "")
            if section == "interface":
                iface_i += 1
                rule_i = -1
            elif section == "interface.rule":
                rule_i += 1
            here = (
                section == section_want
                and (section_want == "defaults" or iface_i == want_i)
                and (want_r is None or rule_i == want_r)
            )
            if here:
                header_line = n
            continue
        in_target = (
            section == section_want and (section_want == "defaults" or iface_i == want_i) and (want_r is None or rule_i == want_r)
        )
        if in_target and key and re.match(rf"{re.escape(key)}\s*=", s):
            return n
    return header_line


def _fmt_path(path: list[str | int]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def load(file: Path | str = DEFAULT_CONFIG) -> HostConfig:
    """Parse and validate the config; ConfigError (naming file and line) on any problem."""
    file = Path(file)
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file (write one: see docs/operating.md, or pass --config FILE)") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read it: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        line = getattr(exc, "lineno", None)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            line = int(m.group(1))
            msg = msg[: m.start()].strip()
        where = f"{file}:{line}" if line else str(file)
        raise ConfigError(f"{where}: TOML syntax error: {msg}") from None
    return _validate(file, text, doc)


# builds the ConfigError for a key path (file:line: path: message), for the caller to raise
_Fail = Callable[[list[str | int], str], ConfigError]


def _validate(file: Path, text: str, doc: dict[str, Any]) -> HostConfig:
    def fail(path: list[str | int], msg: str) -> ConfigError:
        line = _locate(text, path)
        where = f"{file}:{line}" if line else str(file)
        return ConfigError(f"{where}: {_fmt_path(path)}: {msg}")

    for k in doc:
        if k not in TOP_KEYS:
            return_err = fail([k], "unknown key (the file has [defaults] and [[interface]] tables)")
            raise return_err
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise fail(["defaults"], "must be a table ([defaults])")
    for k, v in defaults.items():
        if k not in IFACE_KEYS or k in ("name", "rule"):
            raise fail(["defaults", k], "unknown key for [defaults]")
        _check_type(fail, ["defaults", k], v, IFACE_KEYS[k])
    ifaces = doc.get("interface", [])
    if not isinstance(ifaces, list) or not all(isinstance(i, dict) for i in ifaces):
        raise fail(["interface"], "must be an array of tables ([[interface]])")
    cfg = HostConfig(file)
    seen: dict[tuple[str | None, str], int] = {}
    for i, raw in enumerate(ifaces):
        d = {**_backend(fail, ["defaults"], defaults), **_backend(fail, ["interface", i], raw)}
        for k in raw:
            if k not in IFACE_KEYS:
                raise fail(["interface", i, k], f"unknown key (known: {', '.join(sorted(IFACE_KEYS))})")
        for k, v in d.items():
            _check_type(fail, ["interface", i, k], v, IFACE_KEYS[k])
        if "name" not in d:
            raise fail(["interface", i], 'needs name = "IFACE"')
        ic = _interface(fail, i, d)
        if ic.ident in seen:
            raise fail(["interface", i, "name"], f"{ic.label()} is configured twice (also interface[{seen[ic.ident]}])")
        seen[ic.ident] = i
        cfg.interfaces.append(ic)
    return cfg


def _backend(fail: _Fail, path: list[str | int], table: dict[str, Any]) -> dict[str, Any]:
    """`backend` is another name of `qdisc` (what `status` calls it): one of the two per table."""
    if "backend" not in table:
        return table
    if "qdisc" in table:
        raise fail(path + ["backend"], "give qdisc or backend (the same setting), not both")
    t = {k: v for k, v in table.items() if k != "backend"}
    t["qdisc"] = table["backend"]
    return t


def _check_type(fail: _Fail, path: list[str | int], v: object, want: type | tuple[type, ...]) -> None:
    types = want if isinstance(want, tuple) else (want,)
    if isinstance(v, bool) and bool not in types:
        raise fail(path, f"expected {' or '.join(t.__name__ for t in types)}, got a boolean")
    if not isinstance(v, types):
        raise fail(path, f"expected {' or '.join(t.__name__ for t in types)}, got {type(v).__name__} {v!r}")


def _interface(fail: _Fail, i: int, d: dict[str, Any]) -> InterfaceConfig:
    p: list[str | int] = ["interface", i]
    try:
        rate = parse_rate(str(d["rate"])) if "rate" in d else None
    except ValueError as exc:
        raise fail(p + ["rate"], str(exc)) from None
    dscp = d.get("dscp")
    try:
        if isinstance(dscp, list):
            dscp_list = parse_dscp_list(",".join(str(x) for x in dscp))
        else:
            dscp_list = parse_dscp_list(dscp)
    except ValueError as exc:
        raise fail(p + ["dscp"], str(exc)) from None
    keep = d.get("keep_dscp", [])
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in keep):
        raise fail(p + ["keep_dscp"], "expected a list of DSCP numbers 0..63")
    opts = AttachOptions(
        d["name"],
        d.get("netns"),
        d.get("levels", 8),
        d.get("qdisc", "auto"),
        rate,
        dscp_list,
        d.get("default_level"),
        d.get("trust_dscp", False),
        control_level=d.get("control_level", 0),
        keep_dscp=list(keep),
        hook=d.get("hook", "auto"),
        group=d.get("access_group"),
    )
    try:
        opts.validate_static()
    except MfsError as exc:
        key = "netns" if "namespace" in str(exc) else _key_of(str(exc))
        key = "access_group" if key == "group" else key
        raise fail(p + [key], _strip_flag(str(exc))) from None
    specs: list[RuleSpec] = []
    for j, r in enumerate(d.get("rule", [])):
        rp = p + ["rule", j]
        if not isinstance(r, dict):
            raise fail(rp, "must be a table ([[interface.rule]])")
        for k, v in r.items():
            if k not in RULE_KEYS:
                raise fail(rp + [k], f"unknown key (known: {', '.join(sorted(RULE_KEYS))})")
            _check_type(fail, rp + [k], v, RULE_KEYS[k])
        spec = RuleSpec(
            r.get("src"), r.get("dst"), _s(r.get("sport")), _s(r.get("dport")), r.get("proto"), r.get("level"), r.get("stage")
        )
        try:
            spec.record(opts.levels)
        except MfsError as exc:
            raise fail(rp + [_key_of(str(exc), "level")], _strip_flag(str(exc))) from None
        specs.append(spec)

    if specs and opts.trust_dscp:
        raise fail(
            p + ["trust_dscp"],
            "a trust-dscp port (level from the packet's DSCP) does not look at rules: " "remove its rules or trust_dscp",
        )

    if len(specs) > RULES_MAX:
        raise fail(p + ["rule", RULES_MAX], f"{len(specs)} rules: an interface holds at most {RULES_MAX}")
    return InterfaceConfig(opts, specs, opts.group, f"interface[{i}]")


def _s(v: Any) -> str | None:
    return None if v is None else str(v)


def _key_of(msg: str, default: str = "name") -> str:
    m = re.match(r"--([a-z-]+)", msg)
    return m.group(1).replace("-", "_") if m else default


def _strip_flag(msg: str) -> str:
    return re.sub(r"^--([a-z-]+)\s*", lambda m: f"{m.group(1).replace('-', '_')} ", msg)
