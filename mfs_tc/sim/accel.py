"""The simulator's event loop compiled to C by mypyc: the same source, bit-identical results.

The engine's time is Python: ~60 events and ~25 re-allocations a request, each a few dozen
attribute reads and calls. mypyc (the mypy project's compiler for type-annotated Python; the
engine is mypy-strict clean) turns the classes of `engine`, `fluid` and `due` into C structs and
their methods into C functions, with the same arithmetic (IEEE doubles, Python ints), the same
containers and the same calls into the rest of mfs_tc (policies, workload, the numba kernels).

The compiled modules are copies, built into `mfs_tc/sim/_compiled/` (not in git): `build()`
copies the three sources there (their imports of the other modules made absolute, so the
copies share `fabric`, `netutil`, `waterfill`, the policies and the result types with the rest
of the program), records the sources' SHA-256, and compiles the copies. `compiled_engine()`
loads them only while the sources are still the ones they were built from, so an edit to the
engine never runs stale compiled code: it runs the source until the next build.

    .venv/bin/python -m mfs_tc.sim.accel [build] [--force]   # tools/install.sh runs it
    .venv/bin/python -m mfs_tc.sim.accel status

Needs mypy (the `fast` extra, also in `test`), gcc and the Python headers (tools/install.sh
installs them). Without them the simulator runs the modules as written, slower, same results.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
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
OUT_DIR = SIM_DIR / "_compiled"
PACKAGE = "mfs_tc.sim"
OUT_PACKAGE = f"{PACKAGE}._compiled"
# the modules compiled, in import order (a copy imports only earlier ones of these relatively)
COMPILED = ("due", "fluid", "engine")
# bumped when the copying below changes what a copy holds
REWRITE_VERSION = 1


def source_hashes(src: Path = SIM_DIR) -> dict[str, str]:
    """The SHA-256 of each compiled module's source, with the copy rule's version."""
    out = {"rewrite": str(REWRITE_VERSION)}
    for m in COMPILED:
        out[m] = hashlib.sha256((src / f"{m}.py").read_bytes()).hexdigest()
    return out


_FROM_PARENT = re.compile(r"^(\s*)from \.\.(\w)", re.M)
_FROM_SIBLING = re.compile(r"^(\s*)from \.(\w+) import", re.M)
_FROM_PACKAGE = re.compile(r"^(\s*)from \. import ([\w, ]+)$", re.M)


def rewrite(text: str) -> str:
    """A module's source as its copy in `_compiled`: relative imports of modules that are not
    compiled become absolute (`..x` -> `mfs_tc.x`, `.netutil` -> `mfs_tc.sim.netutil`), those of
    compiled siblings stay relative (the copies import each other)."""
    text = _FROM_PARENT.sub(r"\1from mfs_tc.\2", text)

    def sibling(m: re.Match[str]) -> str:
        name = m.group(2)
        return m.group(0) if name in COMPILED else f"{m.group(1)}from {PACKAGE}.{name} import"

    def package(m: re.Match[str]) -> str:
        names = [n.strip() for n in m.group(2).split(",")]
        if any(n in COMPILED for n in names):
            if not all(n in COMPILED for n in names):
                raise MfsError(f"sim.accel: `from . import {m.group(2)}` mixes compiled and other modules")
            return m.group(0)
        return f"{m.group(1)}from {PACKAGE} import {m.group(2)}"

    return _FROM_PACKAGE.sub(package, _FROM_SIBLING.sub(sibling, text))


def _built_hashes(out: Path) -> dict[str, str] | None:
    """What the build in `out` was made from, or None (no build)."""
    init = out / "__init__.py"
    if not init.exists():
        return None
    m = re.search(r"^SOURCE_SHA256 = (\{.*\})$", init.read_text(), re.M)
    if m is None:
        return None
    found: dict[str, str] = {}
    for k, v in re.findall(r"'(\w+)': '(\w+)'", m.group(1)):
        found[k] = v
    return found


def _extensions(mod: str, out: Path) -> list[Path]:
    return sorted(out.glob(f"{mod}.cpython-*.so")) + sorted(out.glob(f"{mod}.*.pyd"))


def status(src: Path = SIM_DIR, out: Path = OUT_DIR) -> str:
    """One line: "compiled", or why the source runs instead (and the command that fixes it)."""
    built = _built_hashes(out)
    if built is None or not all(_extensions(m, out) for m in COMPILED):
        return f"not built (run: {sys.executable} -m mfs_tc.sim.accel build)"
    if built != source_hashes(src):
        return f"stale: the sources changed since the build (run: {sys.executable} -m mfs_tc.sim.accel build)"
    return "compiled"


@functools.cache
def _load() -> ModuleType | str:
    """The compiled engine module, or why not (cached: once a process)."""
    st = status()
    if st != "compiled":
        return st
    try:
        return importlib.import_module(f"{OUT_PACKAGE}.engine")
    except ImportError as exc:  # another Python, a broken build
        return f"does not load ({exc}; rebuild: {sys.executable} -m mfs_tc.sim.accel build --force)"


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
    script_args=["-q", "build_ext", "--inplace", "--build-temp", "{build_dir}"],
)
"""


def build(force: bool = False, quiet: bool = False) -> str:
    """Compile the copies (about a minute); nothing to do where the build is fresh. Returns
    what it did; raises MfsError with the compiler's output when the build fails (the old build,
    if any, is removed first: a failed build leaves the source running, never a stale copy)."""
    hashes = source_hashes()
    if not force and status() == "compiled":
        return "fresh: nothing to build"
    try:
        import mypyc  # noqa: F401  (only to say what is missing)
    except ImportError:
        raise MfsError("mypyc is not installed: pip install 'mfs-tc[fast]' (it comes with mypy)") from None
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir()
    for m in COMPILED:
        (OUT_DIR / f"{m}.py").write_text(rewrite((SIM_DIR / f"{m}.py").read_text()))
    root = SIM_DIR.parent.parent  # the directory holding the mfs_tc package
    with tempfile.TemporaryDirectory(prefix="mfs-sim-build-") as tmp:
        setup = Path(tmp) / "setup.py"
        setup.write_text(_SETUP.format(group=f"{OUT_PACKAGE}.lib", c_dir=f"{tmp}/c", build_dir=f"{tmp}/build"))
        # the package marker last-but-one: a build that fails leaves no SOURCE_SHA256 behind
        (OUT_DIR / "__init__.py").write_text('"""Built by mfs_tc.sim.accel; not in git."""\n')
        paths = [str((OUT_DIR / f"{m}.py").relative_to(root)) for m in COMPILED]
        if not quiet:
            print(f"compiling {', '.join(paths)} with mypyc ...", file=sys.stderr, flush=True)
        r = subprocess.run([sys.executable, str(setup), *paths], cwd=root, capture_output=True, text=True)
        if r.returncode != 0 or not all(_extensions(m, OUT_DIR) for m in COMPILED):
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
