"""Training: the loss falls, runs resume exactly, the model directory is complete."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from unet_tiles.cli import main
from unet_tiles.demo.synth import generate_arrays, generate_image
from unet_tiles.errors import OutputConflictError
from unet_tiles.model.files import load_model
from unet_tiles.training.augment import AugmentConfig
from unet_tiles.training.data import Pair, load_pairs, split_validation
from unet_tiles.training.metrics import predict_classes
from unet_tiles.training.train import TrainConfig, batch, prepare, train, weighted_loss


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny models run fastest on one thread, and OpenMP threads spin badly
    # when the CI box is shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = {"depth": 2, "base_channels": 4, "tile_px": 32, "batch_size": 2, "dropout": 0.0}


def _pairs(seeds: tuple[int, ...], shape: tuple[int, int] = (96, 96)) -> list[Pair]:
    pairs = []
    for seed in seeds:
        image, labels = generate_arrays(shape, seed=seed)
        pairs.append(Pair(f"synth{seed}", image[None].astype(np.float32), labels))
    return pairs


def _fixed_loss(model_dir, pairs: list[Pair], config: TrainConfig) -> float:
    model = load_model(model_dir)
    data = prepare(pairs, config, 2, np.ones(2, np.float32))
    x, y, w = (torch.from_numpy(a) for a in batch(data, model, config, 10_000, 1.0))
    with torch.no_grad():
        return float(weighted_loss(model(x), y, w))


def test_a_few_steps_lower_the_loss_and_write_a_model(tmp_path) -> None:
    torch.manual_seed(0)
    pairs = _pairs((1,))
    config = TrainConfig(**TINY, steps=1, lr=1e-2, warmup_steps=1, schedule="constant",
                         augment=AugmentConfig.off(), val_every=1, seed=3)
    train(tmp_path / "one", pairs, [], config)
    before = _fixed_loss(tmp_path / "one", pairs, config)
    longer = replace(config, steps=40, val_every=40)
    train(tmp_path / "many", pairs, [], longer)
    after = _fixed_loss(tmp_path / "many", pairs, longer)
    assert after < 0.8 * before, (before, after)
    saved = json.loads((tmp_path / "many" / "config.json").read_text())
    assert saved["class_names"] == ["background", "object"]
    assert saved["training"]["recipe"]["steps"] == 40
    # Normalisation is computed from the training data, not left at identity.
    assert saved["normalization"]["offset"][0] == pytest.approx(pairs[0].image.mean(), rel=1e-4)
    assert saved["normalization"]["scale"][0] == pytest.approx(1 / pairs[0].image.std(), rel=1e-3)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path) -> None:
    pairs = _pairs((1,))
    full = TrainConfig(**TINY, steps=6, val_every=3, warmup_steps=2, seed=1)
    train(tmp_path / "a", pairs, pairs, full)
    # Interrupted after step 4 (not a validation step), then resumed by rerunning.
    assert train(tmp_path / "b", pairs, pairs, full, stop_at=4).steps == 4
    assert train(tmp_path / "b", pairs, pairs, full).steps == 6

    wa = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name])
    with pytest.raises(OutputConflictError, match="another recipe"):
        train(tmp_path / "b", pairs, pairs, TrainConfig(**TINY, steps=7))


def test_cli_train_from_zarr_and_tiff_with_held_out_validation(tmp_path) -> None:
    import tifffile

    generate_image(tmp_path / "img.zarr", tmp_path / "gt.zarr", (80, 72), seed=4)
    tifffile.imwrite(tmp_path / "img.tif", zarr.open_array(tmp_path / "img.zarr")[:])
    tifffile.imwrite(tmp_path / "gt.tif", zarr.open_array(tmp_path / "gt.zarr")[:])
    pairs = load_pairs([tmp_path / "img.zarr", tmp_path / "img.tif"],
                       [tmp_path / "gt.zarr", tmp_path / "gt.tif"], 2)
    np.testing.assert_array_equal(pairs[0].image, pairs[1].image)
    _, val_part = split_validation(pairs[:1], 0.25)
    assert val_part[0].mask.shape == (20, 72)
    code = main(["train", str(tmp_path / "model"), "--images", str(tmp_path / "img.zarr"),
                 "--masks", str(tmp_path / "gt.zarr"), "--depth", "2", "--base-channels", "4",
                 "--tile", "32", "--steps", "4", "--val-every", "2", "--border-class",
                 "--no-progress"])
    assert code == 0
    model = load_model(tmp_path / "model")
    assert model.config.class_names == ("background", "object", "border")
    metrics = model.config.training["metrics"]
    assert {"iou_1", "iou_2", "mean_iou", "ap50"} <= set(metrics["best"])
    assert predict_classes(model, pairs[0].image).shape == (80, 72)
