"""One image from request to finished store: the only copy of that sequence.

::

    SegmentRequest --validate--> Run --locked()--+-- prepare   decide, then create or resume
    (what was asked)  (no I/O     (source, plan,  |              the output (provenance.py)
                       but reads)  job, record)   +-- execute   every block not yet done, on a
                                                  |              dask client (or in process)
                                                  +-- finalize  mark the output complete

``Run.locked`` holds the output's run lock (``lock.py``) from prepare to
finalize; the steps refuse to run outside it. ``Run.segment`` chains the three
under the lock on a given client, ``segment`` on a cluster it starts or joins.
The CLI, the Prefect flows (one task per step), the archive, the watcher, the
demo, the benchmarks and the tests all go through ``Run``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_tiles import __version__
from unet_tiles.engine.blocks import (
    READ_CACHE_BYTES,
    BlockJob,
    RunSummary,
    run_plan,
    run_serial,
)
from unet_tiles.engine.lock import RunLock
from unet_tiles.engine.pyramid import build_pyramid
from unet_tiles.errors import InputError, OutputConflictError, UsageError
from unet_tiles.pipeline import writer
from unet_tiles.pipeline.instances import InstanceSpec, parse_classes
from unet_tiles.pipeline.plan import (
    block_shape,
    check_block_size,
    make_plan,
    output_chunks,
    shard_shape,
)
from unet_tiles.pipeline.predict import PRECISIONS
from unet_tiles.pipeline.provenance import Decision, Provenance
from unet_tiles.pipeline.repair import repaired_input_resumes
from unet_tiles.pipeline.source import ImageSource, fingerprint, is_remote, open_source
from unet_tiles.pipeline.verify import damaged_done_blocks, forget_blocks
from unet_tiles.pipeline.writer import OutputSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from distributed import Client

    from unet_tiles.engine.cluster import ClusterInfo
    from unet_tiles.model.config import UNetConfig
    from unet_tiles.model.geometry import UNetGeometry
    from unet_tiles.pipeline.ome_output import OmeLayout
    from unet_tiles.pipeline.plan import BlockPlan

logger = logging.getLogger(__name__)

# --output: one of these or several joined by commas (labels,instances); both =
# labels,probabilities.
OUTPUTS = ("labels", "probabilities", "instances")
OUTPUT_KINDS = ("labels", "probabilities", "both", "instances", "labels,instances",
                "probabilities,instances", "labels,probabilities,instances")
# auto: the OME layout for an OME-Zarr input, the plain one otherwise (writer.py).
OUTPUT_FORMATS = ("auto", "plain", "ome")
PROBABILITY_DTYPES = ("float16", "float32")
# Defaults measured on 2 CPU cores (bench/README.md): 2D with bench/throughput.py, 3D
# with bench/volume.py. A 3D block is two default tiles a side: at 128 voxels the
# 96 voxel tile was evened out to 2 x 64, 14.5 input voxels per output voxel
# against 7.5, and ran 0.58x as fast.
DEFAULT_BLOCK = {2: 2048, 3: 192}
# The smallest default tile per dims. A tile's activations peak at about four of its
# first-level feature maps (UNet.forward frees each level's maps as it consumes
# them), each base_channels x the tile's input pixels x 4 bytes; a 2D tile grows to
# the largest of LARGER_TILES whose first-level map stays within TILE_MAP_BYTES:
# 1024 px for the demo model (depth 3, 8 channels), 768 for depth 3 with 16 channels,
# 512 for the paper's (depth 4, 64); a deeper model's larger halo can step it down.
# Larger tiles carry less halo per output pixel (bench/tile_sizes.py) at a peak
# that stays below a plain map_overlap pipeline's (bench/memory.py).
DEFAULT_TILE = {2: 512, 3: 96}
LARGER_TILES: dict[int, tuple[int, ...]] = {2: (1024, 768)}
TILE_MAP_BYTES = 48 << 20


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
    # The forward passes' dtype (pipeline/predict.py autocast): auto (float16 on
    # CUDA, float32 on CPU), float32, or bfloat16.
    precision: str = "auto"
    # zarr skips writing chunks equal to the fill value by default; such stores
    # need this, every other store is better served by the "input incomplete" error.
    allow_missing_chunks: bool = False
    output_format: str = "auto"
    # Write the labels into the OME-Zarr input's own labels group, as labels/<label_name>.
    into_source: bool = False
    label_name: str = "unet-tiles"
    # The OME-Zarr multiscales level to segment (0: full resolution).
    level: int = 0
    # zarr v3 shard edge in px (whole output chunks); None: no sharding.
    shard: int | None = None
    # Decoded input chunks each worker keeps for the next blocks, in MiB (0: none; None:
    # blocks.READ_CACHE_BYTES). Never changes the output, so it is not recorded.
    read_cache_mb: int | None = None
    # The options as the user gave them (CLI and --config merged): recorded in the
    # provenance, never compared (cli/config.py).
    configuration: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    # --output instances (pipeline/instances.py): the classes whose connected
    # components are objects (names or indices; None: every class but background),
    # "1" (faces) or "full" neighbours, the smallest object kept, ids 1..N.
    instance_class: str | None = None
    connectivity: str = "1"
    min_size: int = 0
    consecutive: bool = True
    # The object table also as OUTPUT/objects.csv.
    objects_csv: bool = False
    # Touching cells split by a seeded watershed (pipeline/split.py): "none", "border"
    # (seeds: the instance classes without the class named border) or "probability"
    # (seeds: pixels of at least seed_probability); a cell grows at most
    # split_distance px from its seed.
    split: str = "none"
    seed_probability: float = 0.9
    split_distance: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_kind", canonical_output(self.output_kind))
        if self.min_size < 0:
            raise UsageError(f"`min_size` must be 0 or more pixels, got {self.min_size}")
        if self.connectivity not in ("1", "full"):
            raise UsageError(f"`connectivity` {self.connectivity!r} must be 1 (faces) or "
                             "full (every neighbour)")
        if self.dtype not in PROBABILITY_DTYPES:
            raise UsageError(f"`dtype` {self.dtype!r} must be one of {PROBABILITY_DTYPES}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"`precision` {self.precision!r} must be one of "
                             f"{', '.join(PRECISIONS)}")
        if self.shard is not None and self.shard < 1:
            raise UsageError(f"`shard` must be at least 1 px, got {self.shard}")
        if self.read_cache_mb is not None and self.read_cache_mb < 0:
            raise UsageError(f"`read_cache_mb` must be 0 (no cache) or more MiB, got "
                             f"{self.read_cache_mb}")
        if self.output_format not in OUTPUT_FORMATS:
            raise UsageError(f"`output_format` {self.output_format!r} must be one of "
                             f"{OUTPUT_FORMATS}")
        if self.into_source:
            if self.output_format == "plain":
                raise UsageError("`into_source` writes OME-Zarr labels; it cannot be combined "
                                 "with `output_format` plain")
            if not self.label_name or "/" in self.label_name or self.label_name.startswith("."):
                raise UsageError(f"`label_name` {self.label_name!r} must be a plain name")
            # The output is the input's labels/<name>: derived, never given.
            inside = into_source_output(self.input, self.label_name)
            if self.output and self.output.rstrip("/") != inside:
                raise UsageError(f"with `into_source` the output is {inside!r}; give no "
                                 "other output")
            object.__setattr__(self, "output", inside)


def canonical_output(kind: str) -> str:
    """``--output`` as recorded: ``labels``, ``probabilities``, ``both``, or the asked
    names in ``OUTPUTS`` order joined by commas."""
    names = {w.strip() for w in kind.replace("+", ",").split(",") if w.strip()}
    if "both" in names:
        names = (names - {"both"}) | {"labels", "probabilities"}
    unknown = sorted(names - set(OUTPUTS))
    if unknown or not names:
        raise UsageError(f"`output_kind` {kind!r} must be one of {', '.join(OUTPUTS)} or both, "
                         "or several joined by commas (labels,instances)")
    if names == {"labels", "probabilities"}:
        return "both"
    return ",".join(n for n in OUTPUTS if n in names)


def output_names(kind: str) -> set[str]:
    names = set(canonical_output(kind).split(","))
    return (names - {"both"}) | ({"labels", "probabilities"} if "both" in names else set())


def into_source_output(input_url: str, label_name: str) -> str:
    """Where ``into_source`` writes: the input image's ``labels/<label_name>``."""
    return f"{input_url.rstrip('/')}/labels/{label_name}"


@dataclass(eq=False)
class Run:
    """A validated request: its source, plan, block job and provenance record.

    Made by ``validate``; ``prepare``, ``execute`` and ``finalize`` run inside
    ``locked()``.
    """

    request: SegmentRequest
    source: ImageSource
    plan: BlockPlan
    job: BlockJob
    record: Provenance
    _lock: RunLock | None = field(default=None, init=False, repr=False)

    @property
    def output(self) -> str:
        return self.request.output

    def decide(self) -> Decision:
        """What to do with the output as it is now: new, skip, resume, redo or refuse."""
        url = self.output
        exists = writer.output_exists(url)
        stored = writer.read_record(url) if exists else None
        decision = self.record.compare(stored, exists=exists)
        # A repaired input chunk under only unfinished blocks still resumes (repair.py).
        if decision.cause == "input" and stored is not None and repaired_input_resumes(
            url, self.plan, self.source, stored, self.record
        ):
            return Decision("resume", "has unfinished blocks over the repaired input", "input")
        return decision

    @contextlib.contextmanager
    def locked(self) -> Iterator[Run]:
        """Hold the output's run lock: a second run on this output refuses (lock.py)."""
        if self._lock is not None:
            raise RuntimeError(f"the run on {self.output!r} is already locked")
        # Labels written into the input are locked beside the input image (its
        # labels group may not exist yet, and the lock must not create it).
        target = f"{self.request.input.rstrip('/')}.labels.{self.request.label_name}" \
            if self.request.into_source else self.output
        with RunLock(target) as lock:
            self._lock = lock
            try:
                yield self
            finally:
                self._lock = None

    def prepare(self) -> Decision:
        """Create the output, or check it may be resumed; the decision taken."""
        self._check_locked("prepare")
        decision = self.decide()
        url = self.output
        if decision.action in ("skip", "resume"):
            if decision.action == "skip" and self.job.output.want_instances:
                writer.remove_work(url)  # left by a run killed after it completed
            if decision.cause == "input":
                writer.write_record(url, self.record)  # the repaired input's fingerprint
            writer.remove_partial_files(url)
            # A done block whose chunks fail their check is redone (pipeline/verify.py).
            damaged = damaged_done_blocks(url, self.plan)
            if damaged and self.job.output.want_instances:
                # Instance ids depend on every block: the output is made again whole.
                logger.warning("redoing %s whole: %d damaged block(s), and instance ids "
                               "depend on every block", url, len(damaged))
                writer.remove_output(url)
                writer.create_output(self.job.output, self.plan, self.record)
                return Decision("redo", "had damaged blocks")
            if damaged:
                logger.warning("redoing %d damaged block(s) of %s: %s", len(damaged), url,
                               ", ".join(f"level {b.level} block {b.index}" for b in damaged))
                forget_blocks(url, damaged)
                stored = writer.read_record(url)
                if stored is not None and stored.complete:
                    writer.write_record(url, stored.with_status("running"))
            return decision
        if decision.action in ("redo", "refuse"):
            if not self.request.overwrite:
                raise OutputConflictError(
                    f"output {url!r} {decision.reason}; pass `overwrite` to replace it or "
                    "choose another output path"
                )
            logger.info("overwriting %s (it %s)", url, decision.reason)
            writer.remove_output(url)
        writer.create_output(self.job.output, self.plan, self.record)
        return decision

    def execute(self, client: Client | None = None, info: ClusterInfo | None = None, *,
                progress: bool | None = None,
                on_block: Callable[[int, int], None] | None = None,
                **kwargs: Any) -> RunSummary:
        """Run every block not yet done: on ``client``'s cluster, or here in order
        when ``client`` is None (the serial mode, for tests and debugging)."""
        self._check_locked("execute")
        job = self.job
        resources = None
        if info is not None:
            job = replace(job, torch_threads=info.torch_threads)
            if info.device is not None and job.device == "auto":
                job = replace(job, device=info.device)
            resources = info.resources
        skip = writer.done_blocks(self.output)
        if client is None:
            summary = run_serial(self.plan, job, skip=skip)
        else:
            from unet_tiles.engine.warm import stop_warming, warm_workers

            if not skip.all():
                warm_workers(client, job)
            try:
                summary = run_plan(client, self.plan, job, skip=skip, progress=progress,
                                   resources=resources, on_block=on_block, **kwargs)
            finally:
                stop_warming(client, job)
        if job.output.want_instances:
            from unet_tiles.engine.instances import make_instances

            started = time.perf_counter()
            summary.objects = make_instances(client, job.output, self.plan)
            summary.instances_seconds = time.perf_counter() - started
        # After the instances: their pyramid samples the final ids.
        started = time.perf_counter()
        build_pyramid(client, job.output, self.plan)
        summary.pyramid_seconds = time.perf_counter() - started
        return summary

    def finalize(self) -> None:
        """Mark the output complete; then drop the instance passes' working state."""
        self._check_locked("finalize")
        # A worker killed inside a chunk write leaves zarr's temporary file; its block
        # was redone elsewhere, and a complete store holds no leftovers.
        writer.remove_partial_files(self.output)
        writer.finalize(self.output)
        if self.job.output.want_instances:
            writer.remove_work(self.output)

    def segment(self, client: Client | None = None, info: ClusterInfo | None = None, *,
                progress: bool | None = None,
                on_block: Callable[[int, int], None] | None = None) -> RunSummary:
        """Prepare, execute and finalize under the output's lock (taken here unless
        the caller holds it already)."""
        with contextlib.nullcontext() if self._lock is not None else self.locked():
            self.prepare()
            summary = self.execute(client, info, progress=progress, on_block=on_block)
            self.finalize()
            return summary

    def preview(self, path: str) -> str:
        """Write the preview PNG of the finished output (``pipeline/preview.py``)."""
        from unet_tiles.pipeline.preview import write_preview

        return str(write_preview(path, self.source, self.job.output, self.plan))

    def unattended(self) -> tuple[Run | None, Decision]:
        """How nightly and arrival runs treat the output: ``(None, decision)`` to skip a
        complete one; the run to do, set to replace an output unet-tiles wrote from
        another model, parameters or input. An output it did not write is refused."""
        decision = self.decide()
        if decision.action == "skip":
            return None, decision
        if decision.action == "refuse":
            raise OutputConflictError(
                f"output {self.output!r} {decision.reason}; move it away or choose another "
                "output root"
            )
        if decision.action == "redo":
            return replace(self, request=replace(self.request, overwrite=True)), decision
        return self, decision

    def _check_locked(self, step: str) -> None:
        if self._lock is None:
            raise RuntimeError(f"Run.{step}() runs inside 'with run.locked():'")


def validate(request: SegmentRequest) -> Run:
    """Check everything that can be checked before writing a byte; the run to do."""
    model, digest = model_and_hash(request.model_dir)
    config = model.config
    if not request.into_source:
        _check_paths(request.input, request.output)
    source = open_source(request.input, request.axes, config.in_channels, config.dims,
                         level=request.level)
    _check_axes(source, config.dims, config.in_channels)
    out_axes = source.axes.replace("c", "")
    shape = tuple(source.axis_size(a) for a in out_axes)
    in_chunks = tuple(source.chunks[source.axes.index(a)] for a in out_axes)
    if request.block_size is not None:
        check_block_size(request.block_size, model.divisor)
    # An output begun without a tile or block size keeps the ones it was begun with,
    # so a default that moved (a newer release) resumes it, never redoes it; one to
    # be overwritten gets today's defaults.
    recorded = Recorded() if request.overwrite else _recorded(request.output, model.divisor)
    tile = request.tile_size or recorded.tile or default_tile(config)
    if tile < model.divisor:
        raise UsageError(f"`tile_size` {tile} is below the model's pooling grid {model.divisor}")
    block = request.block_size or recorded.block or DEFAULT_BLOCK[config.dims]
    # A 3D block is whole output chunks of exactly its size, so it splits into whole
    # default tiles: a 192 voxel block over 128 voxel chunks would become 256, tiles
    # of 88 (bench/volume.py). In 2D the input's power-of-two chunks already divide
    # the default block.
    chunks = output_chunks(shape, in_chunks, config.dims,
                           block if config.dims == 3 else request.block_size)
    shards = None if request.shard is None else \
        shard_shape(shape, chunks, config.dims, request.shard)
    # With shards, blocks are unions of whole shards: no two tasks write one shard.
    blocks = block_shape(shape, shards or chunks, config.dims, request.block_size, block)
    plan = make_plan(shape, config.dims, chunks, blocks, model, tile, shards)
    layout = _ome_layout(request, source, out_axes, shape, config.dims)
    if shards is not None and layout is not None and layout.zarr_format == 2:
        raise UsageError("`shard` needs zarr v3: NGFF 0.4 outputs are zarr v2; use an "
                         "NGFF 0.5 input, `output_format` plain, or no sharding")
    wanted = output_names(request.output_kind)
    instances = None
    if "instances" in wanted:
        border: tuple[int, ...] = ()
        if request.split == "border":
            if "border" not in config.class_names:
                raise UsageError(f"`split` border needs a class named border; the model's "
                                 f"classes are {', '.join(config.class_names) or 'unnamed'}: "
                                 "use `split` probability")
            border = (config.class_names.index("border"),)
        instances = InstanceSpec(
            parse_classes(request.instance_class, config.class_names, config.classes),
            request.connectivity, request.min_size, request.consecutive, request.split,
            border, request.seed_probability, request.split_distance)
    spec = OutputSpec(
        url=request.output,
        axes=out_axes,
        dims=config.dims,
        classes=config.classes,
        class_names=config.class_names,
        want_labels="labels" in wanted,
        want_probabilities="probabilities" in wanted,
        probability_dtype=request.dtype,
        ome=layout,
        labels_group=into_source_output(request.input, "").rstrip("/")
        if request.into_source else None,
        instances=instances,
        objects_csv=request.objects_csv and instances is not None,
    )
    parameters = {
        "output": request.output_kind,
        "dtype": request.dtype,
        "axes": source.axes,
        "chunks": list(chunks),
        "block_shape": list(blocks),
        "tile_out": tile,
        "allow_missing_chunks": request.allow_missing_chunks,
        "level": request.level,
        "format": "plain" if layout is None else f"ome-{layout.version}",
        "levels": 1 if layout is None else len(layout.levels),
        "shards": None if shards is None else list(shards),
        # Only where not the default: outputs written before they were recorded keep
        # their records. Both change the floats' rounding (tests/test_predict.py), so a
        # resumed output never mixes two of them.
        **({} if request.precision == "auto" else {"precision": request.precision}),
        **({} if request.batch_size is None else {"batch_size": request.batch_size}),
        # Only with instances: outputs without them keep their records (and resume).
        **({} if instances is None else {
            "instances": {**instances.to_dict(), "objects_csv": spec.objects_csv}}),
    }
    input_identity = {**source.to_dict(), "fingerprint": fingerprint(source)}
    job = BlockJob(source=source, output=spec, model_dir=str(Path(request.model_dir).resolve()),
                   model_hash=digest, batch_size=request.batch_size, device=request.device,
                   precision=request.precision,
                   run_id=uuid.uuid4().hex, allow_missing_chunks=request.allow_missing_chunks,
                   plan=plan if instances is not None else None,
                   warm_tile=tuple(t.size_in for t in next(iter(plan)).tiles),
                   read_cache_bytes=READ_CACHE_BYTES if request.read_cache_mb is None
                   else request.read_cache_mb << 20)
    return Run(request, source, plan, job, Provenance(
        __version__, digest, parameters, input_identity,
        configuration=dict(request.configuration or {})))


@dataclass(frozen=True)
class ModelInfo:
    """What the driver knows of a model: its config and shape arithmetic, never its
    weights (workers load those; the driver does not even import torch)."""

    config: UNetConfig
    geometry: UNetGeometry

    @property
    def halo(self) -> tuple[int, ...]:
        return self.geometry.halo

    @property
    def divisor(self) -> int:
        return self.geometry.divisor

    def valid_size(self, n: int) -> int:
        return self.geometry.valid_size(n)


def default_tile(config: UNetConfig) -> int:
    """The tile's output edge when none is asked for (``DEFAULT_TILE``)."""
    from unet_tiles.model.geometry import UNetGeometry

    geometry = UNetGeometry(config)
    for tile in LARGER_TILES.get(config.dims, ()):
        size_in = geometry.valid_size(tile + 2 * geometry.halo[0])
        if config.base_channels * size_in**config.dims * 4 <= TILE_MAP_BYTES:
            return tile
    return DEFAULT_TILE[config.dims]


@dataclass(frozen=True)
class Recorded:
    """The sizes an existing output was begun with, where no size is asked for: a
    default that moved (a newer release) resumes it, never redoes it."""

    tile: int | None = None
    # The largest spatial edge of its blocks: block_shape() gives the same blocks back
    # for the same chunks (they are whole chunks, or the image's edge).
    block: int | None = None


def _recorded(url: str, divisor: int) -> Recorded:
    """The tile and block an existing unet-tiles output was written with, where this
    model's pooling grid allows them."""
    if not writer.output_exists(url):
        return Recorded()
    try:
        record = writer.read_record(url)
    except OutputConflictError:
        return Recorded()  # a record it cannot read: decide() says so, with the reason
    if record is None:
        return Recorded()
    tile = record.parameters.get("tile_out")
    blocks = record.parameters.get("block_shape")
    block = max(blocks) if isinstance(blocks, list) and blocks and all(
        _whole(b, 1) for b in blocks) else None
    return Recorded(tile if _whole(tile, divisor) else None,
                    block if _whole(block, divisor) else None)


def _whole(value: object, at_least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= at_least


def model_and_hash(model_dir: str) -> tuple[ModelInfo, str]:
    """The checked model (``files.check_model``: config and weights header) and its
    hash, once per process while its files are unchanged: an archive run validates
    every image against one model."""
    from unet_tiles.model.files import CONFIG_NAME, WEIGHTS_NAME

    path = Path(model_dir)
    stamp: list[tuple[int, int] | None] = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            info = (path / name).stat()
            stamp.append((info.st_mtime_ns, info.st_size))
        except OSError:
            stamp.append(None)  # check_model names what is missing
    return _check_model_once(str(path.resolve()), tuple(stamp))


@functools.lru_cache(maxsize=2)
def _check_model_once(model_dir: str, stamp: tuple[Any, ...]) -> tuple[ModelInfo, str]:
    from unet_tiles.model.files import check_model, model_hash
    from unet_tiles.model.geometry import UNetGeometry

    del stamp
    config = check_model(model_dir)
    return ModelInfo(config, UNetGeometry(config)), model_hash(model_dir)


def segment(request: SegmentRequest, cluster: str = "local", workers: int | None = None,
            threads_per_worker: int | None = None, progress: bool | None = None,
            on_cluster: Callable[[ClusterInfo], None] | None = None,
            preview: str | None = None) -> RunSummary:
    """Validate and run one image on a cluster started or joined for it;
    ``on_cluster`` is told about the cluster once it runs (the CLI shows its
    dashboard); ``preview``: a PNG of the result written afterwards."""
    from unet_tiles.engine.cluster import connect

    run = validate(request)
    # Locked before the cluster starts and until it has stopped: a second run on
    # this output is refused at once, not after its own cluster start.
    with run.locked(), connect(cluster, workers, threads_per_worker) as (client, info):
        if on_cluster is not None:
            on_cluster(info)
        summary = run.segment(client, info, progress=progress)
    if preview is not None:
        run.preview(preview)
    return summary


def plate_requests(request: SegmentRequest) -> list[SegmentRequest] | None:
    """One request per field image when the input is an HCS plate, else None.

    Field ``A/1/0`` of the plate goes to ``OUTPUT/A/1/0.zarr`` (whose folders are
    made here), or with ``into_source`` into that field's own ``labels`` group.
    """
    from unet_tiles.pipeline.ome import plate_fields

    root = Path(request.input)
    if is_remote(request.input) or not any((root / name).exists()
                                           for name in (".zattrs", "zarr.json")):
        return None  # remote plates: segment their fields one by one, or use archive
    try:
        fields = plate_fields(request.input)
    except InputError:
        return None  # not a plate; a malformed one fails validation with its reason
    requests = []
    for url in fields:
        relative = url[len(request.input.rstrip("/")) + 1:]
        if request.into_source:
            output = ""
        else:
            output = f"{request.output.rstrip('/')}/{relative}.zarr"
            if not is_remote(output):
                Path(output).parent.mkdir(parents=True, exist_ok=True)
        requests.append(replace(request, input=url, output=output))
    return requests


def segment_all(requests: list[SegmentRequest], cluster: str = "local",
                workers: int | None = None, threads_per_worker: int | None = None,
                progress: bool | None = None) -> list[RunSummary]:
    """Several images (a plate's fields) on one cluster, each under its own lock;
    all are validated before the cluster starts."""
    from unet_tiles.engine.cluster import connect

    runs = [validate(r) for r in requests]
    with connect(cluster, workers, threads_per_worker) as (client, info):
        return [run.segment(client, info, progress=progress) for run in runs]


def _check_paths(input_url: str, output_url: str) -> None:
    if is_remote(input_url) or is_remote(output_url):
        if input_url.rstrip("/") == output_url.rstrip("/"):
            raise OutputConflictError("output is the input; choose another output path")
        from unet_tiles.pipeline.source import check_remote

        # An unreachable endpoint, refused credentials or a missing bucket: one line.
        check_remote(output_url, "output", OutputConflictError)
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


def _ome_layout(request: SegmentRequest, source: ImageSource, out_axes: str,
                shape: tuple[int, ...], dims: int) -> OmeLayout | None:
    """The OME layout the output gets, or None for the plain one."""
    from unet_tiles.pipeline.ome_output import plain_layout, source_layout

    fmt = request.output_format
    if fmt == "plain" or (fmt == "auto" and source.multiscale is None
                          and not request.into_source):
        return None
    if request.into_source:
        if source.multiscale is None:
            raise InputError(f"input {request.input!r} is not an OME-Zarr image; "
                             "`into_source` adds labels to OME-Zarr images only")
        if is_remote(request.input) or not os.access(request.input, os.W_OK):
            raise OutputConflictError(f"input {request.input!r} is not writable; "
                                      "`into_source` needs a writable image store")
        image = "../../"
    elif is_remote(request.input) or is_remote(request.output):
        image = request.input
    else:
        image = os.path.relpath(Path(request.input).resolve(),
                                Path(request.output).resolve())
    if source.multiscale is not None:
        return source_layout(source.multiscale, out_axes, request.level, image)
    version = "0.4" if source.zarr_format == 2 else "0.5"
    return plain_layout(shape, out_axes, dims, version, image)


def _check_axes(source: ImageSource, dims: int, in_channels: int) -> None:
    # The channel axis may sit anywhere (window.read_window moves it first), so
    # only the other axes must end in the model's spatial axes.
    spatial = "zyx"[3 - dims:]
    if not source.axes.replace("c", "").endswith(spatial):
        raise InputError(
            f"input {source.location!r} has axes {source.axes!r} but the model is {dims}D "
            f"and needs {','.join(spatial)} last; pass `axes` or use a "
            f"{'2D' if dims == 3 else '3D'} model"
        )
    channels = source.axis_size("c")
    if channels != in_channels:
        raise InputError(
            f"input {source.location!r} has {channels} channel(s) (axes {source.axes!r}) but the "
            f"model expects {in_channels}; pass `axes` to say which axis is c, or use a model "
            f"for {channels} channel(s)"
        )


__all__ = ["Run", "SegmentRequest", "plate_requests", "segment", "segment_all", "validate"]
