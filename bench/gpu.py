"""The CUDA path: fixed start-up apart from the steady state, against model-only, per model.

    python bench/gpu.py [--model-seconds 30] [--size 8192] [--models demo paper] [--compile]
                        [--layouts 1x4 1x8 4x2] [--block-sizes 4096]
    python bench/gpu.py --cluster cpu --size 1024 --model-seconds 2   # a smoke run on CPU

For each model (the demo model's architecture, and the paper's U-Net: depth 4, 64
base channels), in one run on one device:

* model-only: output Mpx/s of batches of the default tile already on the device
  (float16 autocast and the tensor layout, as the engine runs it), and the other
  layout's rate against it (channels-last or contiguous: ``predict.channels_last_on``),
  and with ``--compile`` the model through ``torch.compile`` against eager;
* fixed start-up: cluster start, then every worker warmed (CUDA context, model
  load, cuDNN's kernel choice for the plan's tile shape: ``warm.warm_worker``);
* steady state: the generated SIZE x SIZE image segmented again and again on the
  warm cluster (each time to a fresh output) until the model alone would have
  needed ``--model-seconds``; end-to-end Mpx/s over those runs, and its ratio to
  model-only. Targets (issue 12): at least 0.85 for the paper's U-Net, 0.5 for the
  demo model, start-up under 15 s;
* with ``--layouts``: the steady state again with other worker layouts (processes x
  threads), a third as long: how many host paths the device needs (bench/gpu_feed.py);
* with ``--block-sizes``: the steady state again on the first cluster with other
  ``--block-size`` values, a third as long: larger blocks spread the host's per-block
  costs over more pixels (bench/gpu_feed.py measured 0.70-0.79x the host CPU per pixel
  at 4096 px against 2048, on CPU).

On CPU (``--cluster cpu``) the model-only figure is one torch thread's while the
cluster uses every core: a check that the script runs, not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import time
from typing import Any

from common import synthetic_input, workdir

MODELS = {"demo": {"depth": 3, "base_channels": 8}, "paper": {"depth": 4, "base_channels": 64}}


def model_rate(model: Any, size_in: int, batch: int, device: str, seconds: float,
               channels_last: bool = False) -> float:
    """Output pixels per second of ``batch`` tiles of ``size_in`` on ``device``
    (``channels_last``: tiles and ``model``'s weights in that layout)."""
    import torch

    x = torch.rand(batch, model.config.in_channels, size_in, size_in, device=device) * 255
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = model.output_size(size_in)
    amp = torch.autocast("cuda", dtype=torch.float16) if device.startswith("cuda") \
        else contextlib.nullcontext()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode(), amp:
        for _ in range(3):
            model(x)
        sync()
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(x)
            count += 1
        sync()
        elapsed = time.perf_counter() - started
    return count * batch * out * out / elapsed


def compiled_rate(name: str, model: Any, size_in: int, batch: int, device: str,
                  seconds: float, channels_last: bool, eager: float) -> None:
    """Print ``torch.compile``'s model-only rate against eager's and its first call."""
    import torch

    compiled = torch.compile(model, dynamic=False)
    started = time.perf_counter()
    try:
        rate = model_rate(compiled, size_in, batch, device, seconds, channels_last)
    except Exception as exc:  # inductor's own failures: report, measure the rest
        print(f"{name}: torch.compile failed: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200]}", flush=True)
        return
    first = time.perf_counter() - started - seconds
    print(f"{name}: model only through torch.compile {rate / eager:.2f} x eager "
          f"(compiling and warming: {first:.1f} s)", flush=True)


def measure(name: str, model_dir: str, src: str, work: Any, args: argparse.Namespace) -> None:
    import torch

    from unet_tiles.engine.cluster import connect
    from unet_tiles.engine.run import SegmentRequest, default_tile, validate
    from unet_tiles.engine.warm import warm_workers
    from unet_tiles.model.files import load_model
    from unet_tiles.pipeline.predict import auto_batch, channels_last_on

    device = "cuda" if args.cluster != "cpu" else "cpu"
    layout = {True: torch.channels_last, False: torch.contiguous_format}
    model = load_model(model_dir, device=device).to(memory_format=layout[channels_last_on(device)])
    size_in = model.valid_size(default_tile(model.config) + 2 * model.halo[0])
    batch = auto_batch(model, (size_in, size_in), device)
    if device == "cpu":
        torch.set_num_threads(1)
    ceiling = model_rate(model, size_in, batch, device, args.seconds,
                         channels_last_on(device))
    # The other layout, so a GPU run says whether channels-last pays there too.
    other = not channels_last_on(device)
    model = model.to(memory_format=layout[other])
    other_rate = model_rate(model, size_in, batch, device, args.seconds, other)
    print(f"{name}: model only, {'channels-last' if other else 'contiguous'} instead of the "
          f"engine's layout: {other_rate / ceiling:.2f} x the engine's", flush=True)
    if args.compile:
        compiled_rate(name, model.to(memory_format=layout[channels_last_on(device)]), size_in,
                      batch, device, args.seconds, channels_last_on(device), ceiling)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    pixels = args.size**2
    runs = max(1, math.ceil(args.model_seconds * ceiling / pixels))
    print(f"{name}: model only {ceiling / 1e6:.1f} Mpx/s (tile in {size_in}, batch {batch}); "
          f"{runs} run(s) of {args.size}^2 = {runs * pixels / ceiling:.0f} s of model time",
          flush=True)
    started = time.perf_counter()
    with connect(args.cluster, args.workers, None) as (client, info):
        cluster_s = time.perf_counter() - started
        run = validate(SegmentRequest(src, str(work / f"{name}-0.zarr"), model_dir))
        warm = time.perf_counter()
        warm_workers(client, run.job)
        warm_s = time.perf_counter() - warm
        rate, blocks_rate = steady_state(client, info, src, model_dir, work, name, runs)
        by_block = {size: steady_state(client, info, src, model_dir, work, name,
                                       max(1, runs // 3), size)[0]
                    for size in args.block_sizes}
    print(f"{name}: start-up {cluster_s + warm_s:.1f} s (cluster {cluster_s:.1f} s, warming "
          f"{info.workers} worker(s) {warm_s:.1f} s); steady state {rate / 1e6:.1f} Mpx/s end "
          f"to end ({blocks_rate / 1e6:.1f} over the blocks), "
          f"ratio to model only {rate / ceiling:.2f}", flush=True)
    for size, size_rate in by_block.items():
        print(f"{name}: --block-size {size}: steady state {size_rate / 1e6:.1f} Mpx/s, ratio "
              f"to model only {size_rate / ceiling:.2f}, {size_rate / rate:.2f} x the default "
              "block's", flush=True)
    # Other worker layouts on the same device: processes x threads (more processes than
    # GPUs share them, cluster._shared_gpus), each warmed, the same steady state.
    for layout in args.layouts:
        workers, threads = (int(n) for n in layout.split("x"))
        with connect(args.cluster, workers, threads) as (client, info):
            warm_workers(client, run.job)
            rate, _ = steady_state(client, info, src, model_dir, work, name,
                                   max(1, runs // 3))
        print(f"{name}: {workers} worker(s) x {threads} thread(s): steady state "
              f"{rate / 1e6:.1f} Mpx/s, ratio to model only {rate / ceiling:.2f}", flush=True)


def steady_state(client: Any, info: Any, src: str, model_dir: str, work: Any, name: str,
                 runs: int, block_size: int | None = None) -> tuple[float, float]:
    """(end-to-end px/s over ``runs`` segmentations on the warm cluster, px/s over
    their blocks alone)."""
    from unet_tiles.engine.run import SegmentRequest, validate

    done_pixels, block_s = 0, 0.0
    started = time.perf_counter()
    for k in range(runs):
        out = work / f"{name}-{k}.zarr"
        summary = validate(SegmentRequest(src, str(out), model_dir,
                                          block_size=block_size)).segment(
            client, info, progress=False)
        done_pixels += summary.pixels
        block_s += summary.seconds
        shutil.rmtree(out, ignore_errors=True)
    return done_pixels / (time.perf_counter() - started), done_pixels / block_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--model-seconds", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="model-only sampling")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--cluster", default="cuda", help="cuda (default), local or cpu")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--compile", action="store_true",
                        help="also the model alone through torch.compile")
    parser.add_argument("--layouts", nargs="*", default=[], metavar="WORKERSxTHREADS",
                        help="other worker layouts to measure the steady state with, "
                             "e.g. 1x4 1x8 4x2 (worker processes x threads each)")
    parser.add_argument("--block-sizes", type=int, nargs="*", default=[], metavar="PX",
                        help="other block sizes to measure the steady state with")
    args = parser.parse_args()
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    work = workdir("unet-tiles-gpu-")
    src = synthetic_input(work, args.size)
    for name in args.models:
        config = UNetConfig(input_scale=(1 / 255,), **MODELS[name])
        model_dir = str(save_model(build_unet(config, seed=0), work / f"model-{name}"))
        measure(name, model_dir, src, work, args)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
