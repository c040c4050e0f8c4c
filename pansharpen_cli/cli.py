"""The ``pansharpen`` command line: a thin layer over the library.

Only this module imports typer and rich. Library errors become one line on stderr and exit code
2 (usage) or 1 (runtime); Ctrl-C exits 130 and leaves nothing at the destination. Heavy modules
(rasterio, scipy, torch) are imported inside the commands so that ``--help`` starts fast.

No ``from __future__ import annotations`` in the CLI modules: typer would ``eval`` every string
annotation (each ``Annotated[..., typer.Option(...)]``) again at every run, ~40 ms of start-up.
"""

import copy
import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

# numpy's OpenBLAS starts a thread per core at import that busy-waits for work for 2^28 cycles
# (~0.1 s): perf counted it as 48 % of the samples of `import numpy`, 0.13 CPU-s of every run taken
# from the core that reads and compresses. No command needs BLAS threads awake at start; with a
# short spin they sleep until work comes. Set before numpy loads; the user's setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import typer  # noqa: E402

from . import __version__  # noqa: E402

app = typer.Typer(
    name="pansharpen",
    help="Pansharpen real satellite scenes into georeferenced imagery (classical methods and deep networks).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


class _StderrConsole:
    """rich's ``Console(stderr=True)``, created on first use: importing rich costs ~30 ms, which a
    run that prints nothing on stderr (``--quiet``, ``--json``, batch workers) need not pay."""

    _console: Any = None

    def __getattr__(self, name: str) -> Any:
        if _StderrConsole._console is None:
            from rich.console import Console

            _StderrConsole._console = Console(stderr=True, highlight=False)
        return getattr(_StderrConsole._console, name)


def _stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


err = _StderrConsole()


def _fail(message: str, code: int) -> None:
    err.print(f"[bold red]pansharpen: error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map library errors to one line and an exit code; never a traceback for user errors."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import PansharpenError

        try:
            return fn(*args, **kwargs)
        except PansharpenError as e:
            _fail(_escape(e.one_line()), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; no output was written", 130)
        except typer.Exit:
            raise
        except MemoryError:
            _fail("out of memory - use a smaller --tile", 1)
        except Exception as e:  # a bug: one line unless asked for the traceback
            if os.environ.get("PANSHARPEN_DEBUG"):
                raise
            _fail(_escape(f"internal error: {type(e).__name__}: {e} (set PANSHARPEN_DEBUG=1 for a traceback "
                          "and please report it)"), 1)

    return wrapper


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pansharpen {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Pansharpen real satellite scenes into georeferenced imagery."""


# ----------------------------------------------------------------------------------------------
# input resolution shared by fuse / info
# ----------------------------------------------------------------------------------------------


def _split_paths(items: list[Path] | None) -> list[Path]:
    out: list[Path] = []
    for it in items or []:
        out += [Path(s) for s in str(it).split(",") if s]
    return out


def _resolve_inputs(scene: Path | None, pan: Path | None, ms: list[Path] | None, example: str | None,
                    bands: str | None):
    """-> (pan, ms list, sensor key, band names, source text, product nodata)."""
    from .errors import UsageError

    ms_list = _split_paths(ms)
    given = sum(x is not None for x in (scene, example)) + (1 if (pan or ms_list) else 0)
    if given > 1:
        raise UsageError("give either SCENE, --example, or --pan/--ms, not several",
                         fix="see `pansharpen fuse --help`")
    if example:
        from .products import example_scene

        p = example_scene(example)
    elif scene is not None:
        from .products import resolve_scene

        p = resolve_scene(scene, bands=bands)
    else:
        if pan is None or not ms_list:
            raise UsageError("no input given" if pan is None and not ms_list else
                             ("--ms is missing" if pan is not None else "--pan is missing"),
                             fix="pass SCENE, or --pan PAN.tif --ms MS.tif (or --example landsat8)")
        return pan, ms_list, None, None, None, None
    return p.pan, list(p.ms), p.sensor, p.band_names, p.source, p.nodata


# ----------------------------------------------------------------------------------------------
# fuse
# ----------------------------------------------------------------------------------------------


def _progress_ui(quiet: bool):
    """A callback drawing a rich progress bar on stderr (tiles, Mpx/s, ETA)."""
    if quiet:
        return None, None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=err, transient=False)
    state: dict[str, Any] = {"task": None, "pixels": 0}

    def cb(ev) -> None:
        if ev.stage == "stats" and ev.done == 0:
            prog.start()
            state["stats"] = prog.add_task("scene statistics", total=1, rate="")
        elif ev.stage == "stats":
            prog.update(state["stats"], completed=1)
        elif ev.stage == "tiles":
            if state["task"] is None:
                state["task"] = prog.add_task("fusing tiles", total=ev.total, rate="")
            state["pixels"] += ev.pixels
            task = prog.tasks[state["task"]]
            el = task.elapsed or 1e-9
            prog.update(state["task"], completed=ev.done, rate=f"{state['pixels'] / el / 1e6:.1f} Mpx/s")
        elif ev.stage == "finalize":
            state["final"] = prog.add_task("writing output", total=1, rate="")

    def close() -> None:
        if "final" in state:
            prog.update(state["final"], completed=1)
        prog.stop()

    return cb, close


@app.command()
@handle_errors
def fuse(
    scene: Annotated[Path | None, typer.Argument(
        readable=False, show_default=False,
        help="A product: Landsat folder or MTL file, a PAN or MS file whose partner is found by name, "
             "or a manifest (.toml/.json).")] = None,
    pan: Annotated[Path | None, typer.Option("--pan", readable=False, help="Single-band PAN GeoTIFF.")] = None,
    ms: Annotated[list[Path] | None, typer.Option(
        "--ms", readable=False,
        help="MS GeoTIFF, or single-band files in band order (repeat --ms or separate with commas).")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Output GeoTIFF/COG.")] = None,
    method: Annotated[str | None, typer.Option(
        "--method", "-m", help="Fusion method (see `pansharpen methods`). Without --method and --model: the shipped "
        "model that is the default for the scene's sensor and bands (`pansharpen models list`, 'default for'), "
        "else bdsd-pc.", show_default="auto")] = None,
    sensor: Annotated[str | None, typer.Option("--sensor", "-s", help="Sensor preset (see `pansharpen sensors`).")]
    = None,
    tile: Annotated[int, typer.Option(help="Tile size in PAN pixels.")] = 512,
    overlap: Annotated[int | None, typer.Option(help="Pixels shared and cross-faded by neighbouring tiles, on top "
                                                "of the method's receptive-field context (which is always "
                                                "read and cropped). Default: 2x the receptive field.")] = None,
    extent: Annotated[str, typer.Option(help="Output footprint: intersection, union or pan.")] = "intersection",
    bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="Radiometric bit depth (e.g. 11); "
                                                  "unsigned outputs are clamped to [0, 2^N-1].")] = None,
    nodata: Annotated[float | None, typer.Option(help="Nodata value for inputs that declare none, and for the "
                                                 "output.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Output data type (default: the MS data type).")] = None,
    of: Annotated[str, typer.Option("--of", help="Output format: GTiff or COG.")] = "GTiff",
    co: Annotated[list[str] | None, typer.Option("--co", help="GDAL creation option KEY=VALUE (repeatable).")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notices on stderr.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")] = False,
    example: Annotated[str | None, typer.Option("--example", help="Use a bundled example scene (landsat8).")]
    = None,
    ratio: Annotated[float | None, typer.Option(help="PAN/MS resolution ratio, for inputs without georeferencing "
                                                "(grids assumed corner-aligned).")] = None,
    weights: Annotated[str | None, typer.Option(help="wbrovey band weights, comma-separated.")] = None,
    resampling: Annotated[str | None, typer.Option(help="MS interpolation: 23tap (the toolbox's) or cubic "
                                                   "(GDAL's). Default: the method's (wbrovey: cubic, others: "
                                                   "23tap).")] = None,
    bands: Annotated[str | None, typer.Option(help="Landsat bands for the MS, e.g. 2,3,4,5.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Deep network from the model zoo (see `pansharpen "
                                              "models list`), instead of --method.")] = None,
    device: Annotated[str | None, typer.Option(help="For --model: auto, cpu or cuda.", show_default="auto")]
    = None,
    precision: Annotated[str | None, typer.Option(help="For --model: fp32, bf16 (CPUs with bf16 support, GPUs) "
                                                  "or fp16 (CUDA only).", show_default="fp32")] = None,
    batch: Annotated[int | None, typer.Option(help="For --model: tiles per forward pass (default: 1 on the CPU, "
                                              "from free GPU memory on CUDA).", show_default="auto")]
    = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for the network (torch), GDAL decoding and "
                                                "compression, and BLAS (default: all available cores).")] = None,
    adapt: Annotated[str | None, typer.Option(
        "--adapt", help="For a network: adapt it to this scene first, once (never per tile), without reference: "
        "tailor (a small module before the last layer, about a second on a CPU), swift (the most sensitive 2% of "
        "the weights) or full (every weight; slow). The original network is kept when the held-out check finds "
        "no gain; a report goes to stderr, --json and the output's tags.")] = None,
    adapt_steps: Annotated[int | None, typer.Option("--adapt-steps", help="For --adapt: optimisation steps "
                                                    "(default: tailor 100, swift/full 20).")] = None,
    adapt_patches: Annotated[int | None, typer.Option("--adapt-patches", help="For --adapt: patches (64 px) to "
                                                      "adapt on, a quarter held out (default: 5% of the scene's "
                                                      "windows, 8 to 12).")] = None,
    adapt_lr: Annotated[float | None, typer.Option("--adapt-lr", help="For --adapt: learning rate (default: "
                                                   "tailor 2e-2, swift 3e-3, full 3e-4).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="For --adapt: seed of the patch choice, split and "
                                             "initialisation; the same seed gives the same output.",
                                             show_default="0")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", readable=False, help="For --model: apply a saved "
                                                 "adapter file (.safetensors) instead of adapting.")] = None,
) -> None:
    """Pansharpen a PAN/MS pair (or a product) into a georeferenced GeoTIFF or COG."""
    from .errors import UsageError

    if threads is not None:  # before numpy/scipy/torch load their thread pools
        if threads < 1:
            raise UsageError(f"--threads {threads} must be at least 1")
        from .runtime import set_threads

        set_threads(threads)
    from .pipeline import FuseRequest, plan_fuse
    from .pipeline import fuse as run_fuse
    from .raster import parse_creation_options

    pan_p, ms_p, product_sensor, band_names, source, product_nodata = _resolve_inputs(scene, pan, ms, example, bands)
    if out is None and not dry_run:
        raise UsageError("no output file given", fix="pass -o OUT.tif")
    method_options: dict[str, Any] = {}
    if weights:
        try:
            method_options["weights"] = [float(x) for x in weights.split(",")]
        except ValueError:
            raise UsageError(f"--weights '{weights}' is not a list of numbers", fix="e.g. --weights 0.2,0.3,0.5") \
                from None
    notice = None if quiet else (lambda m: err.print(f"[yellow]note:[/] {_escape(m)}", soft_wrap=True))
    req = FuseRequest(pan=pan_p, ms=ms_p, out=out, method="wbrovey", method_options=method_options,
                      sensor=sensor or product_sensor, band_names=band_names, tile=tile, overlap=overlap,
                      extent=extent, bit_depth=bit_depth, nodata=nodata, dtype=dtype, fmt=of,
                      creation_options=parse_creation_options(co or []), overwrite=overwrite, ratio=ratio,
                      product_nodata=product_nodata, source=source, resampling=resampling)
    if method is None and model is None and method_options:
        method = "wbrovey"  # --weights are wbrovey's band weights: the user means wbrovey
    adapt_opts = _adapt_options(adapt, adapt_steps, adapt_patches, adapt_lr, seed, adapter)
    choice: dict[str, Any]
    if method is None and model is None:
        default = _default_choice(req, band_names)
        adapt_given = _adapt_flags(adapt_opts)
        if default.kind == "method" and (device is not None or precision is not None or batch is not None
                                         or adapt_given):
            given = ", ".join([f"--{k}" for k, v in (("device", device), ("precision", precision), ("batch", batch))
                               if v is not None] + adapt_given)
            raise UsageError(f"{given}: no shipped model is a default for this scene (the default is "
                             f"{default.name}, a classical method)", fix="pass --model NAME (see `pansharpen "
                             "models list`), or drop the network options")
        if default.kind == "model":
            model = default.name
        else:
            method = default.name
        choice = default.to_dict()
        if notice:
            notice(default.notice())
    else:
        choice = {"name": model or method, "kind": "model" if model else "method",
                  "source": "--model" if model else "--method", "reason": "given on the command line"}
    req.method = _fuse_method(method, model, device, precision, batch, method_options, notice, threads, adapt_opts)
    if dry_run:
        plan = plan_fuse(req)
        if hasattr(plan.method, "check_scene"):  # a zoo network: do its bands and ratio fit the scene?
            plan.method.check_scene(plan.bands, plan.alignment.cols.ratio)
        d = {**plan.to_dict(), "method_choice": choice}
        if as_json:
            typer.echo(json.dumps(d, indent=2, default=str))
        else:
            _print_plan(d)
        return
    cb, close = _progress_ui(quiet or not err.is_terminal and not os.environ.get("PANSHARPEN_PROGRESS"))
    try:
        summary = run_fuse(req, progress=cb, notice=notice)
    finally:
        if close:
            close()
    summary["method_choice"] = choice
    adapt_report = getattr(req.method, "adapt_report", None)
    if adapt_report is not None:
        summary["adaptation"] = adapt_report
        if not quiet:
            from .scene_adapt import report_lines

            err.print(_escape("\n".join(report_lines(adapt_report))), soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    elif not quiet:
        err.print(f"wrote [bold]{_escape(str(out))}[/] ({summary['grid']['width']}x{summary['grid']['height']}, "
                  f"{len(summary['bands'])} bands, {summary['dtype']}) with {_escape(str(choice['name']))} in "
                  f"{summary['seconds']:.1f} s ({summary['mpx_per_s']} Mpx/s)")


def _default_choice(req: Any, band_names: Any) -> Any:
    """What `fuse` runs without --method/--model (:func:`pansharpen_cli.methods.default_choice`), from the
    scene's headers: sensor (option, product or tags), band count, PAN/MS ratio, product band names."""
    import dataclasses

    from .pipeline import default_choice_for

    return default_choice_for(dataclasses.replace(req, band_names=band_names))


def _fuse_method(method: str | None, model: str | None, device: str | None, precision: str | None,
                 batch: int | None, method_options: dict[str, Any], notice: Callable[[str], None] | None,
                 threads: int | None = None, adapt_opts: dict[str, Any] | None = None) -> Any:
    """The method for `fuse`: a classical name, or a zoo network built here (torch only for --model)."""
    from . import zoo
    from .errors import UsageError
    from .methods import HIDDEN, METHODS

    if model is not None and method is not None:
        raise UsageError("--model and --method are mutually exclusive",
                         fix="use --method for a classical method or --model for a deep network")
    name = model if model is not None else (method or "wbrovey")
    net_opts = {k: v for k, v in (("device", device), ("precision", precision), ("batch", batch)) if v is not None}
    if model is None and (name.strip().lower() in {**METHODS, **HIDDEN} or not zoo.has_model(name)):
        flags = [f"--{k}" for k in net_opts] + _adapt_flags(adapt_opts or {})
        if flags:
            verb = "applies" if len(flags) == 1 else "apply"
            raise UsageError(", ".join(flags) + f" only {verb} to deep models, not to '{name}'",
                             fix="pass --model NAME (see `pansharpen models list`)")
        return name  # a classical method (an unknown name is reported by get_method)
    if method_options:
        raise UsageError("--weights sets wbrovey band weights; it does not apply to deep models",
                         fix="drop --weights (the network's weights are chosen by --model)")
    entry = zoo.get_model(name)  # unknown --model: one line listing the installed models
    from .methods.network import NetworkMethod

    return NetworkMethod(entry, notify=notice, threads=threads, **net_opts, **(adapt_opts or {}))


#: `fuse` adaptation options: NetworkMethod keyword -> command-line flag
_ADAPT_FLAGS = {"adapt": "--adapt", "adapt_steps": "--adapt-steps", "adapt_patches": "--adapt-patches",
                "adapt_lr": "--adapt-lr", "adapt_seed": "--seed", "adapter": "--adapter"}


def _adapt_flags(opts: dict[str, Any]) -> list[str]:
    return [_ADAPT_FLAGS[k] for k in _ADAPT_FLAGS if k in opts]


def _adapt_options(adapt: str | None, steps: int | None, patches: int | None, lr: float | None, seed: int | None,
                   adapter: Path | None) -> dict[str, Any]:
    """`fuse`'s adaptation options as NetworkMethod keywords (only those given); usage errors for
    options that need --adapt without it."""
    from .errors import UsageError

    opts = {k: v for k, v in (("adapt", adapt), ("adapt_steps", steps), ("adapt_patches", patches),
                              ("adapt_lr", lr), ("adapt_seed", seed), ("adapter", adapter)) if v is not None}
    if adapt is None:
        need = [_ADAPT_FLAGS[k] for k in ("adapt_steps", "adapt_patches", "adapt_lr", "adapt_seed") if k in opts]
        if need:
            raise UsageError(f"{', '.join(need)} only {'applies' if len(need) == 1 else 'apply'} with --adapt",
                             fix="add --adapt tailor (or swift, full)")
    return opts


def _print_plan(d: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="pansharpen fuse --dry-run (nothing written)", show_header=False)
    t.add_row("PAN", str(d["pan"]))
    t.add_row("MS", ", ".join(d["ms"]))
    if d.get("source"):
        t.add_row("resolved from", d["source"])
    t.add_row("output", str(d["out"]))
    g = d["grid"]
    t.add_row("grid", f"{g['width']} x {g['height']} px, {g['crs']}, ratio {g['ratio'][0]:g}, extent {g['extent']}")
    t.add_row("transform", ", ".join(f"{v:g}" for v in g["transform"]))
    t.add_row("method", json.dumps(d["method"]))
    if d.get("method_choice", {}).get("source") == "default":
        t.add_row("chosen because", d["method_choice"]["reason"])
    t.add_row("sensor / bands", f"{d['sensor']}: {', '.join(d['bands'])}")
    t.add_row("radiometry", f"{d['dtype']}, {d['bit_depth']}-bit ({d['bit_depth_source']}), nodata {d['nodata']}")
    tl = d["tiles"]
    t.add_row("tiles", f"{tl['count']} of {tl['tile']} px, overlap {tl['overlap']}, context {tl['context']}")
    t.add_row("memory estimate", f"{d['memory_estimate_mib']} MiB")
    for n in d["notices"]:
        t.add_row("note", n)
    _stdout_console().print(t)


# ----------------------------------------------------------------------------------------------
# info / sensors / methods
# ----------------------------------------------------------------------------------------------


@app.command()
@handle_errors
def info(
    scene: Annotated[Path | None, typer.Argument(readable=False, help="A product, as for `fuse`.",
                                                 show_default=False)] = None,
    pan: Annotated[Path | None, typer.Option("--pan", readable=False, help="Single-band PAN GeoTIFF.")] = None,
    ms: Annotated[list[Path] | None, typer.Option("--ms", readable=False, help="MS GeoTIFF(s).")] = None,
    example: Annotated[str | None, typer.Option("--example", help="A bundled example scene.")] = None,
    ratio: Annotated[float | None, typer.Option(help="Ratio for inputs without georeferencing.")] = None,
    bands: Annotated[str | None, typer.Option(help="Landsat bands for the MS, e.g. 2,3,4,5.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Report how a PAN/MS pair lines up: ratio, offsets, overlap, CRS, dtypes, nodata, bit depth."""
    from .pipeline import info as run_info

    pan_p, ms_p, sensor, band_names, source, _ = _resolve_inputs(scene, pan, ms, example, bands)
    d = run_info(pan_p, ms_p, ratio=ratio)
    d["sensor"] = sensor
    d["band_names"] = list(band_names) if band_names else None
    d["source"] = source
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    from rich.table import Table

    t = Table(title="PAN/MS alignment", show_header=False)
    for k, v in d.items():
        t.add_row(k, json.dumps(v, default=str) if not isinstance(v, str) else v)
    _stdout_console().print(t)


@app.command()
@handle_errors
def sensors(as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False) -> None:
    """List the sensor presets: bands, bit depth, ratio, MTF gains at Nyquist."""
    from .sensors import SENSORS

    rows = [{"key": s.key, "name": s.name, "bands": s.band_names, "bit_depth": s.bit_depth, "ratio": s.ratio,
             "ms_gnyq": s.gnyq, "pan_gnyq": s.pan_gnyq, "pan_weights": s.pan_weights, "notes": s.notes}
            for s in SENSORS.values()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    t = Table(title="sensor presets")
    for c in ("key", "name", "bands", "bits", "ratio", "MTF MS @Nyq", "MTF PAN"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["key"], r["name"], " ".join(r["bands"]), str(r["bit_depth"]), str(r["ratio"]),
                  " ".join(f"{g:.3g}" for g in r["ms_gnyq"]), f"{r['pan_gnyq']:.3g}")
    _stdout_console().print(t)


@app.command()
@handle_errors
def methods(as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False) -> None:
    """List the classical fusion methods."""
    from .methods import METHODS

    rows = [{"name": n, "description": c.description} for n, c in sorted(METHODS.items())]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        typer.echo(f"{r['name']:<14} {r['description']}")


def _register_command_modules() -> None:
    # Each command group lives in its own CLI module (they import nothing heavy at module level).
    from . import cli_adapt, cli_batch, cli_eval, cli_models, cli_train

    for mod in (cli_adapt, cli_batch, cli_eval, cli_models, cli_train):
        mod.register(app)


_register_command_modules()


def _app_for(args: list[str]) -> typer.Typer:
    """``app`` with only the command that ``args`` invoke, when the first argument names one.

    typer turns every registered command into a click command before it parses anything (signature,
    options, converters: ~25 ms for the 12 commands); a run needs only its own. Same parsing, help
    and errors for that command (the group, its callback and ``--version`` stay); anything else
    (no command, a top-level option, a mistyped name) gets the whole ``app``."""
    if not args or args[0].startswith("-"):
        return app
    from typer.main import get_command_name

    def name_of(info: Any) -> str | None:
        if info.name:
            return str(info.name)
        callback = getattr(info, "callback", None)
        return get_command_name(callback.__name__) if callback is not None else None

    commands = [c for c in app.registered_commands if name_of(c) == args[0]]
    groups = [g for g in app.registered_groups if (g.name or g.typer_instance.info.name) == args[0]]
    if len(commands) + len(groups) != 1:
        return app
    one = copy.copy(app)
    one.registered_commands, one.registered_groups = commands, groups
    return one


def main() -> None:
    """Console-script entry point: command-line mistakes also come out as one line, exit 2."""
    try:  # typer >= 0.20 vendors its own copy of click
        from typer._click import exceptions as click  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover
        from click import exceptions as click

    try:
        rc = _app_for(sys.argv[1:])(standalone_mode=False)
    except click.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else "", err=True)
        sys.exit(2)
    except click.UsageError as e:
        cmd = e.ctx.command_path if e.ctx else "pansharpen"
        err.print(f"[bold red]pansharpen: error:[/] {_escape(e.format_message())} - see `{cmd} --help`",
                  soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("pansharpen: interrupted")
        sys.exit(130)
    except KeyboardInterrupt:  # Ctrl-C outside a command body
        err.print("pansharpen: interrupted")
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
