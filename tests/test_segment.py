"""The segment command end to end on real dask clusters with worker processes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import reference_logits, softmax, write_zarr

from unet_tiles.cli import main
from unet_tiles.engine.run import SegmentRequest, validate
from unet_tiles.errors import OutputConflictError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.cluster


def store_digest(path: Path) -> dict[str, str]:
    """Every file of a store and the hash of its bytes."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture
def image() -> np.ndarray:
    return (np.random.default_rng(7).random((150, 211)) * 255).astype("uint8")


def test_on_local_cluster_equals_whole_image(tmp_path: Path, make_model: Any, client: Any,
                                             image: np.ndarray) -> None:
    model = make_model(depth=2)
    src = write_zarr(tmp_path / "in.zarr", image, (40, 50))
    run = validate(SegmentRequest(src, str(tmp_path / "out.zarr"), str(model),
                                  output_kind="both", dtype="float32", block_size=64))
    summary = run.segment(client, progress=False)
    assert summary.blocks_done == len(run.plan) == 3 * 4
    assert summary.pixels == image.size
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    expected = softmax(reference_logits(model, image[None]))
    assert np.abs(out["probabilities"][...] - expected).max() <= 1e-4
    record = out.attrs["unet_tiles"]
    assert record["status"] == "complete"
    assert record["input"]["shape"] == [150, 211]
    assert len(record["model_hash"]) == 64


def test_bfloat16_runs_in_bfloat16_and_is_recorded(tmp_path: Path, make_model: Any,
                                                   client: Any, image: np.ndarray) -> None:
    model = make_model(depth=2, input_scale=(1 / 255,))
    src = write_zarr(tmp_path / "in.zarr", image, (64, 64))
    outputs = {}
    for precision in ("auto", "bfloat16"):
        out = tmp_path / f"{precision}.zarr"
        validate(SegmentRequest(src, str(out), str(model), output_kind="both", dtype="float32",
                                block_size=64, precision=precision)).segment(client,
                                                                             progress=False)
        outputs[precision] = zarr.open_group(str(out), mode="r")
    full, half = outputs["auto"], outputs["bfloat16"]
    assert "precision" not in full.attrs["unet_tiles"]["parameters"]  # old records resume
    assert half.attrs["unet_tiles"]["parameters"]["precision"] == "bfloat16"
    diff = np.abs(half["probabilities"][...] - full["probabilities"][...])
    # bfloat16 keeps 8 bits of mantissa: the probabilities move, the classes hardly.
    assert 1e-4 < diff.max() < 0.05
    assert (half["labels"][...] == full["labels"][...]).mean() > 0.99
    again = validate(SegmentRequest(src, str(tmp_path / "bfloat16.zarr"), str(model),
                                    output_kind="both", dtype="float32", block_size=64))
    with again.locked(), pytest.raises(OutputConflictError,
                                       match=r"other parameters \(precision\)"):
        again.prepare()


@pytest.mark.slow
def test_cli_resume_is_byte_identical_and_other_parameters_are_refused(
    tmp_path: Path, make_model: Any, image: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_model(depth=2)
    src = write_zarr(tmp_path / "in.zarr", image, (64, 64))
    out = tmp_path / "out.zarr"
    args = ["segment", src, str(out), "--model", str(model), "--block-size", "64",
            "--workers", "2", "--no-progress"]
    assert main(args) == 0
    first = store_digest(out)
    assert "in 12 blocks (0 already done)" in capsys.readouterr().out
    # Forget two blocks' done-markers: a rerun must redo exactly those.
    done = zarr.open_array(str(out / "done"), mode="r+")
    done[0, 1] = 0
    done[2, 3] = 0
    assert main(args) == 0
    assert "in 2 blocks (10 already done)" in capsys.readouterr().out
    assert store_digest(out) == first
    assert main([*args[:-1], "--output", "both", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "was written with other parameters (output)" in err
    assert "--overwrite" in err
    assert store_digest(out) == first
    assert main([*args, "--output", "both", "--overwrite"]) == 0
    assert "probabilities" in zarr.open_group(str(out), mode="r")


def test_v2_input_and_fsspec_url(tmp_path: Path, make_model: Any, client: Any,
                                 image: np.ndarray) -> None:
    model = make_model(depth=1)
    src = write_zarr(tmp_path / "in2.zarr", image, (50, 70), zarr_format=2)
    expected = softmax(reference_logits(model, image[None])).argmax(0)
    for i, url in enumerate([src, f"local://{src}"]):
        out = tmp_path / f"out{i}.zarr"
        run = validate(SegmentRequest(url, str(out), str(model), block_size=64))
        run.segment(client, progress=False)
        assert (zarr.open_array(str(out / "labels"))[...] == expected).mean() > 0.999


def test_ome_zarr_level0_and_axes(tmp_path: Path, make_model: Any, client: Any) -> None:
    model = make_model(depth=1, in_channels=2)
    data = (np.random.default_rng(3).random((2, 40, 60)) * 255).astype("uint8")
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                 {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.5, 0.5]}]},
                     {"path": "1", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
    }]
    level0 = root.create_array("0", shape=data.shape, chunks=(2, 32, 32), dtype="uint8")
    level0[...] = data
    root.create_array("1", shape=(2, 20, 30), chunks=(2, 32, 32), dtype="uint8")
    run = validate(SegmentRequest(str(tmp_path / "img.ome.zarr"), str(tmp_path / "o.zarr"),
                                  str(model)))
    assert run.source.axes == "cyx"
    assert run.source.array_path == "0"
    run.segment(client, progress=False)
    # An OME-Zarr input gets an OME-Zarr output: its label image's level 0.
    labels = zarr.open_array(str(tmp_path / "o.zarr" / "0"))
    assert labels.shape == (40, 60)
    assert labels.metadata.zarr_format == 2  # NGFF 0.4, as the input
    assert (labels[...] == softmax(reference_logits(model, data)).argmax(0)).mean() > 0.999


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def external_scheduler(tmp_path: Path) -> Iterator[str]:
    """A scheduler and a two-process worker started as separate ``dask`` commands."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--dashboard-address", "127.0.0.1:0", "--no-show"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )]
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2",
         "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    ))
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="2s") as c:
                    if len(c.scheduler_info()["workers"]) == 2:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("external dask cluster did not start")
            time.sleep(0.5)
        yield address
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, 15)
        for proc in procs:
            proc.wait(timeout=30)


def test_cli_on_external_scheduler(tmp_path: Path, make_model: Any, image: np.ndarray,
                                   external_scheduler: str) -> None:
    model = make_model(depth=2)
    src = write_zarr(tmp_path / "in.zarr", image, (64, 64))
    out = tmp_path / "out.zarr"
    proc = subprocess.run(
        [sys.executable, "-m", "unet_tiles.cli", "segment", src, str(out), "--model",
         str(model), "--cluster", external_scheduler, "--block-size", "64"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "segmented 0.03 Mpx in 12 blocks" in proc.stdout
    expected = softmax(reference_logits(model, image[None])).argmax(0)
    assert (zarr.open_array(str(out / "labels"))[...] == expected).mean() > 0.999


def test_help_and_cpu_runs_import_no_torch_or_dask_cuda(tmp_path: Path, make_model: Any,
                                                        image: np.ndarray) -> None:
    probe = (
        "import sys, json\n"
        "from unet_tiles.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(['torch' in sys.modules, 'distributed' in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [False, False]
    src = write_zarr(tmp_path / "in.zarr", image, (64, 64))
    probe = (
        "import sys\n"
        "from unet_tiles.cli import main\n"
        "if __name__ == '__main__':\n"
        f"    rc = main(['segment', {src!r}, {str(tmp_path / 'o.zarr')!r}, '--model', "
        f"{str(make_model(depth=1))!r}, '--workers', '1', '--no-progress'])\n"
        "    print('dask_cuda' in sys.modules, rc)\n"
    )
    script = tmp_path / "probe.py"
    script.write_text(probe)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.stdout.strip().splitlines()[-1] == "False 0", proc.stderr


def test_overwrite_on_a_warm_cluster_never_writes_through_stale_arrays(
    tmp_path: Path, make_model: Any, client: Any
) -> None:
    # Workers keep opened arrays; a store replaced at the same path (other
    # shape, other chunks) must be opened afresh.
    model = make_model(depth=1)
    out = tmp_path / "out.zarr"
    for shape, chunks in (((120, 90), (64, 64)), ((70, 150), (32, 32))):
        image = (np.random.default_rng(shape[0]).random(shape) * 255).astype("uint8")
        src = write_zarr(tmp_path / "in.zarr", image, chunks)
        run = validate(SegmentRequest(src, str(out), str(model), block_size=chunks[0],
                                      overwrite=True))
        run.segment(client, progress=False)
        labels = zarr.open_array(str(out / "labels"))[...]
        assert labels.shape == shape
        expected = softmax(reference_logits(model, image[None])).argmax(0)
        assert (labels == expected).mean() > 0.999


@pytest.mark.slow
def test_chunks_omitted_as_fill_value_need_explicit_permission(
    tmp_path: Path, make_model: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    image = (np.random.default_rng(4).random((96, 96)) * 255).astype("uint8")
    image[:32, :32] = 0  # one whole chunk of fill value: zarr does not store it
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32), write_empty_chunks=False)
    assert not (tmp_path / "in.zarr" / "c" / "0" / "0").exists()
    model = make_model(depth=1)
    args = ["segment", src, str(tmp_path / "out.zarr"), "--model", str(model),
            "--block-size", "32", "--workers", "1", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "c/0/0" in err
    assert "--allow-missing-chunks" in err
    assert main([*args, "--allow-missing-chunks", "--overwrite"]) == 0
    labels = zarr.open_array(str(tmp_path / "out.zarr" / "labels"))[...]
    assert (labels == softmax(reference_logits(model, image[None])).argmax(0)).mean() > 0.999


def test_cli_output_is_the_summary_line_only(tmp_path: Path, make_model: Any,
                                             image: np.ndarray) -> None:
    src = write_zarr(tmp_path / "in.zarr", image, (64, 64))
    proc = subprocess.run(
        [sys.executable, "-m", "unet_tiles.cli", "segment", src, str(tmp_path / "o.zarr"),
         "--model", str(make_model(depth=1)), "--workers", "1", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("segmented 0.03 Mpx in 1 blocks")
    assert "distributed" not in proc.stderr, proc.stderr


def test_two_local_clusters_in_a_fresh_process(tmp_path: Path) -> None:
    # Starting a cluster must leave dask's config as it found it: a second
    # start in the same process (archive runs, benchmarks) needs it whole.
    # Its workers get the malloc settings and the quieter housekeeping.
    script = tmp_path / "twice.py"
    script.write_text(
        "import os, dask\n"
        "from unet_tiles.engine.cluster import connect\n"
        "def settings():\n"
        "    env = os.environ.get\n"
        "    return (env('MALLOC_MMAP_THRESHOLD_'), env('MALLOC_ARENA_MAX'),\n"
        "            dask.config.get('distributed.admin.tick.interval'))\n"
        "if __name__ == '__main__':\n"
        "    for _ in range(2):\n"
        "        with connect('cpu', workers=1) as (client, info):\n"
        "            print(list(client.run(settings).values()))\n"
        "    print(dask.config.get('distributed.admin.tick.interval'))\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == ["[('268435456', '1', '1s')]"] * 2 + ["20ms"]
