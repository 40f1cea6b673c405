"""Fault 8: a run killed between a block's chunk writes and its done-marker, or inside a write.

``KILLER`` runs one image in a subprocess and SIGKILLs itself at an exact point
of block 2.3: after all its data chunks are written but before its done-marker
("before-done"), or when half of a label chunk's bytes have reached zarr's
temporary file ("inside-write"). The half-written block is never marked done;
the rerun redoes it, removes the temporary file and ends byte-identical to an
uninterrupted run.
"""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fault_helpers import (  # noqa: F401
    SUMMARY,
    assert_identical,
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

KILLER = textwrap.dedent('''
    """Run one image in-process and SIGKILL this process at an exact point of one block."""
    import os, signal, sys, uuid
    from pathlib import Path

    from distributed import Client, LocalCluster

    import unet_tiles.pipeline.writer as writer
    from unet_tiles.engine.run import SegmentRequest, validate

    mode, inp, out, model, target, kind = sys.argv[1:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "before-done":
        real = writer.write_block

        class DieOnDone:
            def __setitem__(self, key, value):
                die()

        def write_block(output, block, result, *instances):
            if block.id == target:  # all data chunks written, then killed before the marker
                output = writer.OpenOutput(output.labels, output.probabilities, DieOnDone(),
                                           output.channel_index)
            return real(output, block, result, *instances)

        writer.write_block = write_block
    else:  # "inside-write": half of a chunk's bytes reach zarr's temporary file
        import zarr.storage._local as local

        real_put = local._put
        row, col = (int(i) for i in target.split("."))
        victim = f"labels/c/{row}/{col}"

        def _put(path, value, exclusive=False):
            if str(path).endswith(victim):
                data = bytes(value.as_buffer_like())
                tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                die()
            return real_put(path, value, exclusive)

        local._put = _put

    run = validate(SegmentRequest(inp, out, model, output_kind=kind, block_size=64))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        run.segment(client, progress=False)
    sys.exit(3)  # the kill never came
''')


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "kind"), [("before-done", "both"),
                                            ("inside-write", "labels")])
def test_killed_inside_a_block_is_redone(mode: str, kind: str, tmp_path: Path, model: Path,
                                         client: Any, spawn: Callable[..., Any]) -> None:
    inp = make_image(tmp_path / "img.zarr")
    ref = reference(client, inp, str(tmp_path / "ref.zarr"), model, "--output", kind)
    out = str(tmp_path / "out.zarr")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    target = "2.3"
    proc = spawn([sys.executable, str(script), mode, inp, out, str(model), target, kind])
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    done = done_grid(out)
    assert done is not None
    assert not done[2, 3], "a half-written block was marked done"
    assert done.sum() > 0
    partial = list(Path(out).rglob("*.partial"))
    if mode == "inside-write":
        assert partial, "the kill inside a chunk write should leave zarr's temporary file"
        assert not (Path(out) / "labels" / "c" / "2" / "3").exists()
    else:  # the data chunks are there, the marker is not
        assert (Path(out) / "labels" / "c" / "2" / "3").exists()

    status, stdout, stderr = run_cli(spawn, segment_argv(inp, out, model, "--output", kind))
    assert status == 0, stderr
    _computed, skipped = map(int, SUMMARY.search(stdout).groups())  # type: ignore[union-attr]
    assert skipped == int(done.sum())
    assert not list(Path(out).rglob("*.partial")), "a temporary file survived the resume"
    assert_identical(out, ref)
