"""Bad input, table-driven: every case exits 2 with one clear line and touches nothing.

Each row builds one broken input, model or output in ``tmp_path`` and names the
words its error line must contain. For every row the test checks, through the
real CLI (``unet_tiles.cli.main`` in-process: nothing here starts a cluster):

* exit status 2, exactly one line on stderr, starting ``unet-tiles: error:``,
  no traceback;
* the input (every file's bytes and mtime) is untouched;
* no output a rerun would trust: none is created, and one that existed before
  is left byte-for-byte as it was.

Two inputs are not errors but documented policies, checked at the end with a
real cluster: NaN/Inf pixels are read as 0 (never NaN in the output), and an
image smaller than the model's halo is mirrored like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from unet_tiles.cli import main

if TYPE_CHECKING:
    from collections.abc import Callable

    from unet_tiles.model.unet import UNet

def _zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None = None,
          zarr_format: int = 3, **kwargs: Any) -> str:
    import zarr

    array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype,
                              chunks=chunks or data.shape or "auto", zarr_format=zarr_format,
                              overwrite=True, **kwargs)
    if data.size:
        array[...] = data
    return str(path)


def _image(tmp: Path, name: str = "img.zarr", shape: tuple[int, ...] = (40, 50),
           dtype: str = "uint8") -> str:
    rng = np.random.default_rng(0)
    return _zarr(tmp / name, rng.integers(0, 200, shape).astype(dtype), (32,) * len(shape))


def _raw_array_meta(path: Path, shape: list[int], chunks: list[int],
                    dtype: str = "uint8") -> str:
    """A zarr v3 array whose metadata alone is written: nothing a reader may allocate."""
    path.mkdir()
    (path / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
    }))
    return str(path)


@dataclass
class Case:
    """One broken situation: ``build(tmp, model)`` returns the CLI arguments."""

    id: str
    build: Callable[[Path, Path], list[str]]
    expect: tuple[str, ...]
    skip_root: bool = False


def _seg(inp: str, out: str, model: Path | str, *extra: str) -> list[str]:
    return ["segment", inp, out, "--model", str(model), "--no-progress", *extra]


def _copy_model(tmp: Path, model: Path) -> Path:
    dst = tmp / "model"
    dst.mkdir()
    for f in model.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(tmp: Path, model: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    dst = _copy_model(tmp, model)
    config = json.loads((dst / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _weights(tmp: Path, model: Path, mutate: Callable[[bytes], bytes]) -> Path:
    dst = _copy_model(tmp, model)
    weights = dst / "weights.safetensors"
    weights.write_bytes(mutate(weights.read_bytes()))
    return dst


def _group(tmp: Path, names: tuple[str, ...]) -> str:
    import zarr

    group = zarr.open_group(str(tmp / "group.zarr"), mode="w")
    for name in names:
        group.create_array(name, shape=(40, 50), chunks=(32, 32), dtype="uint8")
    return str(tmp / "group.zarr")


def _existing_output(tmp: Path, model: Path) -> list[str]:
    """An output prepared for ``--output labels``, then asked for probabilities."""
    from unet_tiles.engine.run import SegmentRequest, validate

    inp = _image(tmp)
    run = validate(SegmentRequest(inp, str(tmp / "out.zarr"), str(model)))
    with run.locked():
        run.prepare()
    return _seg(inp, str(tmp / "out.zarr"), model, "--output", "probabilities")


def _foreign_output(tmp: Path, model: Path) -> list[str]:
    (tmp / "out.zarr").mkdir()
    (tmp / "out.zarr" / "notes.txt").write_text("someone else's data")
    return _seg(_image(tmp), str(tmp / "out.zarr"), model)


def _unreadable(tmp: Path, model: Path) -> list[str]:
    inp = _image(tmp)
    os.chmod(inp, 0)
    return _seg(inp, str(tmp / "out.zarr"), model)


def _object_dtype(tmp: Path, model: Path) -> list[str]:
    import zarr

    array = zarr.create_array(str(tmp / "s.zarr"), shape=(40, 50), chunks=(32, 32), dtype="str")
    array[...] = np.full((40, 50), "x", dtype=object)
    return _seg(str(tmp / "s.zarr"), str(tmp / "out.zarr"), model)


def _v2_bad_zarray(tmp: Path, model: Path) -> list[str]:
    inp = _zarr(tmp / "v2.zarr", np.zeros((40, 50), np.uint8), (32, 32), zarr_format=2)
    (Path(inp) / ".zarray").write_text('{"zarr_format": 2, "shape": [40, ')
    return _seg(inp, str(tmp / "out.zarr"), model)


def _model_3d_image_2d(tmp: Path, model: Path) -> list[str]:
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    m3 = save_model(build_unet(UNetConfig(dims=3, in_channels=1, classes=2, depth=1,
                                          base_channels=2), seed=0), tmp / "m3")
    return _seg(_image(tmp), str(tmp / "out.zarr"), m3)


def _tmp_out(tmp: Path) -> str:
    return str(tmp / "out.zarr")


def _config_not_json(tmp: Path, model: Path) -> list[str]:
    dst = _copy_model(tmp, model)
    (dst / "config.json").write_text("{oops")
    return _seg(_image(tmp), _tmp_out(tmp), dst)


CASES = [
    # --- paths -----------------------------------------------------------------------
    Case("input-missing", lambda t, m: _seg(str(t / "nope.zarr"), _tmp_out(t), m),
         ("nope.zarr", "does not exist")),
    Case("input-is-a-file", lambda t, m: (t / "a.tif").write_bytes(b"II*\0")
         and _seg(str(t / "a.tif"), _tmp_out(t), m), ("a.tif", "is a file, not a zarr store")),
    Case("input-unreadable", _unreadable, ("img.zarr", "not readable"), skip_root=True),
    Case("dir-not-zarr", lambda t, m: (t / "plain").mkdir()
         or _seg(str(t / "plain"), _tmp_out(t), m), ("plain", "is not a zarr store")),
    Case("group-several-arrays", lambda t, m: _seg(_group(t, ("a", "b")), _tmp_out(t), m),
         ("group holding several arrays (a, b)", "pick one as", "group.zarr/a")),
    Case("group-no-arrays", lambda t, m: _seg(_group(t, ()), _tmp_out(t), m),
         ("group with no arrays",)),
    Case("metadata-not-json", lambda t, m: _seg(_v2_bad_zarray(t, m)[1], _tmp_out(t), m),
         ("v2.zarr", "unreadable zarr metadata")),
    Case("model-dir-missing", lambda t, m: _seg(_image(t), _tmp_out(t), t / "nomodel"),
         ("nomodel", "does not exist", "init-model")),
    Case("output-parent-missing", lambda t, m: _seg(_image(t), str(t / "no" / "out.zarr"), m),
         ("does not exist; create it first",)),
    # --- array shapes ----------------------------------------------------------------
    Case("0-d", lambda t, m: _seg(_zarr(t / "z.zarr", np.array(3, np.uint8)), _tmp_out(t), m),
         ("has 0 axes", "needs 2 to 5")),
    Case("1-d", lambda t, m: _seg(_zarr(t / "z.zarr", np.zeros(50, np.uint8)), _tmp_out(t), m),
         ("has 1 axes", "needs 2 to 5")),
    Case("6-d", lambda t, m: _seg(_zarr(t / "z.zarr", np.zeros((1, 1, 1, 1, 4, 5), np.uint8)),
                                  _tmp_out(t), m), ("has 6 axes", "needs 2 to 5")),
    Case("empty", lambda t, m: _seg(_zarr(t / "z.zarr", np.zeros((0, 0), np.uint8), (1, 1)),
                                    _tmp_out(t), m), ("is empty", "nothing to segment")),
    Case("zero-length-axis", lambda t, m: _seg(
        _zarr(t / "z.zarr", np.zeros((3, 0, 10), np.uint8), (1, 1, 10)), _tmp_out(t), m),
         ("is empty (shape (3, 0, 10))",)),
    Case("axes-model-3d-image-2d", _model_3d_image_2d, ("axes 'yx'", "model is 3D")),
    Case("axes-bad-letters", lambda t, m: _seg(_image(t), _tmp_out(t), m, "--axes", "yq"),
         ("--axes 'yq'", "t,c,z,y,x")),
    Case("axes-wrong-count", lambda t, m: _seg(_image(t), _tmp_out(t), m, "--axes", "zyx"),
         ("--axes 'zyx' names 3 axes", "has 2")),
    Case("axes-not-ending-yx", lambda t, m: _seg(_image(t), _tmp_out(t), m, "--axes", "xy"),
         ("the last two must be y and x",)),
    Case("channels-mismatch", lambda t, m: _seg(_image(t, shape=(3, 40, 50)), _tmp_out(t), m,
                                                "--axes", "cyx"),
         ("has 3 channel(s)", "model expects 1")),
    # --- dtypes ----------------------------------------------------------------------
    Case("dtype-bool", lambda t, m: _seg(_zarr(t / "b.zarr", np.ones((40, 50), bool)),
                                         _tmp_out(t), m), ("dtype bool",)),
    Case("dtype-complex", lambda t, m: _seg(_zarr(t / "c.zarr", np.ones((40, 50), "complex64")),
                                            _tmp_out(t), m), ("dtype complex64",)),
    Case("dtype-string", _object_dtype, ("s.zarr", "has dtype", "cannot be segmented")),
    # --- hostile metadata: refused before anything is allocated -----------------------
    Case("chunk-terabytes", lambda t, m: _seg(
        _raw_array_meta(t / "bomb.zarr", [2**40, 2**40], [2**20, 2**20]), _tmp_out(t), m),
         ("declares chunks", "1024.0 GiB", "rechunk")),
    Case("shape-exabytes", lambda t, m: _seg(
        _raw_array_meta(t / "bomb.zarr", [2**40, 2**30], [64, 64]), _tmp_out(t), m),
         ("declares shape", "corrupt or hostile")),
    # --- models ----------------------------------------------------------------------
    Case("weights-truncated", lambda t, m: _seg(
        _image(t), _tmp_out(t), _weights(t, m, lambda b: b[: len(b) // 2])),
         ("weights.safetensors", "corrupt or truncated")),
    Case("weights-garbage", lambda t, m: _seg(
        _image(t), _tmp_out(t), _weights(t, m, lambda b: b"\x80\x04pickle" + b[10:])),
         ("weights.safetensors", "corrupt or truncated")),
    Case("config-unknown-field", lambda t, m: _seg(_image(t), _tmp_out(t), _edit_config(
        t, m, lambda c: c.update(hooks="import os"))), ("unknown field(s) ['hooks']",)),
    Case("config-missing-field", lambda t, m: _seg(_image(t), _tmp_out(t), _edit_config(
        t, m, lambda c: c["architecture"].pop("depth"))), ("missing field(s) ['depth']",)),
    Case("config-newer-version", lambda t, m: _seg(_image(t), _tmp_out(t), _edit_config(
        t, m, lambda c: c.update(format_version=99))), ("format_version 99", "upgrade")),
    Case("config-absurd-size", lambda t, m: _seg(_image(t), _tmp_out(t), _edit_config(
        t, m, lambda c: c["architecture"].update(base_channels=10**9))),
         ("base_channels must be an integer in 1..2048",)),
    Case("config-not-json", _config_not_json, ("config.json", "not valid JSON")),
    Case("weights-other-model", lambda t, m: _seg(_image(t), _tmp_out(t), _edit_config(
        t, m, lambda c: c["architecture"].update(base_channels=8))),
         ("weights.safetensors", "config.json implies", "different models")),
    # --- run parameters and outputs ----------------------------------------------------
    Case("block-too-small", lambda t, m: _seg(_image(t), _tmp_out(t), m, "--block-size", "2"),
         ("--block-size 2", "minimum of 4")),
    Case("output-is-input", lambda t, m: _seg(_image(t), str(t / "img.zarr"), m),
         ("is the input",)),
    Case("output-inside-input", lambda t, m: _seg(_image(t), str(t / "img.zarr" / "seg"), m),
         ("is inside the input",)),
    Case("input-inside-output", lambda t, m: _seg(_image(t, "outer/img.zarr"), str(t / "outer"),
                                                  m), ("is inside the output",)),
    Case("output-other-parameters", _existing_output, ("other parameters (output)",
                                                       "--overwrite")),
    Case("output-not-ours", _foreign_output, ("not written by unet-tiles", "--overwrite")),
]



def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: content hash and mtime (ns)."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                                 p.stat().st_mtime_ns)
            except PermissionError:
                out[str(p.relative_to(root))] = ("unreadable", p.stat().st_mtime_ns)
    return out


def test_table_has_enough_cases() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, make_model: Callable[..., Path],
                   capsys: pytest.CaptureFixture[str]) -> None:
    if case.skip_root and os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    model = make_model(classes=2)
    work = tmp_path / "w"
    work.mkdir()
    argv = case.build(work, model)
    capsys.readouterr()
    # Everything in the work folder except what the run may create must be untouched.
    before = _snapshot(work)
    try:
        status = main(argv)
    finally:
        for p in work.rglob("*"):  # undo chmod so tmp_path can be cleaned
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        work.chmod(0o755)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("unet-tiles: error: "), err
    assert "Traceback" not in err
    for words in case.expect:
        assert words in lines[0], f"{words!r} not in {lines[0]!r}"
    after = _snapshot(work)
    assert after == before, "a failed run changed or created files"


# --- documented policies: not errors --------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_nan_and_inf_pixels_are_read_as_zero(tmp_path: Path, make_model: Callable[..., Path],
                                             client: Any) -> None:
    """NaN/+-Inf pixels are read as 0 (window.py): the output has no NaN, and equals
    the output of the same image with those pixels set to 0."""
    import zarr

    from unet_tiles.engine.run import SegmentRequest, validate

    model = make_model(classes=2)
    rng = np.random.default_rng(1)
    image = rng.normal(100, 20, (70, 90)).astype(np.float32)
    bad = image.copy()
    bad[5, 5], bad[30, 40], bad[69, 89] = np.nan, np.inf, -np.inf
    zeroed = np.nan_to_num(bad, nan=0.0, posinf=0.0, neginf=0.0)
    results = []
    for name, data in (("bad", bad), ("zeroed", zeroed)):
        inp = _zarr(tmp_path / f"{name}.zarr", data, (32, 32))
        out = str(tmp_path / f"{name}-out.zarr")
        run = validate(SegmentRequest(inp, out, str(model), output_kind="both",
                                      dtype="float32", block_size=32))
        run.segment(client, progress=False)
        results.append(zarr.open_group(out, mode="r"))
    probabilities = np.asarray(results[0]["probabilities"][...])
    assert np.isfinite(probabilities).all()
    np.testing.assert_array_equal(probabilities, results[1]["probabilities"][...])
    np.testing.assert_array_equal(results[0]["labels"][...], results[1]["labels"][...])


@pytest.mark.slow
@pytest.mark.cluster
def test_image_smaller_than_halo_is_mirrored(tmp_path: Path, make_model: Callable[..., Path],
                                             client: Any) -> None:
    """A 7x9 image (halo 20) is segmented like any other: mirrored as far as tiles reach."""
    import zarr

    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.model.files import load_model

    model_dir = make_model(classes=2)
    model: UNet = load_model(model_dir)
    assert model.halo[0] > 9
    image = np.random.default_rng(2).integers(0, 255, (7, 9)).astype(np.uint8)
    inp = _zarr(tmp_path / "tiny.zarr", image, (7, 9))
    out = str(tmp_path / "tiny-out.zarr")
    run = validate(SegmentRequest(inp, out, str(model_dir)))
    summary = run.segment(client, progress=False)
    assert summary.blocks_done == 1
    labels = np.asarray(zarr.open_array(out, path="labels", mode="r")[...])
    assert labels.shape == (7, 9)
    from helpers import reference_logits

    expected = reference_logits(model_dir, image[None].astype(np.float32)).argmax(0)
    np.testing.assert_array_equal(labels, expected)
