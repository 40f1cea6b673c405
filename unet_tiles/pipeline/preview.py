"""``--preview PNG``: an overview of the whole image beside a full-resolution crop.

::

    +------------------------+  +--------------+
    | overview: the image in |  | crop_px crop |   dashed: block borders, where
    | grey, labels overlaid  |  |      :       |   seams would show
    |        +--+            |  |  ....+....   |
    |        |  | <- crop    |  |      :       |
    |        +--+            |  |              |
    +------------------------+  +--------------+

Labels are overlaid in their class colour (``ome_output.PALETTE``, the colours
the OME layout's ``image-label`` metadata lists): a half-transparent fill with a
solid 1-px outline; background (class 0) is not coloured, so it stays grey.

Cheap for a gigapixel image, and bounded in memory (invariant 2): only the two
panels' pixels are held.

- Overview, OME layout: the label pyramid level whose largest y/x side is nearest
  ``overview_px``, and the OME-Zarr input's multiscales level of the same shape
  (a plain input, or an input without that level, is read with a stride).
- Overview, plain layout (no pyramid): level 0 read with a stride ``k``
  (``array[::k, ::k]``). That decodes every chunk of the plane once (a stride
  below the chunk edge touches them all), but only the small result is held.
- Crop: ``crop_px`` square at full resolution around the block corner nearest
  the image centre (``preview_crop_box``).

Leading axes (``t``, and ``z`` for a 2D model; ``z`` of a 3D model too) show the
middle plane; of the channels (``c``), the first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.pipeline.geometry import Box
from unet_tiles.pipeline.ome import level_paths
from unet_tiles.pipeline.ome_output import PALETTE

if TYPE_CHECKING:
    import os

    from unet_tiles.pipeline.plan import BlockPlan
    from unet_tiles.pipeline.source import ImageSource
    from unet_tiles.pipeline.writer import OutputSpec

OVERVIEW_PX = 768
CROP_PX = 512
# Block borders in the crop, the crop's frame in the overview: a colour no class has.
BORDER = (255, 0, 255)
CANVAS = (24, 24, 24)
GAP_PX = 8
DASH_PX = 6
FILL_ALPHA = 0.45


def preview_crop_box(plan: BlockPlan, crop_px: int = CROP_PX) -> Box:
    """The crop, in output (labels) coordinates: ``crop_px`` square (less where the
    image is smaller) on y and x around the block corner nearest the image centre;
    one plane (the middle) on every other axis.

    Block corners are at multiples of ``plan.block_shape``; on an axis with one
    block only, there is none, and the crop is centred on the image.
    """
    offset: list[int] = []
    shape: list[int] = []
    planar = len(plan.shape) - 2
    for axis, (n, b) in enumerate(zip(plan.shape, plan.block_shape, strict=True)):
        if axis < planar:
            offset.append(n // 2)
            shape.append(1)
            continue
        edge = min(crop_px, n)
        inner = range(b, n, b)  # block borders strictly inside the image
        corner = min(inner, key=lambda p: abs(2 * p - n)) if inner else n // 2
        offset.append(int(np.clip(corner - edge // 2, 0, n - edge)))
        shape.append(edge)
    return Box(tuple(offset), tuple(shape))


def overview_level(output: OutputSpec, overview_px: int = OVERVIEW_PX) -> int:
    """The labels level the overview reads: the one whose largest y/x side is nearest
    ``overview_px`` (the more detailed one on a tie); 0 for the plain layout."""
    if output.ome is None:
        return 0
    sides = [max(level.shape[-2:]) for level in output.ome.levels]
    return min(range(len(sides)), key=lambda i: (abs(sides[i] - overview_px), i))


def class_colours(classes: int) -> np.ndarray:
    """``(classes, 3)`` uint8: class ``k``'s colour, as ``label_image_attrs`` lists it."""
    colours = [PALETTE[0][:3]] + [PALETTE[1 + (k - 1) % (len(PALETTE) - 1)][:3]
                                  for k in range(1, max(classes, 1))]
    return np.array(colours, dtype=np.uint8)


def write_preview(path: str | os.PathLike[str], source: ImageSource, output: OutputSpec,
                  plan: BlockPlan, *, overview_px: int = OVERVIEW_PX,
                  crop_px: int = CROP_PX) -> Path:
    """Write the preview PNG (RGB) of a finished output; its path."""
    from PIL import Image

    group = _open_group(output.url)
    full = plan.shape
    # The overview: a labels level, strided further where it is still large.
    level = overview_level(output, overview_px)
    level_shape = full if output.ome is None else output.ome.levels[level].shape
    stride = max(1, max(level_shape[-2:]) // overview_px)
    labels_small = _read_labels(group, output, level, _plane(level_shape, stride))
    image_small = _read_overview_image(source, level_shape, stride)
    # The crop at full resolution.
    box = preview_crop_box(plan, crop_px)
    crop_index = _box_index(box)
    labels_crop = _read_labels(group, output, 0, crop_index)
    image_crop = _read_image(source.open(), source.axes, crop_index)

    low, high = _stretch(image_small)
    colours = class_colours(output.classes)
    height, width = full[-2:]
    scale = overview_px / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (w, h)
    grey = Image.fromarray(_grey(image_small, low, high)).resize(size, Image.Resampling.BILINEAR)
    classes = Image.fromarray(labels_small.astype(np.int32)).resize(size,
                                                                    Image.Resampling.NEAREST)
    overview = _overlay(np.asarray(grey), np.asarray(classes), colours)
    _frame(overview, box, scale)
    crop = _overlay(_grey(image_crop, low, high), labels_crop, colours)
    _block_borders(crop, box, plan.block_shape)

    canvas = np.empty((max(overview.shape[0], crop.shape[0]),
                       overview.shape[1] + GAP_PX + crop.shape[1], 3), dtype=np.uint8)
    canvas[...] = CANVAS
    canvas[:overview.shape[0], :overview.shape[1]] = overview
    canvas[:crop.shape[0], overview.shape[1] + GAP_PX:] = crop
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out, format="PNG")
    return out


def _open_group(url: str) -> Any:
    import zarr

    return zarr.open_group(store=url.removeprefix("file://"), mode="r")


def _plane(shape: tuple[int, ...], stride: int) -> tuple[int | slice, ...]:
    """The middle plane of every axis but y and x; those whole, with ``stride``."""
    planar = len(shape) - 2
    return tuple(n // 2 if axis < planar else slice(None, None, stride)
                 for axis, n in enumerate(shape))


def _box_index(box: Box) -> tuple[int | slice, ...]:
    """The box as an index: its plane (an integer) on all axes but y and x."""
    planar = box.ndim - 2
    return tuple(o if axis < planar else slice(o, o + s)
                 for axis, (o, s) in enumerate(zip(box.offset, box.shape, strict=True)))


def _read_labels(group: Any, output: OutputSpec, level: int,
                 index: tuple[int | slice, ...]) -> np.ndarray:
    """2D class labels: the labels array, or the argmax of the probabilities."""
    if output.want_labels:
        return np.asarray(group[output.labels_path(level)][index])
    at = output.channel_index(len(output.axes) - output.dims)
    probabilities = np.asarray(group[output.probabilities_path(level)][
        (*index[:at], slice(None), *index[at:])])
    # The class axis is the only one left before y and x.
    return np.asarray(np.argmax(probabilities, axis=0))


def _read_image(array: Any, axes: str, index: tuple[int | slice, ...]) -> np.ndarray:
    """2D pixels of ``array`` (the input's ``axes``) at the output ``index``: channel 0."""
    it = iter(index)
    full = tuple(0 if a == "c" else next(it) for a in axes)
    return np.asarray(array[full])


def _read_overview_image(source: ImageSource, level_shape: tuple[int, ...],
                         stride: int) -> np.ndarray:
    """The input at the overview's resolution: its multiscales level of the labels
    level's shape (strided the same), else the segmented array with a stride."""
    array = _matching_level(source, level_shape)
    if array is not None:
        return _read_image(array, source.axes, _plane(level_shape, stride))
    shape = source.open().shape
    full = tuple(n for n, a in zip(shape, source.axes, strict=True) if a != "c")
    planar = len(full) - 2
    step = max(1, round(max(full[planar:]) / max(level_shape[planar:]))) * stride
    index = tuple(n // 2 if axis < planar else slice(None, None, step)
                  for axis, n in enumerate(full))
    return _read_image(source.open(), source.axes, index)


def _matching_level(source: ImageSource, level_shape: tuple[int, ...]) -> Any | None:
    """The OME-Zarr input's level array whose shape (without ``c``) is ``level_shape``."""
    if source.ome_version is None:
        return None
    group = _open_group(source.url)
    for path in _level_paths(source, dict(group.attrs)):
        try:
            array = group[path]
        except KeyError:
            continue
        shape = getattr(array, "shape", None)
        if shape is None or len(shape) != len(source.axes):
            continue
        if tuple(n for n, a in zip(shape, source.axes, strict=True) if a != "c") == level_shape:
            return array
    return None


def _level_paths(source: ImageSource, attrs: dict[str, Any]) -> list[str]:
    """The input's multiscales level paths: checked ones from ``source``, else the
    group's attributes (0.4 ``multiscales``, 0.5 ``ome.multiscales``)."""
    multiscale = source.multiscale
    if multiscale is not None:
        return list(multiscale.paths)
    return level_paths(attrs)


def _stretch(image: np.ndarray) -> tuple[float, float]:
    """The grey range: the overview's 0.5 and 99.5 percentiles (both panels use it)."""
    values = image.astype(np.float32)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, (0.5, 99.5))
    return float(low), float(high)


def _grey(image: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (image.astype(np.float32) - low) / max(high - low, 1e-6) * 255
    grey: np.ndarray = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    return grey


def _overlay(grey: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """RGB: ``grey`` with each foreground class filled half-transparent in its colour
    and outlined in it (1 px, the panel's edge counts as a border)."""
    rgb = np.repeat(grey[..., None], 3, axis=2)
    classes = np.clip(labels, 0, len(colours) - 1).astype(np.intp)
    fore = classes > 0
    colour = colours[classes]
    blended = (1 - FILL_ALPHA) * rgb + FILL_ALPHA * colour
    rgb = np.where(fore[..., None], blended.round(), rgb).astype(np.uint8)
    padded = np.pad(classes, 1, constant_values=-1)
    centre = padded[1:-1, 1:-1]
    edge = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
            | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    outline = edge & fore
    rgb[outline] = colour[outline]
    return rgb


def _frame(panel: np.ndarray, box: Box, scale: float) -> None:
    """Where the crop sits: its outline on the overview."""
    h, w = panel.shape[:2]
    y0 = min(int(box.offset[-2] * scale), h - 1)
    x0 = min(int(box.offset[-1] * scale), w - 1)
    y1 = min(max(math.ceil(box.end[-2] * scale) - 1, y0), h - 1)
    x1 = min(max(math.ceil(box.end[-1] * scale) - 1, x0), w - 1)
    panel[y0, x0:x1 + 1] = BORDER
    panel[y1, x0:x1 + 1] = BORDER
    panel[y0:y1 + 1, x0] = BORDER
    panel[y0:y1 + 1, x1] = BORDER


def _block_borders(panel: np.ndarray, box: Box, block_shape: tuple[int, ...]) -> None:
    """Dashed lines on the block borders inside the crop (rows, then columns)."""
    (y0, x0), (h, w) = box.offset[-2:], box.shape[-2:]
    by, bx = block_shape[-2:]
    dash_x = (np.arange(w) // DASH_PX) % 2 == 0
    dash_y = (np.arange(h) // DASH_PX) % 2 == 0
    for row in range(-(-(y0 + 1) // by) * by, y0 + h, by):
        panel[row - y0, dash_x] = BORDER
    for col in range(-(-(x0 + 1) // bx) * bx, x0 + w, bx):
        panel[dash_y, col - x0] = BORDER


__all__ = ["BORDER", "class_colours", "overview_level", "preview_crop_box", "write_preview"]
