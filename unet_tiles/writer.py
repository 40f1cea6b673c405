"""The output store: arrays, chunk-aligned block writes, done-markers, provenance.

Layout of OUTPUT (a zarr v3 group)::

    OUTPUT/
      zarr.json          attrs["unet_tiles"]: version, model hash, parameters, input identity
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

from unet_tiles import __version__
from unet_tiles.errors import OutputConflictError
from unet_tiles.source import is_remote

if TYPE_CHECKING:
    import zarr

    from unet_tiles.plan import Block, BlockPlan
    from unet_tiles.predict import BlockResult

logger = logging.getLogger(__name__)

ATTRS_KEY = "unet_tiles"
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


def identity(model_hash: str, parameters: dict[str, Any],
             input_identity: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": __version__,
        "model_hash": model_hash,
        "parameters": parameters,
        "input": input_identity,
    }


def _same_run(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why ``stored`` differs from ``wanted`` (None if the run may resume)."""
    if stored.get("model_hash") != wanted["model_hash"]:
        return "was written with a different model"
    if stored.get("parameters") != wanted["parameters"]:
        changed = sorted(
            k for k in set(stored.get("parameters", {})) | set(wanted["parameters"])
            if stored.get("parameters", {}).get(k) != wanted["parameters"].get(k)
        )
        return f"was written with other parameters ({', '.join(changed)})"
    if stored.get("input", {}).get("fingerprint") != wanted["input"].get("fingerprint"):
        return "was written from different input content"
    return None


def read_record(url: str) -> dict[str, Any] | None:
    """The provenance record of an existing output, or None if there is none."""
    import zarr

    try:
        group = zarr.open_group(store=url, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError):
        return None
    except (ValueError, KeyError):
        return None
    record = group.attrs.get(ATTRS_KEY)
    return dict(record) if isinstance(record, dict) else None


def remove_output(url: str) -> None:
    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)
    else:
        shutil.rmtree(url, ignore_errors=True)


def prepare_output(spec: OutputSpec, plan: BlockPlan, record: dict[str, Any],
                   overwrite: bool) -> bool:
    """Create the output, or check an existing one may be resumed.

    Returns True when resuming an existing run.
    """
    import zarr

    existing = _output_exists(spec.url)
    if existing:
        stored = read_record(spec.url)
        if stored is None:
            if not overwrite:
                raise OutputConflictError(
                    f"output {spec.url!r} exists and was not written by unet-tiles; "
                    "choose another path or pass --overwrite to replace it"
                )
        else:
            why = _same_run(stored, record)
            if why is not None:
                from unet_tiles.resume import adopt_repaired_input

                # A repaired input chunk under only unfinished blocks still resumes.
                why = None if adopt_repaired_input(spec.url, plan, stored, record) else why
            if why is None:
                _remove_partial_files(spec.url)
                return True
            if not overwrite:
                raise OutputConflictError(
                    f"output {spec.url!r} {why}; pass --overwrite to replace it or "
                    "choose another output path"
                )
        logger.info("overwriting %s", spec.url)
        remove_output(spec.url)
    group = zarr.open_group(store=spec.url, mode="w", zarr_format=3)
    lead = len(plan.shape) - spec.dims
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
    group.attrs[ATTRS_KEY] = {**record, "status": "running"}
    return False


def _output_exists(url: str) -> bool:
    if is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return bool(fs.exists(path))
    return Path(url).exists()


def _remove_partial_files(url: str) -> None:
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

    labels: zarr.Array | None
    probabilities: zarr.Array | None
    done: zarr.Array


def open_output(url: str) -> OpenOutput:
    import zarr

    group = zarr.open_group(store=url, mode="r+")
    names = set(group.array_keys())
    return OpenOutput(
        labels=group["labels"] if "labels" in names else None,  # type: ignore[arg-type]
        probabilities=group["probabilities"] if "probabilities" in names else None,  # type: ignore[arg-type]
        done=group[DONE],  # type: ignore[arg-type]
    )


def write_block(output: OpenOutput, block: Block, result: BlockResult, dims: int) -> None:
    """Write the block's chunks, then its done-marker (never before)."""
    slices = block.write.to_slices()
    lead = len(slices) - dims
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
    record = dict(group.attrs[ATTRS_KEY])  # type: ignore[arg-type]
    record["status"] = "complete"
    group.attrs[ATTRS_KEY] = record
