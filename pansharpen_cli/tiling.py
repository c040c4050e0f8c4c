"""Pure window math for tiled processing: no I/O, no pixels.

The output canvas (H, W) is covered by tiles of ``tile`` pixels placed every ``tile - overlap``
pixels; the last row and column are snapped to the canvas edge (so every tile is whole unless
the canvas itself is smaller). Each tile is computed on a *read window* that adds ``context``
pixels on every side (data beyond the canvas are supplied by the reader, by reflection); the
context is cropped after computing. Where two tiles' cores overlap, the later tile is blended in
with a linear ramp: ``a + w * (b - a)`` — exact wherever both tiles agree, so identity and
per-pixel methods reproduce their untiled output bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A rectangle in canvas pixel coordinates (may extend beyond the canvas)."""

    row: int
    col: int
    height: int
    width: int

    @property
    def row_stop(self) -> int:
        return self.row + self.height

    @property
    def col_stop(self) -> int:
        return self.col + self.width

    def expand(self, n: int) -> Window:
        return Window(self.row - n, self.col - n, self.height + 2 * n, self.width + 2 * n)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: a regular step of ``tile - overlap``, last one snapped.

    >>> tile_starts(10, 4, 1)
    [0, 3, 6]
    >>> tile_starts(3, 8, 2)
    [0]
    """
    if length <= 0:
        return []
    if tile <= 0:
        raise ValueError("tile must be positive")
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be in [0, tile)")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def blend_weights(n: int) -> np.ndarray:
    """Weights of the *later* tile across an overlap of ``n`` pixels: strictly inside (0, 1)."""
    return ((np.arange(n, dtype=np.float32) + 0.5) / n).astype(np.float32)


@dataclass(frozen=True)
class Tile:
    row_index: int
    col_index: int
    #: the part of the canvas this tile contributes to
    core: Window
    #: ``core`` plus context on every side: what the method is run on
    read: Window
    context: int


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile: int
    overlap: int
    context: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def tile_height(self) -> int:
        return min(self.tile, self.height)

    @property
    def tile_width(self) -> int:
        return min(self.tile, self.width)

    @property
    def n_tiles(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    def tile_at(self, i: int, j: int) -> Tile:
        core = Window(self.row_starts[i], self.col_starts[j], self.tile_height, self.tile_width)
        return Tile(i, j, core, core.expand(self.context), self.context)

    def row_tiles(self, i: int) -> Iterator[Tile]:
        for j in range(len(self.col_starts)):
            yield self.tile_at(i, j)

    def __iter__(self) -> Iterator[Tile]:
        for i in range(len(self.row_starts)):
            yield from self.row_tiles(i)

    def columns(self, j0: int, j1: int) -> TilePlan:
        """The plan of tile columns [j0, j1) alone, as a canvas of their own: same rows, columns
        shifted so that tile ``j0`` starts at 0 (a vertical stripe of the canvas)."""
        if not 0 <= j0 < j1 <= len(self.col_starts):
            raise ValueError(f"no tile columns [{j0}, {j1}) in a plan of {len(self.col_starts)}")
        c0 = self.col_starts[j0]
        starts = tuple(c - c0 for c in self.col_starts[j0:j1])
        return TilePlan(self.height, starts[-1] + self.tile_width, self.tile, self.overlap, self.context,
                        self.row_starts, starts)


def column_groups(plan: TilePlan, max_width: int, align: int = 1) -> list[tuple[int, int]]:
    """Split the tile columns into consecutive groups ``[j0, j1)`` spanning at most ``max_width``
    canvas columns each (a group holds at least one tile).

    A group may only start at a tile that overlaps no earlier tile and whose first column is a
    multiple of ``align`` (the output's block width: each group then covers whole output blocks);
    where no such start falls within ``max_width`` the group grows to the next one. One group
    (``[(0, n)]``) when the canvas is narrow enough or no column may start a group.
    """
    if max_width <= 0 or align <= 0:
        raise ValueError("max_width and align must be positive")
    starts, tw = plan.col_starts, plan.tile_width
    n = len(starts)
    ok = [j > 0 and starts[j - 1] + tw <= starts[j] and starts[j] % align == 0 for j in range(n)]
    groups: list[tuple[int, int]] = []
    j0 = 0
    while j0 < n:
        end = None  # the last allowed end within max_width, else the first allowed end
        for j in range(j0 + 1, n + 1):
            if j < n and not ok[j]:
                continue
            if starts[j - 1] + tw - starts[j0] <= max_width:
                end = j
            else:
                end = end if end is not None else j
                break
        assert end is not None  # j == n is always allowed
        groups.append((j0, end))
        j0 = end
    return groups


def plan_tiles(height: int, width: int, tile: int, overlap: int, context: int) -> TilePlan:
    """Plan the tiles of an (height, width) canvas."""
    if height <= 0 or width <= 0:
        raise ValueError("empty canvas")
    if context < 0:
        raise ValueError("context must be >= 0")
    overlap = min(overlap, tile - 1)
    return TilePlan(height, width, tile, overlap, context,
                    tuple(tile_starts(height, tile, overlap)), tuple(tile_starts(width, tile, overlap)))


def blend_into(dst: np.ndarray, src: np.ndarray, axis: int, overlap: int, nodata: float | None = None) -> None:
    """Blend the first ``overlap`` entries of ``src`` along ``axis`` onto the last of ``dst``.

    ``dst`` is modified in place: ``dst + w * (src - dst)`` with ramp weights ``w``. Integer arrays
    (tiles already converted to the output type) are blended in floating point and rounded to the
    nearest integer, so equal values stay exactly equal and the mix always lies between the two
    (never wraps around); a mix that rounds onto ``nodata`` from two valid values keeps ``dst``'s.
    """
    if overlap <= 0:
        return
    w = blend_weights(overlap)
    shape = [1] * dst.ndim
    shape[axis] = overlap
    w = w.reshape(shape)
    a = np.take(dst, range(dst.shape[axis] - overlap, dst.shape[axis]), axis=axis)
    b = np.take(src, range(overlap), axis=axis)
    if dst.dtype.kind in "uib":
        af = a.astype(np.float64)
        mixed = np.rint(af + w * (b.astype(np.float64) - af)).astype(dst.dtype)
        if nodata is not None:
            onto = (mixed == nodata) & (a != nodata) & (b != nodata)
            mixed[onto] = a[onto]
    else:
        mixed = a + w * (b - a)
    idx = [slice(None)] * dst.ndim
    idx[axis] = slice(dst.shape[axis] - overlap, dst.shape[axis])
    dst[tuple(idx)] = mixed


class StripAssembler:
    """Stitches the tiles of one plan row by row and yields finished canvas rows.

    Memory is one strip (bands x tile x width) plus the overlap carried to the next strip; for a
    vertical stripe of the canvas give the plan of its columns (:meth:`TilePlan.columns`).
    Either call :meth:`add_row` with the cropped tile outputs of each tile row, in order, or, to
    save a copy per tile, :meth:`begin_row`, let each tile that :meth:`direct_view` allows write
    its output straight into the strip, and :meth:`finish_row` with the others. Both return
    ``(row_start, block)`` of canvas rows that are final; ``block`` is a view of a strip that is
    never written again (a new one is allocated for each row).
    """

    def __init__(self, plan: TilePlan, bands: int, dtype=np.float32, nodata: float | None = None):
        self.plan = plan
        self.bands = bands
        self.dtype = dtype
        self.nodata = nodata  # integer strips: the output nodata, which a blend never produces
        self._carry: np.ndarray | None = None
        self._next_row = 0
        self._strip: np.ndarray | None = None

    def begin_row(self) -> np.ndarray:
        """Allocate the strip of the next tile row (bands, tile height, canvas width)."""
        p = self.plan
        self._strip = np.empty((self.bands, p.tile_height, p.width), dtype=self.dtype)
        return self._strip

    def direct_view(self, j: int) -> np.ndarray | None:
        """The strip columns of tile ``j`` when it overlaps no earlier tile of the row (it can be
        written in place, in any order); ``None`` when it must be blended by :meth:`finish_row`."""
        assert self._strip is not None, "begin_row first"
        p = self.plan
        c0 = p.col_starts[j]
        if j and p.col_starts[j - 1] + p.tile_width > c0:
            return None
        return self._strip[:, :, c0:c0 + p.tile_width]

    def add_row(self, i: int, tiles: list[np.ndarray]) -> tuple[int, np.ndarray]:
        self.begin_row()
        return self.finish_row(i, dict(enumerate(tiles)))

    def finish_row(self, i: int, tiles: dict[int, np.ndarray]) -> tuple[int, np.ndarray]:
        """Place ``tiles`` (column index -> output; those written through :meth:`direct_view`
        left out) in column order, blending overlaps, and return the rows now final."""
        p = self.plan
        strip = self._strip
        assert strip is not None, "begin_row first"
        self._strip = None
        th = p.tile_height
        for j in sorted(tiles):
            out = tiles[j]
            c0 = p.col_starts[j]
            prev_end = p.col_starts[j - 1] + p.tile_width if j else 0
            n = max(prev_end - c0, 0)
            if n:
                blend_into(strip[:, :, :prev_end], out[:, :, :n], axis=2, overlap=n, nodata=self.nodata)
            strip[:, :, c0 + n:c0 + out.shape[2]] = out[:, :, n:]
        r0 = p.row_starts[i]
        if self._carry is not None:
            n = self._carry.shape[1]
            head = self._carry.copy()
            blend_into(head, strip[:, :n], axis=1, overlap=n, nodata=self.nodata)
            strip[:, :n] = head
        # rows final now: from the first row not yet emitted up to the next strip's start
        stop = p.row_starts[i + 1] if i + 1 < len(p.row_starts) else p.height
        emit_from = self._next_row
        block = strip[:, emit_from - r0:stop - r0]
        self._carry = strip[:, stop - r0:].copy() if stop - r0 < th else None
        self._next_row = stop
        return emit_from, block
