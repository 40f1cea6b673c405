"""The CUDA path: model-only ceiling on the GPU against end to end with dask-cuda.

    python bench/gpu.py [--size 16384] [--model DIR]

Model-only: output megapixels/s on tiles already on the device, over tile
sizes, batch sizes, and float32 vs mixed precision (float16 autocast). End to
end: ``unet-tiles segment --cluster cuda`` on a generated SIZE x SIZE uint8
image (zarr in, zarr out), at the default and larger block sizes. All figures
come from one run on one device.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time

from common import bench_model, synthetic_input, workdir


def model_rate(model_dir: str, size_in: int, batch: int, amp: bool, seconds: float) -> float:
    import torch

    from unet_tiles import load_model

    model = load_model(model_dir, device="cuda")
    x = torch.rand(batch, model.config.in_channels, size_in, size_in, device="cuda") * 255
    out = size_in - 2 * model.halo[0]
    ctx = (torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext())
    with torch.inference_mode(), ctx:
        for _ in range(3):
            model(x).argmax(1)
        torch.cuda.synchronize()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(x).argmax(1)
            count += 1
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return count * batch * out * out / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    import torch

    from unet_tiles import load_model, segment

    work = workdir("unet-tiles-gpu-")
    model_dir = bench_model(args.model, work)
    model = load_model(model_dir)
    print(f"device {torch.cuda.get_device_name()}, model {model_dir} "
          f"(depth {model.config.depth}, base {model.config.base_channels})", flush=True)
    best = 0.0
    for target in (516, 1028, 2052):
        size_in = model.valid_size(target)
        for batch in (8,) if size_in < 2000 else (2,):
            for amp in (False, True):
                rate = model_rate(model_dir, size_in, batch, amp, args.seconds)
                best = max(best, rate)
                print(f"  model only: tile {size_in} batch {batch} "
                      f"{'amp ' if amp else 'fp32'}: {rate / 1e6:8.1f} Mpx/s", flush=True)
    print(f"model-only ceiling: {best / 1e6:.1f} Mpx/s", flush=True)
    started = time.perf_counter()
    src = synthetic_input(work, args.size)
    print(f"generated {args.size}^2 input in {time.perf_counter() - started:.0f} s", flush=True)
    for name, options in (
        ("defaults: LocalCUDACluster, 1 worker x 2 threads", {}),
        ("block 2048, tile 1024", {"block_size": 2048, "tile_size": 1024}),
        ("4 workers share the GPU", {"workers": 4}),
        ("8 workers share the GPU", {"workers": 8}),
        ("8 workers, block 2048, tile 1024",
         {"workers": 8, "block_size": 2048, "tile_size": 1024}),
        ("14 workers, block 2048, tile 1024",
         {"workers": 14, "block_size": 2048, "tile_size": 1024}),
    ):
        out = work / "out.zarr"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        summary = segment(src, str(out), model_dir, cluster="cuda", progress=False,
                          **options)  # type: ignore[arg-type]
        wall = time.perf_counter() - started
        print(f"end to end ({name}): {summary.megapixels_per_s:.1f} Mpx/s over the blocks "
              f"({summary.blocks_done} blocks, {summary.seconds:.1f} s), "
              f"{summary.pixels / 1e6 / wall:.1f} Mpx/s wall incl. cluster start; "
              f"ratio to ceiling {summary.megapixels_per_s * 1e6 / best:.2f}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
