"""The model alone on CPU in each tensor layout and precision, measured side by side.

    python bench/model_formats.py [--seconds 2] [--rounds 4] [--compile]

For the shipped demo model, a depth-3 16-channel model, the paper's U-Net (depth 4,
64 base channels) and a 3D model (depth 3, 8 base channels), on the engine's default
tile, in this process with one torch thread (a CPU worker's share):

* contiguous (NCHW) float32, the baseline;
* channels-last float32 (the engine's CPU default, ``predict.channels_last_on``);
* channels-last with bfloat16 autocast, where the CPU has native bfloat16
  (``avx512_bf16`` or ``amx_bf16``); elsewhere it is emulated and not worth timing;
* with ``--compile``, channels-last float32 through ``torch.compile`` (inductor), its
  compile time printed (the first call, for the tile's shape).

The samples alternate (``--rounds`` of ``--seconds`` each) so a drifting machine hits
every variant alike; the speed-up is the median of the per-round ratios. Each
variant's classes are compared with the baseline's on a generated nuclei tile: the
share of pixels whose class agrees, and the largest logit difference.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

from common import DEMO_MODEL, synthetic_input, workdir

from unet_tiles.engine.benchmark import native_bfloat16

MODELS: dict[str, dict[str, Any]] = {
    "depth 3, 16 channels": {"depth": 3, "base_channels": 16},
    "paper U-Net": {"depth": 4, "base_channels": 64},
    "3D, depth 3, 8 channels": {"depth": 3, "base_channels": 8, "dims": 3},
}


def rate(model: Any, x: Any, seconds: float, bf16: bool) -> float:
    """Tiles per second of ``model`` on ``x`` for about ``seconds``."""
    import contextlib

    import torch

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or count < 2:
            model(x)
            count += 1
        return count / (time.perf_counter() - started)


def compare(name: str, model: Any, tile: Any, args: argparse.Namespace) -> None:
    import torch

    from unet_tiles.pipeline.predict import memory_format

    model.eval()
    dims = model.config.dims
    last = copy.deepcopy(model).to(memory_format=memory_format(dims))
    tile_last = tile.contiguous(memory_format=memory_format(dims))
    variants = [("contiguous float32", model, tile, False),
                ("channels-last float32", last, tile_last, False)]
    if native_bfloat16():
        variants.append(("channels-last bfloat16", last, tile_last, True))
    if args.compile:
        # Static shapes: every model here is its own compile, not a recompile that
        # dynamo would make dynamic (which failed in inductor for the 3D model).
        compiled = torch.compile(last, dynamic=False)
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                compiled(tile_last)
        except Exception as exc:  # inductor's own failures: report, measure the rest
            print(f"  torch.compile failed: {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0][:200]}", flush=True)
        else:
            print(f"  torch.compile: {time.perf_counter() - started:.1f} s for the first "
                  "call", flush=True)
            variants.append(("channels-last compiled", compiled, tile_last, False))
    with torch.inference_mode():
        reference = model(tile)
        agreement = {}
        for label, m, x, bf16 in variants:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = m(x).float()
            agreement[label] = ((logits.argmax(1) == reference.argmax(1)).float().mean().item(),
                                (logits - reference).abs().max().item())
            rate(m, x, 0.2, bf16)  # first-shape kernel selection outside the samples
    samples: dict[str, list[float]] = {label: [] for label, *_ in variants}
    for _ in range(args.rounds):
        for label, m, x, bf16 in variants:
            samples[label].append(rate(m, x, args.seconds, bf16))
    base = samples[variants[0][0]]
    size = "x".join(str(s) for s in tile.shape[2:])
    print(f"{name}, tile in {size}:")
    for label, *_ in variants:
        speedup = statistics.median(v / b for v, b in zip(samples[label], base, strict=True))
        same, diff = agreement[label]
        print(f"  {label:24s} {statistics.median(samples[label]):7.2f} tiles/s  speed-up "
              f"{speedup:4.2f}  classes agree {same:.5f}  max |logit diff| {diff:.1e}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compile", action="store_true",
                        help="also channels-last float32 through torch.compile")
    args = parser.parse_args()
    import numpy as np
    import torch
    import zarr

    from unet_tiles.engine.run import default_tile
    from unet_tiles.model.files import load_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    torch.set_num_threads(1)
    work = workdir("unet-tiles-formats-")
    image = zarr.open_array(synthetic_input(work, 2048), mode="r")  # > the largest tile
    print(f"one torch thread; native bfloat16: {native_bfloat16()}")
    models = [("demo model", load_model(str(DEMO_MODEL)))]
    models += [(name, build_unet(UNetConfig(input_scale=(1 / 255,), **config), seed=0))
               for name, config in MODELS.items()]
    for name, model in models:
        dims = model.config.dims
        size = model.valid_size(default_tile(model.config) + 2 * model.halo[0])
        pixels = np.asarray(image[:size, :size], dtype=np.float32)
        if dims == 3:  # a stack of shifted copies of the 2D tile
            pixels = np.stack([np.roll(pixels, k, axis=0) for k in range(size)])
        compare(name, model, torch.from_numpy(pixels)[None, None], args)


if __name__ == "__main__":
    main()
