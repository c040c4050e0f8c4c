"""The tile-safe resampler agrees with the toolbox interpolator and does not depend on the block."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pansharpen_cli.filters import interp23tap
from pansharpen_cli.resample import (
    AxisMap,
    lr_range,
    resample_block,
    resample_cols,
    resample_rows,
    resample_rows_phases,
)


def _toolbox_map(r: int) -> AxisMap:
    # output pixel j <-> LR coordinate (j - r/2) / r : the toolbox's phase (LR k on HR r*k + r/2)
    return AxisMap(1.0 / r, -(r // 2) / r)


def _run(ms: np.ndarray, amap: AxisMap, j0: int, j1: int, i0: int, i1: int) -> np.ndarray:
    h, w = ms.shape[1:]
    kr, kc = lr_range(amap, i0, i1, 10**4), lr_range(amap, j0, j1, 10**4)
    rows = np.clip(np.arange(*kr), 0, h - 1)
    cols = np.clip(np.arange(*kc), 0, w - 1)
    block = ms[:, rows][:, :, cols]
    return resample_block(block, amap, amap, kr[0], kc[0], (i0, i1), (j0, j1), (10**4, 10**4))


def test_matches_toolbox_interp23tap_in_the_interior() -> None:
    rng = np.random.default_rng(0)
    ms = rng.uniform(0, 2047, size=(3, 40, 40)).astype(np.float32)
    for r in (2, 4):
        ref = interp23tap(ms.astype(np.float64), r)
        out = _run(ms, _toolbox_map(r), 0, 40 * r, 0, 40 * r)
        m = 12 * r  # away from the borders (toolbox: circular; ours: reflected by the reader)
        assert np.abs(out - ref)[:, m:-m, m:-m].max() < 5e-3


@settings(max_examples=25, deadline=None)
@given(a=st.integers(0, 60), b=st.integers(1, 60), r=st.sampled_from([2, 4]), off=st.floats(-0.5, 0.5))
def test_value_of_a_pixel_does_not_depend_on_the_block(a: int, b: int, r: int, off: float) -> None:
    rng = np.random.default_rng(1)
    ms = rng.uniform(0, 1000, size=(2, 50, 50)).astype(np.float32)
    amap = AxisMap(1.0 / r, off)
    whole = _run(ms, amap, 0, 120, 0, 120)
    j0, j1 = sorted((a, a + b))
    part = _run(ms, amap, j0, j1, j0, j1)
    assert np.array_equal(part, whole[:, j0:j1, j0:j1])


def test_non_dyadic_ratio_interpolates_linear_ramps_exactly() -> None:
    ramp = np.tile(np.arange(30, dtype=np.float32), (30, 1))[None]
    amap = AxisMap(1 / 2.5, 0.1)
    out = _run(ramp, amap, 10, 50, 10, 50)
    expected = amap.positions(10, 50)
    assert np.allclose(out[0, 0], expected, atol=1e-4)


def _lr_block(amap: AxisMap, n_out: int, seed: int, size: int = 60) -> tuple[np.ndarray, int]:
    """A random (2, size, size) MS gathered (edge-clamped) over the LR range of outputs [0, n_out)
    along both axes, and the first LR index of that range."""
    ms = np.random.default_rng(seed).uniform(0, 1000, size=(2, size, size)).astype(np.float32)
    k = lr_range(amap, 0, n_out, 10**4)
    idx = np.clip(np.arange(*k), 0, size - 1)
    return ms[:, idx][:, :, idx], k[0]


@settings(max_examples=25, deadline=None)
@given(a=st.integers(0, 90), b=st.integers(1, 40), r=st.sampled_from([2, 3, 4]), off=st.floats(-0.5, 0.5),
       kind=st.sampled_from(["23tap", "cubic"]))
def test_any_band_of_rows_from_the_column_pass_equals_the_whole_block(a: int, b: int, r: int, off: float,
                                                                      kind: str) -> None:
    # the per-pixel engine interpolates columns once per tile and rows band by band
    amap = AxisMap(1.0 / r, off)
    block, k0 = _lr_block(amap, 120, seed=2)
    whole = resample_block(block, amap, amap, k0, k0, (0, 120), (0, 120), (10**4, 10**4), kind)
    half = resample_cols(block, amap, k0, (0, 120), 10**4, kind)
    i0, i1 = a, min(a + b, 120)
    band = resample_rows(half, amap, k0, (i0, i1), 10**4, kind)
    assert np.array_equal(band, whole[:, i0:i1])


@settings(max_examples=25, deadline=None)
@given(a=st.integers(0, 90), b=st.integers(1, 40), r=st.sampled_from([2, 2.5, 3, 4]), off=st.floats(-0.5, 0.5),
       kind=st.sampled_from(["23tap", "cubic"]))
def test_phases_cover_each_row_once_with_the_interleaved_values(a: int, b: int, r: float, off: float,
                                                                kind: str) -> None:
    amap = AxisMap(1.0 / r, off)
    half, k0 = _lr_block(amap, 130, seed=5)
    i0, i1 = a, min(a + b, 130)
    want = resample_rows(half, amap, k0, (i0, i1), 10**4, kind)
    got = np.full_like(want, np.nan)
    seen = np.zeros(i1 - i0, int)
    for rows, vals in resample_rows_phases(half, amap, k0, (i0, i1), 10**4, kind):
        got[:, rows] = vals
        seen[rows] += 1
    assert (seen == 1).all()
    assert np.array_equal(got, want)
