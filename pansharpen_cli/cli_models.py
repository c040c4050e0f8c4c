"""CLI commands: `pansharpen models list|info|verify|import` (registered on the main app by :func:`register`).

Nothing heavy at import time: ``pansharpen --help`` and ``pansharpen models --help`` never import
torch; ``list``, ``info`` and ``verify`` only read manifests and hash files; ``import`` needs torch.
"""

# no `from __future__ import annotations`: typer would eval the string annotations at every run (cli.py)

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

models_app = typer.Typer(
    name="models",
    help="The model zoo: list, inspect, verify and import deep-network weights.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # cli.py imports this module, so its error handling is imported when a command runs
    from .cli import handle_errors

    return handle_errors(fn)(*args, **kwargs)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


# -- list ------------------------------------------------------------------------------------------


@models_app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False) -> None:
    """List the installed models: shipped with pansharpen, then the user's (imported, trained, adapted)."""
    _run(_list, as_json)


def _list(as_json: bool) -> None:
    from . import zoo

    entries = zoo.list_models()
    if as_json:
        typer.echo(json.dumps([zoo.describe(e) for e in entries], indent=2))
        return
    if not entries:
        typer.echo(f"no models installed (user store: {zoo.user_store()}); import a checkpoint with "
                   "`pansharpen models import CKPT`")
        return
    cols = ("name", "arch", "bands", "sensor", "ratio", "bits", "input", "licence", "default for", "origin", "size")
    rows = [(e.name, e.arch, str(e.bands), e.sensor, str(e.ratio), str(e.bit_depth), e.input_convention, e.licence,
             " ".join(e.default_for) or "-", zoo.origin_label(e), _mib(e.size)) for e in entries]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    for r in (cols, *rows):
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    typer.echo(f"(user store: {zoo.user_store()}; 'default for': the sensors on which `pansharpen fuse` runs the "
               "model when given neither --method nor --model)")


# -- info ------------------------------------------------------------------------------------------


@models_app.command("info")
def info_cmd(
    name: Annotated[str, typer.Argument(help="Model name, e.g. fusionnet.wv3.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show a model's manifest entry and its architecture (receptive field, tiling constraints)."""
    _run(_info, name, as_json)


def _info(name: str, as_json: bool) -> None:
    from . import zoo

    e = zoo.get_model(name)
    d = zoo.describe(e)
    try:  # architecture facts (imports torch; the manifest alone needs none)
        from .models import resolve_arch

        spec = resolve_arch(e.arch)
        d["architecture"] = {"receptive_field": spec.receptive_field, "size_multiple": spec.size_multiple,
                             "global_context": spec.global_context, "tailor_point": spec.tailor_point,
                             "reference": spec.reference}
    except Exception as exc:  # noqa: BLE001 - info stays useful without the architecture block
        d["architecture"] = {"error": str(exc)}
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    width = max([len(k) for k in d if k != "architecture"] + [len("arch." + k) for k in d["architecture"]])
    for k, v in d.items():
        if k == "architecture":
            for kk, vv in v.items():
                typer.echo(f"{'arch.' + kk:<{width}} {vv}")
        else:
            typer.echo(f"{k:<{width}} {v if isinstance(v, str) else json.dumps(v)}")


# -- verify ----------------------------------------------------------------------------------------


@models_app.command("verify")
def verify_cmd(
    name: Annotated[str | None, typer.Argument(help="One model (default: all).", show_default=False)] = None,
) -> None:
    """Check the size and SHA-256 of model files against their manifests (exit 1 if any fails)."""
    _run(_verify, name)


def _verify(name: str | None) -> None:
    from . import zoo
    from .errors import ModelError

    entries = [zoo.get_model(name)] if name else zoo.list_models()
    if not entries:
        typer.echo("no models installed; nothing to verify")
        return
    bad: list[str] = []
    for e in entries:
        try:
            zoo.verify_model(e)
        except ModelError as exc:
            bad.append(e.name)
            typer.echo(f"FAILED {e.name}: {exc.problem}")
        else:
            typer.echo(f"ok     {e.name}  sha256 {e.sha256[:16]}...  {_mib(e.size)}  ({e.origin})")
    if bad:
        raise ModelError(f"{len(bad)} of {len(entries)} model(s) failed verification: {', '.join(bad)}",
                         fix="re-import them (`pansharpen models import --overwrite`) or reinstall pansharpen")


# -- import ----------------------------------------------------------------------------------------


@models_app.command("import")
def import_cmd(
    ckpt: Annotated[Path, typer.Argument(help="Checkpoint: .pth/.pt/.ckpt (read with weights_only=True) or "
                                         ".safetensors.", show_default=False)],
    arch: Annotated[str | None, typer.Option("--arch", help="Architecture (default: detected from the state "
                                             "dict).")] = None,
    sensor: Annotated[str | None, typer.Option("--sensor", "-s", help="Sensor the model is for (default: from "
                                               "the folder or file name, e.g. WV3/).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name arch.tag (default: arch.sensor or "
                                             "arch.<folder name>).")] = None,
    bit_depth: Annotated[int | None, typer.Option("--bit-depth", help="Bit depth of the training data "
                                                  "(default 11); the scale is 2^N-1.")] = None,
    ratio: Annotated[int | None, typer.Option(help="PAN/MS ratio the model was trained for (default: the "
                                              "sensor's, else the architecture's).")] = None,
    scale: Annotated[float | None, typer.Option(help="Normalisation divisor, if not 2^bit_depth-1.")] = None,
    licence: Annotated[str | None, typer.Option("--licence", help="Licence of the weights (SPDX id).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a user model of the same name.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new manifest entry as JSON.")] = False,
) -> None:
    """Import a checkpoint into the user store as safetensors, with a verified manifest entry."""
    _run(_import, ckpt, arch=arch, sensor=sensor, name=name, bit_depth=bit_depth, ratio=ratio, scale=scale,
         licence=licence, overwrite=overwrite, as_json=as_json)


def _import(ckpt: Path, *, as_json: bool, **kw: Any) -> None:
    from . import zoo

    e = zoo.import_checkpoint(ckpt, **kw)
    if as_json:
        typer.echo(json.dumps(zoo.describe(e), indent=2))
        return
    typer.echo(f"imported {e.name}: {e.arch}, {e.bands} bands, sensor {e.sensor}, ratio {e.ratio}, "
               f"{e.bit_depth}-bit (scale {e.scale:g}), input {e.input_convention}")
    typer.echo(f"  -> {e.location} ({_mib(e.size)}, sha256 {e.sha256})")
    typer.echo(f"  run it with: pansharpen fuse --model {e.name} --pan PAN.tif --ms MS.tif -o OUT.tif")


def register(app: typer.Typer) -> None:
    """Add this module's commands to app."""
    app.add_typer(models_app, name="models")
