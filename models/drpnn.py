"""DRPNN: deep residual pansharpening neural network.

Y. Wei, Q. Yuan, H. Shen, L. Zhang, "Boosting the Accuracy of Multispectral Image Pansharpening
by Learning a Deep Residual Network", IEEE GRSL 14(10):1795-1799, 2017.
State-dict layout of the DLPan-Toolbox re-implementation.

Eleven 7x7 convolutions: ``conv1`` (B+1 -> 32), eight ``backbone`` blocks (32 -> 32, ReLU),
``conv2`` (32 -> B+1) whose output is added to the input ``cat(lms, pan)``, and ``conv3``
(B+1 -> B) that maps the result to the output (no residual on ``lms``).

Tailor point: ``conv3``; ``feat`` is ``cat(lms, pan) + conv2(...)``, ``(N, B+1, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PansharpenNet


class _Block(nn.Module):
    """7x7 convolution + ReLU (key ``conv2``, as in the toolbox)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(channels, channels, 7, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(x))


class DRPNN(PansharpenNet):
    """DRPNN (``conv1``, ``backbone.{0..7}.conv2``, ``conv2``, ``conv3``)."""

    input_convention = "lms"
    head_conv = "conv3"

    def __init__(self, n_bands: int, channels: int = 32, n_blocks: int = 8) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.feat_channels = n_bands + 1
        self.conv1 = nn.Conv2d(n_bands + 1, channels, 7, padding=3)
        self.backbone = nn.Sequential(*[_Block(channels) for _ in range(n_blocks)])
        self.conv2 = nn.Conv2d(channels, n_bands + 1, 7, padding=3)
        self.conv3 = nn.Conv2d(n_bands + 1, n_bands, 7, padding=3)

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        lms = self._check_lms(pan, lms)
        x = torch.cat([lms, pan], dim=1)
        return x + self.conv2(self.backbone(F.relu(self.conv1(x))))

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        return self.conv3(feat)


def build_drpnn(n_bands: int, **kw: int) -> DRPNN:
    """DRPNN for ``n_bands`` bands (random weights)."""
    return DRPNN(n_bands, **kw)
