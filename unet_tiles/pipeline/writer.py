"""The output store: arrays, chunk-aligned block writes, done-markers, provenance.

The plain layout of OUTPUT (a zarr v3 group; the contract in DESIGN.md)::

    OUTPUT/
      zarr.json          attrs["unet_tiles"]: the provenance record (provenance.py)
      labels/            argmax class, the input's axes without c
      probabilities/     softmax, (..., K, *spatial)
      instances/         with --output instances: one id per object (uint32 1..N)
      objects.parquet    with instances: one row per object (engine/instances.py)
      done/              uint8, one chunk per block: written after the block's data
      _instances/        while instances are made (removed once complete):
        provisional/       uint64 ids unique per block (pipeline/instances.py)
        relabelled/        done-markers of the relabel pass
        stats/ faces/ objects/   one small .npz per block and pass

The OME layout (``ome_output.py``; docs/output.md) is an NGFF label image of the
source's NGFF version: label levels ``0/ 1/ ...``, ``probabilities/`` an NGFF
image with the same levels, ``instances/`` a label image (ids, no per-object
colours) with the same levels, ``done/`` and ``pyramid/<level>`` done-markers.

A block's done chunk is written only after all of its data chunks, so a
crashed run leaves no block marked done that is not fully written (invariant 3).

Integrity (``verify.py``): every zarr v3 array carries the crc32c codec after
its compressor, so a damaged chunk fails to decode instead of reading wrong
pixels, and every chunk of a block is stored, even one all fill value, so a
missing chunk of a done block is damage. NGFF 0.4 (zarr v2) arrays carry no
checksum: zarr-python's v2 arrays take one compressor, none wrapping another.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from unet_tiles.pipeline import ome_output
from unet_tiles.pipeline.provenance import ATTRS_KEY, Provenance
from unet_tiles.pipeline.pyramid import block_grid
from unet_tiles.pipeline.source import is_remote

if TYPE_CHECKING:
    import zarr

    from unet_tiles.pipeline.instances import InstanceSpec
    from unet_tiles.pipeline.plan import Block, BlockPlan
    from unet_tiles.pipeline.predict import BlockResult

logger = logging.getLogger(__name__)
# zarr warns of every non-zarr file it meets when it lists a group; the object
# table beside the arrays is there by design (DESIGN.md, the output store).
warnings.filterwarnings("ignore", message=r"Object at objects\.(parquet|csv) is not recognized")

DONE = "done"
PYRAMID = "pyramid"
PROBABILITIES = "probabilities"
INSTANCES = "instances"
# The instance passes' working state: removed once the output is complete.
WORK = "_instances"
PROVISIONAL = f"{WORK}/provisional"
RELABELLED = f"{WORK}/relabelled"
# With --split: the probability seeds flood by, and the seeds' final ids.
FLOOD = f"{WORK}/flood"
SEEDS = f"{WORK}/seeds"
OBJECTS_TABLE = "objects.parquet"
OBJECTS_CSV = "objects.csv"


@dataclass(frozen=True)
class OutputSpec:
    """What the output holds; everything a rerun must match to resume."""

    url: str
    axes: str
    dims: int
    classes: int
    class_names: tuple[str, ...]
    want_labels: bool
    want_probabilities: bool
    probability_dtype: str
    # None: the plain layout; else the OME layout's levels and metadata.
    ome: ome_output.OmeLayout | None = None
    # OME layout into a source image: its ``labels`` group, which lists this output.
    labels_group: str | None = None
    # --output instances: how ids are made (pipeline/instances.py); None: no instances.
    instances: InstanceSpec | None = None
    # Also write the object table as CSV beside the Parquet one.
    objects_csv: bool = False

    @property
    def want_instances(self) -> bool:
        return self.instances is not None

    @property
    def labels_dtype(self) -> str:
        return "uint8" if self.classes <= 256 else "uint16"

    @property
    def levels(self) -> int:
        return 1 if self.ome is None else len(self.ome.levels)

    def labels_path(self, level: int = 0) -> str:
        return "labels" if self.ome is None else self.ome.levels[level].path

    def instances_path(self, level: int = 0) -> str:
        return INSTANCES if self.ome is None else f"{INSTANCES}/{self.ome.levels[level].path}"

    def probabilities_path(self, level: int = 0) -> str:
        return PROBABILITIES if self.ome is None else \
            f"{PROBABILITIES}/{self.ome.levels[level].path}"

    def channel_index(self, lead: int) -> int:
        """Where probabilities keep the class axis: after the leading axes (plain),
        at NGFF's place for ``c`` (OME)."""
        return lead if self.ome is None else self.ome.channel_index


def read_record(url: str) -> Provenance | None:
    """The provenance record of an existing output; None where there is none."""
    import zarr

    try:
        group = zarr.open_group(store=url, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
        return None
    except (ValueError, KeyError):
        return None
    record = group.attrs.get(ATTRS_KEY)
    return None if record is None else Provenance.from_dict(record, f"output {url!r}")


def write_record(url: str, record: Provenance) -> None:
    import zarr

    zarr.open_group(store=url, mode="r+").attrs[ATTRS_KEY] = record.to_dict()


def remove_output(url: str) -> None:
    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        shutil.rmtree(url, ignore_errors=True)


# zstd's level 1, not zarr's default (3): a block's float16 probabilities are written
# 1.8-2.3x faster for 3 % more bytes, its labels about as fast (0.84-1.12x in three
# runs) and 12 % smaller (bench/output_codec.py). On a GPU the device waits while its
# host encodes: at level 3 a block's probabilities took 8-9x the demo model's time for
# it on an H100.
ZSTD_LEVEL = 1


def compressors(zarr_format: int, level: int = ZSTD_LEVEL) -> dict[str, Any]:
    """``create_array`` options: zstd at ``level``, and in zarr v3 crc32c after it, so
    the checksum covers the compressed bytes (a zarr v2 array takes one compressor)."""
    if zarr_format == 2:
        from numcodecs import Zstd

        return {"compressors": Zstd(level=level)}
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {"compressors": (ZstdCodec(level=level, checksum=False), Crc32cCodec())}


def create_output(spec: OutputSpec, plan: BlockPlan, record: Provenance) -> None:
    """Create the output's arrays, then its provenance record (status running)."""
    import zarr

    layout = spec.ome
    zarr_format = 3 if layout is None else layout.zarr_format
    group = zarr.open_group(store=spec.url, mode="w", zarr_format=zarr_format)
    attrs: dict[str, Any] = {}
    at = spec.channel_index(plan.lead)
    axes_c = spec.axes[:at] + "c" + spec.axes[at:]
    codecs = compressors(zarr_format)
    options: dict[str, Any] = {"dimension_names": tuple(spec.axes)} if layout is None \
        else ome_output.array_options(layout, spec.axes)
    c_options: dict[str, Any] = {"dimension_names": tuple(axes_c)} if layout is None \
        else ome_output.array_options(layout, axes_c)
    options, c_options = {**options, **codecs}, {**c_options, **codecs}
    probabilities = group if layout is None or not spec.want_probabilities else \
        group.create_group(PROBABILITIES)
    instances = group if layout is None or spec.instances is None else \
        group.create_group(INSTANCES)
    for level in range(spec.levels):
        shape = plan.shape if layout is None else layout.levels[level].shape
        chunks = tuple(min(c, n) for c, n in zip(plan.chunks, shape, strict=True))
        # Level 0 is sharded as planned; pyramid levels are small: chunks only.
        shards = plan.shards if level == 0 else None
        if spec.want_labels:
            group.create_array(spec.labels_path(level), shape=shape, chunks=chunks,
                               shards=shards, dtype=spec.labels_dtype, fill_value=0, **options)
        if spec.want_probabilities:
            name = PROBABILITIES if layout is None else layout.levels[level].path
            probabilities.create_array(
                name, shape=(*shape[:at], spec.classes, *shape[at:]),
                chunks=(*chunks[:at], spec.classes, *chunks[at:]),
                shards=None if shards is None else (*shards[:at], spec.classes, *shards[at:]),
                dtype=spec.probability_dtype, fill_value=0, **c_options)
        if spec.instances is not None:
            instances.create_array(
                INSTANCES if layout is None else layout.levels[level].path, shape=shape,
                chunks=chunks, shards=shards, dtype=spec.instances.dtype, fill_value=0,
                **options)
        if level > 0:
            # A level's blocks have level 0's block shape in pixels (whole chunks).
            grid = block_grid(shape, plan.block_shape)
            group.require_group(PYRAMID).create_array(
                str(level), shape=grid, chunks=(1,) * len(grid), dtype="uint8", fill_value=0,
                **codecs)
    group.create_array(DONE, shape=plan.grid, chunks=(1,) * len(plan.grid), dtype="uint8",
                       fill_value=0, **codecs)
    if spec.instances is not None:
        group.create_array(PROVISIONAL, shape=plan.shape, chunks=plan.chunks,
                           shards=plan.shards, dtype="uint64", fill_value=0, **options)
        group.create_array(RELABELLED, shape=plan.grid, chunks=(1,) * len(plan.grid),
                           dtype="uint8", fill_value=0, **codecs)
        if spec.instances.splits:
            group.create_array(FLOOD, shape=plan.shape, chunks=plan.chunks, shards=plan.shards,
                               dtype="float16", fill_value=-1, **options)
            group.create_array(SEEDS, shape=plan.shape, chunks=plan.chunks, shards=plan.shards,
                               dtype=spec.instances.dtype, fill_value=0, **options)
    if layout is not None:
        if spec.want_labels:
            attrs.update(ome_output.label_image_attrs(layout, spec.class_names, spec.classes))
        if spec.want_probabilities:
            probabilities.attrs.update(
                ome_output.probability_image_attrs(layout, spec.class_names, spec.classes))
        if spec.instances is not None:
            # Ids only: per-object colours and properties would be millions of
            # entries; the object table holds per-object data.
            instances.attrs.update(ome_output.label_image_attrs(
                layout.nested(), spec.class_names, spec.classes, name=INSTANCES,
                with_properties=False))
        if spec.labels_group is not None:
            _list_in_labels_group(spec.labels_group, spec.url, layout.version,
                                  with_instances=spec.instances is not None)
    # The record goes last: an output without it is not trusted by a rerun.
    group.attrs.update({**attrs, ATTRS_KEY: record.with_status("running").to_dict()})


def _list_in_labels_group(labels_url: str, url: str, version: str,
                          with_instances: bool = False) -> None:
    """Add this output's name (and its instance image, ``NAME/instances``) to its
    source image's ``labels`` group."""
    import zarr

    zarr_format: Literal[2, 3] = 2 if version == "0.4" else 3
    labels = zarr.open_group(store=labels_url, mode="a", zarr_format=zarr_format)
    names = ome_output.listed_labels(dict(labels.attrs))
    name = url.rstrip("/").rsplit("/", 1)[-1]
    new = [n for n in (name, *([f"{name}/{INSTANCES}"] if with_instances else []))
           if n not in names]
    if new:
        labels.attrs.update(ome_output.labels_group_attrs(version, [*names, *new]))


def output_exists(url: str) -> bool:
    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return bool(fs.exists(path))
    return Path(url).exists()


def remove_partial_files(url: str) -> None:
    # zarr's local store writes chunks to '*.partial' then renames; a kill
    # inside a write leaves one behind, which nothing must ever read.
    if is_remote(url):
        return
    for leftover in Path(url).rglob("*.partial"):
        leftover.unlink(missing_ok=True)


def done_blocks(url: str) -> np.ndarray:
    """Boolean grid: True where a block's done-marker exists."""
    import zarr

    done = zarr.open_array(store=url, path=DONE, mode="r")
    return np.asarray(done[...]).astype(bool)


@dataclass
class OpenOutput:
    """Arrays of one output, opened once per worker process."""

    labels: zarr.Array[Any] | None
    probabilities: zarr.Array[Any] | None
    done: zarr.Array[Any]
    channel_index: int
    # With instances: level 0's provisional ids (the block pass) and final ids.
    provisional: zarr.Array[Any] | None = None
    instances: zarr.Array[Any] | None = None
    url: str = ""
    # With --split: what the seeds flood by, and the seeds' final ids.
    flood: zarr.Array[Any] | None = None
    seeds: zarr.Array[Any] | None = None


@dataclass(frozen=True)
class BlockInstances:
    """The block pass's part of the instances: provisional ids, their sums, and with
    --split the probability its seeds flood by (negative: not theirs to flood)."""

    ids: np.ndarray
    stats: np.ndarray
    flood: np.ndarray | None = None


def open_output(spec: OutputSpec, level: int = 0) -> OpenOutput:
    """The arrays of ``level``; its done-markers are the blocks' (level 0) or the
    pyramid level's."""
    import zarr

    group = zarr.open_group(store=spec.url, mode="r+")
    lead = len(spec.axes) - spec.dims
    splits = spec.instances is not None and spec.instances.splits
    return OpenOutput(
        labels=_array(group, spec.labels_path(level)) if spec.want_labels else None,
        probabilities=_array(group, spec.probabilities_path(level))
        if spec.want_probabilities else None,
        done=_array(group, DONE if level == 0 else f"{PYRAMID}/{level}"),
        channel_index=spec.channel_index(lead),
        provisional=_array(group, PROVISIONAL) if spec.want_instances and level == 0 else None,
        instances=_array(group, spec.instances_path(level)) if spec.want_instances else None,
        url=spec.url,
        flood=_array(group, FLOOD) if splits and level == 0 else None,
        seeds=_array(group, SEEDS) if splits and level == 0 else None,
    )


def _array(group: zarr.Group, path: str) -> zarr.Array[Any]:
    node = group[path]
    if not hasattr(node, "shape"):
        raise KeyError(f"{path} in {group.store_path} is not an array")
    # Every chunk stored, even one all fill value: verify.py then knows a missing
    # chunk of a done block for damage.
    return node.with_config({"write_empty_chunks": True})  # type: ignore[union-attr]


def write_block(output: OpenOutput, block: Block, result: BlockResult,
                instances: BlockInstances | None = None) -> None:
    """Write the block's chunks (and with ``instances``, its provisional ids and
    their sums), then its done-marker (never before)."""
    slices = block.write.to_slices()
    if output.provisional is not None and instances is not None:
        output.provisional[slices] = instances.ids.reshape(block.write.shape)
        if output.flood is not None and instances.flood is not None:
            output.flood[slices] = instances.flood.reshape(block.write.shape)
        save_arrays(output.url, block_file("stats", block.index), {"stats": instances.stats})
    if output.labels is not None and result.labels is not None:
        output.labels[slices] = result.labels.reshape(block.write.shape)
    if output.probabilities is not None and result.probabilities is not None:
        at = output.channel_index
        classes = result.probabilities.shape[0]
        shape = (*block.write.shape[:at], classes, *block.write.shape[at:])
        output.probabilities[(*slices[:at], slice(None), *slices[at:])] = (
            result.probabilities.reshape(shape)
        )
    mark_done(output.done, block.index)


def mark_done(done: zarr.Array[Any], index: tuple[int, ...]) -> None:
    done[tuple(slice(i, i + 1) for i in index)] = np.ones((1,) * len(index), dtype=np.uint8)


def block_file(kind: str, index: tuple[int, ...]) -> str:
    """Where a pass keeps one block's small result: ``_instances/<kind>/<block>.npz``."""
    return f"{WORK}/{kind}/{'.'.join(map(str, index))}.npz"


def save_arrays(url: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write numpy arrays (no pickles) as ``url/key``, whole or not at all: its
    existence is a pass's done-marker."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    data = buffer.getvalue()
    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        fs.pipe_file(f"{path.rstrip('/')}/{key}", data)  # one PUT: whole or absent
        return
    target = Path(url) / key
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)


def load_arrays(url: str, key: str) -> dict[str, np.ndarray] | None:
    """The arrays ``save_arrays`` wrote at ``url/key``; None where there are none."""
    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        try:
            data = fs.cat_file(f"{path.rstrip('/')}/{key}")
        except FileNotFoundError:
            return None
    else:
        try:
            data = (Path(url) / key).read_bytes()
        except FileNotFoundError:
            return None
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def has_arrays(url: str, key: str) -> bool:
    """Whether ``save_arrays`` wrote ``url/key`` (a pass's done-marker), unread."""
    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return bool(fs.exists(f"{path.rstrip('/')}/{key}"))
    return (Path(url) / key).is_file()


def remove_work(url: str) -> None:
    """Drop the instance passes' working state of a complete output."""
    remove_output(f"{url.rstrip('/')}/{WORK}")


def pyramid_done(url: str, level: int) -> np.ndarray:
    """Boolean grid of a pyramid level's done-markers."""
    import zarr

    return np.asarray(zarr.open_array(store=url, path=f"{PYRAMID}/{level}", mode="r")[...]) \
        .astype(bool)


def finalize(url: str) -> None:
    """Mark the run complete.

    Timings stay out of the store: a resumed run must leave it byte-identical
    to an uninterrupted one.
    """
    import zarr

    group = zarr.open_group(store=url, mode="r+")
    record = Provenance.from_dict(group.attrs[ATTRS_KEY], f"output {url!r}")
    group.attrs[ATTRS_KEY] = record.with_status("complete").to_dict()
