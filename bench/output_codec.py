"""The outputs' compression: zstd level 3 (zarr's default) against level 1 (unet-tiles').

    python bench/output_codec.py [--size 4096] [--rounds 5] [--model DIR]

The demo model segments a generated SIZE x SIZE uint8 image block by block
(``predict.predict_block``, 2048 px blocks, labels and float16 probabilities: what
``--output both`` writes). Each block's real outputs are then written, rounds
alternating, into zarr arrays laid out as the engine lays them out (1024 px chunks,
the classes in one chunk, every chunk stored, crc32c after zstd:
``writer.compressors``) at each level. Prints per level the write time per block of
each output, the bytes stored, and the ratios; and the forward passes' time per
block in this process, one torch thread (a CPU worker's share), to set them against.
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import TYPE_CHECKING, Any

from common import bench_model, synthetic_input, workdir

if TYPE_CHECKING:
    from pathlib import Path

LEVELS = {"zstd 3 (zarr's default)": 3, "zstd 1 (unet-tiles')": 1}


def stored_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")


def write_ms(target: Any, results: list[tuple[Any, Any]], attr: str) -> float:
    started = time.perf_counter()
    for slices, result in results:
        data = getattr(result, attr)
        if attr == "probabilities":
            target[(slice(None), *slices)] = data
        else:
            target[slices] = data
    return (time.perf_counter() - started) / len(results) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    import torch
    import zarr

    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.pipeline.predict import cached_model, channels_last_on, predict_block
    from unet_tiles.pipeline.window import read_window
    from unet_tiles.pipeline.writer import compressors

    torch.set_num_threads(1)
    work = workdir("unet-tiles-output-codec-")
    try:
        model_dir = bench_model(args.model, work)
        image = synthetic_input(work, args.size)
        run = validate(SegmentRequest(image, str(work / "out.zarr"), model_dir,
                                      output_kind="both"))
        job, plan = run.job, run.plan
        channels_last = channels_last_on("cpu", None)
        model = cached_model(job.model_dir, job.model_hash, "cpu", channels_last)
        array = job.source.open()
        results, forward = [], 0.0
        for block in plan:
            window = read_window(array, job.source, block)
            started = time.perf_counter()
            with torch.inference_mode():
                result = predict_block(model, window, block, want_labels=True,
                                       want_probabilities=True,
                                       probability_dtype=job.output.probability_dtype,
                                       device="cpu", channels_last=channels_last)
            forward += time.perf_counter() - started
            results.append((block.write.to_slices(), result))
        classes = results[0][1].probabilities.shape[0]
        chunks = plan.chunks
        times: dict[tuple[str, str], list[float]] = {}
        sizes: dict[tuple[str, str], int] = {}
        for _ in range(args.rounds):
            for name, level in LEVELS.items():
                root = work / f"level{level}.zarr"
                shutil.rmtree(root, ignore_errors=True)
                group = zarr.open_group(str(root), mode="w")
                options = compressors(3, level)
                arrays = {
                    "labels": group.create_array(
                        "labels", shape=plan.shape, chunks=chunks, dtype="uint8",
                        fill_value=0, **options),
                    "probabilities": group.create_array(
                        "probabilities", shape=(classes, *plan.shape),
                        chunks=(classes, *chunks), dtype=job.output.probability_dtype,
                        fill_value=0, **options),
                }
                for output, target in arrays.items():
                    target = target.with_config({"write_empty_chunks": True})
                    times.setdefault((name, output), []).append(
                        write_ms(target, results, output))
                    sizes[(name, output)] = stored_bytes(root / output)
        blocks = len(results)
        forward_ms = forward / blocks * 1e3
        print(f"{args.size} x {args.size} uint8, {blocks} blocks of {plan.block_shape}, "
              f"{classes} classes as {job.output.probability_dtype}; forward passes "
              f"{forward_ms:.0f} ms per block (one torch thread); best of {args.rounds}, "
              "levels alternating")
        print(f"{'codec':26s} {'output':14s} {'ms/block':>9s} {'x faster':>9s} "
              f"{'of forward':>11s} {'MiB':>8s} {'bytes vs 3':>11s}")
        first = next(iter(LEVELS))
        for name in LEVELS:
            for output in ("labels", "probabilities"):
                ms = min(times[(name, output)])
                base = min(times[(first, output)])
                print(f"{name:26s} {output:14s} {ms:9.1f} {base / ms:9.2f} "
                      f"{ms / forward_ms:11.1%} {sizes[(name, output)] / 2**20:8.2f} "
                      f"{sizes[(name, output)] / sizes[(first, output)]:11.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
