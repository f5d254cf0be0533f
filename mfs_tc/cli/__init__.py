"""The `mfs-tc` command line. Each verb group lives in its own module and registers itself here.

datapath.py   attach, detach, status, plan, doctor
flows.py      flows, set, gc, policy show
testbed.py    testbed run / report
sim.py        sim run
metrics.py    exporter
rules.py      rule add / list / del
apply.py      apply (declarative config, --watch)
"""

from __future__ import annotations

import sys

import typer

from ..errors import MfsError

app = typer.Typer(
    name="mfs-tc",
    help="MFS multi-stage flow scheduling for LLM serving: tc egress eBPF + strict-priority qdiscs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from . import apply, datapath, flows, metrics, rules, sim, testbed

    for mod in (datapath, flows, rules, apply, metrics, testbed, sim):
        mod.register(app)


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        rc = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
    except MfsError as exc:
        typer.echo(f"mfs-tc: error: {exc}", err=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("mfs-tc: aborted", err=True)
        return 130
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
