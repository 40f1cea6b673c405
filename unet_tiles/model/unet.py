"""The U-Net of Ronneberger et al. (2015), 2D or 3D, valid or same padding.

Shape arithmetic (``halo``, ``valid_size``) is derived by walking the layers the
network is built from, so it cannot drift from the architecture::

    input n ──conv3x3──conv3x3──┐ skip (centre-cropped) ┌──conv3x3──conv3x3── output
                     pool 2     │                       │ up-conv 2
                       ...      └──────── ... ──────────┘

A valid-padding network maps ``n`` to ``n - 2 * halo`` and needs every pooling
input to be even; a same-padding one maps ``n`` to ``n`` for multiples of
``2**depth`` and its ``halo`` is its receptive-field radius, the context the
tiler gives it so that cropped tiles nearly match a whole-image run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unet_tiles.errors import ModelFormatError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

PADDINGS = ("valid", "same")
NORMS = ("none", "batch")
MAX_DEPTH = 8
MAX_CHANNELS = 2048


@dataclass(frozen=True)
class UNetConfig:
    """Architecture and input normalisation of a U-Net.

    ``input_offset``/``input_scale`` hold one value per input channel; forward
    computes ``(x - offset) * scale``. They are fixed at training time so every
    tile sees the same function of its pixels.
    """

    dims: int = 2
    in_channels: int = 1
    classes: int = 2
    depth: int = 4
    base_channels: int = 64
    padding: str = "valid"
    norm: str = "none"
    dropout: float = 0.0
    input_offset: tuple[float, ...] = (0.0,)
    input_scale: tuple[float, ...] = (1.0,)
    class_names: tuple[str, ...] = ()
    training: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        def bad(what: str) -> ModelFormatError:
            return ModelFormatError(f"invalid model config: {what}")

        if self.dims not in (2, 3):
            raise bad(f"dims must be 2 or 3, got {self.dims}")
        if self.padding not in PADDINGS:
            raise bad(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.norm not in NORMS:
            raise bad(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not 1 <= self.depth <= MAX_DEPTH:
            raise bad(f"depth must be 1..{MAX_DEPTH}, got {self.depth}")
        for name in ("in_channels", "classes", "base_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_CHANNELS:
                raise bad(f"{name} must be an integer in 1..{MAX_CHANNELS}, got {value!r}")
        if self.classes < 2:
            raise bad(f"classes must be at least 2 (background + one class), got {self.classes}")
        if self.base_channels * 2**self.depth > 16 * MAX_CHANNELS:
            raise bad(
                f"base_channels * 2**depth = {self.base_channels * 2**self.depth} is too large"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise bad(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("input_offset", "input_scale"):
            value = getattr(self, name)
            if len(value) not in (1, self.in_channels):
                raise bad(f"{name} needs 1 or {self.in_channels} values, got {len(value)}")
        if self.class_names and len(self.class_names) != self.classes:
            raise bad(f"{len(self.class_names)} class_names for {self.classes} classes")

    def with_(self, **changes: Any) -> UNetConfig:
        return replace(self, **changes)


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
        self.halo: tuple[int, ...] = (self._halo_1d(),) * dims

    # -- shape arithmetic -------------------------------------------------

    @property
    def divisor(self) -> int:
        """Tiles start at multiples of this from the padded origin (the pooling grid)."""
        return int(self.pool_factor**self.config.depth)

    def output_size(self, n: int) -> int | None:
        """Output size along one axis for input size ``n``, or None if ``n`` is invalid."""
        return self._walk(n, lambda block: block.shrink())

    def valid_size(self, n: int) -> int:
        """The smallest valid input size ``>= n`` along one axis."""
        m = max(int(n), 1)
        while self.output_size(m) is None:
            m += 1
        return m

    def _walk(self, n: int, loss: Callable[[ConvBlock], int]) -> int | None:
        size = n
        encoders: list[ConvBlock] = list(self.encoders)  # type: ignore[arg-type]
        decoders: list[ConvBlock] = list(self.decoders)  # type: ignore[arg-type]
        for encoder in encoders[:-1]:
            size -= loss(encoder)
            if size <= 0 or size % self.pool_factor:
                return None
            size //= self.pool_factor
        size -= loss(encoders[-1])
        if size <= 0:
            return None
        for decoder in decoders:
            size = size * self.pool_factor - loss(decoder)
            if size <= 0:
                return None
        return size

    def _halo_1d(self) -> int:
        # Walking with each block's full context (what a valid convolution
        # would lose) gives the receptive-field radius for either padding;
        # for valid padding it is exactly the pixels lost per side.
        m = 1
        while (out := self._walk(m, lambda block: block.context())) is None:
            m += 1
        return (m - out) // 2

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
        for upconv, decoder, skip in zip(self.upconvs, self.decoders, reversed(skips), strict=True):
            x = upconv(x)
            x = decoder(torch.cat([_center_crop(skip, x.shape[2:]), x], dim=1))
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
