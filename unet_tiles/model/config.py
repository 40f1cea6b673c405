"""A U-Net's architecture and input normalisation: ``UNetConfig`` (no torch).

The driver plans, validates and records a run from this and the weights file's
header alone (``model/files.check_model``); only workers build the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from unet_tiles.errors import ModelFormatError

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


__all__ = ["MAX_CHANNELS", "MAX_DEPTH", "NORMS", "PADDINGS", "UNetConfig"]
