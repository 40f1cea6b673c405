"""The output store: arrays, chunk-aligned block writes, done-markers, provenance.

Layout of OUTPUT (a zarr v3 group)::

    OUTPUT/
      zarr.json          attrs["unet_tiles"]: the provenance record (provenance.py)
      labels/            argmax class, the input's axes without c
      probabilities/     softmax, (..., K, *spatial)
      done/              uint8, one chunk per block: written after the block's data

A block's done chunk is written only after all of its data chunks, so a
crashed run leaves no block marked done that is not fully written (invariant 3).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.pipeline.provenance import ATTRS_KEY, Provenance
from unet_tiles.pipeline.source import is_remote

if TYPE_CHECKING:
    import zarr

    from unet_tiles.pipeline.plan import Block, BlockPlan
    from unet_tiles.pipeline.predict import BlockResult

logger = logging.getLogger(__name__)

DONE = "done"


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

    @property
    def labels_dtype(self) -> str:
        return "uint8" if self.classes <= 256 else "uint16"


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


def create_output(spec: OutputSpec, plan: BlockPlan, record: Provenance) -> None:
    """Create the output's arrays, then its provenance record (status running)."""
    import zarr

    group = zarr.open_group(store=spec.url, mode="w", zarr_format=3)
    lead = plan.lead
    if spec.want_labels:
        group.create_array(
            "labels", shape=plan.shape, chunks=plan.chunks, dtype=spec.labels_dtype,
            fill_value=0, dimension_names=tuple(spec.axes),
        )
    if spec.want_probabilities:
        axes = spec.axes[:lead] + "c" + spec.axes[lead:]
        group.create_array(
            "probabilities",
            shape=(*plan.shape[:lead], spec.classes, *plan.shape[lead:]),
            chunks=(*plan.chunks[:lead], spec.classes, *plan.chunks[lead:]),
            dtype=spec.probability_dtype, fill_value=0, dimension_names=tuple(axes),
        )
    group.create_array(DONE, shape=plan.grid, chunks=(1,) * len(plan.grid), dtype="uint8",
                       fill_value=0)
    # The record goes last: an output without it is not trusted by a rerun.
    group.attrs[ATTRS_KEY] = record.with_status("running").to_dict()


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


def open_output(url: str) -> OpenOutput:
    import zarr

    group = zarr.open_group(store=url, mode="r+")
    names = set(group.array_keys())
    return OpenOutput(
        labels=group["labels"] if "labels" in names else None,  # type: ignore[arg-type]
        probabilities=group["probabilities"] if "probabilities" in names else None,  # type: ignore[arg-type]
        done=group[DONE],  # type: ignore[arg-type]
    )


def write_block(output: OpenOutput, block: Block, result: BlockResult) -> None:
    """Write the block's chunks, then its done-marker (never before)."""
    slices = block.write.to_slices()
    lead = block.lead
    if output.labels is not None and result.labels is not None:
        output.labels[slices] = result.labels.reshape(block.write.shape)
    if output.probabilities is not None and result.probabilities is not None:
        classes = result.probabilities.shape[0]
        shape = (*block.write.shape[:lead], classes, *block.write.shape[lead:])
        output.probabilities[(*slices[:lead], slice(None), *slices[lead:])] = (
            result.probabilities.reshape(shape)
        )
    output.done[tuple(slice(i, i + 1) for i in block.index)] = np.ones(
        (1,) * len(block.index), dtype=np.uint8
    )


def finalize(url: str) -> None:
    """Mark the run complete.

    Timings stay out of the store: a resumed run must leave it byte-identical
    to an uninterrupted one.
    """
    import zarr

    group = zarr.open_group(store=url, mode="r+")
    record = Provenance.from_dict(group.attrs[ATTRS_KEY], f"output {url!r}")
    group.attrs[ATTRS_KEY] = record.with_status("complete").to_dict()
