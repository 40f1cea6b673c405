"""What unet-tiles sees in a store: ``inspect_store(url) -> StoreReport``.

Reads metadata only: zarr format, arrays (shape, dtype, chunks, shards), the
OME-Zarr multiscales and labels listings, and for an output of unet-tiles its
provenance record and progress. The arrays read are an output's small
done-marker grids (one byte per block): ``done`` and, in the OME layout,
``pyramid/<level>``. Nothing is written.

OME metadata is read straight from the group attributes: NGFF 0.4 keeps
``multiscales`` (and a ``labels`` group's ``labels``) at the top of the
attributes, 0.5 under ``attrs["ome"]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet_tiles.errors import InputError, OutputConflictError
from unet_tiles.pipeline.ome import ngff_attrs
from unet_tiles.pipeline.provenance import ATTRS_KEY, Provenance
from unet_tiles.pipeline.source import is_remote
from unet_tiles.pipeline.writer import DONE, PYRAMID

LABELS = "labels"


@dataclass(frozen=True)
class ArrayReport:
    """One zarr array: ``path`` inside the store ("" for the store itself)."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None
    dimension_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LevelReport:
    """One multiscales dataset: its path, shape (None: missing) and scale."""

    path: str
    shape: tuple[int, ...] | None
    scale: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ProgressReport:
    """Blocks marked done of all blocks; ``name`` is the pyramid level, "" for the output."""

    name: str
    done: int
    total: int

    @property
    def finished(self) -> bool:
        return self.done == self.total


@dataclass(frozen=True)
class OutputReport:
    """A unet-tiles output: its provenance record, progress and completeness."""

    format_version: int
    version: str
    model_hash: str
    status: str
    parameters: dict[str, Any] = field(hash=False)
    input_url: str | None
    input_fingerprint: str | None
    blocks: ProgressReport | None
    pyramid: tuple[ProgressReport, ...]
    # Status "complete" and every block, of the output and its pyramid, marked done.
    complete: bool


@dataclass(frozen=True)
class StoreReport:
    """What is in the store at ``url``.

    ``image`` is the array unet-tiles would read or wrote: the array itself, an
    OME image's first level, a group's only array, or an output's labels (else
    its probabilities). ``arrays`` are a group's own arrays; ``problems`` what
    is inconsistent (a missing level, a malformed record).
    """

    url: str
    node: str
    zarr_format: int
    ome_version: str | None
    axes: tuple[str, ...] | None
    image: ArrayReport | None
    arrays: tuple[ArrayReport, ...] = ()
    levels: tuple[LevelReport, ...] = ()
    labels: tuple[str, ...] = ()
    output: OutputReport | None = None
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def inspect_store(url: str) -> StoreReport:
    """Report what ``url`` (a local path or fsspec URL) holds; reads metadata only.

    Raises ``InputError`` when ``url`` is not a zarr array or group.
    """
    import zarr

    url = str(url)
    node = _open(url)
    if isinstance(node, zarr.Array):
        alone = _array_report(node, "")
        return StoreReport(url=url, node="array", zarr_format=_format(node),
                           ome_version=None, axes=alone.dimension_names, image=alone)
    attrs = dict(node.attrs)
    problems: list[str] = []
    arrays = tuple(_array_report(node[name], name) for name in _natural(node.array_keys()))
    by_path = {a.path: a for a in arrays}
    multiscales, ome_version = _multiscales(attrs)
    levels: tuple[LevelReport, ...] = ()
    axes: tuple[str, ...] | None = None
    image: ArrayReport | None = None
    if multiscales is not None:
        levels, axes, image = _levels(node, multiscales, problems)
    output = _output(node, attrs, problems)
    if image is None and output is not None:
        image = by_path.get("labels") or by_path.get("probabilities")
    if image is None and multiscales is None and len(arrays) == 1:
        image = arrays[0]
    if axes is None and image is not None:
        axes = image.dimension_names
    return StoreReport(
        url=url, node="group", zarr_format=_format(node), ome_version=ome_version, axes=axes,
        image=image, arrays=arrays, levels=levels, labels=_labels(node), output=output,
        problems=tuple(problems),
    )


def _open(url: str) -> Any:
    import zarr

    store = url[len("file://"):] if url.startswith("file://") else url
    if not is_remote(url):
        path = Path(store)
        if not path.exists():
            raise InputError(f"{url!r} does not exist; check the path")
        if not path.is_dir():
            raise InputError(f"{url!r} is a file, not a zarr store")
        if not any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup")):
            raise InputError(
                f"{url!r} is not a zarr store (no zarr.json, .zarray or .zgroup); "
                "give the path of a zarr array or group"
            )
    try:
        return zarr.open(store=store, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise InputError(f"{url!r} is not a zarr array or group ({exc})") from None
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"{url!r} has unreadable zarr metadata ({exc})") from None


def _format(node: Any) -> int:
    return int(node.metadata.zarr_format)


def _array_report(array: Any, path: str) -> ArrayReport:
    names = getattr(array.metadata, "dimension_names", None)
    shards = getattr(array, "shards", None)
    try:
        dtype = str(np.dtype(array.dtype))
    except TypeError:
        dtype = str(array.dtype)
    return ArrayReport(
        path=path,
        shape=tuple(int(s) for s in array.shape),
        dtype=dtype,
        chunks=tuple(int(c) for c in array.chunks),
        shards=tuple(int(s) for s in shards) if shards else None,
        dimension_names=(tuple(str(n) for n in names)
                         if names and all(n is not None for n in names) else None),
    )


def _natural(names: Any) -> list[str]:
    """Names in natural order: level 2 before level 10."""
    return sorted((str(n) for n in names),
                  key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])


def _ome(attrs: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The attributes that hold OME metadata, and the version 0.5 declares there."""
    holder = ngff_attrs(attrs)
    if holder is attrs:
        return attrs, None
    return dict(holder), str(holder.get("version", "0.5"))


def _multiscales(attrs: dict[str, Any]) -> tuple[Any, str | None]:
    holder, version = _ome(attrs)
    multiscales = holder.get("multiscales")
    if multiscales is None:
        return None, None
    if version is None:
        first = multiscales[0] if isinstance(multiscales, list) and multiscales else {}
        version = str(first.get("version", "0.4")) if isinstance(first, dict) else "0.4"
    return multiscales, version


def _levels(group: Any, multiscales: Any, problems: list[str]
            ) -> tuple[tuple[LevelReport, ...], tuple[str, ...] | None, ArrayReport | None]:
    try:
        first = multiscales[0]
        datasets = list(first["datasets"])
        axes_meta = first.get("axes")
        axes = (tuple(str(a["name"] if isinstance(a, dict) else a) for a in axes_meta)
                if axes_meta else None)
        paths = [str(d["path"]) for d in datasets]
        scales = [_scale(d) for d in datasets]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        problems.append(f"malformed OME-Zarr multiscales metadata ({type(exc).__name__}: {exc})")
        return (), None, None
    levels = []
    level0: ArrayReport | None = None
    for index, (path, scale) in enumerate(zip(paths, scales, strict=True)):
        try:
            array = group[path]
            shape: tuple[int, ...] | None = tuple(int(s) for s in array.shape)
        except (KeyError, FileNotFoundError, AttributeError):
            problems.append(f"multiscales level {path!r} is listed but not in the store")
            array, shape = None, None
        if index == 0 and array is not None and shape is not None:
            level0 = _array_report(array, path)
        levels.append(LevelReport(path, shape, scale))
    return tuple(levels), axes, level0


def _scale(dataset: Any) -> tuple[float, ...] | None:
    for transform in dataset.get("coordinateTransformations") or ():
        if transform.get("type") == "scale":
            return tuple(float(s) for s in transform["scale"])
    return None


def _labels(group: Any) -> tuple[str, ...]:
    """An OME image's label images: the ``labels`` group's listing (else its subgroups)."""
    if LABELS not in set(group.group_keys()):
        return ()
    labels_group = group[LABELS]
    holder, _ = _ome(dict(labels_group.attrs))
    listed = holder.get("labels")
    if isinstance(listed, list):
        return tuple(str(name) for name in listed)
    return tuple(_natural(labels_group.group_keys()))


def _output(group: Any, attrs: dict[str, Any], problems: list[str]) -> OutputReport | None:
    if ATTRS_KEY not in attrs:
        return None
    try:
        record = Provenance.from_dict(attrs[ATTRS_KEY], "this store")
    except OutputConflictError as exc:
        problems.append(str(exc).split(";")[0])
        return None
    blocks = _done(group, "")
    if blocks is None:
        problems.append(f"unet-tiles output without its {DONE!r} array")
    # The OME layout's pyramid: ``pyramid/<level>``, each level's done-markers.
    pyramid: list[ProgressReport] = []
    if PYRAMID in set(group.group_keys()):
        levels = group[PYRAMID]
        pyramid = [_count(levels[name], name) for name in _natural(levels.array_keys())]
    input_url = record.input.get("url")
    return OutputReport(
        format_version=record.format_version,
        version=record.version,
        model_hash=record.model_hash,
        status=record.status,
        parameters=dict(record.parameters),
        input_url=input_url if isinstance(input_url, str) else None,
        input_fingerprint=record.fingerprint,
        blocks=blocks,
        pyramid=tuple(pyramid),
        complete=(record.complete and blocks is not None and blocks.finished
                  and all(level.finished for level in pyramid)),
    )


def _done(group: Any, name: str) -> ProgressReport | None:
    """Blocks done in ``group``'s ``done`` array (None: it has none)."""
    if DONE not in set(group.array_keys()):
        return None
    return _count(group[DONE], name)


def _count(markers: Any, name: str) -> ProgressReport:
    """A done-marker grid (one uint8 a block, 0 or missing: not done) read whole."""
    done = np.asarray(markers[...])
    return ProgressReport(name, int(np.count_nonzero(done)), int(done.size))


__all__ = ["ArrayReport", "LevelReport", "OutputReport", "ProgressReport", "StoreReport",
           "inspect_store"]
