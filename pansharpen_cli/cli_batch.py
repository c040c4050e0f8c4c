"""CLI command: `pansharpen batch` (registered on the main app by :func:`register`).

A thin layer over :mod:`pansharpen_cli.batch`: parses the options, prints one line per finished
scene and a table at the end on stderr, the report on stdout with ``--json``. Exit codes: 0 every
scene succeeded or was skipped, 1 at least one failed, 2 usage errors (nothing ran), 130 Ctrl-C.
Nothing heavy is imported at module level.
"""

# no `from __future__ import annotations`: typer would eval the string annotations at every run (cli.py)

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

_HELP = """Pansharpen many scenes: a manifest (CSV with a header, or JSON lines .jsonl) or product paths/globs.

Manifest columns: pan, ms (several files separated by ';') or scene (a product, as for `fuse SCENE`),
out (relative to OUTDIR; default <scene stem>_pansharpened.tif), and optional id, sensor, method, model.
Relative paths resolve against the manifest's folder. OUTDIR gets batch-journal.jsonl (for --resume)
and batch-report.json. Exit 0: all scenes ok or skipped; 1: a scene failed; 2: usage error."""


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    app.command("batch", help=_HELP, no_args_is_help=True)(batch)


def batch(
    inputs: Annotated[list[str], typer.Argument(help="MANIFEST (.csv/.jsonl) or product paths/globs (quote globs).",
                                                show_default=False)],
    outdir: Annotated[Path, typer.Option("-o", "--out", "--outdir", help="Output folder (created if missing).",
                                         show_default=False)],
    jobs: Annotated[int | None, typer.Option("--jobs", "-j", help="Local worker processes (threads per worker: "
                                             "cores // jobs). With --scheduler: scenes in flight (default: the "
                                             "cluster's threads).", show_default="1")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="Run on an existing Dask distributed "
                                                  "cluster, e.g. tcp://HOST:8786 (needs the dask extra: "
                                                  "pip install pansharpen\\[dask]; "
                                                  "paths must be visible to the workers).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip scenes the journal records as done (output "
                                         "present, SHA-256 matching); run the rest.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip scenes whose output exists.")]
    = False,
    continue_on_error: Annotated[bool, typer.Option("--continue-on-error", help="Go on after a failed scene "
                                                    "(default: start no new scene after the first failure).")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")] = False,
    method: Annotated[str | None, typer.Option("--method", "-m", help="Fusion method for every scene (a "
                                               "manifest's method/model column wins).",
                                               show_default="as fuse: the scene's default model, else bdsd-pc")]
    = None,
    model: Annotated[str | None, typer.Option("--model", help="Deep network from the model zoo, instead of "
                                              "--method.")] = None,
    sensor: Annotated[str | None, typer.Option("--sensor", "-s", help="Sensor preset (a manifest's sensor "
                                               "column wins).")] = None,
    tile: Annotated[int, typer.Option(help="Tile size in PAN pixels.")] = 512,
    overlap: Annotated[int | None, typer.Option(help="Tile overlap on top of the method's context.")] = None,
    extent: Annotated[str, typer.Option(help="Output footprint: intersection, union or pan.")] = "intersection",
    bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="Radiometric bit depth (e.g. 11).")] = None,
    nodata: Annotated[float | None, typer.Option(help="Nodata for inputs that declare none, and the output.")]
    = None,
    dtype: Annotated[str | None, typer.Option(help="Output data type (default: the MS data type).")] = None,
    of: Annotated[str, typer.Option("--of", help="Output format: GTiff or COG.")] = "GTiff",
    co: Annotated[list[str] | None, typer.Option("--co", help="GDAL creation option KEY=VALUE (repeatable).")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs that exist.")] = False,
    bands: Annotated[str | None, typer.Option(help="Landsat bands for the MS of products, e.g. 2,3,4,5.")] = None,
    ratio: Annotated[float | None, typer.Option(help="PAN/MS ratio for inputs without georeferencing.")] = None,
    adapt: Annotated[str | None, typer.Option("--adapt", help="Adapt each scene's network to that scene first "
                                              "(tailor, swift or full; as `fuse --adapt`). A manifest's adapt "
                                              "column overrides it per scene.")] = None,
) -> None:
    args = dict(locals())
    from .cli import handle_errors

    handle_errors(_batch)(**args)


def _batch(*, inputs: list[str], outdir: Path, jobs: int | None, scheduler: str | None, resume: bool,
           skip_existing: bool, continue_on_error: bool, as_json: bool, quiet: bool, method: str | None,
           model: str | None, sensor: str | None, tile: int, overlap: int | None, extent: str, bit_depth: int | None,
           nodata: float | None, dtype: str | None, of: str, co: list[str] | None, overwrite: bool,
           bands: str | None, ratio: float | None, adapt: str | None) -> None:
    from .batch import BatchConfig, FuseOptions, adapt_mode, plan_batch, run_batch
    from .cli import _escape, _progress_ui, err
    from .raster import parse_creation_options

    opts = FuseOptions(method=method, model=model, sensor=sensor, tile=tile, overlap=overlap, extent=extent,
                       bit_depth=bit_depth, nodata=nodata, dtype=dtype, fmt=of,
                       creation_options=parse_creation_options(co or []), overwrite=overwrite, bands=bands,
                       ratio=ratio, adapt=adapt_mode(adapt) or None)
    config = BatchConfig(inputs=inputs, outdir=outdir, options=opts, jobs=jobs, scheduler=scheduler, resume=resume,
                         skip_existing=skip_existing, continue_on_error=continue_on_error)
    plan = plan_batch(config)
    bars = not quiet and (err.is_terminal or bool(os.environ.get("PANSHARPEN_PROGRESS")))

    def on_event(ev: Any) -> None:
        if quiet:
            return
        if ev.kind == "notice":
            err.print(f"[yellow]note:[/] {_escape(ev.message or '')}")
        elif ev.kind == "start" and bars:
            err.print(f"[{ev.done + 1}/{ev.total}] {_escape(ev.scene or '')}")
        elif ev.kind == "finish":
            r = ev.result or {}
            for n in r.get("notices", []):
                err.print(f"[yellow]note:[/] {_escape(str(ev.scene))}: {_escape(n)}")
            if r["status"] == "ok":
                err.print(f"[{ev.done}/{ev.total}] [green]ok[/] {_escape(str(ev.scene))} "
                          f"({_seconds(r['seconds'])}, {r['mpx_per_s']} Mpx/s)")
            else:
                err.print(f"[{ev.done}/{ev.total}] [bold red]failed[/] {_escape(str(ev.scene))}: "
                          f"{_escape(str(r['error']))}", soft_wrap=True)

    def scene_bar() -> tuple[Any, Any]:
        return _progress_ui(False)

    report = run_batch(config, plan=plan, on_event=on_event, scene_progress=scene_bar if bars else None)
    if not quiet:
        _print_table(report)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    raise typer.Exit(report["exit_code"])


def _seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f} s"


def _print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    from .cli import _escape, err

    t = Table(title="pansharpen batch", title_justify="left")
    for col, kw in (("scene", {}), ("status", {}), ("time", {"justify": "right"}), ("Mpx/s", {"justify": "right"}),
                    ("output / error", {"overflow": "fold"})):
        t.add_column(col, **kw)
    style = {"ok": "green", "failed": "bold red", "skipped": "yellow"}
    for s in report["scenes"]:
        detail = s["error"] if s["status"] == "failed" else (
            f"{s['reason']}: {s['output']}" if s["status"] == "skipped" else s["output"])
        t.add_row(_escape(s["id"]), f"[{style[s['status']]}]{s['status']}[/]", _seconds(s["seconds"]),
                  "-" if s["mpx_per_s"] is None else f"{s['mpx_per_s']:.2f}", _escape(str(detail)))
    err.print(t)
    c = report["counts"]
    err.print(f"{c['total']} scene(s): {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped in "
              f"{report['seconds']:.1f} s; report: {_escape(str(Path(report['outdir']) / 'batch-report.json'))}")
