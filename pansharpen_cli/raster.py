"""Raster I/O and georeferencing: the only module that talks to rasterio/GDAL.

- :func:`inspect_raster` / :func:`inspect_ms` open and validate inputs (typed errors),
- :func:`align` works out how the MS grid maps onto the PAN grid and the output canvas,
- :class:`SceneReader` reads windows of PAN and MS (with the scene-level border rule),
- :class:`OutputWriter` writes the result to a temporary file and renames it at the end.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from .errors import (
    DataError,
    GeometryError,
    InputNotFoundError,
    NotARasterError,
    OutputError,
    RadiometryError,
    UsageError,
)
from .resample import AxisMap
from .tiling import Window

# GDAL's block cache defaults to 5 % of RAM; our writes are block-aligned, so a small cache is enough
# and keeps peak memory bounded whatever the scene size. rasterio takes an integer here as BYTES
# (a value of 128 once meant no cache at all and decimated reads 100x slower).
GDAL_CACHEMAX_BYTES = 64 * 2**20
def available_cpus() -> int:
    """CPUs this process may run on (affinity/cpuset aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


#: GDAL's thread count for decoding and compression. An explicit number rather than ``ALL_CPUS``:
#: on the 2-core benchmark machine ``NUM_THREADS=ALL_CPUS`` was consistently slower than ``2`` for
#: DEFLATE output, for ``gdal_pansharpen`` (7.1-7.9 s vs 6.7 s at 8192²) and for us (6.6-6.9 vs
#: 6.0-6.1 s, 1.3 CPU-s more), though GDAL resolves both to 2 threads here.
GDAL_THREADS = str(available_cpus())

GDAL_ENV = {
    "GDAL_CACHEMAX": GDAL_CACHEMAX_BYTES,
    # batch workers cap this through the environment so parallel scenes do not oversubscribe the cores
    "GDAL_NUM_THREADS": os.environ.get("GDAL_NUM_THREADS", GDAL_THREADS),
    "CHECK_DISK_FREE_SPACE": "NO",
}


@dataclass(frozen=True)
class RasterInfo:
    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Any  # rasterio CRS or None
    transform: Affine
    nodata: float | None
    bit_depth: int | None
    descriptions: tuple[str | None, ...]
    georeferenced: bool
    tags: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def res(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)


@contextlib.contextmanager
def _gdal_quiet():
    """Silence the NotGeoreferencedWarning of our own opens (the CLI reports georeferencing itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


class _GdalWarnings(logging.Handler):
    """Collects GDAL warnings that rasterio forwards to logging while creating a file."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _GdalWarnings:
        logging.getLogger("rasterio._env").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("rasterio._env").removeHandler(self)

    def option_problems(self) -> list[str]:
        keys = ("creation option", "unexpected value", "not recognised", "not supported", "ignoring")
        return [m for m in self.messages if any(k in m.lower() for k in keys)]


def _check_file(path: str | Path, role: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{role} file does not exist", path=p, fix="check the path")
    if p.is_dir():
        raise InputNotFoundError(f"{role} is a folder, not a raster file", path=p,
                                 fix="name the GeoTIFF inside it, or pass the folder as SCENE")
    if not os.access(p, os.R_OK):
        raise InputNotFoundError(f"{role} file is not readable", path=p, fix="check its permissions")
    return p


def _bit_depth(ds) -> int | None:
    for value in (ds.tags(ns="IMAGE_STRUCTURE").get("NBITS"), ds.tags().get("BIT_DEPTH"),
                  ds.tags().get("NBITS")):
        if value:
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def _info(ds, path: str) -> RasterInfo:
    t = ds.transform
    georef = ds.crs is not None or t != Affine.identity()
    return RasterInfo(path=path, width=ds.width, height=ds.height, count=ds.count, dtype=ds.dtypes[0],
                      crs=ds.crs, transform=t, nodata=ds.nodata, bit_depth=_bit_depth(ds),
                      descriptions=tuple(ds.descriptions), georeferenced=georef, tags=dict(ds.tags()))


def inspect_raster(path: str | Path, role: str = "input") -> RasterInfo:
    """Open ``path`` and return its header, or raise a typed error saying what is wrong."""
    p = _check_file(path, role)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(p) as ds:
                info = _info(ds, str(p))
    except RasterioIOError as e:
        raise NotARasterError(f"{role} is not a raster GDAL can read ({str(e).splitlines()[0][:120]})",
                              path=p, fix="pass a GeoTIFF or another GDAL raster") from None
    if any(dt.startswith("complex") for dt in [info.dtype]):
        raise RadiometryError(f"{role} has complex data type {info.dtype}", path=p,
                              fix="convert it to a real data type (e.g. gdal_translate -ot Float32)")
    t = info.transform
    if info.georeferenced and (t.b != 0 or t.d != 0):
        raise GeometryError(f"{role} has a rotated geotransform", path=p,
                            fix="warp it north-up first (gdalwarp)")
    return info


@dataclass(frozen=True)
class MSInfo:
    """The MS input: one multiband file or several single-band files in band order."""

    files: tuple[RasterInfo, ...]

    @property
    def first(self) -> RasterInfo:
        return self.files[0]

    @property
    def count(self) -> int:
        return sum(f.count for f in self.files)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def label(self) -> str:
        return self.files[0].path if len(self.files) == 1 else f"{self.files[0].path} (+{len(self.files) - 1})"


def inspect_ms(paths: Sequence[str | Path]) -> MSInfo:
    if not paths:
        raise UsageError("no MS input given", fix="pass --ms FILE (or several single-band files in order)")
    infos = tuple(inspect_raster(p, "MS") for p in paths)
    first = infos[0]
    for other in infos[1:]:
        if (other.width, other.height, other.transform, other.crs) != (first.width, first.height,
                                                                          first.transform, first.crs):
            raise GeometryError("MS band files are not on the same grid as the first one", path=other.path,
                                fix="give single-band MS files of one product, in band order")
        if other.dtype != first.dtype:
            raise RadiometryError(f"MS band files mix data types ({first.dtype}, {other.dtype})",
                                  path=other.path, fix="convert them to one data type")
    return MSInfo(infos)


# --------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    """How the MS maps onto the PAN grid, and the output canvas on the PAN grid."""

    pan: RasterInfo
    ms: MSInfo
    #: MS transform in the PAN's CRS (after reprojection if the CRSs differ)
    ms_transform: Affine
    ms_shape: tuple[int, int]
    reprojected: bool
    synthetic_georef: bool
    #: canvas offset (rows, cols) in PAN pixels and its size
    row_off: int
    col_off: int
    height: int
    width: int
    rows: AxisMap  # canvas row -> MS row coordinate (pixel centres at integers)
    cols: AxisMap
    pan_transform: Affine
    extent: str

    @property
    def ratio(self) -> tuple[float, float]:
        return self.rows.ratio, self.cols.ratio

    @property
    def out_transform(self) -> Affine:
        return self.pan_transform @ Affine.translation(self.col_off, self.row_off)

    def ms_offset_pan_px(self) -> tuple[float, float]:
        """Offset of the MS grid origin from the PAN grid origin, in PAN pixels (x, y)."""
        inv = ~self.pan_transform
        x, y = _apply(inv, self.ms_transform.c, self.ms_transform.f)
        return float(x), float(y)

    def summary(self) -> dict[str, Any]:
        ox, oy = self.ms_offset_pan_px()
        rx, ry = self.cols.ratio, self.rows.ratio
        # where the first MS pixel's centre falls on the PAN grid, relative to the nearest PAN pixel centre
        cx, cy = ox + 0.5 * rx - 0.5, oy + 0.5 * ry - 0.5
        dx, dy = cx - round(cx), cy - round(cy)
        if abs(dx) < 1e-6 and abs(dy) < 1e-6:
            relation = "MS pixel centres fall on PAN pixel centres"
        elif abs(abs(dx) - 0.5) < 1e-6 and abs(abs(dy) - 0.5) < 1e-6:
            relation = "MS pixel centres fall on PAN pixel corners (corner-aligned grids)"
        else:
            relation = f"MS pixel centres are offset ({dx:+.3f}, {dy:+.3f}) PAN px from PAN pixel centres"
        pan_area = self.pan.width * self.pan.height
        inter = _footprint(self, "intersection", strict=False)
        ov = 0.0 if inter is None else inter[2] * inter[3] / pan_area
        return {
            "pan": self.pan.path,
            "ms": self.ms.paths,
            "ratio": [round(rx, 6), round(ry, 6)],
            "integer_ratio": abs(rx - round(rx)) < 1e-6 and abs(ry - round(ry)) < 1e-6,
            "ms_origin_offset_pan_px": [round(ox, 4), round(oy, 4)],
            "ms_centre_offset_pan_px": [round(dx, 4), round(dy, 4)],
            "grid_relation": relation,
            "pan_fraction_covered_by_ms": round(ov, 6),
            "crs_match": not self.reprojected,
            "crs": _crs_text(self.pan.crs),
            "synthetic_georeference": self.synthetic_georef,
            "pan_size": [self.pan.width, self.pan.height],
            "ms_size": [self.ms.first.width, self.ms.first.height],
            "pan_pixel_size": list(self.pan.res),
            "ms_pixel_size": [abs(self.ms_transform.a), abs(self.ms_transform.e)],
            "dtypes": {"pan": self.pan.dtype, "ms": self.ms.first.dtype},
            "nodata": {"pan": self.pan.nodata, "ms": self.ms.first.nodata},
            "bit_depth": {"pan": self.pan.bit_depth, "ms": self.ms.first.bit_depth},
            "ms_bands": self.ms.count,
            "canvas": {"extent": self.extent, "col_off": self.col_off, "row_off": self.row_off,
                       "width": self.width, "height": self.height},
        }


def _apply(t: Affine, x: float, y: float) -> tuple[float, float]:
    """Map a point through an affine transform."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def _crs_text(crs) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def _footprint(a: Alignment | None, extent: str, strict: bool = True, *, pan: RasterInfo | None = None,
               ms_t: Affine | None = None, ms_shape: tuple[int, int] | None = None):
    """(row_off, col_off, height, width) of the canvas in PAN pixels, or None if empty."""
    if a is not None:
        pan, ms_t, ms_shape = a.pan, a.ms_transform, a.ms_shape
    assert pan is not None and ms_t is not None and ms_shape is not None
    inv = ~pan.transform
    x0, y0 = _apply(inv, ms_t.c, ms_t.f)
    x1, y1 = _apply(inv, ms_t.c + ms_t.a * ms_shape[1], ms_t.f + ms_t.e * ms_shape[0])
    mx0, mx1 = sorted((x0, x1))
    my0, my1 = sorted((y0, y1))
    if extent == "pan":
        return 0, 0, pan.height, pan.width
    if extent == "union":
        c0 = math.floor(min(0.0, mx0) + 1e-9)
        r0 = math.floor(min(0.0, my0) + 1e-9)
        c1 = math.ceil(max(pan.width, mx1) - 1e-9)
        r1 = math.ceil(max(pan.height, my1) - 1e-9)
        return r0, c0, r1 - r0, c1 - c0
    # intersection: pixels whose centres lie inside both footprints
    c0 = max(0, math.ceil(mx0 - 0.5 - 1e-9))
    c1 = min(pan.width, math.ceil(mx1 - 0.5 - 1e-9))
    r0 = max(0, math.ceil(my0 - 0.5 - 1e-9))
    r1 = min(pan.height, math.ceil(my1 - 0.5 - 1e-9))
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, c0, r1 - r0, c1 - c0


def _reprojected_ms_grid(ms: RasterInfo, dst_crs) -> tuple[Affine, int, int]:
    from rasterio.warp import calculate_default_transform

    t, w, h = calculate_default_transform(ms.crs, dst_crs, ms.width, ms.height,
                                          *rasterio.transform.array_bounds(ms.height, ms.width, ms.transform))
    return t, w, h


def align(pan: RasterInfo, ms: MSInfo, *, extent: str = "intersection", ratio: float | None = None) -> Alignment:
    """Work out the geometry of a PAN/MS pair; raise :class:`GeometryError` if it cannot be aligned."""
    if extent not in ("intersection", "union", "pan"):
        raise UsageError(f"unknown --extent '{extent}'", fix="use intersection, union or pan")
    m = ms.first
    if pan.count != 1:
        raise UsageError(f"PAN has {pan.count} bands, a PAN must have one", path=pan.path,
                         fix="check that --pan and --ms are not swapped, or extract the PAN band")
    synthetic = False
    pan_t = pan.transform
    reprojected = False
    if not pan.georeferenced or not m.georeferenced:
        if ratio is None:
            which = pan.path if not pan.georeferenced else m.path
            raise GeometryError("input has no georeferencing", path=which,
                                fix="pass --ratio N to assume corner-aligned grids with PAN N times finer")
        if ratio <= 0:
            raise UsageError("--ratio must be positive", fix="e.g. --ratio 4")
        pan_t = Affine.identity()
        ms_t = Affine.scale(ratio)
        ms_shape = (m.height, m.width)
        synthetic = True
    else:
        ms_t = m.transform
        ms_shape = (m.height, m.width)
        if pan.crs is not None and m.crs is not None and pan.crs != m.crs:
            ms_t, w, h = _reprojected_ms_grid(m, pan.crs)
            ms_shape = (h, w)
            reprojected = True
        for info, t in ((pan, pan_t), (m, ms_t)):
            if t.b != 0 or t.d != 0:
                raise GeometryError("rotated geotransform", path=info.path, fix="warp it north-up first (gdalwarp)")
        if (pan_t.a > 0) != (ms_t.a > 0) or (pan_t.e > 0) != (ms_t.e > 0):
            raise GeometryError("PAN and MS have opposite orientations (one is flipped)", path=m.path,
                                fix="warp both north-up first (gdalwarp)")
        if ratio is not None and abs(abs(ms_t.a / pan_t.a) - ratio) > 1e-3 * ratio:
            raise UsageError(f"--ratio {ratio:g} contradicts the georeferencing (ratio {abs(ms_t.a / pan_t.a):.4g})",
                             path=m.path, fix="drop --ratio for georeferenced inputs")
    rx = abs(ms_t.a / pan_t.a)
    ry = abs(ms_t.e / pan_t.e)
    if rx < 1 - 1e-9 or ry < 1 - 1e-9:
        raise GeometryError(
            f"PAN pixels ({abs(pan_t.a):g}) are coarser than MS pixels ({abs(ms_t.a):g})", path=pan.path,
            fix="the --pan and --ms arguments look swapped")
    fp = _footprint(None, extent, pan=RasterInfo(**{**pan.__dict__, "transform": pan_t}), ms_t=ms_t,
                    ms_shape=ms_shape)
    inter = _footprint(None, "intersection", pan=RasterInfo(**{**pan.__dict__, "transform": pan_t}),
                       ms_t=ms_t, ms_shape=ms_shape)
    if inter is None:
        raise GeometryError("PAN and MS footprints do not overlap", path=m.path,
                            fix="check that both files cover the same area (and CRS)")
    assert fp is not None
    r0, c0, h, w = fp
    # x -> MS column (pixel centres at integers): u = (X - ms_c) / ms_a - 0.5, X = pan_c + pan_a * (c0 + j + .5)
    col_scale = pan_t.a / ms_t.a
    col_off = (pan_t.c + pan_t.a * (c0 + 0.5) - ms_t.c) / ms_t.a - 0.5
    row_scale = pan_t.e / ms_t.e
    row_off = (pan_t.f + pan_t.e * (r0 + 0.5) - ms_t.f) / ms_t.e - 0.5
    return Alignment(pan=RasterInfo(**{**pan.__dict__, "transform": pan_t}), ms=ms, ms_transform=ms_t,
                     ms_shape=ms_shape, reprojected=reprojected, synthetic_georef=synthetic, row_off=r0,
                     col_off=c0, height=h, width=w, rows=AxisMap(row_scale, row_off),
                     cols=AxisMap(col_scale, col_off), pan_transform=pan_t, extent=extent)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Symmetric reflection of indices into [0, n) (…2 1 0 | 0 1 2 … n-1 | n-1 n-2 …)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n
    m = np.mod(idx, period)
    return np.where(m < n, m, period - 1 - m)


def _read_gather(ds, bands: list[int] | int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Read the bounding window of (reflected) ``rows`` x ``cols`` and gather them."""
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    data = ds.read(bands, window=RioWindow(c0, r0, c1 - c0, r1 - r0))
    # inside the raster (the usual case) the indices are a plain range: no gather copies
    if not (len(rows) == r1 - r0 and rows[0] == r0 and np.all(np.diff(rows) == 1)):
        data = np.take(data, rows - r0, axis=-2)
    if not (len(cols) == c1 - c0 and cols[0] == c0 and np.all(np.diff(cols) == 1)):
        data = np.take(data, cols - c0, axis=-1)
    return data


class SceneReader:
    """Reads canvas windows of PAN and LR windows of MS, float32, with validity masks.

    Outside its raster, a band is *invalid*; its values there come from reflection at the raster
    edge (so that every tile sees the same context whatever its position).
    """

    def __init__(self, a: Alignment, *, pan_nodata: float | None, ms_nodata: float | None):
        self.a = a
        self.pan_nodata = pan_nodata
        self.ms_nodata = ms_nodata
        self._env = rasterio.Env(**GDAL_ENV)
        self._env.__enter__()
        with _gdal_quiet():
            self._pan = rasterio.open(a.pan.path)
            self._ms = [rasterio.open(p) for p in a.ms.paths]
        self._ms_ds = self._ms
        self.reprojection_note = None
        if a.reprojected:
            self._ms_ds = [WarpedVRT(ds, crs=a.pan.crs, transform=a.ms_transform, width=a.ms_shape[1],
                                     height=a.ms_shape[0], resampling=Resampling.cubic,
                                     src_nodata=ms_nodata, nodata=ms_nodata) for ds in self._ms]
        self.pan_fill = 0.0
        self.ms_fill = np.zeros(a.ms.count, dtype=np.float32)

    def close(self) -> None:
        for ds in self._ms_ds + self._ms + [self._pan]:
            with contextlib.suppress(Exception):
                ds.close()
        with contextlib.suppress(Exception):
            self._env.__exit__(None, None, None)

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- PAN ------------------------------------------------------------------------------
    def read_pan(self, w: Window) -> tuple[np.ndarray, np.ndarray]:
        """Canvas window -> (values (H, W) float32 with invalid pixels filled, valid mask)."""
        a = self.a
        rows = np.arange(w.row, w.row_stop) + a.row_off
        cols = np.arange(w.col, w.col_stop) + a.col_off
        inside = ((rows >= 0) & (rows < a.pan.height))[:, None] & ((cols >= 0) & (cols < a.pan.width))[None, :]
        rr, cc = _reflect(rows, a.pan.height), _reflect(cols, a.pan.width)
        raw = _read_gather(self._pan, 1, rr, cc)
        v = raw.astype(np.float32)
        bad = None
        if self.pan_nodata is not None:
            nod = float(self.pan_nodata)
            if raw.dtype.kind in "ui":  # compare in the integer type (cheaper); out of range: never equal
                info = np.iinfo(raw.dtype)
                if nod.is_integer() and info.min <= nod <= info.max:
                    bad = raw == raw.dtype.type(int(nod))
            else:
                bad = v == np.float32(nod)
        if raw.dtype.kind == "f":
            nonfinite = ~np.isfinite(v)
            bad = nonfinite if bad is None else bad | nonfinite
        if bad is None or not bad.any():
            return v, inside
        # outside the raster: invalid, but the reflected values stay as context for the method
        v[bad] = np.float32(self.pan_fill)
        return v, inside & ~bad

    # -- MS -------------------------------------------------------------------------------
    def read_ms_lr(self, k_rows: tuple[int, int], k_cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """LR index ranges -> (values (B, h, w) float32 with invalid pixels filled, valid (h, w))."""
        h, w = self.a.ms_shape
        rows = np.arange(*k_rows)
        cols = np.arange(*k_cols)
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        rr, cc = _reflect(rows, h), _reflect(cols, w)
        parts = [_read_gather(ds, list(range(1, ds.count + 1)), rr, cc) for ds in self._ms_ds]
        v = np.concatenate(parts, axis=0).astype(np.float32, copy=False)
        bad = np.zeros(v.shape[1:], bool)
        if self.ms_nodata is not None:
            bad |= np.any(v == np.float32(self.ms_nodata), axis=0)
        bad |= ~np.all(np.isfinite(v), axis=0)
        v = np.where(bad[None], self.ms_fill[:, None, None], v).astype(np.float32, copy=False)
        return v, inside & ~bad

    # -- scene sample ----------------------------------------------------------------------
    def sample(self, max_pixels: int = 1 << 20) -> dict[str, np.ndarray]:
        """A decimated view of the canvas for scene-wide statistics (NaN where invalid).

        Returns ``pan`` (h, w), ``ms`` (B, h, w) on the same decimated PAN grid, and ``ms_lr``
        (B, h', w') the MS at (at most) its own resolution over the canvas.
        """
        a = self.a
        step = max(1, math.ceil(math.sqrt(a.height * a.width / max_pixels)))
        h, w = max(1, a.height // step), max(1, a.width // step)
        pwin = RioWindow(a.col_off, a.row_off, a.width, a.height)
        fill = self.pan_nodata if self.pan_nodata is not None else 0
        pan = self._pan.read(1, window=pwin, out_shape=(h, w), boundless=True, fill_value=fill,
                             resampling=Resampling.nearest).astype(np.float32)
        pan_valid = np.ones_like(pan, dtype=bool) if self.pan_nodata is None else pan != np.float32(self.pan_nodata)
        pr = a.row_off + (np.arange(h) + 0.5) * a.height / h
        pc = a.col_off + (np.arange(w) + 0.5) * a.width / w
        pan_valid &= ((pr >= 0) & (pr < a.pan.height))[:, None] & ((pc >= 0) & (pc < a.pan.width))[None, :]
        # the MS on the decimated canvas grid
        st = a.out_transform @ Affine.scale(a.width / w, a.height / h)
        ms_parts, ms_valid = [], np.ones((h, w), bool)
        if a.reprojected:  # the VRT handles the CRS change and the outside
            for ds in self._ms:
                with WarpedVRT(ds, crs=a.pan.crs, transform=st, width=w, height=h, resampling=Resampling.average,
                               src_nodata=self.ms_nodata, nodata=self.ms_nodata) as vrt:
                    ms_parts.append(vrt.read())
                    ms_valid &= np.all(vrt.read_masks() > 0, axis=0)
        else:
            inv_ms = ~a.ms_transform
            c0, r0 = _apply(inv_ms, *_apply(st, 0, 0))
            c1, r1 = _apply(inv_ms, *_apply(st, w, h))
            win = RioWindow(c0, r0, c1 - c0, r1 - r0)
            for ds in self._ms:
                ms_parts.append(ds.read(window=win, out_shape=(ds.count, h, w), boundless=True,
                                        fill_value=self.ms_nodata if self.ms_nodata is not None else 0,
                                        resampling=Resampling.average))
            # sample pixel centres outside the MS raster are invalid
            cc = c0 + (np.arange(w) + 0.5) * (c1 - c0) / w
            rr = r0 + (np.arange(h) + 0.5) * (r1 - r0) / h
            mh, mw = a.ms_shape
            ms_valid &= ((rr >= 0) & (rr < mh))[:, None] & ((cc >= 0) & (cc < mw))[None, :]
        ms = np.concatenate(ms_parts).astype(np.float32)
        if self.ms_nodata is not None:
            ms_valid &= ~np.any(ms == np.float32(self.ms_nodata), axis=0)
        ms_lr = self.sample_ms_lr(h, w)
        ms_valid &= np.all(np.isfinite(ms), axis=0)
        pan_valid &= np.isfinite(pan)
        pan = np.where(pan_valid, pan, np.nan)
        valid = pan_valid & ms_valid
        ms = np.where(valid[None], ms, np.nan)
        return {"pan": np.where(valid, pan, np.nan), "ms": ms, "ms_lr": ms_lr, "step": np.array(step),
                "pan_any": pan}

    def sample_ms_lr(self, h: int = 1024, w: int = 1024) -> np.ndarray:
        """The MS at (at most) its own resolution over the canvas, at most (h, w): (B, h', w'), NaN invalid."""
        a = self.a
        inv = ~a.ms_transform
        x0, y0 = _apply(a.out_transform, 0, 0)
        x1, y1 = _apply(a.out_transform, a.width, a.height)
        mc0, mr0 = _apply(inv, x0, y0)
        mc1, mr1 = _apply(inv, x1, y1)
        mh, mw = a.ms_shape
        c0, c1 = max(0, math.floor(min(mc0, mc1))), min(mw, math.ceil(max(mc0, mc1)))
        r0, r1 = max(0, math.floor(min(mr0, mr1))), min(mh, math.ceil(max(mr0, mr1)))
        lh, lw = max(1, min(h, r1 - r0)), max(1, min(w, c1 - c0))
        mwin = RioWindow(c0, r0, max(1, c1 - c0), max(1, r1 - r0))
        ms_lr = np.concatenate([ds.read(window=mwin, out_shape=(ds.count, lh, lw), resampling=Resampling.nearest)
                                for ds in self._ms_ds]).astype(np.float32)
        lr_valid = np.ones((lh, lw), bool)
        if self.ms_nodata is not None:
            lr_valid = ~np.any(ms_lr == np.float32(self.ms_nodata), axis=0)
        lr_valid &= np.all(np.isfinite(ms_lr), axis=0)
        return np.where(lr_valid[None], ms_lr, np.nan)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

DEFAULT_GTIFF_OPTIONS = {"TILED": "YES", "BLOCKXSIZE": "512", "BLOCKYSIZE": "512", "COMPRESS": "DEFLATE",
                         "BIGTIFF": "IF_SAFER", "NUM_THREADS": GDAL_THREADS}
DEFAULT_COG_OPTIONS = {"BLOCKSIZE": "512", "COMPRESS": "DEFLATE", "PREDICTOR": "YES", "BIGTIFF": "IF_SAFER",
                       "NUM_THREADS": GDAL_THREADS, "OVERVIEWS": "AUTO", "OVERVIEW_RESAMPLING": "AVERAGE"}

_COLOR = {"red": ColorInterp.red, "green": ColorInterp.green, "blue": ColorInterp.blue}


def parse_creation_options(items: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> dict (keys upper-cased), as ``gdal_translate -co``."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"creation option '{item}' is not KEY=VALUE", fix="e.g. --co COMPRESS=ZSTD")
        k, v = item.split("=", 1)
        out[k.strip().upper()] = v.strip()
    return out


def check_destination(path: str | Path, overwrite: bool) -> Path:
    """Refuse to write where we must not: existing file without overwrite, missing/read-only folder."""
    p = Path(path)
    if p.is_dir():
        raise OutputError("output path is a folder", path=p, fix="give a file name, e.g. out.tif")
    if p.exists() and not overwrite:
        raise OutputError("output file exists", path=p, fix="pass --overwrite to replace it, or choose another name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise OutputError("output folder does not exist", path=p, fix=f"create {parent} first")
    if not os.access(parent, os.W_OK):
        raise OutputError("output folder is not writable", path=p, fix="choose a folder you can write to")
    return p


def _gtiff_options(fmt: str, user_options: dict[str, str], dtype: str) -> dict[str, str]:
    """Creation options of the GeoTIFF that :class:`OutputWriter` writes (the COG step's input for COG)."""
    opts = dict(DEFAULT_GTIFF_OPTIONS)
    opts["NUM_THREADS"] = GDAL_ENV["GDAL_NUM_THREADS"]  # batch workers lower it
    opts["PREDICTOR"] = "3" if np.dtype(dtype).kind == "f" else "2"
    if fmt == "GTiff":
        opts.update(user_options)
    else:
        opts.update({"COMPRESS": "DEFLATE", "ZLEVEL": "1"})  # fast intermediate; COG step recompresses
    return opts


def output_block_size(fmt: str, creation_options: dict[str, str] | None, width: int,
                      height: int) -> tuple[int, int] | None:
    """(rows, columns) of the blocks :class:`OutputWriter` will write, from the creation options:
    the tile size of a tiled output (the default), else one full-width row (strips). ``None`` when
    the options do not say it plainly (a size that is not a positive integer: GDAL decides, or
    refuses it when the file is created)."""
    opts = _gtiff_options("COG" if fmt.upper() == "COG" else "GTiff", dict(creation_options or {}), "uint8")
    if opts.get("TILED", "YES").upper() not in ("YES", "TRUE", "1"):
        return 1, width
    try:
        rows, cols = int(opts.get("BLOCKYSIZE", 512)), int(opts.get("BLOCKXSIZE", 512))
    except ValueError:
        return None
    if rows <= 0 or cols <= 0:
        return None
    return min(rows, height), min(cols, width)


@dataclass
class _Stripe:
    """Write state of a column range of the output: next row, rows buffered towards a block row."""

    col0: int
    width: int
    row0: int = 0
    n: int = 0
    buf: np.ndarray | None = None


class OutputWriter:
    """Writes an output raster to a temporary file beside the destination; renames it at the end.

    Rows arrive in order through :meth:`write_rows`; they are buffered into whole block rows so
    that GDAL compresses each block once. On any exception (Ctrl-C included) the temporary file is
    removed and nothing appears at the destination.
    """

    def __init__(self, path: str | Path, *, width: int, height: int, count: int, dtype: str, crs, transform: Affine,
                 nodata: float | None, fmt: str = "GTiff", creation_options: dict[str, str] | None = None,
                 overwrite: bool = False, tags: dict[str, str] | None = None,
                 band_descriptions: Sequence[str] | None = None, band_colors: Sequence[str] | None = None,
                 background: bool = True):
        fmt_u = fmt.upper()
        if fmt_u not in ("GTIFF", "COG"):
            raise UsageError(f"unknown output format '{fmt}'", fix="use --of GTiff or --of COG")
        self.dest = check_destination(path, overwrite)
        self.fmt = "COG" if fmt_u == "COG" else "GTiff"
        self.width, self.height, self.count, self.dtype = width, height, count, dtype
        self.crs, self.transform, self.nodata = crs, transform, nodata
        self.user_options = dict(creation_options or {})
        self.tags = dict(tags or {})
        self.band_descriptions = list(band_descriptions or [])
        self.band_colors = list(band_colors or [])
        self._tmp: Path | None = None
        self._ds = None
        self._pool = None
        self._pending: list = []  # (future, buffer) of block rows being compressed in the background
        self._spare: list[np.ndarray] = []  # block-row buffers back from the writer thread, for reuse
        #: seconds the writer thread spent in GDAL (compression and I/O)
        self.busy_s = 0.0
        #: compress and write in a background thread (False: in the caller's thread)
        self.background = background
        #: column ranges being written, by first column (one, the whole width, unless the caller
        #: writes vertical stripes)
        self._stripes: dict[int, _Stripe] = {}
        self._block: tuple[int, int] | None = None  # the created file's block shape (rows, columns)
        self._env = rasterio.Env(**GDAL_ENV)

    # The temporary name is hidden, beside the destination (same file system: atomic rename).
    def _tmp_name(self, suffix: str) -> Path:
        return self.dest.with_name(f".{self.dest.name}.{os.getpid()}.{suffix}.tif")

    def _gtiff_options(self) -> dict[str, str]:
        return _gtiff_options(self.fmt, self.user_options, self.dtype)

    @property
    def block_height(self) -> int:
        """Height of the output's blocks (the file's own once created): rows are buffered into them."""
        return self._block_shape()[0]

    @property
    def block_width(self) -> int:
        """Width of the output's blocks: a stripe written on its own must start on a multiple of it."""
        return self._block_shape()[1]

    def _block_shape(self) -> tuple[int, int]:
        if self._block is not None:
            return self._block
        return output_block_size(self.fmt, self.user_options, self.width, self.height) or (1, self.width)

    def __enter__(self) -> OutputWriter:
        self._env.__enter__()
        self._tmp = self._tmp_name("partial")
        profile = dict(driver="GTiff", width=self.width, height=self.height, count=self.count, dtype=self.dtype,
                       crs=self.crs, transform=self.transform, nodata=self.nodata, **self._gtiff_options())
        try:
            with _gdal_quiet(), _GdalWarnings() as gw:
                self._ds = rasterio.open(self._tmp, "w", **profile)
            bad = gw.option_problems()
            if bad:
                raise ValueError(bad[0])
        except Exception as e:  # bad --co values end up here
            if self._ds is not None:
                self._ds.close()
                self._ds = None
            self._cleanup()
            raise UsageError(f"GDAL refused the output settings: {str(e).splitlines()[0][:160]}", path=self.dest,
                             fix="check the --co options") from None
        rows, cols = self._ds.block_shapes[0]
        self._block = (int(rows), int(cols))
        from concurrent.futures import ThreadPoolExecutor

        # GDAL compresses (and rasterio releases the GIL) in this thread while the next tiles are computed
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pansharpen-writer")
        return self

    def _stripe(self, col0: int, width: int) -> _Stripe:
        st = self._stripes.get(col0)
        if st is None:
            if col0 < 0 or col0 + width > self.width or width <= 0:
                raise ValueError(f"columns [{col0}, {col0 + width}) are outside the raster's {self.width}")
            if width < self.width and col0 % self.block_width:
                raise ValueError(f"a stripe must start on a block boundary ({self.block_width} px), not at {col0}")
            st = self._stripes[col0] = _Stripe(col0, width)
        elif st.width != width:
            raise ValueError(f"the stripe at column {col0} is {st.width} px wide, not {width}")
        return st

    def write_rows(self, row0: int, block: np.ndarray, *, owned: bool = False, col0: int = 0) -> None:
        """Write ``block`` (count, n, w) at canvas row ``row0``, columns ``col0`` to ``col0 + w``.

        Rows of the same column range must arrive in order. Several column ranges (vertical
        stripes, each starting on a block boundary) may be written interleaved: each is buffered
        into whole block rows of its own, so that GDAL compresses every block once.
        ``owned``: the caller never touches ``block`` again, so a block that is exactly one whole
        block row (or the last rows) is handed to the writer thread as it is, without a copy."""
        n, w = block.shape[1], block.shape[2]
        st = self._stripe(col0, w)
        if row0 != st.row0 + st.n:
            raise RuntimeError("rows must be written in order")
        bh = min(self.block_height, self.height)
        if (owned and st.n == 0 and (n == bh or row0 + n == self.height) and n <= bh
                and block.flags.c_contiguous and block.dtype == np.dtype(self.dtype)):
            self._submit(st, block, n, own_buffer=False)
            return
        i = 0
        while i < n:
            if st.buf is None:
                st.buf = self._new_buffer(bh, w)
            take = min(bh - st.n, n - i)
            st.buf[:, st.n:st.n + take] = block[:, i:i + take]
            st.n += take
            i += take
            if st.n == bh:
                self._flush(st)

    def _new_buffer(self, rows: int, width: int) -> np.ndarray:
        for k, b in enumerate(self._spare):
            if b.shape == (self.count, rows, width):
                return self._spare.pop(k)
        return np.empty((self.count, rows, width), dtype=self.dtype)

    def _flush(self, st: _Stripe) -> None:
        """Hand a stripe's filled (or last, partial) block row to the writer thread."""
        if st.n == 0:
            return
        assert st.buf is not None
        self._submit(st, st.buf, st.n, own_buffer=True)

    def _submit(self, st: _Stripe, buf: np.ndarray, n: int, *, own_buffer: bool) -> None:
        """Write rows ``buf[:, :n]`` at the stripe's next row, in the writer thread (at most two in flight)."""
        assert self._ds is not None and self._pool is not None
        window = RioWindow(st.col0, st.row0, buf.shape[2], n)
        if own_buffer:
            st.buf = None  # the next rows go to a fresh (or recycled) buffer
        if not self.background:  # in the caller's thread (for measuring what the writer thread gains)
            self._write(buf[:, :n], window)
            if own_buffer:
                self._spare.append(buf)
        else:
            fut = self._pool.submit(self._write, buf[:, :n], window)
            self._pending.append((fut, buf if own_buffer else None))
            while len(self._pending) > 2:
                self._retire()
        st.row0 += n
        st.n = 0

    def _write(self, data: np.ndarray, window: RioWindow) -> None:
        t = time.perf_counter()
        assert self._ds is not None
        self._ds.write(data, window=window)
        self.busy_s += time.perf_counter() - t

    def _retire(self) -> None:
        fut, buf = self._pending.pop(0)
        fut.result()  # re-raises a write error here
        if buf is not None:
            self._spare.append(buf)

    def _drain(self) -> None:
        try:
            while self._pending:
                self._retire()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _check_complete(self) -> None:
        """Every pixel written: the stripes tile the width and each reached the last row."""
        col = 0
        for c0 in sorted(self._stripes):
            st = self._stripes[c0]
            if c0 != col:
                break
            if st.row0 != self.height:
                raise RuntimeError(f"only {st.row0} of {self.height} rows were written (columns {c0}-{c0 + st.width})")
            col = c0 + st.width
        if self.height and col != self.width:
            raise RuntimeError(f"columns from {col} of {self.width} were not written in full")

    def _finish_metadata(self) -> None:
        ds = self._ds
        assert ds is not None
        ds.update_tags(AREA_OR_POINT="Area", **self.tags)
        for i, name in enumerate(self.band_descriptions[: self.count], start=1):
            if name:
                ds.set_band_description(i, name)
        if self.band_colors and len(self.band_colors) == self.count:
            ci = [_COLOR.get(c, ColorInterp.undefined) for c in self.band_colors]
            if any(c != ColorInterp.undefined for c in ci):
                if ci[0] == ColorInterp.undefined:
                    ci[0] = ColorInterp.gray
                with contextlib.suppress(Exception):
                    ds.colorinterp = ci

    def _cleanup(self) -> None:
        for p in (self._tmp, self._tmp_name("cog") if self._tmp else None):
            if p is not None:
                for q in (p, Path(str(p) + ".aux.xml"), Path(str(p) + ".ovr")):
                    with contextlib.suppress(FileNotFoundError):
                        q.unlink()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for st in self._stripes.values():
                    self._flush(st)
            self._drain()
            if exc_type is None:
                self._check_complete()
                self._finish_metadata()
            if self._ds is not None:
                self._ds.close()
                self._ds = None
            if exc_type is not None:
                return
            assert self._tmp is not None
            final = self._tmp
            if self.fmt == "COG":
                final = self._tmp_name("cog")
                opts = dict(DEFAULT_COG_OPTIONS)
                opts["NUM_THREADS"] = GDAL_ENV["GDAL_NUM_THREADS"]
                if np.dtype(self.dtype).kind == "f":
                    opts["PREDICTOR"] = "YES"
                opts.update(self.user_options)
                try:
                    with _gdal_quiet(), _GdalWarnings() as gw:
                        rasterio.shutil.copy(self._tmp, final, driver="COG", **opts)
                    bad = gw.option_problems()
                    if bad:
                        raise ValueError(bad[0])
                except Exception as e:
                    raise UsageError(f"GDAL refused the COG settings: {str(e).splitlines()[0][:160]}",
                                     path=self.dest, fix="check the --co options") from None
            aux = Path(str(final) + ".aux.xml")
            if aux.exists():  # PAM sidecar (should not happen with GTiff); keep it with the file
                os.replace(aux, str(self.dest) + ".aux.xml")
            os.replace(final, self.dest)
        finally:
            # the temporary files never outlive the writer, whatever happened
            self._cleanup()
            with contextlib.suppress(Exception):
                self._env.__exit__(None, None, None)


def dtype_range(dtype: str) -> tuple[float, float]:
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    if dt.kind == "f":
        info = np.finfo(dt)
        return float(info.min), float(info.max)
    raise RadiometryError(f"unsupported data type {dtype}")


def check_dtype(dtype: str) -> str:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise UsageError(f"unknown data type '{dtype}'",
                         fix="use uint8, uint16, int16, uint32, int32, float32 or float64") from None
    if dt.kind not in "uif" or dt.itemsize > 8 or dt == np.int8:
        raise UsageError(f"unsupported output data type '{dtype}'",
                         fix="use uint8, uint16, int16, uint32, int32, float32 or float64")
    return dt.name


def write_array(path: str | Path, arr: np.ndarray, transform, *, crs: str = "EPSG:32633",
                bit_depth: int | None = None, nodata: float | None = None) -> None:
    """Write a (B, H, W) array as a plain GeoTIFF (evaluation harness, tests, tools)."""
    t = transform if isinstance(transform, Affine) else Affine(*transform)
    with _gdal_quiet(), rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                                      count=arr.shape[0], dtype=arr.dtype, crs=crs, transform=t,
                                      nodata=nodata) as ds:
        ds.write(arr)
        if bit_depth:
            ds.update_tags(BIT_DEPTH=str(bit_depth))


def read_full(path: str | Path, band: int | None = None) -> np.ndarray:
    """Read a whole (small) raster; for tests, eval and tools."""
    with rasterio.open(path) as ds:
        return ds.read(band) if band else ds.read()


__all__ = [
    "Alignment", "DataError", "MSInfo", "OutputWriter", "RasterInfo", "SceneReader", "align", "check_destination",
    "check_dtype", "dtype_range", "inspect_ms", "inspect_raster", "parse_creation_options", "read_full",
]
