"""The in-place clamps of the per-pixel hot paths give exactly numpy's scalar-form values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pansharpen_cli import fastops
from pansharpen_cli.fastops import CHUNK, clamp_, maximum_

_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=40), elements=_FLOATS),
       lo=st.floats(-1e4, 1e4, width=32), span=st.floats(0, 1e5, width=32))
def test_clamp_is_fmin_of_fmax(x: np.ndarray, lo: float, span: float) -> None:
    hi = float(np.float32(lo + span))
    expected = np.fmin(np.fmax(x, np.float32(lo)), np.float32(hi))
    got = clamp_(x.copy(), lo, hi)
    np.testing.assert_array_equal(got, expected)
    assert not np.isnan(got).any()  # NaN goes to lo


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=40), elements=_FLOATS),
       value=st.floats(-10, 10, width=32))
def test_maximum_is_np_maximum(x: np.ndarray, value: float) -> None:
    expected = np.maximum(x, np.float32(value))
    got = maximum_(x.copy(), value)
    np.testing.assert_array_equal(got, expected)  # NaN stays NaN, as np.maximum (equal_nan)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_arrays_are_done_in_slices(dtype: type) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(1000, 3000, size=3 * CHUNK + 17).astype(dtype).reshape(-1, 1)
    x[::97] = np.nan
    out = x.copy()
    assert clamp_(out, 0, 2047) is out  # in place, returns its argument
    np.testing.assert_array_equal(out, np.fmin(np.fmax(x, dtype(0)), dtype(2047)))
    for buf in fastops._filled.values():
        assert buf.size == CHUNK and not buf.flags.writeable  # bounded, read-only constants


def test_views_and_integer_arrays_take_the_scalar_loop() -> None:
    base = np.arange(-50, 50, dtype=np.float32).reshape(10, 10)
    view = base[:, ::3]  # not contiguous: clamped through the view, in the base array
    clamp_(view, -5, 5)
    assert view.min() == -5 and view.max() == 5
    assert base[0, 1] == -49  # untouched outside the view
    ints = np.array([-3, 0, 9], dtype=np.int32)
    np.testing.assert_array_equal(clamp_(ints, 0, 5), [0, 0, 5])
