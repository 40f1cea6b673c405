"""What ``unet-tiles bench`` recommends from a scan, and one small real run of it."""

from __future__ import annotations

import re
import tempfile
from typing import TYPE_CHECKING

import pytest
import torch

from unet_tiles.cli import main
from unet_tiles.engine.benchmark import (
    Recommendation,
    Rounds,
    Scan,
    ScanRow,
    recommend,
    tile_rate,
)
from unet_tiles.engine.cluster import usable_cores

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def _scan(size_out: int, processes: int, threads: int, halo: int = 44) -> Scan:
    row = ScanRow(size_out + 2 * halo, size_out, 1e6, 2e6)
    return Scan((row,), 2e6, size_out + 2 * halo, size_out, processes, threads)


@pytest.mark.parametrize(
    ("size_out", "divisor", "default_block", "tile", "block"),
    [(172, 8, 2048, 168, 2184),  # 172 rounds down to the grid; 13 tiles reach 2048
     (1024, 16, 2048, 1024, 2048),  # already on the grid; two tiles are the default
     (1000, 16, 2048, 992, 2976),  # 3 x 992: a whole number of tiles, not less than 2048
     (5, 16, 2048, 16, 2048),  # below the grid: one grid step
     (3000, 16, 2048, 2992, 2992),  # a tile larger than the default block: one tile
     (96, 8, 128, 96, 192)],  # a 3D default
)
def test_tile_on_the_grid_and_block_of_whole_tiles(size_out: int, divisor: int,
                                                   default_block: int, tile: int,
                                                   block: int) -> None:
    advice = recommend(_scan(size_out, 2, 1), divisor, default_block)
    assert (advice.tile_size, advice.block_size) == (tile, block)
    assert advice.tile_size % divisor == 0
    assert advice.block_size % advice.tile_size == 0
    assert advice.block_size >= default_block
    assert advice.block_size - advice.tile_size < default_block  # the least such block


def test_worker_layout_follows_the_best_configuration() -> None:
    # One single-threaded process per core: as many single-threaded workers.
    assert recommend(_scan(172, 4, 1), 8, 2048) == Recommendation(168, 2184, 4, 1)
    # One process with every core as torch threads: one worker, one task thread
    # (the engine gives its torch all the cores, cluster.ClusterInfo.torch_threads).
    assert recommend(_scan(172, 1, 4), 8, 2048) == Recommendation(168, 2184, 1, 1)


def test_flags_and_configuration_text() -> None:
    assert Recommendation(168, 2184, 2, 1).flags() == (
        "--tile-size 168 --block-size 2184 --workers 2 --threads-per-worker 1")
    assert _scan(172, 2, 1).configuration == (
        "tile in 260 (out 172), 2 process(es) x 1 thread(s)")


def test_rounds_ceiling_ratio_and_pairs() -> None:
    rounds = Rounds(ceilings=[4.0, 5.0, 4.5], blocks=[1.0, 2.0, 0.9], walls=[0.5, 1.0, 0.4])
    assert rounds.ceiling == 5.0
    assert rounds.ratio == pytest.approx(2.0 / 5.0)  # best end to end over best ceiling
    assert rounds.paired == pytest.approx([0.2, 0.25, 0.4])


def test_tile_rate_measures_output_pixels(make_model: Callable[..., Path]) -> None:
    threads = torch.get_num_threads()
    try:
        rate = tile_rate(str(make_model(depth=1)), 64, 1, 0.1)
        assert torch.get_num_threads() == 1
        volume_rate = tile_rate(str(make_model(depth=1, dims=3)), 24, 1, 0.1)
    finally:
        torch.set_num_threads(threads)
    assert 1e3 < rate < 1e10
    assert 1e2 < volume_rate < 1e9


@pytest.mark.cluster
@pytest.mark.slow
def test_bench_command_small(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its work folder goes here
    argv = ["bench", "--size", "256", "--seconds", "0.2", "--rounds", "1", "--tiles", "128,256"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cores = usable_cores()
    first = out.splitlines()[0]
    assert re.fullmatch(rf"model \S+unet_tiles/demo/model \(halo 44 px\), {cores} cores, "
                        r"image 256 x 256 uint8", first), first
    # One scan row per tile size asked for, on the demo model's valid sizes.
    rows = re.findall(r"tile in +(\d+) \(out +(\d+)\): 1 process x all cores +([\d.]+) Mpx/s, "
                      r"1 process per core +([\d.]+) Mpx/s", out)
    assert [(int(a), int(b)) for a, b, _, _ in rows] == [(132, 44), (260, 172)]
    assert all(float(one) > 0 and float(many) > 0 for _, _, one, many in rows)
    assert re.search(r"best: [\d.]+ Mpx/s \(tile in (132 \(out 44\)|260 \(out 172\)), "
                     r"\d process\(es\) x \d thread\(s\)\)", out)
    assert len(re.findall(r"^  round \d: ", out, flags=re.M)) == 1
    summary = re.search(r"^ceiling ([\d.]+) Mpx/s, end to end ([\d.]+) Mpx/s over the blocks "
                        r"\(([\d.]+) incl\. cluster start\): ratio ([\d.]+)$", out, flags=re.M)
    assert summary, out
    ceiling, blocks, wall, ratio = map(float, summary.groups())
    assert ceiling > 0
    assert blocks > 0
    assert 0 < wall <= blocks
    assert ratio == pytest.approx(blocks / ceiling, abs=0.011)
    advice = re.search(r"^recommended here: --tile-size (\d+) --block-size (\d+) "
                       r"--workers (\d+) --threads-per-worker (\d+)$", out, flags=re.M)
    assert advice, out
    tile, block, workers, threads = map(int, advice.groups())
    assert tile in (40, 168)  # the best row's output edge on the grid of 8
    assert block % tile == 0
    assert block >= 2048
    assert block - tile < 2048
    assert workers in (1, cores)
    assert threads == 1
    # Said exactly where Linux reports native bfloat16 (this CI's CPUs may or may not).
    from unet_tiles.engine.benchmark import native_bfloat16

    with open("/proc/cpuinfo") as info:
        flags = set(info.read().split())
    assert native_bfloat16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert ("--precision bfloat16 runs the model about 3x faster" in out) == native_bfloat16()
    assert not list(tmp_path.glob("unet-tiles-*"))  # the work folder is removed


@pytest.mark.parametrize(("extra", "message"), [
    (["--size", "10"], "unet-tiles: error: --size 10 is too small to measure; use at least 64"),
    (["--tiles", "x"], "unet-tiles: error: --tiles 'x' must be integers separated by commas"),
    (["--tiles", "128,,256"], "unet-tiles: error: --tiles '128,,256' must be integers"),
    (["--seconds", "0"], "unet-tiles: error: --seconds must be positive and --rounds at least 1"),
    (["--rounds", "0"], "unet-tiles: error: --seconds must be positive and --rounds at least 1"),
    (["--size", "x"], "unet-tiles: error: argument --size: invalid int value: 'x'"),
])
def test_bad_arguments_exit_2_with_one_line(capsys: pytest.CaptureFixture[str],
                                            extra: list[str], message: str) -> None:
    try:
        status = main(["bench", *extra])
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        status = exc.code  # type: ignore[assignment]
    assert status == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(message)


def test_a_3d_model_is_refused(capsys: pytest.CaptureFixture[str],
                               make_model: Callable[..., Path]) -> None:
    model = make_model(dims=3, depth=1, base_channels=2)
    assert main(["bench", "--model", str(model), "--size", "64"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "is a 3D model with 1 channel(s); bench measures 2D single-channel models" in lines[0]
