"""``unet-tiles bench [--model DIR]``: how fast this machine segments, and why.

Measures the model-only ceiling and the end-to-end rate with the defaults,
side by side (``engine.benchmark``, the method of ``bench/throughput.py``), and
prints both, their ratio, and the block / tile / worker settings the scan
recommends for this machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unet_tiles.cli.options import add_model

if TYPE_CHECKING:
    import argparse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="measure the model-only ceiling and the end-to-end rate on this machine",
        description="Generate a SIZE x SIZE image, measure the model alone on tiles in memory "
        "(a scan over tile sizes and process layouts) and the whole pipeline with the "
        "defaults, alternately, and print both, their ratio and the settings to use here.",
    )
    add_model(p, required=False)
    p.add_argument("--size", type=int, default=4096, metavar="N",
                   help="edge of the generated image in px (default 4096)")
    p.add_argument("--seconds", type=float, default=2.0, metavar="S",
                   help="per scanned tile size and layout (default 2)")
    p.add_argument("--rounds", type=int, default=2, metavar="N",
                   help="alternating ceiling / end-to-end rounds (default 2)")
    p.add_argument("--tiles", default=None, metavar="N,N,...",
                   help="tile sizes to scan (default 256 to 2048)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where the image is generated (default: a temporary folder)")
    return p


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from unet_tiles.demo.images import demo_model_dir
    from unet_tiles.demo.synth import generate_image
    from unet_tiles.engine import benchmark
    from unet_tiles.engine.cluster import usable_cores
    from unet_tiles.engine.run import DEFAULT_BLOCK, model_and_hash
    from unet_tiles.errors import UsageError

    if args.size < 64:
        raise UsageError(f"`size` {args.size} is too small to measure; use at least 64")
    if args.seconds <= 0 or args.rounds < 1:
        raise UsageError("`seconds` must be positive and `rounds` at least 1")
    targets: tuple[int, ...] = benchmark.TILE_TARGETS
    if args.tiles:
        try:
            targets = tuple(int(t) for t in args.tiles.split(","))
        except ValueError:
            raise UsageError(f"`tiles` {args.tiles!r} must be integers separated by commas") \
                from None
    model_dir = args.model_dir or str(demo_model_dir())
    model, _ = model_and_hash(model_dir)
    if model.config.dims != 2 or model.config.in_channels != 1:
        raise UsageError(f"`model_dir` {model_dir!r} is a {model.config.dims}D model with "
                         f"{model.config.in_channels} channel(s); bench measures 2D "
                         "single-channel models")
    cores = usable_cores()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="unet-tiles-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        chunk = min(1024, args.size)
        image = work / f"bench-image-{args.size}.zarr"
        if not (image / "zarr.json").exists():
            generate_image(image, work / f"bench-truth-{args.size}.zarr",
                           (args.size, args.size), chunks=(chunk, chunk))
        print(f"model {model_dir} (halo {model.halo[0]} px), {cores} cores, image "
              f"{args.size} x {args.size} uint8")
        print("model only, tiles in memory:")
        found = benchmark.scan(model_dir, cores, args.seconds, targets, report=_print_row)
        print(f"  best: {found.best_rate / 1e6:.2f} Mpx/s ({found.configuration})")
        print("end to end with the defaults, alternating with that configuration:")
        rounds = benchmark.paired_rounds(str(image), model_dir, work, found,
                                         args.size**2 / 1e6, args.rounds, report=_print_round)
        print(f"ceiling {rounds.ceiling:.2f} Mpx/s, end to end {max(rounds.blocks):.2f} Mpx/s "
              f"over the blocks ({max(rounds.walls):.2f} incl. cluster start): ratio "
              f"{rounds.ratio:.2f}")
        advice = benchmark.recommend(found, model.divisor, DEFAULT_BLOCK[2])
        print(f"recommended here: {advice.flags()}")
        if benchmark.native_bfloat16():
            print("this CPU computes bfloat16 natively: --precision bfloat16 runs the model "
                  "about 3x faster, with 0.1-0.3 % of pixels in another class "
                  "(bench/model_formats.py)")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _print_row(row: Any) -> None:
    print(f"  tile in {row.size_in:5d} (out {row.size_out:5d}): 1 process x all cores "
          f"{row.one_process / 1e6:6.2f} Mpx/s, 1 process per core {row.per_core / 1e6:6.2f} "
          "Mpx/s", flush=True)


def _print_round(number: int, rounds: Any) -> None:
    print(f"  round {number}: ceiling {rounds.ceilings[-1]:.2f} Mpx/s, end to end "
          f"{rounds.blocks[-1]:.2f} Mpx/s over the blocks ({rounds.walls[-1]:.2f} incl. cluster "
          f"start), ratio {rounds.blocks[-1] / rounds.ceilings[-1]:.2f}", flush=True)
