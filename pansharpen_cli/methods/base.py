"""The interface every fusion method implements: classical methods and deep models alike.

A method sees one tile at a time, in float32 digital numbers (never normalised per tile):

- ``pan``:    (H, W) PAN pixels of the tile *with context*,
- ``ms_up``:  (B, H, W) the MS resampled onto the same PAN pixels (23-tap interpolator),
- ``stats``:  scene-wide statistics the method asked for, computed once per scene.

and returns (B, H, W) float32. The engine crops the context afterwards, so a method must only be
correct at pixels at least ``receptive_field`` away from the tile border.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ..sensors import Sensor

if TYPE_CHECKING:
    from ..tiling import Window


class SceneWindows(Protocol):
    """Read access to any window of the scene while a method is fitted (the pipeline's engine).

    ``inputs(w)`` gives exactly what a tile over ``w`` gets (PAN, interpolated MS, validity), so
    anything estimated on these windows (regressions, test-time adaptation) sees the inference
    inputs. ``pan(w)`` is the PAN part alone (values, validity), without the MS interpolation:
    cheap, for screening many windows. ``ms_lr(w)`` gives the MS at its own resolution under
    ``w``: (B, h/r, w/r) values and validity; ``w`` must start and end on MS pixel boundaries
    (:meth:`lr_aligned`), integer ratios only. ``phase`` says where MS pixel centres fall on the
    PAN grid: ``"corner"`` (corner-aligned grids, VHR and Landsat products), ``"toolbox"`` (MS
    pixel ``k`` centred on PAN pixel ``r*k + r//2``, Wald-degraded pairs) or ``"other"``.
    """

    height: int
    width: int
    ratio: int
    phase: str

    def inputs(self, w: Window) -> TileInput: ...

    def pan(self, w: Window) -> tuple[np.ndarray, np.ndarray]: ...

    def ms_lr(self, w: Window) -> tuple[np.ndarray, np.ndarray]: ...

    def lr_aligned(self, w: Window) -> bool: ...


@dataclass
class SceneInfo:
    """What a method may know about the scene as a whole (no pixels of a tile)."""

    sensor: Sensor
    n_bands: int
    ratio: float
    bit_depth: int
    #: a decimated view of the scene for scene-wide statistics: PAN (h, w) and MS-on-PAN (B, h, w),
    #: both float32 DN with invalid pixels as NaN. Filled only when the method asks for it.
    pan_sample: np.ndarray | None = None
    ms_sample: np.ndarray | None = None
    #: the MS at its own resolution, decimated view (B, h, w), NaN where invalid
    ms_lr_sample: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: full-resolution crops of the canvas computed through the engine (PAN, MS on the PAN grid,
    #: validity), spread over the scene; the whole canvas when it is small (<= 1024 x 1024). Methods
    #: estimate their scene-wide coefficients (regressions, gains, haze) from these, once per scene,
    #: so every tile uses the same coefficients and tiled output equals whole-image output.
    crops: list[TileInput] = field(default_factory=list)
    #: reads any window of the scene during :meth:`Method.fit` (``None`` outside the pipeline)
    windows: SceneWindows | None = None


@dataclass
class TileInput:
    pan: np.ndarray  # (H, W) float32
    ms_up: np.ndarray  # (B, H, W) float32
    #: (H, W) bool, True where both PAN and all MS bands are valid
    valid: np.ndarray


def band_mix(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``weights @ x`` over the band axis, without BLAS.

    ``weights`` (B,) -> (H, W), or (K, B) -> (K, H, W); ``x`` (B, H, W). An explicit accumulation in
    a fixed order: the same result for a pixel whatever the tile size, and no BLAS thread pool
    spinning beside GDAL's compression threads (measured: np.tensordot cost 1.6 s of a 8192² run with
    two OpenBLAS threads, this 0.05 s).
    """
    w = np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    w2 = w[None] if single else w
    out = np.empty((w2.shape[0], *x.shape[1:]), dtype=np.result_type(x.dtype, np.float32))
    if x.dtype.kind != "f":
        for k in range(w2.shape[0]):
            acc = x[0] * w2[k, 0]
            for b in range(1, x.shape[0]):
                acc += x[b] * w2[k, b]
            out[k] = acc
        return out[0] if single else out
    # floats: accumulated in place in ``out`` through one scratch plane (no array per band; 30 %
    # faster on the per-pixel path's 16 Ki-pixel chunks), same products and order as above
    t = x.dtype.type
    tmp = np.empty(x.shape[1:], dtype=x.dtype) if x.shape[0] > 1 else None
    for k in range(w2.shape[0]):
        acc = out[k]
        np.multiply(x[0], t(w2[k, 0]), out=acc)
        for b in range(1, x.shape[0]):
            np.multiply(x[b], t(w2[k, b]), out=tmp)
            acc += tmp
    return out[0] if single else out


class Method:
    """Base class. Subclasses set ``name`` and implement :meth:`fuse_tile`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: pixels of context each side that the method needs for exact output (PAN pixels)
    receptive_field: int = 0
    #: whether an output pixel depends only on inputs within ``receptive_field``: then cropping the
    #: context makes every tile exact and neighbouring tiles need no cross-fade (default overlap
    #: 0); methods using statistics of the whole tile say False (default overlap: twice the field)
    exact_tiles: bool = True
    #: how the engine interpolates the MS onto the PAN grid for this method (``ms_up``):
    #: ``"23tap"`` (the toolbox's interpolator) or ``"cubic"`` (Keys; GDAL's default)
    resampling: str = "23tap"
    #: whether :meth:`fit` needs ``SceneInfo.pan_sample``/``ms_sample``
    needs_scene_sample: ClassVar[bool] = False
    #: whether each output pixel depends only on the inputs at that pixel (and on constants fitted
    #: scene-wide): the engine may then run :meth:`fuse_tile` on any subset of a tile's rows (every
    #: ``r``-th row of a band that stays in the CPU cache; ``pan`` rows then have a stride), which
    #: must give the same values as the whole tile
    per_pixel: ClassVar[bool] = False
    #: extra provenance (weights hash, ...)
    provenance: dict[str, str]

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)
        self.provenance = {}

    def fit(self, scene: SceneInfo) -> None:  # noqa: B027 - optional hook
        """Estimate scene-wide parameters once, before any tile is fused."""

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> Mapping[str, Any]:
        return {"method": self.name, **self.options, **self.provenance}
