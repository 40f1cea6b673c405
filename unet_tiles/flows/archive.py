"""``segment_archive``: every image under a root that is not segmented yet.

    discover ──> plan (one task for all images: validate + "already done?")
             ──> segment-image[name] x N, at most ``max_concurrent`` at a time,
                 all on one shared dask cluster
             ──> outcome table; Failed only if some image failed, naming them

Skipped images get no task of their own: a nightly run over a large archive
where almost everything is done must not pay ~100 ms of orchestration per
image just to skip it. One bad image never stops the others: its failure is
recorded and the rest go on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from unet_tiles.archive.discover import ImageRef, find_images
from unet_tiles.engine.run import SegmentRequest, into_source_output, validate
from unet_tiles.errors import ArchiveFailedError, UsageError

from .report import artifact_key, progress_artifact, table
from .settings import check_filled, cluster_choice, flow_wording, make_parent
from .steps import RETRY, segment_on

if TYPE_CHECKING:
    from unet_tiles.engine.cluster import ClusterInfo

Status = Literal["done", "skipped", "failed", "todo"]


@dataclass(frozen=True)
class Outcome:
    """What happened to one image of the archive."""

    image: str
    relative: str
    output: str
    status: Status
    reason: str
    request: SegmentRequest | None = None
    summary: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        summary = self.summary or {}
        return {
            "image": self.relative or self.image,
            "status": self.status,
            "reason": self.reason,
            "output": self.output,
            "pixels": summary.get("pixels", 0),
            "seconds": summary.get("seconds", 0.0),
            "preview": summary.get("preview", ""),
        }


@task(name="discover", cache_policy=NO_CACHE)
def discover_step(root: str, output_root: str) -> list[ImageRef]:
    images = find_images(root, exclude=[output_root])
    get_run_logger().info("found %d image(s) under %s", len(images), root)
    return images


@task(name="plan", cache_policy=NO_CACHE)
def plan_step(images: list[ImageRef], output_root: str,
              options: dict[str, Any]) -> list[Outcome]:
    """Decide for each image (``Run.decide``): skip (done), run, redo, or failed."""
    logger = get_run_logger()
    planned = []
    for image in images:
        # Into the source, each image's output is its own labels group.
        output = into_source_output(image.url, options["label_name"]) \
            if options["into_source"] else image.output_url(output_root)
        try:
            if not options["into_source"]:
                make_parent(output)
            with flow_wording():
                run, decision = validate(
                    SegmentRequest(input=image.url, output=output, **options)).unattended()
        except Exception as exc:
            # Validation failures are per image: report it, go on with the rest.
            logger.warning("%s: %s", image.relative, exc)
            planned.append(Outcome(image.url, image.relative, output, "failed", _reason(exc)))
            continue
        reason = f"output {decision.reason}"
        if run is None:
            planned.append(Outcome(image.url, image.relative, output, "skipped", reason))
        else:
            planned.append(Outcome(image.url, image.relative, output, "todo", reason,
                                   request=run.request))
    return planned


@task(name="segment-image", task_run_name="segment-{name}", **RETRY)
def segment_step(name: str, request: SegmentRequest, address: str,
                 info: ClusterInfo, preview: bool = False) -> dict[str, Any]:
    # Validated again here: the image may have changed since the plan, and the
    # task passes a request (paths, options), never a plan or pixels.
    run = validate(request)
    summary = segment_on(run, address, info)
    if preview:
        # Beside the output, so the report's row and the store travel together.
        summary["preview"] = run.preview(f"{run.output.rstrip('/')}.preview.png")
    return summary


@flow(name="segment-archive", log_prints=False, validate_parameters=True)
def segment_archive(
    root: str,
    output_root: str,
    model_dir: str,
    output_kind: str = "labels",
    dtype: str = "float16",
    block_size: int | None = None,
    tile_size: int | None = None,
    batch_size: int | None = None,
    axes: str | None = None,
    device: str = "auto",
    precision: str = "auto",
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
    max_concurrent: int = 2,
    previews: bool = False,
) -> list[dict[str, Any]]:
    """Segment every image under ``root`` into ``output_root`` not already done.

    Args:
        root: archive folder, local path or fsspec URL, searched recursively.
        output_root: outputs go to ``output_root/<path under root>``.
        model_dir: a model directory (config.json + weights.safetensors).
        level: the OME-Zarr multiscales level of each image to segment (0: full
            resolution).
        cluster: ``local``, ``cpu``, ``cuda`` or ``tcp://host:port``; default
            ``$UNET_TILES_CLUSTER`` of the worker, else ``local``.
        max_concurrent: images in flight at once on the shared cluster.

    Returns:
        One row per image: image, status (done, skipped, failed), reason, output.
    """
    logger = get_run_logger()
    check_filled(root=root, output_root=output_root, model_dir=model_dir, cluster=cluster)
    if max_concurrent < 1:
        raise UsageError(f"max_concurrent must be at least 1, got {max_concurrent}")
    options = {"model_dir": model_dir, "output_kind": output_kind, "dtype": dtype,
               "block_size": block_size, "tile_size": tile_size, "batch_size": batch_size,
               "axes": axes, "device": device, "precision": precision,
               "allow_missing_chunks": allow_missing_chunks,
               "output_format": output_format, "into_source": into_source,
               "label_name": label_name, "level": level,
               "shard": shard, "instance_class": instance_class,
               "connectivity": connectivity, "min_size": min_size, "consecutive": consecutive,
               "objects_csv": objects_csv, "split": split,
               "seed_probability": seed_probability, "split_distance": split_distance,
               "read_cache_mb": read_cache_mb, "configuration": configuration}
    images = discover_step(root, output_root)
    planned = plan_step(images, output_root, options)
    todo = [o for o in planned if o.status == "todo"]
    logger.info("%d image(s) to segment, %d already done, %d invalid", len(todo),
                sum(o.status == "skipped" for o in planned),
                sum(o.status == "failed" for o in planned))
    finished = {o.image: o for o in planned if o.status != "todo"}
    if todo:
        finished.update(_segment_all(todo, cluster_choice(cluster, workers, threads_per_worker),
                                     max_concurrent, root, previews))
    outcomes = [finished[o.image] for o in planned]
    table([o.row() for o in outcomes], key=artifact_key("archive", root),
          description=f"segment-archive {root} -> {output_root}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        names = ", ".join(o.relative or o.image for o in failed)
        raise ArchiveFailedError(
            f"{len(failed)} of {len(outcomes)} image(s) failed: {names}. First: "
            f"{failed[0].relative or failed[0].image}: {failed[0].reason}", outcomes)
    return [o.row() for o in outcomes]


def _segment_all(todo: list[Outcome], choice: Any, max_concurrent: int,
                 root: str, previews: bool) -> dict[str, Outcome]:
    from unet_tiles.engine.cluster import connect

    logger = get_run_logger()
    results: dict[str, Outcome] = {}
    progress = progress_artifact(f"images of {root}", key=artifact_key("archive-progress", root))
    runner: ThreadPoolTaskRunner[Any]
    with connect(choice.spec, choice.workers, choice.threads_per_worker) as (client, info), \
            ThreadPoolTaskRunner(max_workers=max_concurrent) as runner:
        address = str(client.scheduler_info()["address"])
        # Prefect's submit overloads type only async tasks' results precisely.
        futures: list[Any] = [
            runner.submit(segment_step,  # type: ignore[arg-type]
                          {"name": o.relative or o.image, "request": o.request,
                           "address": address, "info": info, "preview": previews})
            for o in todo
        ]
        for count, (item, future) in enumerate(zip(todo, futures, strict=True), start=1):
            future.wait()
            state = future.state
            if state.is_completed():
                summary = future.result()
                results[item.image] = replace(item, status="done", summary=summary,
                                              request=None)
                logger.info("done %s (%.1f s)", item.relative, summary["seconds"])
            else:
                exc = state.result(raise_on_failure=False)
                reason = _reason(exc) if isinstance(exc, BaseException) else str(state.message)
                results[item.image] = replace(item, status="failed", reason=reason, request=None)
                logger.error("failed %s: %s", item.relative, reason)
            progress(count, len(todo))
    return results


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0]
