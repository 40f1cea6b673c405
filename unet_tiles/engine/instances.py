"""Passes 2-4 of instance ids (``pipeline/instances.py``) after the block pass.

::

    faces    one task per block: its provisional ids grown by one pixel, its pairs
             -> _instances/faces/<block>.npz
    merge    here, on the client: every block's faces -> a BlockRelabel per block
    relabel  one task per block, given only its own BlockRelabel: final ids into
             instances/, its table rows -> _instances/objects/<block>.npz, then its
             done-marker in _instances/relabelled
    table    here: the rows, block after block, into OUTPUT/objects.parquet (one row
             group per block: memory is one block's rows)

Every pass skips what is done (a file, a marker), and the merge is recomputed
from the faces on a rerun: a killed run resumes to the same bytes.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.engine.faults import with_retries
from unet_tiles.engine.tasks import run_tasks

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from distributed import Client

    from unet_tiles.pipeline.instances import BlockRelabel
    from unet_tiles.pipeline.plan import Block, BlockPlan
    from unet_tiles.pipeline.writer import BlockInstances, OutputSpec

logger = logging.getLogger(__name__)


def label_result(spec: OutputSpec, plan: BlockPlan, block: Block, labels: np.ndarray,
                 probabilities: np.ndarray) -> BlockInstances:
    """Pass 1, inside the block task: the block's provisional ids and sums, and with
    ``split`` the probability its seeds flood by (``pipeline/split.py``)."""
    from unet_tiles.pipeline.instances import block_offset, label_block
    from unet_tiles.pipeline.writer import BlockInstances

    how = spec.instances
    assert how is not None
    shape = block.write.shape
    classes = list(how.classes)
    probability = probabilities[classes].astype(np.float32).sum(axis=0).reshape(shape)
    flood = None
    if not how.splits:
        mask = np.isin(labels, classes).reshape(shape)
    else:
        flood_mask = np.isin(labels, list(how.flood_classes)).reshape(shape)
        # Negative: not a class a seed may flood.
        flood = np.where(flood_mask, probability, -1).astype(np.float16)
        mask = np.isin(labels, list(how.seed_classes)).reshape(shape)
        if how.split == "probability":
            mask &= probability >= how.seed_probability
    ids, stats = label_block(mask, probability, block_offset(block.index, plan.grid,
                                                             plan.block_shape),
                             block.write.offset, plan.dims, how.connectivity)
    return BlockInstances(ids, stats, flood)


def block_of(plan: BlockPlan) -> Callable[[np.ndarray], np.ndarray]:
    """Provisional id -> linear index of the block that gave it."""
    from unet_tiles.pipeline.instances import capacity

    size = np.uint64(capacity(plan.block_shape))

    def of(ids: np.ndarray) -> np.ndarray:
        return ((np.asarray(ids, dtype=np.uint64) - np.uint64(1)) // size).astype(np.int64)

    return of


def faces_task(spec: OutputSpec, plan: BlockPlan, index: tuple[int, ...]) -> int:
    """Pass 2 for one block: its touching pairs and crossing objects, saved."""
    from unet_tiles.pipeline.geometry import Box
    from unet_tiles.pipeline.instances import block_faces, block_offset, capacity, touching_pairs
    from unet_tiles.pipeline.writer import block_file, open_output, save_arrays

    how = spec.instances
    assert how is not None
    block = plan.block(index)
    lead = plan.lead
    one = (0,) * lead + (1,) * plan.dims
    grown = block.write.grow(one, one).intersect(Box.of_shape(plan.shape))
    offset = block_offset(index, plan.grid, plan.block_shape)

    def work() -> int:
        output = open_output(spec)
        assert output.provisional is not None
        region = np.asarray(output.provisional[grown.to_slices()])
        pairs = touching_pairs(region, plan.dims, how.connectivity,
                               (offset, offset + capacity(plan.block_shape)))
        faces = block_faces(pairs, _stored(spec, "stats", index)["stats"], how.min_size)
        save_arrays(spec.url, block_file("faces", index), faces.to_arrays())
        return int(pairs.shape[0])

    return with_retries(work, f"finding the touching objects of {block.describe(spec.axes)}",
                        spec.url)


def relabel_task(spec: OutputSpec, plan: BlockPlan, index: tuple[int, ...],
                 part: BlockRelabel) -> int:
    """Pass 4 for one block: final ids, its table rows, then its done-marker."""
    from unet_tiles.pipeline.instances import relabel_block
    from unet_tiles.pipeline.writer import (
        RELABELLED,
        block_file,
        mark_done,
        open_output,
        save_arrays,
    )

    how = spec.instances
    assert how is not None
    block = plan.block(index)

    def work() -> int:
        import zarr

        output = open_output(spec)
        assert output.provisional is not None
        assert output.instances is not None
        slices = block.write.to_slices()
        final, rows = relabel_block(np.asarray(output.provisional[slices]),
                                    _stored(spec, "stats", index)["stats"], part,
                                    how.min_size, how.consecutive, how.dtype)
        # With --split these are the seeds, flooded into cells by the grow pass.
        target = output.seeds if how.splits else output.instances
        assert target is not None
        target[slices] = final
        save_arrays(spec.url, block_file("objects", index), {"rows": rows})
        done = zarr.open_array(store=spec.url, path=RELABELLED, mode="r+")
        mark_done(done, index)
        return int(rows.size)

    return with_retries(work, f"relabelling {block.describe(spec.axes)}", spec.url)


def grow_task(spec: OutputSpec, plan: BlockPlan, index: tuple[int, ...]) -> int:
    """Pass 5 with --split: the block's seeds flooded into cells from its window
    (``pipeline/split.py``), its cells' rows (those on its faces apart), saved."""
    from unet_tiles.pipeline.geometry import Box
    from unet_tiles.pipeline.instances import structure
    from unet_tiles.pipeline.split import boundary_ids, flood, halo, measure_ids
    from unet_tiles.pipeline.writer import block_file, open_output, save_arrays

    how = spec.instances
    assert how is not None
    block = plan.block(index)
    reach = (0,) * plan.lead + (halo(how.split_distance),) * plan.dims
    window = block.write.grow(reach, reach).intersect(Box.of_shape(plan.shape))
    inner = block.write.relative_to(window.offset).to_slices()

    def work() -> int:
        output = open_output(spec)
        assert output.seeds is not None
        assert output.flood is not None
        assert output.instances is not None
        seeds = np.asarray(output.seeds[window.to_slices()])
        probability = np.asarray(output.flood[window.to_slices()]).astype(np.float32)
        cells = flood(seeds, probability, window.offset, plan.shape, plan.dims,
                      structure(plan.dims, how.connectivity), how.split_distance)[inner]
        output.instances[block.write.to_slices()] = cells
        rows = measure_ids(cells, probability[inner], block.write.offset)
        shared = np.isin(rows["id"], boundary_ids(cells, plan.dims))
        save_arrays(spec.url, block_file("grown", index),
                    {"alone": rows[~shared], "shared": rows[shared]})
        return int(rows.size)

    return with_retries(work, f"growing the seeds of {block.describe(spec.axes)}", spec.url)


def make_instances(client: Client | None, spec: OutputSpec, plan: BlockPlan) -> int:
    """Passes 2-4 and the object table after the block pass; the object count."""
    import zarr

    from unet_tiles.pipeline.instances import BlockFaces, merge
    from unet_tiles.pipeline.writer import (
        OBJECTS_TABLE,
        RELABELLED,
        block_file,
        has_arrays,
        load_arrays,
        read_record,
    )

    assert spec.instances is not None
    record = read_record(spec.url)
    if record is not None and record.complete:
        # A rerun of a finished output: its working state is gone, its table holds all.
        return _table_rows(spec.url, OBJECTS_TABLE)
    started = time.perf_counter()
    indices = [b.index for b in plan]
    # Each block's faces are read once: those found now, the others once made.
    found = {i: load_arrays(spec.url, block_file("faces", i)) for i in indices}
    faces_todo = [i for i, stored in found.items() if stored is None]
    run_tasks(client, [(faces_task, (spec, plan, i), i) for i in faces_todo],
              "finding touching objects")
    faces = [BlockFaces.from_arrays(found[i] or _stored(spec, "faces", i)) for i in indices]
    del found
    merged = merge(faces, spec.instances.min_size, spec.instances.consecutive, block_of(plan))
    del faces
    done = np.asarray(zarr.open_array(store=spec.url, path=RELABELLED, mode="r")[...]) \
        .astype(bool)
    run_tasks(client, [(relabel_task, (spec, plan, i, merged.relabels[n]), i)
                       for n, i in enumerate(indices) if not done[i]], "relabelling")
    if spec.instances.splits:
        grow_todo = [i for i in indices if not has_arrays(spec.url, block_file("grown", i))]
        run_tasks(client, [(grow_task, (spec, plan, i), i) for i in grow_todo],
                  "growing seeds")
        owner = _owner(spec, plan, [merged.relabels[n].base for n in range(len(indices))])
        write_table(spec, indices, grown_rows(spec, indices, owner))
    else:
        write_table(spec, indices, lambda index: _stored(spec, "objects", index)["rows"])
    logger.info("%d objects in %s (%.1f s)", merged.objects, spec.url,
                time.perf_counter() - started)
    return merged.objects


def _stored(spec: OutputSpec, kind: str, index: tuple[int, ...]) -> dict[str, np.ndarray]:
    """A pass's saved arrays of one block; missing ones mean working state was lost
    under done-markers that say otherwise, which only a new output mends."""
    from unet_tiles.pipeline.writer import block_file, load_arrays

    stored = load_arrays(spec.url, block_file(kind, index))
    if stored is None:
        raise FileNotFoundError(f"the {kind} of block {'.'.join(map(str, index))} of "
                                f"{spec.url!r} are missing; rerun with --overwrite")
    return stored


def _owner(spec: OutputSpec, plan: BlockPlan, bases: list[int]
           ) -> Callable[[np.ndarray], np.ndarray]:
    """Final id -> the linear block whose table rows hold it."""
    assert spec.instances is not None
    if not spec.instances.consecutive:
        return block_of(plan)
    starts = np.asarray(bases, dtype=np.int64)

    def of(ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(starts, np.asarray(ids, dtype=np.int64), side="right") - 1

    return of


def grown_rows(spec: OutputSpec, indices: Sequence[tuple[int, ...]],
               owner: Callable[[np.ndarray], np.ndarray]
               ) -> Callable[[tuple[int, ...]], np.ndarray]:
    """Each block's table rows after the flood: its cells that touch no other block,
    and the cells its ids hold combined from every block's part of them (only the
    parts on block faces are ever held together)."""
    from unet_tiles.pipeline.instances import combine, stats_dtype

    parts = [_stored(spec, "grown", i)["shared"] for i in indices]
    shared = np.concatenate(parts) if parts else np.zeros(0, stats_dtype(len(spec.axes)))
    shared = shared[np.argsort(shared["id"], kind="stable")]
    totals = combine(shared, shared["id"])
    owners = owner(totals["id"])
    number = {index: n for n, index in enumerate(indices)}

    def rows(index: tuple[int, ...]) -> np.ndarray:
        mine = totals[owners == number[index]]
        both = np.concatenate([_stored(spec, "grown", index)["alone"], mine])
        return both[np.argsort(both["id"], kind="stable")]

    return rows


def write_table(spec: OutputSpec, indices: Sequence[tuple[int, ...]],
                rows_of: Callable[[tuple[int, ...]], np.ndarray]) -> None:
    """OUTPUT/objects.parquet (and .csv) from the blocks' rows, in block order: with
    consecutive ids, that is id order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from unet_tiles.pipeline.writer import OBJECTS_CSV, OBJECTS_TABLE

    schema = None
    with _TableFile(spec.url, OBJECTS_TABLE) as sink:
        writer = None
        for index in indices:
            table = pa.table(object_columns(rows_of(index), spec))
            if writer is None:
                schema = table.schema.with_metadata(_units(spec))
                writer = pq.ParquetWriter(sink, schema)
            writer.write_table(table.cast(schema))
        if writer is None:  # no blocks: an empty table with its columns
            from unet_tiles.pipeline.instances import stats_dtype

            table = pa.table(object_columns(np.zeros(0, stats_dtype(len(spec.axes))), spec))
            writer = pq.ParquetWriter(sink, table.schema.with_metadata(_units(spec)))
        writer.close()
    if spec.objects_csv:
        import pyarrow.csv as pcsv

        parquet = _read_back(spec.url, OBJECTS_TABLE)
        with _TableFile(spec.url, OBJECTS_CSV) as sink:
            pcsv.write_csv(parquet, sink)


def object_columns(rows: np.ndarray, spec: OutputSpec) -> dict[str, np.ndarray]:
    """The table's columns from combined rows: id, count, centroid, bounding box
    (start inclusive, stop exclusive, as slices), mean probability of the instance
    classes; for OME outputs also in physical units."""
    assert spec.instances is not None
    count = rows["count"].astype(np.int64)
    columns: dict[str, np.ndarray] = {"id": rows["id"].astype(spec.instances.dtype),
                                      "count": count}
    safe = np.maximum(count, 1)[:, None]
    centroid = rows["sum"] / safe
    for k, axis in enumerate(spec.axes):
        columns[f"centroid_{axis}"] = centroid[:, k]
    for k, axis in enumerate(spec.axes):
        columns[f"bbox_start_{axis}"] = rows["start"][:, k]
        columns[f"bbox_stop_{axis}"] = rows["stop"][:, k]
    columns["mean_probability"] = rows["probability"] / safe[:, 0]
    if spec.ome is not None:
        level = spec.ome.levels[0]
        shift = level.translation or (0.0,) * len(spec.axes)
        for k, ome_axis in enumerate(spec.ome.axes):
            if ome_axis.type != "space":
                continue
            name = f"{ome_axis.name}_{ome_axis.unit or 'physical'}"
            columns[f"centroid_{name}"] = shift[k] + centroid[:, k] * level.scale[k]
            columns[f"bbox_start_{name}"] = shift[k] + rows["start"][:, k] * level.scale[k]
            columns[f"bbox_stop_{name}"] = shift[k] + rows["stop"][:, k] * level.scale[k]
    return columns


def _units(spec: OutputSpec) -> dict[str, str]:
    axes = {a.name: a.unit or "" for a in spec.ome.axes} if spec.ome is not None else {}
    return {"unet_tiles.axes": spec.axes, "unet_tiles.units": ",".join(
        f"{name}={unit}" for name, unit in axes.items() if unit)}


class _TableFile:
    """A file beside the arrays, written whole or not at all."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name

    def __enter__(self) -> Any:
        from unet_tiles.pipeline.source import is_remote

        if is_remote(self.url):
            import fsspec

            self.file = fsspec.open(f"{self.url.rstrip('/')}/{self.name}", "wb").open()
            self.partial = None
        else:
            from pathlib import Path

            self.partial = Path(self.url) / f"{self.name}.partial"
            self.file = open(self.partial, "wb")  # closed in __exit__
        return self.file

    def __exit__(self, kind: Any, *rest: Any) -> None:
        import os

        self.file.close()
        if self.partial is not None:
            if kind is None:
                os.replace(self.partial, self.partial.with_name(self.name))
            else:
                self.partial.unlink(missing_ok=True)


def _table_rows(url: str, name: str) -> int:
    """A Parquet file's row count, from its footer (the rows are not read)."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(f"{url.rstrip('/')}/{name}", "rb") as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


def _read_back(url: str, name: str) -> Any:
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(f"{url.rstrip('/')}/{name}", "rb") as f:
        return pq.read_table(f)


__all__ = ["faces_task", "label_result", "make_instances", "relabel_task", "write_table"]
