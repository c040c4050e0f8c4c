"""Training deep pansharpening networks: reduced-resolution data sets and a small, resumable training loop.

Library only (no typer/rich); ``pansharpen train`` (:mod:`pansharpen_cli.cli_train`) is a thin layer over it.

Data
----
A training set is a list of :class:`Region`: co-registered arrays on the network's input grid, already
divided by the normalisation ``scale`` (a constant, e.g. 2047 for 11-bit data, 65535 for 16-bit):

* ``pan`` ``(H, W)``, ``lms`` ``(B, H, W)`` (the low-resolution MS upsampled with the toolbox's 23-tap
  interpolator), ``ms`` ``(B, H/r, W/r)`` (low-resolution MS; LR pixel ``k`` sits on HR pixel
  ``r*k + r//2``, the toolbox phase of :func:`~pansharpen_cli.filters.decimate`), ``gt`` ``(B, H, W)``
  (the reference) and ``valid`` ``(H, W)`` (pixels a training patch may contain).

Builders:

* :func:`wald_region`: Wald's protocol on a real PAN/MS pair (the toolbox's ``resize_images``:
  MS MTF-filtered with the sensor's Nyquist gains and decimated, PAN bicubic-reduced; the original MS
  is the reference). :func:`read_pair` reads a GeoTIFF pair on the toolbox phase, with its nodata mask;
  :func:`scene_regions` does both for ``--scenes`` arguments (``PAN.tif,MS.tif`` or a product path).
* :func:`synthetic_region`: a reference MS at PAN resolution with a synthetic PAN (fixed weighted sum
  of the reference bands) and the MS MTF-degraded by the ratio (used for the shipped VHR models).
* :func:`mat_dir_regions`: NBU-style folders (``MS_256/*.mat`` ``imgMS`` + ``PAN_1024/*.mat``
  ``imgPAN``, full-resolution pairs), through Wald's protocol.
* :class:`H5Patches`: PanCollection ``.h5`` files (keys ``gt``, ``ms``, ``lms``, ``pan``, ``(N, C, H, W)``,
  reduced-resolution patches already), read lazily.

Training patches (:class:`RegionPatches`) lie on a grid (stride ``patch/2``) of every region, each epoch
jittered and augmented with the 8 flips/rotations. Flipping an axis moves the patch one pixel so that
the LR/HR phase (``r*k + r//2``) is kept exactly, which networks that take the LR MS need.

Determinism: the weights depend only on the data, the :class:`TrainConfig` and the number of torch
threads. The patch order and augmentation of epoch ``e`` come from ``numpy.random.default_rng([seed, e])``,
so a run resumed from the checkpoint of epoch ``e`` (:func:`load_checkpoint`) produces the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError, InputNotFoundError, ModelError, UsageError
from .filters import decimate, interp23tap, mtf_filter, mtf_kernels, wald_degrade
from .models import PansharpenNet, build, resolve_arch
from .models.base import ArchSpec

__all__ = [
    "CHECKPOINT_FORMAT", "H5Patches", "Region", "RegionPatches", "TrainConfig", "TrainEvent", "TrainResult",
    "evaluate", "export_model", "interp_lms", "load_checkpoint", "mat_dir_regions", "new_model", "predict",
    "read_pair", "save_safetensors", "scene_regions", "split_rows", "synthetic_region", "train", "wald_region",
]

CHECKPOINT_FORMAT = "pansharpen-train-checkpoint"
CHECKPOINT_VERSION = 1
#: reflection padding (LR pixels) around a region before the 23-tap interpolation (its borders are circular)
_LMS_PAD = 12
#: the layer producing the bands, scaled down at initialisation so that a new network starts close to ``lms``
_HEADS = {"fusionnet": "conv3", "dicnn": "conv3", "pannet": "conv3", "pnn": "conv3",
          "bwnet_fusionnet": "to_output", "bwnet_lagconv": "to_output", "bwnet_lgpnet": "to_output"}
#: validation metrics reported each epoch
VAL_METRICS = ("Q2n", "SAM", "ERGAS")


# ----------------------------------------------------------------------------------------------------
# regions
# ----------------------------------------------------------------------------------------------------


@dataclass
class Region:
    """Co-registered training arrays on the network's input grid, divided by the scale (see module doc)."""

    pan: np.ndarray
    lms: np.ndarray
    ms: np.ndarray
    gt: np.ndarray
    ratio: int
    valid: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        b, h, w = self.gt.shape
        r = self.ratio
        if self.pan.shape != (h, w) or self.lms.shape != (b, h, w):
            raise DataError(f"region {self.name}: pan {self.pan.shape} / lms {self.lms.shape} do not match gt "
                            f"{self.gt.shape}")
        if h % r or w % r or self.ms.shape != (b, h // r, w // r):
            raise DataError(f"region {self.name}: ms {self.ms.shape} is not gt {self.gt.shape} reduced by {r}")
        if self.valid is not None and self.valid.shape != (h, w):
            raise DataError(f"region {self.name}: valid mask {self.valid.shape} does not match {(h, w)}")

    @property
    def bands(self) -> int:
        return int(self.gt.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.gt.shape[1]), int(self.gt.shape[2])


def interp_lms(ms_lr: np.ndarray, ratio: int) -> np.ndarray:
    """The toolbox's 23-tap interpolation of ``ms_lr`` ``(B, h, w)``, with symmetric (not circular) borders."""
    p = min(_LMS_PAD, ms_lr.shape[-1] - 1, ms_lr.shape[-2] - 1)
    if p <= 0:
        return interp23tap(ms_lr, ratio)
    padded = np.pad(ms_lr, ((0, 0), (p, p), (p, p)), mode="symmetric")
    up = interp23tap(padded, ratio)
    q = p * ratio
    return up[:, q:-q, q:-q]


def _fill_invalid(a: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """``a`` ``(B, H, W)`` with the ``bad`` ``(H, W)`` pixels replaced by each band's median of the good ones."""
    if not bad.any():
        return a
    out = a.copy()
    for i in range(a.shape[0]):
        good = a[i][~bad]
        out[i][bad] = float(np.median(good)) if good.size else 0.0
    return out


def _crop_to_multiple(pan: np.ndarray, ms: np.ndarray, ratio: int, valid: np.ndarray | None):
    """Crop the MS (and the PAN with it) to whole multiples of ``ratio`` LR pixels."""
    b, h, w = ms.shape
    h2, w2 = h - h % ratio, w - w % ratio
    if h2 < 2 * ratio or w2 < 2 * ratio:
        raise DataError(f"scene too small for ratio {ratio}: MS {h}x{w}")
    rp = pan.shape[0] // h
    pan = pan[: h2 * rp, : w2 * rp]
    ms = ms[:, :h2, :w2]
    if valid is not None:
        valid = valid[:h2, :w2]
    return pan, ms, valid


def wald_region(pan: np.ndarray, ms: np.ndarray, ratio: int, ms_gnyq: Sequence[float], *, scale: float,
                valid: np.ndarray | None = None, name: str = "") -> Region:
    """Wald's reduced-resolution protocol on a full-resolution pair (the toolbox's ``resize_images``).

    ``pan`` ``(r*h, r*w)`` and ``ms`` ``(B, h, w)`` in digital numbers, the MS pixel ``k`` centred on PAN
    pixel ``r*k + r//2`` (:func:`read_pair` crops real pairs that way); ``valid`` ``(h, w)`` marks MS pixels
    whose MS and PAN values are all valid. The MS is cropped to multiples of ``ratio``; invalid pixels are
    filled with band medians before filtering and, dilated by ``2*ratio`` pixels (the filters' support),
    excluded from training patches. Returns a :class:`Region` on the MS grid: ``pan`` = PAN reduced by
    ``ratio`` (MATLAB ``imresize`` bicubic), ``ms`` = MS MTF-filtered and decimated, ``lms`` its 23-tap
    interpolation, ``gt`` = the original MS; all divided by ``scale``.
    """
    from scipy import ndimage

    ms = np.asarray(ms, dtype=np.float64)
    pan = np.asarray(pan, dtype=np.float64)
    if ms.ndim != 3 or pan.ndim != 2:
        raise DataError(f"wald_region: pan must be (H, W) and ms (B, h, w), got {pan.shape} and {ms.shape}")
    b, h, w = ms.shape
    if pan.shape != (ratio * h, ratio * w):
        raise DataError(f"wald_region: PAN {pan.shape} must be {ratio}x the MS {(h, w)}")
    pan, ms, valid = _crop_to_multiple(pan, ms, ratio, valid)
    b, h, w = ms.shape
    if valid is not None and not valid.all():
        bad = ~valid
        if bad.all():
            raise DataError(f"{name or 'scene'}: no valid pixel")
        ms = _fill_invalid(ms, bad)
        bad_pan = np.kron(bad, np.ones((ratio, ratio), dtype=bool))
        pan = _fill_invalid(pan[None], bad_pan)[0]
        valid = ~ndimage.binary_dilation(bad, structure=np.ones((3, 3), bool), iterations=2 * ratio)
    g = list(ms_gnyq) if len(ms_gnyq) > 1 else list(ms_gnyq) * b
    pan_lr, ms_lr = wald_degrade(pan, ms, g, 0.15, ratio)
    lms = interp_lms(ms_lr, ratio)
    s = float(scale)
    return Region(pan=(pan_lr / s).astype(np.float32), lms=(lms / s).astype(np.float32),
                  ms=(ms_lr / s).astype(np.float32), gt=(ms / s).astype(np.float32), ratio=ratio,
                  valid=None if valid is None or valid.all() else valid, name=name)


def synthetic_region(ref: np.ndarray, pan_weights: Sequence[float], ratio: int, ms_gnyq: Sequence[float], *,
                     scale: float, name: str = "") -> Region:
    """A simulated pair with a known reference at PAN resolution.

    ``ref`` ``(B, H, W)`` (digital numbers) is the reference; the PAN is ``sum_b w_b ref_b`` (a fixed
    weighted sum: a PAN whose spectral response is covered by the MS bands) and the MS is ``ref``
    MTF-filtered with the gains ``ms_gnyq`` and decimated by ``ratio`` (phase ``ratio//2``), i.e. the MS
    half of Wald's protocol. ``H``, ``W`` are cropped to multiples of ``ratio``.
    """
    ref = np.asarray(ref, dtype=np.float64)
    b, h, w = ref.shape
    if len(pan_weights) != b:
        raise DataError(f"{len(pan_weights)} PAN weights for {b} bands")
    h2, w2 = h - h % ratio, w - w % ratio
    ref = ref[:, :h2, :w2]
    pan = np.tensordot(np.asarray(pan_weights, dtype=np.float64), ref, axes=1)
    g = list(ms_gnyq) if len(ms_gnyq) > 1 else list(ms_gnyq) * b
    ms_lr = np.ascontiguousarray(decimate(mtf_filter(ref, mtf_kernels(g, ratio)), ratio))
    lms = interp_lms(ms_lr, ratio)
    s = float(scale)
    return Region(pan=(pan / s).astype(np.float32), lms=(lms / s).astype(np.float32),
                  ms=(ms_lr / s).astype(np.float32), gt=(ref / s).astype(np.float32), ratio=ratio, name=name)


def split_rows(pan: np.ndarray, ms: np.ndarray, valid: np.ndarray | None, fraction: float, ratio: int):
    """Split a full-resolution pair by rows into ``(first, last)``, the last holding ``fraction`` of the rows.

    The cut falls on a multiple of ``ratio`` MS rows so that both parts keep the toolbox phase; each part is
    ``(pan, ms, valid)`` and is degraded on its own (no filter crosses the cut). ``fraction <= 0`` gives
    ``(whole, None)``.
    """
    if fraction <= 0:
        return (pan, ms, valid), None
    h = ms.shape[1]
    rp = pan.shape[0] // h
    cut = int(round(h * (1.0 - fraction) / ratio)) * ratio
    if cut < 2 * ratio or h - cut < 2 * ratio:
        raise UsageError(f"--val-split {fraction:g} leaves too few rows in one part of a {h}-row scene",
                         fix="use a larger scene or another --val-split")
    first = (pan[: cut * rp], ms[:, :cut], None if valid is None else valid[:cut])
    last = (pan[cut * rp:], ms[:, cut:], None if valid is None else valid[cut:])
    return first, last


# ----------------------------------------------------------------------------------------------------
# reading real scenes
# ----------------------------------------------------------------------------------------------------


def read_pair(pan_path: str | Path, ms_paths: Sequence[str | Path], *, ratio: int | None = None,
              nodata: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Read a PAN/MS GeoTIFF pair cropped so that MS pixel ``k`` is centred on PAN pixel ``r*k + r//2``.

    Returns ``(pan (r*h, r*w), ms (B, h, w), valid (h, w), r)`` as float64 digital numbers. ``valid`` is
    False where any MS band or any of the ``r x r`` PAN pixels is nodata (the files' nodata, else
    ``nodata``) or not finite. Grids must share the CRS and have an integer ratio; corner-aligned grids
    (VHR products) are rounded to the nearest phase (half a PAN pixel off).
    """
    import rasterio
    from rasterio.windows import Window

    from .raster import align, inspect_ms, inspect_raster

    a = align(inspect_raster(pan_path, "PAN"), inspect_ms([str(p) for p in ms_paths]), ratio=ratio)
    if a.reprojected:
        raise UsageError("PAN and MS have different CRSs", path=a.ms.first.path,
                         fix="reproject the MS onto the PAN's CRS first (gdalwarp)")
    rx, ry = a.ratio
    r = int(round(rx))
    if abs(rx - r) > 1e-3 or abs(ry - r) > 1e-3 or r < 2:
        raise UsageError(f"PAN/MS ratio {rx:.4g} x {ry:.4g} is not an integer >= 2", path=a.ms.first.path,
                         fix="resample the MS to an integer multiple of the PAN pixel first")
    if ratio is not None and int(ratio) != r:
        raise UsageError(f"--ratio {ratio} contradicts the scene's ratio {r}", path=a.ms.first.path)
    ox, oy = a.ms_offset_pan_px()
    offs = []
    for o in (oy, ox):
        c0 = o + 0.5 * r - 0.5  # PAN index (centres at integers) of the first MS pixel's centre
        offs.append(int(math.floor(c0 - r // 2 + 0.5)))
    off_r, off_c = offs
    mh, mw = a.ms_shape
    k0r, k0c = max(0, -(off_r // r)), max(0, -(off_c // r))
    k1r = min(mh, (a.pan.height - off_r) // r)
    k1c = min(mw, (a.pan.width - off_c) // r)
    if k1r - k0r < 4 or k1c - k0c < 4:
        raise DataError("PAN and MS overlap too little to train on", path=a.ms.first.path)
    with rasterio.open(a.pan.path) as ds:
        pan = ds.read(1, window=Window(off_c + r * k0c, off_r + r * k0r, r * (k1c - k0c), r * (k1r - k0r)))
        pan_nd = ds.nodata if ds.nodata is not None else nodata
    bands, ms_bad = [], np.zeros((k1r - k0r, k1c - k0c), bool)
    for p in a.ms.paths:
        with rasterio.open(p) as ds:
            v = ds.read(window=Window(k0c, k0r, k1c - k0c, k1r - k0r)).astype(np.float64)
            nd = ds.nodata if ds.nodata is not None else nodata
        if nd is not None:
            ms_bad |= np.any(v == nd, axis=0)
        ms_bad |= ~np.all(np.isfinite(v), axis=0)
        bands.append(v)
    ms = np.concatenate(bands, axis=0)
    pan = pan.astype(np.float64)
    pan_bad = ~np.isfinite(pan)
    if pan_nd is not None:
        pan_bad |= pan == pan_nd
    h, w = ms.shape[1:]
    pan_bad_lr = pan_bad.reshape(h, r, w, r).any(axis=(1, 3))
    valid = ~(ms_bad | pan_bad_lr)
    return pan, ms, valid, r


def _parse_scene_arg(spec: str, bands: str | None):
    """``PAN.tif,MS.tif[,MS2.tif...]`` or a product path -> (pan, ms paths, sensor key, nodata, label)."""
    parts = [s.strip() for s in str(spec).split(",") if s.strip()]
    if len(parts) >= 2:
        for p in parts:
            if not Path(p).expanduser().is_file():
                raise InputNotFoundError("no such file", path=p, fix="give --scenes PAN.tif,MS.tif pairs")
        return Path(parts[0]).expanduser(), [Path(p).expanduser() for p in parts[1:]], None, None, spec
    from .products import resolve_scene

    sp = resolve_scene(parts[0] if parts else spec, bands=bands)
    return sp.pan, list(sp.ms), sp.sensor, sp.nodata, sp.source


GainsSpec = Sequence[float] | Callable[[int], Sequence[float]] | None


def _gains(spec: GainsSpec, n: int) -> list[float]:
    """MTF gains for ``n`` bands: a list (one value = all bands), ``spec(n)``, or the generic 0.29."""
    from .sensors import GENERIC_MS_GNYQ

    g = list(spec(n)) if callable(spec) else ([GENERIC_MS_GNYQ] * n if spec is None else list(spec))
    if len(g) == 1:
        g = g * n
    if len(g) != n:
        raise UsageError(f"{len(g)} MTF gains for {n} MS bands", fix="pass the right --sensor (or generic)")
    return g


def scene_regions(scenes: Sequence[str], *, ratio: int | None, ms_gnyq: GainsSpec, scale: float,
                  val_split: float = 0.0, bands: str | None = None, n_bands: int | None = None,
                  nodata: float | None = None) -> tuple[list[Region], list[Region], dict[str, Any]]:
    """Training and validation regions from ``--scenes`` arguments by Wald's protocol.

    Each scene is split by rows (:func:`split_rows`, the last ``val_split`` for validation) before
    degradation. ``ms_gnyq``: the MS MTF gains, a list, a function of the band count, or None for the
    generic 0.29. Returns ``(train, val, info)``; ``info`` has the scenes' ``ratio``, ``bands``, the
    ``sensor`` key a product named (or None) and the ``sources``.
    """
    train_r: list[Region] = []
    val_r: list[Region] = []
    info: dict[str, Any] = {"ratio": ratio, "bands": n_bands, "sensor": None, "sources": []}
    for spec in scenes:
        pan_p, ms_p, sensor, nd, label = _parse_scene_arg(spec, bands)
        pan, ms, valid, r = read_pair(pan_p, ms_p, ratio=info["ratio"], nodata=nodata if nodata is not None else nd)
        if info["bands"] is not None and ms.shape[0] != info["bands"]:
            raise UsageError(f"scene has {ms.shape[0]} MS bands, expected {info['bands']}", path=ms_p[0],
                             fix="give scenes with the same bands (see --bands)")
        info.update(ratio=r, bands=ms.shape[0], sensor=info["sensor"] or sensor)
        info["sources"].append(str(label))
        g = _gains(ms_gnyq, ms.shape[0])
        first, last = split_rows(pan, ms, valid, val_split, r * r)
        name = Path(pan_p).name
        train_r.append(wald_region(*first[:2], r, g, scale=scale, valid=first[2], name=name))
        if last is not None:
            val_r.append(wald_region(*last[:2], r, g, scale=scale, valid=last[2], name=name + " (val)"))
    return train_r, val_r, info


def _mat_array(path: Path, keys: Sequence[str]) -> np.ndarray:
    """The first of ``keys`` in a MATLAB file (v5 with scipy, v7.3 with h5py; v7.3 axes are transposed)."""
    try:
        from scipy.io import loadmat

        d = loadmat(str(path))
        for k in keys:
            if k in d:
                return np.asarray(d[k], dtype=np.float64)
    except NotImplementedError:  # v7.3 = HDF5
        import h5py

        with h5py.File(path, "r") as f:
            for k in keys:
                if k in f:
                    return np.asarray(f[k], dtype=np.float64).T
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read MATLAB file ({exc})", path=path) from None
    raise DataError(f"none of the keys {', '.join(keys)} in this .mat file", path=path)


def mat_dir_regions(folder: str | Path, *, ms_gnyq: GainsSpec, ratio: int, scale: float,
                    val_split: float = 0.0) -> tuple[list[Region], list[Region]]:
    """NBU-style data: ``folder/MS_256/*.mat`` (``imgMS``/``I_MS``, ``(h, w, B)``) paired by file name with
    ``folder/PAN_1024/*.mat`` (``imgPAN``/``I_PAN``/``block``, ``(r*h, r*w)``), full-resolution pairs taken
    through Wald's protocol (:func:`wald_region`; ``ms_gnyq`` as in :func:`scene_regions`). Any other
    ``MS*``/``PAN*`` folder pair is accepted too.
    The last ``val_split`` of the files (sorted by name) are for validation.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputNotFoundError("no such folder", path=root, fix="give --mat-dir the folder holding MS_*/PAN_*")
    ms_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name.upper().startswith("MS"))
    pan_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name.upper().startswith("PAN"))
    if not ms_dirs or not pan_dirs:
        raise DataError("no MS_*/PAN_* sub-folders", path=root, fix="use the NBU layout: MS_256/ and PAN_1024/")
    names = sorted(p.name for p in ms_dirs[0].glob("*.mat") if (pan_dirs[0] / p.name).is_file())
    if not names:
        raise DataError("no .mat file present in both MS and PAN folders", path=root)
    n_val = int(round(len(names) * val_split)) if val_split > 0 else 0
    if val_split > 0 and (n_val < 1 or n_val >= len(names)):
        raise UsageError(f"--val-split {val_split:g} of {len(names)} files leaves one part empty")
    train_r: list[Region] = []
    val_r: list[Region] = []
    for i, n in enumerate(names):
        ms = _mat_array(ms_dirs[0] / n, ("imgMS", "I_MS", "ms", "MS"))
        pan = _mat_array(pan_dirs[0] / n, ("imgPAN", "I_PAN", "pan", "PAN", "block"))
        ms = ms[..., None] if ms.ndim == 2 else ms
        ms = np.moveaxis(ms, -1, 0)
        pan = pan[..., 0] if pan.ndim == 3 else pan
        reg = wald_region(pan, ms, ratio, _gains(ms_gnyq, ms.shape[0]), scale=scale, name=n)
        (val_r if i >= len(names) - n_val else train_r).append(reg)
    return train_r, val_r


# ----------------------------------------------------------------------------------------------------
# patches
# ----------------------------------------------------------------------------------------------------

Batch = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _crop(src: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], y: int, x: int, p: int, r: int,
          t: bool, fy: bool, fx: bool, shift_ok: tuple[bool, bool]) -> Batch:
    """A ``p x p`` patch at ``(y, x)`` (multiples of ``r``), transposed/flipped.

    Flipping an axis maps LR pixel ``k`` to HR position ``p - 1 - (r*k + r//2)``, off the toolbox phase by
    one pixel: the HR window is moved by +1 along that axis (``shift_ok`` says the source has the pixel)
    so that the flipped LR pixels again sit on ``r*k' + r//2``. Without that margin the axis is not flipped.
    """
    pan, lms, ms, gt = src
    # the 8 transforms = optional row flip, optional column flip (source frame), then optional transpose
    flip_src_y = fy and shift_ok[0]
    flip_src_x = fx and shift_ok[1]
    dy, dx = int(flip_src_y), int(flip_src_x)
    q = p // r
    k, m = y // r, x // r
    a = (pan[y + dy:y + dy + p, x + dx:x + dx + p], lms[:, y + dy:y + dy + p, x + dx:x + dx + p],
         ms[:, k:k + q, m:m + q], gt[:, y + dy:y + dy + p, x + dx:x + dx + p])
    if flip_src_y:
        a = tuple(v[..., ::-1, :] for v in a)
    if flip_src_x:
        a = tuple(v[..., :, ::-1] for v in a)
    if t:
        a = tuple(np.swapaxes(v, -1, -2) for v in a)
    return a  # type: ignore[return-value]


class RegionPatches:
    """Training patches from in-memory :class:`Region` s (see the module doc).

    Positions: every region's grid of ``patch x patch`` windows with stride ``patch//2`` (multiples of the
    ratio) that contain only valid pixels, plus one pixel of margin where the region has it. Each epoch
    visits them in a random order, each moved by a random jitter of up to half the stride (kept only if
    the moved window is valid) and transformed by one of the 8 flips/rotations (``augment``).
    """

    def __init__(self, regions: Sequence[Region], patch: int, ratio: int, *, augment: bool = True) -> None:
        if not regions:
            raise DataError("no training data")
        self.regions = list(regions)
        self.patch = int(patch)
        self.ratio = int(ratio)
        self.augment = augment
        if self.patch % self.ratio or self.patch < 2 * self.ratio:
            raise UsageError(f"--patch {patch} must be a multiple of the ratio {ratio} (and at least {2 * ratio})")
        self.stride = max(self.ratio, (self.patch // 2) // self.ratio * self.ratio)
        self._integrals = [None if g.valid is None else _integral(~g.valid) for g in self.regions]
        self.positions: list[tuple[int, int, int]] = []
        for i, g in enumerate(self.regions):
            if g.ratio != self.ratio:
                raise DataError(f"region {g.name} has ratio {g.ratio}, expected {self.ratio}")
            h, w = g.shape
            for y in range(0, h - self.patch + 1, self.stride):
                for x in range(0, w - self.patch + 1, self.stride):
                    if self._ok(i, y, x):
                        self.positions.append((i, y, x))
        if not self.positions:
            raise DataError(f"no valid {self.patch}x{self.patch} patch in the training data",
                            fix="use a smaller --patch, or scenes with fewer nodata pixels")

    def _ok(self, i: int, y: int, x: int) -> bool:
        g = self.regions[i]
        h, w = g.shape
        p = self.patch
        if y < 0 or x < 0 or y + p > h or x + p > w:
            return False
        ii = self._integrals[i]
        if ii is None:
            return True
        y1, x1 = min(h, y + p + 1), min(w, x + p + 1)
        return int(ii[y1, x1] - ii[y, x1] - ii[y1, x] + ii[y, x]) == 0

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def bands(self) -> int:
        return self.regions[0].bands

    def epoch(self, rng: np.random.Generator, batch: int, steps: int) -> Iterator[Batch]:
        """``steps`` batches of ``batch`` patches (positions reshuffled whenever they run out)."""
        order = rng.permutation(len(self.positions))
        j = 0
        half = self.stride // 2
        for _ in range(steps):
            items = []
            for _ in range(batch):
                if j == len(order):
                    order, j = rng.permutation(len(self.positions)), 0
                i, y, x = self.positions[order[j]]
                j += 1
                jy, jx = (int(v) * self.ratio for v in rng.integers(-(half // self.ratio), half // self.ratio + 1,
                                                                     size=2)) if half >= self.ratio else (0, 0)
                if (jy or jx) and self._ok(i, y + jy, x + jx):
                    y, x = y + jy, x + jx
                t, fy, fx = (bool(v) for v in rng.integers(0, 2, size=3)) if self.augment else (False,) * 3
                g = self.regions[i]
                h, w = g.shape
                shift_ok = (y + self.patch < h, x + self.patch < w)
                items.append(_crop((g.pan, g.lms, g.ms, g.gt), y, x, self.patch, self.ratio, t, fy, fx, shift_ok))
            yield _stack(items)


def _integral(bad: np.ndarray) -> np.ndarray:
    ii = np.zeros((bad.shape[0] + 1, bad.shape[1] + 1), dtype=np.int64)
    ii[1:, 1:] = np.cumsum(np.cumsum(bad, axis=0), axis=1)
    return ii


def _stack(items: Sequence[Batch]) -> Batch:
    pan = np.stack([np.ascontiguousarray(it[0]) for it in items])[:, None]
    lms, ms, gt = (np.stack([np.ascontiguousarray(it[k]) for it in items]) for k in (1, 2, 3))
    return pan.astype(np.float32), lms.astype(np.float32), ms.astype(np.float32), gt.astype(np.float32)


class H5Patches:
    """PanCollection ``.h5`` data (keys ``gt``, ``ms``, ``lms``, ``pan``, ``(N, C, H, W)``), read lazily.

    Values are divided by ``scale`` (2047 for the 11-bit WorldView/QuickBird sets, 1023 for 10-bit
    GaoFen-2). Samples ``[0, n_train)`` are for training, the rest (``val_split``) for validation.
    Training patches are random ``patch x patch`` crops (positions multiples of the ratio) of the samples,
    augmented like :class:`RegionPatches` (an axis is flipped only when the crop leaves a spare pixel).
    """

    KEYS = ("gt", "ms", "lms", "pan")

    def __init__(self, path: str | Path, *, scale: float, patch: int | None = None, val_split: float = 0.0,
                 augment: bool = True, max_val: int = 64) -> None:
        import h5py

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise InputNotFoundError("no such file", path=self.path, fix="give --h5 a PanCollection .h5 file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"cannot open as HDF5 ({exc})", path=self.path) from None
        missing = [k for k in self.KEYS if k not in self._f]
        if missing:
            raise DataError(f"missing key(s) {', '.join(missing)} (PanCollection files hold gt, ms, lms, pan)",
                            path=self.path)
        gt, ms, lms, pan = (self._f[k] for k in self.KEYS)
        n, b, h, w = gt.shape
        if lms.shape != gt.shape or pan.shape != (n, 1, h, w) or ms.shape[:2] != (n, b):
            raise DataError(f"inconsistent shapes gt {gt.shape}, lms {lms.shape}, pan {pan.shape}, ms {ms.shape}",
                            path=self.path)
        if h % ms.shape[2] or h // ms.shape[2] != w // ms.shape[3]:
            raise DataError(f"ms {ms.shape} is not gt {gt.shape} reduced by an integer ratio", path=self.path)
        self.n, self.b, self.size = n, b, (h, w)
        self.ratio = h // ms.shape[2]
        self.scale = float(scale)
        self.patch = int(patch) if patch else h
        if self.patch % self.ratio or self.patch > min(h, w):
            raise UsageError(f"--patch {self.patch} must be a multiple of {self.ratio} and at most {min(h, w)} "
                             "(the size of the .h5 samples)")
        self.augment = augment
        n_val = int(round(n * val_split)) if val_split > 0 else 0
        if val_split > 0 and (n_val < 1 or n_val >= n):
            raise UsageError(f"--val-split {val_split:g} of {n} samples leaves one part empty")
        self.n_train = n - n_val
        self.val_indices = list(range(self.n_train, n))[:max_val]

    @property
    def bands(self) -> int:
        return self.b

    def __len__(self) -> int:
        return self.n_train

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._f.close()

    def read(self, idx: Sequence[int]) -> Batch:
        """Samples ``idx`` (any order), divided by the scale: ``(pan, lms, ms, gt)``."""
        order = np.argsort(idx)
        srt = [int(idx[i]) for i in order]
        uniq, inv = np.unique(srt, return_inverse=True)
        out = []
        for k in ("pan", "lms", "ms", "gt"):
            a = np.asarray(self._f[k][list(uniq)], dtype=np.float32)[inv]
            back = np.empty_like(a)
            back[order] = a
            out.append(back / np.float32(self.scale))
        return out[0], out[1], out[2], out[3]

    def val_regions(self) -> list[Region]:
        """The validation samples as regions (one per sample)."""
        if not self.val_indices:
            return []
        pan, lms, ms, gt = self.read(self.val_indices)
        return [Region(pan=pan[i, 0], lms=lms[i], ms=ms[i], gt=gt[i], ratio=self.ratio, name=f"h5[{j}]")
                for i, j in enumerate(self.val_indices)]

    def epoch(self, rng: np.random.Generator, batch: int, steps: int) -> Iterator[Batch]:
        order = rng.permutation(self.n_train)
        j = 0
        h, w = self.size
        p, r = self.patch, self.ratio
        for _ in range(steps):
            idx = []
            for _ in range(batch):
                if j == len(order):
                    order, j = rng.permutation(self.n_train), 0
                idx.append(int(order[j]))
                j += 1
            pan, lms, ms, gt = self.read(idx)
            items = []
            for i in range(len(idx)):
                y = int(rng.integers(0, (h - p) // r + 1)) * r
                x = int(rng.integers(0, (w - p) // r + 1)) * r
                t, fy, fx = (bool(v) for v in rng.integers(0, 2, size=3)) if self.augment else (False,) * 3
                ok = (y + p < h, x + p < w)
                items.append(_crop((pan[i, 0], lms[i], ms[i], gt[i]), y, x, p, r, t, fy, fx, ok))
            yield _stack(items)


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that determines the weights (together with the data and the torch thread count).

    ``steps_per_epoch`` None = one pass over the training patch positions (``len(source) // batch``).
    ``lr`` decays along a cosine to ``lr_min`` over ``epochs * steps_per_epoch`` steps (Adam).
    ``gain_jitter`` g > 0 multiplies each training patch (inputs and reference) by a random factor in
    ``[1/(1+g), 1+g]`` (log-uniform), which makes the network less sensitive to the radiometric level.
    ``head_init`` scales the initial weights of the layer producing the bands: 0 (default) makes a new
    network start exactly at its skip connection (``lms``, or the upsampled MS), i.e. at EXP.
    """

    arch: str
    bands: int
    ratio: int
    patch: int = 32
    batch: int = 16
    epochs: int = 10
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    lr_min: float = 1e-5
    weight_decay: float = 0.0
    loss: str = "l1"
    seed: int = 0
    augment: bool = True
    gain_jitter: float = 0.0
    head_init: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainEvent:
    """Progress: ``stage`` is ``"step"`` (every step), ``"val"`` (after each epoch's validation) or
    ``"checkpoint"``. ``step``/``steps`` count within the epoch."""

    stage: str
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class TrainResult:
    model: PansharpenNet
    spec: ArchSpec
    config: TrainConfig
    history: list[dict[str, Any]]
    seconds: float
    steps_per_epoch: int


ProgressCallback = Callable[[TrainEvent], None]


def _check_arch(cfg: TrainConfig) -> ArchSpec:
    spec = resolve_arch(cfg.arch)
    if spec.input_convention != "lms" and cfg.ratio != spec.ratio:
        raise ModelError(f"{spec.name} is built for ratio {spec.ratio}, not {cfg.ratio}",
                         fix="choose an architecture taking `lms` (fusionnet, pnn, dicnn, msdcnn, drpnn)")
    m = max(spec.size_multiple, cfg.ratio)
    if cfg.patch % m:
        raise UsageError(f"--patch {cfg.patch} must be a multiple of {m} for {spec.name}")
    if cfg.loss not in ("l1", "l2"):
        raise UsageError(f"unknown loss '{cfg.loss}'", fix="use l1 or l2")
    if cfg.epochs < 1 or cfg.batch < 1:
        raise UsageError("--epochs and --batch must be at least 1")
    return spec


def new_model(cfg: TrainConfig) -> PansharpenNet:
    """The initial network of a run (seeded)."""
    spec = _check_arch(cfg)
    torch.manual_seed(cfg.seed)
    model = build(spec.name, cfg.bands)
    head = _HEADS.get(spec.name)
    if head and cfg.head_init != 1.0:
        with torch.no_grad():
            for p in getattr(model, head).parameters():
                p.mul_(cfg.head_init)
    return model


def _forward(model: PansharpenNet, pan: Tensor, lms: Tensor, ms: Tensor) -> Tensor:
    conv = model.input_convention
    return model(pan, None if conv == "lr" else lms, None if conv == "lms" else ms)


def predict(model: PansharpenNet, pan: np.ndarray, lms: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Run ``model`` on one normalised region, ``pan`` ``(H, W)``, ``lms`` ``(B, H, W)``, ``ms`` ``(B, h, w)``.

    Sizes must suit the architecture (multiples of its ``size_multiple``). Returns ``(B, H, W)`` float32.
    """
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None] for a in (pan[None], lms, ms)]
            return _forward(model, *t)[0].numpy()
    finally:
        model.train(was)


def evaluate(model: PansharpenNet, regions: Sequence[Region], *, block: int = 32) -> dict[str, float]:
    """Mean Q2n, SAM and ERGAS of ``model`` on ``regions`` (reduced resolution, against ``gt``)."""
    from .metrics import ergas, q2n, sam

    acc = {k: 0.0 for k in VAL_METRICS}
    for g in regions:
        out = predict(model, g.pan, g.lms, g.ms).astype(np.float64)
        ref = g.gt.astype(np.float64)
        blk = min(block, *g.shape)
        acc["Q2n"] += q2n(ref, out, blk, blk)
        acc["SAM"] += sam(ref, out)
        acc["ERGAS"] += ergas(ref, out, g.ratio)
    return {k: v / max(1, len(regions)) for k, v in acc.items()}


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    c = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(1, total)))
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * c


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by :func:`train` (read with ``weights_only=True``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputNotFoundError("checkpoint not found", path=p, fix="check --resume")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot read the training checkpoint ({type(exc).__name__}: {exc})", path=p) from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ModelError("not a pansharpen training checkpoint", path=p,
                         fix="--resume takes the .ckpt file `pansharpen train` writes after each epoch")
    if int(ck.get("version", 0)) > CHECKPOINT_VERSION:
        raise ModelError("the checkpoint was written by a newer pansharpen", path=p, fix="upgrade pansharpen")
    return ck


#: config fields that must not change when a run is resumed (epochs may grow)
_RESUME_FIXED = ("arch", "bands", "ratio", "patch", "batch", "steps_per_epoch", "lr", "lr_min", "weight_decay",
                 "loss", "seed", "augment", "gain_jitter", "head_init")


def train(source: RegionPatches | H5Patches, val: Sequence[Region], cfg: TrainConfig, *,
          progress: ProgressCallback | None = None, checkpoint: str | Path | None = None,
          resume: str | Path | None = None, threads: int | None = None) -> TrainResult:
    """Train ``cfg.arch`` on ``source`` and validate on ``val`` after every epoch.

    ``checkpoint``: path rewritten (atomically) after every epoch with the model, optimiser state,
    epoch and history. ``resume``: such a checkpoint; training continues after its epoch (the fixed
    part of the config must match). With the same ``epochs`` the result is exactly the weights of a
    run that was never interrupted; a larger ``epochs`` trains further, the cosine learning-rate
    schedule stretched to the new total. ``threads`` sets ``torch.set_num_threads`` for the run.
    """
    spec = _check_arch(cfg)
    if source.bands != cfg.bands:
        raise UsageError(f"the data has {source.bands} bands, the config {cfg.bands}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    steps = cfg.steps_per_epoch or max(1, len(source) // cfg.batch)
    total = steps * cfg.epochs
    model = new_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    start = 0
    if resume is not None:
        ck = load_checkpoint(resume)
        old = ck.get("config", {})
        diff = [k for k in _RESUME_FIXED if old.get(k) != getattr(cfg, k)]
        if diff:
            raise UsageError("the checkpoint was made with other settings: " +
                             ", ".join(f"{k}={old.get(k)!r} (now {getattr(cfg, k)!r})" for k in diff),
                             path=resume, fix="resume with the same options (only --epochs may grow)")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["epoch"])
        history = list(ck.get("history", []))
        if start >= cfg.epochs:
            raise UsageError(f"the checkpoint already has {start} epochs", path=resume,
                             fix=f"pass --epochs larger than {start} to train further")
    t0 = time.perf_counter()
    lossf = F.l1_loss if cfg.loss == "l1" else F.mse_loss
    model.train()
    for epoch in range(start, cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        run = 0.0
        te = time.perf_counter()
        for i, (pan, lms, ms, gt) in enumerate(source.epoch(rng, cfg.batch, steps)):
            if cfg.gain_jitter > 0:
                lo = -math.log1p(cfg.gain_jitter)
                g = np.exp(rng.uniform(lo, -lo, size=(pan.shape[0], 1, 1, 1))).astype(np.float32)
                pan, lms, gt = pan * g, lms * g, gt * g
                ms = ms * g
            for pg in opt.param_groups:
                pg["lr"] = _lr_at(cfg, epoch * steps + i, total)
            tp, tl, tm, tg = (torch.from_numpy(np.ascontiguousarray(a)) for a in (pan, lms, ms, gt))
            out = _forward(model, tp, tl, tm)
            loss = lossf(out, tg)
            if not torch.isfinite(loss):
                raise DataError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}",
                                fix="lower --lr, or check the data's scale")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run += float(loss.item())
            if progress:
                progress(TrainEvent("step", epoch + 1, cfg.epochs, i + 1, steps, loss=run / (i + 1),
                                    seconds=time.perf_counter() - t0))
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": run / steps, "seconds": round(time.perf_counter() - te, 2)}
        if val:
            rec["val"] = evaluate(model, val)
            model.train()
        history.append(rec)
        if progress:
            progress(TrainEvent("val", epoch + 1, cfg.epochs, steps, steps, loss=rec["loss"],
                                metrics=rec.get("val", {}), seconds=time.perf_counter() - t0))
        if checkpoint is not None:
            _save_atomic({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg.to_dict(),
                          "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "history": history}, Path(checkpoint))
            if progress:
                progress(TrainEvent("checkpoint", epoch + 1, cfg.epochs, steps, steps,
                                    seconds=time.perf_counter() - t0))
    model.eval()
    return TrainResult(model=model, spec=spec, config=cfg, history=history, seconds=time.perf_counter() - t0,
                       steps_per_epoch=steps)


# ----------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def save_safetensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file whose bytes depend only on the tensors and metadata.

    ``safetensors.torch.save_file`` stores the metadata in hash-map order, which changes from process to
    process; here the header lists the metadata and the tensors sorted by name (compact JSON, padded
    to 8 bytes) and the data follows in the same order, so the same weights always give the same
    SHA-256. Little-endian hosts only. Readable by any safetensors reader.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs: list[bytes] = []
    off = 0
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        if t.dtype not in _ST_DTYPES:
            raise ModelError(f"cannot store tensor '{k}' of type {t.dtype} in safetensors")
        b = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hj)))
        fh.write(hj)
        for b in blobs:
            fh.write(b)


def export_model(model: PansharpenNet, path: str | Path, *, name: str, arch: str, band_names: Sequence[str],
                 sensor: str, ratio: int, bit_depth: int, scale: float, training_data: str,
                 recipe: str | None, quality: dict[str, Any] | None = None, licence: str = "MIT",
                 description: str = "", compatible_sensors: Sequence[str] = (), extra: dict[str, Any] | None = None,
                 write_json: bool = True) -> dict[str, Any]:
    """Save ``model`` as safetensors at ``path`` and return its manifest entry (``weights/README.md``).

    The file holds exactly ``model.state_dict()`` as contiguous, unshared float32 tensors (the layout
    ``pansharpen models import`` writes), in canonical order (:func:`save_safetensors`: the same
    weights give the same bytes). With ``write_json`` the entry is also written next to it as
    ``<name>.json``. ``extra`` fields are added to the entry (unknown fields are ignored by the zoo).
    """
    from safetensors.torch import save_file

    spec = resolve_arch(arch)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).clone().contiguous()
               for k, v in model.state_dict().items()}
    meta = {"format": "pansharpen", "name": name, "arch": spec.name, "bands": str(model.n_bands),
            "scale": repr(float(scale)), "input_convention": spec.input_convention}
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if sys.byteorder == "little":
            save_safetensors(tensors, tmp, meta)
        else:  # pragma: no cover - big-endian hosts: the library (header order not canonical)
            save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a model file is as readable as any other
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    entry: dict[str, Any] = {
        "name": name, "file": p.name, "sha256": _sha256(p), "size": p.stat().st_size, "arch": spec.name,
        "bands": int(model.n_bands), "band_names": list(band_names), "sensor": sensor, "ratio": int(ratio),
        "bit_depth": int(bit_depth), "scale": float(scale), "input_convention": spec.input_convention,
        "training_data": training_data, "recipe": recipe, "quality": quality or {}, "licence": licence,
        "description": description, "compatible_sensors": list(compatible_sensors),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        entry.update(extra)
    if write_json:
        (p.parent / f"{name}.json").write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    return entry

