"""``unet-tiles segment INPUT OUTPUT --model DIR``: segment one image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unet_tiles.cli.options import (
    add_cluster_options,
    add_no_progress,
    add_prefect,
    add_request_options,
    cluster_options,
    progress_option,
    request_options,
)

if TYPE_CHECKING:
    import argparse

    from unet_tiles.engine.blocks import RunSummary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "segment", help="segment one zarr / OME-Zarr image",
        description="Segment INPUT (a zarr array, group or OME-Zarr image; local path or "
        "fsspec URL) into the zarr v3 group OUTPUT. Rerunning the same command resumes.",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    add_request_options(p)
    add_cluster_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output written with another model or parameters")
    add_no_progress(p)
    add_prefect(p, "run as a tracked Prefect flow run")
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.engine.run import SegmentRequest
    from unet_tiles.flows import api_configured

    request = SegmentRequest(input=args.input, output=args.output, overwrite=args.overwrite,
                             **request_options(args))
    # A one-off run without a Prefect server pays no server start-up (bench/README.md).
    if args.prefect or api_configured():
        from unet_tiles.flows import allow_slow_server_start

        allow_slow_server_start()
        from unet_tiles.flows.segment import run_tracked

        summary = run_tracked(request, **cluster_options(args))
    else:
        from unet_tiles.engine.run import segment

        summary = segment(request, progress=progress_option(args), **cluster_options(args))
    print(format_summary(summary, args.output))
    return 0


def format_summary(summary: RunSummary, output: str) -> str:
    return (
        f"segmented {summary.pixels / 1e6:.2f} Mpx in {summary.blocks_done} blocks "
        f"({summary.blocks_skipped} already done) in {summary.seconds:.1f} s = "
        f"{summary.megapixels_per_s:.2f} Mpx/s -> {output}"
    )
