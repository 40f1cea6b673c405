"""Instances of a given class image through the real passes and stores, no model.

The block pass is ``engine.blocks.process_block`` minus the prediction: each
block's classes and probabilities are cut from whole-image arrays and given to
the same ``label_result`` and ``write_block``; the later passes are
``engine.instances.make_instances`` as a run calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from strategies import MODELS

from unet_tiles.engine.instances import label_result, make_instances
from unet_tiles.pipeline.instances import InstanceSpec
from unet_tiles.pipeline.plan import BlockPlan
from unet_tiles.pipeline.predict import BlockResult
from unet_tiles.pipeline.provenance import Provenance
from unet_tiles.pipeline.writer import OutputSpec, create_output, open_output, write_block

if TYPE_CHECKING:
    from distributed import Client

RECORD = Provenance("0.1.0", "ab" * 32, {"output": "instances"},
                    {"url": "/in.zarr", "fingerprint": "f" * 64})
AXES = {2: "yx", 3: "zyx", 4: "tzyx"}


def instance_output(url: str, shape: tuple[int, ...], block_shape: tuple[int, ...], dims: int,
                    connectivity: str = "1", min_size: int = 0, consecutive: bool = True,
                    wanted: tuple[int, ...] = (1,), chunks: tuple[int, ...] | None = None,
                    **split: Any) -> tuple[OutputSpec, BlockPlan]:
    """An output store with instances, created on disk."""
    axes = AXES[len(shape)]
    model = MODELS[(1, "valid")]  # its geometry only, for any dims
    plan = BlockPlan(shape, chunks or block_shape, block_shape, dims, (model.halo[0],) * dims,
                     model.divisor, 32, model.valid_size(1))
    spec = OutputSpec(url, axes, dims, 3, (), False, False, "float32",
                      instances=InstanceSpec(wanted, connectivity, min_size, consecutive,
                                             **split),
                      objects_csv=True)
    create_output(spec, plan, RECORD)
    return spec, plan


def block_pass(spec: OutputSpec, plan: BlockPlan, classes: np.ndarray,
               probabilities: np.ndarray, only: set[tuple[int, ...]] | None = None) -> None:
    """Pass 1 over every block (or ``only`` these), from whole-image arrays."""
    output = open_output(spec)
    for block in plan:
        if only is not None and block.index not in only:
            continue
        box = block.write.to_slices()
        lead = plan.lead
        labels = classes[box].reshape(block.write.shape[lead:])
        probs = probabilities[(slice(None), *box)].reshape(
            (probabilities.shape[0], *block.write.shape[lead:]))
        result = BlockResult(labels=labels, probabilities=probs)
        write_block(output, block, result,
                    label_result(spec, plan, block, labels, probs))


def segment_classes(url: str, classes: np.ndarray, block_shape: tuple[int, ...], dims: int,
                    client: Client | None = None, probabilities: np.ndarray | None = None,
                    **options: Any) -> tuple[np.ndarray, Any, int]:
    """(instances, object table, object count) of a class image."""
    import pyarrow.parquet as pq
    import zarr

    if probabilities is None:
        probabilities = np.stack([classes == k for k in range(3)]).astype(np.float32)
    spec, plan = instance_output(url, classes.shape, block_shape, dims, **options)
    block_pass(spec, plan, classes, probabilities)
    count = make_instances(client, spec, plan)
    instances = np.asarray(zarr.open_array(url, path="instances", mode="r")[...])
    return instances, pq.read_table(f"{url}/objects.parquet"), count


def same_up_to_ids(ours: np.ndarray, reference: np.ndarray) -> bool:
    """Equal up to a bijection of the non-zero ids, background to background."""
    if ((ours == 0) != (reference == 0)).any():
        return False
    pairs = np.unique(np.stack([ours[ours > 0], reference[reference > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
