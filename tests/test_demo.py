"""The demo end to end, and a trained model through the real segmentation pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from unet_tiles.cli import main
from unet_tiles.demo.images import demo_model_dir, generate
from unet_tiles.demo.preview import preview_region, render_preview
from unet_tiles.demo.score import accuracy
from unet_tiles.demo.synth import generate_arrays
from unet_tiles.model.files import load_model
from unet_tiles.training.data import Pair
from unet_tiles.training.metrics import predict_classes
from unet_tiles.training.train import TrainConfig, train


def test_preview_region_crosses_a_chunk_corner() -> None:
    region = preview_region((8192, 8192), 1024)
    assert region == (slice(3840, 4352), slice(3840, 4352))
    small = preview_region((300, 200), 64)
    assert all(s.start < 128 < s.stop or s.start < 64 < s.stop for s in small)
    assert small[1] == slice(0, 200)


def test_preview_draws_labels_and_block_borders() -> None:
    image, truth = generate_arrays((96, 80), seed=1)
    labels = (truth > 0).astype(np.uint8)
    rgb = render_preview(image, labels, (32, 0), 64)
    assert rgb.shape == (96, 160, 3)
    left, right = rgb[:, :80].astype(int), rgb[:, 80:].astype(int)
    inside = labels.astype(bool)
    # Objects are coloured on the right panel, background is the plain image.
    assert np.abs(right - left)[inside].mean() > 20
    assert (right[~inside] == left[~inside]).mean() > 0.9
    # The chunk border at y = 64 (row 32 of the region) is drawn dashed in red.
    assert (rgb[32, :, 0] == 255).mean() > 0.4


@pytest.mark.cluster
def test_trained_model_round_trips_through_the_segment_pipeline(tmp_path) -> None:
    from unet_tiles import segment

    torch.set_num_threads(1)
    image, truth = generate_arrays((96, 96), seed=2)
    pairs = [Pair("synth", image[None].astype(np.float32), truth)]
    config = TrainConfig(depth=2, base_channels=4, tile_px=32, batch_size=2, steps=10,
                         val_every=10, dropout=0.0)
    train(tmp_path / "model", pairs, [], config)
    model = load_model(tmp_path / "model")
    made = generate(tmp_path / "data", 150, seed=3)
    segment(str(made.image), str(tmp_path / "out.zarr"), str(tmp_path / "model"),
            block_size=128, cluster="local", workers=1, progress=False)
    labels = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["labels"][:]
    pixels = zarr.open_array(str(made.image), mode="r")[:]
    expected = predict_classes(model, pixels[None].astype(np.float32), tile_px=40)
    # Argmax of logits that agree up to float round-off: ties may flip a few pixels.
    assert (labels == expected).mean() > 0.999


@pytest.mark.slow
@pytest.mark.cluster
def test_demo_command_small(tmp_path, capsys) -> None:
    if not (demo_model_dir() / "weights.safetensors").is_file():
        pytest.fail("the demo model is missing from unet_tiles/demo_model")
    workdir = tmp_path / "demo"
    code = main(["demo", "--size", "640", "--workdir", str(workdir), "--workers", "1",
                 "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Mpx/s" in out
    assert "foreground IoU" in out
    with Image.open(workdir / "preview.png") as png:
        assert png.format == "PNG"
        assert png.size == (1024, 512)
        rgb = np.asarray(png.convert("RGB")).astype(int)
    left, right = rgb[:, :512], rgb[:, 512:]
    labels = zarr.open_group(str(workdir / "segmentation.zarr"), mode="r")["labels"]
    region = preview_region((640, 640), 256)
    predicted = labels[region] > 0
    assert 0.05 < predicted.mean() < 0.6
    assert np.abs(right - left)[predicted].mean() > 20  # labels are drawn
    score = accuracy(workdir / "segmentation.zarr" / "labels", workdir / "truth.zarr", region)
    assert score.iou_foreground > 0.85
    # The instances: the printed count is the table's, the AP one of a real segmentation.
    import pyarrow.parquet as pq

    from unet_tiles.demo.score import instance_accuracy

    table = pq.read_table(str(workdir / "segmentation.zarr" / "objects.parquet"))
    objects = instance_accuracy(workdir / "segmentation.zarr" / "instances",
                                workdir / "truth.zarr")
    assert objects.objects == table.num_rows > 10
    assert f"{objects.objects} objects ({objects.true_objects} generated)" in out
    assert objects.ap50 > 0.3
    # A rerun reuses the image and the finished segmentation.
    assert main(["demo", "--size", "640", "--workdir", str(workdir), "--workers", "1",
                 "--no-progress"]) == 0
    assert "reused" in capsys.readouterr().out
