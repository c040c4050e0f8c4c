"""Test-time adaptation on real scenes: patches sampled through the engine, ``fuse --adapt`` and
``pansharpen adapt``.

:mod:`pansharpen_cli.adapt` adapts a network from patch arrays; this module gets those patches from
rasters, through the pipeline's :class:`~pansharpen_cli.methods.base.SceneWindows` (the very
inputs the tiles get: PAN, MS interpolated onto the PAN grid, validity, plus the MS at its own
resolution), so that the adaptation sees what inference sees:

* :func:`sample_scene_patches`: a grid of candidate windows (64-pixel cores plus a margin of twice
  the ratio) over the whole canvas, aligned with the MS pixels; on a large scene a regular, strided
  subset of at most :data:`MAX_CANDIDATES` of them is read (a 30k x 30k scene has 200,000
  candidates; reading a hundred small windows costs about 0.2 s); windows touching nodata are
  skipped; the rest are described and a diverse few are chosen
  (:func:`~pansharpen_cli.adapt.select_patches`);
* :class:`~pansharpen_cli.methods.network.NetworkMethod` adapts once per scene in ``fit``
  (``fuse --adapt``) with these;
* :func:`adapt_for_sensor` samples across several scenes, adapts once and registers the adapter in
  the user model store (``pansharpen adapt``); :func:`summarize` and :func:`report_lines` give the
  compact report both commands print.

Nothing here prints; errors are the typed errors of :mod:`pansharpen_cli.errors`.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DataError, ModelError, UsageError
from .tiling import Window

if TYPE_CHECKING:  # pragma: no cover
    from .methods.base import SceneWindows
    from .sensors import Sensor
    from .zoo import ModelEntry

#: core size of the candidate windows (PAN pixels)
PATCH = 64
#: default share of the scene's candidate windows to adapt on, and its bounds
FRACTION = 0.05
MIN_PATCHES = 8
#: default upper bound on the patches of one adaptation: a training step takes a third of the
#: training patches, so its cost grows with their number; 12 (9 trained on, 3 held out) keep a
#: tailor adaptation at about 1 s on 2 CPU cores, ~6 % of the inference of a 4096 x 4096 x 8 scene
#: (docs/adaptation.md, "Timing")
MAX_PATCHES = 12
#: most candidate windows read and described per scene (a strided subset of the grid beyond that):
#: screening one (PAN and MS reads, no interpolation) costs ~1 ms
MAX_CANDIDATES = 128
#: criterion keys shown in the report
CRITERIA = ("D_lambda_K", "D_s", "D_rho", "R_Q2n", "R_ERGAS", "J")


def scene_margin(ratio: int) -> int:
    """Context around each patch core: twice the ratio (whole MS pixels), which covers the trimmed MTF
    support of the losses; the default of :func:`~pansharpen_cli.adapt.sample_patches_from_arrays`,
    with which the evidence of docs/adaptation.md was measured. It can be smaller than the network's
    receptive field (FusionNet: 10): the outer ring of a core (a pixel or two) then sees padding in
    the backbone features during adaptation; a 12-pixel margin would cost 22 % more per step."""
    return 2 * max(1, int(ratio))


def _aligned_offset(windows: SceneWindows, win: int) -> tuple[int, int] | None:
    """Where the first MS-pixel-aligned window of side ``win`` starts (row, col), or None."""
    r = int(windows.ratio)
    if r < 1:
        return None
    for oy in range(r):
        for ox in range(r):
            if windows.lr_aligned(Window(oy, ox, win, win)):
                return oy, ox
    return None


def _strided(n: int, keep: int) -> list[int]:
    """``keep`` indices spread evenly over ``range(n)`` (all when ``keep >= n``)."""
    if keep >= n:
        return list(range(n))
    return sorted({int(round((i + 0.5) * n / keep - 0.5)) for i in range(keep)})


@dataclass
class Sampling:
    """Facts about the patches of one scene (for the report)."""

    #: candidate windows on the whole canvas, read, and usable (no nodata)
    grid: int = 0
    read: int = 0
    usable: int = 0
    chosen: int = 0
    patch: int = PATCH
    margin: int = 0
    phase: str = ""
    ratio: int = 0
    seconds: float = 0.0
    #: why no patch could be taken ("" when some were)
    problem: str = ""
    origins: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid, "read": self.read, "usable": self.usable, "chosen": self.chosen,
                "patch": self.patch, "margin": self.margin, "phase": self.phase, "ratio": self.ratio,
                "seconds": round(self.seconds, 4), **({"problem": self.problem} if self.problem else {})}


def default_patch_count(n_grid: int) -> int:
    """Patches of a scene with ``n_grid`` candidate windows: :data:`FRACTION` of them within
    [:data:`MIN_PATCHES`, :data:`MAX_PATCHES`]."""
    from .adapt import patch_count

    return patch_count(n_grid, FRACTION, MIN_PATCHES, MAX_PATCHES)


def candidate_windows(windows: SceneWindows, *, patch: int = PATCH, margin: int) -> tuple[list[Window], str]:
    """Every candidate window (core ``patch``, ``margin`` context each side) of the canvas, aligned
    with the MS pixels, cores ``patch`` apart; ``([], why)`` when the scene cannot be adapted on."""
    r = int(windows.ratio)
    if r < 2:
        return [], "the PAN/MS ratio is not an integer of at least 2"
    if windows.phase not in ("toolbox", "corner"):
        return [], "the MS pixel centres do not fall on the PAN grid's toolbox or corner phase"
    if patch % r or margin % r:
        raise ValueError(f"patch ({patch}) and margin ({margin}) must be multiples of the ratio {r}")
    win = patch + 2 * margin
    if windows.height < win or windows.width < win:
        return [], f"the scene ({windows.width}x{windows.height}) is smaller than one {win}x{win} patch"
    off = _aligned_offset(windows, win)
    if off is None:
        return [], "no window lines up with whole MS pixels"
    rows = range(off[0], windows.height - win + 1, patch)
    cols = range(off[1], windows.width - win + 1, patch)
    return [Window(y, x, win, win) for y in rows for x in cols], ""


def sample_scene_patches(windows: SceneWindows, *, scale: float, sensor: Sensor | None = None,
                         margin: int | None = None, area_ms: bool = False, n_patches: int | None = None,
                         seed: int = 0, patch: int = PATCH, max_candidates: int = MAX_CANDIDATES,
                         ) -> tuple[list[dict[str, Any]], Sampling]:
    """Patches of a scene for :func:`pansharpen_cli.adapt.adapt`, read through ``windows``.

    Args:
        windows: the scene (the pipeline's engine: ``open_scene(...)[0].windows``).
        scale: the network's normalisation (its manifest ``scale``): patches are divided by it.
        sensor: for the NDVI-like descriptor (red and NIR bands).
        margin: context around each core (a multiple of the ratio; default :func:`scene_margin`).
        area_ms: add ``ms``, the area-decimated ``lms``: what networks taking the low-resolution MS
            get at inference (:class:`~pansharpen_cli.methods.network.NetworkMethod`).
        n_patches: how many to choose; default :func:`default_patch_count` of the whole grid.
        seed: for the selection.
        max_candidates: most windows read (a strided subset of the grid beyond that; at least four
            per chosen patch are read).

    Returns the patch dicts (``pan``, ``lms``, ``ms_lr``, ``valid``, ``margin``, ``origin`` and
    ``ms`` with ``area_ms``) and a :class:`Sampling`. No patch (and ``Sampling.problem`` set) when
    the grids are not aligned on whole MS pixels, the scene is smaller than one window, or every
    candidate touches nodata.
    """
    from .adapt import patch_descriptor, select_patches

    t0 = time.perf_counter()
    r = int(windows.ratio)
    m = scene_margin(r) if margin is None else int(margin)
    info = Sampling(patch=patch, margin=m, phase=windows.phase, ratio=r)
    cands, why = candidate_windows(windows, patch=patch, margin=m) if r >= 2 else ([], "the PAN/MS ratio is not "
                                                                                   "an integer of at least 2")
    info.grid = len(cands)
    if not cands:
        info.problem = why
        info.seconds = time.perf_counter() - t0
        return [], info
    k = default_patch_count(len(cands)) if n_patches is None else int(n_patches)
    keep = max(int(max_candidates), 4 * k)
    if len(cands) > keep:  # a regular subset: rows and columns of the grid, strided
        win = cands[0].height
        rows = sorted({w.row for w in cands})
        cols = sorted({w.col for w in cands})
        fy = math.sqrt(keep * len(rows) / len(cols))
        ny = max(1, min(len(rows), int(fy)))
        nx = max(1, min(len(cols), keep // ny))
        cands = [Window(rows[i], cols[j], win, win) for i in _strided(len(rows), ny) for j in _strided(len(cols), nx)]
    info.read = len(cands)
    red = nir = None
    if sensor is not None:
        common = [b.common for b in sensor.bands]
        red = common.index("red") if "red" in common else None
        nir = common.index("nir") if "nir" in common else None
    inv = np.float32(1.0 / float(scale))
    # screening: PAN and MS at their own resolutions (no interpolation: ~3x cheaper per window);
    # only the chosen windows are read through inputs() below, exactly as their tiles will be
    descs: list[np.ndarray] = []
    ok: list[bool] = []
    for w in cands:
        p, pv = windows.pan(w)
        lr, lrv = windows.ms_lr(w)
        good = bool(pv.all()) and bool(lrv.all()) and bool(np.isfinite(p).all()) and bool(np.isfinite(lr).all())
        ok.append(good)
        if good:
            nb = lr.shape[0]
            descs.append(patch_descriptor(p, lr, red if red is not None and red < nb else None,
                                          nir if nir is not None and nir < nb else None))
        else:
            descs.append(np.zeros(0))
    info.usable = sum(ok)
    if not info.usable:
        info.problem = "every candidate window touches nodata"
        info.seconds = time.perf_counter() - t0
        return [], info
    d = max(len(v) for v in descs)
    desc = np.array([v if len(v) == d else np.zeros(d) for v in descs])
    chosen = select_patches(desc, min(k, info.usable), seed=seed, valid=ok)
    patches: list[dict[str, Any]] = []
    for i in chosen:
        w = cands[i]
        t = windows.inputs(w)
        lr, lr_valid = windows.ms_lr(w)
        if not (bool(t.valid.all()) and bool(np.isfinite(t.ms_up).all()) and bool(np.all(lr_valid))
                and bool(np.isfinite(lr).all())):
            continue
        item: dict[str, Any] = {
            "pan": np.ascontiguousarray(t.pan * inv, dtype=np.float32),
            "lms": np.ascontiguousarray(t.ms_up * inv, dtype=np.float32),
            "ms_lr": np.ascontiguousarray(lr * inv, dtype=np.float32),
            "valid": np.asarray(t.valid, dtype=bool),
            "margin": m,
            "origin": (w.row, w.col),
        }
        if area_ms:
            b, h, wd = item["lms"].shape
            item["ms"] = np.ascontiguousarray(
                item["lms"].reshape(b, h // r, r, wd // r, r).mean(axis=(2, 4), dtype=np.float64), dtype=np.float32)
        patches.append(item)
        info.origins.append((w.row, w.col))
    info.chosen = len(patches)
    if not patches:
        info.problem = "every chosen window touches nodata in the MS"
    info.seconds = time.perf_counter() - t0
    return patches, info


# -- reports ---------------------------------------------------------------------------------------


def _clean(x: Any) -> Any:
    """JSON-safe: non-finite floats become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def summarize(report: Mapping[str, Any], sampling: Sampling | Sequence[Sampling] | None = None,
              *, extra_seconds: float = 0.0) -> dict[str, Any]:
    """The compact adaptation report of ``fuse --json`` and ``pansharpen adapt``: decision and reason,
    settings, patches, seconds, the loss curve and the held-out criterion before and after (D_lambda_K,
    D_s, D_rho, R_Q2n, R_ERGAS, J). JSON-safe."""
    samp = [sampling] if isinstance(sampling, Sampling) else list(sampling or [])
    secs = {k: round(float(v), 4) for k, v in dict(report.get("seconds", {})).items()}
    sampling_s = sum(s.seconds for s in samp) + extra_seconds
    adapt_s = float(secs.pop("total", 0.0))
    crit = dict(report.get("criterion") or {})
    out: dict[str, Any] = {
        "mode": report.get("mode"), "used_adapted": bool(report.get("used_adapted", False)),
        "reason": report.get("reason", ""), "seed": report.get("seed"), "steps": report.get("steps"),
        "best_step": report.get("best_step", 0), "lr": report.get("lr"), "phase": report.get("phase"),
        "patches": {"train": report.get("n_train", 0), "holdout": report.get("n_holdout", 0),
                    "dropped": report.get("n_dropped", 0),
                    "grid": sum(s.grid for s in samp), "read": sum(s.read for s in samp),
                    "usable": sum(s.usable for s in samp)},
        "trainable_parameters": report.get("trainable_parameters"),
        "seconds": {"sampling": round(sampling_s, 4), **secs, "adapt": round(adapt_s, 4),
                    "total": round(sampling_s + adapt_s, 4)},
        "losses": [round(float(s["total"]), 6) for s in report.get("losses", [])],
        "holdout_losses": [dict(s) for s in report.get("holdout_losses", [])],
        "before": {k: crit.get("before", {}).get(k) for k in CRITERIA} if crit.get("before") else {},
        "after": {k: crit.get("after", {}).get(k) for k in CRITERIA} if crit.get("after") else {},
        "decision": dict(report.get("decision") or {}),
    }
    problems = [s.problem for s in samp if s.problem]
    if problems:
        out["sampling_problems"] = problems
    return _clean(out)


def report_lines(s: Mapping[str, Any]) -> list[str]:
    """The report of :func:`summarize` as a few lines for stderr."""
    verdict = "adapted" if s.get("used_adapted") else "not adapted (original model kept)"
    lines = [f"adaptation ({s.get('mode')}, seed {s.get('seed')}): {verdict} - {s.get('reason', '')}"]
    p = s.get("patches", {})
    sec = s.get("seconds", {})
    lines.append(f"  patches: {p.get('train', 0)} train + {p.get('holdout', 0)} held out, chosen among "
                 f"{p.get('usable', 0)} usable of {p.get('read', 0)} read ({p.get('grid', 0)} on the grid); "
                 f"steps {s.get('best_step', 0)}/{s.get('steps', 0)} kept; {sec.get('total', 0.0):.2f} s "
                 f"(sampling {sec.get('sampling', 0.0):.2f}, training {sec.get('train', 0.0):.2f})")
    losses = s.get("losses") or []
    if losses:
        lines.append(f"  loss: {losses[0]:.4g} -> {losses[-1]:.4g} over {len(losses)} steps")
    b, a = s.get("before") or {}, s.get("after") or {}
    if b and a:
        parts = [f"{k} {b[k]:.4f} -> {a[k]:.4f}" for k in ("D_lambda_K", "D_s", "D_rho", "J")
                 if b.get(k) is not None and a.get(k) is not None]
        lines.append("  held-out: " + ", ".join(parts))
    for prob in s.get("sampling_problems", []):
        lines.append(f"  no patches: {prob}")
    return lines


def provenance(s: Mapping[str, Any]) -> dict[str, str]:
    """Provenance entries (output tags ``PANSHARPEN_ADAPT*``) of an adaptation report."""
    b, a = s.get("before") or {}, s.get("after") or {}
    crit = ";".join(f"{k}={b[k]:.4f}->{a[k]:.4f}" for k in ("D_lambda_K", "D_s", "D_rho", "J")
                    if b.get(k) is not None and a.get(k) is not None)
    p = s.get("patches", {})
    out = {"adapted": str(bool(s.get("used_adapted"))).lower(), "adapt_mode": str(s.get("mode")),
           "adapt_reason": str(s.get("reason", "")),
           "adapt_steps_kept": f"{s.get('best_step', 0)}/{s.get('steps', 0)}",
           "adapt_patches_used": f"{p.get('train', 0)}+{p.get('holdout', 0)}",
           "adapt_seconds": f"{s.get('seconds', {}).get('total', 0.0):.3f}"}
    if crit:
        out["adapt_criterion"] = crit
    return out


# -- pansharpen adapt --------------------------------------------------------------------------------


@dataclass
class SceneInput:
    """One scene for :func:`adapt_for_sensor` (what ``_resolve_inputs`` of the CLI gives)."""

    pan: str | Path
    ms: Sequence[str | Path]
    band_names: Sequence[str] | None = None
    product_nodata: float | None = None
    source: str | None = None
    #: the sensor the product names (checked against the requested one)
    sensor: str | None = None


@dataclass
class AdaptOutcome:
    """What :func:`adapt_for_sensor` returns."""

    entry: ModelEntry
    report: dict[str, Any]


def _grid_size(height: int, width: int, margin: int, patch: int = PATCH) -> int:
    """About how many candidate windows :func:`candidate_windows` finds on a canvas (from its size)."""
    win = patch + 2 * margin
    return max(0, (height - win) // patch + 1) * max(0, (width - win) // patch + 1) if min(height, width) >= win \
        else 0


def _allocate(total: int, sizes: Sequence[int]) -> list[int]:
    """``total`` patches over scenes with ``sizes`` usable candidates (largest remainders; >= 1 each)."""
    n = len(sizes)
    s = sum(sizes)
    if s == 0:
        return [0] * n
    raw = [total * x / s for x in sizes]
    out = [min(x, max(1, int(v))) for v, x in zip(raw, sizes, strict=True)]
    rest = sorted(range(n), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    i = 0
    while sum(out) < total and any(out[j] < sizes[j] for j in range(n)):
        j = rest[i % n]
        if out[j] < sizes[j]:
            out[j] += 1
        i += 1
    return out


def adapt_for_sensor(model: str, sensor: str, scenes: Sequence[SceneInput], *, mode: str = "tailor",
                     name: str | None = None, patches: int | None = None, steps: int | None = None,
                     lr: float | None = None, seed: int = 0, overwrite: bool = False, device: str | None = "cpu",
                     notice: Callable[[str], None] | None = None) -> AdaptOutcome:
    """Adapt ``model`` to ``sensor`` on patches sampled across ``scenes`` (``pansharpen adapt``).

    Each scene is planned like ``fuse`` (:func:`~pansharpen_cli.pipeline.plan_fuse`, no output) and
    opened without fitting (:func:`~pansharpen_cli.pipeline.open_scene`); its patches are sampled
    through the engine (:func:`sample_scene_patches`, the patch budget shared among the scenes in
    proportion to their candidate grids); one adaptation runs on all of them
    (:func:`pansharpen_cli.adapt.adapt`, with its do-no-harm check) and the adapter is registered in
    the user store as ``name`` (default ``<model>+<sensor>``, e.g. ``fusionnet.wv3+wv2``),
    recording the base model and its SHA-256, the mode, scenes, seed, steps and report
    (:func:`pansharpen_cli.zoo.register_adapted`). ``pansharpen fuse`` then runs it by default on
    scenes of ``sensor``.

    Raises :class:`UsageError` (bad options, no scene, existing name), :class:`ModelError` (the model
    does not fit the scenes; the adaptation did not pass the do-no-harm check: nothing registered)
    and the pipeline's errors for unreadable scenes.
    """
    from . import zoo
    from .adapt import MODES, adapt, save_adapter
    from .methods.network import NetworkMethod
    from .pipeline import FuseRequest, open_scene, plan_fuse
    from .sensors import get_sensor

    if not scenes:
        raise UsageError("no scene given", fix="pass SCENE... or --pan PAN --ms MS")
    if mode not in MODES:
        raise UsageError(f"unknown --mode '{mode}'", fix="use " + ", ".join(MODES))
    check_options(steps=steps, patches=patches, lr=lr, prefix="--")
    sens = get_sensor(sensor)
    entry = zoo.get_model(model)
    try:
        final = zoo._normalise_name(name or f"{entry.name}+{sens.key.lower()}", entry.arch)
    except ModelError as exc:
        raise UsageError(exc.problem, fix=exc.fix) from None
    if any(e.name == final for e in zoo.shipped_models()):
        raise UsageError(f"'{final}' is the name of a shipped model", fix="choose another --name")
    old = next((e for e in zoo.user_models() if e.name == final), None)
    if old is not None and not overwrite:
        raise UsageError(f"a model named '{final}' is already in the user store", path=old.location,
                         fix="pass --name NAME for another name, or --overwrite to replace it")
    if final == entry.name:
        raise UsageError(f"the adapted model cannot replace its base '{entry.name}'", fix="choose another --name")
    for sc in scenes:
        if sc.sensor and get_sensor(sc.sensor).key != sens.key:
            raise UsageError(f"{sc.source or sc.pan} is a {get_sensor(sc.sensor).key} product, not {sens.key}",
                             fix=f"adapt on {sens.key} scenes, or pass --sensor {get_sensor(sc.sensor).key}")
    t0 = time.perf_counter()
    method = NetworkMethod(entry, device=device, notify=notice)
    plans = []
    for sc in scenes:
        req = FuseRequest(pan=sc.pan, ms=list(sc.ms), out=None, method=method, sensor=sens.key,
                          band_names=sc.band_names, product_nodata=sc.product_nodata, source=sc.source)
        plan = plan_fuse(req)
        method.check_scene(plan.bands, plan.alignment.cols.ratio)
        plans.append(plan)
    # the patch budget, shared among the scenes in proportion to their candidate grids
    per_scene: list[tuple[list[dict[str, Any]], Sampling]] = []
    grid_sizes = [_grid_size(p.alignment.height, p.alignment.width, scene_margin(round(p.alignment.cols.ratio)))
                  for p in plans]
    total = int(patches) if patches is not None else max(MIN_PATCHES, min(
        sum(default_patch_count(n) for n in grid_sizes if n), 2 * MAX_PATCHES))
    shares = _allocate(total, grid_sizes)
    phases: set[str] = set()
    ratios: set[int] = set()
    for plan, k in zip(plans, shares, strict=True):
        if k == 0:
            win = PATCH + 2 * scene_margin(round(plan.alignment.cols.ratio))
            a = plan.alignment
            why = f"the scene ({a.width}x{a.height}) is smaller than one {win}x{win} patch" if min(a.width, a.height) \
                < win else "no patch was allotted to it"
            per_scene.append(([], Sampling(problem=f"{plan.request.pan}: {why}")))
            continue
        with open_scene(plan, notice=notice, fit=False) as (scene, _engine):
            assert scene.windows is not None
            if scene.bit_depth != entry.bit_depth and notice:
                notice(f"{plan.request.pan}: {entry.name} was trained on {entry.bit_depth}-bit data; this scene "
                       f"is {scene.bit_depth}-bit")
            got, info = sample_scene_patches(scene.windows, scale=method.scale, sensor=plan.sensor,
                                             area_ms=method.needs_lr,
                                             n_patches=k, seed=seed)
            if got:
                phases.add(info.phase)
                ratios.add(info.ratio)
            elif info.problem:
                info.problem = f"{plan.request.pan}: {info.problem}"
            per_scene.append((got, info))
    items = [p for got, _ in per_scene for p in got]
    samplings = [s for _, s in per_scene]
    if not items:
        why = "; ".join(s.problem for s in samplings if s.problem) or "no usable patch"
        raise DataError(f"no patch to adapt on ({why})",
                        fix="give scenes larger than about 100 x 100 PAN pixels, with valid data and grids aligned "
                            "on whole MS pixels")
    if len(phases) > 1 or len(ratios) > 1:
        raise DataError("the scenes' PAN/MS grids differ in phase or ratio (" + ", ".join(sorted(phases)) + ")",
                        fix="adapt on scenes of one kind of product at a time")
    sample_s = time.perf_counter() - t0
    res = adapt(method.net, items, plans[0].sensor, ratios.pop(), mode=mode,  # type: ignore[arg-type]
                steps=steps, lr=lr, seed=seed, phase=phases.pop(), base_name=entry.name, base_sha256=entry.sha256)
    summary = summarize(res.report, samplings, extra_seconds=sample_s - sum(s.seconds for s in samplings))
    summary["scenes"] = len(scenes)
    if not res.used_adapted:
        raise ModelError(f"the adaptation of {entry.name} did not pass the do-no-harm check ({res.report['reason']}); "
                         "nothing was registered",
                         fix=f"use {entry.name} as it is, or adapt on more or other scenes (--patches, --steps)")
    scene_list = [{"pan": str(Path(sc.pan).name), "ms": [str(Path(p).name) for p in sc.ms],
                   **({"source": sc.source} if sc.source else {})} for sc in scenes]
    adaptation = {"mode": mode, "sensor": sens.key, "seed": seed, "steps": res.report.get("steps"),
                  "best_step": res.report.get("best_step"), "lr": res.report.get("lr"), "patches": len(items),
                  "scenes": scene_list, "report": summary}
    quality = {"adaptation_holdout": {"before": summary["before"], "after": summary["after"],
                                      "n": summary["patches"]["holdout"]}}
    names = ", ".join(Path(sc.pan).name for sc in scenes[:5]) + (", ..." if len(scenes) > 5 else "")
    with tempfile.TemporaryDirectory(prefix="pansharpen-adapt-") as d:
        tmp = Path(d) / f"{final}.safetensors"
        assert res.model is not None
        save_adapter(res.model, tmp)  # type: ignore[arg-type]
        new = zoo.register_adapted(tmp, entry, name=final, sensor=sens, adaptation=adaptation, quality=quality,
                                   training_data=f"{len(scenes)} {sens.key} scene(s), no reference: {names}",
                                   overwrite=overwrite)
    return AdaptOutcome(new, summary)


def check_options(*, steps: int | None = None, patches: int | None = None, lr: float | None = None,
                  prefix: str = "--adapt-") -> None:
    """:class:`UsageError` for out-of-range adaptation options (``prefix``: how the options are
    spelled in messages, ``--adapt-`` for ``fuse``, ``--`` for ``pansharpen adapt``)."""
    if steps is not None and steps < 0:
        raise UsageError(f"{prefix}steps {steps} must be at least 0")
    if patches is not None and patches < 2:
        raise UsageError(f"{prefix}patches {patches} must be at least 2 (one to train on, one held out for the "
                         "do-no-harm check)")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"{prefix}lr {lr} must be a positive number")


__all__ = ["MAX_CANDIDATES", "MAX_PATCHES", "PATCH", "AdaptOutcome", "SceneInput", "Sampling", "adapt_for_sensor",
           "candidate_windows", "check_options", "default_patch_count", "provenance", "report_lines",
           "sample_scene_patches", "scene_margin", "summarize"]
