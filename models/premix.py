"""PreMix: pansharpening by predictive filtering with element-wise feature mixing (our small version).

Y. Cui, P. Liu, Y. Ma, L. Chen, M. Xu, X. Guo, "Pansharpening via predictive filtering with
element-wise feature mixing", ISPRS Journal of Photogrammetry and Remote Sensing 219:22-37, 2025
(doi:10.1016/j.isprsjprs.2024.10.029).

Our own compact implementation of the two ideas of the paper, at a single scale (the paper's
"huge" model cascades three of these over three scales and over high-pass / equalised inputs):

* **Element-wise feature mixing** (EWFM): an MS branch and a PAN branch are encoded separately;
  a mask ``m = tanh(relu6(res(f_ms + f_pan)))`` in ``[0, 1)`` decides, element by element, how
  much of each branch's feature is exchanged with the other (``f_ms <- (1-m) f_ms + m f_pan`` and
  symmetrically). Optionally the mask is thresholded into a hard swap (the paper's ``beta``).
* **Predictive filtering**: instead of regressing pixels, the network predicts for every pixel and
  band a ``K x K`` kernel that filters ``lms`` (from the MS-branch features) and another that
  filters the PAN (from the PAN-branch features); the output is the sum of the two filtered images.

At initialisation the MS kernels are the identity and the PAN kernels zero, so an untrained
network returns ``lms`` exactly: training starts from plain interpolation.

Tailor point: the two kernel-predicting convolutions ``pf_ms.conv`` and ``pf_pan.conv``;
``feat`` is ``cat(f_ms, f_pan)``, ``(N, 2*embed_dim, H, W)``, and ``head`` predicts the kernels
from its halves and applies them to ``lms`` and ``pan``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PansharpenNet


class _ResBlock(nn.Module):
    """``x + conv2(relu(conv1(x)))`` (bias-free k x k convolutions)."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def _encoder(cin: int, c: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, c, k, padding=k // 2), nn.ReLU(), _ResBlock(c, k))


class ElementwiseMixing(nn.Module):
    """EWFM: exchange features between the MS and PAN branches under a learnt element-wise mask."""

    def __init__(self, channels: int, k: int = 3, hard_threshold: float | None = None) -> None:
        super().__init__()
        self.mask_net = _ResBlock(channels, k)
        self.hard_threshold = hard_threshold

    def mask(self, f_ms: Tensor, f_pan: Tensor) -> Tensor:
        """The mixing mask in ``[0, 1)`` (or ``{0, 1}`` with a hard threshold)."""
        m = torch.tanh(F.relu6(self.mask_net(f_ms + f_pan)))
        if self.hard_threshold is not None:
            m = (m > self.hard_threshold).to(m.dtype)
        return m

    def forward(self, f_ms: Tensor, f_pan: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask(f_ms, f_pan)
        d = f_pan - f_ms
        return f_ms + m * d, f_pan - m * d


class _MixBlock(nn.Module):
    def __init__(self, c_ms: int, c_pan: int, c: int, k: int, hard_threshold: float | None) -> None:
        super().__init__()
        self.enc_ms = _encoder(c_ms, c, k)
        self.enc_pan = _encoder(c_pan, c, k)
        self.mix = ElementwiseMixing(c, k, hard_threshold)

    def forward(self, f_ms: Tensor, f_pan: Tensor) -> tuple[Tensor, Tensor]:
        return self.mix(self.enc_ms(f_ms), self.enc_pan(f_pan))


class PredictiveFilter(nn.Module):
    """Predict a ``K x K`` kernel per pixel and band from features; filter an image with them.

    The image has ``n_bands`` channels or one (then shared by all bands); borders are mirrored.
    """

    def __init__(self, channels: int, n_bands: int, kernel: int = 3, identity_init: bool = False) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.kernel = kernel
        self.conv = nn.Conv2d(channels, n_bands * kernel * kernel, kernel, padding=kernel // 2)
        nn.init.zeros_(self.conv.weight)
        with torch.no_grad():
            bias = torch.zeros(n_bands, kernel * kernel)
            if identity_init:
                bias[:, (kernel * kernel) // 2] = 1.0
            self.conv.bias.copy_(bias.flatten())

    def forward(self, feat: Tensor, img: Tensor) -> Tensor:
        n, _, h, w = feat.shape
        kk = self.kernel * self.kernel
        p = self.kernel // 2
        kernels = self.conv(feat).view(n, self.n_bands, kk, h, w)
        mode = "reflect" if min(h, w) > p else "replicate"
        patches = F.unfold(F.pad(img, (p, p, p, p), mode=mode), self.kernel).view(n, img.shape[1], kk, h, w)
        return (kernels * patches).sum(dim=2)


class PreMix(PansharpenNet):
    """Single-scale PreMix on ``(lms, pan)``: mixing blocks, then two predictive filters."""

    input_convention = "lms"

    def __init__(
        self,
        n_bands: int,
        embed_dim: int = 32,
        n_blocks: int = 3,
        kernel_size: int = 3,
        pf_kernel: int = 3,
        hard_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.embed_dim = embed_dim
        self.feat_channels = 2 * embed_dim
        c, k = embed_dim, kernel_size
        self.blocks = nn.ModuleList(
            [_MixBlock(n_bands, 1, c, k, hard_threshold)]
            + [_MixBlock(c, c, c, k, hard_threshold) for _ in range(n_blocks - 1)]
        )
        self.pf_ms = PredictiveFilter(c, n_bands, pf_kernel, identity_init=True)
        self.pf_pan = PredictiveFilter(c, n_bands, pf_kernel)

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        f_ms: Tensor = self._check_lms(pan, lms)
        f_pan = pan
        for block in self.blocks:
            f_ms, f_pan = block(f_ms, f_pan)
        return torch.cat([f_ms, f_pan], dim=1)

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        assert lms is not None
        c = self.embed_dim
        return self.pf_ms(feat[:, :c], lms) + self.pf_pan(feat[:, c:], pan)


def build_premix(n_bands: int, **kw: object) -> PreMix:
    """Single-scale PreMix for ``n_bands`` bands (identity-initialised filters)."""
    return PreMix(n_bands, **kw)  # type: ignore[arg-type]
