"""Fault 5: the output disk fills up mid-run.

The output is written to a 192 KiB tmpfs. The run stops with one clear line
(no space left, which block, free space and rerun the same command), exits 1
and marks done only blocks that are complete and correct, leaving no temporary
file; after the disk is enlarged the rerun resumes and ends byte-identical to
an uninterrupted run. Skipped where a tmpfs cannot be mounted.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fault_helpers import (  # noqa: F401
    BLOCK,
    CHUNK,
    SUMMARY,
    assert_identical,
    done_grid,
    make_image,
    model_fixture,
    run_cli,
    segment_argv,
    spawn_fixture,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.cluster]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(disk)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_disk_full_is_clear_marks_nothing_and_resumes(
        tmp_path: Path, model: Path, client: Any, small_disk: Path,
        spawn: Callable[..., Any]) -> None:
    import zarr

    inp = make_image(tmp_path / "img.zarr")
    extra = ("--output", "both", "--dtype", "float32")
    from unet_tiles.engine.run import SegmentRequest, validate

    ref = str(tmp_path / "ref.zarr")
    r = validate(SegmentRequest(inp, ref, str(model), output_kind="both", dtype="float32",
                                block_size=int(BLOCK)))
    r.segment(client, progress=False)
    out = str(small_disk / "out.zarr")

    status, _stdout, stderr = run_cli(spawn, segment_argv(inp, out, model, *extra))
    assert status == 1, stderr
    message = [line for line in stderr.splitlines() if line.startswith("unet-tiles")][-1]
    assert "no space left on the output disk" in message, message
    assert re.search(r"block \d\.\d \(y=\d+:\d+, x=\d+:\d+\)", message), message
    assert "free space" in message
    assert "rerun the same command" in message
    done = done_grid(out)
    assert done is not None
    assert 0 < done.sum() < done.size
    # Everything marked done is complete and correct; no temporary file is left.
    for name in ("labels", "probabilities"):
        got, want = zarr.open_array(out, path=name, mode="r"), zarr.open_array(ref, path=name)
        for index in zip(*np.nonzero(done), strict=True):
            sl = tuple(slice(i * CHUNK, (i + 1) * CHUNK) for i in index)
            sl = sl if name == "labels" else (slice(None), *sl)
            np.testing.assert_array_equal(got[sl], want[sl])
    assert not list(Path(out).rglob("*.partial"))

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model, *extra))
    assert status == 0, stderr
    _computed, skipped = map(int, SUMMARY.search(stdout).groups())  # type: ignore[union-attr]
    assert skipped == int(done.sum())
    assert_identical(out, ref)
