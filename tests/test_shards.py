"""Sharded outputs (zarr v3): blocks are whole shards, so no two tasks write one.

zarr-python's partial-shard writes from two processes silently lose data; here
many worker processes write a sharded output and every value is checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import write_zarr

from unet_tiles.engine.run import SegmentRequest, validate
from unet_tiles.errors import UsageError
from unet_tiles.pipeline.plan import shard_shape

if TYPE_CHECKING:
    from pathlib import Path


def test_shard_shape_is_whole_chunks_and_covers_no_more_than_the_image() -> None:
    assert shard_shape((3, 300, 420), (1, 32, 32), 2, 64) == (1, 64, 64)
    assert shard_shape((300, 420), (32, 32), 2, 100) == (96, 96)  # rounded to whole chunks
    assert shard_shape((40, 420), (32, 32), 2, 1000) == (64, 448)  # clipped to the image


@pytest.mark.cluster
def test_many_workers_write_every_byte_of_a_sharded_output(tmp_path: Path, make_model: Any,
                                                           client: Any) -> None:
    image = (np.random.default_rng(5).random((300, 420)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32))
    model = str(make_model())
    sharded = validate(SegmentRequest(src, str(tmp_path / "sharded.zarr"), model,
                                      output_kind="both", block_size=32, shard=64))
    assert sharded.plan.shards == (64, 64)
    assert sharded.plan.block_shape == (64, 64)  # a 32 px block would split shards
    assert len(sharded.plan) == 5 * 7
    summary = sharded.segment(client, progress=False)
    assert summary.blocks_done == 35
    plain = validate(SegmentRequest(src, str(tmp_path / "plain.zarr"), model,
                                    output_kind="both", block_size=64))
    plain.segment(client, progress=False)
    got = zarr.open_group(str(tmp_path / "sharded.zarr"), mode="r")
    want = zarr.open_group(str(tmp_path / "plain.zarr"), mode="r")
    assert got["labels"].shards == (64, 64)
    assert got["probabilities"].shards == (3, 64, 64)
    np.testing.assert_array_equal(got["labels"][...], want["labels"][...])
    np.testing.assert_array_equal(got["probabilities"][...], want["probabilities"][...])
    shard_files = [p for p in (tmp_path / "sharded.zarr" / "labels" / "c").rglob("*")
                   if p.is_file()]
    assert len(shard_files) == 35  # one object per shard, not per chunk


def test_sharding_needs_zarr_v3(tmp_path: Path, make_model: Any) -> None:
    from test_ome_output import ome_image

    src = ome_image(tmp_path / "img.zarr", "0.4")
    with pytest.raises(UsageError, match="`shard` needs zarr v3"):
        validate(SegmentRequest(src, str(tmp_path / "out.zarr"), str(make_model()), shard=64))
    with pytest.raises(UsageError, match="`shard` must be at least 1 px"):
        SegmentRequest(src, "out.zarr", "m", shard=0)
