"""Benchmark ``pansharpen fuse --model`` (issue #4) and its read/compute/write split (issue #6).

For each scene size N (real Landsat-8 pixels mirror-tiled to N x N, see ``make_scenes.py``; 4 bands
uint16, ratio 4, corner-aligned) it measures, in one run:

1. ``cli``: ``pansharpen fuse --pan P --ms M -o OUT --model MODEL --quiet --overwrite --json`` as a
   child process: wall, Mpx/s (N^2 output pixels / wall), peak RSS (``ru_maxrss`` from ``wait4``),
   CPU utilisation, and the pipeline's own ``timings`` from the JSON summary;
2. ``lib-prefetch-off`` / ``lib-prefetch-on`` (the sizes of ``--split-sizes``): the same fusion
   through the library, ``pipeline.fuse(FuseRequest(..., method=NetworkMethod(MODEL), prefetch=X,
   background_write=X))`` (X False: read, compute and write one after the other in one thread)
   in a child process (the method built as ``cli._fuse_method`` builds it for ``--model``): the time
   split into setup / read / compute / assemble / write and the stall fraction
   ``(read_wait_s + write_wait_s) / seconds`` without and with the read/compute/write overlap;
3. ``naive``: a "research-style" whole-image forward pass of the same network in a child process:
   read PAN and MS whole with rasterio, MS interpolated to the PAN size with ``torch`` bicubic,
   divided by the model's scale, one ``net(pan, lms, ms)`` under ``torch.inference_mode`` in the
   default (NCHW) layout, no malloc tuning, written as the same GeoTIFF format as ours (tiled 512,
   DEFLATE, predictor 2). Skipped (with the estimate printed) when its estimated peak RSS exceeds
   the memory available: the estimate is a straight line RSS = a + b N^2 through naive runs at the
   small ``--naive-calib`` sizes (and any larger naive run already measured), falling back to an
   analytic count of the live activations when fewer than two points exist.

Also measured in the same run:

- the network's FLOPs per output pixel, counted exactly with forward hooks on its ``nn.Conv2d``,
  ``nn.ConvTranspose2d`` and ``nn.Linear`` layers on a small input (FLOPs = 2 x MACs; bias
  additions, activations, residual additions, the ``pan - lms`` input difference and the
  normalisation are *not* counted; their per-pixel count is reported beside it and is below 1 %
  for FusionNet), cross-checked with ``torch.utils.flop_counter.FlopCounterMode`` (which also sees
  functional convolutions). Useful FLOPs per run = FLOPs/px x N^2; executed FLOPs add the tiles'
  context halo and overlap (from the run's tile plan), i.e. the work the tiled engine really does;
- the machine's convolution ceiling: a 3x3 ``Conv2d`` 32 -> 32, batch 1, channels-last fp32 on a
  ``--ceiling-size``^2 input (default 532 = a 512 tile + its context), glibc malloc tuned
  (``pansharpen_cli.runtime.tune_malloc()``), torch's default thread count, best of
  ``--ceiling-repeat`` timings, in a child process at the start and at the end of the run (the
  higher one is the ceiling used; both are reported because the machine may be shared).

Goals checked at the end (issue #4 / #6): ``fuse --model`` at least the naive speed; peak RSS under
1.5 GiB at 8192^2; useful GFLOP/s at least half the ceiling; stalls under 10 % of wall with prefetch.

All outputs go to ``--scratch`` (default ``/tmp/psbench``), never into the repository, and are
deleted after each size unless ``--keep-outputs``. Outputs of the CLI and library runs are checked
to have identical pixels (SHA-256 of the pixel data); the naive output's agreement with ours is
printed (different MS interpolators: bicubic vs the 23-tap toolbox interpolator).

Usage::

    python benchmarks/bench_model.py                                  # 4096^2 and 8192^2 (long!)
    python benchmarks/bench_model.py --sizes 512 1024 --split-sizes 1024 --naive-calib 256 512
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fuse import compare_outputs  # noqa: E402
from benchlib import (  # noqa: E402
    find_pansharpen,
    fmt_load,
    machine_info,
    mem_available_gib,
    pixel_sha256,
    run_measured,
)
from make_scenes import load_base_tile, make_scene  # noqa: E402

DEFAULT_MODEL = "fusionnet.vhr4"
GIB = 2.0**30
MIB = 2.0**20
RSS_GOAL_GIB = 1.5
STALL_GOAL = 0.10
CEILING_GOAL = 0.5
# the output format of `pansharpen fuse` (its default), also used for the naive pass's output
OUT_PROFILE = {"driver": "GTiff", "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "DEFLATE",
               "predictor": 2, "num_threads": "ALL_CPUS", "bigtiff": "IF_SAFER"}


# ---------------------------------------------------------------------------------------------
# FLOPs of the network
# ---------------------------------------------------------------------------------------------


def _net_inputs(spec: Any, entry: Any, size: int, batch: int = 1) -> tuple[Any, Any, Any]:
    """Random normalised (pan, lms, ms) for the network, as ``NetworkMethod._forward`` feeds it."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    pan = torch.rand(batch, 1, size, size, generator=g)
    lms = torch.rand(batch, entry.bands, size, size, generator=g)
    ms = None
    if spec.input_convention in ("lr", "highpass"):
        ms = F.interpolate(lms, scale_factor=1.0 / entry.ratio, mode="area")
    return pan, None if spec.input_convention == "lr" else lms, ms


def count_flops(model: str, sizes: tuple[int, ...] = (128, 256)) -> dict[str, Any]:
    """FLOPs per output pixel of ``model`` (2 x MACs of Conv2d/ConvTranspose2d/Linear; see the module doc)."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from pansharpen_cli import zoo

    net, spec, entry = zoo.load_network(model)
    m = max(1, spec.size_multiple)
    per: list[dict[str, Any]] = []
    for s in sizes:
        s = math.ceil(s / m) * m
        layers: list[dict[str, Any]] = []

        def hook(mod: nn.Module, inp: tuple[Any, ...], out: Any, name: str, layers: list = layers) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                macs = out.numel() * k
            elif isinstance(mod, nn.ConvTranspose2d):
                k = mod.out_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
                macs = inp[0].numel() * k
            else:  # nn.Linear
                macs = out.numel() * mod.in_features
            layers.append({"layer": name, "type": type(mod).__name__, "macs": int(macs),
                           "bias_adds": int(out.numel()) if getattr(mod, "bias", None) is not None else 0,
                           "out_channels": int(out.shape[1]) if out.dim() == 4 else int(out.shape[-1]),
                           "out_numel": int(out.numel())})

        handles = [mod.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n))
                   for name, mod in net.named_modules() if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
        pan, lms, ms = _net_inputs(spec, entry, s)
        fc = FlopCounterMode(display=False)
        with torch.inference_mode(), fc:
            net(pan, lms, ms)
        for h in handles:
            h.remove()
        px = s * s
        macs = sum(x["macs"] for x in layers)
        per.append({"size": s, "macs_per_px": macs / px, "flops_per_px": 2 * macs / px,
                    "bias_adds_per_px": sum(x["bias_adds"] for x in layers) / px,
                    "flopcounter_flops_per_px": fc.get_total_flops() / px, "layers": layers})
    last = per[-1]
    linear = all(abs(p["flops_per_px"] - last["flops_per_px"]) <= 1e-3 * last["flops_per_px"] for p in per)
    by_type: dict[str, float] = {}
    for x in last["layers"]:
        by_type[x["type"]] = by_type.get(x["type"], 0.0) + 2 * x["macs"] / (last["size"] ** 2)
    # live float32 activations per pixel, for the naive pass's analytic memory estimate: inputs, the
    # output, and about 5 feature maps of the widest layer alive at once (x, conv, relu, conv, x + conv)
    widest = max((x["out_channels"] for x in last["layers"]), default=32)
    return {
        "model": entry.name, "arch": entry.arch, "bands": entry.bands, "ratio": entry.ratio,
        "input_convention": spec.input_convention, "size_multiple": m, "receptive_field": spec.receptive_field,
        "scale": float(entry.scale), "bit_depth": entry.bit_depth,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "n_layers_counted": len(last["layers"]),
        "flops_per_px": last["flops_per_px"], "macs_per_px": last["macs_per_px"],
        "flops_per_px_by_type": by_type, "bias_adds_per_px": last["bias_adds_per_px"],
        "flopcounter_flops_per_px": last["flopcounter_flops_per_px"],
        "per_size": [{k: v for k, v in p.items() if k != "layers"} for p in per],
        "per_px_independent_of_size": linear,
        "widest_channels": widest,
        "naive_bytes_per_px_analytic": 4 * (1 + 2 * entry.bands + 5 * widest),
        "layers": [{"layer": x["layer"], "type": x["type"], "out_channels": x["out_channels"],
                    "flops_per_px": 2 * x["macs"] / last["size"] ** 2} for x in last["layers"]],
        "excluded": "bias additions, activations, residual additions, the pan - lms difference, "
                    "normalisation, padding and interpolation (elementwise; not MACs)",
    }


def executed_pixels(summary: dict[str, Any], size_multiple: int) -> int:
    """Pixels the network really processes in a tiled run: every tile with its context, padded."""
    from pansharpen_cli.tiling import plan_tiles

    g, t = summary["grid"], summary["tiles"]
    plan = plan_tiles(g["height"], g["width"], t["tile"], t["overlap"], t["context"])
    m = max(1, size_multiple)
    total = 0
    for tl in plan:
        h = math.ceil((tl.core.height + 2 * t["context"]) / m) * m
        w = math.ceil((tl.core.width + 2 * t["context"]) / m) * m
        total += h * w
    # tiles without valid pixels are not fused
    skipped = int(summary.get("tiles_skipped_nodata") or 0)
    if skipped and plan.n_tiles:
        total -= round(total * skipped / plan.n_tiles)
    return total


# ---------------------------------------------------------------------------------------------
# child processes (run as `python bench_model.py --child KIND --child-args JSON`)
# ---------------------------------------------------------------------------------------------


def child_ceiling(a: dict[str, Any]) -> dict[str, Any]:
    from pansharpen_cli.runtime import tune_malloc

    tuned = tune_malloc()
    import torch

    size, repeat, inner, c = int(a["size"]), int(a["repeat"]), int(a.get("inner", 3)), int(a.get("channels", 32))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c, c, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, c, size, size).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            conv(x)
        for _ in range(repeat):
            t = time.perf_counter()
            for _ in range(inner):
                conv(x)
            times.append((time.perf_counter() - t) / inner)
    flops = 2 * 9 * c * c * size * size
    best = min(times)
    return {"gflops": flops / best / 1e9, "best_s": best, "median_s": sorted(times)[len(times) // 2],
            "flops_per_forward": flops, "size": size, "channels": c, "repeat": repeat, "inner": inner,
            "torch_threads": torch.get_num_threads(), "malloc_tuned": tuned,
            "all_gflops": [round(flops / t / 1e9, 1) for t in times]}


def child_split(a: dict[str, Any]) -> dict[str, Any]:
    """One fusion through the library, mirroring ``cli._fuse_method`` for ``--model`` (no device options)."""
    import torch

    from pansharpen_cli import runtime, zoo
    from pansharpen_cli.methods.network import NetworkMethod
    from pansharpen_cli.pipeline import FuseRequest, fuse

    notices: list[str] = []
    method = NetworkMethod(zoo.get_model(a["model"]), notify=notices.append)
    req = FuseRequest(pan=a["pan"], ms=[a["ms"]], out=a["out"], method=method, overwrite=True,
                      prefetch=bool(a["prefetch"]), background_write=bool(a["prefetch"]))
    s = fuse(req, notice=notices.append)
    return {"seconds": s["seconds"], "mpx_per_s": s["mpx_per_s"], "timings": s["timings"], "tiles": s["tiles"],
            "grid": {k: s["grid"][k] for k in ("width", "height")},
            "tiles_skipped_nodata": s.get("tiles_skipped_nodata"), "notices": notices,
            "torch_threads": torch.get_num_threads(), "malloc_tuned": runtime._MALLOC_TUNED}


def child_naive(a: dict[str, Any]) -> dict[str, Any]:
    """Research-style whole-image forward pass (see the module doc); stage times in seconds."""
    t0 = time.perf_counter()
    import numpy as np
    import rasterio
    import torch
    import torch.nn.functional as F

    from pansharpen_cli import runtime, zoo

    net, spec, entry = zoo.load_network(a["model"])
    t_load = time.perf_counter()
    with rasterio.open(a["pan"]) as ds:
        pan = ds.read(1).astype(np.float32)
        crs, transform = ds.crs, ds.transform
    with rasterio.open(a["ms"]) as ds:
        ms = ds.read().astype(np.float32)
    t_read = time.perf_counter()
    scale = float(entry.scale)
    h, w = pan.shape
    pan_t = torch.from_numpy(pan)[None, None] / scale
    ms_t = torch.from_numpy(ms)[None] / scale
    del pan, ms
    lms = F.interpolate(ms_t, size=(h, w), mode="bicubic", align_corners=False)
    t_up = time.perf_counter()
    with torch.inference_mode():
        y = net(pan_t, None if spec.input_convention == "lr" else lms,
                ms_t if spec.input_convention in ("lr", "highpass") else None)
    t_fwd = time.perf_counter()
    del lms, pan_t
    out = y[0].numpy()  # an inference tensor: torch refuses in-place ops on it outside inference_mode, numpy not
    np.multiply(out, np.float32(scale), out=out)
    np.rint(out, out=out)
    np.clip(out, 0, 65535, out=out)
    out16 = out.astype(np.uint16)
    del y, out
    with rasterio.open(a["out"], "w", width=w, height=h, count=out16.shape[0], dtype="uint16", crs=crs,
                       transform=transform, **OUT_PROFILE) as dst:
        dst.write(out16)
    t_write = time.perf_counter()
    return {"imports_load_s": t_load - t0, "read_s": t_read - t_load, "upsample_s": t_up - t_read,
            "forward_s": t_fwd - t_up, "write_s": t_write - t_fwd, "total_s": t_write - t0,
            "torch_threads": torch.get_num_threads(), "malloc_tuned": runtime._MALLOC_TUNED,
            "layout": "NCHW (torch default)"}


CHILDREN = {"ceiling": child_ceiling, "split": child_split, "naive": child_naive}


def _run_child(kind: str, args: dict[str, Any], scratch: Path, tag: str) -> tuple[Any, dict[str, Any] | None]:
    out = scratch / f"bench_model_{tag}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-args", json.dumps(args),
           "--child-out", str(out)]
    m = run_measured(cmd, scratch / f"bench_model_{tag}.log")
    res = json.loads(out.read_text()) if m.returncode == 0 and out.is_file() else None
    return m, res


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_ceiling(args: argparse.Namespace, tag: str) -> dict[str, Any] | None:
    m, res = _run_child("ceiling", {"size": args.ceiling_size, "repeat": args.ceiling_repeat}, args.scratch,
                        f"ceiling_{tag}")
    if res is None:
        _log(f"ceiling ({tag}) FAILED rc={m.returncode}: {m.stderr_tail.strip()[-300:]}")
        return None
    res["load_before"], res["load_after"] = m.load_before, m.load_after
    _log(f"ceiling ({tag}): {res['gflops']:.1f} GFLOP/s (3x3 conv {res['channels']}->{res['channels']}, "
         f"{res['size']}², channels-last fp32, {res['torch_threads']} threads, malloc tuned {res['malloc_tuned']}; "
         f"samples {res['all_gflops']}) load {fmt_load(m.load_before)}")
    return res


def naive_estimate(points: list[tuple[int, float]], n: int, analytic_bpp: float) -> tuple[float, str]:
    """Estimated peak RSS (MiB) of the naive pass at n²: a line through the measured points, or analytic."""
    sizes = sorted({p[0] for p in points})
    if len(sizes) >= 2:
        xs = [p[0] ** 2 for p in points]
        ys = [p[1] for p in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        a = my - b * mx
        return a + b * n * n, (f"fit RSS = {a:.0f} MiB + {b * MIB:.0f} B/px x N² through naive runs at "
                               + ", ".join(f"{s}²" for s in sizes))
    base = max((p[1] for p in points), default=400.0)
    return base + analytic_bpp * n * n / MIB, f"analytic {analytic_bpp:.0f} B/px of live activations + {base:.0f} MiB"


def run_naive(args: argparse.Namespace, scene: Any, points: list[tuple[int, float]], flops: dict[str, Any],
              *, calib: bool = False) -> dict[str, Any]:
    n = scene.size
    est, how = naive_estimate(points, n, flops["naive_bytes_per_px_analytic"])
    avail = mem_available_gib()
    limit = args.naive_max_gib if args.naive_max_gib is not None else 0.85 * avail
    row: dict[str, Any] = {"variant": "naive", "size": n, "calibration": calib,
                           "estimate_gib": round(est * MIB / GIB, 2), "estimate_how": how,
                           "limit_gib": round(limit, 1), "mem_available_gib": round(avail, 1)}
    if est * MIB / GIB > limit:
        row["skipped"] = True
        _log(f"{n}² naive SKIPPED: estimated peak RSS {est * MIB / GIB:.1f} GiB ({how}) > limit {limit:.1f} GiB "
             f"(85 % of MemAvailable {avail:.1f} GiB, or --naive-max-gib)")
        return row
    out = args.scratch / f"model_out_{n}_naive.tif"
    out.unlink(missing_ok=True)
    m, res = _run_child("naive", {"model": args.model, "pan": str(scene.pan), "ms": str(scene.ms), "out": str(out)},
                        args.scratch, f"naive_{n}")
    row.update(m.as_dict())
    row["mpx_per_s"] = round(n * n / 1e6 / m.wall_s, 3)
    if res is None:
        row["failed"] = True
        _log(f"{n}² naive FAILED rc={m.returncode}: {m.stderr_tail.strip()[-300:]}")
        return row
    row["stages"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}
    row["forward_gflops"] = round(flops["flops_per_px"] * n * n / res["forward_s"] / 1e9, 2)
    points.append((n, m.peak_rss_mib))
    _log(f"{n}² naive{' (calibration)' if calib else ''}: {m.wall_s:7.2f} s  {row['mpx_per_s']:6.3f} Mpx/s  "
         f"peak RSS {m.peak_rss_mib:8.1f} MiB (estimated {est:.0f})  forward {res['forward_s']:.2f} s "
         f"({row['forward_gflops']:.1f} GFLOP/s)  load {fmt_load(m.load_before)} -> {fmt_load(m.load_after)}")
    return row


def run_size(args: argparse.Namespace, scene: Any, ps_cmd: str, flops: dict[str, Any],
             naive_points: list[tuple[int, float]]) -> list[dict[str, Any]]:
    n = scene.size
    rows: list[dict[str, Any]] = []
    fpp = flops["flops_per_px"]
    variants = ["cli"] + (["lib-prefetch-off", "lib-prefetch-on"] if n in args.split_sizes else [])
    for rep in range(args.repeat):
        for v in variants:  # interleaved, so load changes hit every variant alike
            out = args.scratch / f"model_out_{n}_{v}.tif"
            out.unlink(missing_ok=True)
            if v == "cli":
                cmd = [ps_cmd, "fuse", "--pan", str(scene.pan), "--ms", str(scene.ms), "-o", str(out), "--model",
                       args.model, "--quiet", "--overwrite", "--json"]
                js = args.scratch / f"bench_model_cli_{n}.json"
                m = run_measured(cmd, args.scratch / f"bench_model_cli_{n}.log", stdout=js)
                summary = json.loads(js.read_text()) if m.returncode == 0 else None
            else:
                m, summary = _run_child("split", {"model": args.model, "pan": str(scene.pan), "ms": str(scene.ms),
                                                  "out": str(out), "prefetch": v.endswith("on")},
                                        args.scratch, f"{v}_{n}")
            row: dict[str, Any] = {"variant": v, "size": n, "repeat": rep, **m.as_dict(),
                                   "mpx_per_s": round(n * n / 1e6 / m.wall_s, 3)}
            if summary is None:
                row["failed"] = True
                _log(f"{n}² {v:<17} run {rep + 1}: FAILED rc={m.returncode}: {m.stderr_tail.strip()[-300:]}")
                rows.append(row)
                continue
            t = summary["timings"]
            secs = summary["seconds"]
            exe = executed_pixels(summary, flops["size_multiple"])
            comp = t.get("compute_s") or None
            row.update(fuse_seconds=secs, timings=t, tiles=summary["tiles"],
                       stall_fraction=round((t.get("read_wait_s", 0) + t.get("write_wait_s", 0)) / secs, 4),
                       useful_gflop=round(fpp * n * n / 1e9, 1), executed_gflop=round(fpp * exe / 1e9, 1),
                       executed_over_useful=round(exe / (n * n), 3),
                       useful_gflops=round(fpp * n * n / m.wall_s / 1e9, 2),
                       useful_gflops_compute=round(fpp * n * n / comp / 1e9, 2) if comp else None,
                       executed_gflops_compute=round(fpp * exe / comp / 1e9, 2) if comp else None,
                       pixel_sha256=pixel_sha256(out) if out.is_file() else None)
            if v != "cli":
                row["notices"] = summary.get("notices")
            rows.append(row)
            _log(f"{n}² {v:<17} run {rep + 1}: {m.wall_s:7.2f} s  {row['mpx_per_s']:6.3f} Mpx/s  peak RSS "
                 f"{m.peak_rss_mib:7.1f} MiB  cpu {m.cpu_s / m.wall_s:4.2f}  {row['useful_gflops']:6.1f} GFLOP/s "
                 f"useful  read {t.get('read_s', 0):.1f} (wait {t.get('read_wait_s', 0):.1f}) compute "
                 f"{t.get('compute_s', 0):.1f} write {t.get('write_s', 0):.1f} (wait {t.get('write_wait_s', 0):.1f}) "
                 f"stall {100 * row['stall_fraction']:.1f} %  load {fmt_load(m.load_before)} -> "
                 f"{fmt_load(m.load_after)}")
    if not args.no_naive:
        rows.append(run_naive(args, scene, naive_points, flops))
    ours = args.scratch / f"model_out_{n}_cli.tif"
    naive_out = args.scratch / f"model_out_{n}_naive.tif"
    agreement = compare_outputs(ours, naive_out, n) if ours.is_file() and naive_out.is_file() else None
    if agreement:
        rows[-1]["agreement_with_cli"] = agreement
        _log(f"{n}² naive vs cli output (central {min(1024, n)}² window): {agreement}")
    if not args.keep_outputs:
        for p in args.scratch.glob(f"model_out_{n}_*.tif"):
            p.unlink()
    return rows


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _best(rows: list[dict[str, Any]], n: int, v: str) -> dict[str, Any] | None:
    ok = [r for r in rows if r["size"] == n and r["variant"] == v and not r.get("failed") and not r.get("skipped")
          and not r.get("calibration")]
    return min(ok, key=lambda r: r["wall_s"]) if ok else None


def _worst(rows: list[dict[str, Any]], n: int, v: str) -> dict[str, Any] | None:
    ok = [r for r in rows if r["size"] == n and r["variant"] == v and not r.get("failed") and not r.get("skipped")
          and not r.get("calibration")]
    return max(ok, key=lambda r: r["wall_s"]) if ok else None


def summarize(rows: list[dict[str, Any]], sizes: list[int], ceiling: float | None) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        for v in ("cli", "lib-prefetch-off", "lib-prefetch-on", "naive"):
            b, w = _best(rows, n, v), _worst(rows, n, v)
            allv = [r for r in rows if r["size"] == n and r["variant"] == v and not r.get("calibration")]
            if not allv:
                continue
            if b is None or w is None:
                r0 = allv[0]
                out.append({"size": n, "variant": v, "skipped": bool(r0.get("skipped")),
                            "failed": not r0.get("skipped"), "estimate_gib": r0.get("estimate_gib"),
                            "estimate_how": r0.get("estimate_how"), "limit_gib": r0.get("limit_gib")})
                continue
            ok = [r for r in allv if not r.get("failed")]
            s: dict[str, Any] = {"size": n, "variant": v, "runs": len(ok), "best_wall_s": b["wall_s"],
                                 "worst_wall_s": w["wall_s"], "best_mpx_per_s": b["mpx_per_s"],
                                 "worst_mpx_per_s": w["mpx_per_s"],
                                 "peak_rss_mib_max": max(r["peak_rss_mib"] for r in ok),
                                 "peak_rss_mib_min": min(r["peak_rss_mib"] for r in ok),
                                 "cpu_util": round(b["cpu_s"] / b["wall_s"], 2),
                                 "load_before": b["load_before"], "load_after": b["load_after"],
                                 "command": b["command"]}
            if v == "naive":
                s["forward_s"] = b["stages"]["forward_s"]
                s["forward_gflops"] = b["forward_gflops"]
                s["useful_gflops"] = round(s["forward_gflops"] * b["stages"]["forward_s"] / b["wall_s"], 2)
                s["agreement_with_cli"] = b.get("agreement_with_cli")
            else:
                for k in ("useful_gflops", "useful_gflops_compute", "executed_gflops_compute", "executed_over_useful",
                          "stall_fraction", "timings", "fuse_seconds", "useful_gflop", "executed_gflop"):
                    s[k] = b.get(k)
                s["stall_fraction_worst"] = max(r["stall_fraction"] for r in ok)
                s["pixel_sha256"] = sorted({r["pixel_sha256"] for r in ok if r.get("pixel_sha256")})
            if ceiling and s.get("useful_gflops"):
                s["fraction_of_ceiling"] = round(s["useful_gflops"] / ceiling, 3)
                if s.get("executed_gflops_compute"):
                    s["fraction_of_ceiling_executed_compute"] = round(s["executed_gflops_compute"] / ceiling, 3)
            out.append(s)
    return out


def goals(summary: list[dict[str, Any]], sizes: list[int], ceiling: float | None, naive_rows: list[dict[str, Any]]
          ) -> list[str]:
    lines = []
    by = {(s["size"], s["variant"]): s for s in summary}
    measured_naive = {r["size"]: r for r in naive_rows if not r.get("skipped") and not r.get("failed")}
    for n in sizes:
        c = by.get((n, "cli"))
        if not c or c.get("failed"):
            lines.append(f"{n}²: the cli run failed")
            continue
        nv = by.get((n, "naive"))
        if nv and not nv.get("skipped") and not nv.get("failed"):
            ratio = nv["best_wall_s"] / c["best_wall_s"]
            lines.append(f"{n}² speed vs naive: {ratio:.2f}x the naive pass's speed "
                         f"({c['best_wall_s']:.1f} s vs {nv['best_wall_s']:.1f} s) - "
                         f"{'met' if ratio >= 1 else 'NOT met'}")
        elif nv and nv.get("skipped"):
            ref = max((s for s in measured_naive if s < n), default=None)
            extra = ""
            if ref is not None:
                r = measured_naive[ref]
                extra = (f"; the naive pass at {ref}² ran at {r['mpx_per_s']:.3f} Mpx/s, ours here "
                         f"{c['best_mpx_per_s']:.3f} Mpx/s ({c['best_mpx_per_s'] / r['mpx_per_s']:.2f}x)")
            lines.append(f"{n}² speed vs naive: naive pass skipped, its estimated peak RSS "
                         f"{nv['estimate_gib']:.1f} GiB exceeds the limit {nv.get('limit_gib')} GiB{extra}")
        rss_gib = c["peak_rss_mib_max"] / 1024
        lines.append(f"{n}² peak RSS {rss_gib:.2f} GiB"
                     + (f" - {'met' if rss_gib < RSS_GOAL_GIB else 'NOT met'} (goal < {RSS_GOAL_GIB} GiB at 8192²)"
                        if n >= 8192 else f" (the {RSS_GOAL_GIB} GiB goal is for 8192²)"))
        if ceiling and c.get("fraction_of_ceiling") is not None:
            f = c["fraction_of_ceiling"]
            lines.append(f"{n}² convolution efficiency: {c['useful_gflops']:.1f} useful GFLOP/s end to end = "
                         f"{100 * f:.0f} % of the {ceiling:.1f} GFLOP/s ceiling - "
                         f"{'met' if f >= CEILING_GOAL else 'NOT met'} (goal >= {100 * CEILING_GOAL:.0f} %); "
                         f"during compute_s: {c.get('executed_gflops_compute')} GFLOP/s executed "
                         f"({100 * (c.get('fraction_of_ceiling_executed_compute') or 0):.0f} %), tiles do "
                         f"{c.get('executed_over_useful')}x the useful work")
        on = by.get((n, "lib-prefetch-on"))
        off = by.get((n, "lib-prefetch-off"))
        if on and not on.get("failed"):
            lines.append(f"{n}² stalls with prefetch: {100 * on['stall_fraction']:.1f} % of wall (worst "
                         f"{100 * on['stall_fraction_worst']:.1f} %) - "
                         f"{'met' if on['stall_fraction'] < STALL_GOAL else 'NOT met'} "
                         f"(goal < {100 * STALL_GOAL:.0f} %)"
                         + (f"; without prefetch {100 * off['stall_fraction']:.1f} %"
                            if off and not off.get("failed") else ""))
        shas = {h for v in ("cli", "lib-prefetch-off", "lib-prefetch-on")
                for h in (by.get((n, v)) or {}).get("pixel_sha256", [])}
        if shas:
            same = "identical pixels" if len(shas) == 1 else "DIFFERENT pixels"
            lines.append(f"{n}² outputs of cli / library runs: {same}"
                         f" ({len(shas)} distinct pixel SHA-256)")
    return lines


def markdown(info: dict[str, Any], flops: dict[str, Any], ceil: dict[str, Any], summary: list[dict[str, Any]],
             goal_lines: list[str], naive_calib: list[dict[str, Any]]) -> str:
    c = ceil.get("used")
    lines = [
        f"Command: `{info['command_line']}`",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), {info['ram_gib']} GiB RAM, "
        f"Linux {info['kernel']}; {info['date_utc']}; load average at start {fmt_load(info['loadavg_start'])}, "
        f"at end {fmt_load(info.get('loadavg_end', ()))}; {info.get('elapsed_min', '?')} min in all.",
        f"Versions: {info['pansharpen']} (HEAD {info.get('repo_head')}; the working tree may differ), Python "
        f"{info['python']}, torch {info.get('torch')} ({info.get('torch_threads')} threads, oneDNN "
        f"{info.get('torch_mkldnn')}), numpy {info['numpy']}, rasterio {info['rasterio']} "
        f"(GDAL {info['rasterio_gdal']}).",
        "",
        f"Model `{flops['model']}` ({flops['arch']}, {flops['bands']} bands, ratio {flops['ratio']}, input "
        f"`{flops['input_convention']}`, {flops['parameters']:,} parameters, scale {flops['scale']:g}): "
        f"**{flops['flops_per_px'] / 1e3:.1f} kFLOP per output pixel** (2 x {flops['macs_per_px']:,.0f} MACs over "
        f"{flops['n_layers_counted']} layers: "
        + ", ".join(f"{k} {v / 1e3:.1f}k" for k, v in flops["flops_per_px_by_type"].items())
        + f"; FlopCounterMode: {flops['flopcounter_flops_per_px'] / 1e3:.1f}k; per-pixel count independent of the "
        f"input size: {flops['per_px_independent_of_size']}). Not counted: {flops['excluded']} - bias additions alone "
        f"{flops['bias_adds_per_px']:.0f}/px.",
        "",
        "Convolution ceiling (3x3 Conv2d 32->32, batch 1, channels-last fp32, malloc tuned, best of "
        f"{(ceil.get('start') or {}).get('repeat', '?')}): start {_g(ceil.get('start'))}, end {_g(ceil.get('end'))} "
        f"GFLOP/s -> **{c:.1f} GFLOP/s** used." if c else "Convolution ceiling: not measured.",
        "",
        ceiling_warning(ceil),
        "",
        "| scene | run | wall s best (worst) | Mpx/s best | peak RSS MiB | CPU util | useful GFLOP/s | % of ceiling "
        "| load before -> after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        n, v = s["size"], s["variant"]
        if s.get("skipped"):
            lines.append(f"| {n}² | {v} | skipped: estimated peak RSS {s['estimate_gib']:.1f} GiB "
                         f"({s['estimate_how']}) "
                         "| | | | | | |")
            continue
        if s.get("failed"):
            lines.append(f"| {n}² | {v} | failed | | | | | | |")
            continue
        rss = (f"{s['peak_rss_mib_max']:.0f}" if s["peak_rss_mib_max"] - s["peak_rss_mib_min"] < 1
               else f"{s['peak_rss_mib_min']:.0f}-{s['peak_rss_mib_max']:.0f}")
        gf = f"{s['useful_gflops']:.1f}" if s.get("useful_gflops") is not None else ""
        if v == "naive":
            gf += f" (forward alone {s['forward_gflops']:.1f})"
        frac = f"{100 * s['fraction_of_ceiling']:.0f} %" if s.get("fraction_of_ceiling") is not None else ""
        lines.append(f"| {n}² | {v} | {s['best_wall_s']:.2f} ({s['worst_wall_s']:.2f}) | {s['best_mpx_per_s']:.3f} | "
                     f"{rss} | {s['cpu_util']:.2f} | {gf} | {frac} | {fmt_load(s['load_before'])} -> "
                     f"{fmt_load(s['load_after'])} |")
    split = [s for s in summary if s["variant"] != "naive" and s.get("timings")]
    if split:
        lines += ["", "Time split (seconds, best run; from `fuse()`'s `timings`: read/write = busy time of the reader/"
                  "writer, *wait* = time the compute loop waited for them; stall = (read wait + write wait) / fuse "
                  "seconds):", "",
                  "| scene | run | fuse s | setup | read | read wait | compute | assemble | write | write wait | stall "
                  "| executed / useful px | GFLOP/s in compute (executed) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in split:
            t = s["timings"]
            lines.append(f"| {s['size']}² | {s['variant']} | {s['fuse_seconds']:.2f} | {t.get('setup_s', 0):.2f} | "
                         f"{t.get('read_s', 0):.2f} | {t.get('read_wait_s', 0):.2f} | {t.get('compute_s', 0):.2f} | "
                         f"{t.get('assemble_s', 0):.2f} | {t.get('write_s', 0):.2f} | {t.get('write_wait_s', 0):.2f} | "
                         f"{100 * s['stall_fraction']:.1f} % | {s['executed_over_useful']} | "
                         f"{s.get('executed_gflops_compute')} |")
    naive = [s for s in summary if s["variant"] == "naive" and not s.get("skipped") and not s.get("failed")]
    if naive:
        lines += ["", "Naive pass (whole image, NCHW, no malloc tuning; bicubic MS): "
                  + "; ".join(f"{s['size']}²: forward {s['forward_s']:.1f} s of {s['best_wall_s']:.1f} s, "
                              f"agreement with ours {s.get('agreement_with_cli')}" for s in naive)]
    if naive_calib:
        lines.append("Calibration runs for the memory estimate: " + "; ".join(
            f"{r['size']}²: {r['peak_rss_mib']:.0f} MiB, {r['wall_s']:.1f} s"
            for r in naive_calib if "peak_rss_mib" in r))
    cmds = {}
    for s in summary:
        if s.get("command") and s["variant"] not in cmds:
            cmds[s["variant"]] = s["command"]
    lines += ["", "Commands (as run, first size of each):", ""] + [f"- `{k}`: `{v}`" for k, v in cmds.items()]
    lines += ["", "Goals:", ""] + [f"- {g}" for g in goal_lines]
    return "\n".join(lines)


def ceiling_warning(ceil: dict[str, Any]) -> str:
    """A warning when the start and end ceilings differ by more than 15 % (the machine was busy)."""
    v = [c["gflops"] for c in (ceil.get("start"), ceil.get("end")) if c]
    if len(v) == 2 and min(v) < 0.85 * max(v):
        return (f"**Warning:** the ceiling changed by {100 * (1 - min(v) / max(v)):.0f} % during the run: the "
                "machine was busy (see the load averages); rates and fractions are lower bounds, rerun when quiet.")
    return "The two ceiling measurements agree within 15 %." if len(v) == 2 else ""


def _g(d: dict[str, Any] | None) -> str:
    return f"{d['gflops']:.1f}" if d else "n/a"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="See benchmarks/README.md. Full sizes take long: one 8192² fusion is "
                                        "~10 TFLOP; the default run needs ~12 GiB free for the naive 4096² pass.")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="PAN sizes (square), pixels")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo model (default {DEFAULT_MODEL}; 4 bands, ratio 4)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/psbench"),
                    help="scenes and outputs go here (outside the repo; never commit them)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per variant and size (best and worst reported)")
    ap.add_argument("--split-sizes", type=int, nargs="*", default=None,
                    help="sizes that also get the library runs with prefetch off/on (default: the largest of --sizes; "
                         "give none to skip)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive whole-image pass")
    ap.add_argument("--naive-calib", type=int, nargs="*", default=[1024, 2048],
                    help="sizes of naive runs measured first to extrapolate its peak RSS (default 1024 2048)")
    ap.add_argument("--naive-max-gib", type=float, default=None,
                    help="skip the naive pass when its estimated peak RSS exceeds this many GiB "
                         "(default: 85 %% of MemAvailable)")
    ap.add_argument("--ceiling-size", type=int, default=532, help="H = W of the ceiling convolution (default 532)")
    ap.add_argument("--ceiling-repeat", type=int, default=7, help="timings of the ceiling convolution (best kept)")
    ap.add_argument("--json", type=Path, default=None, help="all results as JSON (default SCRATCH/bench_model.json)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the markdown report here")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the fused outputs in SCRATCH")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        res = CHILDREN[args.child](json.loads(args.child_args))
        args.child_out.write_text(json.dumps(res, default=str))
        return 0

    t_start = time.perf_counter()
    args.split_sizes = [max(args.sizes)] if args.split_sizes is None else args.split_sizes
    scratch: Path = args.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    ps_cmd = find_pansharpen()
    info = machine_info(["benchmarks/bench_model.py", *argv], ps_cmd, extra_modules=("torch",))
    _log(json.dumps(info, default=str))

    flops = count_flops(args.model)
    _log(f"model {flops['model']}: {flops['flops_per_px'] / 1e3:.2f} kFLOP/px (2 x MACs of {flops['n_layers_counted']} "
         f"layers; FlopCounterMode {flops['flopcounter_flops_per_px'] / 1e3:.2f} k; bias adds "
         f"{flops['bias_adds_per_px']:.0f}/px, "
         f"not counted)")
    ceil: dict[str, Any] = {"start": measure_ceiling(args, "start")}

    base = None

    def scene_for(n: int) -> Any:
        nonlocal base
        if not ((scratch / f"pan_{n}.tif").is_file() and (scratch / f"ms_{n}.tif").is_file()):
            base = base or load_base_tile()
        return make_scene(n, scratch, base)

    naive_points: list[tuple[int, float]] = []
    naive_calib: list[dict[str, Any]] = []
    if not args.no_naive:
        for n in sorted(set(args.naive_calib) - set(args.sizes)):
            row = run_naive(args, scene_for(n), naive_points, flops, calib=True)
            naive_calib.append(row)
            (scratch / f"model_out_{n}_naive.tif").unlink(missing_ok=True)

    rows: list[dict[str, Any]] = []
    for n in sorted(args.sizes):
        rows += run_size(args, scene_for(n), ps_cmd, flops, naive_points)

    ceil["end"] = measure_ceiling(args, "end")
    vals = [c["gflops"] for c in (ceil["start"], ceil["end"]) if c]
    ceil["used"] = max(vals) if vals else None
    summary = summarize(rows, sorted(args.sizes), ceil["used"])
    naive_rows = [r for r in rows if r["variant"] == "naive"] + naive_calib
    goal_lines = goals(summary, sorted(args.sizes), ceil["used"], naive_rows)
    info["loadavg_end"] = os.getloadavg()
    info["elapsed_min"] = round((time.perf_counter() - t_start) / 60, 1)
    report = markdown(info, flops, ceil, summary, goal_lines, naive_calib)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    json_path = args.json or scratch / "bench_model.json"
    json_path.write_text(json.dumps({"machine": info, "flops": flops, "ceiling": ceil, "summary": summary,
                                     "goals": goal_lines, "naive_calibration": naive_calib, "runs": rows},
                                    indent=2, default=str))
    _log(f"\nall runs: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
