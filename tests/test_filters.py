"""Filters of the toolbox: 23-tap interpolator, MTF kernels, filtering, decimation, bicubic imresize.

Conformance tests read ``../shared/conformance`` (H x W x B arrays, transposed here to band-first)
and skip cleanly when it is absent; the identity/property tests always run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from pansharpen_cli.filters import (
    HALFBAND_23TAP,
    decimate,
    imresize_bicubic,
    interp23tap,
    mtf_filter,
    mtf_kernels,
    wald_degrade,
)

SENSOR_GAINS = {
    "QB": [0.34, 0.32, 0.30, 0.22],
    "IKONOS": [0.26, 0.28, 0.29, 0.28],
    "GeoEye1": [0.23] * 4,
    "WV4": [0.23] * 4,
    "WV2": [0.35] * 7 + [0.27],
    "WV3": [0.325, 0.355, 0.360, 0.350, 0.365, 0.360, 0.335, 0.315],
}


@pytest.fixture(scope="module")
def cases(shared: Path) -> dict[str, np.ndarray]:
    path = shared / "conformance" / "cases.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _bf(a: np.ndarray) -> np.ndarray:
    """H x W x B -> B x H x W float64."""
    return np.asarray(a, dtype=np.float64).transpose(2, 0, 1)


# ---------------------------------------------------------------- conformance


@pytest.mark.shared
def test_interp23tap_conformance(cases: dict[str, np.ndarray]) -> None:
    up = interp23tap(_bf(cases["fr_ms_lr"]), 4)
    expected = _bf(cases["fr_ms_exp_interp23tap"])
    assert up.shape == expected.shape
    np.testing.assert_allclose(up, expected, rtol=1e-9, atol=1e-9)
    assert up.max() == pytest.approx(1262.6331216775097, rel=1e-12)


@pytest.mark.shared
@pytest.mark.parametrize("sensor", sorted(SENSOR_GAINS))
def test_mtf_kernels_conformance(cases: dict[str, np.ndarray], sensor: str) -> None:
    k = mtf_kernels(SENSOR_GAINS[sensor], 4)
    np.testing.assert_allclose(k, _bf(cases[f"mtf41_ratio4_{sensor}"]), rtol=0, atol=1e-9)


# ---------------------------------------------------------------- interp23tap / decimate


def test_halfband_kernel_constant() -> None:
    assert HALFBAND_23TAP.shape == (23,)
    np.testing.assert_array_equal(HALFBAND_23TAP, HALFBAND_23TAP[::-1])
    assert HALFBAND_23TAP[11] == 1.0
    assert HALFBAND_23TAP.sum() == pytest.approx(2.0, abs=1e-9)  # gain 2 per zero-inserted axis


@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_interp23tap_then_decimate_is_identity(ratio: int) -> None:
    rng = np.random.default_rng(ratio)
    ms = rng.uniform(100, 2000, size=(3, 24, 20))
    up = interp23tap(ms, ratio)
    assert up.shape == (3, 24 * ratio, 20 * ratio)
    assert up.dtype == np.float64
    np.testing.assert_allclose(decimate(up, ratio), ms, rtol=0, atol=1e-9)


def test_interp23tap_phase_and_constant() -> None:
    # a constant stays constant; LR pixel k lands on HR pixel 4k+2 (a delta is centred there)
    np.testing.assert_allclose(interp23tap(np.full((2, 8, 8), 7.0), 4), 7.0, atol=1e-9)
    d = np.zeros((16, 16))
    d[5, 9] = 1.0
    up = interp23tap(d, 4)
    assert up.shape == (64, 64)
    assert np.unravel_index(np.argmax(up), up.shape) == (4 * 5 + 2, 4 * 9 + 2)
    # the impulse response is symmetric about that pixel
    np.testing.assert_allclose(up[22, 38 - 10:38 + 11], up[22, 38 - 10:38 + 11][::-1], atol=1e-12)


def test_interp23tap_rejects_non_power_of_two() -> None:
    with pytest.raises(ValueError):
        interp23tap(np.zeros((1, 4, 4)), 3)


def test_decimate_phase() -> None:
    a = np.arange(2 * 8 * 8).reshape(2, 8, 8)
    np.testing.assert_array_equal(decimate(a, 4), a[:, 2::4, 2::4])
    np.testing.assert_array_equal(decimate(a[0], 2), a[0, 1::2, 1::2])


@settings(max_examples=25, deadline=None)
@given(
    ms=arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 12), st.integers(2, 12)),
              elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)),
    ratio=st.sampled_from([2, 4]),
)
def test_interp23tap_roundtrip_property(ms: np.ndarray, ratio: int) -> None:
    np.testing.assert_allclose(decimate(interp23tap(ms, ratio), ratio), ms, rtol=0, atol=1e-8)


# ---------------------------------------------------------------- MTF kernels and filtering


@pytest.mark.parametrize("gains", list(SENSOR_GAINS.values()))
def test_mtf_kernels_shape_sum_symmetry(gains: list[float]) -> None:
    k = mtf_kernels(gains, 4)
    assert k.shape == (len(gains), 41, 41)
    np.testing.assert_allclose(k.sum(axis=(1, 2)), 1.0, atol=3e-3)  # windowed, not renormalised
    np.testing.assert_allclose(k, k[:, ::-1, :], atol=1e-15)
    np.testing.assert_allclose(k, np.swapaxes(k, 1, 2), atol=1e-15)
    assert np.all(np.argmax(k.reshape(len(gains), -1), axis=1) == 20 * 41 + 20)


def test_mtf_kernel_gain_at_nyquist() -> None:
    # the frequency response at the MS Nyquist frequency is close to the requested gain (not exact:
    # frequency sampling on 41 points puts the design point at 5/41 instead of 1/8 cycle/pixel, and
    # the Kaiser window smooths the response)
    k = mtf_kernels([0.3], 4, size=41)[0]
    n = 512
    resp = np.abs(np.fft.fft2(k, (n, n)))
    assert resp[n // 8, 0] == pytest.approx(0.3, abs=0.03)
    assert resp[0, 0] == pytest.approx(1.0, abs=3e-3)


@pytest.mark.parametrize("mode", ["nearest", "reflect", "mirror", "wrap", "constant"])
def test_mtf_filter_matches_direct_correlation(mode: str) -> None:
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1000, size=(2, 30, 27))
    k = rng.normal(size=(2, 7, 7))
    out = mtf_filter(img, k, mode=mode)
    ref = np.stack([ndimage.correlate(img[i], k[i], mode=mode) for i in range(2)])
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-8)


def test_mtf_filter_2d_and_shared_kernel() -> None:
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1000, size=(3, 40, 40))
    k = mtf_kernels([0.3], 4)[0]
    both = mtf_filter(img, k)
    np.testing.assert_allclose(mtf_filter(img[1], k), both[1], rtol=1e-12)
    # replicate borders keep a constant (times the kernel sum)
    np.testing.assert_allclose(mtf_filter(np.full((40, 40), 5.0), k), 5.0 * k.sum(), rtol=1e-10)


def test_mtf_filter_even_kernel_matlab_centre() -> None:
    # MATLAB imfilter centres a k x k kernel at (k-1)//2: an even-size delta at index 1 is identity
    img = np.random.default_rng(3).normal(size=(12, 13))
    k = np.zeros((4, 4))
    k[1, 1] = 1.0
    np.testing.assert_allclose(mtf_filter(img, k), img, atol=1e-12)


# ---------------------------------------------------------------- bicubic imresize


def test_imresize_bicubic_shapes_and_constant() -> None:
    a = np.full((2, 37, 50), 3.5)
    out = imresize_bicubic(a, 0.25)
    assert out.shape == (2, 10, 13)  # ceil
    np.testing.assert_allclose(out, 3.5, atol=1e-12)
    assert imresize_bicubic(a[0], 2).shape == (74, 100)


@pytest.mark.parametrize("scale", [0.25, 0.5, 2.0])
def test_imresize_bicubic_reproduces_linear_ramp_inside(scale: float) -> None:
    h, w = 64, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = 3.0 * yy - 2.0 * xx + 10.0
    out = imresize_bicubic(ramp, scale)
    oh, ow = out.shape
    # output pixel i (0-based) sits at input coordinate (i + 0.5)/scale - 0.5
    yo = (np.arange(oh) + 0.5) / scale - 0.5
    xo = (np.arange(ow) + 0.5) / scale - 0.5
    expected = 3.0 * yo[:, None] - 2.0 * xo[None, :] + 10.0
    m = int(np.ceil(4 / min(scale, 1.0) * max(scale, 1.0))) + 1
    np.testing.assert_allclose(out[m:-m, m:-m], expected[m:-m, m:-m], atol=1e-9)


# ---------------------------------------------------------------- Wald protocol


@pytest.mark.parametrize("pan_mode", ["bicubic", "mtf"])
def test_wald_degrade(pan_mode: str) -> None:
    rng = np.random.default_rng(4)
    pan = rng.uniform(0, 2047, size=(64, 64))
    ms = rng.uniform(0, 2047, size=(4, 16, 16))
    gains = SENSOR_GAINS["QB"]
    pan_lr, ms_lr = wald_degrade(pan, ms, gains, 0.15, 4, pan_mode=pan_mode)
    assert pan_lr.shape == (16, 16)
    assert ms_lr.shape == (4, 4, 4)
    np.testing.assert_allclose(ms_lr, mtf_filter(ms, mtf_kernels(gains, 4))[:, 2::4, 2::4], rtol=1e-12)
    if pan_mode == "bicubic":
        np.testing.assert_allclose(pan_lr, imresize_bicubic(pan, 0.25), rtol=1e-12)
    else:
        np.testing.assert_allclose(pan_lr, mtf_filter(pan, mtf_kernels([0.15], 4)[0])[2::4, 2::4], rtol=1e-12)
    with pytest.raises(ValueError):
        wald_degrade(pan, ms, gains, 0.15, 4, pan_mode="nearest")
