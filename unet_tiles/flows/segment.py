"""``segment_image``: one image as a Prefect flow run.

    validate ──> prepare-output ──> run-blocks ──> finalize ──> [preview] ──> summary artifact
    (no I/O)     (create/resume)    (dask futures, one per block; live progress)
                 ^------------ under the output's run lock -------------^

Each task wraps one step of ``unet_tiles.engine.run.Run``, nothing more, so a
flow run and ``unet-tiles segment`` without Prefect write the same store and
fail with the same messages (worded with parameter names, not flags).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from unet_tiles.engine.run import SegmentRequest, validate

from .report import artifact_key, summary_row, table
from .settings import check_filled, cluster_choice, flow_wording, make_parent
from .steps import finalize_step, prepare_step, run_blocks_step, validate_step

if TYPE_CHECKING:
    from unet_tiles.engine.blocks import RunSummary
    from unet_tiles.engine.run import Run


@flow(name="segment-image", log_prints=False, validate_parameters=True)
def segment_image(
    input: str,
    output: str,
    model_dir: str,
    output_kind: str = "labels",
    dtype: str = "float16",
    block_size: int | None = None,
    tile_size: int | None = None,
    batch_size: int | None = None,
    axes: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    allow_missing_chunks: bool = False,
    output_format: str = "auto",
    into_source: bool = False,
    label_name: str = "unet-tiles",
    level: int = 0,
    shard: int | None = None,
    instance_class: str | None = None,
    connectivity: str = "1",
    min_size: int = 0,
    consecutive: bool = True,
    objects_csv: bool = False,
    split: str = "none",
    seed_probability: float = 0.9,
    split_distance: int = 10,
    read_cache_mb: int | None = None,
    configuration: dict[str, Any] | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    make_parent_dirs: bool = False,
    preview: str | None = None,
) -> dict[str, Any]:
    """Segment ``input`` into ``output`` with the model in ``model_dir``.

    Args:
        input: zarr / OME-Zarr image, local path or fsspec URL.
        output: the zarr v3 group to write; a rerun resumes it.
        model_dir: a model directory (config.json + weights.safetensors).
        cluster: ``local``, ``cpu``, ``cuda`` or ``tcp://host:port``; default
            ``$UNET_TILES_CLUSTER`` of the worker, else ``local``.
        workers: workers of a local cluster; default ``$UNET_TILES_WORKERS``.
        allow_missing_chunks: read absent input chunks as fill value (stores
            written with zarr's default of skipping empty chunks).
        level: the OME-Zarr multiscales level to segment (0: full resolution).
        make_parent_dirs: create the output's folder (arrival runs write into
            a mirror of the watched tree).
        preview: write this PNG after the run (``pipeline/preview.py``: an
            overview beside a full-resolution crop across a block corner); the
            summary artifact names it. A failure to write it is logged, not fatal.

    Returns:
        The run summary: pixels, blocks done and skipped, seconds, Mpx/s.
    """
    logger = get_run_logger()
    check_filled(input=input, output=output, model_dir=model_dir, cluster=cluster)
    with flow_wording():
        request = SegmentRequest(
            input=input, output=output, model_dir=model_dir, output_kind=output_kind,
            dtype=dtype, block_size=block_size, tile_size=tile_size, axes=axes,
            overwrite=overwrite, batch_size=batch_size, device=device, precision=precision,
            allow_missing_chunks=allow_missing_chunks, output_format=output_format,
            into_source=into_source, label_name=label_name, level=level,
            shard=shard, instance_class=instance_class, connectivity=connectivity,
            min_size=min_size, consecutive=consecutive, objects_csv=objects_csv,
            split=split, seed_probability=seed_probability, split_distance=split_distance,
            read_cache_mb=read_cache_mb, configuration=configuration,
        )
        choice = cluster_choice(cluster, workers, threads_per_worker)
    if make_parent_dirs:
        make_parent(output)
    run = validate_step(request)
    # The steps run in this process, so the lock is held from prepare to finalize.
    with run.locked():
        prepare_step(run)
        summary = run_blocks_step(run, choice, progress_key=artifact_key("progress", output))
        finalize_step(run)
    written = None
    if preview is not None:
        try:
            written = preview_step(run, preview)
        except Exception as exc:
            # The output is complete: a missing picture of it must not fail the run.
            logger.warning("preview %s not written: %s", preview, exc)
    row = summary_row(input, output, summary, run.job.model_hash, preview=written)
    table([row], key=artifact_key("segment", output), description=f"segmented {input}")
    logger.info(
        "segmented %.1f Mpx in %d blocks (%d already done) in %.1f s = %.2f Mpx/s%s -> %s",
        summary["pixels"] / 1e6, summary["blocks_done"], summary["blocks_skipped"],
        summary["seconds"], summary["megapixels_per_s"],
        f", {summary['objects']} objects" if "objects" in summary else "", output,
    )
    return {**summary, "input": input, "output": output, "model_hash": run.job.model_hash,
            "preview": written}


@task(name="preview", cache_policy=NO_CACHE)
def preview_step(run: Run, path: str) -> str:
    """``Run.preview``: the PNG of the finished output; its path."""
    return run.preview(path)


def run_tracked(request: SegmentRequest, cluster: str | None = None, workers: int | None = None,
                threads_per_worker: int | None = None,
                preview: str | None = None) -> RunSummary:
    """``unet-tiles segment`` as a tracked flow run (``--prefect`` or a configured API).

    The request is validated here first, without Prefect: a typo fails in well
    under a second with the CLI's message instead of after a server start and a
    failed flow run.
    """
    from dataclasses import asdict

    from unet_tiles.engine.blocks import RunSummary

    validate(request)
    # The flow's parameters are the request's fields (a test keeps them in step).
    result = segment_image(**asdict(request), cluster=cluster, workers=workers,
                           threads_per_worker=threads_per_worker, preview=preview)
    names = ("pixels", "blocks_total", "blocks_done", "blocks_skipped", "seconds", "objects")
    return RunSummary(**{name: result[name] for name in names if name in result})
