"""The simulator's event loop compiled to C by mypyc: the same source, the same results.

The engine's time is Python: ~60 events and ~25 re-allocations a request, each a few dozen
attribute reads and calls. mypyc (the mypy project's compiler for type-annotated Python; these
modules are mypy-strict clean) turns the classes of the event loop (`engine`, `fluid`, `due`), of
the batch plan and work estimates it asks for at every batch start and layer boundary
(`workload.batching`, `workload.estimate`, `workload.adapt`) and of the decisions it asks for at
every flow start and re-ask (the policies, their tables and work estimates, `model`'s requests
and `entry`'s FlowEntry with its level function) into C structs and their functions into C
functions, with the same arithmetic (IEEE doubles, Python ints), the same containers and the
same calls into the rest of mfs_tc (the fabric, the numba kernels, the result types).

The compiled engine runs the compiled policies: `compiled_policy()` builds, for a policy of the
registry, the compiled class of the same name with an equal configuration (a policy is its
configuration). A policy the registry does not have (a caller's own subclass) runs on the source
engine. The serving library (`mfs_tc.controller`) keeps the modules as written.

The compiled modules are copies, built into `mfs_tc/sim/_compiled/` (not in git): `build()`
copies the sources there (`COMPILED`; their relative imports made absolute, pointing at the
other copies for compiled modules and at mfs_tc itself for the rest, so the copies share
`fabric`, `netutil`, `waterfill`, `layout`, the workload and the result types with the rest
of the program), records the sources' SHA-256, and compiles the copies. `compiled_engine()` loads
them only while the sources are still the ones they were built from, so an edit never runs stale
compiled code: the source runs until the next build.

    .venv/bin/python -m mfs_tc.sim.accel [build] [--force]   # tools/install.sh runs it
    .venv/bin/python -m mfs_tc.sim.accel status

Needs mypy (the `fast` extra, also in `test`), gcc and the Python headers (tools/install.sh
installs them). Without them the simulator runs the modules as written, slower, same results.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

from ..errors import MfsError

SIM_DIR = Path(__file__).resolve().parent
PKG_DIR = SIM_DIR.parent  # mfs_tc/
OUT_DIR = SIM_DIR / "_compiled"
OUT_PACKAGE = "mfs_tc.sim._compiled"
# what makes the build current (tools/install.sh runs it)
BUILD_COMMAND = f"{sys.executable} -m mfs_tc.sim.accel build"
# the modules compiled (under mfs_tc): the event loop and what it calls per batch, layer and flow.
# Their copies sit side by side in OUT_DIR under their last name (unique); a copy imports the
# other compiled modules' copies and every other module of mfs_tc as it is
COMPILED = (
    "sim.due",
    "sim.fluid",
    "sim.engine",
    "workload.batching",
    "workload.estimate",
    "workload.adapt",
    "policy.red",
    "model",
    "entry",
    "policy.base",
    "policy.levels",
    "policy.work",
    "policy.mfs",
    "policy.laxity",
    "policy.baselines",
    "policy.admission",
    "policy.registry",
)
# bumped when the copying below changes what a copy holds
REWRITE_VERSION = 2


def _short(mod: str) -> str:
    return mod.rsplit(".", 1)[-1]


def _source(mod: str, pkg_dir: Path = PKG_DIR) -> Path:
    return pkg_dir.joinpath(*mod.split(".")).with_suffix(".py")


def source_hashes(pkg_dir: Path = PKG_DIR) -> dict[str, str]:
    """The SHA-256 of each compiled module's source, with the copy rule's version."""
    out = {"rewrite": str(REWRITE_VERSION)}
    for m in COMPILED:
        out[_short(m)] = hashlib.sha256(_source(m, pkg_dir).read_bytes()).hexdigest()
    return out


_FROM = re.compile(r"^(\s*)from (\.+)([\w.]*) import (.+)$", re.M)


def rewrite(text: str, module: str) -> str:
    """The source of `module` (e.g. "sim.engine") as its copy in `_compiled`: each relative
    import made absolute, and pointed at the copy where it names a compiled module
    (`from ..workload.batching import x` -> `from mfs_tc.sim._compiled.batching import x`,
    `from .fabric import Link` -> `from mfs_tc.sim.fabric import Link`)."""
    package = ["mfs_tc", *module.split(".")[:-1]]

    def target(dots: str, rest: str) -> str:
        base = package[: len(package) - (len(dots) - 1)]
        return ".".join(base + ([rest] if rest else []))

    def one(m: re.Match[str]) -> str:
        indent, dots, rest, names = m.groups()
        absolute = target(dots, rest)
        if rest:
            mod = absolute.removeprefix("mfs_tc.")
            return f"{indent}from {OUT_PACKAGE + '.' + _short(mod) if mod in COMPILED else absolute} import {names}"
        # `from . import a, b`: modules of that package
        mods = [n.strip() for n in names.split(",")]
        compiled = [f"{absolute.removeprefix('mfs_tc.')}.{n}" in COMPILED for n in mods]
        if any(compiled) and not all(compiled):
            raise MfsError(f"sim.accel: `from {dots} import {names}` in {module} mixes compiled and other modules")
        return f"{indent}from {OUT_PACKAGE if all(compiled) else absolute} import {names}"

    return _FROM.sub(one, text)


def _built_hashes(out: Path) -> dict[str, str] | None:
    """What the build in `out` was made from, or None (no build, or one that did not finish)."""
    init = out / "__init__.py"
    m = re.search(r"^SOURCE_SHA256 = (\{.*\})$", init.read_text(), re.M) if init.exists() else None
    if m is None:
        return None
    found = ast.literal_eval(m.group(1))
    return found if isinstance(found, dict) else None


def _extensions(mod: str, out: Path) -> list[Path]:
    return sorted(out.glob(f"{mod}.cpython-*.so"))


def state(pkg_dir: Path = PKG_DIR, out: Path = OUT_DIR) -> tuple[str, str]:
    """(what the build is: "compiled", "not built" or "stale: why", the command that makes it
    current, or "" when it is)."""
    return _state(source_hashes(pkg_dir), out)


def status(pkg_dir: Path = PKG_DIR, out: Path = OUT_DIR) -> str:
    """One line: "compiled", or why the source runs instead (and the command that fixes it)."""
    what, fix = state(pkg_dir, out)
    return f"{what} (run: {fix})" if fix else what


def _state(hashes: dict[str, str], out: Path) -> tuple[str, str]:
    """state() against the sources' `hashes`."""
    built = _built_hashes(out)
    if built is None or not all(_extensions(_short(m), out) for m in COMPILED):
        return "not built", BUILD_COMMAND
    if built != hashes:
        return "stale: the sources changed since the build", BUILD_COMMAND
    return "compiled", ""


@functools.cache
def _load() -> ModuleType | str:
    """The compiled engine module, or why not (cached: once a process)."""
    st = status()
    if st != "compiled":
        return st
    try:
        return importlib.import_module(f"{OUT_PACKAGE}.engine")
    except ImportError as exc:  # another Python, a broken build
        return f"does not load ({exc}; rebuild: {BUILD_COMMAND} --force)"


def compiled_policy(policy: object, required: bool = False) -> object | None:
    """The compiled copy of `policy` for the compiled engine, which runs the policies compiled
    with it: the registry's class of the same name, built from an equal configuration (a policy
    is its configuration). None for a policy the registry does not have (a subclass of one, or
    a caller's own; `required`: an MfsError instead), which the source engine runs."""
    from ..policy.registry import POLICIES

    name = getattr(policy, "name", "")
    twins = importlib.import_module(f"{OUT_PACKAGE}.registry").POLICIES
    if name not in POLICIES or type(policy) is not POLICIES[name] or name not in twins:
        if required:
            raise MfsError(
                f"the compiled simulator runs the registry's policies (mfs_tc.policy.make_policy), not "
                f"{type(policy).__name__}: use engine='python' or 'auto'"
            )
        return None
    cfg = getattr(policy, "config")  # noqa: B009  (a registry policy has one)
    cls = twins[name]
    twin: object = cls(cls.config_class(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}))
    return twin


def compiled_engine(required: bool = False) -> ModuleType | None:
    """The compiled `engine` module, or None where it is not built from the current sources
    (`required`: an MfsError saying why instead). A stale build is also a warning: it was
    built once, so whoever built it expects the speed."""
    got = _load()
    if isinstance(got, ModuleType):
        return got
    if required:
        raise MfsError(f"the compiled simulator is {got}")
    if got.startswith("stale"):
        warnings.warn(f"the compiled simulator is {got}; running the source", RuntimeWarning, stacklevel=3)
    return None


_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="mfs-tc-sim-compiled",
    ext_modules=mypycify(sys.argv[1:], group_name="{group}", target_dir="{c_dir}", opt_level="3"),
    script_args=["-q", "build_ext", "--inplace", "--build-temp", "{build_dir}", "--build-lib", "{build_dir}/lib"],
)
"""


def build(force: bool = False, quiet: bool = False) -> str:
    """Compile the copies (about a minute); nothing to do where the build is fresh. Returns
    what it did; raises MfsError with the compiler's output when the build fails (the old build,
    if any, is removed first: a failed build leaves the source running, never a stale copy)."""
    if not os.access(SIM_DIR, os.W_OK | os.X_OK):
        raise MfsError(f"cannot write the build into {OUT_DIR}: build as the user who installed mfs-tc")
    hashes = source_hashes()
    if not force and _state(hashes, OUT_DIR)[0] == "compiled":
        return "fresh: nothing to build"
    try:
        import mypyc  # noqa: F401  (only to say what is missing)
    except ImportError:
        raise MfsError("mypyc is not installed: pip install 'mfs-tc[fast]' (it comes with mypy)") from None
    if len({_short(m) for m in COMPILED}) != len(COMPILED):
        raise MfsError("sim.accel: two compiled modules share a name")
    try:
        if OUT_DIR.exists():
            shutil.rmtree(OUT_DIR)
        OUT_DIR.mkdir()
        for m in COMPILED:
            (OUT_DIR / f"{_short(m)}.py").write_text(rewrite(_source(m).read_text(), m))
    except OSError as exc:
        raise MfsError(
            f"cannot write the build into {OUT_DIR} ({exc.strerror}): build as the user who installed mfs-tc"
        ) from None
    root = PKG_DIR.parent  # the directory holding the mfs_tc package
    with tempfile.TemporaryDirectory(prefix="mfs-sim-build-") as tmp:
        setup = Path(tmp) / "setup.py"
        setup.write_text(_SETUP.format(group=f"{OUT_PACKAGE}.lib", c_dir=f"{tmp}/c", build_dir=f"{tmp}/build"))
        # the package marker last-but-one: a build that fails leaves no SOURCE_SHA256 behind
        (OUT_DIR / "__init__.py").write_text('"""Built by mfs_tc.sim.accel; not in git."""\n')
        paths = [str((OUT_DIR / f"{_short(m)}.py").relative_to(root)) for m in COMPILED]
        if not quiet:
            print(f"compiling {', '.join(paths)} with mypyc ...", file=sys.stderr, flush=True)
        r = subprocess.run([sys.executable, str(setup), *paths], cwd=root, capture_output=True, text=True)
        if r.returncode != 0 or not all(_extensions(_short(m), OUT_DIR) for m in COMPILED):
            shutil.rmtree(OUT_DIR, ignore_errors=True)
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-20:])
            raise MfsError(f"the mypyc build failed (the simulator runs its source):\n{tail}")
    (OUT_DIR / "__init__.py").write_text(
        '"""Built by mfs_tc.sim.accel from the sources whose SHA-256 follow; not in git."""\n\n' f"SOURCE_SHA256 = {hashes!r}\n"
    )
    _load.cache_clear()
    return f"built {', '.join(COMPILED)} into {OUT_DIR}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cmd = args[0] if args and not args[0].startswith("-") else "build"
    try:
        if cmd == "status":
            print(status())
            return 0
        if cmd != "build":
            print(f"usage: python -m mfs_tc.sim.accel [build [--force] | status], not {cmd!r}", file=sys.stderr)
            return 2
        print(build(force="--force" in args))
        return 0
    except MfsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
