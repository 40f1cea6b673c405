"""``unet-tiles segment INPUT OUTPUT --model DIR``: segment one image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from unet_tiles.engine import RunSummary
    from unet_tiles.run import SegmentRequest


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "segment", help="segment one zarr / OME-Zarr image",
        description="Segment INPUT (a zarr array, group or OME-Zarr image; local path or "
        "fsspec URL) into the zarr v3 group OUTPUT. Rerunning the same command resumes.",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--output", dest="output_kind", default="labels",
                   choices=("labels", "probabilities", "both"))
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                   help="dtype of probabilities")
    p.add_argument("--block-size", type=int, default=None, metavar="N",
                   help="block edge in pixels (a multiple of the output chunks)")
    p.add_argument("--tile-size", type=int, default=None, metavar="N",
                   help="target tile output edge in pixels")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass (default: 1 on CPU, 8 on GPU)")
    p.add_argument("--axes", default=None, help="input axes, e.g. yx, cyx, zyx, tczyx")
    p.add_argument("--cluster", default="local",
                   help="local (default), cpu, cuda, or a scheduler address tcp://host:port")
    p.add_argument("--workers", type=int, default=None, help="workers of a local cluster")
    p.add_argument("--threads-per-worker", type=int, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--allow-missing-chunks", action="store_true",
                   help="read missing input chunks as the fill value (for stores written "
                   "without empty chunks); by default a missing chunk fails its block")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output written with another model or parameters")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--prefect", action="store_true",
                   help="run as a tracked Prefect flow run; automatic when PREFECT_API_URL is "
                   "set, else on Prefect's temporary local server (slower to start)")
    return p


def execute(input: str, output: str, model_dir: str, *, cluster: str = "local",
            workers: int | None = None, threads_per_worker: int | None = None,
            progress: bool | None = None, **options: Any) -> RunSummary:
    """The ``segment`` command as a function (used by ``demo``, benchmarks and tests).

    ``options`` are ``SegmentRequest`` fields: output_kind, dtype, block_size,
    tile_size, batch_size, axes, device, overwrite, allow_missing_chunks.
    """
    from unet_tiles.run import SegmentRequest, segment

    request = SegmentRequest(input=input, output=output, model_dir=model_dir, **options)
    return segment(request, cluster=cluster, workers=workers,
                   threads_per_worker=threads_per_worker, progress=progress)


def request_from_args(args: argparse.Namespace) -> SegmentRequest:
    from unet_tiles.run import SegmentRequest

    return SegmentRequest(
        input=args.input, output=args.output, model_dir=args.model,
        output_kind=args.output_kind, dtype=args.dtype, block_size=args.block_size,
        tile_size=args.tile_size, axes=args.axes, overwrite=args.overwrite,
        batch_size=args.batch_size, device=args.device,
        allow_missing_chunks=args.allow_missing_chunks,
    )


def run(args: argparse.Namespace) -> int:
    from flows import api_configured

    request = request_from_args(args)
    cluster = {"cluster": args.cluster, "workers": args.workers,
               "threads_per_worker": args.threads_per_worker}
    # A one-off run without a Prefect server pays no server start-up (bench/README.md).
    if args.prefect or api_configured():
        from flows import allow_slow_server_start

        allow_slow_server_start()
        from flows.segment import run_tracked

        summary = run_tracked(request, **cluster)
    else:
        from unet_tiles.run import segment

        summary = segment(request, progress=False if args.no_progress else None, **cluster)
    print(format_summary(summary, args.output))
    return 0


def format_summary(summary: RunSummary, output: str) -> str:
    return (
        f"segmented {summary.pixels / 1e6:.2f} Mpx in {summary.blocks_done} blocks "
        f"({summary.blocks_skipped} already done) in {summary.seconds:.1f} s = "
        f"{summary.megapixels_per_s:.2f} Mpx/s -> {output}"
    )
