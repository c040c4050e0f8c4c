"""CLI commands: `pansharpen train` (registered on the main app by :func:`register`).

A thin layer over :mod:`pansharpen_cli.training`; heavy modules (torch, rasterio, h5py) are imported
inside the command so that ``pansharpen --help`` stays fast.
"""

# no `from __future__ import annotations`: typer would eval the string annotations at every run (cli.py)

import json
import math
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

_HELP = (
    "Train a network on reduced-resolution pairs (Wald's protocol) and save it as a model.\n\n"
    "Data (one source): --scenes PAN.tif,MS.tif pairs (several MS files = single-band files in band order; a "
    "Landsat folder/MTL or a manifest resolvable like `fuse SCENE` also works; more pairs may follow --scenes as "
    "extra arguments; nodata pixels never enter a training patch), --h5 a PanCollection file (keys gt, ms, lms, "
    "pan), or --mat-dir an NBU-style folder (MS_256/*.mat + PAN_1024/*.mat).\n\n"
    "-o NAME writes NAME.safetensors, NAME.json (its manifest entry) and NAME.ckpt (the checkpoint, rewritten "
    "after every epoch; --resume it to continue) in NAME's folder, and adds the model to the user store "
    "(`pansharpen models list`) unless --no-register. NAME is arch.tag, e.g. runs/fusionnet.mine (a NAME without "
    "a dot gets the architecture prefixed)."
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    app.command("train", help=_HELP, no_args_is_help=True)(train_cmd)


def train_cmd(
    arch: Annotated[str, typer.Option("--arch", help="Architecture: fusionnet, pnn, pannet, dicnn, msdcnn, drpnn, "
                                      "premix, bwnet_fusionnet, bwnet_lagconv, bwnet_lgpnet (the bwnet_* and "
                                      "pannet need ratio 4).", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model name (arch.tag), optionally in a folder.",
                                      show_default=False)],
    sensor: Annotated[str, typer.Option("--sensor", "-s", help="Sensor preset (MTF gains, bit depth, ratio, band "
                                        "names; see `pansharpen sensors`), or generic.", show_default=False)],
    scenes: Annotated[list[str] | None, typer.Option("--scenes", help="PAN.tif,MS.tif pair or product path "
                                                     "(repeatable).")] = None,
    more_scenes: Annotated[list[str] | None, typer.Argument(help="More --scenes pairs.", show_default=False,
                                                            metavar="PAIRS")] = None,
    h5: Annotated[Path | None, typer.Option("--h5", help="PanCollection .h5 file.")] = None,
    mat_dir: Annotated[Path | None, typer.Option("--mat-dir", help="NBU-style folder of .mat files.")] = None,
    ratio: Annotated[int | None, typer.Option("--ratio", help="PAN/MS ratio (default: the data's, else the "
                                              "sensor's).")] = None,
    patch: Annotated[int, typer.Option("--patch", help="Training patch size in input-grid pixels.")] = 32,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs.")] = 10,
    batch: Annotated[int, typer.Option("--batch", help="Patches per step.")] = 16,
    steps_per_epoch: Annotated[int | None, typer.Option("--steps-per-epoch", help="Steps per epoch (default: "
                                                        "one pass over the patch grid).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (cosine decay to 1e-5).")] = 1e-3,
    val_split: Annotated[float, typer.Option("--val-split", help="Fraction held out for validation (last rows "
                                             "of each scene / last samples or files).")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, data and threads: same "
                                      "weights).")] = 0,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue from a checkpoint (.ckpt) of the "
                                                "same run.")] = None,
    bands: Annotated[str | None, typer.Option("--bands", help="MS bands of per-band products, e.g. 2,3,4,5.")]
    = None,
    bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="Radiometric bit depth (default: the "
                                                  "sensor's).")] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="Normalisation divisor (default 2^bit_depth-1).")]
    = None,
    gain_jitter: Annotated[float, typer.Option("--gain-jitter", help="Random radiometric gain in "
                                               "[1/(1+g), 1+g] per patch (0: off).")] = 0.0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads (default: torch's).")] = None,
    register_model: Annotated[bool, typer.Option("--register/--no-register", help="Import the result into the "
                                                 "user model store.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest entry as JSON on stdout.")] = False,
) -> None:
    from .cli import handle_errors

    handle_errors(_train)(
        arch=arch, out=out, sensor=sensor, scenes=[*(scenes or []), *(more_scenes or [])],
        extra_given=bool(more_scenes), h5=h5, mat_dir=mat_dir, ratio=ratio, patch=patch, epochs=epochs,
        batch=batch, steps_per_epoch=steps_per_epoch, lr=lr, val_split=val_split, seed=seed, resume=resume,
        bands=bands, bit_depth=bit_depth, scale=scale, gain_jitter=gain_jitter, threads=threads,
        register_model=register_model, overwrite=overwrite, quiet=quiet, as_json=as_json,
    )


_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*\.[a-z0-9][a-z0-9_.-]*$")


def output_paths(out: Path, arch: str) -> tuple[str, Path]:
    """``(model name, folder)`` from ``-o``: ``runs/fusionnet.mine`` -> ``("fusionnet.mine", runs)``."""
    from .errors import UsageError

    n = out.name
    for suffix in (".safetensors", ".json", ".ckpt"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    n = n.strip().lower()
    if "." not in n:
        n = f"{arch}.{n}"
    if not _NAME_RE.match(n) or n.split(".", 1)[0] != arch:
        raise UsageError(f"invalid model name '{out.name}'",
                         fix=f"use {arch}.TAG with lowercase letters, digits and . _ - (e.g. -o {arch}.mine)")
    return n, out.parent


def _gains_for(sensor: Any, generic: bool) -> Callable[[int], list[float]]:
    from .sensors import GENERIC_MS_GNYQ

    def gains(n: int) -> list[float]:
        if generic:
            return [GENERIC_MS_GNYQ] * n
        return list(sensor.subset(n).gnyq)

    return gains


def _progress(quiet: bool, err: Any) -> tuple[Callable[[Any], None] | None, Callable[[], None]]:
    if quiet:
        return None, lambda: None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=err, transient=False)
    state: dict[str, Any] = {"task": None}

    def cb(ev: Any) -> None:
        if state["task"] is None:
            prog.start()
            state["task"] = prog.add_task("training", total=ev.epochs * ev.steps, info="",
                                          completed=(ev.epoch - 1) * ev.steps)
        t = state["task"]
        if ev.stage == "step":
            prog.update(t, completed=(ev.epoch - 1) * ev.steps + ev.step,
                        description=f"epoch {ev.epoch}/{ev.epochs}", info=f"loss {ev.loss:.5f}")
        elif ev.stage == "val":
            m = "  ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items())
            prog.console.print(f"epoch {ev.epoch}/{ev.epochs}: loss {ev.loss:.6f}" + (f"  val {m}" if m else ""),
                               highlight=False)

    def close() -> None:
        if state["task"] is not None:
            prog.stop()

    return cb, close


def _train(*, arch: str, out: Path, sensor: str, scenes: Sequence[str], extra_given: bool, h5: Path | None,
           mat_dir: Path | None, ratio: int | None, patch: int, epochs: int, batch: int, steps_per_epoch: int | None,
           lr: float, val_split: float, seed: int, resume: Path | None, bands: str | None, bit_depth: int | None,
           scale: float | None, gain_jitter: float, threads: int | None, register_model: bool, overwrite: bool,
           quiet: bool, as_json: bool) -> None:
    from .cli import err
    from .errors import OutputError, UsageError
    from .models import resolve_arch
    from .sensors import generic_sensor, get_sensor

    spec = resolve_arch(arch)
    given = sum(bool(x) for x in (scenes, h5, mat_dir))
    if given != 1:
        raise UsageError("give exactly one data source: --scenes, --h5 or --mat-dir",
                         fix="see `pansharpen train --help`")
    if extra_given and not scenes:
        raise UsageError("unexpected extra arguments", fix="extra arguments are more --scenes pairs")
    if not 0 <= val_split < 1:
        raise UsageError(f"--val-split {val_split:g} must be in [0, 1)")
    for opt, v in (("--patch", patch), ("--epochs", epochs), ("--batch", batch)):
        if v < 1:
            raise UsageError(f"{opt} must be at least 1")
    if steps_per_epoch is not None and steps_per_epoch < 1:
        raise UsageError("--steps-per-epoch must be at least 1")
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError("--lr must be a positive number")
    if gain_jitter < 0:
        raise UsageError("--gain-jitter must be >= 0")
    name, folder = output_paths(out, spec.name)
    generic = sensor.strip().lower() == "generic"
    sens = None if generic else get_sensor(sensor)
    bits = bit_depth if bit_depth is not None else (sens.bit_depth if sens else 11)
    if not 1 <= bits <= 32:
        raise UsageError(f"--bit-depth {bits} is out of range")
    div = float(scale) if scale is not None else float(2**bits - 1)
    if not (math.isfinite(div) and div > 0):
        raise UsageError("--scale must be a positive number")
    r = ratio if ratio is not None else (sens.ratio if sens and not scenes else None)
    sf, js, ck = (folder / f"{name}{s}" for s in (".safetensors", ".json", ".ckpt"))
    if not folder.is_dir():
        raise OutputError("output folder does not exist", path=folder, fix="create it first")
    if not overwrite and resume is None:
        for p in (sf, js, ck):
            if p.exists():
                raise OutputError("already exists", path=p, fix="pass --overwrite, or --resume it")

    import torch

    from . import training as T

    if threads is not None:
        if threads < 1:
            raise UsageError("--threads must be at least 1")
        torch.set_num_threads(threads)
    gains = _gains_for(sens, generic)
    closer: Any = None
    if scenes:
        train_r, val_r, info = T.scene_regions(scenes, ratio=r, ms_gnyq=gains, scale=div, val_split=val_split,
                                               bands=bands)
        r = int(info["ratio"])
        source: T.RegionPatches | T.H5Patches = T.RegionPatches(train_r, patch, r)
        data_text = "Wald reduced-resolution pairs from " + "; ".join(info["sources"])
    elif h5 is not None:
        src = T.H5Patches(h5, scale=div, patch=patch, val_split=val_split)
        closer = src
        if r is not None and r != src.ratio:
            raise UsageError(f"--ratio {r} but the .h5 data has ratio {src.ratio}", path=h5)
        r = src.ratio
        source, val_r = src, src.val_regions()
        data_text = f"PanCollection file {h5.name} ({len(src)} training samples, divided by {div:g})"
    else:
        assert mat_dir is not None
        if r is None:
            raise UsageError("--ratio is needed with --sensor generic and --mat-dir")
        train_r, val_r = T.mat_dir_regions(mat_dir, ms_gnyq=gains, ratio=r, scale=div, val_split=val_split)
        source = T.RegionPatches(train_r, patch, r)
        data_text = f"NBU-style .mat pairs in {mat_dir} through Wald's protocol"
    n_bands = source.bands
    band_names = [f"Band {i + 1}" for i in range(n_bands)]
    sensor_key = "generic"
    if sens is not None:
        band_names = sens.subset(n_bands).band_names
        sensor_key = sens.key
    elif generic:
        band_names = generic_sensor(n_bands, bits, r).band_names
    cfg = T.TrainConfig(arch=spec.name, bands=n_bands, ratio=int(r), patch=patch, batch=batch, epochs=epochs,
                        steps_per_epoch=steps_per_epoch, lr=lr, seed=seed, gain_jitter=gain_jitter)
    cb, close = _progress(quiet or not err.is_terminal, err)
    if not quiet and not err.is_terminal:
        def cb(ev: Any) -> None:  # plain lines when stderr is not a terminal
            if ev.stage == "val":
                m = "  ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items())
                err.print(f"epoch {ev.epoch}/{ev.epochs}: loss {ev.loss:.6f}" + (f"  val {m}" if m else ""),
                          highlight=False)
    try:
        res = T.train(source, val_r, cfg, progress=cb, checkpoint=ck, resume=resume)
    finally:
        close()
        if closer is not None:
            closer.close()
    last = res.history[-1] if res.history else {}
    quality: dict[str, Any] = {}
    if last.get("val"):
        quality = {"protocol": "reduced-resolution (Wald)", "dataset": f"validation split ({val_split:g})",
                   "metrics": {k: round(v, 4) for k, v in last["val"].items()}}
    # the command as it would be typed again (from the options, not sys.argv: the same under a test
    # runner, a script calling the CLI in-process or a shell)
    src = (["--scenes", *scenes] if scenes else ["--h5", str(h5)] if h5 else ["--mat-dir", str(mat_dir)])
    words = ["pansharpen", "train", "--arch", spec.name, "--sensor", sensor, *src, "-o", str(out)]
    for opt, v in (("--ratio", ratio), ("--bands", bands), ("--bit-depth", bit_depth), ("--scale", scale),
                   ("--steps-per-epoch", steps_per_epoch)):
        if v is not None:
            words += [opt, str(v)]
    words += ["--val-split", f"{val_split:g}", "--gain-jitter", f"{gain_jitter:g}"]
    cmd = " ".join(shlex.quote(str(w)) for w in words)
    recipe = f"{cmd}  (seed {seed}, epochs {epochs}, patch {patch}, batch {batch}, lr {lr:g})"
    entry = T.export_model(res.model, sf, name=name, arch=spec.name, band_names=band_names, sensor=sensor_key,
                           ratio=int(r), bit_depth=bits, scale=div, training_data=data_text, recipe=recipe,
                           quality=quality, licence="unknown",
                           description=f"{spec.name} trained with `pansharpen train`")
    if register_model:
        entry["registered"] = _register(sf, entry, err, overwrite)
    if as_json:
        typer.echo(json.dumps(entry, indent=2))
    else:
        typer.echo(f"{name}: {sf} ({entry['size']} bytes, sha256 {entry['sha256'][:12]}...), {js.name}, {ck.name}")


def _register(sf: Path, entry: dict[str, Any], err: Any, overwrite: bool) -> str | None:
    """Put the trained model into the user store with its whole manifest entry (recipe, training data,
    validation quality: :func:`pansharpen_cli.zoo.register_model`); a refusal is a note, not an error
    (the files in NAME's folder are written either way)."""
    from . import zoo
    from .errors import ModelError

    try:
        e = zoo.register_model(sf, entry, overwrite=overwrite, provenance="trained")
    except ModelError as exc:
        err.print(f"pansharpen: note: not added to the model store: {exc.one_line()}", highlight=False,
                  soft_wrap=True)
        return None
    err.print(f"added {e.name} to the user model store ({zoo.user_store()})", highlight=False)
    return e.name
