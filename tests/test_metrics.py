"""Quality metrics: conformance with the toolbox vectors in ../shared, identities and properties.

Conformance tests read ``../shared/conformance`` (H x W x B arrays, transposed here to band-first)
and skip cleanly when it is absent; the identity/property tests always run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pansharpen_cli import metrics as M
from pansharpen_cli.filters import interp23tap

WV3 = [0.325, 0.355, 0.360, 0.350, 0.365, 0.360, 0.335, 0.315]
RR_CASES = ["rr256x8", "rr215x8", "rr197x4", "rr128x3"]


@pytest.fixture(scope="module")
def conformance(shared: Path) -> tuple[dict[str, np.ndarray], dict]:
    folder = shared / "conformance"
    if not (folder / "cases.npz").is_file() or not (folder / "expected.json").is_file():
        pytest.skip(f"{folder} is incomplete")
    with np.load(folder / "cases.npz") as z:
        cases = {k: z[k] for k in z.files}
    return cases, json.loads((folder / "expected.json").read_text())


def _bf(a: np.ndarray) -> np.ndarray:
    """H x W x B -> B x H x W float64."""
    return np.asarray(a, dtype=np.float64).transpose(2, 0, 1)


# ---------------------------------------------------------------- conformance

_RR_FUNCS = {
    "SAM_deg": (M.sam, {}, 1e-6),
    "ERGAS_ratio4": (M.ergas, {"ratio": 4}, 1e-6),
    "SCC": (M.scc, {}, 1e-6),
    "Q_avg_block32": (M.q_avg, {"block": 32}, 1e-6),
    "Q2n_block32_shift32_uint16cast": (M.q2n, {"block": 32, "shift": 32, "uint16_cast": True}, 1e-4),
    "Q2n_block32_shift32_nocast": (M.q2n, {"block": 32, "shift": 32}, 1e-6),
}


@pytest.mark.shared
@pytest.mark.parametrize("case", RR_CASES)
@pytest.mark.parametrize("key", sorted(_RR_FUNCS))
def test_reduced_resolution_conformance(conformance, case: str, key: str) -> None:
    cases, expected = conformance
    func, kwargs, rtol = _RR_FUNCS[key]
    got = func(_bf(cases[f"{case}_gt"]), _bf(cases[f"{case}_fused"]), **kwargs)
    assert isinstance(got, float)
    assert got == pytest.approx(expected[case][key], rel=rtol)


@pytest.fixture(scope="module")
def fr_case(conformance) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    cases, expected = conformance
    return (_bf(cases["fr_fused"]), _bf(cases["fr_ms_lr"]), np.asarray(cases["fr_pan"], np.float64),
            expected["fr_wv3"])


@pytest.mark.shared
def test_full_resolution_conformance(fr_case) -> None:
    fused, ms_lr, pan, exp = fr_case
    assert M.d_lambda_k(fused, ms_lr, WV3, 4) == pytest.approx(exp["D_lambda_K"], rel=1e-6)
    assert M.d_s(fused, ms_lr, pan, 4) == pytest.approx(exp["D_s"], rel=1e-6)
    assert M.hqnr(fused, ms_lr, pan, WV3, 4) == pytest.approx(exp["HQNR"], rel=1e-6)
    assert M.d_rho(fused, pan, 4) == pytest.approx(exp["D_rho"], rel=1e-6)
    # without the toolbox's uint16 cast inside Q2n, D_lambda_K moves by ~3e-4 relative on this case
    assert M.d_lambda_k(fused, ms_lr, WV3, 4, uint16_cast=False) == pytest.approx(exp["D_lambda_K"], rel=1e-3)


@pytest.mark.shared
def test_full_resolution_report_conformance(fr_case) -> None:
    fused, ms_lr, pan, exp = fr_case
    rep = M.full_resolution_report(fused, ms_lr, pan, WV3, ratio=4)
    assert list(rep) == ["HQNR", "D_lambda_K", "D_s", "QNR", "D_lambda", "D_rho", "R_Q2n", "R_SAM", "R_ERGAS",
                         "FSDS"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in rep.values())
    for key in ("HQNR", "D_lambda_K", "D_s", "D_rho"):
        assert rep[key] == pytest.approx(exp[key], rel=1e-6)
    assert rep["QNR"] == pytest.approx((1 - rep["D_lambda"]) * (1 - rep["D_s"]), rel=1e-12)
    assert 0 <= rep["D_lambda"] < 0.1 and 0.5 < rep["R_Q2n"] <= 1 and 0 < rep["FSDS"] <= 1


# ---------------------------------------------------------------- identities


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth-ish positive test image in DN (per-band offsets, spatial structure, noise)."""
    rng = np.random.default_rng(seed)
    b, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = 300 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + 200 * np.sin((xx + yy) / 11.0)
    return 1000 + base[None] * rng.uniform(0.5, 1.5, (b, 1, 1)) + rng.normal(0, 20, (b, h, w))


@pytest.mark.parametrize("shape", [(8, 64, 64), (4, 50, 45), (3, 40, 40), (1, 33, 70)])
def test_q2n_identity(shape: tuple[int, int, int]) -> None:
    x = _image(shape)
    assert M.q2n(x, x) == pytest.approx(1.0, abs=1e-12)
    assert M.q2n(x, x, uint16_cast=True) == pytest.approx(1.0, abs=1e-12)
    assert M.q2n(x, x, block=16, shift=8) == pytest.approx(1.0, abs=1e-12)


def test_reference_identities() -> None:
    x = _image((4, 64, 64), seed=1)
    assert M.q_avg(x, x) == pytest.approx(1.0, abs=1e-12)
    assert M.sam(x, 3.7 * x) == pytest.approx(0.0, abs=1e-5)
    assert M.ergas(x, x, 4) == 0.0
    assert M.scc(x, x) == pytest.approx(1.0, abs=1e-12)
    assert M.psnr(x, x, 2047) == math.inf
    rep = M.reduced_resolution_report(x, x, 4)
    assert list(rep) == ["Q2n", "SAM", "ERGAS", "SCC", "Q", "PSNR"]
    assert rep["Q2n"] == pytest.approx(1.0) and rep["Q"] == pytest.approx(1.0) and rep["ERGAS"] == 0.0


def test_reference_metrics_see_degradation() -> None:
    x = _image((4, 64, 64), seed=2)
    y = x + np.random.default_rng(5).normal(0, 30, x.shape)
    assert M.q2n(x, y) < 0.99 and M.q_avg(x, y) < 0.99
    assert M.scc(x, y) < 0.999  # uncentred correlation of gradient magnitudes: stays high
    assert M.sam(x, y) > 0 and M.ergas(x, y, 4) > 0
    assert M.psnr(x, y, 2047) == pytest.approx(10 * math.log10(2047**2 / np.mean((x - y) ** 2)))


def test_sam_skips_zero_pixels_and_q_flat_windows() -> None:
    x = _image((3, 40, 40), seed=3)
    y = x.copy()
    x[:, :5, :5] = 0.0  # zero-norm pixels are skipped, the rest is identical
    y[:, :5, :5] = 7.0
    assert M.sam(x, y) == pytest.approx(0.0, abs=1e-5)
    flat = np.full((2, 40, 40), 100.0)
    assert M.q_avg(flat, flat) == 1.0  # toolbox special case: flat windows score 1


def test_uint16_cast_warns_on_reflectance() -> None:
    x = _image((4, 40, 40)) / 4000.0
    with pytest.warns(RuntimeWarning):
        M.q2n(x, x, uint16_cast=True)


def test_full_resolution_identities() -> None:
    ratio = 4
    ms = _image((4, 16, 16), seed=4)
    fused = interp23tap(ms, ratio)
    pan = fused.mean(axis=0)
    assert M.d_lambda(fused, ms, ratio) == pytest.approx(0.0, abs=1e-12)  # fused is exactly ms_exp
    # D_rho of the PAN itself replicated in every band is 0
    assert M.d_rho(np.repeat(pan[None], 3, axis=0), pan, ratio) == pytest.approx(0.0, abs=1e-9)
    assert M.fsds(fused, fused) == pytest.approx(1.0, abs=1e-12)
    assert M.fsds(ms, ms) == pytest.approx(1.0, abs=1e-12)
    for f in (M.d_lambda_k, M.r_q2n, M.r_sam, M.r_ergas):
        v = f(fused, ms, [0.3] * 4, ratio)
        assert isinstance(v, float) and math.isfinite(v)
    with pytest.raises(ValueError):
        M.d_s(fused, ms[:, :8], pan, ratio)


def test_fsds_detects_blur() -> None:
    x = _image((2, 64, 64), seed=6)
    from pansharpen_cli.filters import mtf_filter, mtf_kernels

    blurred = mtf_filter(x, mtf_kernels([0.1, 0.1], 2))
    assert M.fsds(x, 2.0 * x + 5.0) == pytest.approx(1.0, abs=1e-12)  # gain/offset invariant
    assert M.fsds(x, blurred) < M.fsds(x, x + np.random.default_rng(0).normal(0, 1, x.shape))


# ---------------------------------------------------------------- properties


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bands=st.integers(1, 8), h=st.integers(20, 70), w=st.integers(20, 70))
def test_q2n_identity_property(seed: int, bands: int, h: int, w: int) -> None:
    x = np.random.default_rng(seed).uniform(1, 2047, size=(bands, h, w))
    assert M.q2n(x, x, block=16, shift=16) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), gain=st.floats(0.01, 100.0))
def test_sam_invariant_to_pixelwise_gain(seed: int, gain: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(1, 2047, size=(4, 12, 12))
    y = rng.uniform(1, 2047, size=(4, 12, 12))
    g = gain * rng.uniform(0.5, 2.0, size=(1, 12, 12))
    assert M.sam(x, g * y) == pytest.approx(M.sam(x, y), rel=1e-9, abs=1e-9)
    assert 0.0 <= M.sam(x, y) <= 180.0
