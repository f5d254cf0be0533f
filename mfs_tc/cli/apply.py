"""CLI verb of the declarative config: apply [--config F] [--dry-run] [--detach-all] [--watch]."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import MfsError
from .output import emit_json


def apply(
    config: Annotated[Path, typer.Option("--config", "-c", help="Config file")] = Path("/etc/mfs-tc/mfs-tc.toml"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would change, change nothing")] = False,
    detach_all: Annotated[
        bool, typer.Option("--detach-all", help="Detach every interface of the config (and any an earlier apply attached)")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Stay running: re-apply on link events, detach on SIGTERM (the systemd unit)")
    ] = False,
    period: Annotated[float, typer.Option("--period", help="With --watch: full re-apply every PERIOD seconds")] = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Make the host match the config file (idempotent); print the changes (tc commands, rules)."""
    from .. import apply as ap
    from ..config import load
    from ..loader import _require_root

    if sum((dry_run, detach_all, watch)) > 1:
        raise MfsError("use one of --dry-run, --detach-all, --watch")
    if detach_all:
        _require_root("apply --detach-all")
        try:
            cfg = load(config)
        except MfsError:
            if config.exists():
                raise
            cfg = None  # no config any more: still detach what an earlier apply attached
        res = ap.detach_all(cfg, config)
    else:
        cfg = load(config)  # a broken config is an error here, before anything is touched
        if not dry_run:
            _require_root("apply")
        if watch:
            raise typer.Exit(ap.watch(lambda: cfg, period=period))
        res = ap.apply_config(cfg, dry_run=dry_run)
    if json_out:
        emit_json(res.as_dict())
    else:
        ap.print_result(res)
        if not res.changes and not res.errors:
            typer.echo("no changes" if not detach_all else "nothing to detach")
    if res.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
