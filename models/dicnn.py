"""DiCNN: detail-injection CNN (the DiCNN1 variant).

L. He, Y. Rao, J. Li, J. Chanussot, A. Plaza, J. Zhu, B. Li, "Pansharpening via Detail
Injection Based Convolutional Neural Networks", IEEE JSTARS 12(4):1188-1204, 2019.
State-dict layout of the DLPan-Toolbox re-implementation (``dicnn1.pth``).

Three 3x3 convolutions (ReLU after the first two) on ``cat(lms, pan)`` predict the details that
are added to ``lms``.

Tailor point: ``conv3`` (64 -> B); ``feat`` is the ReLU output of ``conv2``, ``(N, 64, H, W)``;
``head`` = ``conv3(feat) + lms``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PansharpenNet


class DiCNN(PansharpenNet):
    """DiCNN1 (``conv1``, ``conv2``, ``conv3``)."""

    input_convention = "lms"
    head_conv = "conv3"

    def __init__(self, n_bands: int, channels: int = 64) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.feat_channels = channels
        self.conv1 = nn.Conv2d(n_bands + 1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels, n_bands, 3, padding=1)

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        lms = self._check_lms(pan, lms)
        x = F.relu(self.conv1(torch.cat([lms, pan], dim=1)))
        return F.relu(self.conv2(x))

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        assert lms is not None
        return self.conv3(feat) + lms


def build_dicnn(n_bands: int, **kw: int) -> DiCNN:
    """DiCNN1 for ``n_bands`` bands (random weights)."""
    return DiCNN(n_bands, **kw)
