"""Where the time of ``pansharpen fuse`` goes: cProfile of the CLI, grouped by pipeline stage.

Runs ``pansharpen fuse --pan P --ms M -o OUT --method wbrovey --quiet --overwrite`` in this process
under cProfile and prints wall seconds per stage (startup/imports, scene statistics, reading,
resampling, the method, strip assembly, float -> int conversion, writing = GDAL's DEFLATE) and the
top functions by own time.

For "what if" diagnosis it can patch the library *at run time* (nothing is edited):

- ``--cachemax-mib N``: set ``pansharpen_cli.raster.GDAL_ENV["GDAL_CACHEMAX"]`` to N MiB, given in
  bytes as rasterio expects (an int there is passed to ``GDALSetCacheMax64``, i.e. bytes);
- ``--blas-threads N``: set ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` before numpy is imported.

Usage::

    python benchmarks/profile_fuse.py --size 4096                       # as shipped
    python benchmarks/profile_fuse.py --size 8192 --cachemax-mib 128 --blas-threads 1
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

STAGES: dict[str, list[tuple[str, str]]] = {
    # stage -> (file suffix, function name) whose *cumulative* time is the stage's
    "scene statistics (decimated read)": [("pipeline.py", "_scene_info")],
    "read PAN + MS windows (GDAL decode)": [("raster.py", "read_pan"), ("raster.py", "read_ms_lr")],
    "resample MS (23-tap / cubic, columns then rows)": [("resample.py", "resample_cols"),
                                                         ("resample.py", "resample_rows")],
    "method (wbrovey)": [("simple.py", "fuse_tile")],
    "strip assembly": [("tiling.py", "finish_row")],
    "float -> output type (_OutputSink / _FloatSink)": [("pipeline.py", "__call__")],
    "write (GDAL DEFLATE + I/O)": [("raster.py", "write_rows"), ("raster.py", "__exit__")],
}


def _cum(stats: pstats.Stats, suffix: str, func: str) -> float:
    total = 0.0
    for (fname, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name == func and fname.endswith(suffix) and "pansharpen_cli" in fname:
            total += ct
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096, help="scene size (made by make_scenes.py if missing)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/psbench"))
    ap.add_argument("--cachemax-mib", type=int, default=None, help="patch GDAL_ENV's GDAL_CACHEMAX (MiB)")
    ap.add_argument("--blas-threads", type=int, default=None, help="OPENBLAS_NUM_THREADS for this run")
    ap.add_argument("--top", type=int, default=15, help="functions to list by own time")
    ap.add_argument("--save", type=Path, default=None, help="also save the raw profile here")
    args = ap.parse_args(argv)

    if args.blas_threads is not None:  # must precede the first numpy import
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.blas_threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_scenes import make_scene

    scene = make_scene(args.size, args.scratch)
    out = args.scratch / f"out_{args.size}_profile.tif"
    t_start = time.perf_counter()
    prof = cProfile.Profile()
    prof.enable()
    import pansharpen_cli.raster as raster

    if args.cachemax_mib is not None:
        raster.GDAL_ENV["GDAL_CACHEMAX"] = args.cachemax_mib * 2**20
    from pansharpen_cli.cli import main as cli_main

    sys.argv = ["pansharpen", "fuse", "--pan", str(scene.pan), "--ms", str(scene.ms), "-o", str(out),
                "--method", "wbrovey", "--quiet", "--overwrite"]
    try:
        cli_main()
    except SystemExit as e:
        if e.code:
            raise
    prof.disable()
    wall = time.perf_counter() - t_start
    out.unlink(missing_ok=True)

    stats = pstats.Stats(prof)
    if args.save:
        stats.dump_stats(str(args.save))
    fuse_total = _cum(stats, "pipeline.py", "fuse")
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"scene {args.size}², GDAL_CACHEMAX patch: {args.cachemax_mib} MiB, BLAS threads: "
          f"{args.blas_threads or 'default'}; wall {wall:.2f} s (profiled), load {os.getloadavg()[0]:.2f}")
    rows = [("imports (scipy.signal, typer...) + CLI parsing", total - fuse_total)]
    accounted = 0.0
    for stage, funcs in STAGES.items():
        s = sum(_cum(stats, f, n) for f, n in funcs)
        accounted += s
        rows.append((stage, s))
    rows.append(("other (tile bookkeeping, copies, open/close)", fuse_total - accounted))
    print(f"{'stage':<50} {'seconds':>8} {'share':>6}")
    for name, s in rows:
        print(f"{name:<50} {s:8.2f} {100 * s / total:5.1f}%")
    print(f"{'total (profiled)':<50} {total:8.2f}")
    print()
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
