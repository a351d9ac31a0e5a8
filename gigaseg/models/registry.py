"""The model registry: one small builder per architecture, one door to build.

2-D networks come from segmentation-models-pytorch (``encoder_weights=None``:
weights come from checkpoints, never from the network at run time).
"""

from __future__ import annotations

from collections.abc import Callable

import segmentation_models_pytorch as smp
from torch import nn

from gigaseg.errors import ModelError
from gigaseg.models.card import ModelCard

Builder = Callable[[ModelCard], nn.Module]
MODELS: dict[str, Builder] = {}
SPATIAL_DIMS: dict[str, int] = {}  # architecture -> 2 or 3


def register_model(name: str, *, dims: int = 2) -> Callable[[Builder], Builder]:
    def wrap(builder: Builder) -> Builder:
        MODELS[name] = builder
        SPATIAL_DIMS[name] = dims
        return builder

    return wrap


def create_model(card: ModelCard) -> nn.Module:
    """Build the untrained network that ``card`` describes."""
    try:
        builder = MODELS[card.arch]
    except KeyError:
        raise ModelError(f"unknown architecture {card.arch!r}; available: {', '.join(sorted(MODELS))}") from None
    if SPATIAL_DIMS[card.arch] != card.spatial_dims:
        raise ModelError(
            f"{card.arch} is a {SPATIAL_DIMS[card.arch]}-D network but the model card says "
            f"spatial_dims {card.spatial_dims}"
        )
    try:
        return builder(card)
    except (TypeError, ValueError, KeyError) as e:
        raise ModelError(f"cannot build {card.arch} from its card: {e}") from None


def output_stride(model: nn.Module) -> int:
    """The factor a tile's side must be a multiple of (1 for fully local models)."""
    encoder = getattr(model, "encoder", None)
    return int(getattr(encoder, "output_stride", 0) or getattr(model, "output_stride", 1))


SMP_NAMES = {
    "unet": "U-Net",
    "unetplusplus": "U-Net++",
    "fpn": "Feature Pyramid Network",
    "pspnet": "PSPNet (pyramid pooling)",
    "deeplabv3": "DeepLabV3 (ASPP)",
    "deeplabv3plus": "DeepLabV3+ (ASPP + decoder)",
    "linknet": "LinkNet",
    "manet": "MA-Net",
    "pan": "Pyramid Attention Network",
    "upernet": "UPerNet",
}


def _smp_builder(arch: str) -> Builder:
    def build(card: ModelCard) -> nn.Module:
        return smp.create_model(
            arch,
            encoder_name=card.encoder or "resnet18",
            encoder_weights=None,
            in_channels=card.in_channels,
            classes=1 if card.outputs == "sigmoid" else card.num_classes,  # one channel: a binary mask
            **card.arch_kwargs,
        )

    build.__doc__ = f"{SMP_NAMES.get(arch, arch)}, segmentation-models-pytorch (encoder: resnet18 by default)"
    return build


for _arch in (
    "unet",
    "unetplusplus",
    "fpn",
    "pspnet",
    "deeplabv3",
    "deeplabv3plus",
    "linknet",
    "manet",
    "pan",
    "upernet",
):
    register_model(_arch)(_smp_builder(_arch))


class ConvNet(nn.Module):
    """One convolution: the cheapest possible model, for tests and overhead benchmarks.

    With ``kernel_size=1`` it is a per-pixel classifier (an FCN head alone), whose
    tiled output must equal its whole-image output exactly.
    """

    output_stride = 1

    def __init__(self, in_channels: int, classes: int, *, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, classes, kernel_size, padding=kernel_size // 2)

    def forward(self, x):  # noqa: D102 - nn.Module protocol
        return self.conv(x)


@register_model("conv")
def conv(card: ModelCard) -> nn.Module:
    """A single 2-D convolution (kernel_size from the card, default 1)."""
    return ConvNet(card.in_channels, card.num_classes, **card.arch_kwargs)


class ConvNet3d(nn.Module):
    """A stack of 3-D convolutions: the cheapest 3-D model, for tests and benchmarks.

    ``layers - 1`` hidden convolutions of ``width`` channels with ReLU, then one
    to the classes. The receptive field reaches ``layers * (kernel_size // 2)``
    voxels from the centre, so with ``kernel_size=1`` tiled inference equals
    whole-volume inference exactly, and with 3 it does wherever every tile
    covering a voxel also covers that reach.
    """

    output_stride = 1

    def __init__(
        self, in_channels: int, classes: int, *, kernel_size: int = 1, layers: int = 1, width: int = 8
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(layers - 1):
            blocks += [nn.Conv3d(channels, width, kernel_size, padding=kernel_size // 2), nn.ReLU()]
            channels = width
        blocks.append(nn.Conv3d(channels, classes, kernel_size, padding=kernel_size // 2))
        self.net = nn.Sequential(*blocks)

    def forward(self, x):  # noqa: D102 - nn.Module protocol
        return self.net(x)


@register_model("conv3d", dims=3)
def conv3d(card: ModelCard) -> nn.Module:
    """3-D convolutions (kernel_size, layers, width from the card; defaults 1, 1, 8)."""
    if card.spatial_dims != 3:
        raise ValueError(f"conv3d is a 3-D model: its card needs spatial_dims 3, not {card.spatial_dims}")
    return ConvNet3d(card.in_channels, card.num_classes, **card.arch_kwargs)


def default_card(arch: str, *, classes: int = 4) -> ModelCard:
    """The card ``gigaseg models`` describes an architecture with: default arguments,
    3 input bands in 2-D (one channel in 3-D)."""
    dims = SPATIAL_DIMS[arch]
    names = [f"class{i}" for i in range(classes)]
    return ModelCard(arch=arch, in_channels=3 if dims == 2 else 1, classes=names, spatial_dims=dims)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_models() -> list[dict[str, object]]:
    """Name, spatial dims, parameter count (for its default card) and summary of every model."""
    rows = []
    for name in sorted(MODELS):
        card = default_card(name)
        doc = (MODELS[name].__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": name,
                "dims": card.spatial_dims,
                "parameters": parameter_count(create_model(card)),
                "about": doc[0] if doc else "",
            }
        )
    return rows
