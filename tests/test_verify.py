"""Integrity: crc32c on output chunks, ``unet-tiles verify``, and resumes that redo
damaged done blocks (pipeline/verify.py)."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from helpers import write_zarr

from unet_tiles.cli import main
from unet_tiles.engine.run import SegmentRequest, validate
from unet_tiles.errors import InputError
from unet_tiles.pipeline.verify import verify_output

if TYPE_CHECKING:
    from pathlib import Path


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def flip(path: Path) -> None:
    """Flip one byte in the middle of a stored object (not its header)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def segment(src: str, out: Path, model: str, **kwargs: Any) -> Any:
    return validate(SegmentRequest(src, str(out), model, block_size=32, **kwargs)).segment()


@pytest.fixture
def image(tmp_path: Path) -> str:
    data = (np.random.default_rng(3).random((100, 90)) * 255).astype("uint8")
    return write_zarr(tmp_path / "in.zarr", data, (32, 32))


@pytest.fixture
def model(make_model: Any) -> str:
    return str(make_model())


@pytest.fixture
def pair(tmp_path: Path, image: str, model: str) -> tuple[Path, Path]:
    """Two identical plain outputs (labels and probabilities): one to damage, one kept."""
    damaged, kept = tmp_path / "out.zarr", tmp_path / "kept.zarr"
    segment(image, damaged, model, output_kind="both")
    shutil.copytree(damaged, kept)
    return damaged, kept


def codec_list(path: Path) -> list[dict[str, Any]]:
    meta = json.loads((path / "zarr.json").read_text())
    found: list[dict[str, Any]] = meta["codecs"]
    if found[0]["name"] == "sharding_indexed":
        found = found[0]["configuration"]["codecs"]
    return found


def codecs(path: Path) -> list[str]:
    return [c["name"] for c in codec_list(path)]


def test_every_array_carries_crc32c_after_the_compressor(pair: tuple[Path, Path]) -> None:
    out, _ = pair
    for name in ("labels", "probabilities", "done"):
        assert codecs(out / name) == ["bytes", "zstd", "crc32c"], name
        # zstd's level 1, not zarr's default 3 (writer.ZSTD_LEVEL).
        assert codec_list(out / name)[1]["configuration"]["level"] == 1, name


def test_a_clean_output_verifies(pair: tuple[Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = pair
    report = verify_output(str(out))
    assert report.ok
    # 12 blocks of 32 px: 12 labels + 12 probabilities chunks + 12 done-markers.
    assert (report.chunks, report.arrays, report.blocks_done) == (36, 3, 12)
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "OK: 36 chunks of 3 arrays verified, 12 blocks done"


def test_a_flipped_byte_is_named_by_block_and_chunk(
        pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = pair
    flip(out / "labels" / "c" / "1" / "2")
    report = verify_output(str(out))
    assert [d.line() for d in report.damage] == [
        "block 1.2 (y=32:64, x=64:90): chunk labels/c/1/2: checksum mismatch"]
    assert main(["verify", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "block 1.2 (y=32:64, x=64:90): chunk labels/c/1/2: checksum mismatch"]
    assert "1 damaged chunk" in captured.err


def test_a_missing_chunk_of_a_done_block_is_named(pair: tuple[Path, Path]) -> None:
    out, _ = pair
    (out / "probabilities" / "c" / "0" / "3" / "1").unlink()
    assert [d.line() for d in verify_output(str(out)).damage] == [
        "block 3.1 (y=96:100, x=32:64): chunk probabilities/c/0/3/1: missing"]


def test_a_missing_chunk_of_an_unfinished_block_is_not_damage(pair: tuple[Path, Path]) -> None:
    out, _ = pair
    (out / "labels" / "c" / "2" / "0").unlink()
    (out / "probabilities" / "c" / "0" / "2" / "0").unlink()
    (out / "done" / "c" / "2" / "0").unlink()
    report = verify_output(str(out))
    assert report.ok
    assert report.blocks_done == 11


def test_a_damaged_done_marker_is_named(pair: tuple[Path, Path]) -> None:
    out, _ = pair
    flip(out / "done" / "c" / "0" / "1")
    assert [d.line() for d in verify_output(str(out)).damage] == [
        "block 0.1 (y=0:32, x=32:64): chunk done/c/0/1: checksum mismatch"]


def test_a_rerun_redoes_exactly_the_damaged_blocks(pair: tuple[Path, Path], image: str,
                                                   model: str) -> None:
    out, kept = pair
    flip(out / "labels" / "c" / "1" / "2")
    (out / "probabilities" / "c" / "0" / "3" / "1").unlink()
    flip(out / "done" / "c" / "0" / "0")
    assert files(out) != files(kept)
    summary = segment(image, out, model, output_kind="both")
    assert summary.blocks_done == 3
    assert verify_output(str(out)).ok
    assert files(out) == files(kept)
    # Nothing damaged: nothing redone.
    assert segment(image, out, model, output_kind="both").blocks_done == 0


def test_verify_refuses_what_is_not_an_output(image: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match="not an output of unet-tiles"):
        verify_output(image)
    assert main(["verify", image]) == 2
    assert main(["verify", str(tmp_path / "nothing.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(line.startswith("unet-tiles: error: ") for line in err)


def test_ome_05_output_levels_are_checked_and_redone(tmp_path: Path, model: str) -> None:
    from test_ome_output import ome_image

    src = ome_image(tmp_path / "img.zarr", "0.5", shape=(150, 170))
    out, kept = tmp_path / "labels.zarr", tmp_path / "kept.zarr"
    segment(src, out, model)
    shutil.copytree(out, kept)
    for name in ("0", "1", "2", "done", "pyramid/1", "pyramid/2"):
        assert codecs(out / name) == ["bytes", "zstd", "crc32c"], name
    assert verify_output(str(out)).ok
    flip(out / "1" / "c" / "0" / "1")
    flip(out / "0" / "c" / "4" / "5")
    assert [d.line() for d in verify_output(str(out)).damage] == [
        "block 4.5 (y=128:150, x=160:170): chunk 0/c/4/5: checksum mismatch",
        "level 1 block 0.1 (y=0:32, x=32:64): chunk 1/c/0/1: checksum mismatch",
    ]
    summary = segment(src, out, model)
    assert summary.blocks_done == 1
    assert verify_output(str(out)).ok
    assert files(out) == files(kept)


def test_ome_04_outputs_carry_no_checksum_and_may_omit_chunks(tmp_path: Path,
                                                              model: str) -> None:
    from test_ome_output import ome_image

    src = ome_image(tmp_path / "img.zarr", "0.4", shape=(100, 90), levels=1)
    out = tmp_path / "labels.zarr"
    segment(src, out, model)
    assert verify_output(str(out)).ok
    assert "crc32c" not in (out / "0" / ".zarray").read_text()
    # zarr v2 arrays without checksums: a missing chunk reads as fill value.
    (out / "0" / "1" / "1").unlink()
    assert verify_output(str(out)).ok
    (out / "0" / "1" / "2").write_bytes(b"not a chunk")
    assert [d.chunk for d in verify_output(str(out)).damage] == ["0/1/2"]


def test_sharded_outputs_check_each_inner_chunk(tmp_path: Path, image: str, model: str) -> None:
    out, kept = tmp_path / "sharded.zarr", tmp_path / "kept.zarr"
    segment(image, out, model, shard=64)
    shutil.copytree(out, kept)
    assert codecs(out / "labels") == ["bytes", "zstd", "crc32c"]
    report = verify_output(str(out))
    assert report.ok
    assert (report.chunks, report.blocks_done) == (12 + 4, 4)
    shard = out / "labels" / "c" / "0" / "1"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # inside the first inner chunk, far from the index at the end
    shard.write_bytes(bytes(data))
    assert [d.line() for d in verify_output(str(out)).damage] == [
        "block 0.1 (y=0:64, x=64:90): chunk labels/c/0/1 inner 0.0: checksum mismatch"]
    index = out / "labels" / "c" / "1" / "0"
    data = bytearray(index.read_bytes())
    data[-10] ^= 0xFF  # the shard index
    index.write_bytes(bytes(data))
    assert len(verify_output(str(out)).damage) == 2
    assert segment(image, out, model, shard=64).blocks_done == 2
    assert files(out) == files(kept)
