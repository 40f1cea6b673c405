"""Window -> tiles -> batches -> device -> block result.

The model is loaded once per worker process (``cached_model``) and kept on the
worker's device. Tiles of one block all have the same input size (see
``plan.tile_axis``), so they batch without padding.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from unet_tiles.model.unet import UNet
    from unet_tiles.pipeline.plan import Block, TileAxis

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class BlockResult:
    """Outputs for exactly one block's write region."""

    labels: np.ndarray | None
    probabilities: np.ndarray | None


@functools.lru_cache(maxsize=2)
def cached_model(model_dir: str, model_hash: str, device: str,
                 channels_last: bool = False) -> UNet:
    """Load a model once per process; the hash in the key reloads a changed model.
    ``channels_last``: its weights in the layout ``predict_block`` feeds it then."""
    from unet_tiles.model.files import load_model

    del model_hash
    model = load_model(model_dir, device=device)
    if channels_last:
        # Module.to takes memory_format (torch's docs); its type stubs leave it out.
        model = model.to(memory_format=memory_format(model.config.dims))  # type: ignore[call-overload]
    return model


def channels_last_on(device: str, setting: bool | None = None) -> bool:
    """Whether a block's tiles and the model's weights go channels-last on ``device``.

    ``None`` (the engine's default): on CPU, where oneDNN's convolutions on
    channels-last tensors ran the demo model 1.8x, a depth-3 16-channel model 1.8x,
    the paper's U-Net 1.4x and a 3D model 2.1x faster, with the same classes
    (``bench/model_formats.py``); not on CUDA until it is measured there.
    """
    return not device.startswith("cuda") if setting is None else setting


# --precision: the dtype the forward passes compute in.
PRECISIONS = ("auto", "float32", "bfloat16")


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    """The forward passes' precision on ``device``.

    ``auto``: float16 autocast on CUDA (``tests/test_gpu.py`` compares its labels
    with float32's), float32 on CPU. ``float32``:
    float32 everywhere. ``bfloat16``: bfloat16 autocast on either; 3.0-3.5x faster
    than float32 on a CPU with native bfloat16 (``avx512_bf16``, AMX) and 0.1-0.3 %
    of pixels in another class (``bench/model_formats.py``); emulated and slow on
    CPUs without it.
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    if precision == "bfloat16":
        return torch.autocast(device_type=kind, dtype=torch.bfloat16)
    if precision == "auto" and kind == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def memory_format(dims: int) -> torch.memory_format:
    """The channels-last format of a batch of ``dims``-dimensional tiles."""
    import torch

    return torch.channels_last if dims == 2 else torch.channels_last_3d


def in_layout(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``batch`` ``(N, C, *spatial)`` in the layout of the model's weights (``cached_model``)."""
    if not channels_last:
        return batch
    return batch.contiguous(memory_format=memory_format(batch.dim() - 2))


def pick_device(preference: str = "auto", worker_name: object = None) -> str:
    """``auto``: CUDA where the worker sees a GPU; ``cuda:worker``: the GPU of
    index (worker name mod GPU count), for several worker processes sharing GPUs;
    the name is the running task's worker's unless ``worker_name`` is given (the
    warm-up, which runs outside a task)."""
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda:worker":
        if worker_name is None:
            from distributed import get_worker

            worker_name = get_worker().name
        index = worker_name if isinstance(worker_name, int) else abs(hash(worker_name))
        return f"cuda:{index % torch.cuda.device_count()}"
    return preference


# One lock per device in this process: a worker's threads read and write blocks
# side by side, but one GPU never runs two blocks' forward passes at once.
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def device_lock(device: str) -> threading.Lock | contextlib.nullcontext[None]:
    """The lock a block holds on ``device`` while its tiles run (none on CPU, where
    each worker thread has its own torch threads)."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    with _LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


def auto_batch(model: UNet, size_in: tuple[int, ...], device: str) -> int:
    """Tiles per forward pass: 1 on CPU (measured: four 604 px tiles one at a time ran
    1.8x faster than a batch of four); on a GPU, what half its free memory holds by
    a generous estimate of one tile's activations (an out-of-memory error still
    halves it, ``predict_block``)."""
    if not device.startswith("cuda"):
        return 1
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    pixels = int(np.prod(size_in))
    # fp16 activations; the first level's maps (conv outputs, skip, concatenation)
    # dominate: about 12 maps of base_channels.
    per_tile = pixels * model.config.base_channels * 2 * 12
    return int(max(1, min(64, (free // 2) // max(per_tile, 1))))


def predict_block(model: UNet, window: np.ndarray, block: Block, *, want_labels: bool,
                  want_probabilities: bool, probability_dtype: str = "float16",
                  batch_size: int | None = None, device: str = "cpu",
                  precision: str = "auto", channels_last: bool = False) -> BlockResult:
    """Run ``model`` over the block's tiles and assemble the block's outputs.

    ``window`` is the block's read window ``(C, *spatial)``; for a valid model
    each tile's output starts where its input starts plus the halo, for a same
    model the central ``stride`` is cropped from its full-size output.

    On a GPU the window goes over from pinned memory without blocking, the outputs
    are assembled on the device and copied back once, and an out-of-memory error
    halves the batch and runs the same tiles again (the result does not depend on
    the batch). ``precision``: see ``autocast``. ``channels_last``: the tiles go
    to the model in that layout, which its weights must have (``cached_model``).
    """
    import torch

    tiles = block.tiles
    dims = len(tiles)
    classes = model.config.classes
    on_gpu = device.startswith("cuda")
    if batch_size is None:
        batch_size = auto_batch(model, tuple(t.size_in for t in tiles), device)
    assembled = tuple(t.count * t.stride for t in tiles)
    label_dtype = np.uint8 if classes <= 256 else np.uint16
    prob_dtype = torch.float16 if probability_dtype == "float16" else torch.float32
    labels: Any = None
    probs: Any = None
    if on_gpu:
        if want_labels:
            labels = torch.zeros(assembled, dtype=torch.uint8 if classes <= 256
                                 else torch.int32, device=device)
        if want_probabilities:
            probs = torch.zeros((classes, *assembled), dtype=prob_dtype, device=device)
    else:
        labels = np.zeros(assembled, dtype=label_dtype) if want_labels else None
        probs = np.zeros((classes, *assembled), dtype=probability_dtype) \
            if want_probabilities else None
    positions = list(itertools.product(*(range(t.count) for t in tiles)))
    window_t = torch.from_numpy(window)
    if on_gpu:
        window_t = window_t.pin_memory().to(device, non_blocking=True)
    elif device != "cpu":
        window_t = window_t.to(device)
    window_t = window_t.float()
    with device_lock(device), torch.inference_mode(), autocast(precision, device):
        first = 0
        while first < len(positions):
            batch_pos = positions[first : first + batch_size]
            batch = in_layout(torch.stack([window_t[_tile_input(pos, tiles)]
                                           for pos in batch_pos]), channels_last)
            try:
                logits = model(batch)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                del batch
                batch_size = max(1, batch_size // 2)
                if on_gpu:
                    torch.cuda.empty_cache()
                logger.warning("out of memory on %s: %d tile(s) per batch from now on",
                               device, batch_size)
                continue
            logits = _crop_to_stride(logits, tiles, model)
            lab: Any = None
            prob: Any = None
            if labels is not None:
                lab = class_argmax(logits)
                lab = lab if on_gpu else lab.cpu().numpy()
            if probs is not None:
                prob = torch.softmax(logits.float(), dim=1).to(prob_dtype)
                prob = prob if on_gpu else prob.cpu().numpy()
            for j, pos in enumerate(batch_pos):
                where = tuple(
                    slice(p * t.stride, (p + 1) * t.stride) for p, t in zip(pos, tiles,
                                                                             strict=True)
                )
                if lab is not None:
                    labels[where] = lab[j]
                if prob is not None:
                    probs[(slice(None), *where)] = prob[j]
            first += len(batch_pos)
        if on_gpu:
            # One copy back per block, after all its tiles.
            labels = labels.cpu().numpy().astype(label_dtype, copy=False) \
                if labels is not None else None
            probs = probs.cpu().numpy() if probs is not None else None
    # The tiles cover the block from its first tile's start on the pooling grid.
    crop = block.write.spatial(dims).relative_to(block.tile_origin).to_slices()
    return BlockResult(
        labels=np.ascontiguousarray(labels[crop]) if labels is not None else None,
        probabilities=np.ascontiguousarray(probs[(slice(None), *crop)])
        if probs is not None else None,
    )


def class_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=1)`` as uint8 (int32 beyond 256 classes), first maximum wins.

    Measured here: torch's argmax over the class axis of a cropped CPU tensor
    took 17 % of a block's time; a running maximum over the classes costs a
    few elementwise passes. ``masked_fill_`` with the comparison's (strided) mask
    cost 1.4 ms of a 512 px tile, 10x the comparison: the labels are built with
    ``where`` instead, and the last class needs no running maximum.
    """
    import torch

    classes = logits.shape[1]
    dtype = torch.uint8 if classes <= 256 else torch.int32
    best = logits[:, 0]
    labels = (logits[:, 1] > best).to(dtype)
    for k in range(2, classes):
        best = torch.maximum(best, logits[:, k - 1])
        channel = logits[:, k]
        labels = torch.where(channel > best, torch.tensor(k, dtype=dtype, device=logits.device),
                             labels)
    return labels.contiguous()


def _tile_input(pos: tuple[int, ...], tiles: tuple[TileAxis, ...]) -> tuple[slice, ...]:
    return (slice(None), *(
        slice(p * t.stride, p * t.stride + t.size_in) for p, t in zip(pos, tiles, strict=True)
    ))


def _crop_to_stride(logits: torch.Tensor, tiles: tuple[TileAxis, ...], model: UNet) -> torch.Tensor:
    index: list[slice] = [slice(None), slice(None)]
    for k, t in enumerate(tiles):
        have = logits.shape[2 + k]
        # Valid padding: output already lacks the halo (offset 0); same padding:
        # the output is input-sized and the halo is cropped from each side.
        offset = (have - (t.size_in - 2 * model.halo[k])) // 2
        index.append(slice(offset, offset + t.stride))
    return logits[tuple(index)]
