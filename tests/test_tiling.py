"""Pure window math: coverage, snapping, and exact stitching (property tests)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pansharpen_cli.tiling import StripAssembler, blend_weights, plan_tiles, tile_starts


@given(length=st.integers(1, 3000), tile=st.integers(16, 700), overlap=st.integers(0, 300))
def test_tile_starts_cover_and_snap(length: int, tile: int, overlap: int) -> None:
    overlap = min(overlap, tile - 1)
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0
    assert starts[-1] + size == length  # last tile snapped to the edge
    assert all(0 <= s <= length - size for s in starts)
    assert starts == sorted(set(starts))
    for a, b in zip(starts, starts[1:], strict=False):
        assert b - a <= tile - overlap  # no gap, at least the requested overlap
        assert b - a >= 1


def test_blend_weights_open_interval() -> None:
    w = blend_weights(7)
    assert np.all(w > 0) and np.all(w < 1)
    assert np.all(np.diff(w) > 0)


def _stitch(data: np.ndarray, tile: int, overlap: int, context: int, f=lambda x: x,
            nodata: float | None = None, direct: bool = False) -> np.ndarray:
    """Tiles of ``data`` through ``f`` and the assembler, in ``data``'s dtype (integer strips: the
    per-tile conversion path); unwritten pixels stay NaN (float) or 0. ``direct``: tiles that
    :meth:`StripAssembler.direct_view` allows are written into the strip, in reverse order (the
    fuse loop's zero-copy path), the others handed to ``finish_row``."""
    b, h, w = data.shape
    plan = plan_tiles(h, w, tile, overlap, context)
    asm = StripAssembler(plan, b, dtype=data.dtype, nodata=nodata)
    out = np.full_like(data, np.nan if data.dtype.kind == "f" else 0)
    for i in range(len(plan.row_starts)):
        outs = [f(data[:, t.core.row:t.core.row_stop, t.core.col:t.core.col_stop].copy()) for t in plan.row_tiles(i)]
        if direct:
            asm.begin_row()
            rest = {}
            for j in reversed(range(len(outs))):
                view = asm.direct_view(j)
                if view is None:
                    rest[j] = outs[j]
                else:
                    view[...] = outs[j]
            r0, block = asm.finish_row(i, rest)
        else:
            r0, block = asm.add_row(i, outs)
        out[:, r0:r0 + block.shape[1]] = block
    return out


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 120), w=st.integers(1, 120), tile=st.integers(16, 64), overlap=st.integers(0, 40),
       seed=st.integers(0, 2**16))
def test_identity_through_assembler_is_bit_exact(h: int, w: int, tile: int, overlap: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(2, h, w)).astype(np.float32) * 1e3
    out = _stitch(data, tile, overlap, 0)
    assert np.array_equal(out, data)


def test_blend_is_a_crossfade_between_disagreeing_tiles() -> None:
    # two tiles that disagree by a constant: the seam region must ramp smoothly between them
    data = np.zeros((1, 16, 48), np.float32)
    calls = {"n": 0}

    def f(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        return x + calls["n"]

    out = _stitch(data, 32, 16, 0, f)
    row = out[0, 0]
    assert row[0] == 1 and row[-1] == 2
    assert np.all(np.diff(row) >= 0)
    assert np.all((row[16:32] > 1) & (row[16:32] < 2))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 100), w=st.integers(1, 100), tile=st.integers(16, 48), overlap=st.integers(0, 12),
       seed=st.integers(0, 2**16))
def test_integer_strips_are_exact_for_identity(h: int, w: int, tile: int, overlap: int, seed: int) -> None:
    # tiles converted to the output type before stitching (the per-tile path): the snapped last
    # tile overlaps its neighbour, and equal values must come out bit for bit
    data = np.random.default_rng(seed).integers(0, 65536, size=(2, h, w), dtype=np.uint16)
    assert np.array_equal(_stitch(data, tile, overlap, 0), data)


def _first_tile_then(first: int, rest: int):
    """A tile function adding ``first`` to the first tile it sees and ``rest`` to the others."""
    calls = {"n": 0}

    def f(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        return x + np.uint16(first if calls["n"] == 1 else rest)

    return f


def test_integer_blend_never_wraps_around() -> None:
    # 40 px wide, tiles of 32: the last tile snaps to column 8 and overlaps the first by 24 px.
    # The first tile says 5, the second 0 everywhere: a uint16 blend done in the integer type
    # wrapped (0 - 5 -> 65531); it must ramp down from 5 to 0 and stay within [0, 5].
    out = _stitch(np.zeros((1, 8, 40), np.uint16), 32, 0, 0, _first_tile_then(5, 0))
    row = out[0, 0].astype(int)
    assert row.min() == 0 and row.max() == 5
    assert row[0] == 5 and row[-1] == 0 and np.all(np.diff(row) <= 0)


def test_integer_blend_never_lands_on_nodata() -> None:
    # valid values 99 and 101 around a nodata of 100: the mix that rounds to 100 keeps the first tile's
    out = _stitch(np.zeros((1, 4, 40), np.uint16), 32, 0, 0, _first_tile_then(99, 101), nodata=100)
    assert not np.any(out == 100)
    assert set(np.unique(out)) <= {99, 101}


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 100), w=st.integers(1, 130), tile=st.integers(16, 48), overlap=st.integers(0, 12),
       integer=st.booleans(), seed=st.integers(0, 2**16))
def test_tiles_written_in_place_equal_tiles_handed_over(h: int, w: int, tile: int, overlap: int, integer: bool,
                                                        seed: int) -> None:
    # direct views only for tiles overlapping no earlier one; the snapped last tile is blended;
    # tiles that disagree (+ tile index) must give the same strips either way
    rng = np.random.default_rng(seed)
    data = (rng.integers(0, 4000, size=(2, h, w), dtype=np.uint16) if integer
            else rng.normal(size=(2, h, w)).astype(np.float32))

    def disagreeing():
        calls = {"n": 0}

        def f(x: np.ndarray) -> np.ndarray:
            calls["n"] += 1
            return x + x.dtype.type(calls["n"] % 7)
        return f

    a = _stitch(data, tile, overlap, 0, disagreeing())
    b = _stitch(data, tile, overlap, 0, disagreeing(), direct=True)
    assert np.array_equal(a, b)
    assert np.array_equal(_stitch(data, tile, overlap, 0, direct=True), data)


def test_direct_view_only_where_no_earlier_tile_overlaps() -> None:
    plan = plan_tiles(8, 40, 16, 0, 0)  # starts 0, 16, 24 (snapped): the last overlaps by 8
    asm = StripAssembler(plan, 1)
    asm.begin_row()
    assert [asm.direct_view(j) is not None for j in range(3)] == [True, True, False]
    assert asm.direct_view(1).shape == (1, 8, 16)


# -- column groups (vertical stripes) ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 3000), tile=st.integers(8, 600), overlap=st.integers(0, 100),
       max_width=st.integers(1, 2500), align=st.sampled_from([1, 16, 64, 512]))
def test_column_groups_cover_the_row_on_allowed_boundaries(width: int, tile: int, overlap: int, max_width: int,
                                                            align: int) -> None:
    from pansharpen_cli.tiling import column_groups

    plan = plan_tiles(100, width, tile, min(overlap, tile - 1), 0)
    groups = column_groups(plan, max_width, align)
    starts, tw = plan.col_starts, plan.tile_width
    assert groups[0][0] == 0 and groups[-1][1] == len(starts)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(groups, [*groups[1:], (groups[-1][1], None)], strict=True))
    for j0, _ in groups[1:]:
        assert starts[j0] % align == 0 and starts[j0 - 1] + tw <= starts[j0]  # never splits overlapping tiles
    for k, (j0, j1) in enumerate(groups):
        span = starts[j1 - 1] + tw - starts[j0]
        if span > max_width and k + 1 < len(groups):  # too wide only where no earlier cut was allowed
            assert not any(starts[j] % align == 0 and starts[j - 1] + tw <= starts[j] and
                           starts[j - 1] + tw - starts[j0] <= max_width for j in range(j0 + 1, j1))
        sub = plan.columns(j0, j1)
        assert sub.width == span and sub.row_starts == plan.row_starts
        assert [c + starts[j0] for c in sub.col_starts] == list(starts[j0:j1])


def test_column_groups_of_the_default_output() -> None:
    from pansharpen_cli.tiling import column_groups

    plan = plan_tiles(8192, 8192, 512, 0, 0)
    assert column_groups(plan, 4096, 512) == [(0, 8), (8, 16)]
    assert column_groups(plan, 1 << 20, 512) == [(0, 16)]
    snapped = plan_tiles(100, 3000, 512, 0, 0)  # starts 0, 512, ..., 2048, 2488 (overlaps 2048)
    assert column_groups(snapped, 1024, 512) == [(0, 2), (2, 4), (4, 6)]
    assert column_groups(plan_tiles(100, 3000, 300, 0, 0), 1024, 512) == [(0, 10)]  # no start on a block edge
