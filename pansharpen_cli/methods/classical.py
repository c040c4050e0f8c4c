"""The classical suite of the MATLAB Pansharpening Toolbox, made tile-safe.

Component substitution (CS): GIHS, PCA, GS, GSA, BT-H, BDSD-PC. Multiresolution analysis (MRA):
MTF-GLP-FS, MTF-GLP-HPM, MTF-GLP-HPM-R, AWLP. The algorithms follow the conventions of the toolbox
of G. Vivone et al., "A new benchmark based on recent advances in multispectral pansharpening:
revisiting pansharpening with classical and emerging pansharpening methods", IEEE Geoscience and
Remote Sensing Magazine 9(1), 2021 (and, for GIHS and PCA, of its 2015 predecessor: G. Vivone et
al., "A critical comparison among pansharpening algorithms", IEEE TGRS 53(5), 2015); the code is
our own.

How the toolbox's whole-image algorithms become tile-safe:

- Every coefficient the toolbox estimates over the whole image (means and standard deviations for
  histogram matching, regressions, injection gains, haze, PCA eigenvectors, BDSD gains) is
  estimated once in :meth:`~Method.fit` from the engine's statistics crops (``SceneInfo.crops``:
  the whole canvas when it is small, else 16 crops spread over it), pooling their valid pixels.
  Reduced-resolution versions (GSA, BDSD-PC) are computed on each crop by filtering and
  decimating its PAN and MS-on-PAN consistently (decimation phase ``ratio // 2`` of the crop).
- A tile then only applies those shared coefficients, per pixel (CS methods: tiled output equals
  whole-image output bit for bit) or after a fixed low-pass of the tile's PAN (MRA methods), done
  by direct-space correlation with reflected borders, so that the result at pixels at least
  ``receptive_field`` from the tile border does not depend on the tile.
- The 41 x 41 MTF kernels are applied as a short sum of separable terms (their SVD truncated where
  the discarded part has an L1 norm below 1e-9, i.e. a change below 1e-9 of the data range; a
  single separable term would change the output by ~1e-3 DN and is not used).
- Deviation from the toolbox: the MTF-GLP methods compute the PAN low-pass as the MTF-filtered
  PAN without the toolbox's decimation and 23-tap re-interpolation, because a tile does not know
  where the MS sampling lattice lies on it (the phase of that decimation). On the WorldView-2
  reduced-resolution test this changes Q8 by less than 0.005.

All arithmetic is float64 in digital numbers; tiles return float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import RadiometryError, UsageError
from ..filters import decimate, imresize_bicubic, mtf_kernels
from ..sensors import GENERIC_MS_GNYQ
from .base import Method, SceneInfo, TileInput, band_mix

_EPS = float(np.finfo(np.float64).eps)  # MATLAB's eps, added to divisors as the toolbox does
#: the Gaussian of ``LPfilterGauss.m`` (gain 0.3 at the MS Nyquist frequency), used for PAN matching
_LPGAUSS_GNYQ = 0.3
#: residual (L1 norm) allowed when a 2-D kernel is written as a sum of separable terms
_SEPARABLE_TOL = 1e-9
#: half-width of the toolbox's 41-tap MTF kernels
_MTF_HALF = 20
#: Starck-Murtagh B3-spline filter of the toolbox's undecimated wavelet (``ndwt2_working``)
_B3 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


# --------------------------------------------------------------------------------------------------
# filtering


class SeparableKernel:
    """A 2-D correlation kernel applied as a sum of separable (column x row) terms.

    The terms are the SVD of the kernel, truncated where the L1 norm of what is left drops below
    ``tol``; with the default the result agrees with direct 2-D correlation to ~1e-9 of the data
    range (the toolbox's 41 x 41 MTF kernels need 6 to 9 terms for ratio 4, 15 for ratio 2, i.e.
    2 x 41 taps per term instead of 1681). When the terms would cost as much as the 2-D kernel, it
    is applied directly. Borders are reflected (``...2 1 0 | 0 1 2...``), the convention of the
    engine's context.
    """

    def __init__(self, kernel: np.ndarray, tol: float = _SEPARABLE_TOL):
        k = np.asarray(kernel, dtype=np.float64)
        if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise ValueError(f"kernel must be 2-D with odd sides, got shape {k.shape}")
        u, s, vt = np.linalg.svd(k)
        rank = len(s)
        for r in range(1, len(s) + 1):
            if np.abs(k - (u[:, :r] * s[:r]) @ vt[:r]).sum() <= tol:
                rank = r
                break
        self.columns = [u[:, i] * s[i] for i in range(rank)]
        self.rows = [vt[i].copy() for i in range(rank)]
        self.direct = rank * (k.shape[0] + k.shape[1]) >= k.size
        self.kernel = k
        self.half = max(k.shape) // 2
        self.total = float(k.sum())

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Correlate a 2-D image; same size out, float64."""
        from scipy import ndimage  # imported on use: SciPy costs ~0.3 s of start-up

        a = np.asarray(img, dtype=np.float64)
        if self.direct:
            return ndimage.correlate(a, self.kernel, mode="reflect")
        out = np.zeros_like(a)
        for col, row in zip(self.columns, self.rows, strict=True):
            t = ndimage.correlate1d(a, col, axis=0, mode="reflect")
            out += ndimage.correlate1d(t, row, axis=1, mode="reflect")
        return out


def _binomial_lowpass_taps(ratio: int) -> np.ndarray:
    """1-D taps of the toolbox's undecimated-wavelet approximation (``ndwt2_working``, details zeroed).

    ``ceil(log2(ratio))`` levels, each filtering with the B3 spline at analysis and at synthesis
    (the same taps at every level, no holes): the B3 spline convolved ``2 * levels`` times.
    """
    levels = max(1, math.ceil(math.log2(max(ratio, 2))))
    taps = _B3
    for _ in range(2 * levels - 1):
        taps = np.convolve(taps, _B3)
    return taps


def _sep_lowpass(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    a = ndimage.correlate1d(np.asarray(img, dtype=np.float64), taps, axis=0, mode="reflect")
    return ndimage.correlate1d(a, taps, axis=1, mode="reflect")


def _mtf_filter(gain: float, ratio: float) -> SeparableKernel:
    return SeparableKernel(mtf_kernels([gain], ratio)[0])


def _band_gnyq(scene: SceneInfo) -> list[float]:
    """The MS bands' MTF gains at Nyquist (sensor preset; generic value when it does not fit)."""
    g = [float(v) for v in scene.sensor.gnyq[:scene.n_bands]]
    return g if len(g) == scene.n_bands else [GENERIC_MS_GNYQ] * scene.n_bands


def _int_ratio(ratio: float) -> int:
    r = int(round(ratio))
    if r < 2:
        raise UsageError(f"resolution ratio {ratio:g} is too small for this method",
                         fix="use a PAN/MS pair with ratio >= 2")
    return r


# --------------------------------------------------------------------------------------------------
# scene statistics from the crops


_Crop = tuple[np.ndarray, np.ndarray, np.ndarray]  # pan (H, W), ms (B, H, W) float64, valid (H, W)


def _crops(scene: SceneInfo, method: str) -> list[_Crop]:
    out = []
    for c in scene.crops:
        v = np.asarray(c.valid, dtype=bool)
        if v.any():
            out.append((np.asarray(c.pan, dtype=np.float64), np.asarray(c.ms_up, dtype=np.float64), v))
    if not out:
        raise RadiometryError(f"{method}: no valid pixel in the scene statistics crops",
                              fix="check the nodata values and that PAN and MS overlap")
    return out


def _pool(crops: Sequence[_Crop], fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
          mask: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``fn(pan, ms)`` -> (K, H, W) per crop, valid pixels of all crops concatenated: (K, N)."""
    parts = []
    for pan, ms, valid in crops:
        a = fn(pan, ms)
        a = a[None] if a.ndim == 2 else a
        v = valid if mask is None else mask(valid)
        parts.append(a[:, v])
    return np.concatenate(parts, axis=1)


def _eroded(half: int) -> Callable[[np.ndarray], np.ndarray]:
    """Valid pixels whose ``(2 half + 1)^2`` neighbourhood is valid (outside the crop counts as valid)."""
    def f(valid: np.ndarray) -> np.ndarray:
        if valid.all():
            return valid
        from scipy import ndimage

        return ndimage.binary_erosion(valid, structure=np.ones((2 * half + 1, 2 * half + 1), bool), border_value=1)
    return f


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else 0.0


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(num / den) else 1.0


def _cov(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x - x.mean()) * (y - y.mean()))) * x.size / max(x.size - 1, 1)


def _round(a: Sequence[float] | np.ndarray | float, nd: int = 6) -> list | float:
    if np.ndim(a) == 0:
        return round(float(a), nd)
    return [_round(v, nd) for v in np.asarray(a)]


class _Classical(Method):
    """Shared plumbing: scene crops, float64 in, float32 out."""

    needs_scene_sample = True

    def _fit_crops(self, scene: SceneInfo) -> list[_Crop]:
        self.n_bands = scene.n_bands
        return _crops(scene, self.name)

    @staticmethod
    def _inputs(tile: TileInput) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(tile.pan, dtype=np.float64), np.asarray(tile.ms_up, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# component substitution


class GIHS(_Classical):
    """Generalised IHS (fast IHS) of Tu et al., "A new look at IHS-like image fusion methods",
    Information Fusion 2(3), 2001; toolbox ``IHS.m``.

    I = mean of the MS bands; the PAN is matched to I (mean and standard deviation, scene-wide);
    every band receives the same detail PAN' - I.
    """

    name = "gihs"
    per_pixel = True
    description = "Generalised IHS (Tu 2001): MS + (PAN' - mean(MS)), PAN matched to the intensity scene-wide"

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        p, i = _pool(crops, lambda pan, ms: np.stack([pan, ms.mean(axis=0)]))
        self.gain = _ratio(_std(i), _std(p))
        self.offset = float(i.mean() - self.gain * p.mean())
        self.options.update(pan_gain=_round(self.gain), pan_offset=_round(self.offset, 4))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        detail = pan * self.gain + self.offset - ms.mean(axis=0)
        return (ms + detail[None]).astype(np.float32)


class PCA(_Classical):
    """Principal component substitution: Chavez and Kwarteng, "Extracting spectral contrast in
    Landsat Thematic Mapper image data using selective principal component analysis", PE&RS 55(3),
    1989; toolbox ``PCA.m``.

    The first principal component of the MS (eigenvectors of the scene covariance, MATLAB's sign
    convention: largest component positive) is replaced by the PAN matched to it.
    """

    name = "pca"
    per_pixel = True
    description = "PCA substitution (Chavez 1989): 1st principal component replaced by the matched PAN"

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        data = _pool(crops, lambda pan, ms: np.concatenate([pan[None], ms]))
        p, m = data[0], data[1:]
        self.mean = m.mean(axis=1)
        cov = np.atleast_2d(np.cov(m))
        w, v = np.linalg.eigh(cov)
        v1 = v[:, int(np.argmax(w))]
        v1 = v1 * (1.0 if v1[int(np.argmax(np.abs(v1)))] >= 0 else -1.0)
        self.v1 = v1
        pc1 = v1 @ (m - self.mean[:, None])
        self.pan_mean = float(p.mean())
        self.pan_gain = _ratio(_std(pc1), _std(p))
        self.pc1_mean = float(pc1.mean())
        self.options.update(pc1=_round(v1), pan_gain=_round(self.pan_gain))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        pc1 = band_mix(self.v1, ms - self.mean[:, None, None])
        pan_m = (pan - self.pan_mean) * self.pan_gain + self.pc1_mean
        return (ms + self.v1[:, None, None] * (pan_m - pc1)[None]).astype(np.float32)


class GS(_Classical):
    """Gram-Schmidt spectral sharpening, mode 1 (I = mean of the MS bands): Laben and Brower, US
    Patent 6,011,875, 2000; toolbox ``GS.m``.

    PAN matched to I; band gains g_b = cov(I, MS_b) / var(I); out_b = MS_b + g_b (PAN' - I).
    """

    name = "gs"
    per_pixel = True
    description = "Gram-Schmidt mode 1 (Laben 2000): MS + g_b (PAN' - I), I = mean(MS), gains scene-wide"

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        data = _pool(crops, lambda pan, ms: np.concatenate([pan[None], ms]))
        p, m = data[0], data[1:]
        i = m.mean(axis=0)
        self.i_mean = float(i.mean())
        self.pan_mean = float(p.mean())
        self.pan_gain = _ratio(_std(i), _std(p))
        var_i = _cov(i, i)
        self.g = np.array([_ratio(_cov(i, b), var_i) for b in m])
        self.options.update(gains=_round(self.g), pan_gain=_round(self.pan_gain))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        i0 = ms.mean(axis=0) - self.i_mean
        detail = (pan - self.pan_mean) * self.pan_gain - i0
        return (ms + self.g[:, None, None] * detail[None]).astype(np.float32)


class GSA(_Classical):
    """Gram-Schmidt adaptive: Aiazzi, Baronti and Selva, "Improving component substitution
    pansharpening through multivariate regression of MS+Pan data", IEEE TGRS 45(10), 2007;
    toolbox ``GSA.m``.

    I = sum_k w_k MS_k, with weights from the regression (with constant) of the low-passed and
    decimated PAN (undecimated-wavelet approximation, ``LPfilterPlusDec.m``) on the MS at its own
    resolution; gains g_b = cov(I, MS_b) / var(I); out_b = MS_b + g_b ((PAN - mean) - (I - mean)).
    """

    name = "gsa"
    per_pixel = True
    description = "Gram-Schmidt adaptive (Aiazzi 2007): intensity weights by regression of the low-pass PAN on MS"

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        r = _int_ratio(scene.ratio)
        taps = _binomial_lowpass_taps(r)
        data = _pool(crops, lambda pan, ms: np.concatenate([pan[None], ms]))
        p, m = data[0], data[1:]
        self.pan_mean = float(p.mean())
        self.ms_mean = m.mean(axis=1)
        # reduced resolution: PAN low-passed and decimated, MS-on-PAN decimated (its LR samples)
        erode = _eroded(len(taps) // 2)
        lr = []
        for pan, ms, valid in crops:
            p_lr = decimate(_sep_lowpass(pan - self.pan_mean, taps), r)
            m_lr = decimate(ms, r)
            v_lr = decimate(erode(valid), r)
            lr.append(np.concatenate([p_lr[None], m_lr])[:, v_lr])
        lr_data = np.concatenate(lr, axis=1)
        if lr_data.shape[1] <= self.n_bands + 1:
            raise RadiometryError("gsa: too few valid pixels to estimate the intensity weights",
                                  fix="use a larger scene")
        m_lr = lr_data[1:]
        design = np.concatenate([(m_lr - m_lr.mean(axis=1, keepdims=True)).T, np.ones((m_lr.shape[1], 1))], axis=1)
        alpha = np.linalg.lstsq(design, lr_data[0], rcond=None)[0]
        self.w = alpha[:-1]
        i0 = self.w @ (m - self.ms_mean[:, None])
        var_i = _cov(i0, i0)
        self.g = np.array([_ratio(_cov(i0, b), var_i) for b in m])
        self.options.update(weights=_round(self.w), gains=_round(self.g))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        i0 = band_mix(self.w, ms - self.ms_mean[:, None, None])
        detail = pan - self.pan_mean - i0
        return (ms + self.g[:, None, None] * detail[None]).astype(np.float32)


class BTH(_Classical):
    """Brovey transform with haze correction: Lolli, Alparone, Garzelli and Vivone, "Haze correction
    for contrast-based multispectral pansharpening", IEEE GRSL 14(12), 2017; toolbox
    ``BroveyRegHazeMin.m``.

    Haze per band: its minimum (4-band B, G, R, NIR: 0.95, 0.45, 0.40, 0.05 times its 1st
    percentile); I = sum_k w_k (MS_k - haze_k), weights by regression of the Gaussian-low-passed
    PAN on the MS; PAN matched to I through its low-pass; out = (MS - haze)+ PAN' / I + haze.
    """

    name = "bt-h"
    per_pixel = True
    description = "Brovey with haze correction (Lolli 2017): (MS - haze) PAN'/I + haze, I by regression"

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        lp = _mtf_filter(_LPGAUSS_GNYQ, scene.ratio)
        data = _pool(crops, lambda pan, ms: np.concatenate([lp(pan)[None], ms]))
        p_lr, m = data[0], data[1:]
        nb = m.shape[0]
        if nb == 4:
            # MATLAB prctile = midpoint percentiles ("hazen")
            self.haze = np.array([0.95, 0.45, 0.40, 0.05]) * np.percentile(m, 1, axis=1, method="hazen")
        else:
            self.haze = m.min(axis=1)
        self.w = np.linalg.lstsq(m.T, p_lr, rcond=None)[0]
        i = self.w @ (m - self.haze[:, None])
        self.pan_mean = float(p_lr.mean())
        self.pan_gain = _ratio(_std(i), _std(p_lr))
        self.i_mean = float(i.mean())
        self.options.update(haze=_round(self.haze, 3), weights=_round(self.w), pan_gain=_round(self.pan_gain))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        h = self.haze[:, None, None]
        i = band_mix(self.w, ms - h)
        pan_m = (pan - self.pan_mean) * self.pan_gain + self.i_mean
        return (np.maximum(ms - h, 0.0) * (pan_m / (i + _EPS))[None] + h).astype(np.float32)


class BDSDPC(_Classical):
    """Band-dependent spatial detail with physical constraints: Vivone, "Robust band-dependent
    spatial-detail approaches for panchromatic sharpening", IEEE TGRS 57(9), 2019; toolbox
    ``BDSD_PC.m``.

    At reduced resolution (MS-on-PAN reduced by bicubic 1/ratio, its MTF-filtered version, the
    MTF-filtered decimated PAN) per band a least-squares fit of the missing detail on [PAN, MS]
    with the PAN coefficient >= 0 and the MS ones <= 0; out_b = MS_b + g_b PAN + sum_k c_bk MS_k.
    """

    name = "bdsd-pc"
    per_pixel = True
    description = "BDSD with physical constraints (Vivone 2019): MS_b + g_b PAN + sum_k c_bk MS_k, fitted at RR"

    def fit(self, scene: SceneInfo) -> None:
        from scipy.optimize import lsq_linear  # imported here: 0.2 s at start-up otherwise

        crops = self._fit_crops(scene)
        r = _int_ratio(scene.ratio)
        nb = self.n_bands
        ms_filters = [_mtf_filter(g, scene.ratio) for g in _band_gnyq(scene)]
        pan_filter = _mtf_filter(scene.sensor.pan_gnyq, scene.ratio)
        # an LR pixel counts if its footprint on the PAN grid (bicubic reduction, then the MTF kernel
        # at the LR scale) is valid
        erode = _eroded((_MTF_HALF + 2) * r)
        rows_h, rows_t = [], []
        for pan, ms, valid in crops:
            gt = imresize_bicubic(ms, 1.0 / r)
            ms_lr = np.stack([f(b) for f, b in zip(ms_filters, gt, strict=True)])
            pan_lr = decimate(pan_filter(pan), r)
            h, w = (min(gt.shape[1], pan_lr.shape[0]), min(gt.shape[2], pan_lr.shape[1]))
            v = decimate(erode(valid), r)[:h, :w]
            design = np.concatenate([pan_lr[None, :h, :w], ms_lr[:, :h, :w]])
            rows_h.append(design[:, v])
            rows_t.append((gt - ms_lr)[:, :h, :w][:, v])
        hmat = np.concatenate(rows_h, axis=1).T
        target = np.concatenate(rows_t, axis=1)
        if hmat.shape[0] <= nb + 1:
            raise RadiometryError("bdsd-pc: too few valid pixels to estimate the gains", fix="use a larger scene")
        lower = np.full(nb + 1, -np.inf)
        upper = np.full(nb + 1, np.inf)
        lower[0] = 0.0
        upper[1:] = 0.0
        # BVLS can return an active coefficient a rounding error (~1e-17) outside its bound: clip, so
        # the recorded gains honour the physical constraints exactly
        self.gamma = np.stack([np.clip(lsq_linear(hmat, target[b], bounds=(lower, upper), method="bvls").x,
                                       lower, upper) for b in range(nb)], axis=1)  # (B + 1, B)
        self.options.update(pan_gains=_round(self.gamma[0]), ms_gains=_round(self.gamma[1:]))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        detail = band_mix(self.gamma[1:].T, ms) + self.gamma[0][:, None, None] * pan[None]
        return (ms + detail).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# multiresolution analysis


class _MTFGLP(_Classical):
    """MTF-GLP family: the PAN low-pass is the PAN filtered with each band's MTF-matched kernel."""

    receptive_field = _MTF_HALF

    def _kernels(self, scene: SceneInfo) -> None:
        self.gnyq = _band_gnyq(scene)
        filters: dict[float, SeparableKernel] = {}
        for g in self.gnyq:
            if g not in filters:
                filters[g] = _mtf_filter(g, scene.ratio)
        self.filters = filters

    def _lowpass(self, pan: np.ndarray) -> dict[float, np.ndarray]:
        """The PAN filtered once per distinct kernel."""
        return {g: f(pan) for g, f in self.filters.items()}


class MTFGLPFS(_MTFGLP):
    """MTF-GLP with full-scale regression-based injection: Vivone, Restaino and Chanussot,
    "Full scale regression-based injection coefficients for panchromatic sharpening", IEEE TIP
    27(7), 2018; toolbox ``MTF_GLP_FS.m``.

    out_b = MS_b + g_b (PAN - PAN_LP_b), g_b = cov(MS_b, PAN) / cov(PAN_LP_b, PAN) (full scale).
    """

    name = "mtf-glp-fs"
    description = "MTF-GLP with full-scale regression injection (Vivone 2018): MS + g_b (PAN - PAN_LP_b)"

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        self._kernels(scene)
        keys = list(self.filters)
        erode = _eroded(_MTF_HALF)

        def stack(pan: np.ndarray, ms: np.ndarray) -> np.ndarray:
            lp = self._lowpass(pan)
            return np.concatenate([pan[None], np.stack([lp[k] for k in keys]), ms])

        data = _pool(crops, stack, erode)
        p, lps, m = data[0], dict(zip(keys, data[1:1 + len(keys)], strict=True)), data[1 + len(keys):]
        self.g = np.array([_ratio(_cov(b, p), _cov(lps[g], p)) for b, g in zip(m, self.gnyq, strict=True)])
        self.options.update(gains=_round(self.g))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        lp = self._lowpass(pan)
        out = np.empty(ms.shape, dtype=np.float32)
        for b, g in enumerate(self.gnyq):
            out[b] = ms[b] + self.g[b] * (pan - lp[g])
        return out


class MTFGLPHPM(_MTFGLP):
    """MTF-GLP with high-pass modulation: Aiazzi, Alparone, Baronti, Garzelli and Selva, "An
    MTF-based spectral distortion minimizing model for pan-sharpening of very high resolution
    multispectral images of urban areas", URBAN 2003, and "MTF-tailored multiscale fusion of
    high-resolution MS and Pan imagery", PE&RS 72(5), 2006; toolbox ``MTF_GLP_HPM.m``.

    PAN_b = PAN matched to MS_b (mean, and standard deviation through the PAN's Gaussian
    low-pass); out_b = MS_b PAN_b / MTF_b(PAN_b).
    """

    name = "mtf-glp-hpm"
    description = "MTF-GLP with high-pass modulation (Aiazzi 2003/2006): MS_b PAN_b / MTF_b(PAN_b)"

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        self._kernels(scene)
        gauss = _mtf_filter(_LPGAUSS_GNYQ, scene.ratio)
        data = _pool(crops, lambda pan, ms: np.concatenate([pan[None], gauss(pan)[None], ms]))
        p, p_lp, m = data[0], data[1], data[2:]
        self.pan_mean = float(p.mean())
        self.ms_mean = m.mean(axis=1)
        lp_std = _std(p_lp)
        self.gain = np.array([_ratio(_std(b), lp_std) for b in m])
        self.options.update(pan_gains=_round(self.gain))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        lp = self._lowpass(pan)
        out = np.empty(ms.shape, dtype=np.float32)
        for b, g in enumerate(self.gnyq):
            a, c = self.gain[b], self.ms_mean[b] - self.gain[b] * self.pan_mean
            pan_b = a * pan + c
            # MTF_b(a PAN + c) = a MTF_b(PAN) + c sum(h_b) (reflected borders keep constants)
            lp_b = a * lp[g] + c * self.filters[g].total
            out[b] = ms[b] * pan_b / (lp_b + _EPS)
        return out


class MTFGLPHPMR(_MTFGLP):
    """MTF-GLP-HPM with regression-based PAN equalisation (global version): Vivone, Restaino and
    Chanussot, "A regression-based high-pass modulation pansharpening approach", IEEE TGRS 56(2),
    2018; toolbox ``MTF_GLP_HPM_R.m``.

    g_b = cov(MS_b, PAN_LP_b) / var(PAN_LP_b), c_b = mean(MS_b) / g_b - mean(PAN);
    out_b = MS_b (PAN + c_b) / (PAN_LP_b + c_b). A band with g_b <= 0 gets no detail.
    """

    name = "mtf-glp-hpm-r"
    description = "MTF-GLP-HPM with regression-based PAN equalisation (Vivone 2018): MS (PAN + c)/(PAN_LP + c)"

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        self._kernels(scene)
        keys = list(self.filters)

        def stack(pan: np.ndarray, ms: np.ndarray) -> np.ndarray:
            lp = self._lowpass(pan)
            return np.concatenate([pan[None], np.stack([lp[k] for k in keys]), ms])

        data = _pool(crops, stack, _eroded(_MTF_HALF))
        p, lps, m = data[0], dict(zip(keys, data[1:1 + len(keys)], strict=True)), data[1 + len(keys):]
        pan_mean = float(p.mean())
        self.active = np.zeros(len(m), dtype=bool)
        self.c = np.zeros(len(m))
        for b, (band, g) in enumerate(zip(m, self.gnyq, strict=True)):
            lp = lps[g]
            slope = _cov(band, lp) / _cov(lp, lp) if _cov(lp, lp) > 0 else 0.0
            if slope > 0 and math.isfinite(slope):
                self.active[b] = True
                self.c[b] = float(band.mean()) / slope - pan_mean
        self.options.update(offsets=_round(self.c, 4))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        lp = self._lowpass(pan)
        out = np.empty(ms.shape, dtype=np.float32)
        for b, g in enumerate(self.gnyq):
            if self.active[b]:
                out[b] = ms[b] * (pan + self.c[b]) / (lp[g] + self.c[b] + _EPS)
            else:
                out[b] = ms[b]
        return out


class AWLP(_Classical):
    """Additive wavelet luminance proportional: Otazu, Gonzalez-Audicana, Fors and Nunez,
    "Introduction of sensor spectral response into image fusion methods. Application to
    wavelet-based methods", IEEE TGRS 43(10), 2005; toolbox ``AWLP.m`` (2021 version).

    PAN_b = PAN matched to MS_b (standard deviation through its bicubic 1/ratio-and-back
    version); detail = PAN_b minus its undecimated-wavelet approximation (B3 spline,
    ceil(log2 ratio) levels); out_b = MS_b + detail_b MS_b / mean_k(MS_k).
    """

    name = "awlp"
    description = "Additive wavelet luminance proportional (Otazu 2005): MS + (MS/mean(MS)) PAN_b details"
    #: half-width of the approximation filter: 8 for ratio 4, 12 for ratio 8 (the largest supported)
    receptive_field = 12

    def fit(self, scene: SceneInfo) -> None:
        crops = self._fit_crops(scene)
        r = _int_ratio(scene.ratio)
        self.taps = _binomial_lowpass_taps(r)
        if len(self.taps) // 2 > self.receptive_field:
            raise UsageError(f"awlp supports resolution ratios up to 8 (got {scene.ratio:g})")

        def stack(pan: np.ndarray, ms: np.ndarray) -> np.ndarray:
            h, w = pan.shape
            rs = imresize_bicubic(imresize_bicubic(pan, 1.0 / r), r)[:h, :w]
            return np.concatenate([rs[None], ms])

        data = _pool(crops, stack)
        p_rs, m = data[0], data[1:]
        rs_std = _std(p_rs)
        self.gain = np.array([_ratio(_std(b), rs_std) for b in m])
        self.options.update(pan_gains=_round(self.gain))

    def fuse_tile(self, tile: TileInput) -> np.ndarray:
        pan, ms = self._inputs(tile)
        # detail of the matched PAN a PAN + c: a (PAN - LP(PAN)), the approximation having unit gain
        detail = pan - _sep_lowpass(pan, self.taps)
        ratio = ms / (ms.mean(axis=0) + _EPS)[None]
        return (ms + self.gain[:, None, None] * detail[None] * ratio).astype(np.float32)


CLASSICAL: tuple[type[Method], ...] = (GIHS, PCA, GS, GSA, BTH, BDSDPC, MTFGLPFS, MTFGLPHPM, MTFGLPHPMR, AWLP)
