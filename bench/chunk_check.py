"""The missing-chunk check of a block's window: one store request at a time, or all at once.

    python bench/chunk_check.py [--size 8192] [--block 2048] [--rounds 5] [--no-s3]

Invariant 6 asks every block to check that each input chunk its window touches is
stored (zarr reads an absent chunk as fill value). ``window.missing_chunks`` asks the
store about all of a window's chunks at once; the baseline asks about them one after
the other, as it did before. Both run here on the same windows of a generated
SIZE x SIZE uint8 image (1024 px chunks: a 2048 px block's window touches 9 to 16 of
them): on a local store, and on a real S3 endpoint (moto's server on loopback,
``tests/s3_server.py``; needs the test extra) holding a copy of it. Prints ms per
block for each, the best of ``--rounds``, alternating, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import DEMO_MODEL, synthetic_input, workdir


def one_at_a_time(array: Any, region: tuple[slice, ...]) -> list[str]:
    """The check as it was: each key's request waits for the one before."""
    from zarr.core.sync import sync

    from unet_tiles.pipeline.window import chunk_keys

    store = array.store_path.store

    async def check() -> list[str]:
        return [key for key in chunk_keys(array, region) if not await store.exists(key)]

    return sync(check())


def per_block_ms(check: Any, array: Any, regions: list[tuple[slice, ...]]) -> float:
    started = time.perf_counter()
    for region in regions:
        if check(array, region):
            raise SystemExit("a chunk is missing from the bench's own input")
    return (time.perf_counter() - started) / len(regions) * 1e3


def compare(name: str, location: str, block: int, rounds: int) -> None:
    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.pipeline.window import input_region, missing_chunks

    run = validate(SegmentRequest(location, location + ".out", str(DEMO_MODEL),
                                  block_size=block))
    array = run.job.source.open()
    regions = [input_region(run.job.source, b)[0] for b in run.plan]
    ways = {"one at a time": one_at_a_time, "all at once": missing_chunks}
    for check in ways.values():  # warms the store's connections and zarr's loop
        per_block_ms(check, array, regions)
    best = {way: float("inf") for way in ways}
    for _ in range(rounds):
        for way, check in ways.items():
            best[way] = min(best[way], per_block_ms(check, array, regions))
    base = best["one at a time"]
    for way, ms in best.items():
        print(f"{name:6s} {way:14s} {ms:8.2f} ms per block {base / ms:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-s3", action="store_true", help="the local store only")
    args = parser.parse_args()
    work = workdir("unet-tiles-chunk-check-")
    try:
        image = synthetic_input(work, args.size)
        print(f"{args.size} x {args.size} uint8, 1024 px chunks, {args.block} px blocks; "
              f"best of {args.rounds}, alternating")
        compare("local", image, args.block, args.rounds)
        if not args.no_s3:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from s3_server import S3, start_server

            with start_server(work / "moto.log") as server:
                s3 = S3(endpoint=server.endpoint, key_id="bench", secret="bench",
                        bucket="bench")
                os.environ.update(s3.env())
                s3.fs().mkdir(s3.bucket)
                compare("s3", s3.upload(image, "image.zarr"), args.block, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
