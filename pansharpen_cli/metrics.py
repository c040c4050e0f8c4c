"""Quality metrics of pansharpening: reduced-resolution (with reference) and full-resolution (no reference).

numpy re-implementations of the conventions of the MATLAB Pansharpening Toolbox (Vivone et al.,
IEEE GRSM 2021) and of the full-resolution protocol of Scarpa & Ciotola ("Full-resolution quality
assessment for pansharpening", Remote Sensing 14(8):1808, 2022).

Conventions (all functions):

- Images are band-first ``(B, H, W)`` float arrays in digital numbers (a 2-D ``(H, W)`` array is one
  band). Everything is computed in float64; results are Python floats.
- ``ref``/``ms`` first, ``fused`` second, as the toolbox's ``indexes_evaluation``.
- Block-based indexes use the toolbox's tilings: ``q_avg`` slides a ``block x block`` window over all
  'valid' positions; ``q2n`` tiles ``block x block`` windows every ``shift`` pixels after symmetric
  padding to whole blocks; the QNR family (``d_s``, ``d_lambda``) uses non-overlapping blocks
  (MATLAB ``blockproc``: edge blocks may be partial).
- Interpolated MS ("ms_exp") is always :func:`pansharpen_cli.filters.interp23tap` of the
  low-resolution MS, and the reprojection grid phase is :func:`pansharpen_cli.filters.decimate`'s
  (``ratio//2``), i.e. co-registered with it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from .filters import decimate, imresize_bicubic, interp23tap, mtf_filter, mtf_kernels

__all__ = [
    "sam", "ergas", "scc", "q_avg", "q2n", "psnr",
    "d_lambda_k", "d_s", "d_lambda", "qnr", "hqnr", "d_rho",
    "reproject", "r_q2n", "r_sam", "r_ergas", "fsds",
    "reduced_resolution_report", "full_resolution_report",
]

_EPS = float(np.finfo(np.float64).eps)


# --------------------------------------------------------------------------------------------------
# helpers


def _bands(x: np.ndarray, name: str = "image") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (B, H, W) or (H, W), got shape {np.shape(x)}")
    return a


def _pair(ref: np.ndarray, fused: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = _bands(ref, "ref")
    f = _bands(fused, "fused")
    if r.shape != f.shape:
        raise ValueError(f"ref {r.shape} and fused {f.shape} must have the same shape")
    return r, f


def _gains(gnyq: Sequence[float] | float, n: int) -> list[float]:
    g = [float(gnyq)] if np.isscalar(gnyq) else [float(v) for v in gnyq]  # type: ignore[arg-type]
    if len(g) == 1:
        g = g * n
    if len(g) != n:
        raise ValueError(f"{len(g)} MTF gains for {n} bands")
    return g


def _box_valid(a: np.ndarray, k: int) -> np.ndarray:
    """Sums over all ``k x k`` windows fully inside the last two axes ('valid'), separably."""
    c = np.cumsum(a, axis=-2)
    c = np.concatenate([np.zeros_like(c[..., :1, :]), c], axis=-2)
    r = c[..., k:, :] - c[..., :-k, :]
    c = np.cumsum(r, axis=-1)
    c = np.concatenate([np.zeros_like(c[..., :1]), c], axis=-1)
    return c[..., k:] - c[..., :-k]


def _block_uiqi(x: np.ndarray, y: np.ndarray, s: int) -> np.ndarray:
    """UIQI of ``x`` vs ``y`` on non-overlapping ``s x s`` blocks (``blockproc``; edge blocks partial).

    ``x``, ``y``: ``(..., H, W)``. Returns ``(..., ceil(H/s), ceil(W/s))``. Two-pass (block means
    removed before the second moments) for accuracy. Q = 4 cov mx my / ((vx + vy)(mx^2 + my^2)).
    """
    h, w = x.shape[-2:]
    starts_r = np.arange(0, h, s)
    starts_c = np.arange(0, w, s)
    cnt = np.outer(np.diff(np.append(starts_r, h)), np.diff(np.append(starts_c, w))).astype(np.float64)

    def bsum(a: np.ndarray) -> np.ndarray:
        return np.add.reduceat(np.add.reduceat(a, starts_r, axis=-2), starts_c, axis=-1)

    mx = bsum(x) / cnt
    my = bsum(y) / cnt
    rid = np.arange(h) // s
    cid = np.arange(w) // s
    xc = x - mx[..., rid[:, None], cid[None, :]]
    yc = y - my[..., rid[:, None], cid[None, :]]
    sxy = bsum(xc * yc)
    sxx = bsum(xc * xc)
    syy = bsum(yc * yc)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 4.0 * sxy * mx * my / (sxx + syy) / (mx * mx + my * my)


def _uint16_cast(a: np.ndarray) -> np.ndarray:
    """MATLAB ``uint16()``: round half away from zero, saturate to [0, 65535], NaN -> 0."""
    a = np.nan_to_num(a, nan=0.0, posinf=65535.0, neginf=0.0)
    return np.clip(np.sign(a) * np.floor(np.abs(a) + 0.5), 0.0, 65535.0)


def _conj(v: np.ndarray) -> np.ndarray:
    """Hypercomplex conjugate along the leading (component) axis."""
    out = -v
    out[0] = v[0]
    return out


def _onion_mult(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cayley-Dickson product of hypercomplex numbers stored along the leading axis.

    Same recursion as the toolbox's ``onion_mult``/``onion_mult2D``: for ``x = (a, b)``,
    ``y = (c, d)`` (halves, ``~`` = conjugate), ``x*y = (a c - ~d b, ~a ~d + c ~b)``; vectorised over
    all trailing axes. The number of components must be a power of two.
    """
    n = x.shape[0]
    if n == 1:
        return x * y
    half = n // 2
    a, b = x[:half], _conj(x[half:])
    c, d = y[:half], _conj(y[half:])
    if n == 2:
        return np.concatenate([a * c - d * b, a * d + c * b])
    r1 = _onion_mult(a, c)
    r2 = _onion_mult(d, _conj(b))
    r3 = _onion_mult(_conj(a), d)
    r4 = _onion_mult(c, b)
    return np.concatenate([r1 - r2, r3 + r4])


# --------------------------------------------------------------------------------------------------
# reduced resolution (with reference)


def sam(ref: np.ndarray, fused: np.ndarray) -> float:
    """Spectral Angle Mapper in degrees: mean over pixels of the angle between spectra.

    Pixels where either spectrum has zero norm are skipped (toolbox ``SAM.m``); NaN if none is left.
    """
    r, f = _pair(ref, fused)
    dot = np.einsum("bij,bij->ij", r, f)
    nrm = np.sqrt(np.einsum("bij,bij->ij", r, r) * np.einsum("bij,bij->ij", f, f))
    ok = nrm != 0
    if not ok.any():
        return float("nan")
    ang = np.arccos(np.clip(dot[ok] / nrm[ok], -1.0, 1.0))
    return float(np.degrees(ang.mean()))


def ergas(ref: np.ndarray, fused: np.ndarray, ratio: float) -> float:
    """ERGAS = 100/ratio * sqrt(mean_b(MSE_b / mean(ref_b)^2)) (toolbox ``ERGAS.m``)."""
    r, f = _pair(ref, fused)
    mse = np.mean((r - f) ** 2, axis=(1, 2))
    mu = np.mean(r, axis=(1, 2))
    return float(100.0 / ratio * np.sqrt(np.mean(mse / mu**2)))


def _sobel_magnitude(a: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude after dropping a 1-pixel border, zero-padded filtering (toolbox ``SCC.m``)."""
    c = a[:, 1:-1, 1:-1]
    p = np.pad(c, ((0, 0), (1, 1), (1, 1)))
    # correlation with [1 2 1; 0 0 0; -1 -2 -1] and its transpose
    rows = p[:, :-2, :] - p[:, 2:, :]          # top - bottom
    gy = rows[:, :, :-2] + 2.0 * rows[:, :, 1:-1] + rows[:, :, 2:]
    cols = p[:, :, :-2] - p[:, :, 2:]          # left - right
    gx = cols[:, :-2, :] + 2.0 * cols[:, 1:-1, :] + cols[:, 2:, :]
    return np.sqrt(gx * gx + gy * gy)


def scc(ref: np.ndarray, fused: np.ndarray) -> float:
    """Spatial correlation coefficient (toolbox ``SCC.m``).

    Sobel gradient magnitude of each band after dropping a 1-pixel border (the cropped band is
    filtered with zero padding, as ``imfilter``'s default), then one correlation over all pixels
    and bands without mean removal: sum(Gr*Gf) / sqrt(sum(Gr^2) sum(Gf^2)).
    """
    r, f = _pair(ref, fused)
    gr = _sobel_magnitude(r)
    gf = _sobel_magnitude(f)
    return float(np.sum(gr * gf) / math.sqrt(float(np.sum(gr * gr))) / math.sqrt(float(np.sum(gf * gf))))


def _uiqi_map_sliding(x: np.ndarray, y: np.ndarray, block: int) -> np.ndarray:
    """Wang-Bovik ``img_qi`` quality map on all 'valid' ``block x block`` windows, per band."""
    n = float(block * block)
    sx = _box_valid(x, block)
    sy = _box_valid(y, block)
    sxx = _box_valid(x * x, block)
    syy = _box_valid(y * y, block)
    sxy = _box_valid(x * y, block)
    sxsy = sx * sy
    s2 = sx * sx + sy * sy
    num = 4.0 * (n * sxy - sxsy) * sxsy
    den1 = n * (sxx + syy) - s2
    den = den1 * s2
    q = np.ones_like(den)
    idx = (den1 == 0) & (s2 != 0)
    q[idx] = 2.0 * sxsy[idx] / s2[idx]
    idx = den != 0
    q[idx] = num[idx] / den[idx]
    return q


def q_avg(ref: np.ndarray, fused: np.ndarray, block: int = 32) -> float:
    """Average of the per-band UIQI (Wang & Bovik), each on ``block x block`` sliding windows ('valid').

    Toolbox ``Q.m``/``img_qi``, including its special cases (flat windows give 1, or
    2 mx my / (mx^2 + my^2) when only the variances vanish).
    """
    r, f = _pair(ref, fused)
    if min(r.shape[1:]) < block:
        raise ValueError(f"image {r.shape[1:]} smaller than the {block}x{block} window")
    return float(np.mean(_uiqi_map_sliding(r, f, block).mean(axis=(1, 2))))


def q2n(ref: np.ndarray, fused: np.ndarray, block: int = 32, shift: int = 32,
        uint16_cast: bool = False) -> float:
    """Q2^n: hypercomplex (Cayley-Dickson) UIQI of Garzelli & Nencini (toolbox ``q2n.m``).

    The images are padded symmetrically at the bottom/right to whole blocks (``(steps-1)*shift +
    block`` per axis, ``steps = ceil(size/shift)``), optionally cast to uint16 as the MATLAB code
    does (``uint16_cast=True``: round half away from zero, clip to [0, 65535]), the bands are
    zero-padded to a power of two, and each ``block x block`` window (every ``shift`` pixels) gets
    the modulus of its hypercomplex quality (each band of ``ref`` normalised by its block mean and
    std, ``fused`` by the same); the result is the mean over windows.
    """
    r, f = _pair(ref, fused)
    nb, h, w = r.shape
    sx = max(1, math.ceil(h / shift))
    sy = max(1, math.ceil(w / shift))
    e1 = (sx - 1) * shift + block - h
    e2 = (sy - 1) * shift + block - w
    if e1 > 0 or e2 > 0:
        pads = ((0, 0), (0, max(e1, 0)), (0, max(e2, 0)))
        r = np.pad(r, pads, mode="symmetric")
        f = np.pad(f, pads, mode="symmetric")
    if uint16_cast:
        if float(np.nanmax(np.abs(r))) <= 1.0:
            warnings.warn("q2n: uint16_cast on data within [-1, 1] rounds it to 0/1; pass uint16_cast=False "
                          "for reflectance-scaled images", RuntimeWarning, stacklevel=2)
        r = _uint16_cast(r)
        f = _uint16_cast(f)
    n3 = 1 << (nb - 1).bit_length()
    if n3 != nb:
        z = np.zeros((n3 - nb,) + r.shape[1:])
        r = np.concatenate([r, z])
        f = np.concatenate([f, z])
    win = np.lib.stride_tricks.sliding_window_view
    d1 = win(r, (block, block), axis=(1, 2))[:, ::shift, ::shift][:, :sx, :sy]
    d2 = win(f, (block, block), axis=(1, 2))[:, ::shift, ::shift][:, :sx, :sy]
    q = _onions_quality(d1, d2, block * block)
    return float(np.mean(np.sqrt(np.sum(q * q, axis=0))))


def _onions_quality(d1: np.ndarray, d2: np.ndarray, npix: int) -> np.ndarray:
    """Hypercomplex quality of each window; ``d1``, ``d2``: ``(N3, nx, ny, S, S)``; returns ``(N3, nx, ny)``."""
    ax = (-2, -1)
    mu = d1.mean(axis=ax, keepdims=True)
    sd = d1.std(axis=ax, ddof=1, keepdims=True)
    sd = np.where(sd == 0, _EPS, sd)
    x = (d1 - mu) / sd + 1.0
    # the toolbox normalises the fused block with the reference block's mean and std, and skips the
    # division where that *mean* is zero
    sd2 = np.where(mu == 0, 1.0, sd)
    y = _conj((d2 - mu) / sd2 + 1.0)
    m1 = x.mean(axis=ax)
    m2 = y.mean(axis=ax)
    k = npix / (npix - 1.0)
    mod1m2 = np.sum(m1 * m1, axis=0)
    mod2m2 = np.sum(m2 * m2, axis=0)
    term2 = np.sqrt(mod1m2) * np.sqrt(mod2m2)
    term4 = mod1m2 + mod2m2
    int1 = k * np.mean(np.sum(x * x, axis=0), axis=ax)
    int2 = k * np.mean(np.sum(y * y, axis=0), axis=ax)
    term3 = int1 + int2 - k * (mod1m2 + mod2m2)
    mean_bias = 2.0 * term2 / term4
    qv = k * _onion_mult(x, y).mean(axis=ax)
    qm = _onion_mult(m1, m2)
    flat = term3 == 0
    cbm = 2.0 / np.where(flat, 1.0, term3)
    q = (qv - k * qm) * mean_bias * cbm
    if flat.any():
        alt = np.zeros_like(q)
        alt[-1] = mean_bias
        q = np.where(flat[None], alt, q)
    return q


def psnr(ref: np.ndarray, fused: np.ndarray, data_range: float) -> float:
    """PSNR in dB = 10 log10(data_range^2 / MSE), MSE over all pixels and bands (inf if identical)."""
    r, f = _pair(ref, fused)
    mse = float(np.mean((r - f) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * math.log10(float(data_range) ** 2 / mse))


# --------------------------------------------------------------------------------------------------
# full resolution (no reference)


def _fr_inputs(fused: np.ndarray, ms_lr: np.ndarray, ratio: int) -> tuple[np.ndarray, np.ndarray]:
    f = _bands(fused, "fused")
    m = _bands(ms_lr, "ms_lr")
    if m.shape[0] != f.shape[0]:
        raise ValueError(f"fused has {f.shape[0]} bands, ms_lr {m.shape[0]}")
    if (m.shape[1] * ratio, m.shape[2] * ratio) != f.shape[1:]:
        raise ValueError(f"fused {f.shape[1:]} is not ratio={ratio} times ms_lr {m.shape[1:]}")
    return f, m


def _pan2d(pan: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    p = np.asarray(pan, dtype=np.float64)
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    if p.shape != shape:
        raise ValueError(f"pan {p.shape} must have the fused image's size {shape}")
    return p


def d_lambda_k(fused: np.ndarray, ms_lr: np.ndarray, ms_gnyq: Sequence[float] | float, ratio: int,
               block: int = 32, uint16_cast: bool = True) -> float:
    """Khan's spectral distortion of HQNR (toolbox ``D_lambda_K.m``).

    1 - Q2n(ms_exp, MTF(fused)) at PAN scale, Q2n with ``block x block`` windows every ``block``
    pixels, ``ms_exp = interp23tap(ms_lr)``, MTF = sensor kernels (:func:`mtf_kernels` of
    ``ms_gnyq``) with replicate borders. ``uint16_cast`` as in :func:`q2n`; it defaults to True
    here because the toolbox's ``q2n.m`` always casts (the conformance value needs it). Pass
    ``False`` for data not in integer digital numbers (e.g. reflectance in [0, 1]).
    """
    f, m = _fr_inputs(fused, ms_lr, ratio)
    ms_exp = interp23tap(m, ratio)
    f_lp = mtf_filter(f, mtf_kernels(_gains(ms_gnyq, f.shape[0]), ratio))
    return 1.0 - q2n(ms_exp, f_lp, block, block, uint16_cast=uint16_cast)


def _lowpass_pan(pan: np.ndarray, ratio: int, pan_lp: str, pan_gnyq: float | None) -> np.ndarray:
    h, w = pan.shape
    if pan_lp == "bicubic":
        lr = imresize_bicubic(pan, 1.0 / ratio)
    elif pan_lp == "mtf":
        if pan_gnyq is None:
            raise ValueError("pan_lp='mtf' needs pan_gnyq")
        lr = decimate(mtf_filter(pan, mtf_kernels([pan_gnyq], ratio)[0]), ratio)
    else:
        raise ValueError(f"pan_lp must be 'bicubic' or 'mtf' (got {pan_lp!r})")
    return interp23tap(lr, ratio)[:h, :w]


def d_s(fused: np.ndarray, ms_lr: np.ndarray, pan: np.ndarray, ratio: int, block: int = 32, q: float = 1,
        pan_lp: str = "bicubic", pan_gnyq: float | None = None) -> float:
    """QNR spatial distortion (toolbox ``D_s.m``, "toolbox 1.0" option).

    D_s = (mean_b |Q(fused_b, pan) - Q(ms_exp_b, pan_lp)|^q)^(1/q), each Q the mean UIQI over
    non-overlapping ``block x block`` blocks at PAN scale; ``ms_exp = interp23tap(ms_lr)`` and the
    low-pass PAN is ``interp23tap(imresize(pan, 1/ratio))`` (MATLAB bicubic); ``pan_lp="mtf"``
    uses an MTF filter with ``pan_gnyq`` and decimation instead of the bicubic reduction.
    """
    f, m = _fr_inputs(fused, ms_lr, ratio)
    p = _pan2d(pan, f.shape[1:])
    ms_exp = interp23tap(m, ratio)
    p_lp = _lowpass_pan(p, ratio, pan_lp, pan_gnyq)
    q_high = _block_uiqi(f, p[None], block).mean(axis=(1, 2))
    q_low = _block_uiqi(ms_exp, p_lp[None], block).mean(axis=(1, 2))
    return float(np.mean(np.abs(q_high - q_low) ** q) ** (1.0 / q))


def d_lambda(fused: np.ndarray, ms_lr: np.ndarray, ratio: int, block: int = 32, p: float = 1) -> float:
    """Classic QNR spectral distortion (toolbox ``D_lambda.m``, "toolbox 1.0" option).

    D_lambda = (mean over band pairs i<j of |Q(fused_i, fused_j) - Q(ms_i, ms_j)|^p)^(1/p), each Q
    the mean UIQI over non-overlapping ``block x block`` blocks at PAN scale, with the MS taken as
    ``interp23tap(ms_lr)``. 0 for a single band.
    """
    f, m = _fr_inputs(fused, ms_lr, ratio)
    nb = f.shape[0]
    if nb < 2:
        return 0.0
    ms_exp = interp23tap(m, ratio)
    i, j = np.triu_indices(nb, k=1)
    qf = _block_uiqi(f[i], f[j], block).mean(axis=(1, 2))
    qm = _block_uiqi(ms_exp[i], ms_exp[j], block).mean(axis=(1, 2))
    return float(np.mean(np.abs(qf - qm) ** p) ** (1.0 / p))


def qnr(fused: np.ndarray, ms_lr: np.ndarray, pan: np.ndarray, ratio: int, block: int = 32, p: float = 1,
        q: float = 1, alpha: float = 1, beta: float = 1) -> float:
    """QNR = (1 - D_lambda)^alpha (1 - D_s)^beta (Alparone et al. 2008, toolbox conventions)."""
    dl = d_lambda(fused, ms_lr, ratio, block, p)
    ds = d_s(fused, ms_lr, pan, ratio, block, q)
    return float((1.0 - dl) ** alpha * (1.0 - ds) ** beta)


def hqnr(fused: np.ndarray, ms_lr: np.ndarray, pan: np.ndarray, ms_gnyq: Sequence[float] | float, ratio: int,
         block: int = 32, uint16_cast: bool = True) -> float:
    """Hybrid QNR = (1 - D_lambda_K)(1 - D_s) (toolbox ``HQNR.m``; ``uint16_cast`` as :func:`d_lambda_k`)."""
    dl = d_lambda_k(fused, ms_lr, ms_gnyq, ratio, block, uint16_cast)
    ds = d_s(fused, ms_lr, pan, ratio, block)
    return float((1.0 - dl) * (1.0 - ds))


def _local_xcorr(x: np.ndarray, y: np.ndarray, w: int) -> np.ndarray:
    """Scarpa-Ciotola local correlation field on ``2w x 2w`` windows (zero padding, as their code)."""
    k = 2 * w
    area = float(k * k)
    pad = ((0, 0), (w, w), (w, w))

    def box(a: np.ndarray) -> np.ndarray:
        # window of output pixel i covers input rows i-w+1 .. i+w (zero outside)
        return _box_valid(np.pad(a, pad), k)[..., 1:, 1:]

    xc = x - box(x) / area
    yc = y - box(y) / area
    sxy = box(xc * yc)
    sxx = np.maximum(box(xc * xc), 1e-20)
    syy = np.maximum(box(yc * yc), 1e-20)
    return sxy / (np.sqrt(sxx * syy) + 1e-20)


def d_rho(fused: np.ndarray, pan: np.ndarray, ratio: int) -> float:
    """Scarpa & Ciotola's spatial consistency index D_rho.

    1 - local correlation coefficient between each fused band and the PAN on ``2w x 2w`` windows,
    ``w = ceil(ratio/2)`` (windows cover pixels i-w+1..i+w, zero padding outside, as their
    ``local_cross_correlation``), correlation clipped to [-1, 1], averaged over pixels and bands.
    """
    f = _bands(fused, "fused")
    p = _pan2d(pan, f.shape[1:])
    w = math.ceil(ratio / 2)
    rho = np.clip(_local_xcorr(f, p[None], w), -1.0, 1.0)
    return float(np.mean(1.0 - rho))


def reproject(fused: np.ndarray, ms_gnyq: Sequence[float] | float, ratio: int) -> np.ndarray:
    """Scarpa-Ciotola reprojection: MTF-filter the fused bands (sensor kernels, replicate borders)
    and decimate at the phase co-registered with ``interp23tap`` (``ratio//2``). ``(B, H/r, W/r)``."""
    f = _bands(fused, "fused")
    k = mtf_kernels(_gains(ms_gnyq, f.shape[0]), ratio)
    return np.ascontiguousarray(decimate(mtf_filter(f, k), ratio))


def _reprojected(fused: np.ndarray, ms_lr: np.ndarray, ms_gnyq: Sequence[float] | float,
                 ratio: int) -> tuple[np.ndarray, np.ndarray]:
    f, m = _fr_inputs(fused, ms_lr, ratio)
    return m, reproject(f, ms_gnyq, ratio)


def r_q2n(fused: np.ndarray, ms_lr: np.ndarray, ms_gnyq: Sequence[float] | float, ratio: int,
          block: int = 32, uint16_cast: bool = False) -> float:
    """Reprojected Q2n: :func:`q2n` (``block`` windows every ``block`` pixels) of ``ms_lr`` vs the
    :func:`reproject`-ed fused image, at MS scale."""
    m, fl = _reprojected(fused, ms_lr, ms_gnyq, ratio)
    return q2n(m, fl, block, block, uint16_cast=uint16_cast)


def r_sam(fused: np.ndarray, ms_lr: np.ndarray, ms_gnyq: Sequence[float] | float, ratio: int) -> float:
    """Reprojected SAM (degrees): :func:`sam` of ``ms_lr`` vs the reprojected fused image."""
    m, fl = _reprojected(fused, ms_lr, ms_gnyq, ratio)
    return sam(m, fl)


def r_ergas(fused: np.ndarray, ms_lr: np.ndarray, ms_gnyq: Sequence[float] | float, ratio: int) -> float:
    """Reprojected ERGAS: :func:`ergas` (with ``ratio``) of ``ms_lr`` vs the reprojected fused image."""
    m, fl = _reprojected(fused, ms_lr, ms_gnyq, ratio)
    return ergas(m, fl, ratio)


def _amplitude_distribution(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spec = np.abs(np.fft.fft2(a - a.mean(axis=(1, 2), keepdims=True)))
    spec[:, 0, 0] = 0.0
    tot = spec.sum(axis=(1, 2))
    return spec / np.where(tot > 0, tot, 1.0)[:, None, None], tot > 0


def fsds(ref_or_ms: np.ndarray, fused: np.ndarray, ratio: int | None = None,
         ms_gnyq: Sequence[float] | float | None = None) -> float:
    """Frequency Spectrum Distribution Similarity, in [0, 1] (1 = identical distributions).

    No standard definition was found in the toolbox or in Scarpa & Ciotola's protocol, so this is
    the project's own, stated here. Per band, the DFT amplitude spectrum of the mean-removed image
    (DC excluded) is normalised to a distribution over frequencies; the similarity of the two
    distributions is their Bhattacharyya coefficient ``sum(sqrt(p * q))``; FSDS is its mean over
    bands (bands flat in both images count 1, flat in one only 0). Insensitive to radiometric gain
    and to sub-pixel shifts; sensitive to blur, ringing, over-sharpening, noise and aliasing.

    - Same shapes (reduced resolution): reference vs fused directly.
    - ``ref_or_ms`` smaller by ``ratio`` (full resolution): the fused image is first reprojected
      (:func:`reproject`, MTF gains ``ms_gnyq``, default the generic 0.29) and compared with the MS.
    """
    a = _bands(ref_or_ms, "ref_or_ms")
    f = _bands(fused, "fused")
    if a.shape != f.shape:
        if ratio is None:
            ratio = f.shape[1] // a.shape[1]
        if ms_gnyq is None:
            from .sensors import GENERIC_MS_GNYQ
            ms_gnyq = GENERIC_MS_GNYQ
        a, f = _reprojected(f, a, ms_gnyq, ratio)
    pa, oka = _amplitude_distribution(a)
    pf, okf = _amplitude_distribution(f)
    bc = np.sum(np.sqrt(pa * pf), axis=(1, 2))
    bc = np.where(oka & okf, bc, np.where(~oka & ~okf, 1.0, 0.0))
    return float(np.clip(np.mean(bc), 0.0, 1.0))


# --------------------------------------------------------------------------------------------------
# reports


def reduced_resolution_report(ref: np.ndarray, fused: np.ndarray, ratio: int, block: int = 32,
                              data_range: float | None = None, q2n_uint16_cast: bool = False) -> dict[str, float]:
    """All reference metrics: keys ``Q2n``, ``SAM``, ``ERGAS``, ``SCC``, ``Q``, ``PSNR``.

    ``Q2n`` uses ``block`` windows every ``block`` pixels; ``Q`` is :func:`q_avg` with ``block``;
    ``PSNR``'s ``data_range`` defaults to the reference's maximum.
    """
    r, f = _pair(ref, fused)
    dr = float(r.max()) if data_range is None else float(data_range)
    return {
        "Q2n": q2n(r, f, block, block, uint16_cast=q2n_uint16_cast),
        "SAM": sam(r, f),
        "ERGAS": ergas(r, f, ratio),
        "SCC": scc(r, f),
        "Q": q_avg(r, f, block),
        "PSNR": psnr(r, f, dr),
    }


def full_resolution_report(fused: np.ndarray, ms_lr: np.ndarray, pan: np.ndarray,
                           ms_gnyq: Sequence[float] | float, pan_gnyq: float | None = None, ratio: int = 4,
                           block: int = 32, pan_lp: str = "bicubic", uint16_cast: bool = True) -> dict[str, float]:
    """All no-reference metrics: keys ``HQNR``, ``D_lambda_K``, ``D_s``, ``QNR``, ``D_lambda``, ``D_rho``,
    ``R_Q2n``, ``R_SAM``, ``R_ERGAS``, ``FSDS``.

    ``pan_gnyq`` is used only with ``pan_lp="mtf"`` (MTF-filtered low-pass PAN in D_s instead of the
    toolbox's bicubic reduction). ``uint16_cast`` applies to D_lambda_K (hence HQNR) only, as
    :func:`d_lambda_k`. The reprojected metrics (R_Q2n without cast) and FSDS work at MS scale.
    """
    f, m = _fr_inputs(fused, ms_lr, ratio)
    p = _pan2d(pan, f.shape[1:])
    g = _gains(ms_gnyq, f.shape[0])
    dlk = d_lambda_k(f, m, g, ratio, block, uint16_cast)
    ds = d_s(f, m, p, ratio, block, 1, pan_lp=pan_lp, pan_gnyq=pan_gnyq)
    dl = d_lambda(f, m, ratio, block)
    fl = reproject(f, g, ratio)
    return {
        "HQNR": (1.0 - dlk) * (1.0 - ds),
        "D_lambda_K": dlk,
        "D_s": ds,
        "QNR": (1.0 - dl) * (1.0 - ds),
        "D_lambda": dl,
        "D_rho": d_rho(f, p, ratio),
        "R_Q2n": q2n(m, fl, block, block),
        "R_SAM": sam(m, fl),
        "R_ERGAS": ergas(m, fl, ratio),
        "FSDS": fsds(m, fl),
    }
