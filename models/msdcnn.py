"""MSDCNN: multiscale and multidepth CNN.

Q. Yuan, Y. Wei, X. Meng, H. Shen, L. Zhang, "A Multiscale and Multidepth Convolutional Neural
Network for Remote Sensing Imagery Pan-Sharpening", IEEE JSTARS 11(3):978-989, 2018.
State-dict layout of the DLPan-Toolbox re-implementation.

Two branches on ``cat(lms, pan)``:

* deep: ``conv1`` 7x7 (60) -> multiscale block (``conv2_1/2/3`` 3/5/7, 3x20, + skip) ->
  ``conv3`` 3x3 (30) -> multiscale block (``conv4_1/2/3``, 3x10, + skip) -> ``conv5`` 5x5 (B);
* shallow: ``shallow1`` 9x9 (64) -> ``shallow2`` 1x1 (32) -> ``shallow3`` 5x5 (B);

output ``relu(conv5(.) + shallow3(.))`` (no residual on ``lms``).

Tailor point: the two final convolutions ``conv5`` and ``shallow3`` together; ``feat`` is the
concatenation of their inputs, ``cat(deep 30 ch, shallow 32 ch)`` = ``(N, 62, H, W)``, and
``head`` splits it, applies both, sums and applies the final ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PansharpenNet


class MSDCNN(PansharpenNet):
    """MSDCNN (``conv1`` ... ``conv5``, ``shallow1`` ... ``shallow3``)."""

    input_convention = "lms"

    def __init__(self, n_bands: int) -> None:
        super().__init__()
        self.n_bands = n_bands
        cin = n_bands + 1
        self.conv1 = nn.Conv2d(cin, 60, 7, padding=3)
        self.conv2_1 = nn.Conv2d(60, 20, 3, padding=1)
        self.conv2_2 = nn.Conv2d(60, 20, 5, padding=2)
        self.conv2_3 = nn.Conv2d(60, 20, 7, padding=3)
        self.conv3 = nn.Conv2d(60, 30, 3, padding=1)
        self.conv4_1 = nn.Conv2d(30, 10, 3, padding=1)
        self.conv4_2 = nn.Conv2d(30, 10, 5, padding=2)
        self.conv4_3 = nn.Conv2d(30, 10, 7, padding=3)
        self.conv5 = nn.Conv2d(30, n_bands, 5, padding=2)
        self.shallow1 = nn.Conv2d(cin, 64, 9, padding=4)
        self.shallow2 = nn.Conv2d(64, 32, 1)
        self.shallow3 = nn.Conv2d(32, n_bands, 5, padding=2)
        self._deep_channels = 30
        self.feat_channels = 30 + 32

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        lms = self._check_lms(pan, lms)
        x = torch.cat([lms, pan], dim=1)
        a = F.relu(self.conv1(x))
        a = F.relu(torch.cat([self.conv2_1(a), self.conv2_2(a), self.conv2_3(a)], dim=1) + a)
        b = F.relu(self.conv3(a))
        b = F.relu(torch.cat([self.conv4_1(b), self.conv4_2(b), self.conv4_3(b)], dim=1) + b)
        s = F.relu(self.shallow2(F.relu(self.shallow1(x))))
        return torch.cat([b, s], dim=1)

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        deep, shallow = feat[:, : self._deep_channels], feat[:, self._deep_channels :]
        return F.relu(self.conv5(deep) + self.shallow3(shallow))


def build_msdcnn(n_bands: int) -> MSDCNN:
    """MSDCNN for ``n_bands`` bands (random weights)."""
    return MSDCNN(n_bands)
