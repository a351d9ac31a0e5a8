"""Networks segmentation-models-pytorch does not have: FCN, and the 3-D ones.

- ``fcn``: an smp encoder, a 1x1-conv classifier on its last feature map, and
  bilinear upsampling to the input size (Long et al.'s FCN-32s; dilate the
  encoder with ``encoder_output_stride`` 8 or 16 for finer maps).
- ``unet3d``: MONAI's residual U-Net, the field's standard 3-D U-Net.
- ``aspp3d``: no maintained library has a 3-D DeepLab, so a small one lives
  here: a 3-D conv encoder, an ASPP bottleneck (dilated 3-D convs at several
  rates plus image pooling) and a DeepLabV3+-style decoder with skips.

Building one registers it (``gigaseg.models`` imports this module).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import cast

import torch

with warnings.catch_warnings():  # timm >= 1.0.22 marks its own modules with the deprecated torch.jit.interface
    warnings.filterwarnings("ignore", "`torch.jit.interface` is deprecated", FutureWarning)
    import segmentation_models_pytorch as smp
import torch.nn.functional as F
from torch import nn

from gigaseg.models.card import ModelCard
from gigaseg.models.registry import register_model


class FCN(nn.Module):
    """Fully convolutional network: encoder -> 1x1 conv -> upsample to the input size."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        # smp encoders list their feature maps' channels; nn.Module types unknown attributes as Tensor | Module.
        out_channels = cast(Sequence[int], encoder.out_channels)
        self.classifier = nn.Conv2d(out_channels[-1], classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.classifier(self.encoder(x)[-1])
        return F.interpolate(scores, size=x.shape[2:], mode="bilinear", align_corners=False)


@register_model("fcn")
def fcn(card: ModelCard) -> nn.Module:
    """FCN: smp encoder, 1x1-conv classifier, bilinear upsampling."""
    kwargs = {"encoder_depth": 5, "encoder_output_stride": 32, **card.arch_kwargs}
    encoder = smp.encoders.get_encoder(
        card.encoder or "resnet18",
        in_channels=card.in_channels,
        depth=kwargs.pop("encoder_depth"),
        weights=None,
        output_stride=kwargs.pop("encoder_output_stride"),
    )
    if kwargs:
        raise TypeError(f"unexpected arch_kwargs {sorted(kwargs)} (fcn takes encoder_depth, encoder_output_stride)")
    return FCN(encoder, card.num_classes)


@register_model("unet3d", dims=3)
def unet3d(card: ModelCard) -> nn.Module:
    """MONAI 3-D residual U-Net (batch norm, so tiles do not depend on their own statistics)."""
    from monai.networks.nets import UNet  # imported here: MONAI is slow to import

    kwargs = {
        "channels": (16, 32, 64, 128),
        "strides": (2, 2, 2),
        "num_res_units": 2,
        "norm": "batch",
        **card.arch_kwargs,
    }
    model = UNet(spatial_dims=3, in_channels=card.in_channels, out_channels=card.num_classes, **kwargs)
    model.output_stride = math.prod(max(s) if isinstance(s, Sequence) else s for s in kwargs["strides"])
    return model


def conv_block(cin: int, cout: int, *, stride: int = 1, dilation: int = 1, kernel: int = 3) -> nn.Sequential:
    """3-D convolution, batch norm, ReLU."""
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP3d(nn.Module):
    """Atrous spatial pyramid pooling in 3-D: a 1x1x1 conv, dilated 3x3x3 convs, image pooling."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_block(cin, cout, kernel=1)] + [conv_block(cin, cout, dilation=r) for r in rates]
        )
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Conv3d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = conv_block(cout * (len(rates) + 2), cout, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLab3d(nn.Module):
    """3-D encoder (one level per entry of ``channels``), ASPP bottleneck, decoder with skips.

    Upsampling goes to the skip's exact size, so any input size works; tiles that
    are multiples of ``output_stride`` keep the grid aligned.
    """

    def __init__(
        self, in_channels: int, classes: int, *, channels: Sequence[int] = (16, 32, 64), rates=(2, 4, 6)
    ) -> None:
        super().__init__()
        channels = list(channels)
        self.output_stride = 2 ** (len(channels) - 1)
        stem = nn.Sequential(conv_block(in_channels, channels[0]), conv_block(channels[0], channels[0]))
        self.encoder = nn.ModuleList([stem])
        for cin, cout in zip(channels, channels[1:], strict=False):
            self.encoder.append(nn.Sequential(conv_block(cin, cout, stride=2), conv_block(cout, cout)))
        self.aspp = ASPP3d(channels[-1], channels[-1], rates)
        deep, shallow = channels[:0:-1], channels[-2::-1]
        self.decoder = nn.ModuleList(conv_block(d + s, s) for d, s in zip(deep, shallow, strict=True))
        self.head = nn.Conv3d(channels[0], classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        x = self.aspp(x)
        for block, skip in zip(self.decoder, skips[-2::-1], strict=True):
            up = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([up, skip], dim=1))
        return self.head(x)


@register_model("aspp3d", dims=3)
def aspp3d(card: ModelCard) -> nn.Module:
    """3-D DeepLab: conv encoder, ASPP bottleneck (dilated 3-D convs + image pooling), decoder."""
    return DeepLab3d(card.in_channels, card.num_classes, **card.arch_kwargs)
