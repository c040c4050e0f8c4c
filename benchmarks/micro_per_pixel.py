"""Per-tile cost of a per-pixel method by the size of the bands of rows it is fused in.

One 512² tile, 4 bands, ratio 4, GDAL-style cubic, ``wbrovey`` and the uint16 output sink, in
one thread (the pipeline runs one tile per core): the whole tile at once, bands of rows
interpolated and interleaved (:func:`resample_rows`), and bands whose phases are fused without
interleaving (:func:`resample_rows_phases`, what ``_Engine._per_pixel`` does). Prints the best
of 5 x 8 runs per variant, in ms per tile. Numbers are for choosing
``_Engine.PER_PIXEL_CHUNK_BYTES``; they move with the machine's load, so compare variants of the
same run.

Usage::

    python benchmarks/micro_per_pixel.py
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from pansharpen_cli.methods import TileInput, get_method
from pansharpen_cli.pipeline import _OutputSink
from pansharpen_cli.resample import AxisMap, resample_block, resample_cols, resample_rows, resample_rows_phases

TILE, BANDS, RATIO, EXTENT = 512, 4, 4, 8192


def best_ms(fn, n: int = 40) -> float:
    fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n // 5):
            fn()
        best = min(best, (time.perf_counter() - t) / (n // 5))
    return best * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    amap = AxisMap(1.0 / RATIO, -(RATIO - 1) / (2 * RATIO))  # pixel-centre phase
    halo = 3
    lr = rng.uniform(200, 3000, size=(BANDS, TILE // RATIO + 2 * halo, TILE // RATIO + 2 * halo)).astype(np.float32)
    pan = rng.uniform(200, 3000, size=(TILE, TILE)).astype(np.float32)
    method = get_method("wbrovey")
    method.weights = np.full(BANDS, 1.0 / BANDS, dtype=np.float32)
    sink = _OutputSink(SimpleNamespace(out_dtype="uint16", bands=BANDS, out_nodata=None, bit_depth=16))
    dest = sink.alloc(TILE, TILE)
    k0 = -halo
    span = (0, TILE)

    def fused(up: np.ndarray, rows: slice) -> None:
        f = method.fuse_tile(TileInput(pan=pan[rows], ms_up=up, valid=np.ones(up.shape[1:], bool)))
        sink(f, None, dest[:, rows])

    def whole() -> None:
        fused(resample_block(lr, amap, amap, k0, k0, span, span, (EXTENT, EXTENT), "cubic"), slice(0, TILE))

    def interleaved(n: int) -> None:
        half = resample_cols(lr, amap, k0, span, EXTENT, "cubic")
        for j in range(0, TILE, n):
            fused(resample_rows(half, amap, k0, (j, j + n), EXTENT, "cubic"), slice(j, j + n))

    def phases(n: int) -> None:
        half = resample_cols(lr, amap, k0, span, EXTENT, "cubic")
        for j in range(0, TILE, n):
            for rows, up in resample_rows_phases(half, amap, k0, (j, j + n), EXTENT, "cubic"):
                fused(up, slice(j + rows.start, j + rows.stop, rows.step))

    print(f"{'whole tile':36s} {best_ms(whole):6.2f} ms")
    for n in (128, 64, 32):
        print(f"{f'bands of {n} rows, interleaved':36s} {best_ms(lambda n=n: interleaved(n)):6.2f} ms")
    for n in (256, 128, 64):
        kib = n // RATIO * TILE * BANDS * 4 // 1024
        print(f"{f'bands of {n} rows, phases ({kib} KiB)':36s} {best_ms(lambda n=n: phases(n)):6.2f} ms")


if __name__ == "__main__":
    main()
