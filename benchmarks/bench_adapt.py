"""Time the per-scene adaptation (``pansharpen_cli.adapt``) of a network to a 512 x 512 x 8 scene,
and produce the quality evidence of ``docs/adaptation.md``.

    python benchmarks/bench_adapt.py                    # timing: tailor mode, 5 repeats, 2 threads
    python benchmarks/bench_adapt.py --mode swift --repeat 2
    python benchmarks/bench_adapt.py --evidence rr      # Wald reduced resolution on the WV2 scene
    python benchmarks/bench_adapt.py --evidence fr      # full resolution on the WV2 scene
    python benchmarks/bench_adapt.py --evidence tool    # the same through `pansharpen fuse` + `eval`
    python benchmarks/bench_adapt.py --size 4096        # `fuse` vs `fuse --adapt tailor`, 4096 x 4096 x 8

Pipeline mode (``--size`` above 1024, or ``--pipeline``): the whole command, ``pansharpen fuse --model
M --sensor WV2`` without and with ``--adapt tailor``, on a GeoTIFF scene of ``size`` x ``size`` PAN pixels
(MS ``size/4`` squared x 8, uint16 11-bit, corner-aligned grids, synthetic georeference) made by mirror-tiling
the real WorldView-2 scene of ``../shared`` (a synthetic 8-band scene without it) into ``--out``; the model
is the DLPan WorldView-3 FusionNet imported into a private store there (a random-weight FusionNet without
``../shared``). The runs alternate (plain, adapted, plain, ...), each a child process; the report gives
wall times, the in-process seconds of each run (``--json``: ``seconds``, ``timings``, the adaptation's own
``seconds``) and the load average before and after each run. The goal (issue #5): adaptation adds under
10 % to plain inference.

Scene: a 512 x 512 PAN crop of the real WorldView-2 scene of ``../shared`` (MS 128 x 128 x 8,
11-bit, divided by 2047) with the DLPan WorldView-3 FusionNet; without ``../shared``, a synthetic
8-band scene and a random-weight FusionNet (same architecture, same cost). Timed: patch sampling
(descriptors + selection) and :func:`~pansharpen_cli.adapt.adapt` (backbone features of the chosen
patches, training, held-out criterion), excluding the model load; then the inference of the whole
scene with the returned model (one channels-last pass, as ``fuse`` runs a 512² tile). The machine may be shared:
the report gives the load average and the best and median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pansharpen_cli import adapt as A
from pansharpen_cli.filters import interp23tap

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WV2_MAT = SHARED / "data" / "wv2-grip" / "imgWV2.mat"
WV3_NET = SHARED / "weights" / "dlpan" / "WV3" / "fusionnet.pth"


def _scene(size: int) -> tuple[np.ndarray, np.ndarray, str]:
    if WV2_MAT.is_file():
        from scipy.io import loadmat

        d = loadmat(WV2_MAT)
        y0 = x0 = 256
        pan = d["I_PAN"][y0:y0 + size, x0:x0 + size].astype(np.float64)
        ms = d["I_MS"][y0 // 4:(y0 + size) // 4, x0 // 4:(x0 + size) // 4].astype(np.float64).transpose(2, 0, 1)
        return pan / 2047.0, ms / 2047.0, f"WorldView-2 GRIP crop {size}x{size} (rows/cols {y0}:{y0 + size})"
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.standard_normal((size, size)), 2.0)
    base = (base - base.min()) / np.ptp(base)
    ms_hr = np.stack([0.1 + 0.3 * base + 0.02 * b for b in range(8)])
    ms = ms_hr.reshape(8, size // 4, 4, size // 4, 4).mean(axis=(2, 4))
    return ms_hr.mean(axis=0), ms, f"synthetic {size}x{size}x8 (../shared absent)"


def _model() -> tuple[torch.nn.Module, str]:
    if WV3_NET.is_file():
        from pansharpen_cli.models.registry import load_model

        return load_model(WV3_NET)[0], "DLPan WV3 FusionNet"
    from pansharpen_cli.models import build

    torch.manual_seed(0)
    return build("fusionnet", 8).eval(), "random-weight FusionNet"


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]


def _forward(net: torch.nn.Module, pan: np.ndarray, lms: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(_t(pan[None]), _t(lms), None)[0].numpy().astype(np.float64)


def evidence(scale: str, out_dir: Path, seeds: list[int], nets: Sequence[str] = ("WV3", "WV2")) -> None:
    """Before/after table on the real WorldView-2 scene (needs ../shared).

    ``rr``: Wald's protocol (PAN 320^2, MS 80^2 x 8 after degradation; scores Q8/SAM/ERGAS against
    the original MS, 21-pixel border cut). ``fr``: the original pair (PAN 1280^2), scored with the
    no-reference indexes (HQNR, D_lambda_K, D_s, D_rho, R-Q2n). Adaptation uses the default sampler
    (64-pixel cores, 8-pixel margins, 5 % of the candidates, at least 8) and default settings.
    """
    from pansharpen_cli.models.registry import load_model
    from scipy.io import loadmat

    from pansharpen_cli.filters import wald_degrade
    from pansharpen_cli.metrics import ergas, full_resolution_report, q2n, sam
    from pansharpen_cli.pipeline import fuse_arrays
    from pansharpen_cli.sensors import get_sensor

    k = 2047.0
    d = loadmat(WV2_MAT)
    pan = d["I_PAN"].astype(np.float64)
    ms = d["I_MS"].astype(np.float64).transpose(2, 0, 1)
    s = get_sensor("WV2")
    if scale == "rr":
        pan_in, ms_in = wald_degrade(pan, ms, s.gnyq, s.pan_gnyq, 4)
        cut = 21
        ref = ms[:, cut:-cut, cut:-cut]

        def score(f: np.ndarray) -> dict[str, float]:
            fc = f[:, cut:-cut, cut:-cut]
            return {"Q8": q2n(ref, fc, 32, 32), "SAM": sam(ref, fc), "ERGAS": ergas(ref, fc, 4)}
    else:
        pan_in, ms_in = pan, ms

        def score(f: np.ndarray) -> dict[str, float]:
            r = full_resolution_report(f, ms_in, pan_in, s.gnyq, ratio=4)
            return {key: r[key] for key in ("HQNR", "D_lambda_K", "D_s", "D_rho", "R_Q2n", "R_ERGAS")}

    lms = interp23tap(ms_in, 4)
    rows: list[dict] = []

    def add(name: str, f: np.ndarray, **extra: object) -> None:
        row = {"method": name, **score(f), **extra}
        rows.append(row)
        print(json.dumps(row), flush=True)

    add("EXP (23-tap)", lms)
    for m in ("bt-h", "mtf-glp-hpm"):
        t0 = time.perf_counter()
        f = fuse_arrays(pan_in.astype(np.float32), ms_in.astype(np.float32), m, ratio=4, sensor="WV2", bit_depth=11)
        add(m.upper(), f.astype(np.float64), seconds=round(time.perf_counter() - t0, 2))
    configs: list[tuple[str, dict, dict]] = [("tailor", {}, {}), ("swift", {"mode": "swift"}, {}),
                                             ("full", {"mode": "full"}, {})]
    if scale == "rr":
        configs += [("tailor, spatial_target=scale (ablation)",
                     {"weights": A.LossWeights(spatial_target="scale")}, {}),
                    ("tailor + Wald term (ablation)", {"weights": A.LossWeights(wald=1.0)}, {"reduced": 4})]
    for w in nets:
        if w in ("WV3", "WV2"):
            net = load_model(SHARED / "weights" / "dlpan" / w / "fusionnet.pth")[0]
            name, cfgs = f"FusionNet {w}", configs
        else:  # a model shipped by this project (trained on simulated VHR from Sentinel-2): tailor only
            from pansharpen_cli import zoo

            net = zoo.load_network(w)[0].eval()
            name, cfgs = w, configs[:1]
        base = _forward(net, pan_in / k, lms / k) * k
        add(name, base)
        for label, kw, pk in cfgs:
            for seed in (seeds if label == "tailor" else seeds[:1]):
                patches = A.sample_patches_from_arrays(pan_in / k, ms_in / k, lms / k, 4, sensor="WV2", seed=seed,
                                                       **pk)
                t0 = time.perf_counter()
                res = A.adapt(net, patches, "WV2", 4, seed=seed, **kw)
                dt = time.perf_counter() - t0
                crit = res.report.get("criterion", {})
                info = {"seed": seed, "used_adapted": res.used_adapted, "reason": res.report["reason"],
                        "J_before": crit.get("before", {}).get("J"), "J_after": crit.get("after", {}).get("J"),
                        "adapt_seconds": round(dt, 2), "n_patches": len(patches)}
                cand = _forward(res.candidate, pan_in / k, lms / k) * k
                if res.used_adapted:
                    add(f"{name} + {label}", cand, **info)
                else:  # the returned model is the base: show what the rejected candidate would have given
                    add(f"{name} + {label} (rejected candidate)", cand, **info)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"evidence_{scale}_{'-'.join(nets)}.json").write_text(json.dumps(rows, indent=1))
    keys = [k_ for k_ in rows[0] if k_ != "method"]
    print("\n| method | " + " | ".join(keys) + " | adapted | held-out J | s |")
    print("|---" * (len(keys) + 4) + "|")
    for r in rows:
        j = f"{r['J_before']:.3f} -> {r['J_after']:.3f}" if r.get("J_before") is not None else ""
        print(f"| {r['method']} | " + " | ".join(f"{r[k_]:.4f}" for k_ in keys)
              + f" | {r.get('used_adapted', '')} | {j} | {r.get('adapt_seconds', r.get('seconds', ''))} |")


def evidence_tool(out_dir: Path, seeds: list[int], threads: int) -> None:
    """Full resolution through the tool: ``pansharpen fuse --model M --sensor WV2 [--adapt tailor
    --seed S]`` on the WV2 GeoTIFFs of ``../shared`` (corner phase), scored with ``pansharpen eval
    --protocol full --fused ... --cut 24``. The DLPan WV3 and WV2 FusionNets are imported into a
    private store in ``out_dir/home``."""
    import subprocess
    import sys

    wv2 = SHARED / "data" / "wv2-grip"
    pan, ms = wv2 / "pan.tif", wv2 / "ms.tif"
    env = dict(os.environ, PANSHARPEN_HOME=str(out_dir / "home"))
    exe = str(Path(sys.executable).parent / "pansharpen")
    listed = subprocess.run([exe, "models", "list"], capture_output=True, text=True, env=env).stdout
    for w in ("WV3", "WV2"):
        if f"fusionnet.{w.lower()} " not in listed:
            subprocess.run([exe, "models", "import", str(SHARED / "weights" / "dlpan" / w / "fusionnet.pth"),
                            "--sensor", w, "--name", f"fusionnet.{w.lower()}"], check=True, capture_output=True,
                           env=env)
    out_dir.mkdir(parents=True, exist_ok=True)
    fused: list[Path] = []
    rows: list[dict] = []
    for m in ("exp", "bt-h", "mtf-glp-hpm"):
        o = out_dir / f"tool_{m}.tif"
        subprocess.run([exe, "fuse", "--pan", str(pan), "--ms", str(ms), "-o", str(o), "--method", m, "--sensor",
                        "WV2", "--quiet", "--overwrite"], check=True, env=env)
        fused.append(o)
    for w in ("wv3", "wv2", "vhr8"):  # vhr8: shipped by this project (simulated VHR from Sentinel-2)
        for seed in [None, *seeds]:
            o = out_dir / (f"tool_fusionnet-{w}" + ("" if seed is None else f"-tailor-s{seed}") + ".tif")
            extra = [] if seed is None else ["--adapt", "tailor", "--seed", str(seed)]
            res = subprocess.run([exe, "fuse", "--pan", str(pan), "--ms", str(ms), "-o", str(o), "--model",
                                  f"fusionnet.{w}", "--sensor", "WV2", "--quiet", "--overwrite", "--json",
                                  "--threads", str(threads), *extra], capture_output=True, text=True, env=env)
            if res.returncode:
                raise SystemExit(res.stderr[-800:])
            ad = json.loads(res.stdout).get("adaptation") or {}
            rows.append({"file": o.stem, "used_adapted": ad.get("used_adapted"),
                         "adapt_s": (ad.get("seconds") or {}).get("total"), "reason": ad.get("reason")})
            fused.append(o)
    res = subprocess.run([exe, "eval", "--pan", str(pan), "--ms", str(ms), "--sensor", "WV2", "--protocol", "full",
                          "--cut", "24", "--json", "-q", "--fused", ",".join(map(str, fused))],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(res.stderr[-800:])
    report = json.loads(res.stdout)
    (out_dir / "evidence_tool.json").write_text(json.dumps({"runs": rows, "eval": report}, indent=1))
    print(json.dumps(rows, indent=1))
    print(json.dumps(report, indent=1)[:6000])


def _pipeline_scene(size: int, out_dir: Path) -> tuple[Path, Path, str]:
    """A ``size``^2 PAN and ``(size/4)``^2 x 8 MS GeoTIFF pair (cached in ``out_dir``)."""
    import sys

    import rasterio
    from affine import Affine

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_scenes import _write_mirrored

    wv2 = SHARED / "data" / "wv2-grip"
    label = f"WorldView-2 GRIP mirror-tiled to {size}x{size} (MS {size // 4}^2 x 8)" if (wv2 / "pan.tif").is_file() \
        else f"synthetic {size}x{size}x8 (../shared absent)"
    pan_p, ms_p = out_dir / f"pan_{size}.tif", out_dir / f"ms_{size}.tif"
    if pan_p.is_file() and ms_p.is_file():
        return pan_p, ms_p, label
    out_dir.mkdir(parents=True, exist_ok=True)
    if (wv2 / "pan.tif").is_file():
        with rasterio.open(wv2 / "pan.tif") as ds:
            pan = ds.read()
        with rasterio.open(wv2 / "ms.tif") as ds:
            ms = ds.read()
    else:
        p, m, _ = _scene(1024)
        pan = np.rint(p * 2047).astype(np.uint16)[None]
        ms = np.rint(m * 2047).astype(np.uint16)
    crs = rasterio.crs.CRS.from_epsg(32633)
    pan_tr = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)
    ms_tr = Affine(2.0, 0.0, 500_000.0, 0.0, -2.0, 5_000_000.0)
    _write_mirrored(pan_p, pan.astype(np.uint16), size, pan_tr, crs, 512)
    _write_mirrored(ms_p, ms.astype(np.uint16), size // 4, ms_tr, crs, 128)
    return pan_p, ms_p, label


def pipeline(args: argparse.Namespace) -> None:
    """``pansharpen fuse`` with and without ``--adapt`` on a large scene (see the module docstring)."""
    import subprocess
    import sys

    pan, ms, label = _pipeline_scene(args.size, args.out)
    env = dict(os.environ, PANSHARPEN_HOME=str(args.out / "home"))
    exe = str(Path(sys.executable).parent / "pansharpen")
    model = "fusionnet.wv3"
    listed = subprocess.run([exe, "models", "list"], capture_output=True, text=True, env=env).stdout
    if model + " " not in listed:
        if WV3_NET.is_file():
            ckpt = WV3_NET
        else:
            from pansharpen_cli.models import build

            torch.manual_seed(0)
            ckpt = args.out / "WV3" / "fusionnet.pth"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save(build("fusionnet", 8).state_dict(), ckpt)
        subprocess.run([exe, "models", "import", str(ckpt), "--sensor", "WV3", "--name", model], check=True,
                       capture_output=True, env=env)
    net_label = "DLPan WV3 FusionNet" if WV3_NET.is_file() else "random-weight FusionNet"
    base = [exe, "fuse", "--pan", str(pan), "--ms", str(ms), "--model", model, "--sensor", "WV2", "--quiet",
            "--json", "--overwrite", "--threads", str(args.threads)]
    variants = {"plain": [], f"adapt {args.mode}": ["--adapt", args.mode]}
    if args.steps is not None:
        variants[f"adapt {args.mode}"] += ["--adapt-steps", str(args.steps)]
    runs: list[dict] = []
    for i in range(args.repeat):
        for name, extra in variants.items():
            out = args.out / f"out_{args.size}_{name.replace(' ', '_')}.tif"
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            res = subprocess.run([*base, "-o", str(out), *extra], capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t0
            if res.returncode:
                raise SystemExit(f"{name} failed: {res.stderr.strip()[-800:]}")
            summary = json.loads(res.stdout)
            ad = summary.get("adaptation") or {}
            row = {"variant": name, "repeat": i + 1, "wall_s": round(wall, 3), "seconds": summary["seconds"],
                   "compute_s": summary["timings"]["compute_s"], "setup_s": summary["timings"]["setup_s"],
                   "adapt_s": (ad.get("seconds") or {}).get("total"), "adapt_seconds": ad.get("seconds"),
                   "used_adapted": ad.get("used_adapted"), "patches": ad.get("patches"),
                   "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()]}
            runs.append(row)
            print(json.dumps(row), flush=True)
    by = {n: [r for r in runs if r["variant"] == n] for n in variants}
    med = {n: statistics.median(r["seconds"] for r in rs) for n, rs in by.items()}
    wmed = {n: statistics.median(r["wall_s"] for r in rs) for n, rs in by.items()}
    plain, adapted = med["plain"], med[f"adapt {args.mode}"]
    own = statistics.median(r["adapt_s"] for r in by[f"adapt {args.mode}"])
    print()
    print(f"scene: {label}; model: {net_label}; {args.threads} threads; {args.repeat} run(s) of each, alternating")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"load average now {tuple(round(x, 2) for x in os.getloadavg())}")
    for n in variants:
        print(f"{n:>14}: fuse {med[n]:.2f} s in process (median), {wmed[n]:.2f} s wall")
    print(f"adaptation (sampling + adapt, in the adapted run): {own:.2f} s = {100 * own / plain:.1f} % of plain "
          f"inference; whole-run difference {adapted - plain:+.2f} s = {100 * (adapted - plain) / plain:+.1f} %")
    if args.json:
        args.json.write_text(json.dumps({"scene": label, "model": net_label, "runs": runs}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--mode", default="tailor", choices=A.MODES)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=None, help="runs (default 5; pipeline mode: 1 of each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the runs here")
    ap.add_argument("--evidence", choices=("rr", "fr", "tool"), default=None,
                    help="quality evidence on the WV2 scene instead of timing (needs ../shared)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the tailor rows (evidence)")
    ap.add_argument("--nets", default="WV3,WV2,fusionnet.vhr8",
                    help="evidence rr/fr: networks (WV3, WV2: the DLPan checkpoints; else a zoo model, tailor only)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pansharpen-adapt"),
                    help="evidence JSON folder; pipeline mode: scenes, outputs and the private model store")
    ap.add_argument("--pipeline", action="store_true",
                    help="time `pansharpen fuse` with and without --adapt (default for --size above 1024)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.pipeline or args.size > 1024:
        if args.size % 4:
            raise SystemExit("--size must be a multiple of 4")
        args.repeat = args.repeat or 1
        pipeline(args)
        return
    if args.evidence:
        if not (WV2_MAT.is_file() and WV3_NET.is_file()):
            raise SystemExit(f"--evidence needs {WV2_MAT} and the DLPan checkpoints")
        if args.evidence == "tool":
            evidence_tool(args.out, args.seeds, args.threads)
        else:
            evidence(args.evidence, args.out, args.seeds, args.nets.split(","))
        return
    args.repeat = args.repeat or 5
    pan, ms, scene_name = _scene(args.size)
    lms = interp23tap(ms, 4)
    net, net_name = _model()
    from pansharpen_cli import runtime

    runtime.tune_malloc()
    cl = torch.channels_last
    net = net.to(memory_format=cl)
    pan_t = _t(pan[None]).contiguous(memory_format=cl)
    lms_t = _t(lms).contiguous(memory_format=cl)

    def infer(model: torch.nn.Module) -> None:  # the whole scene in one pass, as `fuse` runs a 512² tile
        with torch.inference_mode():
            model(pan_t, lms_t, None)

    infer(net)  # warm-up (oneDNN primitives)
    t = time.perf_counter()
    infer(net)
    plain_s = time.perf_counter() - t
    runs = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        patches = A.sample_patches_from_arrays(pan, ms, lms, 4, sensor="WV2", seed=0)
        t1 = time.perf_counter()
        res = A.adapt(net, patches, "WV2", 4, mode=args.mode, steps=args.steps, seed=0)
        t2 = time.perf_counter()
        infer(res.model)
        t3 = time.perf_counter()
        runs.append({"sample_s": t1 - t0, "adapt_s": t2 - t1, "total_s": t2 - t0, "parts": res.report["seconds"],
                     "infer_s": t3 - t2, "with_inference_s": t3 - t0,
                     "n_patches": len(patches), "n_train": res.report["n_train"],
                     "n_holdout": res.report["n_holdout"], "best_step": res.report["best_step"],
                     "used_adapted": res.used_adapted, "load": os.getloadavg()[0]})
        print(f"run {i + 1}: sample {t1 - t0:.3f} s, adapt {t2 - t1:.3f} s "
              f"({', '.join(f'{k} {v:.3f}' for k, v in res.report['seconds'].items())}), inference {t3 - t2:.3f} s, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    tot = [r["total_s"] for r in runs]
    wi = [r["with_inference_s"] for r in runs]
    print()
    print(f"scene: {scene_name}; model: {net_name}; mode {args.mode}; steps {res.report['steps']}; "
          f"{runs[0]['n_patches']} patches ({runs[0]['n_train']} train, {runs[0]['n_holdout']} held out)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {args.threads} threads; load average {os.getloadavg()}")
    print(f"total (sampling + adapt): best {min(tot):.3f} s, median {statistics.median(tot):.3f} s, "
          f"worst {max(tot):.3f} s over {len(tot)} runs")
    print(f"adaptation + inference of the scene with the returned model: best {min(wi):.3f} s, median "
          f"{statistics.median(wi):.3f} s, worst {max(wi):.3f} s (the unadapted network's inference alone: "
          f"{plain_s:.3f} s)")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
