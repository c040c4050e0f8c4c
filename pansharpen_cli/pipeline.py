"""The fuse pipeline: composes raster I/O, alignment, tiling, resampling and a fusion method.

Library entry points: :func:`plan_fuse` (no pixels written; what ``--dry-run`` prints) and
:func:`fuse` (does the work). Progress is reported through a callback; problems raise the typed
errors of :mod:`pansharpen_cli.errors`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import RadiometryError, UsageError
from .fastops import clamp_
from .methods import Method, SceneInfo, TileInput, get_method
from .raster import (
    Alignment,
    OutputWriter,
    SceneReader,
    align,
    check_destination,
    check_dtype,
    dtype_range,
    inspect_ms,
    inspect_raster,
    output_block_size,
)
from .resample import (
    RESAMPLING,
    lr_range,
    nearest_lr_index,
    phase_count,
    resample_block,
    resample_cols,
    resample_rows_phases,
)
from .runtime import tune_malloc
from .sensors import Sensor, generic_sensor, get_sensor
from .tiling import StripAssembler, TilePlan, Window, column_groups, plan_tiles


@dataclass
class FuseRequest:
    """Everything ``pansharpen fuse`` needs; the CLI fills it from the command line."""

    pan: str | Path
    ms: Sequence[str | Path]
    out: str | Path | None = None
    method: str | Method = "wbrovey"
    method_options: dict[str, Any] = field(default_factory=dict)
    sensor: str | None = None
    band_names: Sequence[str] | None = None
    tile: int = 512
    overlap: int | None = None
    extent: str = "intersection"
    bit_depth: int | None = None
    nodata: float | None = None
    dtype: str | None = None
    fmt: str = "GTiff"
    creation_options: dict[str, str] = field(default_factory=dict)
    overwrite: bool = False
    ratio: float | None = None
    #: nodata the product defines when its files do not (e.g. Landsat L1 fill = 0)
    product_nodata: float | None = None
    source: str | None = None
    #: read the next tile row in a background thread while the current one is computed
    prefetch: bool = True
    #: compress and write finished strips in a background thread (False: in the tile loop's thread)
    background_write: bool = True
    #: MS interpolation: "23tap" | "cubic"; None = the method's own (wbrovey: cubic, like GDAL)
    resampling: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ms, (str, Path)):
            self.ms = [self.ms]


@dataclass(frozen=True)
class ProgressEvent:
    stage: str  # "stats" | "tiles" | "finalize"
    done: int
    total: int
    pixels: int = 0


ProgressCallback = Callable[[ProgressEvent], None]
NoticeCallback = Callable[[str], None]


#: most bytes of interpolated tile inputs the prefetch thread may hold for one tile row (networks):
#: beyond that (very wide or many-band scenes) it prefetches raw reads and the loop interpolates
PREFETCH_INPUTS_BUDGET = 256 * 2**20

#: widest vertical stripe (PAN pixels) that the tile loop holds at once when tiles do not overlap:
#: strips, reads and write buffers scale with it, not with the scene's width
STRIPE_MAX_WIDTH = 4096


@dataclass
class FusePlan:
    request: FuseRequest
    alignment: Alignment
    sensor: Sensor
    method: Method
    tiles: TilePlan
    out_dtype: str
    bit_depth: int
    bit_depth_source: str
    pan_nodata: float | None
    ms_nodata: float | None
    out_nodata: float | None
    band_names: list[str]
    notices: list[str] = field(default_factory=list)

    @property
    def bands(self) -> int:
        return self.alignment.ms.count

    def memory_estimate(self) -> int:
        """Bytes the tile loop holds at its peak (strip + carry + tile working set + write buffer,
        and the interpolated tile row the prefetch thread holds for networks)."""
        t, w = self.tiles, self.stripe_width
        b1 = self.bands + 1
        strip = b1 * t.tile_height * w * 4 * 2
        side = max(t.tile_height, t.tile_width) + 2 * t.context
        work = (4 * self.bands + 6) * side * side * 4
        out_buf = self.bands * min(512, self.alignment.height) * w * np.dtype(self.out_dtype).itemsize
        pre = 2 * self.prefetched_inputs_bytes() if self.prefetch_interpolates else 0
        return int(strip + work + out_buf + pre)

    def column_groups(self) -> list[tuple[int, int]]:
        """Tile columns done together (:func:`tiling.column_groups`): stripes at most
        :data:`STRIPE_MAX_WIDTH` wide, on output block boundaries, for methods whose tiles do not
        overlap (no cross-fade between stripes); one group otherwise."""
        t = self.tiles
        if t.overlap:
            return [(0, len(t.col_starts))]
        a = self.alignment
        block = output_block_size(self.request.fmt, self.request.creation_options, a.width, a.height)
        if block is None:  # block size unknown until GDAL creates the file: whole rows
            return [(0, len(t.col_starts))]
        return column_groups(t, max(STRIPE_MAX_WIDTH, t.tile_width), block[1])

    @property
    def stripe_width(self) -> int:
        """Canvas columns of the widest column group: what the tile loop's buffers scale with."""
        return max(self.tiles.columns(j0, j1).width for j0, j1 in self.column_groups())

    def prefetched_inputs_bytes(self) -> int:
        """Bytes of one tile row's interpolated inputs (PAN, MS on the PAN grid, validity)."""
        t = self.tiles
        n = max(j1 - j0 for j0, j1 in self.column_groups())
        side_h, side_w = t.tile_height + 2 * t.context, t.tile_width + 2 * t.context
        return int(n * (self.bands + 1) * side_h * side_w * 4 + n * side_h * side_w)

    @property
    def prefetch_interpolates(self) -> bool:
        """Whether the prefetch thread also interpolates the MS (networks, within
        :data:`PREFETCH_INPUTS_BUDGET`; see ``_RowReader``)."""
        return hasattr(self.method, "fuse_tiles") and self.prefetched_inputs_bytes() <= PREFETCH_INPUTS_BUDGET

    def to_dict(self) -> dict[str, Any]:
        a = self.alignment
        return {
            "pan": str(self.request.pan),
            "ms": [str(p) for p in self.request.ms],
            "out": str(self.request.out) if self.request.out else None,
            "source": self.request.source,
            "method": self.method.describe(),
            "sensor": self.sensor.key,
            "bands": self.band_names,
            "grid": {"crs": a.summary()["crs"], "transform": list(a.out_transform)[:6],
                     "width": a.width, "height": a.height, "extent": a.extent,
                     "ratio": [round(a.cols.ratio, 6), round(a.rows.ratio, 6)],
                     "ms_reprojected": a.reprojected},
            "tiles": {"tile": self.tiles.tile, "overlap": self.tiles.overlap, "context": self.tiles.context,
                      "count": self.tiles.n_tiles},
            "resampling": self.method.resampling,
            "dtype": self.out_dtype,
            "bit_depth": self.bit_depth,
            "bit_depth_source": self.bit_depth_source,
            "nodata": {"pan": self.pan_nodata, "ms": self.ms_nodata, "out": self.out_nodata},
            "memory_estimate_mib": round(self.memory_estimate() / 2**20, 1),
            "format": self.request.fmt,
            "notices": self.notices,
        }


def _resolve_sensor(req: FuseRequest, n_bands: int, tags: dict[str, str]) -> tuple[Sensor, list[str]]:
    notes: list[str] = []
    name = req.sensor or tags.get("SENSOR")
    if name:
        s = get_sensor(name)
        if n_bands > s.n_bands:
            raise UsageError(f"sensor {s.key} has {s.n_bands} MS bands but the MS has {n_bands}",
                             path=str(req.ms[0]), fix="pass the right --sensor, or none for generic settings")
        return s.subset(n_bands), notes
    return generic_sensor(n_bands, 16, 4), notes


def plan_fuse(req: FuseRequest) -> FusePlan:
    """Open the headers, check everything that can be checked without pixels, and plan the run."""
    if req.tile < 16:
        raise UsageError(f"--tile {req.tile} is too small", fix="use at least 16 (default 512)")
    if req.overlap is not None and req.overlap < 0:
        raise UsageError("--overlap must be >= 0")
    if req.out is not None:
        check_destination(req.out, req.overwrite)
    pan = inspect_raster(req.pan, "PAN")
    ms = inspect_ms(req.ms)
    a = align(pan, ms, extent=req.extent, ratio=req.ratio)
    notices: list[str] = []
    if a.reprojected:
        notices.append(f"MS CRS differs from the PAN's: reprojecting the MS on the fly to {a.summary()['crs']}")
    if a.synthetic_georef:
        notices.append(f"inputs lack georeferencing: assuming corner-aligned grids, ratio {req.ratio:g}")
    sensor, sn = _resolve_sensor(req, ms.count, {**pan.tags, **ms.first.tags})
    notices += sn
    method = req.method if isinstance(req.method, Method) else get_method(req.method, **req.method_options)
    if req.resampling is not None:
        if req.resampling not in RESAMPLING:
            raise UsageError(f"unknown --resampling '{req.resampling}'", fix=f"use one of {', '.join(RESAMPLING)}")
        method.resampling = req.resampling
    out_dtype = check_dtype(req.dtype) if req.dtype else ms.first.dtype
    # bit depth: option > NBITS/BIT_DEPTH metadata > sensor preset > data type
    if req.bit_depth is not None:
        bits, src = req.bit_depth, "--bit-depth"
    elif ms.first.bit_depth:
        bits, src = ms.first.bit_depth, "MS metadata"
    elif sensor.key != "generic":
        bits, src = sensor.bit_depth, f"sensor preset {sensor.key}"
    else:
        bits, src = np.dtype(out_dtype).itemsize * 8, "data type"
    if req.bit_depth is not None and not 1 <= req.bit_depth <= 32:
        raise UsageError(f"--bit-depth {req.bit_depth} is out of range", fix="use 1-32, e.g. 11 for WorldView")
    fallback_nodata = req.nodata if req.nodata is not None else req.product_nodata
    pan_nodata = pan.nodata if pan.nodata is not None else fallback_nodata
    ms_nodata = ms.first.nodata if ms.first.nodata is not None else (
        req.nodata if req.nodata is not None else req.product_nodata)
    out_nodata = req.nodata if req.nodata is not None else (ms_nodata if ms_nodata is not None else pan_nodata)
    if out_nodata is None and a.extent != "intersection":
        out_nodata = float("nan") if np.dtype(out_dtype).kind == "f" else 0.0
        notices.append(f"--extent {a.extent} leaves pixels without data: nodata set to {out_nodata:g}")
    if out_nodata is not None and not (isinstance(out_nodata, float) and math.isnan(out_nodata)):
        lo, hi = dtype_range(out_dtype)
        if not lo <= out_nodata <= hi:
            out_nodata = 0.0 if np.dtype(out_dtype).kind == "u" else lo
            notices.append(f"input nodata does not fit {out_dtype}: output nodata set to {out_nodata:g}")
    names = list(req.band_names or [])
    if not names:
        descr = [d for f in ms.files for d in (f.descriptions or ())]
        names = [d or "" for d in descr] if any(descr) else []
    if len(names) != ms.count:
        names = sensor.band_names if sensor.key != "generic" else [f"Band {i + 1}" for i in range(ms.count)]
    # exact methods: the cropped context alone makes tiles exact, a cross-fade would only add work
    # (FusionNet at tile 512: 17 % more pixels with a 20-px overlap)
    overlap = req.overlap if req.overlap is not None else (0 if method.exact_tiles else 2 * method.receptive_field)
    tiles = plan_tiles(a.height, a.width, req.tile, min(overlap, req.tile - 1), method.receptive_field)
    return FusePlan(req, a, sensor, method, tiles, out_dtype, int(bits), src, pan_nodata, ms_nodata, out_nodata,
                    names, notices)


class _Engine:
    """Computes tiles: reads PAN and MS around them, resamples, runs the method, crops context.

    Reading goes through one set of dataset handles, in the calling thread (GDAL handles are not
    thread-safe); resampling and classical methods (numpy/scipy, which release the GIL) run on a
    small thread pool so both cores work while GDAL compresses in the writer thread.
    """

    def __init__(self, plan: FusePlan, reader: SceneReader, threads: int | None = None):
        self.plan = plan
        self.reader = reader
        a = plan.alignment
        self.extent = (a.ms_shape[0], a.ms_shape[1])
        # the SceneWindows protocol (methods read windows of the scene while they are fitted)
        self.height, self.width = a.height, a.width
        r = round(a.cols.ratio)
        self.ratio = r if abs(a.cols.ratio - r) < 1e-9 and abs(a.rows.ratio - r) < 1e-9 else 0
        self.phase = "other"
        if self.ratio:
            q = [m.offset * r for m in (a.rows, a.cols)]
            if all(abs(x - round(x)) < 1e-6 for x in q):
                self.phase = "toolbox"
            elif all(abs(x - math.floor(x) - 0.5) < 1e-6 for x in q):
                self.phase = "corner"
        self.threads = max(1, threads if threads is not None else min(4, os.cpu_count() or 1))
        self._pool = None
        #: tiles not fused because they hold no valid pixel
        self.skipped = 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _map(self, fn, items: list) -> list:
        if self.threads == 1 or len(items) < 2:
            return [fn(x) for x in items]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="pansharpen-tile")
        return list(self._pool.map(fn, items))

    def _read(self, w: Window):
        a = self.plan.alignment
        pan, pan_valid = self.reader.read_pan(w)
        rows = (w.row, w.row_stop)
        cols = (w.col, w.col_stop)
        kr = lr_range(a.rows, *rows, a.height)
        kc = lr_range(a.cols, *cols, a.width)
        lr, lr_valid = self.reader.read_ms_lr(kr, kc)
        return pan, pan_valid, lr, lr_valid, kr, kc, rows, cols

    def read_row(self, cores: list[Window], context: int) -> list[tuple]:
        """Reads for tiles that share their rows (one tile row): one PAN and one MS read for all.

        Same values as :meth:`_read` per tile (values depend only on canvas position): GDAL decodes
        the whole strip in one call, with its decoding threads, instead of block by block.
        """
        if len(cores) < 2:
            return [self._read(w.expand(context)) for w in cores]
        a = self.plan.alignment
        wins = [w.expand(context) for w in cores]
        r0, r1 = wins[0].row, wins[0].row_stop
        if any(w.row != r0 or w.row_stop != r1 for w in wins):
            return [self._read(w) for w in wins]
        c0, c1 = min(w.col for w in wins), max(w.col_stop for w in wins)
        pan, pan_valid = self.reader.read_pan(Window(r0, c0, r1 - r0, c1 - c0))
        kr = lr_range(a.rows, r0, r1, a.height)
        kcs = [lr_range(a.cols, w.col, w.col_stop, a.width) for w in wins]
        k0, k1 = min(k[0] for k in kcs), max(k[1] for k in kcs)
        lr, lr_valid = self.reader.read_ms_lr(kr, (k0, k1))
        raws = []
        for w, kc in zip(wins, kcs, strict=True):
            ps = slice(w.col - c0, w.col_stop - c0)
            ks = slice(kc[0] - k0, kc[1] - k0)
            raws.append((pan[:, ps], pan_valid[:, ps], lr[:, :, ks], lr_valid[:, ks], kr, kc,
                         (w.row, w.row_stop), (w.col, w.col_stop)))
        return raws

    def _compute(self, raw) -> TileInput:
        a = self.plan.alignment
        pan, pan_valid, lr, lr_valid, kr, kc, rows, cols = raw
        ms_up = resample_block(lr, a.rows, a.cols, kr[0], kc[0], rows, cols, (a.height, a.width),
                               self.plan.method.resampling)
        return TileInput(pan=pan, ms_up=ms_up, valid=self._valid(pan_valid, lr_valid, kr, kc, rows, cols))

    def _valid(self, pan_valid: np.ndarray, lr_valid: np.ndarray, kr: tuple[int, int], kc: tuple[int, int],
               rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Validity of output ``rows`` x ``cols``: the PAN's and that of the nearest pixel of the MS
        read (``lr_valid``, LR rows ``kr``, columns ``kc``); ``pan_valid`` itself when the MS read is
        all valid (the usual case: no gather)."""
        if lr_valid.all():
            return pan_valid
        a = self.plan.alignment
        nr = nearest_lr_index(a.rows, *rows) - kr[0]
        nc = nearest_lr_index(a.cols, *cols) - kc[0]
        return pan_valid & lr_valid.take(nr, axis=0).take(nc, axis=1)

    def inputs(self, w: Window) -> TileInput:
        return self._compute(self._read(w))

    def _prepared(self, raw: tuple | TileInput) -> TileInput:
        """A raw read interpolated, or its TileInput when the prefetch thread already did it."""
        return raw if isinstance(raw, TileInput) else self._compute(raw)

    def pan(self, w: Window) -> tuple[np.ndarray, np.ndarray]:
        """The PAN under canvas window ``w``: (h, w) float32 and validity (``inputs(w).pan``)."""
        return self.reader.read_pan(w)

    def _lr_index(self, w: Window) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """LR index ranges covered exactly by ``w`` (each MS pixel by ``ratio`` x ``ratio`` pixels)."""
        if not self.ratio:
            return None
        a, r = self.plan.alignment, self.ratio
        out = []
        for amap, j0, j1 in ((a.rows, w.row, w.row_stop), (a.cols, w.col, w.col_stop)):
            k = nearest_lr_index(amap, j0, j1)
            if len(k) % r or not np.array_equal(k, np.repeat(np.arange(k[0], k[0] + len(k) // r), r)):
                return None
            out.append((int(k[0]), int(k[-1]) + 1))
        return out[0], out[1]

    def lr_aligned(self, w: Window) -> bool:
        return self._lr_index(w) is not None

    def ms_lr(self, w: Window) -> tuple[np.ndarray, np.ndarray]:
        """The MS at its own resolution under canvas window ``w``: (B, h/r, w/r) float32 and validity."""
        idx = self._lr_index(w)
        if idx is None:
            raise ValueError(f"window {w} does not cover whole MS pixels (ratio {self.ratio or 'not integer'})")
        return self.reader.read_ms_lr(*idx)

    def tiles(self, cores: list[Window], context: int, raws: list[tuple] | None = None,
              sink: TileSink | None = None, dests: Sequence[np.ndarray | None] | None = None) -> list[np.ndarray]:
        """The fused output of each core window, written by ``sink`` (default: (B + 1, h, w)
        float32, fused bands and the validity mask, 1.0 valid) into ``dests[k]`` where given (e.g.
        the tile's place in the output strip), else into a new array; returns them.

        Methods that can (networks: ``fuse_tiles``) get the tiles with data in one batch; other
        methods run tile by tile on the thread pool, each tile read -> resampled -> fused ->
        cropped -> written by the sink in one task; per-pixel methods in bands of rows that stay in
        the CPU cache (:meth:`_per_pixel`). ``raws``: the tiles' reads when done beforehand
        (:meth:`read_row`, in the prefetch thread). Tiles without any valid pixel are not fused
        (counted in :attr:`skipped`).
        """
        method = self.plan.method
        c = context
        sink = sink if sink is not None else _FloatSink(self.plan.bands)
        if raws is None:
            raws = [self._read(w.expand(context)) for w in cores]
        outs = [d if d is not None else sink.alloc(w.height, w.width)
                for w, d in zip(cores, dests if dests is not None else [None] * len(cores), strict=True)]

        def core_out(w: Window, t: TileInput, f: np.ndarray | None, dest: np.ndarray) -> None:
            if f is None:
                sink.fill_empty(dest)  # all nodata: skipped
                return
            valid = t.valid[c:c + w.height, c:c + w.width]
            sink(_sink_input(f[:, c:c + w.height, c:c + w.width], t.pan), None if valid.all() else valid, dest)

        def has_data(w: Window, t: TileInput) -> bool:
            return bool(t.valid[c:c + w.height, c:c + w.width].any())

        batch = getattr(method, "fuse_tiles", None)
        if batch is None:
            per_pixel = getattr(method, "per_pixel", False)

            def one(item: tuple[Window, tuple, np.ndarray]) -> bool:
                w, raw, dest = item
                if per_pixel and not isinstance(raw, TileInput):
                    return self._per_pixel(w, raw, c, sink, dest)
                t = self._prepared(raw)
                ok = has_data(w, t)
                core_out(w, t, method.fuse_tile(t) if ok else None, dest)
                return ok

            res = self._map(one, list(zip(cores, raws, outs, strict=True)))
            self.skipped += sum(1 for ok in res if not ok)
            return outs
        tins = self._map(self._prepared, raws)
        todo = [k for k, (w, t) in enumerate(zip(cores, tins, strict=True)) if has_data(w, t)]
        self.skipped += len(cores) - len(todo)
        fused = batch([tins[k] for k in todo]) if len(todo) > 1 else [method.fuse_tile(tins[k]) for k in todo]
        by_tile = dict(zip(todo, fused, strict=True))
        for k, (w, t) in enumerate(zip(cores, tins, strict=True)):
            core_out(w, t, by_tile.get(k), outs[k])
        return outs

    #: bytes of the interpolated MS of one phase of a band of rows of a per-pixel tile (all bands,
    #: float32): small enough that it, the method's temporaries and the conversion stay in a core's
    #: L2 cache (benchmarks/micro_per_pixel.py on the 2-core machine, 512² x 4 bands, wbrovey,
    #: cubic, uint16 sink, one thread: whole tiles 12.9-14.1 ms, 64-row bands interleaved 6.1 ms,
    #: phases of 32 rows (256 KiB) 5.4-5.9 ms, of 16 rows 6.5 ms)
    PER_PIXEL_CHUNK_BYTES = 256 * 1024

    def _per_pixel(self, w: Window, raw: tuple, context: int, sink: TileSink, dest: np.ndarray) -> bool:
        """Fuse the core ``w`` of a raw read with a per-pixel method, in bands of rows.

        The MS is interpolated along columns once for the tile and along rows band by band; an
        integer ratio ``r`` gives each band's rows phase by phase (every ``r``-th row,
        :func:`resample_rows_phases`), which are fused with the same rows of the PAN and written by
        ``sink`` into the same rows of ``dest`` while in cache: the phases are never interleaved
        in memory. Same values as the whole tile (a per-pixel method computes every output pixel
        the same way in any set of rows). Returns False (nothing fused; ``dest`` filled as
        empty) when the core holds no valid pixel.
        """
        a = self.plan.alignment
        method = self.plan.method
        kind = method.resampling
        pan, pan_valid, lr, lr_valid, kr, kc, _rows, _cols = raw
        c, h, wd = context, w.height, w.width
        pan = pan[c:c + h, c:c + wd]
        valid = self._valid(pan_valid[c:c + h, c:c + wd], lr_valid, kr, kc, (w.row, w.row_stop), (w.col, w.col_stop))
        if not valid.any():
            sink.fill_empty(dest)
            return False
        all_valid = bool(valid.all())
        half = resample_cols(lr, a.cols, kc[0], (w.col, w.col_stop), a.width, kind)
        step = max(8, self.PER_PIXEL_CHUNK_BYTES // (4 * half.shape[0] * wd)) * phase_count(a.rows, a.height, kind)
        for j in range(0, h, step):
            n = min(step, h - j)
            for rows, up in resample_rows_phases(half, a.rows, kr[0], (w.row + j, w.row + j + n), a.height, kind):
                rows = slice(j + rows.start, j + rows.stop, rows.step)
                v = valid[rows]
                f = method.fuse_tile(TileInput(pan=pan[rows], ms_up=up, valid=v))
                sink(_sink_input(f, pan), None if all_valid else v, dest[:, rows])
        return True

    def tile(self, w_core: Window, context: int) -> np.ndarray:
        return self.tiles([w_core], context)[0]


def _unit_order(tiles: TilePlan, groups: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(tile row, column group) in the order the tile loop does them: row by row, each row's
    groups left to right (a row's input blocks are decoded once, while GDAL's cache holds them);
    but the last two rows group by group when the last one, snapped to the bottom edge, overlaps
    the one before: their shared output blocks are then complete one stripe at a time, and only
    one stripe's partial block row is ever buffered."""
    n, ng = len(tiles.row_starts), len(groups)
    snapped = n >= 2 and tiles.row_starts[-1] < tiles.row_starts[-2] + tiles.tile_height
    head = n - 2 if snapped and ng > 1 else n
    return [(i, g) for i in range(head) for g in range(ng)] + [(i, g) for g in range(ng) for i in range(head, n)]


class _RowReader:
    """Reads tile rows (or the stripes of them, ``units``) ahead, in one background thread, while
    the current one is computed.

    GDAL dataset handles are not thread-safe: during the tile loop only this thread reads. With
    ``enabled=False`` rows are read in the calling thread (for measuring what prefetch gains).
    ``interpolate``: the background thread also interpolates the MS of each tile (``TileInput``s
    instead of raw reads). For networks: their forward passes keep the cores busy in torch, and the
    single-threaded interpolation would otherwise run between them, on the critical path.
    """

    def __init__(self, engine: _Engine, tiles: TilePlan, timing: dict[str, float], *, enabled: bool = True,
                 interpolate: bool = False, units: Sequence[Sequence[Window]] | None = None):
        self.engine, self.tiles, self.timing = engine, tiles, timing
        self.interpolate = interpolate
        #: the core windows of each read, in the order they are asked for (default: tile rows)
        self.units = [list(u) for u in units] if units is not None else [
            [tl.core for tl in tiles.row_tiles(i)] for i in range(len(tiles.row_starts))]
        self.n = len(self.units)
        self._pool = None
        self._next: tuple[int, Any] | None = None
        if enabled and self.n > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pansharpen-read")

    def _read(self, i: int) -> tuple[list[tuple], float]:
        t = time.perf_counter()
        raws: list[Any] = self.engine.read_row(self.units[i], self.tiles.context)
        if self.interpolate and self._pool is not None:
            raws = [self.engine._compute(r) for r in raws]
        return raws, time.perf_counter() - t

    def get(self, i: int) -> list[tuple]:
        t = time.perf_counter()
        if self._next is not None and self._next[0] == i:
            raws, secs = self._next[1].result()
        else:
            raws, secs = self._read(i)
        self._next = None
        if self._pool is not None and i + 1 < self.n:
            self._next = (i + 1, self._pool.submit(self._read, i + 1))
        self.timing["read_wait_s"] += time.perf_counter() - t
        self.timing["read_s"] += secs
        return raws

    def close(self) -> None:
        if self._pool is not None:
            # let a running read finish before the datasets close; drop anything queued
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _sink_input(fused: np.ndarray, pan: np.ndarray) -> np.ndarray:
    """A method's output as a sink may take it: sinks overwrite their input, which is fine for the
    method's own arrays (each TileInput, and each band's interpolated MS, serves one output) but
    not for a read-only array or one sharing the PAN's memory: those are copied."""
    if not fused.flags.writeable or np.may_share_memory(fused, pan):
        return fused.copy()
    return fused


class _OutputSink:
    """Writes fused float tiles into output-typed arrays: clamp, round, nodata (``fuse``'s sink).

    Integer outputs: clamped to [min, max] of the type (unsigned: to the bit depth), NaN to the
    minimum, rounded half to even; valid pixels never take the nodata value (a value that would,
    moves one step into the range), invalid ones take it. Float outputs: cast, nodata where invalid.
    """

    def __init__(self, plan: FusePlan):
        self.dtype = np.dtype(plan.out_dtype)
        self.bands = plan.bands
        nod = plan.out_nodata
        self.nodata = nod
        self.lo = self.hi = 0.0
        self.bump: float | None = None  # nodata strictly inside the range: moved by this much
        if self.dtype.kind in "ui":
            lo, hi = dtype_range(plan.out_dtype)
            if self.dtype.kind == "u":
                hi = min(hi, float(2 ** plan.bit_depth - 1))
            if nod is not None and float(nod).is_integer() and lo <= nod <= hi:
                # a nodata at an end of the range narrows the clamp; inside it, equal values move
                if nod == lo:
                    lo += 1.0
                elif nod == hi:
                    hi -= 1.0
                else:
                    self.bump = 1.0 if nod < hi else -1.0
            self.lo, self.hi = lo, hi

    def alloc(self, h: int, w: int) -> np.ndarray:
        return np.empty((self.bands, h, w), dtype=self.dtype)

    def fill_empty(self, dest: np.ndarray) -> None:
        """A tile without any valid pixel: nodata (0 without one)."""
        dest[...] = self.nodata if self.nodata is not None else 0

    def __call__(self, data: np.ndarray, valid: np.ndarray | None, dest: np.ndarray) -> None:
        """``data`` (B, h, w) float (overwritten) -> ``dest``; ``valid`` None: every pixel valid."""
        nod = self.nodata
        if self.dtype.kind in "ui":
            clamp_(data, self.lo, self.hi)  # NaN to lo, too (fmax)
            np.rint(data, out=data)
            if self.bump is not None:
                data[data == np.float32(nod)] = np.float32(nod + self.bump)
            if valid is not None and nod is not None:
                data[:, ~valid] = np.float32(nod)
            np.copyto(dest, data, casting="unsafe")
            return
        np.copyto(dest, data, casting="unsafe")
        if valid is not None and nod is not None:
            dest[:, ~valid] = nod


class _FloatSink:
    """Keeps fused tiles in float32 with the validity as an extra band (1.0 valid): for tiles that
    are cross-faded before the conversion to the output type (:class:`_OutputSink`, per strip)."""

    def __init__(self, bands: int):
        self.bands = bands + 1
        self.dtype = np.dtype(np.float32)

    def alloc(self, h: int, w: int) -> np.ndarray:
        return np.empty((self.bands, h, w), dtype=np.float32)

    def fill_empty(self, dest: np.ndarray) -> None:
        dest[...] = 0.0

    def __call__(self, data: np.ndarray, valid: np.ndarray | None, dest: np.ndarray) -> None:
        dest[:-1] = data
        dest[-1] = 1.0 if valid is None else valid


TileSink = _OutputSink | _FloatSink


def _to_output(block: np.ndarray, plan: FusePlan, *, inplace: bool = False) -> np.ndarray:
    """(B + 1, h, w) float32 (fused bands + validity) -> (B, h, w) in the output dtype (:class:`_OutputSink`).

    ``inplace``: ``block`` may be overwritten (saves a copy of the strip)."""
    sink = _OutputSink(plan)
    data = block[:-1] if inplace else block[:-1].copy()
    valid = block[-1] > 0.5
    out = sink.alloc(block.shape[1], block.shape[2])
    sink(data, None if valid.all() else valid, out)
    return out


def _tags(plan: FusePlan) -> dict[str, str]:
    r = plan.request
    opts = {"tile": plan.tiles.tile, "overlap": plan.tiles.overlap, "extent": plan.alignment.extent,
            "bit_depth": plan.bit_depth, "dtype": plan.out_dtype, "resampling": plan.method.resampling}
    tags = {
        "PANSHARPEN_VERSION": __version__,
        "PANSHARPEN_METHOD": plan.method.name,
        "PANSHARPEN_METHOD_OPTIONS": json.dumps(plan.method.describe(), sort_keys=True, default=str),
        "PANSHARPEN_OPTIONS": json.dumps(opts, sort_keys=True),
        "PANSHARPEN_PAN": Path(r.pan).name,
        "PANSHARPEN_MS": ",".join(Path(p).name for p in r.ms),
        "PANSHARPEN_SENSOR": plan.sensor.key,
        "BIT_DEPTH": str(plan.bit_depth),
    }
    for k, v in plan.method.provenance.items():
        tags[f"PANSHARPEN_{k.upper()}"] = str(v)
    return tags


def _scene_info(plan: FusePlan, reader: SceneReader, engine: _Engine,
                notice: NoticeCallback | None) -> SceneInfo:
    """Scene-wide facts: fill values, bit-depth sanity, and the method's decimated scene sample.

    Methods that need no scene sample get a light read: the MS at its own resolution plus a few
    PAN windows through the engine (decoding ~1/16 of a large PAN instead of all of it: 0.8 s of an
    8192² run); a full decimated read settles the "every pixel is nodata" case if they show none.
    When no input pixel can be invalid and no bit-depth check is due, there is nothing to learn
    and nothing is read (0.2-0.3 s of start-up on 4096² and 8192² scenes).
    """
    light = not plan.method.needs_scene_sample
    dt = np.dtype(plan.out_dtype)
    check_peak = dt.kind == "u" and plan.bit_depth_source.startswith("sensor")
    if light and not check_peak and not _may_be_invalid(plan):
        return SceneInfo(sensor=plan.sensor, n_bands=plan.bands, ratio=plan.alignment.cols.ratio,
                         bit_depth=plan.bit_depth)
    s: dict[str, Any] | None = None
    if light:
        a = plan.alignment
        wins = crop_windows(a.height, a.width, size=128)
        s = {"ms_lr": reader.sample_ms_lr()}
        tins = [engine.inputs(w) for w in wins]
        pan_vals = np.concatenate([t.pan[t.valid] for t in tins])
        if pan_vals.size == 0:
            s = None  # decide on the whole canvas
        else:
            reader.pan_fill = float(pan_vals.mean())
            ms_lr = s["ms_lr"]
            reader.ms_fill = np.nan_to_num(np.nanmean(ms_lr.reshape(ms_lr.shape[0], -1), axis=1)).astype(np.float32)
            pan_sample = ms = None
    if s is None:
        s = reader.sample()
        valid = np.isfinite(s["pan"])
        if not valid.any():
            raise RadiometryError("every pixel of the output area is nodata", path=str(plan.request.pan),
                                  fix="check the nodata values (--nodata) and that PAN and MS cover the same area")
        ms = s["ms"]
        pan_sample = s["pan"]
        reader.pan_fill = float(np.nanmean(s["pan"]))
        reader.ms_fill = np.nan_to_num(np.nanmean(ms.reshape(ms.shape[0], -1), axis=1)).astype(np.float32)
    peak = float(np.nanmax(s["ms_lr"])) if np.isfinite(s["ms_lr"]).any() else 0.0
    if check_peak and peak > 2 ** plan.bit_depth - 1:
        new_bits = dt.itemsize * 8
        msg = (f"MS values reach {peak:.0f}, above the {plan.bit_depth}-bit range of the "
               f"{plan.bit_depth_source}: using {new_bits} bits (set --bit-depth to override)")
        plan.notices.append(msg)
        if notice:
            notice(msg)
        plan.bit_depth, plan.bit_depth_source = new_bits, "data range"
    return SceneInfo(sensor=plan.sensor, n_bands=plan.bands, ratio=plan.alignment.cols.ratio,
                     bit_depth=plan.bit_depth, pan_sample=pan_sample, ms_sample=ms, ms_lr_sample=s["ms_lr"])


def _may_be_invalid(plan: FusePlan) -> bool:
    """Whether an input pixel inside its raster can be invalid: a nodata value (declared or
    ``--nodata``), a float type (NaN) or an MS warped to the PAN's CRS (no data beyond its edges).
    If none can, every pixel of the canvas is valid (pixels outside a raster take reflected
    values), so the fill values are never used and "every pixel is nodata" cannot happen."""
    a = plan.alignment
    dtypes = [a.pan.dtype] + [f.dtype for f in a.ms.files]
    return (plan.pan_nodata is not None or plan.ms_nodata is not None or a.reprojected
            or any(np.dtype(d).kind not in "ui" for d in dtypes))


def crop_windows(height: int, width: int, *, whole_below: int = 1024, size: int = 256, grid: int = 4) -> list[Window]:
    """Where the statistics crops go: the whole canvas if small, else a grid spread over the scene."""
    if height <= whole_below and width <= whole_below:
        return [Window(0, 0, height, width)]
    h, w = min(size, height), min(size, width)
    rows = sorted({round(i * (height - h) / max(grid - 1, 1)) for i in range(grid)})
    cols = sorted({round(j * (width - w) / max(grid - 1, 1)) for j in range(grid)})
    return [Window(r, c, h, w) for r in rows for c in cols]


@contextlib.contextmanager
def open_scene(plan: FusePlan, *, notice: NoticeCallback | None = None,
               fit: bool = True) -> Iterator[tuple[SceneInfo, _Engine]]:
    """Open a planned scene for reading: its :class:`SceneInfo` (with ``windows`` set to the engine)
    and the engine, with the method fitted (``fit=True``) on it. Used by :func:`fuse` and by
    commands that learn from scenes without writing them (``pansharpen adapt``)."""
    a = plan.alignment
    if notice is not None and getattr(plan.method, "notify", False) is None:
        plan.method.notify = notice  # methods that report while they run (networks)
    with SceneReader(a, pan_nodata=plan.pan_nodata, ms_nodata=plan.ms_nodata) as reader, \
            contextlib.closing(_Engine(plan, reader)) as engine:
        scene = _scene_info(plan, reader, engine, notice)
        scene.windows = engine
        if plan.method.needs_scene_sample:
            scene.crops = [engine.inputs(w) for w in crop_windows(a.height, a.width)]
        if fit:
            plan.method.fit(scene)
        yield scene, engine


def fuse(req: FuseRequest, *, progress: ProgressCallback | None = None,
         notice: NoticeCallback | None = None) -> dict[str, Any]:
    """Pansharpen ``req.pan`` + ``req.ms`` into ``req.out``. Returns a summary dict."""
    if req.out is None:
        raise UsageError("no output file given", fix="pass -o OUT.tif")
    t0 = time.perf_counter()
    plan = plan_fuse(req)
    if notice:
        for n in plan.notices:
            notice(n)
    a = plan.alignment
    tiles = plan.tiles
    if progress:
        progress(ProgressEvent("stats", 0, 1))
    timing = {"read_s": 0.0, "read_wait_s": 0.0, "compute_s": 0.0, "assemble_s": 0.0, "write_wait_s": 0.0,
              "write_s": 0.0}
    tune_malloc()  # numpy temporaries and GDAL's block buffers reuse heap pages (see runtime.py)
    # without overlap nothing is blended: tiles are converted to the output type on the pool,
    # straight into their place in the strip (the snapped last tile of a row, which overlaps its
    # neighbour, is blended in float and rounded: tiling.blend_into); and wide scenes are done in
    # vertical stripes, so that memory does not grow with the width
    per_tile = tiles.overlap == 0
    groups = plan.column_groups()
    units = _unit_order(tiles, groups)
    with open_scene(plan, notice=notice) as (_scene, engine), \
            contextlib.closing(_RowReader(engine, tiles, timing, enabled=req.prefetch,
                                          interpolate=plan.prefetch_interpolates,
                                          units=[[tiles.tile_at(i, j).core for j in range(*groups[g])]
                                                 for i, g in units])) as rows:
        if progress:
            progress(ProgressEvent("stats", 1, 1))
        timing["setup_s"] = time.perf_counter() - t0  # plan, headers, scene statistics, method fit
        if per_tile:
            asms = [StripAssembler(tiles.columns(*g), plan.bands, dtype=np.dtype(plan.out_dtype),
                                   nodata=plan.out_nodata) for g in groups]
            sink: TileSink = _OutputSink(plan)
        else:
            asms = [StripAssembler(tiles.columns(*g), plan.bands + 1) for g in groups]
            sink = _FloatSink(plan.bands)
        done = 0
        with OutputWriter(req.out, width=a.width, height=a.height, count=plan.bands, dtype=plan.out_dtype,
                          crs=a.pan.crs, transform=a.out_transform, nodata=plan.out_nodata, fmt=req.fmt,
                          creation_options=req.creation_options, overwrite=req.overwrite, tags=_tags(plan),
                          band_descriptions=plan.band_names,
                          band_colors=[b.common for b in plan.sensor.bands],
                          background=req.background_write) as writer:
            # networks: their --batch; classical methods: a few tiles at a time for the thread pool
            group = int(getattr(plan.method, "batch", 0)) or 2 * engine.threads
            for k, (i, g) in enumerate(units):
                j0, j1 = groups[g]
                row = [tiles.tile_at(i, j) for j in range(j0, j1)]
                raws = rows.get(k)  # read in the background while the previous unit was computed
                asm = asms[g]
                asm.begin_row()
                views = [asm.direct_view(j) for j in range(len(row))] if per_tile else [None] * len(row)
                outs: dict[int, np.ndarray] = {}
                t = time.perf_counter()
                for g in range(0, len(row), group):
                    part = row[g:g + group]
                    res = engine.tiles([t.core for t in part], tiles.context, raws[g:g + group], sink,
                                       views[g:g + group])
                    outs.update((g + k, o) for k, o in enumerate(res) if views[g + k] is None)
                    for tl in part:
                        done += 1
                        if progress:
                            progress(ProgressEvent("tiles", done, tiles.n_tiles, tl.core.height * tl.core.width))
                t1 = time.perf_counter()
                row0, block = asm.finish_row(i, outs)
                del outs
                if block.shape[1] and not per_tile:
                    block = _to_output(block, plan, inplace=True)
                t2 = time.perf_counter()
                if block.shape[1]:
                    writer.write_rows(row0, block, owned=True, col0=tiles.col_starts[j0])
                t3 = time.perf_counter()
                timing["compute_s"] += t1 - t
                timing["assemble_s"] += t2 - t1
                timing["write_wait_s"] += t3 - t2
            if progress:
                progress(ProgressEvent("finalize", 0, 1))
            t = time.perf_counter()
        timing["write_wait_s"] += time.perf_counter() - t  # the last blocks: compression, rename, COG
        timing["write_s"] = writer.busy_s
    seconds = time.perf_counter() - t0
    mpx = a.width * a.height / 1e6
    return {
        **plan.to_dict(),
        "tiles_skipped_nodata": engine.skipped,
        "seconds": round(seconds, 3),
        "megapixels": round(mpx, 3),
        "mpx_per_s": round(mpx / seconds, 3) if seconds > 0 else None,
        "timings": {k: round(v, 3) for k, v in timing.items()},
    }


def default_choice_for(req: FuseRequest) -> Any:
    """What ``fuse`` runs when neither a method nor a model is given, from the scene's headers:
    sensor (``req.sensor``, product or file tags), band count, PAN/MS ratio and the product's band
    names (:func:`pansharpen_cli.methods.default_choice`; reads manifests only, never imports torch)."""
    import dataclasses

    from .methods import default_choice

    probe = plan_fuse(dataclasses.replace(req, method="wbrovey", method_options={}, resampling=None, out=None))
    names = tuple(req.band_names) if req.band_names else None
    return default_choice(probe.sensor.key, probe.bands, probe.alignment.cols.ratio, names)


def info(pan: str | Path, ms: Sequence[str | Path], *, ratio: float | None = None,
         extent: str = "intersection") -> dict[str, Any]:
    """How a PAN/MS pair lines up (``pansharpen info``)."""
    a = align(inspect_raster(pan, "PAN"), inspect_ms(ms), extent=extent, ratio=ratio)
    return a.summary()


def fuse_arrays(pan: np.ndarray, ms_lr: np.ndarray, method: str | Method, *, ratio: int,
                sensor: str | None = None, phase: str = "toolbox", tile: int = 512, overlap: int | None = None,
                bit_depth: int | None = None, method_options: dict[str, Any] | None = None,
                workdir: str | Path | None = None) -> np.ndarray:
    """Fuse in-memory arrays through exactly the same engine as :func:`fuse` (float32 result).

    ``pan`` (H, W) and ``ms_lr`` (B, H/ratio, W/ratio) in digital numbers. ``phase`` says where the MS
    samples sit: ``"toolbox"`` - LR pixel k is centred on PAN pixel ``ratio*k + ratio//2`` (what the
    toolbox's decimation produces, e.g. Wald-degraded pairs), or ``"corner"`` - corner-aligned grids
    (as delivered by VHR products). Used by the evaluation protocols and tests.
    """
    import tempfile

    from .raster import write_array

    shift = 0.5 if phase == "toolbox" else 0.0
    if phase not in ("toolbox", "corner"):
        raise UsageError(f"unknown phase '{phase}'", fix="use toolbox or corner")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="pansharpen-") as d:
        dp = Path(d)
        pt = (1.0, 0.0, 0.0, 0.0, -1.0, float(pan.shape[0]))
        mt = (float(ratio), 0.0, shift, 0.0, -float(ratio), float(pan.shape[0]) - shift)
        write_array(dp / "pan.tif", pan.astype(np.float32)[None], pt, bit_depth=bit_depth)
        write_array(dp / "ms.tif", ms_lr.astype(np.float32), mt, bit_depth=bit_depth)
        req = FuseRequest(pan=dp / "pan.tif", ms=[dp / "ms.tif"], out=dp / "out.tif", method=method,
                          method_options=dict(method_options or {}), sensor=sensor, tile=tile, overlap=overlap,
                          bit_depth=bit_depth, dtype="float32", extent="pan",
                          creation_options={"COMPRESS": "NONE"})
        fuse(req)
        from .raster import read_full

        return read_full(dp / "out.tif").astype(np.float32)
