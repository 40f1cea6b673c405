"""A U-Net's shape arithmetic and its weights' names and shapes, from its config (no torch).

Every conv block is two 3x3 (3x3x3) convolutions: it consumes 2 px of context
per side and axis, and loses them with valid padding (none with same padding);
every pooling halves an even size and every up-convolution doubles it. ``UNet``
checks at construction that its modules agree (model/unet.py), and
``tests/test_unet.py`` that ``expected_tensors`` is its ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from unet_tiles.model.config import UNetConfig

CONVS_PER_BLOCK = 2
KERNEL = 3
POOL = 2


@dataclass(frozen=True)
class UNetGeometry:
    """``halo``, ``divisor``, ``output_size`` and ``valid_size`` of a config's U-Net."""

    config: UNetConfig

    @property
    def block_context(self) -> int:
        """Pixels of context per axis one conv block consumes."""
        return CONVS_PER_BLOCK * (KERNEL - 1)

    @property
    def block_shrink(self) -> int:
        """Pixels lost per axis by one conv block (0 for same padding)."""
        return self.block_context if self.config.padding == "valid" else 0

    @property
    def divisor(self) -> int:
        """Tiles start at multiples of this from the padded origin (the pooling grid)."""
        return int(POOL**self.config.depth)

    @property
    def halo(self) -> tuple[int, ...]:
        # Walking with each block's full context (what a valid convolution would
        # lose) gives the receptive-field radius for either padding; for valid
        # padding it is exactly the pixels lost per side.
        m = 1
        while (out := self._walk(m, lambda: self.block_context)) is None:
            m += 1
        return ((m - out) // 2,) * self.config.dims

    def output_size(self, n: int) -> int | None:
        """Output size along one axis for input size ``n``, or None if ``n`` is invalid."""
        return self._walk(n, lambda: self.block_shrink)

    def valid_size(self, n: int) -> int:
        """The smallest valid input size ``>= n`` along one axis."""
        m = max(int(n), 1)
        while self.output_size(m) is None:
            m += 1
        return m

    def _walk(self, n: int, loss: Callable[[], int]) -> int | None:
        size = n
        for _ in range(self.config.depth):
            size -= loss()
            if size <= 0 or size % POOL:
                return None
            size //= POOL
        size -= loss()
        if size <= 0:
            return None
        for _ in range(self.config.depth):
            size = size * POOL - loss()
            if size <= 0:
                return None
        return size


def expected_tensors(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` names and shapes of ``UNet(config)``: what its weights file
    must hold."""
    dims = config.dims
    kernel = (KERNEL,) * dims
    channels = [config.base_channels * 2**level for level in range(config.depth + 1)]
    tensors: dict[str, tuple[int, ...]] = {}

    def conv_block(prefix: str, c_in: int, c_out: int) -> None:
        # layers: conv, [batchnorm], relu, conv, [batchnorm], relu
        step = 3 if config.norm == "batch" else 2
        for k, inputs in enumerate((c_in, c_out)):
            at = f"{prefix}.layers.{k * step}"
            tensors[f"{at}.weight"] = (c_out, inputs, *kernel)
            tensors[f"{at}.bias"] = (c_out,)
            if config.norm == "batch":
                norm = f"{prefix}.layers.{k * step + 1}"
                for name in ("weight", "bias", "running_mean", "running_var"):
                    tensors[f"{norm}.{name}"] = (c_out,)
                tensors[f"{norm}.num_batches_tracked"] = ()

    c_in = config.in_channels
    for level, c_out in enumerate(channels):
        conv_block(f"encoders.{level}", c_in, c_out)
        c_in = c_out
    for k, level in enumerate(reversed(range(config.depth))):
        tensors[f"upconvs.{k}.weight"] = (channels[level + 1], channels[level], *(POOL,) * dims)
        tensors[f"upconvs.{k}.bias"] = (channels[level],)
        conv_block(f"decoders.{k}", 2 * channels[level], channels[level])
    tensors["head.weight"] = (config.classes, channels[0], *(1,) * dims)
    tensors["head.bias"] = (config.classes,)
    return tensors


__all__ = ["UNetGeometry", "expected_tensors"]
