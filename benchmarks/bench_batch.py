"""Benchmark ``pansharpen batch`` (issue #6): scenes per minute, local process pool vs Dask LocalCluster.

It builds ``--scenes`` (default 8) real-pixel scenes of ``--size``^2 PAN pixels (default 2048) in a
scratch folder: the Landsat-8 base tile of ``make_scenes.py`` mirror-tiled like there, but each
scene starts at a different offset into the mirror tiling (multiples of the ratio, 4, so PAN and
MS stay registered), so no two scenes have the same pixels (checked). A CSV manifest
``pan,ms,out`` lists them. Then it runs, in the same run and each into a fresh OUTDIR:

- ``jobs1`` : ``pansharpen batch MANIFEST -o OUTDIR --method wbrovey --jobs 1 --quiet --json``
- ``jobs2`` : the same with ``--jobs 2`` (2 spawned worker processes, each capped at cores // 2 threads)
- ``dask1`` / ``dask2`` : the same with ``--scheduler ADDRESS`` (no ``--jobs``: as many scenes in
  flight as the cluster has threads) on a ``distributed.LocalCluster(n_workers=1|2,
  threads_per_worker=1)`` started by this script before the run (its start-up is not timed; the
  workers import pansharpen on their first task, as the pool's workers do). Dask's own worker
  environment applies (``distributed.nanny.pre-spawn-environ``: ``OMP/MKL/OPENBLAS_NUM_THREADS=1``,
  ``MALLOC_TRIM_THRESHOLD_``); the report records it.

Each run is a child process timed from outside (wall); scenes/min = scenes done / wall x 60; CPU
and peak RSS are those of the ``pansharpen batch`` process (with ``--jobs N`` its pool workers'
CPU is included, the Dask workers' is not). The batch's own report (``batch-report.json``)
gives per-scene seconds. Every variant's outputs are checked against the first variant's:
SHA-256 of the pixel data (and of the files, as the batch report records them).

Usage::

    python benchmarks/bench_batch.py                       # 8 scenes of 2048², 4 variants (~5 min)
    python benchmarks/bench_batch.py --size 512 --scenes 2 --variants jobs1 dask2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import find_pansharpen, fmt_load, machine_info, pixel_sha256, run_measured  # noqa: E402
from make_scenes import GTIFF_OPTIONS, RATIO, STRIP, BaseTile, load_base_tile, mirror_index  # noqa: E402

VARIANTS = ("jobs1", "jobs2", "dask1", "dask2")
WORKER_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GDAL_NUM_THREADS",
                   "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


# ---------------------------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------------------------


def scene_offset(k: int, base: BaseTile) -> tuple[int, int]:
    """PAN (row, col) offset of scene k into the mirror tiling: distinct, multiples of RATIO."""
    ph, pw = base.pan.shape
    # steps co-prime with the periods (2 x base, in MS pixels) so the offsets do not repeat for many k
    return (RATIO * ((k * 97) % (2 * ph // RATIO)), RATIO * ((k * 151) % (2 * pw // RATIO)))


def _write_offset(path: Path, base: np.ndarray, size: int, off: tuple[int, int], transform: Affine,
                  crs: Any, strip: int) -> None:
    """``make_scenes._write_mirrored`` starting at ``off`` (rows, cols) into the mirror tiling."""
    count, bh, bw = base.shape
    cols = mirror_index(np.arange(size) + off[1], bw)
    tmp = path.with_name(f".{path.name}.partial")
    profile = dict(driver="GTiff", width=size, height=size, count=count, dtype="uint16", crs=crs,
                   transform=transform, **GTIFF_OPTIONS)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, strip):
            r1 = min(size, r0 + strip)
            rows = mirror_index(np.arange(r0, r1) + off[0], bh)
            dst.write(base[:, rows[:, None], cols[None, :]], window=Window(0, r0, size, r1 - r0))
    os.replace(tmp, path)


def make_batch_scenes(folder: Path, n_scenes: int, size: int) -> list[dict[str, Any]]:
    """Write (or reuse) ``scene{k}/pan.tif`` and ``scene{k}/ms.tif`` and ``manifest.csv`` in ``folder``."""
    if size % RATIO:
        raise SystemExit(f"--size {size} must be a multiple of {RATIO}")
    folder.mkdir(parents=True, exist_ok=True)
    base: BaseTile | None = None
    scenes = []
    for k in range(n_scenes):
        d = folder / f"scene{k}"
        pan, ms, stamp = d / "pan.tif", d / "ms.tif", d / "offset.json"
        if base is None and not (pan.is_file() and ms.is_file() and stamp.is_file()):
            base = load_base_tile()
        # the offset is a pure function of k and the base tile's shape, recorded beside the scene
        off = scene_offset(k, base) if base is not None else tuple(json.loads(stamp.read_text())["pan_offset"])
        if not (pan.is_file() and ms.is_file() and stamp.is_file()
                and json.loads(stamp.read_text())["pan_offset"] == list(off)):
            assert base is not None
            d.mkdir(parents=True, exist_ok=True)
            x0, y0 = base.origin
            pan_tr = Affine(base.pan_res, 0.0, x0, 0.0, -base.pan_res, y0)
            ms_tr = Affine(base.pan_res * RATIO, 0.0, x0, 0.0, -base.pan_res * RATIO, y0)
            _write_offset(pan, base.pan[None], size, off, pan_tr, base.crs, STRIP)
            _write_offset(ms, base.ms, size // RATIO, (off[0] // RATIO, off[1] // RATIO), ms_tr, base.crs,
                          STRIP // RATIO)
            stamp.write_text(json.dumps({"pan_offset": list(off), "size": size}))
        scenes.append({"id": f"scene{k}.tif", "pan": pan, "ms": ms, "pan_offset": list(off)})
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pan", "ms", "out"])
        for k, s in enumerate(scenes):
            w.writerow([f"scene{k}/pan.tif", f"scene{k}/ms.tif", s["id"]])
    return scenes


# ---------------------------------------------------------------------------------------------
# one variant
# ---------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Cluster:
    """A ``distributed.LocalCluster`` (processes, 1 thread per worker) and a client to inspect it."""

    def __init__(self, n_workers: int):
        from distributed import Client, LocalCluster

        t = time.perf_counter()
        self.cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(n_workers, timeout=120)
        self.start_s = round(time.perf_counter() - t, 2)
        self.address = self.cluster.scheduler_address
        env = self.client.run(lambda: {k: os.environ.get(k) for k in WORKER_ENV_KEYS})
        self.worker_env = next(iter(env.values()), {})
        self.nthreads = sum(self.client.nthreads().values())

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def run_variant(v: str, rep: int, args: argparse.Namespace, ps_cmd: str, folder: Path) -> dict[str, Any]:
    outdir = folder / f"out_{v}_{rep}"
    shutil.rmtree(outdir, ignore_errors=True)
    cmd = [ps_cmd, "batch", str(folder / "manifest.csv"), "-o", str(outdir), "--method", args.method,
           "--quiet", "--json"]
    cluster = None
    row: dict[str, Any] = {"variant": v, "repeat": rep}
    if v.startswith("jobs"):
        cmd += ["--jobs", v[4:]]
    else:
        cluster = Cluster(int(v[4:]))
        cmd += ["--scheduler", cluster.address]
        row.update(cluster_start_s=cluster.start_s, worker_env=cluster.worker_env, cluster_threads=cluster.nthreads)
    try:
        js = folder / f"report_{v}_{rep}.json"
        m = run_measured(cmd, folder / f"batch_{v}_{rep}.log", stdout=js, timeout=args.timeout)
    finally:
        if cluster is not None:
            cluster.close()
    row.update(m.as_dict())
    # the command as the lead would type it: the scheduler address changes every run
    row["command"] = row["command"].replace(cluster.address, "tcp://SCHEDULER:PORT") if cluster else row["command"]
    try:
        report = json.loads(js.read_text())
    except (OSError, ValueError):
        report = None
    if report is None:
        row["failed"] = True
        _log(f"{v} run {rep + 1}: FAILED rc={m.returncode}: {m.stderr_tail.strip()[-400:]}")
        return row
    ok = [s for s in report["scenes"] if s["status"] == "ok"]
    row.update(scenes_ok=len(ok), scenes_total=len(report["scenes"]), batch_seconds=report["seconds"],
               scenes_per_min=round(len(ok) / m.wall_s * 60, 2),
               scene_seconds=[s["seconds"] for s in report["scenes"]],
               file_sha256={s["id"]: s.get("sha256") for s in report["scenes"]},
               pixel_sha256={s["id"]: pixel_sha256(s["output"]) for s in ok},
               worker_processes=len({(s.get("host"), s.get("pid")) for s in ok}))
    if m.returncode != 0 or len(ok) != len(report["scenes"]):
        row["failed"] = True
        row["errors"] = [s.get("error") for s in report["scenes"] if s["status"] != "ok"]
    _log(f"{v:<6} run {rep + 1}: {m.wall_s:7.2f} s  {row['scenes_per_min']:6.2f} scenes/min  "
         f"{len(ok)}/{len(report['scenes'])} ok  per scene {min(row['scene_seconds'] or [0]):.1f}-"
         f"{max(row['scene_seconds'] or [0]):.1f} s  client peak RSS {m.peak_rss_mib:.0f} MiB  "
         f"load {fmt_load(m.load_before)} -> {fmt_load(m.load_after)}"
         + (f"  (cluster started in {cluster.start_s} s)" if cluster else ""))
    if not args.keep_outputs:
        shutil.rmtree(outdir, ignore_errors=True)
    return row


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def check_identical(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r.get("pixel_sha256")]
    if not ok:
        return {"checked": False}
    ref = ok[0]
    pixel_diff = [f"{r['variant']}#{r['repeat'] + 1}" for r in ok[1:] if r["pixel_sha256"] != ref["pixel_sha256"]]
    file_diff = [f"{r['variant']}#{r['repeat'] + 1}" for r in ok[1:] if r["file_sha256"] != ref["file_sha256"]]
    return {"checked": True, "reference": f"{ref['variant']}#{ref['repeat'] + 1}", "runs_compared": len(ok),
            "pixels_identical": not pixel_diff, "pixel_differences": pixel_diff,
            "files_identical": not file_diff, "file_differences": file_diff}


def summarize(rows: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    out = []
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        ok = [r for r in rs if not r.get("failed")]
        if not ok:
            out.append({"variant": v, "failed": True, "command": rs[0]["command"] if rs else None})
            continue
        b = min(ok, key=lambda r: r["wall_s"])
        w = max(ok, key=lambda r: r["wall_s"])
        s = {"variant": v, "runs": len(ok), "best_wall_s": b["wall_s"], "worst_wall_s": w["wall_s"],
             "best_scenes_per_min": b["scenes_per_min"], "worst_scenes_per_min": w["scenes_per_min"],
             "scene_seconds_median": float(np.median(b["scene_seconds"])), "client_cpu_s": b["cpu_s"],
             "client_peak_rss_mib": b["peak_rss_mib"], "load_before": b["load_before"],
             "load_after": b["load_after"], "command": b["command"]}
        for k in ("cluster_start_s", "worker_env", "cluster_threads"):
            if k in b:
                s[k] = b[k]
        out.append(s)
    return out


def markdown(info: dict[str, Any], args: argparse.Namespace, scenes: list[dict[str, Any]],
             summary: list[dict[str, Any]], ident: dict[str, Any]) -> str:
    lines = [
        f"Command: `{info['command_line']}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), {info['ram_gib']} GiB RAM, "
        f"Linux {info['kernel']}; {info['date_utc']}; load average at start {fmt_load(info['loadavg_start'])}, "
        f"at end {fmt_load(info.get('loadavg_end', ()))}; {info.get('elapsed_min', '?')} min in all.",
        f"Versions: {info['pansharpen']} (HEAD {info.get('repo_head')}; the working tree may differ), Python "
        f"{info['python']}, numpy {info['numpy']}, rasterio {info['rasterio']} (GDAL {info['rasterio_gdal']}), "
        f"distributed {info.get('distributed')}, dask {info.get('dask')}.",
        "",
        f"{len(scenes)} scenes of {args.size}² PAN px (MS {args.size // RATIO}² x 4, uint16, ratio 4; real Landsat-8 "
        f"pixels mirror-tiled at PAN offsets {', '.join(str(tuple(s['pan_offset'])) for s in scenes)}), method "
        f"`{args.method}`, {args.repeat} run(s) per variant, interleaved.",
        "",
        "| variant | scenes/min best (worst) | wall s best (worst) | median s per scene | client CPU s | client peak "
        "RSS MiB | load before -> after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        if s.get("failed"):
            lines.append(f"| {s['variant']} | failed | | | | | |")
            continue
        lines.append(f"| {s['variant']} | {s['best_scenes_per_min']:.2f} ({s['worst_scenes_per_min']:.2f}) | "
                     f"{s['best_wall_s']:.2f} ({s['worst_wall_s']:.2f}) | {s['scene_seconds_median']:.2f} | "
                     f"{s['client_cpu_s']:.1f} | {s['client_peak_rss_mib']:.0f} | {fmt_load(s['load_before'])} -> "
                     f"{fmt_load(s['load_after'])} |")
    dask = [s for s in summary if s.get("worker_env")]
    if dask:
        lines += ["", "Dask LocalClusters (processes, threads_per_worker=1; start-up not timed): " + "; ".join(
            f"{s['variant']}: {s['cluster_threads']} threads, started in {s['cluster_start_s']} s" for s in dask)
            + f". Worker environment: {dask[0]['worker_env']}."]
    if ident.get("checked"):
        lines += ["", f"Outputs ({ident['runs_compared']} runs vs {ident['reference']}): pixel data "
                  + ("**identical**" if ident["pixels_identical"] else f"**DIFFERENT** in {ident['pixel_differences']}")
                  + "; files " + ("byte-identical" if ident["files_identical"]
                                  else f"differ in {ident['file_differences']} (metadata?)") + "."]
    lines += ["", "Commands:", ""] + [f"- `{s['variant']}`: `{s['command']}`" for s in summary if s.get("command")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See benchmarks/README.md.")
    ap.add_argument("--scenes", type=int, default=8, help="number of scenes (default 8)")
    ap.add_argument("--size", type=int, default=2048, help="PAN size of each scene (square), pixels (default 2048)")
    ap.add_argument("--method", default="wbrovey", help="fusion method for every scene (default wbrovey)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="which runs (default: all four)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant, interleaved (best and worst reported)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/psbench"),
                    help="scenes go to SCRATCH/batch_SIZE (outside the repo; never commit them)")
    ap.add_argument("--timeout", type=float, default=3600, help="kill a batch run after this many seconds")
    ap.add_argument("--json", type=Path, default=None, help="all results as JSON (default SCRATCH/bench_batch.json)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the markdown report here")
    ap.add_argument("--keep-outputs", action="store_true", help="keep every variant's OUTDIR")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    ps_cmd = find_pansharpen()
    info = machine_info(["benchmarks/bench_batch.py", *argv], ps_cmd, extra_modules=("distributed", "dask"))
    _log(json.dumps(info, default=str))
    folder = args.scratch / f"batch_{args.size}"
    scenes = make_batch_scenes(folder, args.scenes, args.size)
    pan_hashes = {pixel_sha256(s["pan"]) for s in scenes}
    if len(pan_hashes) != len(scenes):
        raise SystemExit("two generated scenes have identical PAN pixels: change scene_offset()")
    _log(f"{len(scenes)} distinct scenes of {args.size}² in {folder} (manifest {folder / 'manifest.csv'})")

    rows = []
    for rep in range(args.repeat):
        for v in args.variants:
            rows.append(run_variant(v, rep, args, ps_cmd, folder))
    summary = summarize(rows, args.variants)
    ident = check_identical(rows)
    info["loadavg_end"] = os.getloadavg()
    info["elapsed_min"] = round((time.perf_counter() - t_start) / 60, 1)
    report = markdown(info, args, scenes, summary, ident)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    json_path = args.json or args.scratch / "bench_batch.json"
    json_path.write_text(json.dumps({"machine": info, "scenes": scenes, "summary": summary, "outputs": ident,
                                     "runs": rows}, indent=2, default=str))
    _log(f"\nall runs: {json_path}")
    ok = all(not s.get("failed") for s in summary) and ident.get("pixels_identical", False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
