"""CLI command: `pansharpen adapt` (registered on the main app by :func:`register`).

A thin layer over :func:`pansharpen_cli.scene_adapt.adapt_for_sensor`: resolves the scenes as
``fuse`` does, adapts a zoo network to a sensor once, registers the result in the user model store,
prints the report on stderr (and as JSON on stdout with ``--json``). Nothing heavy is imported at
module level.
"""

# no `from __future__ import annotations`: typer would eval the string annotations at every run (cli.py)

import json
from pathlib import Path
from typing import Annotated

import typer

_HELP = ("Adapt a network to a sensor once, on patches of one or more of its scenes, and register the result."
         "\n\nThe adapted model (tailor weights or a sparse weight delta, a few KB, with its base model's name and "
         "SHA-256) goes to the user model store as a new model, by default named <model>+<sensor> (e.g. "
         "fusionnet.wv3+wv2); afterwards `pansharpen fuse` runs it by default on scenes of that sensor (--method or "
         "--model still choose another). Nothing is registered when the adaptation does not pass its held-out "
         "do-no-harm check (exit 1).")


def adapt_cmd(
    scenes: Annotated[list[Path] | None, typer.Argument(readable=False, help="Products, as for `fuse` (Landsat folder "
                                                        "or MTL, a PAN or MS file whose partner is found by name, a "
                                                        "manifest).", show_default=False)] = None,
    pan: Annotated[Path | None, typer.Option("--pan", readable=False, help="Single-band PAN GeoTIFF (one scene).")]
    = None,
    ms: Annotated[list[Path] | None, typer.Option("--ms", readable=False, help="MS GeoTIFF, or single-band files in "
                                                  "band order (repeat --ms or separate with commas).")] = None,
    sensor: Annotated[str | None, typer.Option("--sensor", "-s", help="The sensor to adapt to (see `pansharpen "
                                               "sensors`); required.", show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", help="The network to adapt (see `pansharpen models list`); "
                                              "required.", show_default=False)] = None,
    mode: Annotated[str, typer.Option("--mode", help="tailor (a small module before the last layer), swift (the "
                                      "most sensitive 2% of the weights) or full (every weight).")] = "tailor",
    name: Annotated[str | None, typer.Option("--name", help="Name of the new model (arch.tag).",
                                             show_default="<model>+<sensor>")] = None,
    patches: Annotated[int | None, typer.Option("--patches", help="Patches (64 px) over all scenes, a quarter held "
                                                "out (default: 5% of the scenes' windows, 8 to 24).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimisation steps (default: tailor 100, swift/full "
                                              "20).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default: tailor 2e-2, swift 3e-3, full "
                                             "3e-4).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the patch choice, split and initialisation.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a user model of the same name.")] = False,
    bands: Annotated[str | None, typer.Option(help="Landsat bands for the MS, e.g. 2,3,4,5.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.", show_default="cpu")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all available cores).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new model and the report as JSON on stdout.")]
    = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")] = False,
) -> None:
    from .cli import _escape, _resolve_inputs, _split_paths, err
    from .errors import UsageError

    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads {threads} must be at least 1")
        from .runtime import set_threads

        set_threads(threads)
    if sensor is None:
        raise UsageError("--sensor is required", fix="name the sensor to adapt to, e.g. --sensor WV2 "
                         "(see `pansharpen sensors`)")
    if model is None:
        raise UsageError("--model is required", fix="name the network to adapt, e.g. --model fusionnet.wv3 "
                         "(see `pansharpen models list`)")
    if scenes and (pan is not None or _split_paths(ms)):
        raise UsageError("give either SCENE... or --pan/--ms, not both", fix="see `pansharpen adapt --help`")
    from .scene_adapt import SceneInput, adapt_for_sensor, report_lines

    inputs: list[SceneInput] = []
    for sc in scenes or [None]:  # type: ignore[list-item]
        pan_p, ms_p, product_sensor, band_names, source, nodata = _resolve_inputs(sc, pan, ms, None, bands)
        inputs.append(SceneInput(pan=pan_p, ms=ms_p, band_names=band_names, product_nodata=nodata, source=source,
                                 sensor=product_sensor))
    notice = None if quiet else (lambda m: err.print(f"[yellow]note:[/] {_escape(m)}", soft_wrap=True))
    out = adapt_for_sensor(model, sensor, inputs, mode=mode.strip().lower(), name=name, patches=patches, steps=steps,
                           lr=lr, seed=seed, overwrite=overwrite, device=device or "cpu", notice=notice)
    e = out.entry
    if not quiet:
        err.print(_escape("\n".join(report_lines(out.report))), soft_wrap=True)
        err.print(f"registered [bold]{_escape(e.name)}[/] ({_escape(e.base_model)} adapted to {_escape(e.sensor)}, "
                  f"{e.size / 1024:.0f} KiB, sha256 {e.sha256[:16]}...) in {_escape(str(e.root))}; `pansharpen fuse` "
                  f"now runs it by default on {_escape(e.sensor)} scenes", soft_wrap=True)
    if as_json:
        from . import zoo

        typer.echo(json.dumps({"model": zoo.describe(e), "report": out.report}, indent=2, default=str))


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    from .cli import handle_errors

    app.command("adapt", help=_HELP, no_args_is_help=True)(handle_errors(adapt_cmd))
