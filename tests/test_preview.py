"""``--preview PNG``: the overview beside a full-resolution crop across a block corner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import write_zarr
from test_ome_output import ome_image

from unet_tiles.engine.run import SegmentRequest, validate
from unet_tiles.pipeline.geometry import Box
from unet_tiles.pipeline.ome_output import Axis, Level, OmeLayout
from unet_tiles.pipeline.plan import BlockPlan
from unet_tiles.pipeline.preview import (
    BORDER,
    GAP_PX,
    class_colours,
    overview_level,
    preview_crop_box,
    write_preview,
)
from unet_tiles.pipeline.writer import OutputSpec

if TYPE_CHECKING:
    from pathlib import Path

    from unet_tiles.engine.run import Run


@pytest.fixture(scope="module")
def model_dir(make_model: Any) -> str:
    return str(make_model(classes=3, input_scale=(1 / 255,)))


def segmented(src: str, out: Path, model: str, **options: Any) -> Run:
    run = validate(SegmentRequest(src, str(out), model, block_size=64, **options))
    run.segment()
    return run


def panels(png: Path, overview: tuple[int, int], crop: tuple[int, int]) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """The PNG's two panels, after checking the canvas is exactly their size."""
    from PIL import Image

    with Image.open(png) as im:
        assert im.mode == "RGB"
        rgb = np.asarray(im)
    assert rgb.shape == (max(overview[0], crop[0]), overview[1] + GAP_PX + crop[1], 3)
    left = rgb[:overview[0], :overview[1]]
    right = rgb[:crop[0], overview[1] + GAP_PX:]
    return left, right


def has_colour(panel: np.ndarray, colour: Any) -> bool:
    return bool((panel == np.asarray(colour, dtype=np.uint8)).all(axis=-1).any())


def check_overlay(panel: np.ndarray, labels: np.ndarray, image: np.ndarray) -> None:
    """Every class present shows its colour; background is the image in grey."""
    assert panel.shape[:2] == labels.shape == image.shape
    present = np.unique(labels)
    assert (present > 0).any(), "the model labels nothing: the check would be empty"
    colours = class_colours(3)
    for k in present[present > 0]:
        assert has_colour(panel, colours[k]), f"class {k}'s colour is missing"
    border = (panel == np.asarray(BORDER, dtype=np.uint8)).all(axis=-1)
    background = (labels == 0) & ~border
    r, g, b = (panel[..., i][background].astype(int) for i in range(3))
    assert background.sum() > 50
    assert (r == g).all()
    assert (g == b).all()
    # ... and that grey is this image's plane at this resolution.
    assert np.corrcoef(r, image[background])[0, 1] > 0.95
    # Foreground is not grey.
    fore = panel[labels > 0].astype(int)
    assert ((fore[:, 0] != fore[:, 1]) | (fore[:, 1] != fore[:, 2])).all()


def corners_inside(box: Box, block_shape: tuple[int, ...]) -> list[int]:
    """Per y/x axis, the first block border strictly inside the box (or -1)."""
    found = []
    for o, e, b in zip(box.offset[-2:], box.end[-2:], block_shape[-2:], strict=True):
        inside = [p for p in range(b, e, b) if o < p < e]
        found.append(inside[0] if inside else -1)
    return found


def test_ome_preview_reads_the_pyramid_and_crosses_a_block_corner(
        tmp_path: Path, model_dir: str) -> None:
    src = ome_image(tmp_path / "in.ome.zarr", "0.5", shape=(192, 256), levels=3)
    run = segmented(src, tmp_path / "out.zarr", model_dir, output_format="ome")
    png = write_preview(tmp_path / "p" / "preview.png", run.source, run.job.output, run.plan,
                        overview_px=128, crop_px=96)
    # Level 1 (96 x 128) is the one nearest 128 px: shown as it is, no resampling.
    assert overview_level(run.job.output, 128) == 1
    left, right = panels(png, (96, 128), (96, 96))
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    image = zarr.open_group(src, mode="r")
    check_overlay(left, np.asarray(out["1"][...]), np.asarray(image["1"][...]))

    box = preview_crop_box(run.plan, 96)
    assert box.shape == (96, 96)
    y, x = corners_inside(box, run.plan.block_shape)
    assert min(y, x) > 0, box
    crop = box.to_slices()
    check_overlay(right, np.asarray(out["0"][crop]), np.asarray(image["0"][crop]))
    # The dashed borders cross at that corner; the row beside it has none of its own.
    row, col = y - box.offset[0], x - box.offset[1]
    is_border = (right == np.asarray(BORDER, dtype=np.uint8)).all(axis=-1)
    assert is_border[row].sum() >= 96 // 3
    assert is_border[:, col].sum() >= 96 // 3
    assert not is_border[row].all()  # dashed
    assert is_border[row - 1].sum() <= 1
    assert is_border[:, col - 1].sum() <= 1
    # The frame in the overview marks the crop: its corner at half the crop's offset.
    frame = (left == np.asarray(BORDER, dtype=np.uint8)).all(axis=-1)
    assert frame[box.offset[0] // 2, box.offset[1] // 2:box.end[1] // 2].all()
    assert frame[box.offset[0] // 2:box.end[0] // 2, box.offset[1] // 2].all()


def test_default_crop_box_holds_a_block_corner(tmp_path: Path, model_dir: str) -> None:
    src = ome_image(tmp_path / "in.ome.zarr", "0.4", shape=(150, 170), levels=2)
    run = segmented(src, tmp_path / "out.zarr", model_dir, output_format="ome")
    box = preview_crop_box(run.plan)
    assert box == Box((0, 0), (150, 170))  # smaller than 512 px: the whole image
    assert min(corners_inside(box, run.plan.block_shape)) > 0
    png = write_preview(tmp_path / "p.png", run.source, run.job.output, run.plan)
    left, _ = panels(png, (678, 768), (150, 170))  # upscaled to 768 px, nearest
    assert has_colour(left, BORDER)


def test_plain_layout_is_read_with_a_stride(tmp_path: Path, model_dir: str) -> None:
    data = (np.random.default_rng(1).random((200, 260)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", data, (64, 64))
    run = segmented(src, tmp_path / "out.zarr", model_dir)
    assert run.job.output.ome is None
    png = write_preview(tmp_path / "preview.png", run.source, run.job.output, run.plan,
                        overview_px=52, crop_px=80)
    # Stride 260 // 52 = 5 (not 4: the tiny model's labels repeat on its 4-px pooling grid).
    left, right = panels(png, (40, 52), (80, 80))
    labels = zarr.open_array(str(tmp_path / "out.zarr" / "labels"), mode="r")
    check_overlay(left, np.asarray(labels[::5, ::5]), data[::5, ::5])
    box = preview_crop_box(run.plan, 80)
    assert min(corners_inside(box, run.plan.block_shape)) > 0
    check_overlay(right, np.asarray(labels[box.to_slices()]), data[box.to_slices()])


def test_middle_plane_first_channel_and_probabilities_only(tmp_path: Path,
                                                          make_model: Any) -> None:
    model = str(make_model(classes=3, in_channels=2, input_offset=(0.0, 0.0),
                           input_scale=(1 / 255, 1 / 255)))
    data = (np.random.default_rng(2).random((2, 3, 64, 96)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", data, (1, 1, 64, 64),
                     dimension_names=("c", "z", "y", "x"))
    run = segmented(src, tmp_path / "out.zarr", model, output_kind="probabilities")
    png = write_preview(tmp_path / "preview.png", run.source, run.job.output, run.plan,
                        overview_px=96, crop_px=64)
    left, _ = panels(png, (64, 96), (64, 64))
    probabilities = zarr.open_array(str(tmp_path / "out.zarr" / "probabilities"), mode="r")
    labels = np.argmax(np.asarray(probabilities[1]), axis=0)  # (z, class, y, x): plane 1
    check_overlay(left, labels, data[0, 1])
    assert preview_crop_box(run.plan, 64).offset[0] == 1


def test_crop_box_on_a_large_plan_and_a_one_block_axis() -> None:
    plan = BlockPlan((5, 100_000, 3000), (1, 512, 512), (1, 2048, 1024), 2, (8, 8), 4, 512, 44)
    box = preview_crop_box(plan)
    assert box.offset[0] == 2
    assert box.shape == (1, 512, 512)
    # The corner nearest the centre (50 000, 1500): y 49 152, x 1024 or 2048 -> 1024.
    assert corners_inside(box, plan.block_shape) == [49_152, 1024]
    assert box.offset[1:] == (49_152 - 256, 1024 - 256)
    one = BlockPlan((300, 3000), (256, 512), (512, 1024), 2, (8, 8), 4, 512, 44)
    box = preview_crop_box(one)
    assert box.offset == (0, 1024 - 256)
    assert box.shape == (300, 512)


def test_overview_level_is_the_one_nearest_overview_px() -> None:
    sides = (6000, 3000, 1500, 750, 375)
    layout = OmeLayout("0.5", (Axis("y", "space"), Axis("x", "space")),
                       tuple(Level(str(i), (s // 2, s), (1.0, 1.0)) for i, s in enumerate(sides)))
    spec = OutputSpec("o.zarr", "yx", 2, 3, (), True, False, "float16", ome=layout)
    assert overview_level(spec, 768) == 3
    assert overview_level(spec, 1200) == 2
    assert overview_level(spec, 10) == 4
    assert overview_level(OutputSpec("o.zarr", "yx", 2, 3, (), True, False, "float16"), 768) == 0


def test_cli_writes_the_preview_and_keeps_stdout_one_line(
        tmp_path: Path, model_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from unet_tiles.cli import main

    data = (np.random.default_rng(3).random((96, 160)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", data, (64, 64))
    png = tmp_path / "out.png"
    code = main(["segment", src, str(tmp_path / "out.zarr"), "--model", model_dir,
                 "--block-size", "64", "--workers", "1", "--no-progress", "--preview", str(png)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("\n") == 1
    assert captured.out.startswith("segmented ")
    assert f"preview: {png}" in captured.err
    with Image.open(png) as im:
        assert im.size == (768 + GAP_PX + 160, 461)  # overview 768 x 460.8, crop whole


def test_flow_row_and_task_carry_the_preview(tmp_path: Path, model_dir: str) -> None:
    pytest.importorskip("prefect")
    from unet_tiles.flows.report import summary_row
    from unet_tiles.flows.segment import preview_step

    summary = {"pixels": 1, "blocks_done": 1, "blocks_skipped": 0, "blocks_total": 1,
               "seconds": 1.0, "megapixels_per_s": 1.0}
    assert summary_row("i", "o", summary, "abc", preview="p.png")["preview"] == "p.png"
    assert summary_row("i", "o", summary, "abc")["preview"] == ""
    data = (np.random.default_rng(4).random((64, 64)) * 255).astype("uint8")
    run = segmented(write_zarr(tmp_path / "in.zarr", data, (64, 64)), tmp_path / "out.zarr",
                    model_dir)
    written = preview_step.fn(run, str(tmp_path / "flow.png"))
    assert written == str(tmp_path / "flow.png")
    assert (tmp_path / "flow.png").stat().st_size
