"""Faults 3 and 9: a corrupt (truncated) or missing input chunk.

Only the blocks whose read window touches the chunk fail, and they write
nothing: a corrupt chunk is "input unreadable", a missing one "input
incomplete" naming the chunk, never read as background. The run reports one
line and exits 1; once the chunk is repaired the rerun does only the failed
blocks (the repaired-input rule, ``pipeline/repair.py``; see test_repair.py)
and ends with the reference's output.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fault_helpers import (  # noqa: F401
    SUMMARY,
    assert_identical,
    blocks_reading_chunk,
    done_grid,
    make_image,
    model_fixture,
    reference,
    run_cli,
    segment_argv,
    spawn_fixture,
)

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [pytest.mark.cluster]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_bad_input_chunk_fails_only_its_blocks_then_resumes(
        damage: str, tmp_path: Path, model: Path, client: Any,
        spawn: Callable[..., Any]) -> None:
    import zarr

    inp = make_image(tmp_path / "img.zarr")
    ref = reference(client, inp, str(tmp_path / "ref.zarr"), model)
    out = str(tmp_path / "out.zarr")
    chunk_file = Path(inp) / "c" / "1" / "2"
    backup = tmp_path / "chunk-backup"
    shutil.copy2(chunk_file, backup)
    if damage == "corrupt":  # truncated, as by an interrupted copy or a bad sector
        data = chunk_file.read_bytes()
        chunk_file.write_bytes(data[: len(data) // 2])
    else:  # a store still being copied: the chunk is not there yet
        chunk_file.unlink()
    expected_failed = blocks_reading_chunk(inp, model, (1, 2))
    assert 1 < len(expected_failed) < 20

    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model))
    assert status == 1, stderr
    # The workers log each failed task; the run's verdict is one line of its own.
    lines = [line for line in stderr.splitlines() if line.startswith("unet-tiles")]
    assert len(lines) == 1, stderr
    message = lines[0]
    assert f"{len(expected_failed)} of 20 blocks failed" in message
    assert re.search(r"block \d\.\d \(y=\d+:\d+, x=\d+:\d+\)", message), message
    if damage == "corrupt":
        assert "input unreadable" in message
    else:  # 9: names the chunk, never read as background
        assert "input incomplete" in message
        assert "c/1/2" in message
    done = done_grid(out)
    assert done is not None
    assert {tuple(int(i) for i in ix) for ix in zip(*np.nonzero(~done), strict=True)} == (
        expected_failed)
    # The failed blocks wrote nothing: no label chunk holds "background" for them.
    for index in expected_failed:
        assert not (Path(out) / "labels" / "c" / str(index[0]) / str(index[1])).exists()
    labels = zarr.open_array(out, path="labels", mode="r")
    assert labels.nchunks_initialized == 20 - len(expected_failed)

    # Repair: corrupt -> restored from backup as rsync -a would (mtime kept);
    # missing -> the copy finishes now (a new mtime).
    if damage == "corrupt":
        shutil.copy2(backup, chunk_file)
    else:
        shutil.copyfile(backup, chunk_file)
    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model))
    assert status == 0, stderr
    computed, skipped = map(int, SUMMARY.search(stdout).groups())  # type: ignore[union-attr]
    assert (computed, skipped) == (len(expected_failed), 20 - len(expected_failed))
    if damage == "corrupt":
        assert_identical(out, ref)
    else:  # the input's fingerprint now holds the new mtime; the pixels are the same
        for name in ("labels", "done"):
            np.testing.assert_array_equal(zarr.open_array(out, path=name, mode="r")[...],
                                          zarr.open_array(ref, path=name, mode="r")[...])
