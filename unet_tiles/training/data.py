"""Training data and checkpoints on disk.

Images and masks are read whole (training uses a few annotated images) from
zarr arrays, TIFF or PNG files. Checkpoints for resuming are safetensors plus
JSON, written by the trainer into its own output directory: nothing is ever
unpickled::

    OUT/config.json, OUT/weights.safetensors      best model (the model contract)
    OUT/checkpoint/model.safetensors              latest weights
    OUT/checkpoint/optimizer.safetensors          optimiser tensors
    OUT/checkpoint/state.json                     step, recipe, history, optimiser scalars
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.errors import InputError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
CHECKPOINT_DIR = "checkpoint"


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files and zarr stores named directly, or the image files inside a plain folder."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if _is_zarr(path) or path.is_file():
            found.append(path)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"{path}: no zarr store and no {IMAGE_SUFFIXES} files inside")
            found.extend(files)
        else:
            raise InputError(f"{path}: does not exist; give image files or zarr stores")
    return found


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))


def read_array(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a whole array from a zarr store (array or one-array group), TIFF or PNG."""
    path = Path(path)
    if _is_zarr(path):
        import zarr

        node: Any = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Group):
            arrays = sorted(name for name, _ in node.arrays())
            if len(arrays) != 1:
                raise InputError(
                    f"{path}: zarr group holds arrays {arrays}; name one as {path}/<array>"
                )
            node = node[arrays[0]]
        return np.asarray(node[...])
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    if suffix == ".png":
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img)
    raise InputError(f"{path}: unsupported format; use zarr, TIFF or PNG")


def as_channels_first(image: np.ndarray, dims: int, where: str) -> np.ndarray:
    """``(*spatial)``, ``(C, *spatial)`` or 2D channels-last RGB -> float32 ``(C, *spatial)``."""
    if image.ndim == dims:
        image = image[None]
    elif image.ndim == dims + 1 and dims == 2 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        image = np.moveaxis(image[..., :3], -1, 0)  # PNG/TIFF RGB(A): drop alpha
    elif image.ndim != dims + 1:
        raise InputError(f"{where}: shape {image.shape} is not a {dims}D image (with channels)")
    return image.astype(np.float32)


@dataclass(frozen=True)
class Pair:
    """One training or validation example in memory."""

    name: str
    image: np.ndarray  # (C, *spatial) float32
    mask: np.ndarray  # spatial integers (instances or classes, see the recipe)


def load_pairs(images: Sequence[str | os.PathLike[str]], masks: Sequence[str | os.PathLike[str]],
               dims: int) -> list[Pair]:
    """Pair images with masks in sorted order and check their shapes."""
    image_paths, mask_paths = expand_paths(images), expand_paths(masks)
    if len(image_paths) != len(mask_paths):
        raise InputError(
            f"{len(image_paths)} images but {len(mask_paths)} masks; give one mask per image"
        )
    pairs = []
    for image_path, mask_path in zip(image_paths, mask_paths, strict=True):
        image = as_channels_first(read_array(image_path), dims, str(image_path))
        mask = read_array(mask_path)
        if mask.ndim != dims or not np.issubdtype(mask.dtype, np.integer):
            raise InputError(f"{mask_path}: a mask must be a {dims}D integer array, got "
                             f"{mask.dtype} {mask.shape}")
        if mask.shape != image.shape[1:]:
            raise InputError(f"{mask_path}: shape {mask.shape} differs from its image "
                             f"{image_path} {image.shape[1:]}; masks must match images")
        pairs.append(Pair(str(image_path), image, mask))
    channels = {p.image.shape[0] for p in pairs}
    if len(channels) > 1:
        raise InputError(f"images have different channel counts {sorted(channels)}")
    return pairs


def split_validation(pairs: list[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """Hold out the last images, or with one image its last rows, for validation."""
    if not 0 <= fraction < 1:
        raise UsageError(f"`val_fraction` must be in [0, 1), got {fraction}")
    if fraction == 0:
        return pairs, []
    if len(pairs) >= 2:
        count = max(1, round(len(pairs) * fraction))
        return pairs[:-count], pairs[-count:]
    pair = pairs[0]
    rows = pair.mask.shape[0]
    cut = rows - max(1, round(rows * fraction))
    return (
        [Pair(pair.name + "[train]", pair.image[:, :cut], pair.mask[:cut])],
        [Pair(pair.name + "[val]", pair.image[:, cut:], pair.mask[cut:])],
    )


def normalization(pairs: Sequence[Pair]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel offset (mean) and scale (1 / std) over all training pixels."""
    stacked = [p.image.reshape(p.image.shape[0], -1).astype(np.float64) for p in pairs]
    total = sum(s.shape[1] for s in stacked)
    mean = sum(s.sum(axis=1) for s in stacked) / total
    var = sum(((s - mean[:, None]) ** 2).sum(axis=1) for s in stacked) / total
    std = np.sqrt(np.maximum(var, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(1 / s) for s in std)


# -- checkpoints -----------------------------------------------------------------


def save_checkpoint(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Write the latest weights, optimiser state and trainer state, each atomically."""
    import torch
    from safetensors.torch import save_file

    path = directory / CHECKPOINT_DIR
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in opt["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    full = dict(state, optimizer={"param_groups": opt["param_groups"], "scalars": scalars})
    for name, write in (
        ("model.safetensors", lambda tmp: save_file(weights, tmp)),
        ("optimizer.safetensors", lambda tmp: save_file(tensors, tmp)),
        ("state.json", lambda tmp: Path(tmp).write_text(json.dumps(full, indent=1) + "\n")),
    ):
        tmp = path / f".{name}.tmp"
        write(str(tmp))
        os.replace(tmp, path / name)


def read_state(directory: Path) -> dict[str, Any] | None:
    path = directory / CHECKPOINT_DIR / "state.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path}: corrupt ({exc}); rerun with `overwrite`") from None
    return data if isinstance(data, dict) else None


def load_checkpoint(directory: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and optimiser from ``save_checkpoint``; returns the trainer state."""
    from safetensors.torch import load_file

    path = directory / CHECKPOINT_DIR
    state = read_state(directory)
    if state is None:
        raise UsageError(f"{path}: no checkpoint to resume; rerun with `overwrite`")
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    tensors = load_file(str(path / "optimizer.safetensors"))
    saved = state.pop("optimizer")
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    for index, values in saved["scalars"].items():
        opt_state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": opt_state, "param_groups": saved["param_groups"]})
    return state
