"""Model directories: safetensors + JSON round trip, hashing, and refusal of bad files."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import torch

from unet_tiles import load_model
from unet_tiles.errors import ModelFormatError
from unet_tiles.model.files import model_hash, save_model
from unet_tiles.model.unet import UNetConfig, build_unet

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    config = UNetConfig(depth=2, base_channels=4, classes=3, class_names=("bg", "a", "b"))
    return save_model(build_unet(config, seed=0), tmp_path / "model")


def test_round_trip_gives_the_same_function(model_dir: Path) -> None:
    original = build_unet(
        UNetConfig(depth=2, base_channels=4, classes=3, class_names=("bg", "a", "b")), seed=0
    )
    loaded = load_model(str(model_dir))
    assert not loaded.training
    assert loaded.config.class_names == ("bg", "a", "b")
    x = torch.rand(2, 1, 44, 44)
    torch.testing.assert_close(loaded(x), original(x))
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "weights.safetensors"]


def test_hash_is_stable_and_tracks_weights(model_dir: Path, tmp_path: Path) -> None:
    first = model_hash(model_dir)
    assert first == model_hash(save_model(load_model(str(model_dir)), tmp_path / "again"))
    changed = load_model(str(model_dir))
    with torch.no_grad():
        changed.head.bias.add_(1e-3)
    assert model_hash(save_model(changed, tmp_path / "changed")) != first


def _edit_config(model_dir: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = model_dir / "config.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(extra=1), r"unknown field\(s\) \['extra'\]"),
        (lambda d: d["architecture"].pop("depth"), r"missing field\(s\) \['depth'\]"),
        (lambda d: d.update(format_version=99), "newer than this unet-tiles understands"),
        (lambda d: d["architecture"].update(depth="4"), "architecture.depth has the wrong type"),
        (lambda d: d["architecture"].update(base_channels=10**9), "base_channels must be"),
        (lambda d: d["architecture"].update(base_channels=8), "weights do not match|has shape"),
    ],
)
def test_bad_configs_are_refused_with_one_line(model_dir: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    _edit_config(model_dir, edit)
    with pytest.raises(ModelFormatError, match=message) as info:
        load_model(str(model_dir))
    assert "\n" not in str(info.value)


def test_truncated_weights_are_refused(model_dir: Path) -> None:
    weights = model_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="corrupt or truncated"):
        load_model(str(model_dir))


def test_missing_parts_are_named(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    (model_dir / "weights.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"weights\.safetensors: missing"):
        load_model(str(model_dir))
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(str(model_dir))


def test_no_pickle_is_ever_loaded(model_dir: Path) -> None:
    # A pickle disguised as the weights file must be refused, not executed.
    torch.save({"x": torch.zeros(1)}, model_dir / "weights.safetensors")
    with pytest.raises(ModelFormatError, match="corrupt or truncated"):
        load_model(str(model_dir))
