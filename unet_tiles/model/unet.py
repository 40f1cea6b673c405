"""The U-Net of Ronneberger et al. (2015), 2D or 3D, valid or same padding.

Shape arithmetic (``halo``, ``valid_size``) is ``model/geometry.py``'s, without
torch, and every UNet checks at construction that its layers are what that
arithmetic assumes, so it cannot drift from the architecture::

    input n ──conv3x3──conv3x3──┐ skip (centre-cropped) ┌──conv3x3──conv3x3── output
                     pool 2     │                       │ up-conv 2
                       ...      └──────── ... ──────────┘

A valid-padding network maps ``n`` to ``n - 2 * halo`` and needs every pooling
input to be even; a same-padding one maps ``n`` to ``n`` for multiples of
``2**depth`` and its ``halo`` is its receptive-field radius, the context the
tiler gives it so that cropped tiles nearly match a whole-image run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import nn

# The architecture's description and its shape arithmetic live without torch
# (the driver plans a run from them); UNet checks itself against the arithmetic.
from unet_tiles.model.config import UNetConfig
from unet_tiles.model.geometry import UNetGeometry

if TYPE_CHECKING:
    from collections.abc import Sequence


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with ReLU (optionally batch-normalised)."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, padding: str, norm: str) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        batchnorm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        pad = 1 if padding == "same" else 0
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers.append(conv(c_in, out_ch, kernel_size=3, padding=pad))
            if norm == "batch":
                layers.append(batchnorm(out_ch))
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def _convs(self) -> list[nn.Conv2d | nn.Conv3d]:
        return [layer for layer in self.layers if isinstance(layer, nn.Conv2d | nn.Conv3d)]

    def context(self) -> int:
        """Pixels of context per axis this block consumes (its receptive-field growth)."""
        return sum(int(conv.kernel_size[0]) - 1 for conv in self._convs())

    def shrink(self) -> int:
        """Pixels lost per axis by this block (0 for same padding)."""
        return self.context() - sum(2 * int(conv.padding[0]) for conv in self._convs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # type: ignore[no-any-return]


def _center_crop(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    slices: list[slice] = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], spatial, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class UNet(nn.Module):
    """U-Net taking raw pixels as float32 ``(N, C, *S)`` to logits ``(N, K, *S')``."""

    # Buffers (registered in __init__), declared so type checkers know them as tensors.
    input_offset: torch.Tensor
    input_scale: torch.Tensor

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.dims
        channels = [config.base_channels * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        c_in = config.in_channels
        for c_out in channels:
            self.encoders.append(ConvBlock(dims, c_in, c_out, config.padding, config.norm))
            c_in = c_out
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        upconv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.pool = pool(2)
        self.pool_factor = 2
        # The paper's dropout sits at the end of the contracting path.
        self.dropout = (nn.Dropout2d if dims == 2 else nn.Dropout3d)(config.dropout)
        self.upconvs = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.depth)):
            self.upconvs.append(upconv(channels[level + 1], channels[level], 2, stride=2))
            self.decoders.append(
                ConvBlock(dims, 2 * channels[level], channels[level], config.padding, config.norm)
            )
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.head = conv(channels[0], config.classes, kernel_size=1)
        offset = _per_channel(config.input_offset, config.in_channels)
        scale = _per_channel(config.input_scale, config.in_channels)
        shape = (1, config.in_channels) + (1,) * dims
        self.register_buffer("input_offset", torch.tensor(offset).reshape(shape), persistent=False)
        self.register_buffer("input_scale", torch.tensor(scale).reshape(shape), persistent=False)
        self.geometry = UNetGeometry(config)
        self._check_geometry()
        self.halo: tuple[int, ...] = self.geometry.halo

    # -- shape arithmetic (model/geometry.py) ------------------------------

    @property
    def divisor(self) -> int:
        """Tiles start at multiples of this from the padded origin (the pooling grid)."""
        return self.geometry.divisor

    def output_size(self, n: int) -> int | None:
        """Output size along one axis for input size ``n``, or None if ``n`` is invalid."""
        return self.geometry.output_size(n)

    def valid_size(self, n: int) -> int:
        """The smallest valid input size ``>= n`` along one axis."""
        return self.geometry.valid_size(n)

    def _check_geometry(self) -> None:
        # The arithmetic is kept without torch for the driver; the modules built
        # here must be what it assumes, or the tiling would be wrong.
        blocks: list[ConvBlock] = [*self.encoders, *self.decoders]
        for block in blocks:
            if (block.context(), block.shrink()) != (self.geometry.block_context,
                                                     self.geometry.block_shrink):
                raise RuntimeError("UNet's conv blocks differ from model/geometry.py")
        if self.pool_factor != 2:
            raise RuntimeError("UNet's pooling differs from model/geometry.py")

    # -- forward ----------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for n in x.shape[2:]:
            if self.output_size(int(n)) is None:
                raise ValueError(
                    f"invalid input shape {tuple(x.shape[2:])} for this U-Net: {n} is not a "
                    f"valid size (next valid size {self.valid_size(int(n))}, "
                    f"sizes step by {self.divisor})"
                )
        x = (x - self.input_offset) * self.input_scale
        skips = []
        for encoder in list(self.encoders)[:-1]:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.encoders[-1](x))
        for upconv, decoder in zip(self.upconvs, self.decoders, strict=True):
            x = upconv(x)
            x = torch.cat([_center_crop(skips.pop(), x.shape[2:]), x], dim=1)
            # Layer by layer, with no other reference to each input, so the skip, the
            # up-convolution and the concatenation are freed as soon as they are
            # consumed: at inference a level's peak is about 4 of its maps (the
            # concatenation's inputs and output), not 6, and that peak is what
            # bounds the tile a worker's memory allows (tests/test_unet.py).
            for layer in cast("ConvBlock", decoder).layers:
                x = layer(x)
        return self.head(x)  # type: ignore[no-any-return]


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    return [float(v) for v in values] * (channels if len(values) == 1 else 1)


def init_weights(model: UNet, seed: int | None = None) -> UNet:
    """He initialisation (the paper's choice for ReLU networks)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            fan_in = module.weight[0].numel() if not isinstance(
                module, nn.ConvTranspose2d | nn.ConvTranspose3d
            ) else module.weight.shape[0] * module.weight[0, 0].numel()
            std = (2.0 / fan_in) ** 0.5
            with torch.no_grad():
                module.weight.normal_(0.0, std, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def build_unet(config: UNetConfig, seed: int | None = None) -> UNet:
    """A randomly (He-)initialised U-Net in eval mode."""
    return init_weights(UNet(config), seed).eval()


# UNetConfig is re-exported: "from unet_tiles.model.unet import UNetConfig, build_unet".
__all__ = ["ConvBlock", "UNet", "UNetConfig", "build_unet", "init_weights"]
