"""Per-scene test-time adaptation of the pansharpening networks ("feature tailor").

A network trained on one sensor (or one kind of scene) is adapted to the scene at hand, in about a
second on a CPU, without any reference image:

1. **Patches.** :func:`sample_patches_from_arrays` cuts the scene into a grid of candidate patches
   (a core of ``patch`` PAN pixels plus ``margin`` pixels of context on every side, aligned with the
   MS grid), skips those with nodata, describes each by cheap statistics (band means and spreads
   of the interpolated MS, PAN gradient energy, an NDVI-like ratio) and keeps a few percent of them
   that cover the scene's diversity (:func:`select_patches`: k-means in a whitened descriptor
   space, one medoid per cluster).
2. **Split.** :func:`adapt` holds out about a quarter of the patches (seeded) for the do-no-harm
   check and for early stopping.
3. **Cache.** In ``tailor`` mode the frozen backbone runs once per patch (``features()`` under
   ``no_grad``); each training step runs only the tailor, the network's final layer (``head``) and
   the losses.
4. **Losses** (unsupervised, physics-aware, differentiable; :func:`adaptation_losses`):

   * *spectral consistency*: the output, blurred by the sensor's MTF (the toolbox kernels of
     :func:`~pansharpen_cli.filters.mtf_kernels`, reflect borders) and decimated at the toolbox
     phase (``ratio//2``), must equal the true low-resolution MS (L1, normalised units);
   * *spatial consistency*: a hinge on the local correlation (``ratio x ratio`` windows) of every
     output band with the PAN. Default target (``spatial_target="base"``): the unadapted network's
     own correlation, pixel by pixel, i.e. the adaptation may not blur away PAN detail, but it is
     not pushed to add more. The alternative ``"scale"`` target (the correlation of the
     interpolated MS with the MTF-low-passed PAN on ``4 ratio`` windows, in the manner of Ciotola
     et al.'s structural loss) gains more on a mismatched network but over-sharpens a matched one
     (measured on WorldView-2, docs/adaptation.md), so it is opt-in;
   * *proximity*: L1 distance of the output to the unadapted output, so that a well-matched model
     is left (nearly) unchanged;
   * *Wald* (opt-in, ``wald`` weight, patches from ``sample_patches_from_arrays(reduced=...)``):
     supervised L1 on the scene degraded by the ratio, target its own LR MS. Measured harmful for a
     matched network (the scale-invariance assumption fails), off by default.

5. **Do no harm.** The unadapted and the adapted model are scored on the held-out patches with a
   no-reference criterion that penalises blur as well as spectral error,
   ``J = 1 - R_Q2n * (1 - D_s) * (1 - D_rho)`` (see :func:`patch_criterion`; HQNR alone is not used
   because it rewards blur). The adapted model is kept only if it lowers ``J`` by more than a noise
   margin (paired over patches) and does not worsen the held-out spectral consistency (R-ERGAS, by
   more than ``spectral_tol``) nor D_rho (blur) by more than the margin. Early stopping on the
   held-out loss comes first.

Modes: ``tailor`` (default: a small residual module on ``feat``, the tensor entering the network's
final channel-mapping layer, see :mod:`pansharpen_cli.models.base`), ``swift`` (update only the few
percent of the network's weights with the largest gradient sensitivity ``|g w|``) and ``full``
(fine-tune every weight; slow). Adapters are saved with :func:`save_adapter` (safetensors, a few KB
for a tailor) and re-applied with :func:`load_adapter`.

All arrays handed to this module are float32 in *normalised* units (digital numbers divided by the
network's scale, e.g. 2047), band-first. Nothing here reads rasters: the pipeline samples the
patches, calls :func:`adapt` once per scene and runs the returned model through its tiling engine.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .filters import decimate, imresize_bicubic, interp23tap, mtf_filter, mtf_kernels, wald_degrade
from .metrics import d_rho, ergas, q2n, sam
from .models.base import PansharpenNet
from .sensors import GENERIC_MS_GNYQ, GENERIC_PAN_GNYQ, Sensor, get_sensor

__all__ = [
    "ADAPTER_FORMAT",
    "DEFAULT_STEPS",
    "DEFAULT_LR",
    "DEFAULT_HIDDEN",
    "DEFAULT_GROUPS",
    "DEFAULT_TAILOR",
    "TAILOR_KINDS",
    "MODES",
    "PHASES",
    "AdaptResult",
    "AdaptedModel",
    "LossWeights",
    "MTFDegrade",
    "Tailor",
    "adapt",
    "adaptation_losses",
    "candidate_origins",
    "patch_count",
    "reproject_np",
    "default_weights",
    "load_adapter",
    "load_adapter_bytes",
    "local_correlation",
    "patch_criterion",
    "patch_descriptor",
    "sample_patches_from_arrays",
    "save_adapter",
    "select_patches",
    "state_sha256",
]

Mode = Literal["tailor", "swift", "full"]
MODES: tuple[str, ...] = ("tailor", "swift", "full")
#: default optimisation steps and Adam learning rates per mode
DEFAULT_STEPS: dict[str, int] = {"tailor": 100, "swift": 20, "full": 20}
DEFAULT_LR: dict[str, float] = {"tailor": 2e-2, "swift": 3e-3, "full": 3e-4}
#: cyclic mini-batches: the training patches are dealt into this many groups and each step trains
#: on one group (None: all of them every step). The tailor's steps are cheap: 3 groups for 100
#: steps (each patch seen ~33 times) fit better than 45 steps on all of them, in less
#: time (docs/adaptation.md); swift/full keep full batches.
DEFAULT_GROUPS: dict[str, int | None] = {"tailor": 3, "swift": None, "full": None}
#: tailor kinds: ``linear`` (1x1 -> 1x1, an affine map of the features: folded into the head's
#: convolution at inference, so adapted tiles cost what plain ones do) and ``mlp`` (1x1 -> GELU ->
#: depthwise 3x3 -> 1x1, the first design: a few % slower on every tile, and no better here)
TAILOR_KINDS: tuple[str, ...] = ("linear", "mlp")
DEFAULT_TAILOR = "linear"
#: default tailor width (hidden channels; the rank of the linear tailor's map)
DEFAULT_HIDDEN = 32
#: ``format`` metadata value of the adapter files
ADAPTER_FORMAT = "pansharpen-adapter/1"
ProgressFn = Callable[[int, int, float], None]


# ---------------------------------------------------------------------------------------------------
# sensors and loss weights


@dataclass(frozen=True)
class LossWeights:
    """Weights of the adaptation losses (all in normalised units).

    Attributes:
        spectral: weight of the L1 spectral-consistency loss (MTF-degraded output vs LR MS).
        spatial: weight of the hinge spatial-consistency loss (local correlation with the PAN).
        proximity: weight of the L1 distance to the unadapted output.
        spatial_target: ``"base"`` (no loss of the unadapted network's local correlation with the
            PAN) or ``"scale"`` (Ciotola-style target from the interpolated MS and low-passed PAN).
        wald: weight of the supervised loss on reduced-scale patches (those with a ``target``).
    """

    spectral: float = 1.0
    spatial: float = 0.05
    proximity: float = 0.03
    spatial_target: Literal["base", "scale"] = "base"
    wald: float = 0.0


#: Per-sensor defaults. Only WorldView-2 data has been used to check them (docs/adaptation.md);
#: the other sensors share the same values until a scene of theirs says otherwise.
SENSOR_WEIGHTS: dict[str, LossWeights] = {
    "WV2": LossWeights(),
    "WV3": LossWeights(),
    "WV4": LossWeights(),
    "QB": LossWeights(),
    "GE1": LossWeights(),
    "IKONOS": LossWeights(),
    "generic": LossWeights(),
}


def default_weights(sensor: Sensor | str | None) -> LossWeights:
    """The loss weights for a sensor (key, :class:`~pansharpen_cli.sensors.Sensor` or None = generic)."""
    key = sensor.key if isinstance(sensor, Sensor) else (get_sensor(sensor).key if sensor else "generic")
    return SENSOR_WEIGHTS.get(key, SENSOR_WEIGHTS["generic"])


@dataclass(frozen=True)
class _SensorInfo:
    key: str
    gnyq: tuple[float, ...]
    pan_gnyq: float
    red: int | None
    nir: int | None


def _sensor_info(sensor: Sensor | str | None, n_bands: int) -> _SensorInfo:
    if sensor is None:
        return _SensorInfo("generic", (GENERIC_MS_GNYQ,) * n_bands, GENERIC_PAN_GNYQ, None, None)
    s = sensor if isinstance(sensor, Sensor) else get_sensor(sensor)
    s = s.subset(n_bands)
    common = [b.common for b in s.bands]
    red = common.index("red") if "red" in common else None
    nir = common.index("nir") if "nir" in common else None
    return _SensorInfo(s.key, tuple(s.gnyq), float(s.pan_gnyq), red, nir)


# ---------------------------------------------------------------------------------------------------
# modules


class Tailor(nn.Module):
    """A small residual module on the network's tailor-point features.

    ``kind="linear"`` (default): ``tailor(feat) = 1x1 conv (C -> hidden) -> 1x1 conv (hidden -> C)``,
    so ``feat + tailor(feat) = M feat + c`` is an affine map of the features (:meth:`affine`) that
    the adapted network folds into the head's convolution at inference (:class:`AdaptedModel`).
    ``kind="mlp"``: ``1x1 conv -> GELU -> depthwise 3x3 -> 1x1 conv`` (one pixel of spatial context).
    The adapted network uses ``feat + tailor(feat)``. The last convolution starts at exactly zero
    (weights and bias), so before training ``feat + tailor(feat) == feat`` bit for bit and the
    adapted network reproduces the base network exactly. ``seed`` fixes the other initial weights.
    """

    def __init__(self, channels: int, hidden: int = DEFAULT_HIDDEN, *, seed: int = 0,
                 kind: str = DEFAULT_TAILOR) -> None:
        super().__init__()
        if channels < 1 or hidden < 1:
            raise ValueError(f"channels ({channels}) and hidden ({hidden}) must be positive")
        if kind not in TAILOR_KINDS:
            raise ValueError(f"unknown tailor kind {kind!r} (one of {', '.join(TAILOR_KINDS)})")
        self.channels = int(channels)
        self.hidden = int(hidden)
        self.kind = kind
        #: pixels of context the tailor adds to the network's receptive field
        self.receptive_field = tailor_receptive_field(kind)
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.mix = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if kind == "mlp" else None
        self.project = nn.Conv2d(hidden, channels, 1)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            bound = 1.0 / math.sqrt(channels)
            self.expand.weight.copy_(torch.rand(self.expand.weight.shape, generator=g) * 2 * bound - bound)
            self.expand.bias.zero_()
            if self.mix is not None:
                # depthwise: near-identity (centre tap 1) plus a little noise, so spatial mixing is learnt
                w = torch.rand(self.mix.weight.shape, generator=g) * 0.2 - 0.1
                w[:, :, 1, 1] += 1.0
                self.mix.weight.copy_(w)
                self.mix.bias.zero_()
            self.project.weight.zero_()
            self.project.bias.zero_()

    def forward(self, feat: Tensor) -> Tensor:
        """The residual ``tailor(feat)`` (not ``feat + tailor(feat)``)."""
        if self.mix is None:
            return self.project(self.expand(feat))
        return self.project(self.mix(F.gelu(self.expand(feat))))

    def affine(self) -> tuple[Tensor, Tensor]:
        """``linear`` kind: ``(M, c)`` with ``feat + tailor(feat) == M @ feat + c`` per pixel
        (``M`` ``(C, C)``, ``c`` ``(C,)``, float64 for the folding)."""
        if self.mix is not None:
            raise ValueError("only a linear tailor is an affine map")
        e = self.expand.weight.detach().double()[:, :, 0, 0]  # (hidden, C)
        pw = self.project.weight.detach().double()[:, :, 0, 0]  # (C, hidden)
        m = torch.eye(self.channels, dtype=torch.float64, device=e.device) + pw @ e
        c = pw @ self.expand.bias.detach().double() + self.project.bias.detach().double()
        return m, c

    def is_zero(self) -> bool:
        """True while the residual is exactly zero (untrained: the last convolution is zero)."""
        return not bool(torch.count_nonzero(self.project.weight)) and not bool(torch.count_nonzero(self.project.bias))


def tailor_receptive_field(kind: str = DEFAULT_TAILOR) -> int:
    """Pixels of context a tailor of ``kind`` adds to its network's receptive field."""
    return 1 if kind == "mlp" else 0


class _FoldedConv(nn.Module):
    """``conv(M x + c)`` as one convolution: weights ``W M``; the constant ``c`` becomes a bias,
    and, where ``conv`` zero-pads its input, a border correction (the convolution of the constant
    map that the zero padding truncates), so the result equals ``conv(M x + c)`` everywhere, up to
    float rounding."""

    def __init__(self, conv: nn.Conv2d, m: Tensor, c: Tensor) -> None:
        super().__init__()
        w = conv.weight.detach().double()  # (O, C, kh, kw)
        wm = torch.einsum("odhw,dc->ochw", w, m.to(w.device))
        wc = torch.einsum("odhw,d->ohw", w, c.to(w.device))[:, None]  # (O, 1, kh, kw)
        self.conv = copy.deepcopy(conv)
        self.conv.requires_grad_(False)
        pads = conv.padding if isinstance(conv.padding, tuple) else None
        zero_padded = conv.padding_mode == "zeros" and (pads is None or any(pads))
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                                      device=w.device)
        with torch.no_grad():
            self.conv.weight.copy_(wm.to(conv.weight.dtype))
            # the constant's interior value; with zero padding the rim is corrected in forward()
            # (no padding, or replicate/reflect/circular padding: the constant stays constant)
            new_bias = bias + wc.sum(dim=(1, 2, 3))
            if self.conv.bias is None:
                self.conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
            else:
                self.conv.bias.copy_(new_bias.to(conv.weight.dtype))
        self._wc = wc.to(conv.weight.dtype) if zero_padded else None
        self._rim: dict[tuple[Any, ...], Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self._wc is None:
            return y
        key = (tuple(x.shape[-2:]), x.device, y.dtype)
        rim = self._rim.get(key)
        if rim is None:
            # conv of the constant map with zero padding minus its interior value: zero inside,
            # the missing taps' share on the rim
            ones = torch.ones((1, 1, *x.shape[-2:]), dtype=self._wc.dtype, device=x.device)
            c = self.conv
            full = F.conv2d(ones, self._wc.to(x.device), None, c.stride, c.padding, c.dilation)
            rim = (full - self._wc.to(x.device).sum(dim=(1, 2, 3))[None, :, None, None]).to(y.dtype)
            self._rim = {key: rim}  # one shape at a time (tiles share theirs)
        return y + rim


def _replace_module(net: nn.Module, dotted: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``net`` (sharing every parameter) with the submodule ``dotted`` replaced."""
    top = copy.copy(net)
    top._modules = dict(net._modules)
    parent = top
    parts = dotted.split(".")
    for name in parts[:-1]:
        child = copy.copy(parent._modules[name])
        assert child is not None
        child._modules = dict(child._modules)
        parent._modules[name] = child
        parent = child
    parent._modules[parts[-1]] = new
    return top


class AdaptedModel(PansharpenNet):
    """A base network plus its per-scene adaptation, with the same ``forward(pan, lms, ms)``.

    * ``tailor`` mode: ``head(feat + tailor(feat))`` on the unchanged (shared, frozen) base;
    * ``swift``/``full`` modes: ``base`` is a private copy whose weights were changed, ``tailor`` is
      None; :attr:`reference` keeps the original values of the changed tensors so the delta can be
      saved (sparse for ``swift``).

    It is a :class:`~pansharpen_cli.models.base.PansharpenNet`, so the tiling engine runs it like
    any network. ``meta`` holds the provenance written into the adapter file.
    """

    def __init__(self, base: PansharpenNet, tailor: Tailor | None = None, *, mode: str = "tailor",
                 reference: Mapping[str, Tensor] | None = None, masks: Mapping[str, Tensor] | None = None,
                 meta: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}' (one of {', '.join(MODES)})")
        if mode == "tailor" and tailor is None:
            raise ValueError("tailor mode needs a Tailor")
        self.base = base
        self.tailor = tailor
        self.mode = mode
        self.n_bands = base.n_bands
        self.feat_channels = base.feat_channels
        self.ratio = base.ratio
        self.input_convention = base.input_convention
        #: original values of the tensors that swift/full changed (name -> tensor)
        self.reference: dict[str, Tensor] = {k: v.detach().clone() for k, v in (reference or {}).items()}
        #: swift: which entries may differ from the reference (name -> bool tensor)
        self.masks: dict[str, Tensor] = {k: v.detach().clone() for k, v in (masks or {}).items()}
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def extra_receptive_field(self) -> int:
        """Pixels of context the adaptation adds to the base network's receptive field (tailors,
        nested adaptations included; ``swift``/``full`` add none)."""
        own = self.tailor.receptive_field if self.tailor is not None else 0
        return own + (self.base.extra_receptive_field if isinstance(self.base, AdaptedModel) else 0)

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        return self.base.features(pan, lms, ms)

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        if self.tailor is not None:
            if not torch.is_grad_enabled():
                if self.tailor.is_zero():
                    return self.base.head(feat, pan, lms, ms)  # untrained: exactly the base
                folded = self.folded_base()
                if folded is not None:  # linear tailor folded into the head's convolution
                    return folded.head(feat, pan, lms, ms)
                t = self.tailor(feat)
                # add into the tailor's fresh output (one feature map less to allocate and fill
                # per tile; the same bits, addition being commutative)
                feat = t.add_(feat)
            else:
                feat = feat + self.tailor(feat)
        return self.base.head(feat, pan, lms, ms)

    def folded_base(self) -> PansharpenNet | None:
        """The base network with a linear tailor folded into its head convolution
        (:attr:`~pansharpen_cli.models.base.PansharpenNet.head_conv`): ``base.head(feat)`` of it
        equals ``base.head(feat + tailor(feat))`` up to float rounding, at the base's cost. None
        when it cannot be folded (an ``mlp`` tailor, a head without a plain convolution on the
        features, a nested adaptation). Rebuilt when the tailor's weights change."""
        t = self.tailor
        name = getattr(self.base, "head_conv", None)
        if t is None or t.kind != "linear" or not name or isinstance(self.base, AdaptedModel):
            return None
        try:
            conv = self.base.get_submodule(name)
        except AttributeError:
            return None
        if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.in_channels != self.base.feat_channels:
            return None
        key = tuple((p.data_ptr(), p._version, p.device) for p in (*t.parameters(), conv.weight))
        cached = self.__dict__.get("_folded")
        if cached is not None and cached[0] == key:
            return cached[1]
        m, c = t.affine()
        folded = _replace_module(self.base, name, _FoldedConv(conv, m, c))
        self.__dict__["_folded"] = (key, folded)  # not a submodule: no state-dict entries
        return folded

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The adaptation alone: the tailor's tensors (``tailor.*``), or the changed weights
        (``swift``: ``delta.<param>.index`` int64 flat indices + ``delta.<param>.value`` their new
        values; ``full``: ``delta.<param>.value`` whole tensors)."""
        if self.mode == "tailor":
            assert self.tailor is not None
            return {f"tailor.{k}": v.detach().cpu().contiguous().clone() for k, v in self.tailor.state_dict().items()}
        out: dict[str, Tensor] = {}
        params = dict(self.base.named_parameters())
        for name, ref in self.reference.items():
            cur = params[name].detach()
            if self.mode == "swift":
                idx = torch.nonzero((cur != ref).reshape(-1)).reshape(-1).to(torch.int64)
                if idx.numel():
                    out[f"delta.{name}.index"] = idx.cpu().contiguous()
                    out[f"delta.{name}.value"] = cur.reshape(-1)[idx].cpu().contiguous().clone()
            else:
                out[f"delta.{name}.value"] = cur.cpu().contiguous().clone()
        return out


# ---------------------------------------------------------------------------------------------------
# physics: MTF degradation, local correlation


PHASES = ("toolbox", "corner")


def _half_pixel(k: np.ndarray) -> np.ndarray:
    """Kernels ``(B, K, K)`` convolved with a 2x2 box: ``(B, K+1, K+1)``, centred half a pixel later."""
    out = np.zeros((k.shape[0], k.shape[1] + 1, k.shape[2] + 1))
    for dy in (0, 1):
        for dx in (0, 1):
            out[:, dy:dy + k.shape[1], dx:dx + k.shape[2]] += 0.25 * k
    return out


def _sample_centres(flt: np.ndarray, ratio: int, phase: str) -> np.ndarray:
    """The MS pixel centres of a filtered PAN-grid image: PAN pixel ``r k + r//2`` (``"toolbox"``) or
    ``r k + (r-1)/2`` (``"corner"``: the mean of the 2x2 pixels around it)."""
    if phase == "toolbox":
        return np.ascontiguousarray(decimate(flt, ratio))
    if phase != "corner":
        raise ValueError(f"phase must be one of {PHASES} (got {phase!r})")
    a = ratio // 2 - 1
    h, w = flt.shape[-2] // ratio, flt.shape[-1] // ratio
    acc = sum(flt[..., a + dy::ratio, a + dx::ratio][..., :h, :w] for dy in (0, 1) for dx in (0, 1))
    return np.ascontiguousarray(0.25 * acc)


def reproject_np(x: np.ndarray, gnyq: Sequence[float], ratio: int, phase: str = "toolbox") -> np.ndarray:
    """numpy reprojection ``(B, H, W) -> (B, H/r, W/r)``: sensor MTF (replicate borders) then sampling at
    the MS pixel centres: PAN pixel ``r k + r//2`` (``"toolbox"``, = :func:`metrics.reproject`) or
    ``r k + (r-1)/2`` (``"corner"``-aligned grids, the mean of the 2x2 pixels around it)."""
    return _sample_centres(mtf_filter(x, mtf_kernels(list(gnyq), ratio)), ratio, phase)


@functools.lru_cache(maxsize=16)
def _mtf_weight(gnyq: tuple[float, ...], ratio: int) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(mtf_kernels(list(gnyq), ratio)[:, None])).float()


def _mtf_filter_fast(x: np.ndarray, gnyq: Sequence[float], ratio: int) -> np.ndarray:
    """:func:`~pansharpen_cli.filters.mtf_filter` with the sensor kernels and replicate borders, as a torch
    convolution in float32 (agrees to ~1e-6 relative; faster on small patches and needs no
    ``scipy.signal``, whose first import costs ~0.7 s)."""
    w = _mtf_weight(tuple(float(g) for g in gnyq), int(ratio))
    p = w.shape[-1] // 2
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    with torch.no_grad():
        y = F.conv2d(F.pad(t, (p, p, p, p), mode="replicate"), w, groups=t.shape[1])
    return y[0].double().numpy()


class MTFDegrade(nn.Module):
    """Blur by the sensor MTF and decimate at the MS pixel centres: ``(N, B, H, W) -> (N, B, H/r, W/r)``.

    The kernels are :func:`~pansharpen_cli.filters.mtf_kernels` (``gnyq`` per band, ``ratio``),
    trimmed to the smallest centred support outside which their absolute mass is below ``trim``
    (1e-6 keeps 21x21 of the 41x41 taps for gains >= 0.27 at ratio 4); the convolution runs with
    stride ``ratio``, i.e. only the kept samples are computed. ``phase="toolbox"``: samples at PAN
    pixel ``ratio*k + ratio//2``, which equals ``decimate(mtf_filter(x))`` of the toolbox away from
    the borders (reflect padding here); ``"corner"`` (corner-aligned PAN/MS grids, as delivered by
    VHR products): at ``ratio*k + (ratio-1)/2``, the kernel convolved with a 2x2 box.
    """

    def __init__(self, gnyq: Sequence[float], ratio: int, trim: float = 1e-6, phase: str = "toolbox") -> None:
        super().__init__()
        k = mtf_kernels(list(gnyq), ratio)
        c = k.shape[-1] // 2
        tot = np.abs(k).sum(axis=(1, 2))
        rad = c
        if trim > 0:
            for r in range(1, c + 1):
                inner = np.abs(k[:, c - r:c + r + 1, c - r:c + r + 1]).sum(axis=(1, 2))
                if np.all(tot - inner <= trim * tot):
                    rad = r
                    break
        k = k[:, c - rad:c + rad + 1, c - rad:c + rad + 1]
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES} (got {phase!r})")
        if phase == "corner":
            if ratio < 2 or ratio % 2:
                raise ValueError("the corner phase needs an even ratio")
            k = _half_pixel(k)
        self.ratio = int(ratio)
        self.radius = int(rad)
        self.phase = phase
        self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(k[:, None])).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        p, r = self.radius, self.ratio
        q = p + (1 if self.phase == "corner" else 0)  # an even (corner) kernel reaches one more pixel right
        mode = "reflect" if min(x.shape[-2:]) > q else "replicate"
        xp = F.pad(x, (p, q, p, q), mode=mode)
        s = r // 2 if self.phase == "toolbox" else r // 2 - 1
        y = F.conv2d(xp[..., s:, s:], self.weight.to(x.dtype), stride=r, groups=x.shape[1])
        return y[..., :x.shape[-2] // r, :x.shape[-1] // r]


def _box_sum(a: Tensor, k: int) -> Tensor:
    """Sum over every ``k x k`` window fully inside ``a`` ('valid'): separable sums of shifted
    slices (several times faster than ``avg_pool2d`` on the CPU for small k)."""
    h = a.shape[-2] - k + 1
    s = a[..., 0:h, :]
    for i in range(1, k):
        s = s + a[..., i:i + h, :]
    w = a.shape[-1] - k + 1
    t = s[..., 0:w]
    for i in range(1, k):
        t = t + s[..., i:i + w]
    return t


class _BoxSum(torch.autograd.Function):
    """:func:`_box_sum` with its adjoint as the backward pass (the 'full' window sum of the
    gradient: the same sums on the gradient zero-padded by ``k - 1``), instead of autograd's
    backward of every slice (a zero-filled copy of the input each): 2-3x less work per step."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, k: int) -> Tensor:  # type: ignore[override]
        ctx.k = k
        return _box_sum(a, k)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        k = ctx.k
        return _box_sum(F.pad(g, (k - 1, k - 1, k - 1, k - 1)), k), None


def _box(a: Tensor, k: int) -> Tensor:
    """Mean over every ``k x k`` window fully inside ``a`` ('valid')."""
    s = _BoxSum.apply(a, k) if torch.is_grad_enabled() and a.requires_grad else _box_sum(a, k)
    return s * (1.0 / (k * k))


def _pad_for_window(a: Tensor, k: int) -> Tensor:
    lo, hi = (k - 1) // 2, k // 2
    mode = "reflect" if min(a.shape[-2:]) > hi else "replicate"
    return F.pad(a, (lo, hi, lo, hi), mode=mode)


def local_correlation(x: Tensor, y: Tensor, k: int, eps: float = 1e-8, *, pad: bool = True) -> Tensor:
    """Correlation coefficient of ``x`` and ``y`` over ``k x k`` windows around every pixel.

    ``x`` ``(N, C, H, W)``, ``y`` ``(N, 1 or C, H, W)``. With ``pad`` (default) the output has the
    input's size (window of pixel ``i`` covers ``i - (k-1)//2 .. i + k//2``, as D_rho's ``2w``
    windows; reflect borders); without, only windows fully inside are returned (``H - k + 1``).
    ``eps`` (normalised units squared) is added to both variances so flat windows stay finite.
    """
    if pad:
        x, y = _pad_for_window(x, k), _pad_for_window(y, k)
    mx, my = _box(x, k), _box(y, k)
    cov = _box(x * y, k) - mx * my
    vx = (_box(x * x, k) - mx * mx).clamp_min(0.0)
    vy = (_box(y * y, k) - my * my).clamp_min(0.0)
    return cov / torch.sqrt((vx + eps) * (vy + eps))


class _PanWindows:
    """The PAN side of :func:`local_correlation` on a batch's cores, computed once.

    ``crop(x)`` is the core of ``x`` widened by the window's reach (reflect-padded where the margin
    is too small), so ``corr(out)`` returns the ``ratio x ratio`` local correlation on the core only.
    """

    def __init__(self, pan: Tensor, margin: int, k: int, eps: float = 1e-8) -> None:
        self.k, self.m, self.eps = k, margin, eps
        self.lo, self.hi = (k - 1) // 2, k // 2
        p = self.crop(pan)
        self.p = p
        self.mp = _box(p, k)
        self.vp = (_box(p * p, k) - self.mp * self.mp).clamp_min(0.0)

    def crop(self, x: Tensor) -> Tensor:
        m, lo, hi = self.m, self.lo, self.hi
        h, w = x.shape[-2:]
        if m >= hi:
            return x[..., m - lo:h - m + hi, m - lo:w - m + hi]
        return _pad_for_window(x[..., m:h - m, m:w - m] if m else x, self.k)

    def corr(self, out: Tensor) -> Tensor:
        x = self.crop(out)
        mx = _box(x, self.k)
        cov = _box(x * self.p, self.k) - mx * self.mp
        vx = (_box(x * x, self.k) - mx * mx).clamp_min(0.0)
        return cov / torch.sqrt((vx + self.eps) * (self.vp + self.eps))


# ---------------------------------------------------------------------------------------------------
# patches: descriptors, selection, sampling


def patch_descriptor(pan: np.ndarray, ms_up: np.ndarray, red: int | None = None, nir: int | None = None) -> np.ndarray:
    """Cheap statistics of a patch, for :func:`select_patches`.

    Band means and standard deviations of ``ms_up`` ``(B, H, W)`` (the interpolated MS, or the MS at
    its own resolution under the same window: the statistics barely differ), log PAN gradient energy, log PAN
    standard deviation, and the mean NDVI-like ratio ``(nir - red) / (nir + red)`` when both indices
    are given. float64 vector.
    """
    p = np.asarray(pan, dtype=np.float64)
    m = np.asarray(ms_up, dtype=np.float64)
    gy = np.diff(p, axis=0)
    gx = np.diff(p, axis=1)
    energy = 0.5 * (float(np.mean(gy * gy)) + float(np.mean(gx * gx)))
    parts = [m.mean(axis=(1, 2)), m.std(axis=(1, 2)),
             np.array([math.log(energy + 1e-12), math.log(float(p.std()) + 1e-6)])]
    if red is not None and nir is not None:
        r, n = m[red], m[nir]
        parts.append(np.array([float(np.mean((n - r) / np.maximum(n + r, 1e-6)))]))
    return np.concatenate(parts)


def _whiten(x: np.ndarray) -> np.ndarray:
    """z-score per dimension, then PCA whitening of the non-degenerate components."""
    z = x - x.mean(axis=0)
    sd = z.std(axis=0)
    z = z / np.where(sd > 1e-12, sd, 1.0)
    if z.shape[0] < 3:
        return z
    cov = z.T @ z / max(z.shape[0] - 1, 1)
    w, v = np.linalg.eigh(cov)
    keep = w > 1e-3 * max(float(w.max()), 1e-12)
    return (z @ v[:, keep]) / np.sqrt(w[keep])


def select_patches(candidates: Sequence[Any] | np.ndarray, k: int, seed: int = 0,
                   valid: Sequence[bool] | np.ndarray | None = None, iters: int = 20) -> list[int]:
    """Indices of ``k`` candidates that cover the diversity of a scene (sorted, deterministic in ``seed``).

    ``candidates``: an ``(n, d)`` array of descriptors, a list of descriptor vectors, or a list of
    patch dicts (``pan``, ``lms``: described with :func:`patch_descriptor`; a dict whose pixels are
    not all finite, or whose ``valid`` mask is not all True, is skipped). ``valid`` marks usable
    candidates (default: all). The descriptors are whitened (z-score, then PCA whitening), clustered
    into ``k`` groups by k-means (k-means++ seeding, ``iters`` Lloyd steps), and each group gives its
    medoid, the candidate nearest its centre: rare kinds of content get their own group (unlike
    random sampling) but isolated outliers do not take over (unlike farthest-point sampling), and a
    medoid is a typical member of its group. Returns all usable candidates if ``k`` is not smaller.
    """
    if isinstance(candidates, np.ndarray) and candidates.ndim == 2:
        desc = candidates.astype(np.float64)
        ok = np.ones(len(desc), dtype=bool)
    else:
        rows: list[np.ndarray] = []
        ok_list: list[bool] = []
        for c in candidates:
            if isinstance(c, Mapping):
                good = _patch_ok(c)
                rows.append(patch_descriptor(c["pan"], c["lms"]) if good else np.zeros(0))
                ok_list.append(good)
            else:
                v = np.asarray(c, dtype=np.float64).ravel()
                rows.append(v)
                ok_list.append(bool(np.all(np.isfinite(v))))
        d = max((len(r) for r in rows), default=0)
        desc = np.array([r if len(r) == d else np.zeros(d) for r in rows], dtype=np.float64).reshape(len(rows), d)
        ok = np.array(ok_list, dtype=bool)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    ok &= np.all(np.isfinite(desc), axis=1)
    usable = np.flatnonzero(ok)
    if k <= 0 or usable.size == 0:
        return []
    if k >= usable.size:
        return usable.tolist()
    rng = np.random.default_rng(seed)
    x = _whiten(desc[usable])
    n = len(x)
    # k-means++ seeding
    centres = [int(rng.integers(n))]
    d2 = np.sum((x - x[centres[0]]) ** 2, axis=1)
    for _ in range(1, k):
        tot = float(d2.sum())
        nxt = int(rng.choice(n, p=d2 / tot)) if tot > 0 else int(rng.integers(n))
        centres.append(nxt)
        d2 = np.minimum(d2, np.sum((x - x[nxt]) ** 2, axis=1))
    c = x[centres].copy()
    labels = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        dist = np.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=2)
        new = np.argmin(dist, axis=1)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():
                c[j] = x[members].mean(axis=0)
    dist = np.sum((x[:, None, :] - c[None, :, :]) ** 2, axis=2)
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    # larger clusters first, so a shared nearest candidate goes to the bigger group
    sizes = np.bincount(labels, minlength=k)
    for j in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero((labels == j) & ~taken)
        if members.size == 0:
            continue
        m = int(members[np.argmin(dist[members, j])])
        taken[m] = True
        chosen.append(m)
    # empty clusters: fill with the farthest remaining candidates (farthest-point)
    while len(chosen) < k:
        dmin = np.min(np.sum((x[:, None, :] - x[chosen][None, :, :]) ** 2, axis=2), axis=1)
        dmin[taken] = -1.0
        m = int(np.argmax(dmin))
        taken[m] = True
        chosen.append(m)
    return sorted(int(usable[i]) for i in chosen)


def _patch_ok(p: Mapping[str, Any]) -> bool:
    """Whether a patch dict is usable: every pixel finite and its ``valid`` mask (if any) all True."""
    for key in ("pan", "lms", "ms_lr", "ms"):
        a = p.get(key)
        if a is not None and not np.all(np.isfinite(a)):
            return False
    v = p.get("valid")
    return v is None or bool(np.all(v))


def candidate_origins(height: int, width: int, patch: int, margin: int) -> list[tuple[int, int]]:
    """Top-left corners (row, col) of the candidate windows (``patch + 2 margin`` square) of a
    ``height x width`` PAN canvas: cores every ``patch`` pixels, windows fully inside. With ``patch``
    and ``margin`` multiples of the ratio, every window starts on an MS pixel boundary. For a raster
    sampler: read these windows, describe them with :func:`patch_descriptor`, pick with
    :func:`select_patches` and :func:`patch_count`."""
    win = patch + 2 * margin
    return [(y, x) for y in range(0, height - win + 1, patch) for x in range(0, width - win + 1, patch)]


def patch_count(n_candidates: int, fraction: float = 0.05, min_patches: int = 8, max_patches: int = 64) -> int:
    """How many of ``n_candidates`` windows to adapt on: ``fraction`` of them within
    ``[min_patches, max_patches]`` (and at most ``n_candidates``)."""
    return int(min(max(round(fraction * n_candidates), min_patches), max_patches, n_candidates))


def _grid_patches(p: np.ndarray, up: np.ndarray, ml: np.ndarray, ok: np.ndarray, r: int, patch: int, m: int,
                  k_of: Callable[[int], int], seed: int, info: _SensorInfo | None,
                  extra: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """Candidate windows on a grid (cores ``patch`` apart), usable ones described and selected."""
    win = patch + 2 * m
    origins = candidate_origins(p.shape[0], p.shape[1], patch, m)
    descs: list[np.ndarray] = []
    usable: list[bool] = []
    for y, x in origins:
        good = bool(ok[y:y + win, x:x + win].all()) and bool(
            np.all(np.isfinite(ml[:, y // r:(y + win) // r, x // r:(x + win) // r])))
        usable.append(good)
        descs.append(patch_descriptor(p[y:y + win, x:x + win], up[:, y:y + win, x:x + win],
                                      info.red if info else None, info.nir if info else None)
                     if good else np.zeros(0))
    n_ok = sum(usable)
    if n_ok == 0:
        return []
    d = max(len(v) for v in descs)
    desc = np.array([v if len(v) == d else np.zeros(d) for v in descs])
    idx = select_patches(desc, min(k_of(len(origins)), n_ok), seed=seed, valid=usable)
    out: list[dict[str, Any]] = []
    for i in idx:
        y, x = origins[i]
        item: dict[str, Any] = {
            "pan": np.ascontiguousarray(p[y:y + win, x:x + win]),
            "lms": np.ascontiguousarray(up[:, y:y + win, x:x + win]),
            "ms_lr": np.ascontiguousarray(ml[:, y // r:(y + win) // r, x // r:(x + win) // r]),
            "margin": m,
            "origin": (y, x),
        }
        for key, a in extra.items():
            item[key] = np.ascontiguousarray(a[:, y:y + win, x:x + win])
        out.append(item)
    return out


def sample_patches_from_arrays(pan: np.ndarray, ms_lr: np.ndarray, lms: np.ndarray | None = None, ratio: int = 4,
                               *, patch: int = 64, margin: int | None = None, fraction: float = 0.05,
                               min_patches: int = 8, max_patches: int = 64, seed: int = 0,
                               valid: np.ndarray | None = None, sensor: Sensor | str | None = None,
                               ref: np.ndarray | None = None, reduced: int = 0,
                               phase: str = "toolbox") -> list[dict[str, Any]]:
    """Patches of an in-memory scene for :func:`adapt`, chosen by :func:`select_patches`.

    Args:
        pan: ``(H, W)`` PAN, normalised units (NaN = nodata).
        ms_lr: ``(B, H/ratio, W/ratio)`` the true low-resolution MS, toolbox phase (LR pixel ``k``
            centred on PAN pixel ``ratio*k + ratio//2``).
        lms: ``(B, H, W)`` the MS on the PAN grid (23-tap interpolator); computed if None.
        ratio: PAN/MS resolution ratio.
        patch: core size in PAN pixels (a multiple of ``ratio``); losses and scores use the core.
        margin: context on every side in PAN pixels (a multiple of ``ratio``; default ``2*ratio``).
            Use at least the network's receptive field for exact cores; ``2*ratio`` covers the
            trimmed MTF support.
        fraction: share of the candidate patches (non-overlapping cores) to keep, bounded by
            ``min_patches`` and ``max_patches``.
        seed: for the selection.
        valid: ``(H, W)`` bool, False = nodata; windows touching nodata (or non-finite pixels) are skipped.
        sensor: MTF gains (for ``reduced``) and the red and NIR bands (NDVI-like descriptor).
        ref: ``(B, H, W)`` reference (reduced-resolution experiments only): cropped into the patches
            as ``ref``, used by :func:`adapt` for diagnostics, never for training or decisions.
        phase: where the MS pixel centres sit on the PAN grid: ``"toolbox"`` (LR pixel ``k`` at PAN
            pixel ``ratio*k + ratio//2``) or ``"corner"`` (corner-aligned grids, ``lms`` required);
            pass the same ``phase`` to :func:`adapt`.
        reduced: also return up to this many patches of the scene degraded by Wald's protocol
            (PAN and MS reduced by ``ratio`` with the sensor MTFs): their ``target`` is the
            scene's own LR MS, a supervised signal at the lower scale (``scale="reduced"``).

    Returns a list of dicts with ``pan (H', W')``, ``lms (B, H', W')``, ``ms_lr (B, H'/r, W'/r)``
    (float32, ``H' = patch + 2 margin``), ``margin``, ``origin`` (row, col of the window),
    ``scale`` (``"full"`` or ``"reduced"``), ``ref`` if given and ``target`` for reduced ones.
    """
    r = int(ratio)
    m = 2 * r if margin is None else int(margin)
    if patch % r or m % r or patch <= 0 or m < 0:
        raise ValueError(f"patch ({patch}) and margin ({m}) must be non-negative multiples of the ratio {r}")
    p = np.asarray(pan, dtype=np.float32)
    ml = np.asarray(ms_lr, dtype=np.float32)
    if p.ndim != 2 or ml.ndim != 3:
        raise ValueError(f"pan must be (H, W) and ms_lr (B, h, w); got {p.shape} and {ml.shape}")
    h, w = p.shape
    if ml.shape[1] * r < h or ml.shape[2] * r < w:
        raise ValueError(f"ms_lr {ml.shape[1:]} does not cover the PAN {p.shape} at ratio {r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES} (got {phase!r})")
    if lms is None and phase != "toolbox":
        raise ValueError("with phase='corner' pass lms (the MS interpolated onto the PAN grid with that phase)")
    up = (interp23tap(ml, r).astype(np.float32) if lms is None else np.asarray(lms, dtype=np.float32))
    if up.shape[1:] != p.shape:
        raise ValueError(f"lms {up.shape} does not match the PAN {p.shape}")
    ok = np.isfinite(p) & np.all(np.isfinite(up), axis=0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    info = _sensor_info(sensor, ml.shape[0])

    def k_full(n: int) -> int:
        return patch_count(n, fraction, min_patches, max_patches)

    extra = {} if ref is None else {"ref": np.asarray(ref, dtype=np.float32)}
    out = _grid_patches(p, up, ml, ok, r, patch, m, k_full, seed, info, extra)
    for it in out:
        it["scale"] = "full"
    if reduced > 0:
        if phase != "toolbox":
            raise ValueError("reduced-scale (Wald) patches need the toolbox phase")
        out += _reduced_patches(p, ml, ok, r, patch, m, int(reduced), seed, info)
    return out


def _reduced_patches(p: np.ndarray, ml: np.ndarray, ok: np.ndarray, r: int, patch: int, m: int, k: int, seed: int,
                     info: _SensorInfo) -> list[dict[str, Any]]:
    """Wald-degraded patches: PAN and MS reduced by ``r`` (sensor MTFs), target = the scene's LR MS."""
    hl, wl = ml.shape[1], ml.shape[2]
    hl -= hl % r
    wl -= wl % r
    mlc = ml[:, :hl, :wl].astype(np.float64)
    pc = p[:hl * r, :wl * r].astype(np.float64)
    okc = ok[:hl * r, :wl * r]
    # nodata: fill before filtering, then mark every reduced pixel whose support touched it
    if not okc.all():
        pc = np.where(okc, pc, float(np.nanmean(np.where(okc, pc, np.nan))))
        means = np.nanmean(np.where(np.isfinite(mlc), mlc, np.nan), axis=(1, 2))
        mlc = np.where(np.isfinite(mlc), mlc, means[:, None, None])
    pan_rr, ms_rr = wald_degrade(pc, mlc, list(info.gnyq), info.pan_gnyq, r)
    lms_rr = interp23tap(ms_rr, r)
    ok_lr = okc.reshape(hl, r, wl, r).all(axis=(1, 3)) & np.all(np.isfinite(ml[:, :hl, :wl]), axis=0)
    if not ok_lr.all():
        from scipy.ndimage import binary_erosion

        ok_lr = binary_erosion(ok_lr, iterations=2 * r, border_value=1)
    def count(c: int) -> int:
        win = c + 2 * m
        return 0 if win > min(hl, wl) else ((hl - win) // c + 1) * ((wl - win) // c + 1)

    # the largest core (<= patch) that gives k candidates on the (small) reduced scene
    sizes = [c for c in range(patch, 0, -r) if count(c) > 0]
    if not sizes:
        return []
    core = next((c for c in sizes if count(c) >= k or c <= 4 * r), sizes[-1])
    f32 = np.float32
    items = _grid_patches(pan_rr.astype(f32), lms_rr.astype(f32), ms_rr.astype(f32), ok_lr, r, core, m,
                          lambda n: min(k, n), seed, info, {"target": mlc.astype(f32)})
    for it in items:
        it["scale"] = "reduced"
    return items


# ---------------------------------------------------------------------------------------------------
# losses


@dataclass
class _Batch:
    """Same-shaped patches stacked as tensors, with everything the losses and scores need."""

    pan: Tensor  # (N, 1, H, W)
    lms: Tensor  # (N, B, H, W)
    ms_in: Tensor  # (N, B, H/r, W/r) the network's `ms` input
    ms_lr: Tensor  # (N, B, H/r, W/r) the true LR MS (spectral target)
    margin: int
    items: list[Mapping[str, Any]]
    feat: Tensor | None = None
    out0: Tensor | None = None  # unadapted output (no grad)
    pan_windows: _PanWindows | None = None
    rho_goal: Tensor | None = None  # (N, B, core) the spatial target actually used
    target: Tensor | None = None  # (N, B, H, W) supervised target of reduced-scale (Wald) patches

    @property
    def n(self) -> int:
        return int(self.pan.shape[0])


def _core(x: Tensor, m: int) -> Tensor:
    return x[..., m:x.shape[-2] - m, m:x.shape[-1] - m] if m else x


def _spatial_target(lms: np.ndarray, pan: np.ndarray, pan_gnyq: float, ratio: int) -> np.ndarray:
    """Per-pixel target correlation: local correlation (``4 ratio`` windows) of each interpolated MS
    band with the PAN low-passed by its MTF. ``(B, H, W)`` float32."""
    pan_lp = _mtf_filter_fast(np.asarray(pan)[None], [pan_gnyq], ratio)[0]
    x = torch.from_numpy(np.asarray(lms, dtype=np.float32))[None]
    y = torch.from_numpy(pan_lp.astype(np.float32))[None, None]
    return local_correlation(x, y, 4 * ratio)[0].clamp(-1.0, 1.0).numpy()


def _make_batches(items: Sequence[Mapping[str, Any]], device: torch.device) -> list[_Batch]:
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for it in items:
        key = (tuple(np.shape(it["pan"])), tuple(np.shape(it["ms_lr"])), int(it.get("margin", 0)),
               it.get("target") is not None)
        groups.setdefault(key, []).append(it)
    out = []
    for (_, _, m, has_target), its in groups.items():
        pan = np.stack([np.asarray(i["pan"], dtype=np.float32) for i in its])[:, None]
        lms = np.stack([np.asarray(i["lms"], dtype=np.float32) for i in its])
        ms_lr = np.stack([np.asarray(i["ms_lr"], dtype=np.float32) for i in its])
        ms_in = np.stack([np.asarray(i.get("ms", i["ms_lr"]), dtype=np.float32) for i in its])
        sup = torch.from_numpy(np.stack([np.asarray(i["target"], dtype=np.float32) for i in its])).to(device) \
            if has_target else None
        cl = torch.channels_last  # 2-4x faster convolutions (forward and backward) on the CPU
        out.append(_Batch(torch.from_numpy(pan).to(device).contiguous(memory_format=cl),
                          torch.from_numpy(lms).to(device).contiguous(memory_format=cl),
                          torch.from_numpy(ms_in).to(device).contiguous(memory_format=cl),
                          torch.from_numpy(ms_lr).to(device), m, list(its), target=sup))
    return out


def adaptation_losses(out: Tensor, batch: _Batch, degrade: MTFDegrade, weights: LossWeights,
                      ratio: int) -> tuple[Tensor, dict[str, float]]:
    """The training loss of a batch and its parts (``spectral``, ``spatial``, ``proximity``, ``total``).

    On the patch cores (``margin`` pixels of context dropped): spectral = mean |MTF-degraded output
    - LR MS|; spatial = mean over pixels and bands of ``relu(target - rho)`` with ``rho`` the local
    correlation of the output band with the PAN on ``ratio x ratio`` windows; proximity = mean
    |output - unadapted output|.
    """
    m = batch.margin
    mr = m // ratio
    lr_out = degrade(out)
    spec = (_core(lr_out, mr) - _core(batch.ms_lr, mr)).abs().mean()
    spat = out.new_zeros(())
    if batch.rho_goal is not None and weights.spatial:
        if batch.pan_windows is None:
            batch.pan_windows = _PanWindows(batch.pan, m, ratio)
        spat = F.relu(batch.rho_goal - batch.pan_windows.corr(out)).mean()
    if batch.out0 is not None and weights.proximity:
        prox = (_core(out, m) - _core(batch.out0, m)).abs().mean()
    else:
        prox = out.new_zeros(())
    total = weights.spectral * spec + weights.spatial * spat + weights.proximity * prox
    wald = out.new_zeros(())
    if batch.target is not None and weights.wald:
        wald = (_core(out, m) - _core(batch.target, m)).abs().mean()
        total = total + weights.wald * wald
    parts = {"total": float(total.detach()), "spectral": float(spec.detach()), "spatial": float(spat.detach()),
             "proximity": float(prox.detach()), "wald": float(wald.detach())}
    return total, parts


# ---------------------------------------------------------------------------------------------------
# the no-reference criterion


def _block_q(x: np.ndarray, y: np.ndarray, bs: int) -> np.ndarray:
    """Mean UIQI over non-overlapping ``bs x bs`` blocks, per band: ``x (B, H, W)``, ``y (B or 1, H, W)``."""
    b, h, w = x.shape
    hh, ww = h - h % bs, w - w % bs
    xb = x[:, :hh, :ww].reshape(b, hh // bs, bs, ww // bs, bs)
    yb = np.broadcast_to(y[:, :hh, :ww], (b, hh, ww)).reshape(b, hh // bs, bs, ww // bs, bs)
    mx, my = xb.mean(axis=(2, 4), keepdims=True), yb.mean(axis=(2, 4), keepdims=True)
    xc, yc = xb - mx, yb - my
    sxy = (xc * yc).mean(axis=(2, 4))
    sxx, syy = (xc * xc).mean(axis=(2, 4)), (yc * yc).mean(axis=(2, 4))
    mx, my = mx[:, :, 0, :, 0], my[:, :, 0, :, 0]
    den = (sxx + syy) * (mx * mx + my * my)
    q = np.where(den > 0, 4.0 * sxy * mx * my / np.where(den > 0, den, 1.0), 1.0)
    return q.mean(axis=(1, 2))


def patch_criterion(out: np.ndarray, item: Mapping[str, Any], gnyq: Sequence[float], ratio: int,
                    pan_lp: np.ndarray | None = None, phase: str = "toolbox") -> dict[str, float]:
    """No-reference scores of one output window on its patch core (normalised units, float64).

    * ``R_Q2n``: Q2n of the LR MS core vs the reprojected output (MTF blur on the whole window,
      replicate borders, decimation at ``ratio//2``), one window covering the core: spectral
      consistency that blur does not fool (a blurred output reprojects to a blurrier MS);
    * ``D_lambda_K``: 1 - Q2n of the interpolated MS vs the MTF-blurred output at PAN scale (Khan;
      reported, not used in ``J``: it rewards blur);
    * ``D_s``: QNR spatial distortion (block UIQI with the PAN vs that of the interpolated MS with
      the toolbox's low-passed PAN);
    * ``D_rho``: Scarpa-Ciotola local-correlation distortion with the PAN (blur raises it);
    * ``J = 1 - R_Q2n (1 - D_s) (1 - D_rho)``: the combined criterion (lower is better).
    """
    r = int(ratio)
    m = int(item.get("margin", 0))
    f = np.asarray(out, dtype=np.float64)
    pan = np.asarray(item["pan"], dtype=np.float64)
    lms = np.asarray(item["lms"], dtype=np.float64)
    ms_lr = np.asarray(item["ms_lr"], dtype=np.float64)
    h, w = pan.shape
    cs = (slice(None), slice(m, h - m), slice(m, w - m))
    mr = m // r
    cms = (slice(None), slice(mr, ms_lr.shape[1] - mr), slice(mr, ms_lr.shape[2] - mr))
    flt = _mtf_filter_fast(f, gnyq, r)
    rep = _sample_centres(flt, r, phase)[cms]
    ms_c = ms_lr[cms]
    bms = min(ms_c.shape[1:])
    r_q2n = q2n(ms_c, rep, bms, bms)
    fc, lc, pc = f[cs], lms[cs], pan[cs[1:]]
    bs = min(32, fc.shape[1], fc.shape[2])
    dlk = 1.0 - q2n(lc, flt[cs], bs, bs)
    if pan_lp is None:
        pan_lp = interp23tap(imresize_bicubic(pan, 1.0 / r), r)[:h, :w]
    plc = pan_lp[cs[1:]]
    ds = float(np.mean(np.abs(_block_q(fc, pc[None], bs) - _block_q(lc, plc[None], bs))))
    drho = d_rho(fc, pc, r)
    r_ergas = ergas(ms_c, rep, r)
    j = 1.0 - r_q2n * (1.0 - ds) * (1.0 - drho)
    return {"R_Q2n": float(r_q2n), "R_ERGAS": float(r_ergas), "D_lambda_K": float(dlk), "D_s": ds,
            "D_rho": float(drho), "J": float(j)}


def _reference_scores(out: np.ndarray, item: Mapping[str, Any], ratio: int, key: str = "ref") -> dict[str, float]:
    """Scores against ``item[key]`` on the core: Q2n (32 blocks), SAM (degrees), ERGAS."""
    m = int(item.get("margin", 0))
    ref = np.asarray(item[key], dtype=np.float64)
    h, w = ref.shape[1:]
    rc = ref[:, m:h - m, m:w - m]
    fc = np.asarray(out, dtype=np.float64)[:, m:h - m, m:w - m]
    bs = min(32, rc.shape[1], rc.shape[2])
    return {"Q2n": q2n(rc, fc, bs, bs), "SAM": sam(rc, fc), "ERGAS": ergas(rc, fc, ratio)}


def _mean_scores(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


# ---------------------------------------------------------------------------------------------------
# provenance and files


def state_sha256(model: nn.Module) -> str:
    """SHA-256 of a module's state dict (keys sorted; name, dtype, shape and bytes of each tensor)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_adapter(model: AdaptedModel, path: str | Path) -> Path:
    """Write ``model.adapter_state_dict()`` to a safetensors file, with ``model.meta`` as metadata.

    Metadata values are strings; non-string values are JSON-encoded and listed in ``json_keys``.
    ``format`` is :data:`ADAPTER_FORMAT`; ``mode``, ``base_state_sha256``, ``n_bands`` and
    ``feat_channels`` are always present.
    """
    from safetensors.torch import save_file

    p = Path(path)
    meta = {"format": ADAPTER_FORMAT, "mode": model.mode, "n_bands": model.n_bands,
            "feat_channels": model.feat_channels, **model.meta}
    if model.tailor is not None:
        meta["hidden"] = model.tailor.hidden
        meta["tailor_kind"] = model.tailor.kind
    meta.setdefault("base_state_sha256", "")
    md = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}
    md["json_keys"] = json.dumps(sorted(k for k, v in meta.items() if not isinstance(v, str)))
    tensors = model.adapter_state_dict()
    if not tensors:  # safetensors refuses empty files: an adapter that changes nothing
        tensors = {"empty": torch.zeros(0)}
    save_file(tensors, str(p), metadata=md)
    return p


def load_adapter(base: PansharpenNet, path: str | Path, *, check_base: bool = True) -> AdaptedModel:
    """Re-apply an adapter file to its base network (a fresh :class:`AdaptedModel`, eval mode).

    ``check_base`` (default) verifies the base's :func:`state_sha256` against the file's
    ``base_state_sha256`` and raises :class:`ValueError` on a mismatch. ``swift``/``full`` adapters
    change a private copy of ``base``; ``base`` itself is never modified.
    """
    from safetensors import safe_open

    p = Path(path)
    with safe_open(str(p), framework="pt", device="cpu") as fh:
        md = dict(fh.metadata() or {})
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    return _apply_adapter(base, md, tensors, str(p), check_base)


def load_adapter_bytes(base: PansharpenNet, data: bytes, *, check_base: bool = True,
                       where: str = "adapter") -> AdaptedModel:
    """:func:`load_adapter` from the bytes of an adapter file (e.g. bytes whose SHA-256 was just
    verified: nothing is read twice); ``where`` names the file in error messages."""
    from safetensors.torch import load as st_load

    try:
        n = int.from_bytes(data[:8], "little")
        md = dict(json.loads(data[8:8 + n].decode("utf-8")).get("__metadata__") or {})
        tensors = st_load(data)
    except Exception as exc:  # noqa: BLE001 - any malformed file is reported the same way
        raise ValueError(f"{where}: not a valid safetensors file ({exc})") from None
    return _apply_adapter(base, md, tensors, where, check_base)


def _apply_adapter(base: PansharpenNet, md: dict[str, str], tensors: dict[str, Tensor], where: str,
                   check_base: bool) -> AdaptedModel:
    p = where
    if md.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{p}: not a pansharpen adapter (format {md.get('format')!r})")
    json_keys = set(json.loads(md.pop("json_keys", "[]")))
    meta: dict[str, Any] = {k: json.loads(v) if k in json_keys else v for k, v in md.items()}
    want = str(md.get("base_state_sha256", ""))
    if check_base and want and want != state_sha256(base):
        raise ValueError(f"{p}: the adapter was made for another base network "
                         f"(base_state_sha256 {want[:12]}... differs from this one's)")
    mode = str(meta.get("mode", ""))
    if mode not in MODES:
        raise ValueError(f"{p}: unknown adaptation mode {mode!r}")
    for k in ("format", "mode", "n_bands", "feat_channels", "hidden", "tailor_kind"):
        meta.pop(k, None)
    tensors.pop("empty", None)
    if mode == "tailor":
        hidden = int(md["hidden"])
        kind = str(md.get("tailor_kind", "mlp"))  # files written before the linear tailor: mlp
        if kind not in TAILOR_KINDS:
            raise ValueError(f"{p}: unknown tailor kind {kind!r}")
        tailor = Tailor(base.feat_channels, hidden, kind=kind)
        tailor.load_state_dict({k[len("tailor."):]: v for k, v in tensors.items()}, strict=True)
        tailor = tailor.to(next((p_.device for p_ in base.parameters()), torch.device("cpu")))
        return AdaptedModel(base, tailor, mode="tailor", meta=meta).eval()
    net = copy.deepcopy(base)
    params = dict(net.named_parameters())
    reference = {}
    masks = {}
    with torch.no_grad():
        for key, v in tensors.items():
            if not key.endswith(".value"):
                continue
            name = key[len("delta."):-len(".value")]
            if name not in params:
                raise ValueError(f"{p}: the adapter changes '{name}', which this base network lacks")
            reference[name] = params[name].detach().clone()
            if mode == "swift":
                flat = params[name].data.view(-1)
                idx = tensors[f"delta.{name}.index"].to(flat.device)
                flat[idx] = v.to(flat.device, flat.dtype)
                mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
                mask[idx] = True
                masks[name] = mask.view_as(params[name])
            else:
                params[name].data.copy_(v.to(params[name].device))
    return AdaptedModel(net, None, mode=mode, reference=reference, masks=masks, meta=meta).eval()


# ---------------------------------------------------------------------------------------------------
# adapt


@dataclass
class AdaptResult:
    """What :func:`adapt` returns.

    Attributes:
        model: the model to use: an :class:`AdaptedModel` when ``used_adapted``, else the original.
        used_adapted: whether the adaptation passed the do-no-harm check.
        report: losses per step, seconds, held-out criterion before/after, decision and reason.
        candidate: the trained adaptation even when it was rejected (for inspection and tests).
    """

    model: PansharpenNet
    used_adapted: bool
    report: dict[str, Any] = field(default_factory=dict)
    candidate: AdaptedModel | None = None


class _Adam:
    """Plain Adam (PyTorch's defaults: betas 0.9/0.999, eps 1e-8, no weight decay).

    Used instead of ``torch.optim.Adam``, whose first construction imports ``torch._dynamo`` (~1.2 s
    on this project's machine, more than the whole adaptation). A zero gradient leaves its
    parameter exactly unchanged (``swift`` relies on that, and also restores masked entries).
    """

    def __init__(self, params: Sequence[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.b1, self.b2, self.eps = float(lr), betas[0], betas[1], float(eps)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1 = 1.0 - self.b1 ** self.t
        c2 = 1.0 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.mul_(self.b1).add_(g, alpha=1.0 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


def _tune_malloc() -> None:
    """Let glibc reuse freed activation buffers (see ``runtime.tune_malloc``: 2-4x faster
    small convolutions on the CPU here). Process-wide, once; a no-op where unavailable."""
    from .runtime import tune_malloc

    tune_malloc()


def _net_inputs(model: PansharpenNet, b: _Batch) -> tuple[Tensor | None, Tensor | None]:
    conv = model.input_convention
    return (None if conv == "lr" else b.lms), (None if conv == "lms" else b.ms_in)


def _split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    n_hold = 0 if holdout <= 0 or n < 2 else min(max(1, round(holdout * n)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    hold = sorted(int(i) for i in perm[:n_hold])
    train = sorted(int(i) for i in perm[n_hold:])
    return train, hold


def adapt(model: PansharpenNet, patches: Sequence[Mapping[str, Any]], sensor: Sensor | str | None, ratio: int,
          mode: Mode = "tailor", steps: int | None = None, lr: float | None = None, seed: int = 0,
          holdout: float = 0.25, progress: ProgressFn | None = None, *, weights: LossWeights | None = None,
          hidden: int = DEFAULT_HIDDEN, swift_fraction: float = 0.02, eval_every: int = 5, min_gain: float = 0.002,
          z: float = 1.0, spectral_tol: float = 0.02, phase: str = "toolbox", base_name: str = "",
          base_sha256: str = "", minibatch: int | None | Literal["default"] = "default",
          tailor_kind: str = DEFAULT_TAILOR) -> AdaptResult:
    """Adapt ``model`` to one scene from a few of its patches; keep the original unless it helps.

    Args:
        model: a :class:`~pansharpen_cli.models.base.PansharpenNet` (eval mode; never modified).
        patches: dicts with ``pan (H, W)``, ``lms (B, H, W)``, ``ms_lr (B, H/r, W/r)`` float32 in
            normalised units, optional ``ms`` (the network's ``ms`` input if it differs from
            ``ms_lr``), ``margin`` (context pixels, a multiple of ``ratio``), ``valid``, ``ref``
            (diagnostics only); :func:`sample_patches_from_arrays` makes them. Unusable patches
            (non-finite pixels, invalid mask) are dropped.
        sensor: :class:`~pansharpen_cli.sensors.Sensor`, key, or None (generic MTF gains).
        ratio: PAN/MS ratio.
        mode: ``tailor`` (default), ``swift`` or ``full``.
        steps, lr: Adam steps and learning rate; defaults :data:`DEFAULT_STEPS`,
            :data:`DEFAULT_LR` of the mode.
        seed: tailor initialisation and the train/held-out split.
        holdout: share of the patches held out for early stopping and the do-no-harm check
            (0: no check, the adaptation is used unchecked).
        progress: called as ``progress(step, steps, loss)`` after each step.
        weights: loss weights (default :func:`default_weights` of the sensor).
        hidden: tailor width (default :data:`DEFAULT_HIDDEN`).
        tailor_kind: ``linear`` (default; folded into the head at inference) or ``mlp``
            (:class:`Tailor`).
        minibatch: training patches per step: the training patches are dealt round-robin into
            ``G = ceil(n / minibatch)`` groups and step ``s`` trains on group ``s mod G`` (None: all
            of them every step; default: ``ceil(n / DEFAULT_GROUPS[mode])``, i.e. 3 groups for
            the tailor, full batches for swift/full).
        swift_fraction: share of the network's weights ``swift`` may change.
        eval_every: held-out loss every this many steps; the best step is kept (early stopping).
        min_gain, z: the adapted model must lower the mean held-out ``J`` by more than
            ``max(min_gain, z * standard error of the paired differences)``.
        base_name, base_sha256: provenance of the base weights (e.g. the zoo name and file hash),
            written into :attr:`AdaptedModel.meta`.

    Returns an :class:`AdaptResult`. Deterministic for a given seed (same patches, same machine).
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}' (one of {', '.join(MODES)})")
    _tune_malloc()
    if not isinstance(model, PansharpenNet):
        raise TypeError("model must be a PansharpenNet (see pansharpen_cli.models)")
    r = int(ratio)
    n_steps = DEFAULT_STEPS[mode] if steps is None else int(steps)
    rate = DEFAULT_LR[mode] if lr is None else float(lr)
    info = _sensor_info(sensor, model.n_bands)
    w = weights or default_weights(info.key if info.key != "generic" else None)
    if w.spatial_target not in ("base", "scale"):
        raise ValueError(f"spatial_target must be 'base' or 'scale' (got {w.spatial_target!r})")
    items = [p for p in patches if _patch_ok(p)]
    for p in items:
        if int(p.get("margin", 0)) % r:
            raise ValueError(f"patch margin {p.get('margin')} must be a multiple of the ratio {r}")
    report: dict[str, Any] = {
        "mode": mode, "steps": n_steps, "lr": rate, "seed": seed, "sensor": info.key, "ratio": r,
        "weights": asdict(w), "phase": phase, "n_patches": len(items), "n_dropped": len(patches) - len(items),
        "losses": [], "holdout_losses": [],
    }
    if len(items) == 0:
        report.update(used_adapted=False, reason="no usable patches", seconds={"total": time.perf_counter() - t0})
        return AdaptResult(model, False, report)
    train_idx, hold_idx = [], []
    for kind in (False, True):  # full-scale and reduced-scale (Wald) patches are split separately
        idx = [i for i, p in enumerate(items) if (p.get("target") is not None) == kind]
        tr, ho = _split(len(idx), holdout, seed)
        train_idx += [idx[i] for i in tr]
        hold_idx += [idx[i] for i in ho]
    report.update(n_train=len(train_idx), n_holdout=len(hold_idx))
    device = next((p_.device for p_ in model.parameters()), torch.device("cpu"))
    if minibatch == "default":
        groups = DEFAULT_GROUPS[mode]
        minibatch = None if groups is None else max(1, -(-len(train_idx) // groups))
    report["minibatch"] = minibatch
    if mode == "tailor":
        if tailor_kind not in TAILOR_KINDS:
            raise ValueError(f"unknown tailor kind {tailor_kind!r} (one of {', '.join(TAILOR_KINDS)})")
        report.update(hidden=hidden, tailor_kind=tailor_kind)
    if minibatch is not None and 0 < int(minibatch) < len(train_idx):
        # cyclic mini-batches: step s trains on group s mod G of the training patches
        n_groups = -(-len(train_idx) // int(minibatch))
        groups = [[items[i] for i in train_idx[g::n_groups]] for g in range(n_groups)]
        tr_groups = [_make_batches(g, device) for g in groups]
    else:
        tr_groups = [_make_batches([items[i] for i in train_idx], device)]
    tr_b = [b for g in tr_groups for b in g]
    ho_b = _make_batches([items[i] for i in hold_idx], device)
    degrade = MTFDegrade(info.gnyq, r, phase=phase).to(device)
    was_training = model.training
    model.eval()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    meta = {"base_name": base_name, "base_sha256": base_sha256, "base_state_sha256": state_sha256(model),
            "sensor": info.key, "ratio": r, "phase": phase, "mode": mode, "seed": seed, "lr": rate}
    secs: dict[str, float] = {}
    try:
        t1 = time.perf_counter()
        with torch.no_grad():
            for b in tr_b + ho_b:
                lms_in, ms_in = _net_inputs(model, b)
                b.feat = model.features(b.pan, lms_in, ms_in).contiguous(memory_format=torch.channels_last)
                b.out0 = model.head(b.feat, b.pan, lms_in, ms_in)
                b.pan_windows = _PanWindows(b.pan, b.margin, r)
                if w.spatial_target == "base":
                    b.rho_goal = b.pan_windows.corr(b.out0)
                else:
                    goal = np.stack([_spatial_target(i["lms"], i["pan"], info.pan_gnyq, r) for i in b.items])
                    b.rho_goal = _core(torch.from_numpy(goal).to(device), b.margin)
        secs["features"] = time.perf_counter() - t1
        model.requires_grad_(False)
        if mode == "tailor":
            tailor = Tailor(model.feat_channels, hidden, seed=seed, kind=tailor_kind).to(device)
            cand = AdaptedModel(model, tailor, mode="tailor", meta=meta)
            trainable = list(tailor.parameters())
            masks: dict[str, Tensor] = {}
            reference: dict[str, Tensor] = {}
        else:
            net = copy.deepcopy(model)
            reference = {n: p.detach().clone() for n, p in net.named_parameters()}
            cand = AdaptedModel(net, None, mode=mode, reference=reference, meta=meta)
            net.requires_grad_(True)
            masks = {}
            if mode == "swift":
                t2 = time.perf_counter()
                masks = _swift_masks(net, tr_b, degrade, w, r, swift_fraction)
                secs["sensitivity"] = time.perf_counter() - t2
                for n, p in net.named_parameters():
                    p.requires_grad_(bool(masks[n].any()))
                cand.masks = {n: m_.clone() for n, m_ in masks.items() if m_.any()}
            trainable = [p for p in net.parameters() if p.requires_grad]
        report["trainable_parameters"] = int(sum(int(masks[n].sum()) for n in masks) if mode == "swift"
                                             else sum(p.numel() for p in trainable))

        def run(b: _Batch) -> Tensor:
            lms_in, ms_in = _net_inputs(model, b)
            if mode == "tailor":
                assert b.feat is not None
                return cand.head(b.feat, b.pan, lms_in, ms_in)
            return cand(b.pan, lms_in, ms_in)

        def holdout_loss() -> float:
            if not ho_b:
                return float("nan")
            with torch.no_grad():
                tot = 0.0
                for b in ho_b:
                    _, parts = adaptation_losses(run(b), b, degrade, LossWeights(w.spectral, w.spatial, 0.0), r)
                    tot += parts["total"] * b.n
            return tot / sum(b.n for b in ho_b)

        def snapshot() -> dict[str, Tensor]:
            mod = cand.tailor if mode == "tailor" else cand.base
            assert mod is not None
            return {k: v.detach().clone() for k, v in mod.state_dict().items()}

        t3 = time.perf_counter()
        best = (holdout_loss(), 0, snapshot())
        report["holdout_losses"].append({"step": 0, "loss": best[0]})
        opt = _Adam(trainable, lr=rate) if trainable and n_steps > 0 else None
        for step in range(1, n_steps + 1 if opt is not None else 1):
            assert opt is not None
            opt.zero_grad()
            agg: dict[str, float] = {}
            step_b = tr_groups[(step - 1) % len(tr_groups)]
            n_train = sum(b.n for b in step_b)
            for b in step_b:
                loss, parts = adaptation_losses(run(b), b, degrade, w, r)
                (loss * (b.n / n_train)).backward()
                for k, v in parts.items():
                    agg[k] = agg.get(k, 0.0) + v * b.n / n_train
            if mode == "swift":
                for n, p in cand.base.named_parameters():
                    if p.grad is not None:
                        p.grad.mul_(masks[n])
            opt.step()
            report["losses"].append({"step": step, **agg})
            if progress is not None:
                progress(step, n_steps, agg["total"])
            if ho_b and (step % max(1, eval_every) == 0 or step == n_steps):
                hl = holdout_loss()
                report["holdout_losses"].append({"step": step, "loss": hl})
                if hl < best[0]:
                    best = (hl, step, snapshot())
            elif not ho_b and step == n_steps:
                best = (float("nan"), step, snapshot())
        secs["train"] = time.perf_counter() - t3
        mod = cand.tailor if mode == "tailor" else cand.base
        assert mod is not None
        mod.load_state_dict(best[2])
        if mode == "swift":  # belt and braces: entries outside the mask keep their exact values
            with torch.no_grad():
                for n, p in cand.base.named_parameters():
                    p.copy_(torch.where(masks[n], p, reference[n]))
        cand.requires_grad_(False)
        cand.eval()
        report["best_step"] = best[1]
        # -- do no harm
        t4 = time.perf_counter()
        decision = _decide(model, cand, ho_b, info, r, best[1], min_gain, z, spectral_tol, phase, report)
        secs["criterion"] = time.perf_counter() - t4
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        model.train(was_training)
    used = decision
    final_losses = report["losses"][best[1] - 1] if best[1] > 0 else None
    cand.meta.update(steps=best[1], losses=final_losses, used_adapted=used,
                     criterion=report.get("criterion"), hidden=hidden if mode == "tailor" else None,
                     tailor_kind=tailor_kind if mode == "tailor" else None)
    secs["total"] = time.perf_counter() - t0
    report["seconds"] = secs
    report["used_adapted"] = used
    return AdaptResult(cand if used else model, used, report, cand)


def _swift_masks(net: PansharpenNet, batches: Sequence[_Batch], degrade: MTFDegrade, w: LossWeights, r: int,
                 fraction: float) -> dict[str, Tensor]:
    """Boolean masks of the top ``fraction`` of ``net``'s weights by ``|grad * weight|`` of the loss."""
    net.zero_grad(set_to_none=True)
    n_all = sum(b.n for b in batches)
    for b in batches:
        lms_in, ms_in = _net_inputs(net, b)
        out = net(b.pan, lms_in, ms_in)
        loss, _ = adaptation_losses(out, b, degrade, LossWeights(w.spectral, w.spatial, 0.0), r)
        (loss * (b.n / n_all)).backward()
    scores = {n: (p.grad * p.detach()).abs() if p.grad is not None else torch.zeros_like(p)
              for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    k = max(1, int(round(fraction * flat.numel())))
    # ties broken by position (stable sort) so the count is exact and deterministic
    order = torch.sort(flat, descending=True, stable=True).indices[:k]
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[order] = True
    masks: dict[str, Tensor] = {}
    i = 0
    for n, s in scores.items():
        masks[n] = chosen[i:i + s.numel()].view_as(s)
        i += s.numel()
    return masks


def _decide(base: PansharpenNet, cand: AdaptedModel, ho_b: Sequence[_Batch], info: _SensorInfo, r: int,
            best_step: int, min_gain: float, z: float, spectral_tol: float, phase: str,
            report: dict[str, Any]) -> bool:
    """Score the base and the candidate on the held-out patches; fill ``report``; True to adapt."""
    if best_step == 0:
        report["reason"] = "no training step improved the held-out loss (or steps=0): the original is kept"
        if ho_b:
            report["criterion"] = _criterion(base, cand, ho_b, info, r, phase)[0]
        return False
    if not ho_b:
        report["reason"] = "no held-out patches (holdout=0): the adaptation is used unchecked"
        return True
    crit, diffs = _criterion(base, cand, ho_b, info, r, phase)
    report["criterion"] = crit
    d = np.asarray(diffs["J"])
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    margin = max(min_gain, z * se)
    gain = -float(d.mean())
    worse_spat = float(np.mean(diffs["D_rho"]))
    e0 = float(crit["before"]["R_ERGAS"])
    rel_ergas = float(crit["after"]["R_ERGAS"]) / e0 - 1.0 if e0 > 0 else 0.0
    report["decision"] = {"gain_J": gain, "margin": margin, "se": se, "rise_D_rho": worse_spat,
                          "rel_change_R_ERGAS": rel_ergas, "spectral_tol": spectral_tol}
    if gain <= margin:
        report["reason"] = f"held-out J improved by {gain:.4f} <= noise margin {margin:.4f}: the original is kept"
        return False
    if rel_ergas > spectral_tol:
        report["reason"] = (f"J improved by {gain:.4f} but the spectral consistency got worse (R-ERGAS "
                            f"{100 * rel_ergas:+.1f}% > {100 * spectral_tol:.0f}%): the original is kept")
        return False
    wb, wa = crit.get("wald_before"), crit.get("wald_after")
    rel_wald = float(wa["ERGAS"]) / float(wb["ERGAS"]) - 1.0 if wb and wa and wb["ERGAS"] > 0 else 0.0
    report["decision"]["rel_change_wald_ERGAS"] = rel_wald
    if rel_wald > spectral_tol:
        report["reason"] = (f"J improved by {gain:.4f} but the reduced-scale (Wald) error got worse (ERGAS "
                            f"{100 * rel_wald:+.1f}% > {100 * spectral_tol:.0f}%): the original is kept")
        return False
    if worse_spat > margin:
        report["reason"] = (f"J improved by {gain:.4f} but D_rho rose by {worse_spat:.4f} (> {margin:.4f}, "
                            "blur): the original is kept")
        return False
    report["reason"] = f"held-out J improved by {gain:.4f} > noise margin {margin:.4f}: adapted"
    return True


def _criterion(base: PansharpenNet, cand: AdaptedModel, ho_b: Sequence[_Batch], info: _SensorInfo,
               r: int, phase: str) -> tuple[dict[str, Any], dict[str, list[float]]]:
    before: list[dict[str, float]] = []
    after: list[dict[str, float]] = []
    ref_b: list[dict[str, float]] = []
    ref_a: list[dict[str, float]] = []
    tgt_b: list[dict[str, float]] = []
    tgt_a: list[dict[str, float]] = []
    with torch.no_grad():
        for b in ho_b:
            lms_in, ms_in = _net_inputs(base, b)
            assert b.out0 is not None
            if cand.mode == "tailor":
                assert b.feat is not None
                out1 = cand.head(b.feat, b.pan, lms_in, ms_in)
            else:
                out1 = cand(b.pan, lms_in, ms_in)
            for i, item in enumerate(b.items):
                pan = np.asarray(item["pan"], dtype=np.float64)
                h, w = pan.shape
                pan_lp = interp23tap(imresize_bicubic(pan, 1.0 / r), r)[:h, :w]
                o0, o1 = b.out0[i].float().cpu().numpy(), out1[i].float().cpu().numpy()
                before.append(patch_criterion(o0, item, info.gnyq, r, pan_lp, phase))
                after.append(patch_criterion(o1, item, info.gnyq, r, pan_lp, phase))
                if item.get("ref") is not None:
                    ref_b.append(_reference_scores(o0, item, r))
                    ref_a.append(_reference_scores(o1, item, r))
                if item.get("target") is not None:
                    tgt_b.append(_reference_scores(o0, item, r, "target"))
                    tgt_a.append(_reference_scores(o1, item, r, "target"))
    crit: dict[str, Any] = {"before": _mean_scores(before), "after": _mean_scores(after), "n": len(before)}
    if ref_b:
        crit["reference_before"] = _mean_scores(ref_b)
        crit["reference_after"] = _mean_scores(ref_a)
    if tgt_b:
        crit["wald_before"] = _mean_scores(tgt_b)
        crit["wald_after"] = _mean_scores(tgt_a)
    diffs = {k: [a[k] - b_[k] for a, b_ in zip(after, before, strict=True)] for k in before[0]} if before else {}
    return crit, diffs
