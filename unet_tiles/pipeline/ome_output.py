"""The OME-Zarr layout of an output: levels, axes and the NGFF metadata written for them.

An output in the OME layout is an NGFF *label image* of the same NGFF version
as its source (0.4 on zarr v2, 0.5 on zarr v3), with a pyramid of the same
number of levels and the same scale factors as the source image (the spec
requires it); ``docs/output.md`` draws the tree. Everything here is pure: it
builds dictionaries and shapes, the writer writes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from unet_tiles.errors import InputError
from unet_tiles.pipeline.ome import ngff_attrs

if TYPE_CHECKING:
    from unet_tiles.pipeline.ome import Multiscale

NGFF_VERSIONS = ("0.4", "0.5")
# Distinct, saturated colours for the first classes; more cycle through them.
PALETTE = ((0, 0, 0, 0), (230, 25, 75, 255), (60, 180, 75, 255), (255, 225, 25, 255),
           (0, 130, 200, 255), (245, 130, 48, 255), (145, 30, 180, 255), (70, 240, 240, 255),
           (240, 50, 230, 255), (210, 245, 60, 255))
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
# A plain input's pyramid halves y and x until the smallest level is at most this.
PLAIN_SMALLEST_PX = 512


@dataclass(frozen=True)
class Level:
    """One pyramid level: its array's path, shape and coordinate transformations
    (per output axis, i.e. the input's axes without ``c``)."""

    path: str
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Axis:
    name: str
    type: str
    unit: str | None = None

    def to_dict(self) -> dict[str, str]:
        entry = {"name": self.name, "type": self.type}
        if self.unit:
            entry["unit"] = self.unit
        return entry


@dataclass(frozen=True)
class OmeLayout:
    """What an OME-layout output holds: NGFF version, axes, levels, source image."""

    version: str
    axes: tuple[Axis, ...]
    levels: tuple[Level, ...]
    source_image: str | None = None

    def __post_init__(self) -> None:
        if self.version not in NGFF_VERSIONS:
            raise InputError(f"NGFF version {self.version!r} is not one of {NGFF_VERSIONS}")

    @property
    def zarr_format(self) -> Literal[2, 3]:
        return 2 if self.version == "0.4" else 3

    @property
    def names(self) -> str:
        return "".join(a.name for a in self.axes)

    @property
    def channel_index(self) -> int:
        """Where the class axis ``c`` of probabilities goes: after ``t``, before z, y, x
        (NGFF's axis order)."""
        return 1 if self.names.startswith("t") else 0

    def nested(self) -> OmeLayout:
        """This layout for an image one group further down (``instances/``): a
        relative source image path gains a ``../``."""
        source = self.source_image
        if source is not None and "://" not in source and not source.startswith("/"):
            source = f"../{source}"
        return replace(self, source_image=source)

    def factors(self, level: int) -> tuple[float, ...]:
        """Scale factor of ``level`` against level 0, per axis (from the shapes)."""
        return tuple(a / b for a, b in zip(self.levels[0].shape, self.levels[level].shape,
                                           strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "axes": [a.to_dict() for a in self.axes],
                "levels": [{"path": lv.path, "shape": list(lv.shape), "scale": list(lv.scale),
                            "translation": list(lv.translation) if lv.translation else None}
                           for lv in self.levels],
                "source_image": self.source_image}


def plain_layout(shape: tuple[int, ...], axes: str, dims: int, version: str,
                 source_image: str | None = None,
                 smallest_px: int = PLAIN_SMALLEST_PX) -> OmeLayout:
    """Levels for a plain (non-OME) input: y and x halved (z never) until the
    largest of them is at most ``smallest_px``; unit scales, no units."""
    planar = [i for i, a in enumerate(axes) if a in "yx"]
    largest = max(shape[i] for i in planar)
    count = 1 + max(0, math.ceil(math.log2(largest / smallest_px))) if largest > 0 else 1
    levels = []
    for level in range(count):
        factor = 2**level
        level_shape = tuple(-(-n // factor) if i in planar else n for i, n in enumerate(shape))
        scale = tuple(float(factor) if i in planar else 1.0 for i in range(len(shape)))
        levels.append(Level(str(level), level_shape, scale))
    del dims
    return OmeLayout(version, tuple(Axis(a, AXIS_TYPES[a]) for a in axes), tuple(levels),
                     source_image)


def source_layout(multiscale: Multiscale, out_axes: str, first_level: int = 0,
                  source_image: str | None = None) -> OmeLayout:
    """The layout matching an OME-Zarr source image's multiscales (``pipeline/ome.py``)
    from ``first_level`` on: the same levels (shapes, scales, translations, units) on
    the output's axes (the input's without ``c``)."""
    keep = [multiscale.axes.index(a) for a in out_axes]
    levels = []
    for number, level in enumerate(multiscale.levels[first_level:]):
        moved = any(level.translation)
        levels.append(Level(str(number), tuple(level.shape[i] for i in keep),
                            tuple(level.scale[i] for i in keep),
                            tuple(level.translation[i] for i in keep) if moved else None))
    units = dict(zip(multiscale.axes, multiscale.axis_units, strict=True))
    axes = tuple(Axis(a, AXIS_TYPES[a], units.get(a)) for a in out_axes)
    version = "0.4" if multiscale.version.startswith("0.4") else "0.5"
    return OmeLayout(version, axes, tuple(levels), source_image)


def _multiscale(layout: OmeLayout, axes: list[dict[str, str]], name: str,
                lead: tuple[float, ...] = ()) -> dict[str, Any]:
    """One multiscales entry; ``lead`` scale values are inserted at the class axis."""
    at = layout.channel_index

    def insert(values: tuple[float, ...]) -> list[float]:
        return list(values[:at]) + list(lead) + list(values[at:])

    datasets = []
    for level in layout.levels:
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": insert(level.scale)}]
        if level.translation is not None:
            zeros = tuple(0.0 for _ in lead)
            transforms.append({"type": "translation",
                               "translation": list(level.translation[:at]) + list(zeros)
                               + list(level.translation[at:])})
        datasets.append({"path": level.path, "coordinateTransformations": transforms})
    entry: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets}
    if layout.version == "0.4":
        entry["version"] = "0.4"
    return entry


def _wrap(layout: OmeLayout, attrs: dict[str, Any]) -> dict[str, Any]:
    """0.5 keeps NGFF attributes under ``ome``; 0.4 at the top level."""
    if layout.version == "0.5":
        return {"ome": {"version": "0.5", **attrs}}
    return attrs


def label_image_attrs(layout: OmeLayout, class_names: tuple[str, ...], classes: int,
                      name: str = "labels", with_properties: bool = True) -> dict[str, Any]:
    """Attributes of a label image: multiscales + image-label with one colour and
    property per foreground class (the same label values in both, as the validator
    requires). ``with_properties=False`` writes none (for instance ids)."""
    image_label: dict[str, Any] = {}
    if layout.version == "0.4":
        image_label["version"] = "0.4"
    if with_properties:
        names = class_names or tuple(f"class {k}" for k in range(classes))
        values = range(1, classes)
        image_label["colors"] = [
            {"label-value": k, "rgba": list(PALETTE[1 + (k - 1) % (len(PALETTE) - 1)])}
            for k in values]
        image_label["properties"] = [{"label-value": k, "class": names[k]} for k in values]
    if layout.source_image is not None:
        image_label["source"] = {"image": layout.source_image}
    axes = [a.to_dict() for a in layout.axes]
    return _wrap(layout, {"multiscales": [_multiscale(layout, axes, name)],
                          "image-label": image_label})


def probability_image_attrs(layout: OmeLayout, class_names: tuple[str, ...],
                            classes: int) -> dict[str, Any]:
    """Attributes of the probabilities image: the label axes with the class axis
    ``c`` (one channel per class) at its NGFF place."""
    axes = [a.to_dict() for a in layout.axes]
    axes.insert(layout.channel_index, {"name": "c", "type": "channel"})
    attrs: dict[str, Any] = {"multiscales": [_multiscale(layout, axes, "probabilities",
                                                         lead=(1.0,))]}
    names = class_names or tuple(f"class {k}" for k in range(classes))
    if layout.version == "0.4":
        attrs["omero"] = {"channels": [{"label": n, "window": {"start": 0.0, "end": 1.0,
                                                               "min": 0.0, "max": 1.0},
                                        "color": "FFFFFF", "active": True} for n in names]}
    return _wrap(layout, attrs)


def labels_group_attrs(version: str, names: list[str]) -> dict[str, Any]:
    """The ``labels`` group of an image listing its label images."""
    if version == "0.5":
        return {"ome": {"version": "0.5", "labels": names}}
    return {"labels": names}


def listed_labels(attrs: dict[str, Any]) -> list[str]:
    """The label names a ``labels`` group's attributes list (either version)."""
    names = ngff_attrs(attrs).get("labels")
    return [str(n) for n in names] if isinstance(names, list) else []


def array_options(layout: OmeLayout, axes: str) -> dict[str, Any]:
    """zarr ``create_array`` options for an array of ``axes`` in this layout: NGFF 0.4
    wants zarr v2 with '/' chunk keys, 0.5 zarr v3 with dimension names."""
    if layout.zarr_format == 2:
        return {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    return {"dimension_names": tuple(axes)}


__all__ = ["Axis", "Level", "OmeLayout", "array_options", "label_image_attrs",
           "labels_group_attrs", "listed_labels", "plain_layout", "probability_image_attrs",
           "source_layout"]
