"""One segmentation run, in the steps the CLI and the Prefect flow share.

``validate`` (no side effects) -> ``prepare`` (create or resume the output) ->
``execute`` (blocks on a dask client) -> ``finalize``. ``segment`` chains them
on a cluster it starts or joins.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_tiles.engine import BlockJob, RunSummary, run_plan, warm_worker
from unet_tiles.errors import InputError, OutputConflictError, UsageError
from unet_tiles.plan import BlockPlan, block_shape, check_block_size, make_plan, output_chunks
from unet_tiles.source import ImageSource, fingerprint, is_remote, open_source
from unet_tiles.writer import OutputSpec, done_blocks, finalize, identity, prepare_output

if TYPE_CHECKING:
    from distributed import Client

    from unet_tiles.cluster import ClusterInfo
    from unet_tiles.model import UNet

logger = logging.getLogger(__name__)

OUTPUT_KINDS = ("labels", "probabilities", "both")
PROBABILITY_DTYPES = ("float16", "float32")
# Defaults measured with bench/throughput.py on 2 CPU cores (bench/README.md).
DEFAULT_BLOCK = {2: 2048, 3: 128}
DEFAULT_TILE = {2: 1024, 3: 96}


@dataclass(frozen=True)
class SegmentRequest:
    """What the user asked for; the CLI and the flows build one of these."""

    input: str
    output: str
    model_dir: str
    output_kind: str = "labels"
    dtype: str = "float16"
    block_size: int | None = None
    tile_size: int | None = None
    axes: str | None = None
    overwrite: bool = False
    batch_size: int | None = None
    device: str = "auto"
    # zarr skips writing chunks equal to the fill value by default; such stores
    # need this, every other store is better served by the "input incomplete" error.
    allow_missing_chunks: bool = False

    def __post_init__(self) -> None:
        if self.output_kind not in OUTPUT_KINDS:
            raise UsageError(f"--output {self.output_kind!r} must be one of {OUTPUT_KINDS}")
        if self.dtype not in PROBABILITY_DTYPES:
            raise UsageError(f"--dtype {self.dtype!r} must be one of {PROBABILITY_DTYPES}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class PreparedRun:
    """A validated request: its source, model identity, plan and provenance record."""

    request: SegmentRequest
    source: ImageSource
    plan: BlockPlan
    job: BlockJob
    record: dict[str, Any]


def validate(request: SegmentRequest) -> PreparedRun:
    """Check everything that can be checked before writing a byte."""
    model, digest = model_and_hash(request.model_dir)
    config = model.config
    _check_paths(request.input, request.output)
    source = open_source(request.input, request.axes, config.in_channels, config.dims)
    _check_axes(source, config.dims, config.in_channels)
    out_axes = source.axes.replace("c", "")
    shape = tuple(source.axis_size(a) for a in out_axes)
    in_chunks = tuple(source.chunks[source.axes.index(a)] for a in out_axes)
    if request.block_size is not None:
        check_block_size(request.block_size, model.divisor)
    tile = request.tile_size or DEFAULT_TILE[config.dims]
    if tile < model.divisor:
        raise UsageError(f"--tile-size {tile} is below the model's pooling grid {model.divisor}")
    chunks = output_chunks(shape, in_chunks, config.dims, request.block_size)
    blocks = block_shape(shape, chunks, config.dims, request.block_size,
                         DEFAULT_BLOCK[config.dims])
    plan = make_plan(shape, config.dims, chunks, blocks, model, tile)
    spec = OutputSpec(
        url=request.output,
        axes=out_axes,
        dims=config.dims,
        classes=config.classes,
        class_names=config.class_names,
        want_labels=request.output_kind in ("labels", "both"),
        want_probabilities=request.output_kind in ("probabilities", "both"),
        probability_dtype=request.dtype,
    )
    parameters = {
        "output": request.output_kind,
        "dtype": request.dtype,
        "axes": source.axes,
        "chunks": list(chunks),
        "block_shape": list(blocks),
        "tile_out": tile,
        "allow_missing_chunks": request.allow_missing_chunks,
    }
    input_identity = {**source.to_dict(), "fingerprint": fingerprint(source)}
    job = BlockJob(source=source, output=spec, model_dir=str(Path(request.model_dir).resolve()),
                   model_hash=digest, batch_size=request.batch_size, device=request.device,
                   run_id=uuid.uuid4().hex, allow_missing_chunks=request.allow_missing_chunks)
    return PreparedRun(request, source, plan, job, identity(digest, parameters, input_identity))


def model_and_hash(model_dir: str) -> tuple[UNet, str]:
    """The checked model and its hash, loaded once per process while its files
    are unchanged: an archive run validates every image against one model."""
    from unet_tiles.modelio import CONFIG_NAME, WEIGHTS_NAME

    path = Path(model_dir)
    stamp = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            info = (path / name).stat()
            stamp.append((info.st_mtime_ns, info.st_size))
        except OSError:
            stamp.append(None)  # load_model names what is missing
    return _load_model_once(str(path.resolve()), tuple(stamp))


@functools.lru_cache(maxsize=2)
def _load_model_once(model_dir: str, stamp: tuple[Any, ...]) -> tuple[UNet, str]:
    from unet_tiles.modelio import load_model, model_hash

    del stamp
    return load_model(model_dir), model_hash(model_dir)


def prepare(run: PreparedRun) -> bool:
    """Create the output or check it may be resumed; True when resuming."""
    return prepare_output(run.job.output, run.plan, run.record, run.request.overwrite)


def execute(run: PreparedRun, client: Client, info: ClusterInfo | None = None, *,
            progress: bool | None = None, **kwargs: Any) -> RunSummary:
    """Run every block not yet done, then mark the output complete."""
    from dataclasses import replace

    job = run.job
    resources = None
    if info is not None:
        job = replace(job, torch_threads=info.torch_threads)
        if info.device is not None and job.device == "auto":
            job = replace(job, device=info.device)
        resources = info.resources
    skip = done_blocks(run.job.output.url)
    if not skip.all():
        client.run(warm_worker, job)
    summary = run_plan(client, run.plan, job, skip=skip, progress=progress,
                       resources=resources, **kwargs)
    finalize(run.job.output.url)
    return summary


def segment(request: SegmentRequest, cluster: str = "local", workers: int | None = None,
            threads_per_worker: int | None = None, progress: bool | None = None) -> RunSummary:
    """Validate, prepare and run one image on a cluster started or joined for it."""
    from unet_tiles.cluster import connect
    from unet_tiles.lock import output_lock

    run = validate(request)
    # Held from prepare to finalize: a second run on this output refuses (lock.py).
    with output_lock(request.output):
        prepare(run)
        with connect(cluster, workers, threads_per_worker) as (client, info):
            return execute(run, client, info, progress=progress)


def _check_paths(input_url: str, output_url: str) -> None:
    if is_remote(input_url) or is_remote(output_url):
        if input_url.rstrip("/") == output_url.rstrip("/"):
            raise OutputConflictError("output is the input; choose another output path")
        return
    src = Path(input_url).resolve()
    dst = Path(output_url).resolve()
    if src == dst:
        raise OutputConflictError(f"output {output_url!r} is the input; choose another path")
    if src in dst.parents:
        raise OutputConflictError(
            f"output {output_url!r} is inside the input {input_url!r}; write it elsewhere"
        )
    if dst in src.parents:
        raise OutputConflictError(
            f"input {input_url!r} is inside the output {output_url!r}; an overwrite would "
            "delete it; choose another output path"
        )
    parent = dst.parent
    if not parent.exists():
        raise OutputConflictError(
            f"output's folder {str(parent)!r} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK):
        raise OutputConflictError(f"output's folder {str(parent)!r} is not writable")


def _check_axes(source: ImageSource, dims: int, in_channels: int) -> None:
    # The channel axis may sit anywhere (window.read_window moves it first), so
    # only the other axes must end in the model's spatial axes.
    spatial = "zyx"[3 - dims:]
    if not source.axes.replace("c", "").endswith(spatial):
        raise InputError(
            f"input {source.location!r} has axes {source.axes!r} but the model is {dims}D "
            f"and needs {','.join(spatial)} last; pass --axes or use a "
            f"{'2D' if dims == 3 else '3D'} model"
        )
    channels = source.axis_size("c")
    if channels != in_channels:
        raise InputError(
            f"input {source.location!r} has {channels} channel(s) (axes {source.axes!r}) but the "
            f"model expects {in_channels}; pass --axes to say which axis is c, or use a model "
            f"for {channels} channel(s)"
        )


__all__ = ["PreparedRun", "SegmentRequest", "execute", "prepare", "segment", "validate"]
