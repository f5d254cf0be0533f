"""CLI verb: exporter (Prometheus metrics of the attached interfaces)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def exporter(
    listen: Annotated[Optional[str], typer.Option(help="Serve /metrics on ADDR:PORT, e.g. 127.0.0.1:9477 or [::]:9477")] = None,
    textfile: Annotated[Optional[Path], typer.Option(help="Write DIR/mfs_tc.prom for node_exporter's textfile collector")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between textfile rewrites")] = 15.0,
    once: Annotated[bool, typer.Option("--once", help="Write the textfile once and exit")] = False,
) -> None:
    """Prometheus metrics: per-level packets/bytes, classifier events, flows, map pressure."""
    from ..errors import MfsError
    from ..exporter import serve

    if not listen and textfile is None:
        listen = "127.0.0.1:9477"
    if interval <= 0:
        raise MfsError(f"--interval must be positive, got {interval}")
    if once and listen and textfile is None:
        raise MfsError("--once writes the textfile once: give --textfile DIR")
    if listen:
        typer.echo(f"mfs-tc exporter: serving http://{listen}/metrics", err=True)
    try:
        serve(listen, textfile, interval, once)
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("exporter")(exporter)
