"""ADWM: the adaptive dual-level weighting mechanism, and the BWNet networks built with it.

J. Huang, H. Chen, J. Ren, S. Peng, L.-J. Deng, "A General Adaptive Dual-level Weighting Mechanism for Remote
Sensing Pansharpening", CVPR 2025 (code: Jie-1203/ADWM, MIT licence; development history in
Kndy666/BWNet). This is our own implementation, laid out so that the published WorldView-3
checkpoints ``bwnet_{fusionnet,lagconv,lgpnet}_wv3.pth`` load with ``strict=True``.

The mechanism, inserted between a backbone and its output layer:

* **CACW** (correlation-aware covariance weighting, :class:`CACW`): the covariance of a set of
  variables over samples, normalised into a correlation matrix, is fed row by row to a small MLP
  that turns each variable's correlation profile into a weight.
* **IFW** (intra-feature weighting): for each of the ``L`` intermediate feature maps of the
  backbone, a CACW over its channels (samples = pixels) weights the channels, reducing redundancy.
* **CFW** (cross-feature weighting): the ``L`` feature maps, globally average-pooled, are the
  variables of another CACW (samples = channels) whose outputs, soft-maxed over ``L``, weight the
  IFW-weighted maps; their sum is the fused feature (:class:`DualLevelWeighting`).

BWNet variants (all take the low-resolution MS, upsample it by 4 with PyTorch bicubic
interpolation inside, and add it back at the output):

* ``bwnet_fusionnet``: FusionNet backbone on ``pan - ms_up`` (32 channels, 4 residual blocks
  with LeakyReLU);
* ``bwnet_lagconv``: LAGConv backbone (Jin et al., "LAGConv: Local-context Adaptive Convolution
  Kernels with Global Harmonic Bias for Pansharpening", AAAI 2022) on ``cat(pan, ms_up)``,
  48 channels, 6 residual blocks with batch normalisation;
* ``bwnet_lgpnet``: LGPConv backbone (Zhao et al., "LGPConv: Learnable Gaussian Perturbation
  Convolution for Lightweight Pansharpening", IJCAI 2023) on ``cat(pan, ms_up)``, 32 channels,
  4 residual blocks; the CFW softmax is effectively uniform in the checkpoint (its MLP weights
  decayed to ~0) and a learnt per-channel offset (``temperature``) is added to the fused feature.

Centering of the covariance (uncertain detail, see :class:`CACW`): the published code has used
both a per-sample mean over the variables and a per-variable mean over the samples. The
defaults follow the code that matches each checkpoint's layout and were confirmed on real
WorldView-2 data at reduced resolution (ERGAS, five 128x128 crops): ``fusionnet`` and
``lagconv`` centre over the variables (the ``lagconv`` alternative is clearly worse; for
``fusionnet`` the two are within a few percent), ``lgpnet`` (whose layout belongs to the
code version with ``temperature``) centres over the samples (the alternative is much worse).
``build_bwnet_*(center=...)`` overrides it.

Tailor point (all variants): ``to_output`` (the output convolution(s)); ``feat`` is the fused
feature produced by the dual-level weighting (``bw_output``), ``(N, C, H, W)``; ``head`` =
``to_output(feat) + bicubic_up(ms)``.

Global context: CACW uses statistics over the whole input (and LAGConv's bias a global average
pool), so the output of a tile depends on the whole tile, not only on a neighbourhood.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PansharpenNet, bicubic_up
from .fusionnet import ResBlock

Centering = Literal["variables", "samples"]

#: Smallest feature norm used as a divisor when normalising covariances (a constant or all-zero
#: feature would otherwise give 0/0).
_NORM_EPS = 1e-12


class CACW(nn.Module):
    """Correlation-aware covariance weighting.

    Input ``x`` of shape ``(N, D, S)``: ``D`` variables observed over ``S`` samples. The centred
    Gram matrix ``G = Xc Xc^T`` is normalised by the outer product of the variables' norms
    (a correlation matrix when centred over the samples) and each of its ``D`` rows is mapped by
    ``cov_mlp`` (Linear D->D, LeakyReLU, Linear D->hidden, LeakyReLU, Linear hidden->out) to
    ``out`` weights. Returns ``(N, D, out)``.

    ``center``: ``"variables"`` subtracts, for each sample, the mean over the variables (what the
    published BWNet code does, ``x - x.mean(-1)`` on ``(N, S, D)`` data); ``"samples"`` subtracts
    each variable's mean over the samples (the textbook covariance).
    """

    def __init__(self, dim: int, hidden: int, out: int = 1, center: Centering = "variables") -> None:
        super().__init__()
        self.center = center
        # Index 1 is the (inactive at inference) dropout slot of the original, kept so the
        # parameter keys are cov_mlp.0/3/5.
        self.cov_mlp = nn.Sequential(
            nn.Linear(dim, dim),
            nn.Identity(),
            nn.LeakyReLU(),
            nn.Linear(dim, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, out),
        )

    def correlation(self, x: Tensor) -> Tensor:
        """The normalised ``(N, D, D)`` matrix fed to the MLP."""
        x = x - x.mean(dim=1 if self.center == "variables" else 2, keepdim=True)
        gram = x @ x.transpose(1, 2)
        norm = x.norm(dim=2).clamp_min(_NORM_EPS)
        return gram / (norm.unsqueeze(2) * norm.unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.cov_mlp(self.correlation(x))


class DualLevelWeighting(nn.Module):
    """IFW + CFW over ``n_features`` feature maps of ``channels`` channels.

    Keys: ``CovBlockList.{l}`` (IFW, one CACW per feature map), ``global_covblock`` (CFW) and,
    optionally, ``temperature`` (a learnt ``(1, C, 1, 1)`` offset added to the fused feature).
    """

    def __init__(
        self, channels: int, n_features: int, hidden: int, *, temperature: bool = False, center: Centering = "variables"
    ) -> None:
        super().__init__()
        self.CovBlockList = nn.ModuleList([CACW(channels, hidden, 1, center=center) for _ in range(n_features)])
        self.global_covblock = CACW(n_features, n_features, 1, center=center)
        if temperature:
            self.temperature = nn.Parameter(torch.zeros(1, channels, 1, 1))
        else:
            self.register_parameter("temperature", None)

    def weights(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``(ifw, cfw)``: channel weights ``(N, L, C)`` and feature weights ``(N, L)``."""
        ifw = torch.stack([blk(f.flatten(2))[..., 0] for blk, f in zip(self.CovBlockList, feats, strict=True)], dim=1)
        pooled = torch.stack([f.mean(dim=(2, 3)) for f in feats], dim=1)  # (N, L, C)
        cfw = torch.softmax(self.global_covblock(pooled)[..., 0], dim=1)
        return ifw, cfw

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        ifw, cfw = self.weights(feats)
        coef = ifw * cfw.unsqueeze(2)  # (N, L, C)
        out = sum(coef[:, i, :, None, None] * f for i, f in enumerate(feats))
        assert isinstance(out, Tensor)
        if self.temperature is not None:
            out = out + self.temperature
        return out


# -- convolutions of the backbones ----------------------------------------------------------------


class LAGConv2d(nn.Module):
    """LAGConv: a k x k convolution whose taps are modulated per pixel, plus a global bias.

    ``attention1`` (k x k conv -> 1x1 -> 1x1, LeakyReLU between, sigmoid) predicts, at every
    pixel, ``k*k`` tap weights shared by all input channels; the zero-padded neighbourhood is
    multiplied by them before the convolution with ``weight``. ``attention3`` (global average
    pool, 1x1, LeakyReLU, 1x1) gives a per-image bias ("global harmonic bias").
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        k = kernel_size
        self.kernel_size = k
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, k, k))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.attention1 = nn.Sequential(
            nn.Conv2d(in_channels, k * k, k, padding=k // 2),
            nn.LeakyReLU(),
            nn.Conv2d(k * k, k * k, 1),
            nn.LeakyReLU(),
            nn.Conv2d(k * k, k * k, 1),
            nn.Sigmoid(),
        )
        self.attention3 = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1),
            nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        p = k // 2
        b, n, h, w = x.shape
        taps = self.attention1(x)
        xp = F.pad(x, (p, p, p, p))
        # One tap at a time (memory stays O(input)): shifted input x tap weight, then the
        # (out x in) matrix of that tap. A plain matmul beats a 1x1 convolution here on CPU.
        y: Tensor | None = None
        for i in range(k):
            for j in range(k):
                t = i * k + j
                shifted = (xp[:, :, i : i + h, j : j + w] * taps[:, t : t + 1]).reshape(b, n, h * w)
                term = torch.matmul(self.weight[:, :, i, j], shifted)
                y = term if y is None else y + term
        assert y is not None
        return y.view(b, -1, h, w) + self.attention3(x)


class LGPConv(nn.Module):
    """LGPConv-style light convolution: point-wise, depth-wise k x k, plus a learnt perturbation.

    ``y = depth_wise(point_wise(x))``; output ``y + weight_2 * (weight (*) y)`` where ``weight``
    is a bias-free depth-wise k x k kernel and ``weight_2`` a bias-free 1x1 mixing (both start
    near zero, so the block starts as the plain separable convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        k = kernel_size
        self.kernel_size = k
        self.out_channels = out_channels
        self.point_wise = nn.Conv2d(in_channels, out_channels, 1)
        self.depth_wise = nn.Conv2d(out_channels, out_channels, k, padding=k // 2, groups=out_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, 1, k, k) * 1e-4)
        self.weight_2 = nn.Parameter(torch.randn(out_channels, out_channels, 1, 1) * 1e-4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.depth_wise(self.point_wise(x))
        pert = F.conv2d(y, self.weight, padding=self.kernel_size // 2, groups=self.out_channels)
        return y + F.conv2d(pert, self.weight_2)


class _LAGBlock(nn.Module):
    """``x + conv2(lrelu(bn1(conv1(x))))`` with LAGConv convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = LAGConv2d(channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = LAGConv2d(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.leaky_relu(self.bn1(self.conv1(x))))


class _LGPBlock(nn.Module):
    """``x + relu(conv2(relu(conv1(x))))`` with LGPConv convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = LGPConv(channels, channels)
        self.conv2 = LGPConv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.relu(self.conv2(F.relu(self.conv1(x))))


# -- the networks ---------------------------------------------------------------------------------


class BWNet(PansharpenNet):
    """A backbone whose intermediate features are fused by :class:`DualLevelWeighting`.

    ``raise_dim`` maps the input to the feature width, each of ``layers`` produces one of the
    ``L`` features that ``bw_output`` fuses, ``to_output`` maps the fused feature to the bands.
    ``input_mode`` ``"diff"`` feeds ``pan - ms_up`` (B channels), ``"concat"`` feeds
    ``cat(pan, ms_up)`` (B+1 channels).
    """

    input_convention = "lr"
    head_conv = "to_output.0"

    def __init__(
        self,
        n_bands: int,
        raise_dim: nn.Module,
        layers: Sequence[nn.Module],
        bw_output: DualLevelWeighting,
        to_output: nn.Module,
        feat_channels: int,
        input_mode: Literal["diff", "concat"],
        ratio: int = 4,
    ) -> None:
        super().__init__()
        self.n_bands = n_bands
        self.ratio = ratio
        self.feat_channels = feat_channels
        self.input_mode = input_mode
        self.raise_dim = raise_dim
        self.layers = nn.ModuleList(layers)
        self.bw_output = bw_output
        self.to_output = to_output

    def upsample(self, ms: Tensor) -> Tensor:
        """The in-network upsampling of the low-resolution MS (PyTorch bicubic)."""
        return bicubic_up(ms, self.ratio)

    def backbone_features(self, pan: Tensor, ms: Tensor | None) -> list[Tensor]:
        """The ``L`` intermediate features that the dual-level weighting fuses."""
        ms = self._check_ms(pan, ms)
        up = self.upsample(ms)
        x = pan - up if self.input_mode == "diff" else torch.cat([pan, up], dim=1)
        x = self.raise_dim(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats

    def features(self, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        return self.bw_output(self.backbone_features(pan, ms))

    def head(self, feat: Tensor, pan: Tensor, lms: Tensor | None, ms: Tensor | None) -> Tensor:
        ms = self._check_ms(pan, ms)
        return self.to_output(feat) + self.upsample(ms)


def build_bwnet_fusionnet(
    n_bands: int = 8, channels: int = 32, n_blocks: int = 4, hidden: int | None = None, center: Centering = "variables"
) -> BWNet:
    """ADWM + FusionNet backbone (``bwnet_fusionnet_wv3.pth``: 8 bands, 32 channels, 4 blocks)."""
    return BWNet(
        n_bands,
        raise_dim=nn.Sequential(nn.Conv2d(n_bands, channels, 3, padding=1), nn.LeakyReLU()),
        layers=[ResBlock(channels, slope=0.01) for _ in range(n_blocks)],
        bw_output=DualLevelWeighting(channels, n_blocks, hidden or channels, center=center),
        to_output=nn.Sequential(nn.Conv2d(channels, n_bands, 3, padding=1)),
        feat_channels=channels,
        input_mode="diff",
    )


def build_bwnet_lagconv(
    n_bands: int = 8, channels: int = 48, n_blocks: int = 6, hidden: int | None = None, center: Centering = "variables"
) -> BWNet:
    """ADWM + LAGConv backbone (``bwnet_lagconv_wv3.pth``: 8 bands, 48 channels, 6 blocks)."""
    return BWNet(
        n_bands,
        raise_dim=nn.Sequential(LAGConv2d(n_bands + 1, channels), nn.LeakyReLU()),
        layers=[_LAGBlock(channels) for _ in range(n_blocks)],
        bw_output=DualLevelWeighting(channels, n_blocks, hidden or round(channels * 0.8), center=center),
        to_output=nn.Sequential(LAGConv2d(channels, n_bands)),
        feat_channels=channels,
        input_mode="concat",
    )


def build_bwnet_lgpnet(
    n_bands: int = 8,
    channels: tuple[int, int, int] = (20, 32, 16),
    n_blocks: int = 4,
    hidden: int | None = None,
    center: Centering = "samples",
) -> BWNet:
    """ADWM + LGPConv backbone (``bwnet_lgpnet_wv3.pth``: 8 bands, widths 20/32/16, 4 blocks)."""
    c1, c2, c3 = channels
    return BWNet(
        n_bands,
        raise_dim=nn.Sequential(LGPConv(n_bands + 1, c1), LGPConv(c1, c2), nn.LeakyReLU()),
        layers=[_LGPBlock(c2) for _ in range(n_blocks)],
        bw_output=DualLevelWeighting(c2, n_blocks, hidden or round(c2 * 0.6), temperature=True, center=center),
        to_output=nn.Sequential(LGPConv(c2, c3), LGPConv(c3, n_bands), LGPConv(n_bands, n_bands)),
        feat_channels=c2,
        input_mode="concat",
    )
