"""Training data: images and masks from zarr / TIFF, paired and checked."""

from __future__ import annotations

import pytest

from unet_tiles.cli import main
from unet_tiles.demo.synth import generate_image
from unet_tiles.errors import InputError
from unet_tiles.training.data import load_pairs


def test_bad_inputs_are_input_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    generate_image(tmp_path / "img.zarr", tmp_path / "gt.zarr", (40, 40), seed=4)
    generate_image(tmp_path / "i2.zarr", tmp_path / "g2.zarr", (40, 41), seed=4)
    with pytest.raises(InputError, match="differs from its image"):
        load_pairs([tmp_path / "img.zarr"], [tmp_path / "g2.zarr"], 2)
    with pytest.raises(InputError, match="2 images but 1 masks"):
        load_pairs([tmp_path / "img.zarr", tmp_path / "i2.zarr"], [tmp_path / "gt.zarr"], 2)
    assert main(["train", str(tmp_path / "m"), "--images", str(tmp_path / "nope"),
                 "--masks", str(tmp_path / "gt.zarr")]) == 2
