"""The uniform interface of the deep pansharpening networks.

Every network of this package is a :class:`PansharpenNet`: a pure-torch ``nn.Module`` with

* ``forward(pan, lms, ms) -> out``
* ``features(pan, lms, ms) -> feat`` and ``head(feat, pan, lms, ms) -> out``, with
  ``forward(...) == head(features(...), ...)`` exactly (``forward`` is implemented that way).

Tensors (all normalised by the caller, i.e. divided by the checkpoint's scale, 2047 for the
11-bit data the published checkpoints were trained on):

* ``pan`` ``(N, 1, H, W)`` the panchromatic band;
* ``lms`` ``(N, B, H, W)`` the multispectral image upsampled to the PAN grid (the toolbox's 23-tap
  interpolator); ``None`` is accepted by networks that do not use it (``input_convention="lr"``);
* ``ms`` ``(N, B, H/r, W/r)`` the low-resolution multispectral image; ``None`` is accepted by
  networks that do not use it (``input_convention="lms"``);
* ``out`` ``(N, B, H, W)`` in the same units.

``feat`` is exactly the tensor that enters the network's final channel-mapping layer (its
*tailor point*), of shape ``(N, feat_channels, H, W)``: the place where a test-time adaptation
module can be inserted. ``head`` applies that final layer and any residual addition. Each
architecture documents which layer that is (also in :attr:`ArchSpec.tailor_point`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

InputConvention = Literal["lms", "lr", "highpass"]

#: Input conventions: what the network needs besides the PAN.
INPUT_CONVENTIONS: dict[str, str] = {
    "lms": "MS upsampled to the PAN grid (23-tap interpolator) given as `lms`; `ms` unused",
    "lr": "low-resolution MS given as `ms` and upsampled inside the network; `lms` unused",
    "highpass": "PanNet: high-passes of the low-resolution `ms` and of `pan` computed inside, "
    "`lms` added back at the output; needs both `lms` and `ms`",
}


@dataclass(frozen=True)
class ArchSpec:
    """What the rest of the project needs to know about an architecture.

    Attributes:
        name: registry key, e.g. ``"fusionnet"``.
        builder: ``builder(n_bands, **kw) -> PansharpenNet`` (random weights).
        input_convention: ``"lms"``, ``"lr"`` or ``"highpass"`` (see :data:`INPUT_CONVENTIONS`).
        receptive_field: radius in PAN pixels of the local support of one output pixel (the
            convolutions, plus the in-network upsampling or high-pass filters); the context a
            tiler must add around each tile. For ``global_context`` networks it covers only the
            convolutional part.
        size_multiple: the PAN height and width must be multiples of this (the ratio for networks
            that take the low-resolution MS).
        tailor_point: the layer whose input ``features`` returns.
        default_scale: the value the published checkpoints divide the data by.
        ratio: PAN/MS resolution ratio the network was designed for.
        global_context: the output depends on statistics of the whole input (global pooling,
            channel covariances), so results depend on the tile: use tiles as large as possible.
        band_key: state-dict key whose dimension ``band_dim`` is the band count (used by detection).
        band_dim: see ``band_key``.
        reference: the paper.
        aliases: other names accepted by ``build`` (e.g. checkpoint file stems).
    """

    name: str
    builder: Callable[..., PansharpenNet]
    input_convention: InputConvention
    receptive_field: int
    size_multiple: int
    tailor_point: str
    default_scale: float = 2047.0
    ratio: int = 4
    global_context: bool = False
    band_key: str = ""
    band_dim: int = 0
    reference: str = ""
    aliases: tuple[str, ...] = field(default=())


class PansharpenNet(nn.Module):
    """Base class of the networks: uniform ``forward``/``features``/``head`` interface.

    Subclasses set :attr:`n_bands`, :attr:`feat_channels`, :attr:`ratio` and implement
    :meth:`features` and :meth:`head`.
    """

    n_bands: int
    feat_channels: int
    ratio: int = 4
    input_convention: InputConvention = "lms"
    #: dotted name of the ``nn.Conv2d`` through which :meth:`features` enters :meth:`head`, when
    #: nothing else in the head reads the features (``head(feat) = conv(feat) + ...``): a linear
    #: adaptation of the features can then be folded into that convolution's weights. None: no such
    #: convolution.
    head_conv: str | None = None

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        """The tensor that enters the final channel-mapping layer, ``(N, feat_channels, H, W)``."""
        raise NotImplementedError

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        """The final channel-mapping layer and the residual additions, ``(N, B, H, W)``."""
        raise NotImplementedError

    def forward(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        """Pansharpen: ``head(features(pan, lms, ms), pan, lms, ms)``."""
        return self.head(self.features(pan, lms, ms), pan, lms, ms)

    # -- input checks shared by the subclasses ------------------------------------------------

    def _check_pan(self, pan: Tensor) -> tuple[int, int, int]:
        if pan.dim() != 4 or pan.shape[1] != 1:
            raise ValueError(f"pan must be (N, 1, H, W), got {tuple(pan.shape)}")
        n, _, h, w = pan.shape
        return n, h, w

    def _check_lms(self, pan: Tensor, lms: Tensor | None) -> Tensor:
        n, h, w = self._check_pan(pan)
        if lms is None:
            raise ValueError(f"{type(self).__name__} needs `lms` (the MS upsampled to the PAN grid)")
        if tuple(lms.shape) != (n, self.n_bands, h, w):
            raise ValueError(
                f"lms must be (N, {self.n_bands}, H, W) = {(n, self.n_bands, h, w)}, got {tuple(lms.shape)}"
            )
        return lms

    def _check_ms(self, pan: Tensor, ms: Tensor | None) -> Tensor:
        n, h, w = self._check_pan(pan)
        r = self.ratio
        if ms is None:
            raise ValueError(f"{type(self).__name__} needs `ms` (the low-resolution MS)")
        if h % r or w % r:
            raise ValueError(f"{type(self).__name__}: PAN size {h}x{w} must be a multiple of {r}")
        if tuple(ms.shape) != (n, self.n_bands, h // r, w // r):
            raise ValueError(
                f"ms must be (N, {self.n_bands}, H/{r}, W/{r}) = "
                f"{(n, self.n_bands, h // r, w // r)}, got {tuple(ms.shape)}"
            )
        return ms


# -- small shared operations --------------------------------------------------------------------


def box_highpass(x: Tensor, size: int = 5) -> Tensor:
    """``x`` minus its ``size x size`` mean, per channel, mirror borders (edge not repeated).

    The high-pass PanNet is trained on (OpenCV ``boxFilter``, normalised, default border
    ``BORDER_REFLECT_101``). Inputs smaller than ``size//2 + 1`` pixels fall back to replicate
    borders.
    """
    p = size // 2
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > p else "replicate"
    xp = F.pad(x, (p, p, p, p), mode=mode)
    k = x.new_full((c, 1, size, size), 1.0 / (size * size))
    return x - F.conv2d(xp, k, groups=c)


def bicubic_up(ms: Tensor, ratio: int) -> Tensor:
    """PyTorch bicubic upsampling by ``ratio`` (``align_corners=False``), as the ADWM code does."""
    return F.interpolate(ms, scale_factor=ratio, mode="bicubic", align_corners=False)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _tensor_signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def state_signature(sd: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a state dict."""
    return {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
