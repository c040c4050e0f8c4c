"""PanNet: a deep network architecture for pan-sharpening, trained in the high-pass domain.

J. Yang, X. Fu, Y. Hu, Y. Huang, X. Ding, J. Paisley, "PanNet: A Deep Network Architecture for
Pan-Sharpening", ICCV 2017. State-dict layout of the DLPan-Toolbox re-implementation (its
checkpoints store the residual blocks twice, as ``res1..res4`` and ``backbone.0..3``).

Inputs are high-passes (the image minus its 5x5 box mean, mirror borders, as the toolbox's
``get_edge``): ``ms_hp`` of the *low-resolution* MS, upsampled by the transposed convolution
``deconv`` (8x8, stride 4), and ``pan_hp``. ``conv1`` 3x3 on ``cat(deconv(ms_hp), pan_hp)``
(B+1 -> 32), ReLU, four residual blocks, ``conv3`` 3x3 (32 -> B); output ``lms + conv3``.
The high-passes are computed inside the module from ``ms`` and ``pan``, so callers pass the
same ``(pan, lms, ms)`` as to every other network.

Tailor point: ``conv3``; ``feat`` is the output of the residual backbone, ``(N, 32, H, W)``;
``head`` = ``conv3(feat) + lms``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PansharpenNet, box_highpass
from .fusionnet import ResBlock


class PanNet(PansharpenNet):
    """PanNet (``deconv``, ``conv1``, ``backbone.{0..3}.conv20/conv21``, ``conv3``)."""

    input_convention = "highpass"
    head_conv = "conv3"

    def __init__(self, n_bands: int, channels: int = 32, n_blocks: int = 4, ratio: int = 4) -> None:
        super().__init__()
        if ratio != 4:
            raise ValueError("PanNet's transposed convolution is built for ratio 4")
        self.n_bands = n_bands
        self.ratio = ratio
        self.feat_channels = channels
        self.deconv = nn.ConvTranspose2d(n_bands, n_bands, kernel_size=8, stride=4, padding=2)
        self.conv1 = nn.Conv2d(n_bands + 1, channels, 3, padding=1)
        self.backbone = nn.Sequential(*[ResBlock(channels) for _ in range(n_blocks)])
        self.conv3 = nn.Conv2d(channels, n_bands, 3, padding=1)

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        self._check_lms(pan, lms)
        ms = self._check_ms(pan, ms)
        x = torch.cat([self.deconv(box_highpass(ms)), box_highpass(pan)], dim=1)
        return self.backbone(F.relu(self.conv1(x)))

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        assert lms is not None
        return self.conv3(feat) + lms


def build_pannet(n_bands: int, **kw: int) -> PanNet:
    """PanNet for ``n_bands`` bands (random weights)."""
    return PanNet(n_bands, **kw)
