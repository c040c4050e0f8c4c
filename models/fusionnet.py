"""FusionNet: detail injection from the PAN-minus-MS difference with a residual network.

L.-J. Deng, G. Vivone, C. Jin, J. Chanussot, "Detail Injection-Based Deep Convolutional Neural
Networks for Pansharpening", IEEE TGRS 59(8):6995-7010, 2021. State-dict layout of the
DLPan-Toolbox (its checkpoints store the four residual blocks twice, as ``res1..res4`` and as
``backbone.0..3``; :func:`~.registry.clean_state_dict` drops the ``resN`` aliases).

``conv1`` 3x3 on ``pan.repeat(B) - lms`` (B -> 32), ReLU, four residual blocks
(``conv20`` 3x3, ReLU, ``conv21`` 3x3, + skip), ``conv3`` 3x3 (32 -> B); output ``lms + conv3``.

Tailor point: ``conv3``; ``feat`` is the output of the residual backbone, ``(N, 32, H, W)``;
``head`` = ``conv3(feat) + lms``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PansharpenNet


class ResBlock(nn.Module):
    """``x + conv21(relu(conv20(x)))`` with 3x3 convolutions (toolbox key names)."""

    def __init__(self, channels: int, slope: float = 0.0) -> None:
        super().__init__()
        self.conv20 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv21 = nn.Conv2d(channels, channels, 3, padding=1)
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv20(x)
        if torch.is_grad_enabled():
            h = F.leaky_relu(h, self.slope) if self.slope else F.relu(h)
            return x + self.conv21(h)
        # inference: activation and residual in place (no autograd graph to keep): two feature-map
        # sized buffers less to allocate and fill per block; the same values bit for bit
        h = F.leaky_relu_(h, self.slope) if self.slope else F.relu_(h)
        return self.conv21(h).add_(x)


class FusionNet(PansharpenNet):
    """FusionNet (``conv1``, ``backbone.{0..3}.conv20/conv21``, ``conv3``)."""

    input_convention = "lms"
    head_conv = "conv3"

    def __init__(self, n_bands: int, channels: int = 32, n_blocks: int = 4) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.feat_channels = channels
        self.conv1 = nn.Conv2d(n_bands, channels, 3, padding=1)
        self.backbone = nn.Sequential(*[ResBlock(channels) for _ in range(n_blocks)])
        self.conv3 = nn.Conv2d(channels, n_bands, 3, padding=1)

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        lms = self._check_lms(pan, lms)
        h = self.conv1(pan - lms)  # pan broadcasts over the bands
        return self.backbone(F.relu(h) if torch.is_grad_enabled() else F.relu_(h))

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        assert lms is not None
        out = self.conv3(feat)
        return out + lms if torch.is_grad_enabled() else out.add_(lms)


def build_fusionnet(n_bands: int, **kw: int) -> FusionNet:
    """FusionNet for ``n_bands`` bands (random weights)."""
    return FusionNet(n_bands, **kw)
