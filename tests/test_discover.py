"""Archive discovery and the "already done?" decision."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zarr
from ome_images import VERSIONS, plate_attrs, ramp, well_attrs, write_ome_image, write_plate

from unet_tiles.archive.discover import ImageRef, find_images, is_ignored
from unet_tiles.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path


def _array(path: Path | str, zarr_format: int = 3) -> None:
    a = zarr.create_array(str(path), shape=(8, 10), chunks=(4, 5), dtype="uint8",
                          fill_value=0, zarr_format=zarr_format)
    a[:] = np.arange(80, dtype="uint8").reshape(8, 10)


def _ome(path: Path) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": [{"path": "0"}]}]}
    _array(path / "0")
    _array(path / "1")


def _relatives(root: Path | str, **kwargs: object) -> list[str]:
    return [ref.relative for ref in find_images(str(root), **kwargs)]  # type: ignore[arg-type]


def test_finds_arrays_groups_and_ome_at_any_depth(tmp_path: Path) -> None:
    _array(tmp_path / "a.zarr")
    _array(tmp_path / "night" / "b.zarr", zarr_format=2)
    _ome(tmp_path / "night" / "deep" / "c.ome.zarr")
    group = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    group.create_array("raw", shape=(4, 4), dtype="uint8")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an image")
    # Never descend into an image: its levels 0 and 1 are not images of their own.
    assert _relatives(tmp_path) == ["a.zarr", "d.zarr", "night/b.zarr",
                                    "night/deep/c.ome.zarr"]


def test_container_groups_are_descended(tmp_path: Path) -> None:
    plate = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w", zarr_format=3)
    plate.attrs["bioformats2raw.layout"] = 3
    _ome(tmp_path / "plate.zarr" / "0")
    _ome(tmp_path / "plate.zarr" / "1")
    assert _relatives(tmp_path) == ["plate.zarr/0", "plate.zarr/1"]


FIELDS = ["A/1/0", "A/1/1", "B/2/0", "B/2/1"]


@pytest.mark.parametrize("version", VERSIONS)
def test_plate_fields_are_the_images(tmp_path: Path, version: str) -> None:
    from unet_tiles.pipeline.source import open_source

    plate = write_plate(tmp_path / "screen" / "plate.zarr", version)
    # A field on disk that the well's metadata does not list is no image of the plate.
    write_ome_image(f"{plate}/A/1/9", ramp((32, 40)), "yx", version, levels=1)
    _array(tmp_path / "slide.zarr")
    refs = find_images(str(tmp_path))
    assert [r.relative for r in refs] == ["screen/plate.zarr/" + f for f in FIELDS] + [
        "slide.zarr"]
    assert refs[0].url == f"{tmp_path}/screen/plate.zarr/A/1/0"
    assert refs[0].output_url("/o") == "/o/screen/plate.zarr/A/1/0.zarr"
    for ref in refs[:4]:
        assert open_source(ref.url).ome_version == version
    # A plate or a well as the root: its fields, relative to it.
    assert _relatives(plate) == FIELDS
    assert _relatives(f"{plate}/B/2") == ["0", "1"]


def test_malformed_plates_and_wells_are_listed_so_they_are_reported(tmp_path: Path) -> None:
    from unet_tiles.pipeline.source import open_source

    plate = write_plate(tmp_path / "bad.zarr", "0.5")
    group = zarr.open_group(plate, mode="r+")
    attrs = dict(group.attrs)
    attrs["ome"]["plate"]["wells"] = [{"path": "A/1"}, {"path": "Z/1"}]  # Z is no row
    group.attrs.put(attrs)
    plate2 = write_plate(tmp_path / "wells.zarr", "0.4")
    zarr.open_group(f"{plate2}/B/2", mode="r+").attrs.put({"well": {"images": []}})
    assert _relatives(tmp_path) == ["bad.zarr", "wells.zarr/A/1/0", "wells.zarr/A/1/1",
                                    "wells.zarr/B/2"]
    with pytest.raises(InputError, match="has well 'Z/1' outside its rows"):
        open_source(plate)
    with pytest.raises(InputError, match="lists no field images in its well metadata"):
        open_source(f"{plate2}/B/2")


def test_ome_05_containers_are_descended(tmp_path: Path) -> None:
    # bioformats2raw's layout in NGFF 0.5: "ome" attributes but no multiscales.
    group = zarr.open_group(str(tmp_path / "b2r.zarr"), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    _ome(tmp_path / "b2r.zarr" / "0")
    _ome(tmp_path / "b2r.zarr" / "1")
    assert _relatives(tmp_path) == ["b2r.zarr/0", "b2r.zarr/1"]


def test_hidden_temporary_and_excluded_are_ignored(tmp_path: Path) -> None:
    _array(tmp_path / "ok.zarr")
    _array(tmp_path / ".hidden.zarr")
    _array(tmp_path / "copy.zarr.tmp")
    _array(tmp_path / "upload.zarr.partial")
    _array(tmp_path / "~lock.zarr")
    _array(tmp_path / "out" / "ok.zarr")
    assert _relatives(tmp_path, exclude=[str(tmp_path / "out")]) == ["ok.zarr"]
    assert [is_ignored(n) for n in (".x", "a.tmp", "a.zarr", "b~")] == [True, True, False, True]


def test_symlinks_are_followed_only_inside_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _array(root / "a.zarr")
    _array(outside / "secret.zarr")
    os.symlink(outside, root / "escape")
    os.symlink(root, root / "loop")
    os.symlink(root / "a.zarr", root / "alias.zarr")
    found = _relatives(root)
    assert "escape/secret.zarr" not in found
    assert not any(r.startswith("loop") for r in found)
    assert len(found) == 1  # a.zarr and its alias are one store


def test_broken_metadata_is_still_found_so_it_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    assert _relatives(tmp_path) == ["bad.zarr"]


def test_root_may_be_an_image_and_must_be_a_folder(tmp_path: Path) -> None:
    _array(tmp_path / "one.zarr")
    refs = find_images(str(tmp_path / "one.zarr"))
    assert [r.relative for r in refs] == [""]
    assert refs[0].output_url("/out") == "/out/one.zarr"
    with pytest.raises(InputError, match="not a folder"):
        find_images(str(tmp_path / "missing"))


def test_fsspec_roots() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/arch/x/a.zarr/zarr.json", json.dumps({"node_type": "array"}).encode())
    fs.pipe("/arch/.tmp.zarr/zarr.json", json.dumps({"node_type": "array"}).encode())
    fs.pipe("/arch/g.zarr/zarr.json",
            json.dumps({"node_type": "group", "attributes": {"multiscales": []}}).encode())
    fs.pipe("/arch/g.zarr/0/zarr.json", json.dumps({"node_type": "array"}).encode())
    refs = find_images("memory://arch")
    assert [(r.url, r.relative) for r in refs] == [
        ("memory:///arch/g.zarr", "g.zarr"), ("memory:///arch/x/a.zarr", "x/a.zarr")]
    fs.rm("/arch", recursive=True)


def test_fsspec_plates() -> None:
    import fsspec

    def group(path: str, attributes: dict[str, object]) -> None:
        fs.pipe(f"{path}/zarr.json", json.dumps(
            {"zarr_format": 3, "node_type": "group", "attributes": attributes}).encode())

    fs = fsspec.filesystem("memory")
    group("/hcs/p.zarr", plate_attrs("0.5", ["A"], ["1", "2"], ["A/1", "A/2"]))
    group("/hcs/p.zarr/A", {})
    group("/hcs/p.zarr/A/1", well_attrs("0.5", ["0"]))
    group("/hcs/p.zarr/A/2", well_attrs("0.5", ["0", "3"]))
    refs = find_images("memory://hcs")
    assert [(r.url, r.relative) for r in refs] == [
        ("memory:///hcs/p.zarr/A/1/0", "p.zarr/A/1/0"),
        ("memory:///hcs/p.zarr/A/2/0", "p.zarr/A/2/0"),
        ("memory:///hcs/p.zarr/A/2/3", "p.zarr/A/2/3")]
    fs.rm("/hcs", recursive=True)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [("a.zarr", "/o/a.zarr"), ("n/b.ome.zarr", "/o/n/b.ome.zarr"),
     ("plate.zarr/0", "/o/plate.zarr/0.zarr")],
)
def test_output_url(relative: str, expected: str) -> None:
    assert ImageRef(f"/r/{relative}", relative).output_url("/o/") == expected


def test_reacquired_image_changes_fingerprint(tmp_path: Path) -> None:
    """Same path, new content: the fingerprint (hence the decision) changes."""
    from unet_tiles.pipeline.source import fingerprint, open_source

    _array(tmp_path / "a.zarr")
    before = fingerprint(open_source(str(tmp_path / "a.zarr")))
    chunk = tmp_path / "a.zarr" / "c" / "0" / "0"
    os.utime(chunk, ns=(chunk.stat().st_atime_ns, chunk.stat().st_mtime_ns + 10**9))
    assert fingerprint(open_source(str(tmp_path / "a.zarr"))) != before
