"""``--output instances`` end to end: a real model, real stores, the CLI, OME-Zarr."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from helpers import write_zarr
from instance_helpers import same_up_to_ids
from scipy import ndimage
from test_ome_output import models, ome_image

from unet_tiles.engine.run import SegmentRequest, validate
from unet_tiles.pipeline.pyramid import nearest_indices
from unet_tiles.pipeline.writer import WORK

if TYPE_CHECKING:
    from pathlib import Path

@pytest.fixture(scope="module")
def model_dir() -> str:
    """The shipped demo model (background, nucleus): real objects on generated nuclei."""
    from unet_tiles.demo.images import demo_model_dir

    return str(demo_model_dir())


def nuclei(seed: int = 0, shape: tuple[int, int] = (200, 230)) -> np.ndarray:
    from unet_tiles.demo.synth import generate_arrays

    return generate_arrays(shape, seed=seed, kind="nuclei")[0]


def blobs(path: Path, seed: int = 0) -> str:
    """A generated nuclei image (the demo model's kind) as a zarr array."""
    image = nuclei(seed)
    return write_zarr(path, image, (64, 64))


def segment(src: str, out: str, model_dir: str, **options: Any) -> Any:
    options.setdefault("block_size", 64)
    return validate(SegmentRequest(src, out, model_dir, **options)).segment()


def test_instances_are_the_components_of_the_labels_whatever_the_block_size(
        tmp_path: Path, model_dir: str) -> None:
    src = blobs(tmp_path / "img.zarr")
    small = segment(src, str(tmp_path / "a.zarr"), model_dir, output_kind="labels,instances",
                    instance_class="nucleus")
    segment(src, str(tmp_path / "b.zarr"), model_dir, output_kind="labels,instances",
            block_size=128)
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    labels = a["labels"][...]
    expected, n = ndimage.label(labels > 0)
    assert n > 3
    assert small.objects == n
    assert same_up_to_ids(a["instances"][...], expected)
    assert same_up_to_ids(b["instances"][...], expected)
    table = pq.read_table(str(tmp_path / "a.zarr" / "objects.parquet"))
    assert table.num_rows == n
    assert sum(table.column("count").to_pylist()) == int((labels > 0).sum())
    assert not (tmp_path / "a.zarr" / WORK).exists()  # working state gone once complete
    record = a.attrs["unet_tiles"]["parameters"]
    assert record["output"] == "labels,instances"
    assert record["instances"]["classes"] == [1]


def test_a_rerun_skips_and_other_instance_settings_refuse(tmp_path: Path, model_dir: str) -> None:
    from unet_tiles.errors import OutputConflictError

    src = blobs(tmp_path / "img.zarr")
    out = str(tmp_path / "out.zarr")
    segment(src, out, model_dir, output_kind="instances")
    again = segment(src, out, model_dir, output_kind="instances")
    assert again.blocks_done == 0
    with pytest.raises(OutputConflictError):
        segment(src, out, model_dir, output_kind="instances", min_size=4)


def test_a_damaged_instance_chunk_is_found_and_the_rerun_redoes_the_output(
        tmp_path: Path, model_dir: str) -> None:
    from unet_tiles.pipeline.verify import verify_output

    src = blobs(tmp_path / "img.zarr")
    out = tmp_path / "out.zarr"
    segment(src, str(out), model_dir, output_kind="instances")
    before = (out / "objects.parquet").read_bytes()
    chunk = next(p for p in sorted((out / "instances" / "c").rglob("*")) if p.is_file())
    good = chunk.read_bytes()
    chunk.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    report = verify_output(str(out))
    assert not report.ok
    assert any("instances" in key for d in report.damage for key in d.keys)
    segment(src, str(out), model_dir, output_kind="instances")
    assert chunk.read_bytes() == good
    assert (out / "objects.parquet").read_bytes() == before
    assert verify_output(str(out)).ok


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_instances_are_a_label_image_with_the_pyramid(tmp_path: Path, model_dir: str,
                                                          version: str) -> None:
    src = ome_image(tmp_path / "img.zarr", version)
    segment(src, str(tmp_path / "out.zarr"), model_dir, output_kind="labels,instances")
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    _, label_model = models(version)
    label_model.from_zarr(out)
    label_model.from_zarr(out["instances"])
    attrs = out["instances"].attrs.asdict()
    ngff = attrs["ome"] if version == "0.5" else attrs
    # No per-object colours or properties: the table holds per-object data.
    assert "colors" not in ngff["image-label"]
    assert "properties" not in ngff["image-label"]
    assert (tmp_path / "out.zarr" / "instances" / ngff["image-label"]["source"]["image"]) \
        .resolve() == (tmp_path / "img.zarr").resolve()
    for level in (1, 2):
        below, here = out["instances"][str(level - 1)][...], out["instances"][str(level)][...]
        rows = nearest_indices(below.shape[0], here.shape[0])
        cols = nearest_indices(below.shape[1], here.shape[1])
        np.testing.assert_array_equal(here, below[np.ix_(rows, cols)])
    table = pq.read_table(str(tmp_path / "out.zarr" / "objects.parquet")).to_pylist()
    assert table
    for row in table[:20]:
        assert row["centroid_x_micrometer"] == pytest.approx(row["centroid_x"] * 0.25)
        assert row["bbox_stop_y_micrometer"] == pytest.approx(row["bbox_stop_y"] * 0.25)


def test_into_source_lists_the_instance_image_beside_the_labels(tmp_path: Path,
                                                                model_dir: str) -> None:
    src = ome_image(tmp_path / "img.zarr", "0.5", shape=(128, 140))
    request = SegmentRequest(src, "", model_dir, output_kind="labels,instances", block_size=64,
                             into_source=True)
    validate(request).segment()
    labels = zarr.open_group(f"{src}/labels", mode="r")
    assert labels.attrs["ome"]["labels"] == ["unet-tiles", "unet-tiles/instances"]
    image = zarr.open_group(f"{src}/labels/unet-tiles/instances", mode="r")
    _, label_model = models("0.5")
    label_model.from_zarr(image)
    assert (tmp_path / "img.zarr" / "labels" / "unet-tiles" / "objects.parquet").exists()


def test_stacks_through_a_2d_model_label_each_plane(tmp_path: Path, model_dir: str) -> None:
    volume = np.stack([nuclei(seed, (96, 110)) for seed in range(3)])
    src = write_zarr(tmp_path / "img.zarr", volume, (1, 64, 64))
    summary = segment(src, str(tmp_path / "out.zarr"), model_dir,
                      output_kind="labels,instances", axes="zyx")
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    labels, instances = out["labels"][...], out["instances"][...]
    total = 0
    for z in range(3):
        expected, n = ndimage.label(labels[z] > 0)
        assert same_up_to_ids(instances[z], expected)
        total += n
    assert summary.objects == total


def test_split_by_probability_separates_what_components_merge(tmp_path: Path,
                                                               model_dir: str) -> None:
    src = blobs(tmp_path / "img.zarr", seed=2)
    plain = segment(src, str(tmp_path / "a.zarr"), model_dir, output_kind="instances")
    split = segment(src, str(tmp_path / "b.zarr"), model_dir, output_kind="labels,instances",
                    split="probability", seed_probability=0.95, split_distance=6)
    out = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    instances = out["instances"][...]
    assert split.objects is not None
    assert plain.objects is not None
    assert split.objects >= plain.objects
    assert ((instances > 0) <= (out["labels"][...] > 0)).all()
    table = pq.read_table(str(tmp_path / "b.zarr" / "objects.parquet"))
    assert table.column("id").to_pylist() == list(range(1, split.objects + 1))
    assert out.attrs["unet_tiles"]["parameters"]["instances"]["split"] == "probability"


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unet_tiles.cli", *argv], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(("extra", "message"), [
    (["--instance-class", "cell"], "--instance-class 'cell' is not a class of the model"),
    (["--instance-class", "7"], "--instance-class 7 is not a class of the model"),
    (["--min-size", "-1"], "--min-size must be 0 or more pixels"),
    (["--output", "labels,outlines"], "argument --output: invalid choice: 'labels,outlines'"),
    (["--split", "border"], "--split border needs a class named border"),
    (["--split", "probability", "--seed-probability", "1.5"],
     "--seed-probability must be in (0, 1], got 1.5"),
])
def test_bad_instance_options_are_one_line_exit_2(tmp_path: Path, model_dir: str,
                                                  extra: list[str], message: str) -> None:
    src = blobs(tmp_path / "img.zarr")
    argv = ["segment", src, str(tmp_path / "out.zarr"), "--model", model_dir, "--output",
            "instances", *extra]
    done = _cli(*argv)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
    assert not (tmp_path / "out.zarr").exists()


def test_instances_of_the_background_exit_2(tmp_path: Path, model_dir: str) -> None:
    src = blobs(tmp_path / "img.zarr")
    done = _cli("segment", src, str(tmp_path / "out.zarr"), "--model", model_dir,
                "--output", "instances", "--instance-class", "background")
    assert done.returncode == 2
    assert "--instance-class 'background' is the background (class 0)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.zarr").exists()
