"""Resuming after the input was repaired (``unet_tiles/pipeline/repair.py``).

A run that met a missing or corrupt input chunk leaves the blocks that read it
undone; once the chunk is repaired the rerun resumes, unless a block already
done read an input chunk that changed after its done-marker
(``stale_done_blocks``), which would mix two inputs in one output. The
end-to-end fault with the CLI is test_fault_corrupt_input.py.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fault_helpers import (  # noqa: F401
    BLOCK,
    assert_identical,
    blocks_reading_chunk,
    make_image,
    model_fixture,
    reference,
)

from unet_tiles.engine.run import Run, SegmentRequest, validate
from unet_tiles.pipeline import writer
from unet_tiles.pipeline.repair import repaired_input_resumes, stale_done_blocks

if TYPE_CHECKING:
    from collections.abc import Iterable


@pytest.mark.cluster
def test_changed_chunk_under_a_done_block_is_refused(tmp_path: Path, model: Path,
                                                     client: Any) -> None:
    """The repaired-input rule never resumes over a block whose input changed."""
    from unet_tiles.errors import OutputConflictError

    inp = make_image(tmp_path / "img.zarr", shape=(128, 128))
    out = reference(client, inp, str(tmp_path / "out.zarr"), model)
    import zarr

    group = zarr.open_group(out, mode="r+")
    group.attrs["unet_tiles"] = {**group.attrs["unet_tiles"], "status": "running"}
    time.sleep(0.05)
    chunk = Path(inp) / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes())  # same bytes, but written after the blocks
    run = validate(SegmentRequest(inp, out, str(model), block_size=int(BLOCK)))
    with run.locked(), pytest.raises(OutputConflictError, match="different input content"):
        run.prepare()


# --- direct tests, blocks run serially in this process ---------------------------------------


def run_serially(inp: str, out: str, model: Path, *, finalize: bool = True) -> Run:
    """Segment ``inp`` into ``out`` in this process (``Run.execute(None)``)."""
    run = validate(SegmentRequest(inp, out, str(model), block_size=int(BLOCK)))
    with run.locked():
        run.prepare()
        run.execute(None)
        if finalize:
            run.finalize()
    return run


def ids(indices: Iterable[tuple[int, ...]]) -> set[str]:
    return {".".join(str(i) for i in index) for index in indices}


def touch_chunk(inp: str, chunk: tuple[int, ...]) -> Path:
    """Rewrite one input chunk with its own bytes: same pixels, a newer mtime."""
    time.sleep(0.05)
    path = Path(inp).joinpath("c", *(str(i) for i in chunk))
    path.write_bytes(path.read_bytes())
    return path


def unmark(out: str, blocks: Iterable[tuple[int, ...]]) -> None:
    """Clear the done-markers of ``blocks``, as if they had failed."""
    import zarr

    done = zarr.open_array(out, path=writer.DONE, mode="r+")
    for index in blocks:
        done[index] = 0


def test_stale_done_blocks_are_the_done_blocks_over_a_newer_chunk(tmp_path: Path,
                                                                   model: Path) -> None:
    inp = make_image(tmp_path / "img.zarr")
    out = str(tmp_path / "out.zarr")
    run = run_serially(inp, out, model, finalize=False)
    assert stale_done_blocks(out, run.plan, run.source) == []

    touch_chunk(inp, (1, 2))
    readers = blocks_reading_chunk(inp, model, (1, 2))
    assert 1 < len(readers) < len(run.plan)
    stale = stale_done_blocks(out, run.plan, run.source)
    assert len(stale) == len(set(stale))
    assert set(stale) == ids(readers)

    # Blocks not done are never stale, whatever they read.
    undone = sorted(readers)[:2]
    unmark(out, undone)
    assert set(stale_done_blocks(out, run.plan, run.source)) == ids(readers) - ids(undone)


def test_a_missing_chunk_under_a_done_block_makes_it_stale(tmp_path: Path,
                                                           model: Path) -> None:
    inp = make_image(tmp_path / "img.zarr")
    out = str(tmp_path / "out.zarr")
    run = run_serially(inp, out, model, finalize=False)
    readers = blocks_reading_chunk(inp, model, (0, 0))
    (Path(inp) / "c" / "0" / "0").unlink()
    assert set(stale_done_blocks(out, run.plan, run.source)) == ids(readers)


def test_repaired_chunk_under_only_unfinished_blocks_resumes_byte_identical(
        tmp_path: Path, model: Path) -> None:
    inp = make_image(tmp_path / "img.zarr")
    out = str(tmp_path / "out.zarr")
    first = run_serially(inp, out, model, finalize=False)
    readers = blocks_reading_chunk(inp, model, (1, 2))
    unmark(out, readers)  # the blocks that read the broken chunk failed
    touch_chunk(inp, (1, 2))  # ... which is now repaired

    run = validate(SegmentRequest(inp, out, str(model), block_size=int(BLOCK)))
    stored = writer.read_record(out)
    assert stored is not None
    assert not stored.complete
    assert stored.fingerprint == first.record.fingerprint != run.record.fingerprint
    assert repaired_input_resumes(out, run.plan, run.source, stored, run.record)
    decision = run.decide()
    assert (decision.action, decision.cause) == ("resume", "input")

    with run.locked():
        assert run.prepare().action == "resume"
        # The stored record now holds the repaired input's fingerprint.
        recorded = writer.read_record(out)
        assert recorded is not None
        assert recorded.fingerprint == run.record.fingerprint
        summary = run.execute(None)
        run.finalize()
    assert summary.blocks_done == len(readers)
    assert summary.blocks_skipped == len(run.plan) - len(readers)
    # Byte-identical to a run on the repaired input from the start.
    ref = str(tmp_path / "ref.zarr")
    run_serially(inp, ref, model)
    assert_identical(out, ref)


def test_repaired_input_never_resumes_over_a_changed_done_block(
        tmp_path: Path, model: Path, caplog: pytest.LogCaptureFixture) -> None:
    inp = make_image(tmp_path / "img.zarr")
    out = str(tmp_path / "out.zarr")
    run_serially(inp, out, model, finalize=False)
    readers = blocks_reading_chunk(inp, model, (1, 2))
    unmark(out, readers)
    touch_chunk(inp, (1, 2))
    touch_chunk(inp, (3, 0))  # read by done blocks too
    run = validate(SegmentRequest(inp, out, str(model), block_size=int(BLOCK)))
    stored = writer.read_record(out)
    assert stored is not None
    with caplog.at_level(logging.WARNING, logger="unet_tiles.pipeline.repair"):
        assert not repaired_input_resumes(out, run.plan, run.source, stored, run.record)
    stale = ids(blocks_reading_chunk(inp, model, (3, 0))) - ids(readers)
    assert stale
    assert set(stale_done_blocks(out, run.plan, run.source)) == stale
    assert "input changed under done block(s)" in caplog.text
    decision = run.decide()
    assert (decision.action, decision.cause) == ("redo", "input")


def test_repaired_input_resumes_only_unfinished_local_runs_of_the_same_metadata(
        tmp_path: Path, model: Path) -> None:
    inp = make_image(tmp_path / "img.zarr")
    out = str(tmp_path / "out.zarr")
    run_serially(inp, out, model, finalize=False)
    readers = blocks_reading_chunk(inp, model, (1, 2))
    unmark(out, readers)
    touch_chunk(inp, (1, 2))
    run = validate(SegmentRequest(inp, out, str(model), block_size=int(BLOCK)))
    stored = writer.read_record(out)
    assert stored is not None
    assert repaired_input_resumes(out, run.plan, run.source, stored, run.record)
    # A complete output is never resumed over a changed input.
    assert not repaired_input_resumes(out, run.plan, run.source,
                                      stored.with_status("complete"), run.record)
    # Other input metadata (here its shape) is another image, not a repair.
    other = replace(run.record, input={**run.record.input, "shape": [512, 512]})
    assert not stored.same_input_metadata(other)
    assert not repaired_input_resumes(out, run.plan, run.source, stored, other)
    # Remote stores' modification times are not trusted.
    assert not repaired_input_resumes("memory://out.zarr", run.plan, run.source, stored,
                                      run.record)
    # An output whose done-markers cannot be read answers no, with no error.
    assert not repaired_input_resumes(str(tmp_path / "nothing.zarr"), run.plan, run.source,
                                      stored, run.record)
