"""Quality evaluation of pansharpening on real scenes: ``pansharpen eval`` as a library.

:func:`evaluate` scores fusion methods, zoo models and existing fused files on one PAN/MS pair with
the two standard protocols (see ``docs/evaluation.md``):

- **reduced** (Wald's protocol, with reference): the PAN/MS window is degraded by the ratio (MS:
  sensor MTF filter and decimation, :func:`~pansharpen_cli.filters.wald_degrade`; PAN: MATLAB
  bicubic, or the PAN MTF with ``pan_mtf=True``), every candidate fuses the degraded pair through
  the real engine (:func:`~pansharpen_cli.pipeline.fuse_arrays`, ``phase="toolbox"``), and the
  result is scored against the original MS with ``cut`` border pixels removed
  (:func:`~pansharpen_cli.metrics.reduced_resolution_report`).
- **full** (no reference): every candidate fuses the original pair with the real
  :func:`~pansharpen_cli.pipeline.fuse` (on a crop of the files around the window, so that
  georeferencing, grid phase, nodata and tiling are those of a real run) and the window is scored
  with the no-reference indexes (:func:`~pansharpen_cli.metrics.full_resolution_report`).

The report is a JSON-able dict::

    {"scene": str, "sensor": str,
     "settings": {"cut", "block", "ratio", "protocol", "window": [col, row, w, h] (PAN pixels),
                  "window_source": "user" | "auto" | "whole", "ms_window", "bit_depth", "uint16_cast",
                  "pan_lp", "bands", "notes", ...},
     "results": [{"name", "protocol": "reduced" | "full", "metrics": {...}, "seconds"}, ...]}

No typer/rich here: the CLI (:mod:`pansharpen_cli.cli_eval`) draws the table.
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, GeometryError, UsageError
from .filters import interp23tap, wald_degrade
from .metrics import full_resolution_report, reduced_resolution_report
from .quicklook import QuicklookBuilder
from .raster import MSInfo, RasterInfo, align, inspect_ms, inspect_raster, read_full, write_array
from .sensors import Sensor, generic_sensor, get_sensor

__all__ = [
    "FULL_KEYS", "PROTOCOLS", "RANK_KEY", "REDUCED_KEYS", "LOWER_IS_BETTER", "evaluate", "parse_window",
    "ranked", "write_csv",
]

REDUCED_KEYS: tuple[str, ...] = ("Q2n", "SAM", "ERGAS", "SCC", "Q", "PSNR")
FULL_KEYS: tuple[str, ...] = ("HQNR", "D_lambda_K", "D_s", "QNR", "D_lambda", "D_rho", "R_Q2n", "R_SAM",
                              "R_ERGAS", "FSDS")
#: the index each protocol ranks by (higher is better for both)
RANK_KEY = {"reduced": "Q2n", "full": "HQNR"}
#: indexes where smaller is better (distortions, angles, errors); all others: larger is better
LOWER_IS_BETTER = frozenset({"SAM", "ERGAS", "D_lambda_K", "D_s", "D_lambda", "D_rho", "R_SAM", "R_ERGAS"})
PROTOCOLS = ("reduced", "full", "both")

#: scenes with at most this many PAN pixels are scored whole; larger ones get an automatic window
WHOLE_MAX_PIXELS = 2048 * 2048
#: side of the automatic window, PAN pixels
AUTO_WINDOW = 1024
#: context kept around the window (PAN pixels) when the full protocol fuses a crop of the files
FULL_MARGIN = 128

#: ``progress(label, done, total)``: called before each (candidate, protocol) step and once at the end
ProgressCallback = Callable[[str, int, int], None]


# --------------------------------------------------------------------------------------------------
# Raster reading. This is the ONLY place in this module that uses rasterio directly: raster.py has no
# windowed/decimated read yet (requested from its owner as ``raster.read_window``; swap this function
# for it when it exists). Everything else goes through pansharpen_cli.raster.


def _read_window(paths: Sequence[str | Path], col: int, row: int, width: int, height: int,
                 out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Bands of ``paths`` (concatenated) in the pixel window ``col, row, width, height``.

    ``out_shape`` (h, w) reads a decimated view (nearest neighbour; GDAL uses overviews when the
    file has them). The window must lie inside the rasters. Returns ``(B, h, w)`` in the file dtype.
    """
    import warnings

    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window

    parts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for p in paths:
            with rasterio.open(p) as ds:
                shape = (ds.count, *(out_shape or (height, width)))
                parts.append(ds.read(window=Window(col, row, width, height), out_shape=shape,
                                     resampling=Resampling.nearest))
    return np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------------------------------
# geometry: windows on the PAN grid that whole MS pixels cover


@dataclass(frozen=True)
class _Grid:
    """The MS grid on the PAN grid: MS pixel ``(mr, mc)`` covers PAN pixels ``pan_row(mr)..`` x ``pan_col(mc)..``."""

    ratio: int
    ox: float  # MS grid origin in PAN pixel coordinates (x, y)
    oy: float
    pan_w: int
    pan_h: int
    ms_w: int
    ms_h: int

    @staticmethod
    def _snap(v: float) -> int:
        n = round(v)
        return int(n) if abs(v - n) < 1e-6 else math.floor(v + 0.5)

    def pan_col(self, mc: int) -> int:
        return self._snap(self.ox + self.ratio * mc)

    def pan_row(self, mr: int) -> int:
        return self._snap(self.oy + self.ratio * mr)

    @property
    def fractional(self) -> bool:
        return abs(self.ox - round(self.ox)) > 1e-6 or abs(self.oy - round(self.oy)) > 1e-6

    def ms_range(self) -> tuple[int, int, int, int]:
        """(mc_lo, mc_hi, mr_lo, mr_hi): MS pixels whose whole (snapped) footprint lies on the PAN raster."""
        def rng(first_pan: Callable[[int], int], o: float, n_ms: int, n_pan: int) -> tuple[int, int]:
            # a jump close to the answer first, so that the loops stay short whatever the offset
            lo = min(n_ms, max(0, math.floor(-o / self.ratio) - 1))
            while lo < n_ms and first_pan(lo) < 0:
                lo += 1
            hi = max(lo, min(n_ms, math.ceil((n_pan - o) / self.ratio) + 1))
            while hi > lo and first_pan(hi) > n_pan:
                hi -= 1
            if self.fractional and hi - lo > 2:  # half-pixel phase: keep off the raster's last edge
                hi -= 1
            return lo, hi

        c = rng(self.pan_col, self.ox, self.ms_w, self.pan_w)
        r = rng(self.pan_row, self.oy, self.ms_h, self.pan_h)
        return c[0], c[1], r[0], r[1]


@dataclass(frozen=True)
class _Win:
    """A window in MS pixels (``mc, mr, mw, mh``) and the PAN window it maps to."""

    mc: int
    mr: int
    mw: int
    mh: int
    grid: _Grid

    @property
    def pan(self) -> tuple[int, int, int, int]:
        r = self.grid.ratio
        return self.grid.pan_col(self.mc), self.grid.pan_row(self.mr), r * self.mw, r * self.mh


def parse_window(text: str) -> tuple[int, int, int, int]:
    """``"COL,ROW,W,H"`` (PAN pixels) -> tuple; :class:`UsageError` if malformed."""
    try:
        vals = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4 or vals[0] < 0 or vals[1] < 0 or vals[2] <= 0 or vals[3] <= 0:
        raise UsageError(f"--window '{text}' is not COL,ROW,W,H", fix="e.g. --window 2048,1024,1024,1024 "
                         "(PAN pixels: column and row of the top-left corner, width, height)")
    return vals[0], vals[1], vals[2], vals[3]


def _grid_of(pan: RasterInfo, ms: MSInfo, ratio: float | None) -> _Grid:
    a = align(pan, ms, extent="intersection", ratio=ratio)
    if a.reprojected:
        raise GeometryError("the MS is in another CRS than the PAN; eval needs both on one CRS", path=ms.first.path,
                            fix="warp the MS to the PAN's CRS first (gdalwarp -t_srs)")
    rx, ry = a.cols.ratio, a.rows.ratio
    r = round(rx)
    if abs(rx - r) > 1e-3 * r or abs(ry - rx) > 1e-3 * r or r < 2 or r & (r - 1):
        raise UsageError(f"PAN/MS ratio {rx:g} x {ry:g} is not a power of two; the evaluation protocols need "
                         "ratio 2, 4 or 8", path=ms.first.path, fix="resample the MS to an integer ratio first")
    ox, oy = a.ms_offset_pan_px()
    return _Grid(r, ox, oy, pan.width, pan.height, ms.first.width, ms.first.height)


def _min_ms_size(protocols: Sequence[str], cut: int, block: int, ratio: int) -> int:
    need = 2
    if "reduced" in protocols:
        need = max(need, 2 * cut + block)
    if "full" in protocols:
        cm = math.ceil(cut / ratio)
        need = max(need, 2 * cm + math.ceil(block / ratio))
    return ratio * math.ceil(need / ratio)  # MS window sizes are multiples of the ratio


def _user_window(win: tuple[int, int, int, int], g: _Grid, need: int, notes: list[str]) -> _Win:
    col, row, w, h = win
    r = g.ratio
    mc_lo, mc_hi, mr_lo, mr_hi = g.ms_range()
    mc = min(max(mc_lo, round((col - g.ox) / r)), mc_hi)
    mr = min(max(mr_lo, round((row - g.oy) / r)), mr_hi)
    mw = min(round(w / r), mc_hi - mc) // r * r
    mh = min(round(h / r), mr_hi - mr) // r * r
    if mw < need or mh < need:
        raise UsageError(f"--window {col},{row},{w},{h} leaves {r * max(mw, 0)} x {r * max(mh, 0)} PAN pixels on the "
                         f"scene; the protocols need at least {r * need} x {r * need} with these --cut/--block",
                         fix=f"choose a window inside the {g.pan_w} x {g.pan_h} PAN of at least {r * need} pixels, "
                         "or lower --cut")
    out = _Win(mc, mr, mw, mh, g)
    if out.pan != (col, row, w, h):
        notes.append("window snapped to whole MS pixels (origin and size multiples of the ratio on the MS grid): "
                     f"{col},{row},{w},{h} -> {','.join(map(str, out.pan))}")
    return out


def _whole_window(g: _Grid, need: int) -> _Win:
    r = g.ratio
    mc_lo, mc_hi, mr_lo, mr_hi = g.ms_range()
    mw = (mc_hi - mc_lo) // r * r
    mh = (mr_hi - mr_lo) // r * r
    if mw < need or mh < need:
        raise UsageError(f"the scene ({r * max(mw, 0)} x {r * max(mh, 0)} PAN pixels covered by the MS) is too small "
                         f"for the protocols with these settings (at least {r * need} x {r * need})",
                         fix="lower --cut or --block, or evaluate a larger scene")
    # centre the multiple-of-ratio window on the covered range
    return _Win(mc_lo + (mc_hi - mc_lo - mw) // 2, mr_lo + (mr_hi - mr_lo - mh) // 2, mw, mh, g)


def _auto_window(g: _Grid, pan: RasterInfo, ms: MSInfo, need: int, nodata: float | None, size: int,
                 notes: list[str]) -> _Win:
    """The most textured fully valid ``size`` x ``size`` window, chosen on a decimated read of the scene.

    Texture is the median gradient magnitude of the PAN in the window (robust to a few strong edges
    such as cloud borders); windows are compared first by their fraction of valid PAN and MS pixels.
    """
    r = g.ratio
    mc_lo, mc_hi, mr_lo, mr_hi = g.ms_range()
    side = max(need, size // r // r * r)
    mw, mh = min(side, (mc_hi - mc_lo) // r * r), min(side, (mr_hi - mr_lo) // r * r)
    c0, r0 = g.pan_col(mc_lo), g.pan_row(mr_lo)
    cw, ch = g.pan_col(mc_hi) - c0, g.pan_row(mr_hi) - r0
    step = max(1, math.ceil(math.sqrt(cw * ch / 1.5e6)))
    dh, dw = max(1, ch // step), max(1, cw // step)
    p = _read_window([pan.path], c0, r0, cw, ch, out_shape=(dh, dw))[0].astype(np.float64)
    m = _read_window(ms.paths, mc_lo, mr_lo, mc_hi - mc_lo, mr_hi - mr_lo, out_shape=(dh, dw)).astype(np.float64)
    valid = np.isfinite(p) & np.all(np.isfinite(m), axis=0)
    pn = pan.nodata if pan.nodata is not None else nodata
    mn = ms.first.nodata if ms.first.nodata is not None else nodata
    if pn is not None:
        valid &= p != pn
    if mn is not None:
        valid &= ~np.any(m == mn, axis=0)
    gy, gx = np.gradient(np.where(valid, p, np.nan))
    grad = np.hypot(gx, gy)
    # candidate windows in decimated pixels, on a stride of a quarter window
    wd, hd = max(1, round(r * mw / step)), max(1, round(r * mh / step))
    best: tuple[float, float, int, int] | None = None
    for i in range(0, max(1, dh - hd + 1), max(1, hd // 4)):
        for j in range(0, max(1, dw - wd + 1), max(1, wd // 4)):
            v = valid[i:i + hd, j:j + wd]
            frac = float(v.mean())
            gg = grad[i:i + hd, j:j + wd]
            gg = gg[np.isfinite(gg)]
            tex = float(np.median(gg)) if gg.size else 0.0
            key = (round(frac, 3), tex, i, j)
            if best is None or key[:2] > best[:2]:
                best = key
    assert best is not None
    frac, _, i, j = best
    mc = min(mc_lo + round(j * step / r), mc_hi - mw)
    mr = min(mr_lo + round(i * step / r), mr_hi - mh)
    out = _Win(mc, mr, mw, mh, g)
    notes.append(f"scene of {pan.width} x {pan.height} PAN pixels: scoring the automatic {r * mw} x {r * mh} window "
                 f"{','.join(map(str, out.pan))} (most textured, {100 * frac:.0f} % valid on a 1/{step} read); "
                 "pass --window COL,ROW,W,H to choose it")
    return out


# --------------------------------------------------------------------------------------------------
# candidates


@dataclass
class _Candidate:
    name: str
    kind: str  # "method" | "model" | "file"
    ref: str  # method or model name, or file path
    grid: str = ""  # for files: "pan" | "ms"
    offset: tuple[int, int] = (0, 0)  # for files: (col, row) of the file origin on its grid


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}-{k}", k + 1
    taken.add(out)
    return out


def _check_methods(methods: Sequence[str]) -> list[str]:
    from .methods import HIDDEN, METHODS

    out = []
    for m in methods:
        key = m.strip().lower()
        if not key:
            continue
        if key not in METHODS and key not in HIDDEN:
            raise UsageError(f"unknown method '{m}'", fix="choose from: " + ", ".join(sorted(METHODS))
                             + " (deep networks go in --models)")
        out.append(key)
    return out


def _check_models(models: Sequence[str], n_bands: int, ratio: int) -> list[str]:
    if not models:
        return []
    try:
        from . import zoo
    except ImportError as e:
        raise UsageError(f"--models needs the model zoo, which this installation lacks ({e})",
                         fix="evaluate classical methods with --methods") from None
    out = []
    for m in models:
        key = m.strip().lower()
        if not key:
            continue
        if not zoo.has_model(key):
            raise UsageError(f"unknown model '{m}'", fix="see `pansharpen models list` for the installed models")
        check = getattr(zoo, "check_fit", None)
        if check is not None:
            check(zoo.get_model(key), n_bands, ratio)
        out.append(key)
    return out


def _fused_candidate(path: str | Path, pan: RasterInfo, ms: MSInfo, taken: set[str]) -> _Candidate:
    f = inspect_raster(path, "fused")
    if f.count != ms.count:
        raise UsageError(f"fused file has {f.count} bands, the MS has {ms.count}", path=f.path,
                         fix="score files made from this MS (same bands, same order)")
    name = _unique(Path(path).stem, taken)
    m = ms.first
    if f.georeferenced and pan.georeferenced:
        if f.crs is not None and pan.crs is not None and f.crs != pan.crs:
            raise GeometryError("fused file is in another CRS than the PAN", path=f.path,
                                fix="warp it onto the PAN's grid first")
        for grid, ref in (("pan", pan), ("ms", m)):
            ta, tr = f.transform, ref.transform
            if abs(abs(ta.a) - abs(tr.a)) <= 1e-3 * abs(tr.a) and abs(abs(ta.e) - abs(tr.e)) <= 1e-3 * abs(tr.e):
                dc, dr = (ta.c - tr.c) / tr.a, (ta.f - tr.f) / tr.e
                if abs(dc - round(dc)) > 0.01 or abs(dr - round(dr)) > 0.01:
                    raise GeometryError(f"fused file is offset by a fraction of a pixel ({dc:.3f}, {dr:.3f}) from "
                                        f"the {grid.upper()} grid", path=f.path,
                                        fix="score files on the PAN grid (or the MS grid), as fuse writes them")
                return _Candidate(name, "file", str(path), grid, (round(dc), round(dr)))
        raise GeometryError(f"fused pixels ({abs(f.transform.a):g}) match neither the PAN ({abs(pan.transform.a):g}) "
                            f"nor the MS ({abs(m.transform.a):g})", path=f.path,
                            fix="score files at PAN resolution (full protocol) or MS resolution (reduced)")
    for grid, ref in (("pan", pan), ("ms", m)):
        if (f.width, f.height) == (ref.width, ref.height):
            return _Candidate(name, "file", str(path), grid, (0, 0))
    raise GeometryError(f"fused file ({f.width} x {f.height}) has no georeferencing and the size of neither the PAN "
                        f"({pan.width} x {pan.height}) nor the MS ({m.width} x {m.height})", path=f.path,
                        fix="score georeferenced files, or files of the PAN's size")


# --------------------------------------------------------------------------------------------------
# the protocols


def _finite(d: dict[str, float]) -> dict[str, float | None]:
    """Metric values for JSON: non-finite values (PSNR of a perfect result) become None."""
    return {k: (float(v) if math.isfinite(v) else None) for k, v in d.items()}


def _cut(a: np.ndarray, c: int) -> np.ndarray:
    return a[..., c:a.shape[-2] - c, c:a.shape[-1] - c] if c > 0 else a


class _Full:
    """Fuses the original pair with the real engine (:func:`~pansharpen_cli.pipeline.fuse`).

    When the window plus a :data:`FULL_MARGIN` context covers the whole scene, the files themselves
    are fused (so a method scores exactly what ``pansharpen fuse`` writes); otherwise a crop of the
    PAN and MS around the window is written, with its true georeferencing, and fused.
    """

    def __init__(self, pan: RasterInfo, ms: MSInfo, win: _Win, sensor: Sensor, nodata: float | None,
                 ratio: float | None, workdir: Path):
        g = win.grid
        mm = math.ceil(FULL_MARGIN / g.ratio)
        mc0, mr0 = max(0, win.mc - mm), max(0, win.mr - mm)
        mc1, mr1 = min(g.ms_w, win.mc + win.mw + mm), min(g.ms_h, win.mr + win.mh + mm)
        pc0, pr0 = max(0, g.pan_col(mc0)), max(0, g.pan_row(mr0))
        pc1, pr1 = min(g.pan_w, g.pan_col(mc1)), min(g.pan_h, g.pan_row(mr1))
        self.georef = pan.georeferenced and ms.first.georeferenced
        self.win, self.workdir, self.sensor, self.nodata = win, workdir, sensor, nodata
        self.ratio = None if self.georef else ratio  # --ratio only aligns inputs without georeferencing
        self.count = 0
        if (mc0, mr0, mc1, mr1, pc0, pr0, pc1, pr1) == (0, 0, g.ms_w, g.ms_h, 0, 0, g.pan_w, g.pan_h):
            self.pan_path, self.ms_paths = pan.path, list(ms.paths)
            pc0 = pr0 = 0
        else:
            pa = _read_window([pan.path], pc0, pr0, pc1 - pc0, pr1 - pr0)
            ma = _read_window(ms.paths, mc0, mr0, mc1 - mc0, mr1 - mr0)
            pt, mt = pan.transform, ms.first.transform
            if self.georef:
                ptc = (pt.a, 0.0, pt.c + pt.a * pc0, 0.0, pt.e, pt.f + pt.e * pr0)
                mtc = (mt.a, 0.0, mt.c + mt.a * mc0, 0.0, mt.e, mt.f + mt.e * mr0)
            else:  # identity transforms and no CRS: still no georeferencing, --ratio aligns the crops
                ptc = mtc = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
            crs = pan.crs if self.georef else None
            self.pan_path, self.ms_paths = str(workdir / "pan-crop.tif"), [str(workdir / "ms-crop.tif")]
            write_array(self.pan_path, pa, ptc, crs=crs, bit_depth=pan.bit_depth, nodata=pan.nodata)
            write_array(self.ms_paths[0], ma, mtc, crs=crs, bit_depth=ms.first.bit_depth, nodata=ms.first.nodata)
        self.pc0, self.pr0 = pc0, pr0
        # the PAN file's origin (georeferenced) to locate the fused canvas on it
        self.origin = (pan.transform.c + pan.transform.a * pc0, pan.transform.f + pan.transform.e * pr0,
                       pan.transform.a, pan.transform.e)

    def fuse(self, method: str) -> tuple[np.ndarray, float]:
        """Fuse with ``method``; -> (the window of the output (B, H, W) float64, seconds)."""
        from .pipeline import FuseRequest, fuse

        self.count += 1
        out = self.workdir / f"fused-{self.count}.tif"
        req = FuseRequest(pan=self.pan_path, ms=self.ms_paths, out=out, method=method,
                          sensor=None if self.sensor.key == "generic" else self.sensor.key, ratio=self.ratio,
                          product_nodata=self.nodata)
        t0 = time.perf_counter()
        summary = fuse(req)
        seconds = time.perf_counter() - t0
        a = read_full(out)
        out.unlink()
        # where the output canvas starts on the fused PAN file (intersection extent)
        t = summary["grid"]["transform"]
        if self.georef:
            x0, y0, pa, pe = self.origin
            oc, orow = round((t[2] - x0) / pa), round((t[5] - y0) / pe)
        else:
            oc, orow = round(t[2]), round(t[5])
        col, row, w, h = self.win.pan
        c0, r0 = col - self.pc0 - oc, row - self.pr0 - orow
        if c0 < 0 or r0 < 0 or c0 + w > a.shape[2] or r0 + h > a.shape[1]:
            raise DataError(f"the fused canvas ({a.shape[2]} x {a.shape[1]}) does not cover the scored window",
                            fix="please report this with the scene's `pansharpen info` output")
        return a[:, r0:r0 + h, c0:c0 + w].astype(np.float64), seconds


def _resolve_sensor(name: str | None, pan: RasterInfo, ms: MSInfo, ratio: int, notes: list[str]) -> Sensor:
    """--sensor (or the product's) > SENSOR tag of the files > generic settings (with a note)."""
    n = ms.count
    name = name or pan.tags.get("SENSOR") or ms.first.tags.get("SENSOR")
    if not name:
        notes.append("no sensor given (--sensor) nor found in the files: generic MTF gains (MS 0.29, PAN 0.15) "
                     "and equal band weights are used")
        return generic_sensor(n, 16, ratio)
    s = get_sensor(name)
    if n > s.n_bands:
        raise UsageError(f"sensor {s.key} has {s.n_bands} MS bands but the MS has {n}", path=ms.first.path,
                         fix="pass the right --sensor, or none for generic settings")
    if s.ratio != ratio:
        notes.append(f"sensor {s.key} is usually ratio {s.ratio}; this pair has ratio {ratio}")
    return s.subset(n)


def _bit_depth(ms: MSInfo, s: Sensor, ms_px: np.ndarray, notes: list[str]) -> int | None:
    """Radiometric bit depth of integer data (metadata > sensor preset > data type); None for float data."""
    dt = np.dtype(ms.first.dtype)
    if dt.kind not in "ui":
        return None
    bits = ms.first.bit_depth or (s.bit_depth if s.key != "generic" else dt.itemsize * 8)
    peak = float(ms_px.max())
    if peak > 2 ** bits - 1:
        notes.append(f"MS values reach {peak:.0f}, above {bits} bits: using {dt.itemsize * 8}")
        bits = dt.itemsize * 8
    return int(bits)


def _nodata_note(pan_px: np.ndarray, ms_px: np.ndarray, pan_nodata: float | None, ms_nodata: float | None,
                 notes: list[str]) -> None:
    bad = 0.0
    if pan_nodata is not None:
        bad = max(bad, float(np.mean(pan_px == pan_nodata)))
    if ms_nodata is not None:
        bad = max(bad, float(np.mean(np.any(ms_px == ms_nodata, axis=0))))
    if bad > 0:
        notes.append(f"{100 * bad:.1f} % of the window is nodata; the indexes include those pixels "
                     "(choose a fully valid --window)")


@dataclass
class _Run:
    """What both protocols share: the scene, the window's pixels and the settings."""

    pan: RasterInfo
    ms: MSInfo
    sensor: Sensor
    win: _Win
    pan_px: np.ndarray  # (H, W) float64, the PAN window
    ms_px: np.ndarray  # (B, H/r, W/r) float64, the MS window
    bits: int | None
    cut: int
    block: int
    pan_mode: str
    nodata: float | None
    ratio_arg: float | None
    notes: list[str]
    progress: ProgressCallback | None
    total: int
    done: int = 0

    @property
    def r(self) -> int:
        return self.win.grid.ratio

    @property
    def integer(self) -> bool:
        return np.dtype(self.ms.first.dtype).kind in "ui"

    @property
    def data_range(self) -> float | None:
        return float(2 ** self.bits - 1) if self.bits else None

    @property
    def sensor_key(self) -> str | None:
        return None if self.sensor.key == "generic" else self.sensor.key

    def tick(self, label: str) -> None:
        if self.progress:
            self.progress(label, self.done, self.total)
        self.done += 1


def _score_reduced(run: _Run, cands: list[_Candidate],
                   ql_args: dict[str, Any] | None) -> tuple[list[dict[str, Any]], QuicklookBuilder | None]:
    """Wald's protocol: degrade the window, fuse the degraded pair, score against the original MS.

    -> (results, the quicklook of the reduced-resolution products when ``ql_args`` are given)."""
    from .pipeline import fuse_arrays

    r = run.r
    s = run.sensor
    pan_lr, ms_lr = wald_degrade(run.pan_px, run.ms_px, s.gnyq, s.pan_gnyq, r, pan_mode=run.pan_mode)
    ref = _cut(run.ms_px, run.cut)
    ql = QuicklookBuilder(pan_lr, interp23tap(ms_lr, r), reference=run.ms_px, **ql_args) if ql_args else None
    out = []
    for c in cands:
        run.tick(f"{c.name} (reduced)")
        seconds = None
        if c.kind == "file":
            fused = _read_fused(c, run.win.mc, run.win.mr, run.win.mw, run.win.mh) if c.grid == "ms" else None
            if fused is None:
                why = ("the file is at PAN resolution; a reduced-resolution score needs a fusion of the degraded "
                       "pair, at MS resolution") if c.grid != "ms" else "the file does not cover the MS window"
                run.notes.append(f"{c.name}: reduced protocol skipped ({why})")
                continue
        else:
            t0 = time.perf_counter()
            fused = fuse_arrays(pan_lr, ms_lr, c.ref, ratio=r, sensor=run.sensor_key, phase="toolbox",
                                bit_depth=run.bits).astype(np.float64)
            seconds = round(time.perf_counter() - t0, 3)
        rep = reduced_resolution_report(ref, _cut(fused, run.cut), r, run.block, data_range=run.data_range,
                                        q2n_uint16_cast=run.integer)
        out.append({"name": c.name, "protocol": "reduced", "metrics": _finite(rep), "seconds": seconds})
        if ql is not None and c.ref != "exp":  # the EXP panel shows it already
            ql.add(c.name, fused)
    return out, ql


def _score_full(run: _Run, cands: list[_Candidate],
                ql_args: dict[str, Any] | None) -> tuple[list[dict[str, Any]], QuicklookBuilder | None]:
    """No-reference protocol: fuse the original pair with the real engine, score the window.

    -> (results, the quicklook of the full-resolution products when ``ql_args`` are given)."""
    r = run.r
    s = run.sensor
    cm = math.ceil(run.cut / r)
    pan_c, ms_c = _cut(run.pan_px, r * cm), _cut(run.ms_px, cm)
    col, row, w, h = run.win.pan
    ql = QuicklookBuilder(run.pan_px, interp23tap(run.ms_px, r), **ql_args) if ql_args else None
    out = []
    with tempfile.TemporaryDirectory(prefix="pansharpen-eval-") as d:
        full: _Full | None = None
        for c in cands:
            run.tick(f"{c.name} (full)")
            seconds = None
            if c.kind == "file":
                fused = _read_fused(c, col, row, w, h) if c.grid == "pan" else None
                if fused is None:
                    why = ("the file is at MS resolution" if c.grid != "pan"
                           else f"the file does not cover the window {col},{row},{w},{h}")
                    run.notes.append(f"{c.name}: full protocol skipped ({why})")
                    continue
            else:
                if full is None:
                    full = _Full(run.pan, run.ms, run.win, s, run.nodata, run.ratio_arg, Path(d))
                fused, sec = full.fuse(c.ref)
                seconds = round(sec, 3)
            rep = full_resolution_report(_cut(fused, r * cm), ms_c, pan_c, s.gnyq, s.pan_gnyq, r, run.block,
                                         pan_lp=run.pan_mode, uint16_cast=run.integer)
            out.append({"name": c.name, "protocol": "full", "metrics": _finite(rep), "seconds": seconds})
            if ql is not None and c.ref != "exp":
                ql.add(c.name, fused)
    return out, ql


def evaluate(pan_path: str | Path, ms_paths: Sequence[str | Path], *, sensor: str | None = None,
             methods: Sequence[str] | None = None, fused_paths: Sequence[str | Path] | None = None,
             protocol: str = "both", cut: int = 21, block: int = 32,
             window: tuple[int, int, int, int] | str | None = None, models: Sequence[str] | None = None,
             progress: ProgressCallback | None = None, ratio: float | None = None, pan_mtf: bool = False,
             nodata: float | None = None, scene: str | None = None, auto_window: int = AUTO_WINDOW,
             quicklook: str | Path | None = None, zoom: bool = False) -> dict[str, Any]:
    """Score methods, zoo models and fused files on one PAN/MS pair; see the module docstring.

    ``methods`` default to every registered method when no ``models`` or ``fused_paths`` are given.
    ``window`` is ``(col, row, width, height)`` in PAN pixels (or ``"COL,ROW,W,H"``); it is snapped to
    whole MS pixels with sizes multiple of the ratio. Without it, scenes up to
    :data:`WHOLE_MAX_PIXELS` are scored whole, larger ones on an automatic ``auto_window`` square.
    ``ratio`` only for inputs without georeferencing; ``nodata`` is the product's fill value when the
    files declare none. ``quicklook`` writes a PNG comparison (:mod:`pansharpen_cli.quicklook`) of the
    full-resolution products (of the reduced ones with ``protocol="reduced"``); ``zoom`` adds a 2x
    crop of the window centre under each panel.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown --protocol '{protocol}'", fix="use reduced, full or both")
    if cut < 0:
        raise UsageError("--cut must be >= 0")
    if block < 2:
        raise UsageError("--block must be >= 2", fix="the toolbox uses 32")
    protocols = ["reduced", "full"] if protocol == "both" else [protocol]
    notes: list[str] = []
    pan = inspect_raster(pan_path, "PAN")
    ms = inspect_ms(list(ms_paths))
    grid = _grid_of(pan, ms, ratio)
    r = grid.ratio
    if grid.fractional:
        notes.append(f"the MS grid is offset by ({grid.ox:+.3f}, {grid.oy:+.3f}) PAN pixels from the PAN grid: "
                     "MS pixels are mapped to the nearest whole PAN pixels")
    s = _resolve_sensor(sensor, pan, ms, r, notes)

    # candidates: methods, models, files (names unique)
    taken: set[str] = set()
    method_list = _check_methods(methods or [])
    model_list = _check_models(models or [], ms.count, r)
    if not (method_list or model_list or fused_paths):
        from .methods import METHODS

        method_list = sorted(METHODS)
    cands = [_Candidate(_unique(m, taken), "method", m) for m in method_list]
    cands += [_Candidate(_unique(m, taken), "model", m) for m in model_list]
    cands += [_fused_candidate(p, pan, ms, taken) for p in fused_paths or []]

    # the window
    need = _min_ms_size(protocols, cut, block, r)
    if window is not None:
        win = _user_window(parse_window(window) if isinstance(window, str) else tuple(window), grid, need, notes)
        source = "user"
    else:
        mc_lo, mc_hi, mr_lo, mr_hi = grid.ms_range()
        if r * r * (mc_hi - mc_lo) * (mr_hi - mr_lo) <= WHOLE_MAX_PIXELS:
            win, source = _whole_window(grid, need), "whole"
        else:
            win, source = _auto_window(grid, pan, ms, need, nodata, auto_window, notes), "auto"
    col, row, w, h = win.pan
    pan_px = _read_window([pan.path], col, row, w, h)[0]
    ms_px = _read_window(ms.paths, win.mc, win.mr, win.mw, win.mh)
    _nodata_note(pan_px, ms_px, pan.nodata if pan.nodata is not None else nodata,
                 ms.first.nodata if ms.first.nodata is not None else nodata, notes)
    bits = _bit_depth(ms, s, ms_px, notes)

    run = _Run(pan, ms, s, win, pan_px.astype(np.float64), ms_px.astype(np.float64), bits, cut, block,
               "mtf" if pan_mtf else "bicubic", nodata, ratio, notes, progress, len(cands) * len(protocols))
    n = ms.count
    rgb = (s.rgb_indices() or (0, 1, 2)) if n >= 3 else (0, 0, 0)
    ql_args: dict[str, Any] | None = {"rgb": rgb, "zoom": zoom} if quicklook is not None else None
    results: list[dict[str, Any]] = []
    ql: QuicklookBuilder | None = None
    if "reduced" in protocols:
        res, ql = _score_reduced(run, cands, ql_args if protocol == "reduced" else None)
        results += res
    if "full" in protocols:
        res, ql = _score_full(run, cands, ql_args)
        results += res
    if progress:
        progress("done", run.total, run.total)

    settings: dict[str, Any] = {
        "cut": cut, "block": block, "ratio": r, "protocol": protocol,
        "window": [col, row, w, h], "window_source": source,
        "ms_window": [win.mc, win.mr, win.mw, win.mh],
        "full_cut_pan_px": r * math.ceil(cut / r) if "full" in protocols else None,
        "bit_depth": bits, "uint16_cast": run.integer, "pan_lp": run.pan_mode,
        "psnr_peak": run.data_range if run.data_range is not None else "reference maximum",
        "phase": {"reduced": "toolbox (LR pixel k centred on PAN pixel ratio*k + ratio/2)",
                  "full": "from the georeferencing (real fuse on the files)"},
        "bands": list(s.band_names) if s.key != "generic" else [f"Band {i + 1}" for i in range(n)],
        "notes": notes,
    }
    if ql is not None and quicklook is not None:
        level = "full" if "full" in protocols else "reduced"
        settings["quicklook"] = ql.save(
            quicklook, title=f"{Path(scene or pan_path).name} - {s.key} - window {col},{row},{w},{h} ({source}) - "
            f"{level} res.")
    return {"scene": scene or str(pan_path), "sensor": s.key, "settings": settings, "results": results}


def _read_fused(c: _Candidate, col: int, row: int, w: int, h: int) -> np.ndarray | None:
    """The window (on the candidate's grid) of a fused file, or None if the file does not cover it."""
    info = inspect_raster(c.ref, "fused")
    fc, fr = col - c.offset[0], row - c.offset[1]
    if fc < 0 or fr < 0 or fc + w > info.width or fr + h > info.height:
        return None
    return _read_window([c.ref], fc, fr, w, h).astype(np.float64)


# --------------------------------------------------------------------------------------------------
# presenting a report


def ranked(report: dict[str, Any], protocol: str) -> list[dict[str, Any]]:
    """The results of one protocol, best first by :data:`RANK_KEY` (missing values last)."""
    key = RANK_KEY[protocol]
    rows = [r for r in report["results"] if r["protocol"] == protocol]
    return sorted(rows, key=lambda r: -(r["metrics"].get(key) if r["metrics"].get(key) is not None else -math.inf))


def write_csv(report: dict[str, Any], path: str | Path) -> Path:
    """One row per (name, protocol): ``name, protocol, seconds`` and every metric column (empty where
    the protocol has no such index), plus the scene, sensor and window."""
    p = Path(path)
    cols = ["name", "protocol", "seconds", *REDUCED_KEYS, *FULL_KEYS, "scene", "sensor", "window"]
    win = " ".join(str(v) for v in report["settings"]["window"])
    with p.open("w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=cols)
        wr.writeheader()
        for r in report["results"]:
            row: dict[str, Any] = {"name": r["name"], "protocol": r["protocol"],
                                   "seconds": "" if r["seconds"] is None else r["seconds"],
                                   "scene": report["scene"], "sensor": report["sensor"], "window": win}
            for k, v in r["metrics"].items():
                row[k] = "" if v is None else repr(float(v))
            wr.writerow(row)
    return p
