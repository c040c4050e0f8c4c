"""PNN: pansharpening by convolutional neural networks.

G. Masi, D. Cozzolino, L. Verdoliva, G. Scarpa, "Pansharpening by Convolutional Neural
Networks", Remote Sensing 8(7):594, 2016. Layout of the DLPan-Toolbox re-implementation
(L.-J. Deng et al., "Machine learning in pansharpening: a benchmark, from shallow to deep
networks", IEEE GRSM 2022), whose checkpoints this module loads.

Three *valid* (unpadded) convolutions 9x9 -> 5x5 -> 5x5 on ``cat(lms, pan)``; the output is the
sharpened MS itself (no residual). The network shrinks its input by 8 pixels on each side; the
toolbox trains on cropped targets. To return a full-size image we replicate-pad the input by 6
pixels before ``conv1`` and the features by 2 pixels before ``conv3`` (the original MATLAB PNN
pads its input by replication too); pixels 8 or more from the border are exactly the network's.

Tailor point: ``conv3`` (the last 5x5 convolution, 32 -> B channels); ``feat`` is the ReLU
output of ``conv2``, ``(N, 32, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PansharpenNet


class PNN(PansharpenNet):
    """PNN with the DLPan-Toolbox state-dict layout (``conv1``, ``conv2``, ``conv3``)."""

    input_convention = "lms"
    head_conv = "conv3"

    def __init__(self, n_bands: int, channels: int = 64, mid_channels: int = 32) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.feat_channels = mid_channels
        self.conv1 = nn.Conv2d(n_bands + 1, channels, kernel_size=9)
        self.conv2 = nn.Conv2d(channels, mid_channels, kernel_size=5)
        self.conv3 = nn.Conv2d(mid_channels, n_bands, kernel_size=5)

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        lms = self._check_lms(pan, lms)
        x = F.pad(torch.cat([lms, pan], dim=1), (6, 6, 6, 6), mode="replicate")
        x = F.relu(self.conv1(x))
        return F.relu(self.conv2(x))

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        return self.conv3(F.pad(feat, (2, 2, 2, 2), mode="replicate"))


def build_pnn(n_bands: int, **kw: int) -> PNN:
    """PNN for ``n_bands`` bands (random weights)."""
    return PNN(n_bands, **kw)
