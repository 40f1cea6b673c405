"""The OME layout: valid NGFF label images, checked by the ecosystem's own readers.

Every output here is validated by ome-zarr-models (the NGFF spec's models), read
by ome-zarr-py's Reader where it matters, and read again by tensorstore (a second
zarr implementation) to the same values as zarr-python.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr

from unet_tiles.engine.run import SegmentRequest, validate
from unet_tiles.pipeline.pyramid import nearest_indices

if TYPE_CHECKING:
    from pathlib import Path

CLASSES = ("background", "nucleus", "border")


def ome_image(path: Path, version: str, shape: tuple[int, ...] = (150, 170),
              axes: str = "yx", levels: int = 3, seed: int = 0) -> str:
    """An OME-Zarr image with a pyramid (y and x halved per level, others kept)."""
    fmt = 3 if version == "0.5" else 2
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    data = (np.random.default_rng(seed).random(shape) * 255).astype("uint8")
    datasets = []
    for level in range(levels):
        step = tuple(2**level if a in "yx" else 1 for a in axes)
        pixels = data[tuple(slice(None, None, s) for s in step)]
        options: dict[str, Any] = {"dimension_names": tuple(axes)} if fmt == 3 else {
            "chunk_key_encoding": {"name": "v2", "separator": "/"}}
        chunks = tuple(64 if a in "yx" else 1 for a in axes)
        group.create_array(str(level), shape=pixels.shape, chunks=chunks, dtype="uint8",
                           **options)[...] = pixels
        scale = [0.25 * 2**level if a in "yx" else 1.0 for a in axes]
        datasets.append({"path": str(level),
                         "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    ms: dict[str, Any] = {"name": "image", "datasets": datasets, "axes": [
        {"name": a, "type": types[a], **({"unit": "micrometer"} if a in "zyx" else {})}
        for a in axes]}
    if version == "0.5":
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    else:
        group.attrs["multiscales"] = [{**ms, "version": "0.4"}]
    return str(path)


def models(version: str) -> Any:
    if version == "0.5":
        from ome_zarr_models.v05 import image, image_label
    else:
        from ome_zarr_models.v04 import image, image_label
    return image.Image, image_label.ImageLabel


def tensorstore_read(path: str, version: str) -> np.ndarray:
    import tensorstore as ts

    driver = "zarr3" if version == "0.5" else "zarr"
    return np.asarray(ts.open({"driver": driver, "kvstore": {"driver": "file",
                                                             "path": path}}).result().read()
                      .result())


@pytest.fixture(scope="module")
def model_dir(make_model: Any) -> str:
    return str(make_model(classes=3, class_names=CLASSES, input_scale=(1 / 255,)))


def segment(src: str, out: str, model_dir: str, **options: Any) -> zarr.Group:
    validate(SegmentRequest(src, out, model_dir, block_size=64, **options)).segment()
    return zarr.open_group(out, mode="r")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_output_is_a_valid_label_image_with_the_sources_pyramid(tmp_path: Path, model_dir: str,
                                                                version: str) -> None:
    src = ome_image(tmp_path / "img.zarr", version)
    out = segment(src, str(tmp_path / "out.zarr"), model_dir, output_kind="both")
    image_model, label_model = models(version)
    label_model.from_zarr(out)
    image_model.from_zarr(out["probabilities"])
    source = zarr.open_group(src, mode="r")
    attrs = out.attrs.asdict()
    ngff = attrs["ome"] if version == "0.5" else attrs
    multiscale = ngff["multiscales"][0]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2"]
    for level in range(3):
        assert out[str(level)].shape == source[str(level)].shape
        assert out[str(level)].dtype == np.uint8
        assert multiscale["datasets"][level]["coordinateTransformations"][0]["scale"] == \
            [0.25 * 2**level] * 2
    assert [a.get("unit") for a in multiscale["axes"]] == ["micrometer", "micrometer"]
    label = ngff["image-label"]
    assert [p["class"] for p in label["properties"]] == ["nucleus", "border"]
    assert [c["label-value"] for c in label["colors"]] == \
        [p["label-value"] for p in label["properties"]] == [1, 2]
    assert (tmp_path / "out.zarr" / label["source"]["image"]).resolve() == \
        (tmp_path / "img.zarr").resolve()
    # Nearest sampling level by level: labels are never interpolated.
    for level in (1, 2):
        below, here = out[str(level - 1)][...], out[str(level)][...]
        rows = nearest_indices(below.shape[0], here.shape[0])
        cols = nearest_indices(below.shape[1], here.shape[1])
        np.testing.assert_array_equal(here, below[np.ix_(rows, cols)])
        assert set(np.unique(here)) <= {0, 1, 2}
    if version == "0.4":  # zarr v2: one compressor, zstd at level 1 (writer.ZSTD_LEVEL)
        for array in ("0", "probabilities/0", "done"):
            meta = json.loads((tmp_path / "out.zarr" / array / ".zarray").read_text())
            assert (meta["compressor"]["id"], meta["compressor"]["level"]) == ("zstd", 1)
    # A second zarr implementation reads the same values.
    for level in range(3):
        np.testing.assert_array_equal(tensorstore_read(str(tmp_path / "out.zarr" / str(level)),
                                                       version), out[str(level)][...])
    np.testing.assert_array_equal(
        tensorstore_read(str(tmp_path / "out.zarr" / "probabilities" / "1"), version),
        out["probabilities"]["1"][...])


def test_levels_equal_the_plain_layouts_labels(tmp_path: Path, model_dir: str) -> None:
    src = ome_image(tmp_path / "img.zarr", "0.5")
    ome = segment(src, str(tmp_path / "ome.zarr"), model_dir)
    plain = segment(src, str(tmp_path / "plain.zarr"), model_dir, output_format="plain")
    assert "labels" in plain
    assert "0" not in plain
    np.testing.assert_array_equal(ome["0"][...], plain["labels"][...])


def test_time_and_z_stacks_put_classes_at_ngffs_place(tmp_path: Path, model_dir: str) -> None:
    src = ome_image(tmp_path / "tz.zarr", "0.5", shape=(2, 3, 70, 90), axes="tzyx", levels=2)
    out = segment(src, str(tmp_path / "out.zarr"), model_dir, output_kind="both",
                  dtype="float32")
    image_model, label_model = models("0.5")
    label_model.from_zarr(out)
    image_model.from_zarr(out["probabilities"])
    assert out["0"].shape == (2, 3, 70, 90)
    assert out["1"].shape == (2, 3, 35, 45)  # z is not downsampled: the source's is not
    assert out["probabilities"]["0"].shape == (2, 3, 3, 70, 90)  # t, c, z, y, x
    axes = [a["name"] for a in out["probabilities"].attrs["ome"]["multiscales"][0]["axes"]]
    assert axes == ["t", "c", "z", "y", "x"]
    # The class axis is where the metadata says: its argmax is the labels.
    assert (out["probabilities"]["0"][...].argmax(axis=1) == out["0"][...]).mean() > 0.999


def test_plain_input_with_format_ome(tmp_path: Path, model_dir: str) -> None:
    from helpers import write_zarr

    image = (np.random.default_rng(3).random((1100, 300)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "plain.zarr", image, (256, 256))
    out = segment(src, str(tmp_path / "out.zarr"), model_dir, output_format="ome")
    models("0.5")[1].from_zarr(out)
    # Halved until the largest side is at most 512 px: 1100 -> 550 -> 275.
    assert [out[str(i)].shape for i in range(3)] == [(1100, 300), (550, 150), (275, 75)]
    assert "3" not in out


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_into_source_adds_labels_and_never_touches_the_image(tmp_path: Path, model_dir: str,
                                                             version: str) -> None:
    import ome_zarr.io
    import ome_zarr.reader

    src = ome_image(tmp_path / "img.zarr", version)
    image_files = {p: hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in (tmp_path / "img.zarr").rglob("*") if p.is_file()}
    for name in ("unet-tiles", "second"):
        validate(SegmentRequest(src, "", model_dir, into_source=True, label_name=name,
                                block_size=64)).segment()
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in image_files}
    assert after == image_files
    labels = zarr.open_group(f"{src}/labels", mode="r").attrs.asdict()
    listed = labels["ome"]["labels"] if version == "0.5" else labels["labels"]
    assert listed == ["unet-tiles", "second"]
    image_model, label_model = models(version)
    label_model.from_zarr(zarr.open_group(f"{src}/labels/unet-tiles", mode="r"))
    image_model.from_zarr(zarr.open_group(src, mode="r"))
    fmt = None
    if version == "0.4":
        from ome_zarr.format import FormatV04

        fmt = FormatV04()
    location = ome_zarr.io.parse_url(src, **({"fmt": fmt} if fmt else {}))
    assert location is not None
    nodes = list(ome_zarr.reader.Reader(location)())
    kinds = {type(spec).__name__ for node in nodes for spec in node.specs}
    assert {"Multiscales", "Labels", "Label"} <= kinds
    label_nodes = [n for n in nodes if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(label_nodes[0].data) == 3  # the label pyramid, as napari would load it


def test_resumed_pyramid_is_byte_identical(tmp_path: Path, model_dir: str) -> None:
    src = ome_image(tmp_path / "img.zarr", "0.5", shape=(300, 260))
    whole = tmp_path / "whole.zarr"
    segment(src, str(whole), model_dir)
    cut = tmp_path / "cut.zarr"
    segment(src, str(cut), model_dir)
    # As if killed inside level 2's blocks: level 2 undone, its chunks gone.
    group = zarr.open_group(str(cut), mode="r+")
    group["pyramid"]["2"][...] = 0
    for chunk in (cut / "2" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    group.attrs["unet_tiles"] = {**group.attrs["unet_tiles"], "status": "running"}
    run = validate(SegmentRequest(src, str(cut), model_dir, block_size=64))
    assert run.decide().action == "resume"
    summary = run.segment()
    assert summary.blocks_done == 0

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and not p.name.startswith(".")}

    assert files(cut) == files(whole)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize(("axes", "shape", "model"), [
    ("yx", (90, 110), {}),
    ("zyx", (4, 70, 80), {}),
    ("zyx", (12, 40, 48), {"dims": 3, "depth": 1, "base_channels": 2}),
    ("cyx", (2, 70, 80), {"in_channels": 2}),
    ("tczyx", (2, 2, 3, 40, 50), {"in_channels": 2}),
])
def test_round_trip_on_images_written_by_ome_zarr_py(tmp_path: Path, make_model: Any,
                                                     version: str, axes: str,
                                                     shape: tuple[int, ...],
                                                     model: dict[str, Any]) -> None:
    from ome_images import write_ome_image

    data = (np.random.default_rng(len(shape)).random(shape) * 255).astype("uint8")
    src = write_ome_image(tmp_path / "img.zarr", data, axes, version, levels=3,
                          units={a: "micrometer" for a in axes if a in "zyx"})
    model_dir = str(make_model(classes=3, input_scale=(1 / 255,), **model))
    out = segment(src, str(tmp_path / "out.zarr"), model_dir, output_kind="both")
    image_model, label_model = models(version)
    label_model.from_zarr(out)
    image_model.from_zarr(out["probabilities"])
    source = zarr.open_group(src, mode="r")
    keep = [i for i, a in enumerate(axes) if a != "c"]
    levels = [d["path"] for d in (source.attrs["ome"] if version == "0.5" else
                                   source.attrs)["multiscales"][0]["datasets"]]
    assert len(levels) == 3
    for number, path in enumerate(levels):
        assert out[str(number)].shape == tuple(source[path].shape[i] for i in keep)
    ngff = out.attrs["ome"] if version == "0.5" else out.attrs.asdict()
    assert [a["name"] for a in ngff["multiscales"][0]["axes"]] == [a for a in axes if a != "c"]


@pytest.mark.slow
@pytest.mark.cluster
def test_segment_iterates_a_plates_fields(tmp_path: Path, model_dir: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from ome_images import FIELDS, WELLS, write_plate

    from unet_tiles.cli import main

    plate = write_plate(tmp_path / "plate.zarr", "0.5")
    # Field A/1/0 is all zeros: ome-zarr stores none of its chunks (zarr's default).
    common = ["--model", model_dir, "--block-size", "64", "--cluster", "cpu", "--workers", "1",
              "--allow-missing-chunks"]
    assert main(["segment", plate, str(tmp_path / "out"), *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(WELLS) * len(FIELDS) == 4
    label_model = models("0.5")[1]
    for well in WELLS:
        for field in FIELDS:
            out = zarr.open_group(str(tmp_path / "out" / well / f"{field}.zarr"), mode="r")
            label_model.from_zarr(out)
            assert out["0"].shape == (32, 40)
    # Into the source: each field gets its own labels group.
    assert main(["segment", plate, "", "--into-source", *common]) == 0
    for well in WELLS:
        for field in FIELDS:
            labels = zarr.open_group(f"{plate}/{well}/{field}/labels", mode="r")
            assert labels.attrs["ome"]["labels"] == ["unet-tiles"]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_napari_opens_the_labels_as_a_labels_layer(tmp_path: Path, model_dir: str,
                                                   version: str) -> None:
    """napari-ome-zarr's reader function, headless: what napari would show."""
    from napari_ome_zarr import napari_get_reader

    src = ome_image(tmp_path / "img.zarr", version)
    out = str(tmp_path / "out.zarr")
    segment(src, out, model_dir)
    reader = napari_get_reader(out)
    assert reader is not None
    ((data, options, kind),) = reader(out)
    assert kind == "labels"
    assert [level.shape for level in data] == [(150, 170), (75, 85), (38, 43)]
    assert list(options["scale"]) == [0.25, 0.25]
    validate(SegmentRequest(src, "", model_dir, into_source=True, block_size=64)).segment()
    kinds = [kind for _, _, kind in napari_get_reader(src)(src)]  # type: ignore[misc]
    assert kinds == ["image", "labels"]
