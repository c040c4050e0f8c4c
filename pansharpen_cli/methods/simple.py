"""Per-pixel classical methods: EXP, Brovey, weighted Brovey (GDAL's default pansharpening)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import UsageError
from ..fastops import maximum_
from .base import Method, SceneInfo, TileInput, band_mix

_EPS = 1e-6


class Exp(Method):
    """EXP: the MS interpolated onto the PAN grid with the toolbox's 23-tap kernel; no PAN detail."""

    name = "exp"
    per_pixel = True
    description = "MS upsampled with the 23-tap interpolator (no PAN detail; the baseline)"

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        return tile.ms_up


class Brovey(Method):
    """Brovey transform: each band scaled by PAN / I, I = mean of the MS bands.

    As in the pansharpening toolbox, the PAN is first matched to I (mean and standard deviation,
    estimated once over the whole scene), so the output keeps the MS radiometry.
    """

    name = "brovey"
    per_pixel = True
    description = "Brovey transform: MS_b * PAN' / mean(MS), PAN matched to the intensity scene-wide"
    needs_scene_sample = True

    def fit(self, scene: SceneInfo) -> None:
        assert scene.pan_sample is not None and scene.ms_sample is not None
        intensity = scene.ms_sample.mean(axis=0)
        ok = np.isfinite(intensity) & np.isfinite(scene.pan_sample)
        p, i = scene.pan_sample[ok].astype(np.float64), intensity[ok].astype(np.float64)
        self.gain = float(i.std() / p.std()) if p.std() > 0 else 1.0
        self.offset = float(i.mean() - self.gain * p.mean())
        self.options.update(pan_gain=round(self.gain, 6), pan_offset=round(self.offset, 4))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        intensity = tile.ms_up.mean(axis=0)
        pan = tile.pan * np.float32(self.gain) + np.float32(self.offset)
        gain = pan / maximum_(intensity, _EPS)
        return tile.ms_up * gain[None]


class WeightedBrovey(Method):
    """GDAL's weighted Brovey: pseudo-PAN = sum_b w_b MS_b; out_b = MS_b * PAN / pseudo-PAN.

    Weights come from ``--weights`` or the sensor preset (spectral overlap with the PAN band);
    without either, equal weights 1/B. The MS is interpolated with Keys' cubic, as
    ``gdal_pansharpen`` does by default (``resampling="23tap"`` for the toolbox's interpolator).
    """

    name = "wbrovey"
    per_pixel = True
    description = "GDAL's weighted Brovey: MS_b * PAN / sum(w_b MS_b); --weights or sensor preset; cubic MS"
    resampling = "cubic"

    def __init__(self, weights: Sequence[float] | None = None, **options):
        super().__init__(**options)
        self.weights: np.ndarray | None = None if weights is None else np.asarray(weights, dtype=np.float32)

    def fit(self, scene: SceneInfo) -> None:
        if self.weights is None:
            w = np.asarray(scene.sensor.pan_weights[: scene.n_bands], dtype=np.float32)
            if len(w) != scene.n_bands or not np.any(w > 0):
                w = np.full(scene.n_bands, 1.0 / scene.n_bands, dtype=np.float32)
            self.weights = w
        elif len(self.weights) != scene.n_bands:
            raise UsageError(f"--weights has {len(self.weights)} values for {scene.n_bands} MS bands",
                             fix=f"give {scene.n_bands} comma-separated weights")
        self.options["weights"] = [round(float(x), 6) for x in self.weights]

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        assert self.weights is not None
        pseudo = band_mix(self.weights, tile.ms_up)
        gain = tile.pan / maximum_(pseudo, _EPS)
        return tile.ms_up * gain[None]


class Identity(Method):
    """Returns the PAN in every band: for testing the engine (must reproduce the PAN exactly)."""

    name = "identity-pan"
    per_pixel = True
    description = "testing aid: the PAN copied into every band"

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        return np.broadcast_to(tile.pan, tile.ms_up.shape).copy()
