"""CLI commands: `pansharpen eval` (registered on the main app by :func:`register`).

A thin layer over :func:`pansharpen_cli.evaluate.evaluate`: it resolves the inputs as ``fuse`` does,
draws the ranking tables on stderr (rich), prints JSON on stdout with ``--json`` and writes the CSV.
Nothing heavy is imported at module level (``pansharpen --help`` stays fast).
"""

# no `from __future__ import annotations`: typer would eval the string annotations at every run (cli.py)

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

_REDUCED_CAPTION = ("ranked by Q2n (higher is better; SAM, ERGAS lower is better). Wald's protocol: inputs degraded "
                    "by the ratio, scored against the original MS")
_FULL_CAPTION = ("ranked by HQNR (higher is better; D_*, R_SAM, R_ERGAS lower is better). HQNR alone rewards blur "
                 "(EXP, with no PAN detail, scores high): read it with D_rho and the reduced-resolution scores")


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [s.strip() for s in str(v).split(",") if s.strip()]
    return out


def _fmt(key: str, v: float | None) -> str:
    if v is None:
        return "-"
    if key in ("SAM", "R_SAM", "ERGAS", "R_ERGAS", "PSNR"):
        return f"{v:.3f}"
    return f"{v:.4f}"


def _print_tables(report: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from .cli import _escape, err
    from .evaluate import FULL_KEYS, REDUCED_KEYS, ranked

    # the full-resolution table has 13 columns: never squeeze the numbers into an 80-column pipe
    con = Console(stderr=True, highlight=False, width=max(err.width, 150))

    st = report["settings"]
    col, row, w, h = st["window"]
    where = f"window {col},{row},{w}x{h} PAN px ({st['window_source']})"
    for protocol, keys, caption in (("reduced", REDUCED_KEYS, _REDUCED_CAPTION), ("full", FULL_KEYS, _FULL_CAPTION)):
        rows = ranked(report, protocol)
        if not rows:
            continue
        extra = (f", cut {st['cut']} px at MS scale" if protocol == "reduced"
                 else f", cut {st['full_cut_pan_px']} px")
        t = Table(title=_escape(f"{protocol} resolution - {report['scene']} - {report['sensor']}, ratio {st['ratio']}, "
                                f"{where}{extra}"),
                  caption=_escape(caption), caption_justify="left", box=box.SIMPLE_HEAD)
        t.add_column("#", justify="right")
        t.add_column("name")
        for k in keys:
            t.add_column(k, justify="right")
        t.add_column("s", justify="right")
        for i, r in enumerate(rows, 1):
            sec = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
            t.add_row(str(i), _escape(r["name"]), *(_fmt(k, r["metrics"].get(k)) for k in keys), sec)
        con.print(t)


def _progress(quiet: bool):
    """(callback, close) drawing a rich progress bar on stderr when it is a terminal."""
    from .cli import err

    if quiet or not (err.is_terminal or os.environ.get("PANSHARPEN_PROGRESS")):
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True)
    state: dict[str, Any] = {}

    def cb(label: str, done: int, total: int) -> None:
        if "task" not in state:
            prog.start()
            state["task"] = prog.add_task("scoring", total=total)
        prog.update(state["task"], completed=done, description=f"scoring {label}")

    return cb, prog.stop


def eval_cmd(
    scene: Annotated[Path | None, typer.Argument(readable=False, help="A product, as for `fuse` (Landsat folder or "
                                                "MTL, a PAN or MS file whose partner is found by name, a manifest).",
                                                show_default=False)] = None,
    pan: Annotated[Path | None, typer.Option("--pan", readable=False, help="Single-band PAN GeoTIFF.")] = None,
    ms: Annotated[list[Path] | None, typer.Option("--ms", readable=False, help="MS GeoTIFF, or single-band files in "
                                                  "band order (repeat --ms or separate with commas).")] = None,
    sensor: Annotated[str | None, typer.Option("--sensor", "-s", help="Sensor preset (MTF gains, bands, bit depth); "
                                               "default: the product's, the files' SENSOR tag, else generic.")] = None,
    methods: Annotated[list[str] | None, typer.Option("--methods", "-m", help="Methods to score, comma-separated "
                                                      "(default: all, unless --models/--fused are given).")] = None,
    models: Annotated[list[str] | None, typer.Option("--models", help="Zoo models to score, comma-separated (see "
                                                     "`pansharpen models list`).")] = None,
    fused: Annotated[list[Path] | None, typer.Option("--fused", readable=False, help="Existing fused file(s) to score "
                                                     "(e.g. from gdal_pansharpen); named by file stem.")] = None,
    protocol: Annotated[str, typer.Option(help="reduced (Wald, with reference), full (no reference) or both.")]
    = "both",
    cut: Annotated[int, typer.Option(help="Border pixels left out of the scores (MS scale for reduced; rounded up "
                                     "to whole MS pixels for full).")] = 21,
    block: Annotated[int, typer.Option(help="Block size of the Q-type indexes.")] = 32,
    window: Annotated[str | None, typer.Option(help="Region to score, COL,ROW,W,H in PAN pixels (snapped to whole "
                                               "MS pixels). Default: the whole scene up to 2048x2048, else an "
                                               "automatic 1024x1024 textured window.")] = None,
    pan_mtf: Annotated[bool, typer.Option("--pan-mtf", help="Low-pass the PAN with its MTF (instead of bicubic) "
                                          "for the reduced-resolution pair and in D_s.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write one row per (name, protocol) to this CSV.")]
    = None,
    quicklook: Annotated[Path | None, typer.Option("--quicklook", help="Write a PNG with PAN, EXP and every "
                                                   "candidate side by side.")] = None,
    zoom: Annotated[bool, typer.Option("--zoom", help="With --quicklook: add a 2x zoom of the window centre.")]
    = False,
    example: Annotated[str | None, typer.Option("--example", help="Use a bundled example scene (landsat8).")] = None,
    ratio: Annotated[float | None, typer.Option(help="PAN/MS ratio, for inputs without georeferencing.")] = None,
    bands: Annotated[str | None, typer.Option(help="Landsat bands for the MS, e.g. 2,3,4,5.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No tables, progress or notes on stderr.")] = False,
) -> None:
    """Score fusion methods, zoo models or fused files on a scene (reduced- and full-resolution protocols)."""
    from .cli import _escape, _resolve_inputs, err
    from .errors import UsageError
    from .evaluate import evaluate, write_csv

    pan_p, ms_p, product_sensor, _, source, product_nodata = _resolve_inputs(scene, pan, ms, example, bands)
    if quicklook is not None and quicklook.suffix.lower() != ".png":
        raise UsageError(f"--quicklook {quicklook} is not a .png file", fix="e.g. --quicklook compare.png")
    if zoom and quicklook is None:
        raise UsageError("--zoom applies to --quicklook", fix="add --quicklook FILE.png")
    for p in [x for x in (csv_path, quicklook) if x is not None]:
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"folder of {p} does not exist", fix=f"create {parent} first")
    cb, close = _progress(quiet)
    try:
        report = evaluate(pan_p, ms_p, sensor=sensor or product_sensor, methods=_split(methods),
                          fused_paths=_split([str(f) for f in fused or []]), protocol=protocol.lower(), cut=cut,
                          block=block, window=window, models=_split(models), progress=cb, ratio=ratio,
                          pan_mtf=pan_mtf, nodata=product_nodata,
                          scene=str(scene) if scene is not None else (f"example {example}" if example else str(pan_p)),
                          quicklook=quicklook, zoom=zoom)
    finally:
        if close:
            close()
    if csv_path is not None:
        write_csv(report, csv_path)
    if not quiet:
        for n in report["settings"]["notes"]:
            err.print(f"[yellow]note:[/] {_escape(n)}")
        _print_tables(report)
        for what, p in (("CSV", csv_path), ("quicklook", report["settings"].get("quicklook"))):
            if p is not None:
                err.print(f"wrote {what} [bold]{_escape(str(p))}[/]")
    if as_json:
        typer.echo(json.dumps(report, indent=2, allow_nan=False))


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    # cli.py imports this module and calls register() once handle_errors exists
    from .cli import handle_errors

    app.command("eval")(handle_errors(eval_cmd))
