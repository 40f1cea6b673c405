"""``unet-tiles demo``: generate a microscope image, segment it, preview and score it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unet_tiles.cli.options import (
    add_cluster_options,
    add_model,
    add_no_progress,
    add_prefect,
    cluster_options,
    progress_option,
)

if TYPE_CHECKING:
    import argparse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo", help="segment a generated microscope image with the shipped demo model",
        description="Generate a synthetic nuclei image with ground truth into WORKDIR, segment "
        "it with the demo model through the real pipeline, write a PNG preview across block "
        "borders and print time, throughput and accuracy.",
    )
    p.add_argument("--size", type=int, default=8192, help="image edge in px (default 8192)")
    p.add_argument("--workdir", default="unet-tiles-demo", help="where stores and preview go")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated image")
    p.add_argument("--kind", choices=("nuclei", "cells"), default="nuclei")
    add_model(p, required=False)
    p.add_argument("--preview", default=None, metavar="PNG", help="default: WORKDIR/preview.png")
    p.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="default: the chunk edge, so the preview crosses block borders")
    add_cluster_options(p)
    add_prefect(p, "run as a tracked Prefect flow run")
    p.add_argument("--generate-only", action="store_true",
                   help="only write WORKDIR/image.zarr and WORKDIR/truth.zarr (training data)")
    add_no_progress(p)
    return p


def _same_image(workdir: Any, size: int, seed: int, kind: str) -> bool:
    import zarr

    try:
        attrs = zarr.open_array(str(workdir / "image.zarr"), mode="r").attrs.asdict()
        zarr.open_array(str(workdir / "truth.zarr"), mode="r")
    except Exception:  # any unreadable or missing store means: generate afresh
        return False
    return attrs.get("unet_tiles_synth") == {"seed": seed, "kind": kind, "shape": [size, size]}


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from unet_tiles.demo.images import MIN_SIZE_PX, demo_chunks, demo_model_dir, generate
    from unet_tiles.demo.preview import preview_region, write_preview
    from unet_tiles.demo.score import accuracy, instance_accuracy
    from unet_tiles.engine.run import SegmentRequest
    from unet_tiles.errors import UsageError
    from unet_tiles.flows import api_configured

    if args.size < MIN_SIZE_PX:
        raise UsageError(f"`size` {args.size} is too small for the demo; use at least "
                         f"{MIN_SIZE_PX}")
    started = time.perf_counter()
    workdir = Path(args.workdir)
    model = args.model_dir or str(demo_model_dir())
    print(f"unet-tiles demo: {args.size} x {args.size} synthetic {args.kind} (seed {args.seed})")
    reuse = not args.generate_only and _same_image(workdir, args.size, args.seed, args.kind)
    if reuse:
        image, truth = workdir / "image.zarr", workdir / "truth.zarr"
        chunk = demo_chunks(args.size)
        print(f"  reused      {image} (same size, seed and kind)")
    else:
        made = generate(workdir, args.size, args.seed, args.kind)
        image, truth, chunk = made.image, made.truth, made.chunk_px
        print(f"  generated   {args.size**2 / 1e6:.1f} Mpx in {made.seconds:.1f} s -> {image} "
              f"(ground truth {truth})")
    if args.generate_only:
        return 0
    output = workdir / "segmentation.zarr"
    block_size = args.block_size or chunk
    request = SegmentRequest(input=str(image), output=str(output), model_dir=model,
                             output_kind="labels,instances", block_size=block_size,
                             overwrite=not reuse)
    # As 'unet-tiles segment': the flow when asked for or when a Prefect API is
    # configured; otherwise the same Run without a server, so the first command
    # on a fresh machine starts no Prefect server.
    if not (args.prefect or api_configured()):
        from unet_tiles.engine.run import segment

        via = "dask engine"
        summary = segment(request, progress=progress_option(args), **cluster_options(args))
    else:
        from unet_tiles.flows import allow_slow_server_start

        allow_slow_server_start()
        from unet_tiles.flows.segment import run_tracked

        via = "Prefect flow segment-image"
        summary = run_tracked(request, **cluster_options(args))
    print(f"  segmented   {summary.pixels / 1e6:.1f} Mpx in {summary.blocks_done} blocks "
          f"({summary.blocks_skipped} already done) in {summary.seconds:.1f} s = "
          f"{summary.megapixels_per_s:.2f} Mpx/s via the {via} -> {output}")
    region = preview_region((args.size, args.size), chunk)
    labels = output / "labels"
    score = accuracy(labels, truth, region)
    rows, cols = (s.stop - s.start for s in region)
    print(f"  accuracy    foreground IoU {score.iou_foreground:.3f} (whole image); "
          f"AP@0.5 {score.ap50_preview:.3f} on the {rows} x {cols} preview "
          f"({score.objects_preview} {args.kind})")
    objects = instance_accuracy(output / "instances", truth)
    print(f"  instances   {objects.objects} objects ({objects.true_objects} generated); "
          f"AP@0.5 {objects.ap50:.3f} over the whole image -> {output / 'objects.parquet'}")
    preview = write_preview(args.preview or workdir / "preview.png", image, labels,
                            region, chunk)
    print(f"  preview     {preview} (image | labels; dashed red: chunk borders every "
          f"{chunk} px, block borders every {args.block_size or chunk} px)")
    print(f"  total       {time.perf_counter() - started:.1f} s")
    return 0
