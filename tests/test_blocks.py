"""Block tasks on real stores: serial and on the real cluster, failures named, skip grids,
and the worker-side caches of opened arrays."""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
import zarr
from helpers import reference_logits, softmax, write_zarr

from unet_tiles.engine.blocks import (
    READ_CACHE_BYTES,
    RunSummary,
    _input_chunks,
    _open_input,
    _read_cache_budget,
    process_block,
    run_plan,
    run_serial,
)
from unet_tiles.engine.run import SegmentRequest, validate
from unet_tiles.engine.warm import warm_worker, warm_workers
from unet_tiles.errors import BlockFailedError, InputIncompleteError
from unet_tiles.model.geometry import UNetGeometry
from unet_tiles.model.unet import UNetConfig
from unet_tiles.pipeline.predict import cached_model
from unet_tiles.pipeline.window import chunk_keys, input_region
from unet_tiles.pipeline.writer import done_blocks

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from unet_tiles.engine.run import Run


def _image(shape: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape).astype(np.uint8)


def _prepared(tmp_path: Path, model: Path, src: str, out: str = "out.zarr",
              **options: Any) -> Run:
    """A validated run whose output is created, as ``Run.prepare`` leaves it."""
    request = SegmentRequest(src, str(tmp_path / out), str(model), output_kind="both",
                             dtype="float32", block_size=32, **options)
    run = validate(request)
    with run.locked():
        run.prepare()
    return run


def _outputs(url: str) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(url, mode="r")
    return np.asarray(group["labels"][...]), np.asarray(group["probabilities"][...])


def test_run_serial_writes_every_block(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    model = make_model(depth=1)
    image = _image()
    run = _prepared(tmp_path, model, write_zarr(tmp_path / "in.zarr", image, (32, 32)))
    assert run.plan.grid == (3, 4)
    summary = run_serial(run.plan, run.job)
    assert summary.blocks_total == summary.blocks_done == 12
    assert summary.blocks_skipped == 0
    assert summary.pixels == image.size
    assert summary.failures == []
    assert summary.seconds > 0
    assert summary.megapixels_per_s == pytest.approx(image.size / 1e6 / summary.seconds)
    assert done_blocks(run.output).all()
    labels, probs = _outputs(run.output)
    expected = softmax(reference_logits(model, image[None]))
    assert np.abs(probs - expected).max() <= 1e-4
    assert (labels == expected.argmax(0)).mean() > 0.999
    assert (labels == expected.argmax(0)).mean() > 0.999


def test_blocks_share_decoded_chunks_and_write_the_same_bytes(
        tmp_path: Path, make_model: Callable[..., Path]) -> None:
    """A run's blocks take their neighbours' chunks from the worker's cache, each
    decoded once, and write what blocks reading every chunk themselves write."""
    model = make_model(depth=1)
    src = write_zarr(tmp_path / "in.zarr", _image((96, 128)), (16, 16))
    cached = _prepared(tmp_path, model, src, "cached.zarr")
    cache = _input_chunks(READ_CACHE_BYTES)
    assert cache is not None
    before = (cache.hits, cache.misses, len(cache))
    summary = run_serial(cached.plan, cached.job)
    assert summary.blocks_done == 12
    hits, misses = cache.hits - before[0], cache.misses - before[1]
    assert misses == len(cache) - before[2] == 6 * 8  # every chunk of the image, once
    assert hits > misses
    # Under the run's id: another run of the same source finds none of them.
    assert ((0, 16), (0, 16)) in cache.scoped(cached.job.run_id)
    assert ((0, 16), (0, 16)) not in cache.scoped("another run")
    plain = _prepared(tmp_path, model, src, "plain.zarr")
    assert _input_chunks(0) is None
    run_serial(plain.plan, replace(plain.job, read_cache_bytes=0))
    assert (cache.hits, cache.misses) == (hits + before[0], misses + before[1])
    for name in ("labels", "probabilities"):
        a = zarr.open_array(str(tmp_path / "cached.zarr" / name), mode="r")
        b = zarr.open_array(str(tmp_path / "plain.zarr" / name), mode="r")
        np.testing.assert_array_equal(a[...], b[...])


def test_run_serial_skips_the_skip_grid(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    model = make_model(depth=1)
    run = _prepared(tmp_path, model, write_zarr(tmp_path / "in.zarr", _image((80, 100)),
                                                (32, 32)))
    assert run.plan.grid == (3, 4)
    skip = np.zeros(run.plan.grid, dtype=bool)
    skip[0, 1] = skip[2, 3] = skip[1, 0] = True
    summary = run_serial(run.plan, run.job, skip=skip)
    assert summary.blocks_skipped == 3
    assert summary.blocks_done == 9
    skipped_pixels = sum(run.plan.block(ix).write.size for ix in [(0, 1), (2, 3), (1, 0)])
    assert skipped_pixels == 32 * 32 + 16 * 4 + 32 * 32  # (2, 3) is the 16 x 4 corner
    assert summary.pixels == 80 * 100 - skipped_pixels
    np.testing.assert_array_equal(done_blocks(run.output), ~skip)
    _, probs = _outputs(run.output)
    written = probs.sum(axis=0) > 0  # softmax sums to 1; unwritten chunks read 0
    for block in run.plan:
        assert written[block.write.to_slices()].all() != skip[block.index]


def test_run_serial_raises_a_block_error_as_it_is(tmp_path: Path,
                                                  make_model: Callable[..., Path]) -> None:
    src = write_zarr(tmp_path / "in.zarr", _image(), (32, 32))
    (tmp_path / "in.zarr" / "c" / "2" / "3").unlink()
    run = _prepared(tmp_path, make_model(depth=1), src)
    with pytest.raises(InputIncompleteError, match="c/2/3"):
        run_serial(run.plan, run.job)
    assert done_blocks(run.output)[0, 0]  # blocks before it were written
    assert not done_blocks(run.output)[2, 3]


def test_process_block_returns_numbers_only(tmp_path: Path,
                                            make_model: Callable[..., Path]) -> None:
    run = _prepared(tmp_path, make_model(depth=1),
                    write_zarr(tmp_path / "in.zarr", _image(), (32, 32)))
    block = run.plan.block((2, 1))
    info = process_block(run.job, block)
    assert set(info) == {"block", "pixels", "seconds", "worker"}
    assert info["worker"] is None  # in no dask worker
    assert info["block"] == (2, 1)
    assert info["pixels"] == 32 * 32
    assert info["seconds"] > 0
    assert np.argwhere(done_blocks(run.output)).tolist() == [[2, 1]]


def test_warm_worker_sets_threads_and_loads_the_model(tmp_path: Path,
                                                      make_model: Callable[..., Path]) -> None:
    run = _prepared(tmp_path, make_model(depth=1, seed=11),
                    write_zarr(tmp_path / "in.zarr", _image(), (32, 32)))
    threads = torch.get_num_threads()
    try:
        before = cached_model.cache_info()
        warm_worker(replace(run.job, torch_threads=1))
        assert torch.get_num_threads() == 1
        after = cached_model.cache_info()
        assert after.misses == before.misses + 1  # a model dir and hash not loaded before
        process_block(run.job, run.plan.block((0, 0)))
        assert cached_model.cache_info().hits > after.hits  # the block used the warm model
    finally:
        torch.set_num_threads(threads)


def test_warming_leaves_the_workers_event_loop_free(tmp_path: Path,
                                                    make_model: Callable[..., Path],
                                                    client: Any) -> None:
    """A worker answers the scheduler while it warms: ``Client.run`` calls a plain
    function on the worker's event loop, so a long warm-up there would hold up its
    heartbeats and every other request until it ended."""
    run = _prepared(tmp_path, make_model(depth=2, seed=12),
                    write_zarr(tmp_path / "in.zarr", _image(), (32, 32)))
    size = UNetGeometry(UNetConfig(depth=2, base_channels=4, classes=3)).valid_size(2560)
    job = replace(run.job, warm_tile=(size, size), batch_size=1, torch_threads=1)
    with ThreadPoolExecutor(1) as pool:
        started = time.perf_counter()
        warming = pool.submit(warm_workers, client, job)
        time.sleep(0.2)
        asked = time.perf_counter()
        answers = client.run(os.getpid)
        answered = time.perf_counter() - asked
        # A forward pass of a 2.5 kpx tile: a second or more, still running.
        still_warming = not warming.done()
        warming.result()
        warmed = time.perf_counter() - started
    assert len(answers) == 2
    assert still_warming  # answered during the warm-up, not after it
    assert answered < 0.25 * warmed


def test_run_summary_to_dict() -> None:
    summary = RunSummary(pixels=3_000_000, blocks_total=5, blocks_done=3, blocks_skipped=2,
                         seconds=1.23456, pyramid_seconds=0.4321)
    assert summary.megapixels_per_s == pytest.approx(3 / 1.23456)
    assert summary.to_dict() == {
        "pixels": 3_000_000, "blocks_total": 5, "blocks_done": 3, "blocks_skipped": 2,
        "seconds": 1.235, "pyramid_seconds": 0.432, "megapixels_per_s": 2.43, "failures": []}
    assert RunSummary().megapixels_per_s == 0.0


# --- the worker-side cache of opened inputs ---------------------------------------------


def _gzip_store(path: Path, data: np.ndarray, chunks: tuple[int, int],
                compressors: Any) -> str:
    array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                              compressors=compressors, overwrite=True,
                              config={"write_empty_chunks": True})
    array[...] = data
    return str(path)


@pytest.mark.parametrize("compressors", ["gzip", None], ids=["gzip", "uncompressed"])
def test_a_store_replaced_with_another_codec_is_read_afresh(
        tmp_path: Path, make_model: Callable[..., Path], compressors: str | None) -> None:
    """``_open_input`` is keyed by the run id: the same source (path, shape, dtype,
    chunks) replaced by a store with another codec is opened again by the next run in
    the same process, never decoded through the first store's codec."""
    codecs = [zarr.codecs.GzipCodec()] if compressors == "gzip" else None
    model = make_model(depth=1)
    first = _image((64, 80), seed=1)
    second = _image((64, 80), seed=2)
    src = write_zarr(tmp_path / "in.zarr", first, (32, 32))  # zarr v3 default: zstd
    assert zarr.open_array(src).compressors[0].to_dict()["name"] == "zstd"

    def segment(out: str, source: str) -> tuple[np.ndarray, np.ndarray]:
        run = validate(SegmentRequest(source, str(tmp_path / out), str(model),
                                      output_kind="both", dtype="float32", block_size=32,
                                      overwrite=True))
        summary = run.segment()  # serial: in this process, sharing its caches
        assert summary.blocks_done == len(run.plan) == 6
        return _outputs(str(tmp_path / out))

    segment("out1.zarr", src)
    source_before = validate(SegmentRequest(src, str(tmp_path / "x.zarr"), str(model),
                                            block_size=32)).source
    shutil.rmtree(tmp_path / "in.zarr")
    _gzip_store(tmp_path / "in.zarr", second, (32, 32), codecs)
    # Same path, shape, dtype and chunks: to the cache, the same source.
    source_after = validate(SegmentRequest(src, str(tmp_path / "x.zarr"), str(model),
                                           block_size=32)).source
    assert source_after == source_before
    labels, probs = segment("out2.zarr", src)
    fresh_labels, fresh_probs = segment(
        "out3.zarr", _gzip_store(tmp_path / "fresh.zarr", second, (32, 32), codecs))
    np.testing.assert_array_equal(probs, fresh_probs)
    np.testing.assert_array_equal(labels, fresh_labels)
    expected = softmax(reference_logits(model, second[None]))
    assert np.abs(probs - expected).max() <= 1e-4


def test_read_cache_budget_is_a_sixteenth_of_a_workers_limit_at_most(client: Any) -> None:
    assert _read_cache_budget(1 << 20) == 1 << 20  # outside a worker: as asked
    limits = {address: info["memory_limit"]
              for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}
    assert all(limits.values())
    for address, limit in limits.items():  # in a task, as process_block asks
        for asked, budget in [(1 << 50, limit // 16), (1 << 20, 1 << 20)]:
            assert client.submit(_read_cache_budget, asked, workers=[address],
                                 pure=False).result() == budget


def test_open_input_is_cached_per_source_and_run(tmp_path: Path) -> None:
    from unet_tiles.pipeline.source import open_source

    source = open_source(write_zarr(tmp_path / "in.zarr", _image(), (32, 32)))
    first = _open_input(source, "run-a")
    assert _open_input(source, "run-a") is first
    assert _open_input(source, "run-b") is not first


# --- on the real cluster ----------------------------------------------------------------


def _blocks_reading(run: Run, key: str) -> set[tuple[int, ...]]:
    array = run.source.open()
    return {block.index for block in run.plan
            if key in chunk_keys(array, input_region(run.source, block)[0])}


@pytest.mark.cluster
def test_run_plan_failures_do_not_stop_the_other_blocks(
        tmp_path: Path, make_model: Callable[..., Path], client: Any) -> None:
    model = make_model(depth=1)
    image = _image((96, 160), seed=3)
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32))
    (tmp_path / "in.zarr" / "c" / "2" / "4").write_bytes(b"\x13garbage\x00" * 40)
    run = _prepared(tmp_path, model, src)
    assert run.plan.grid == (3, 5)
    failing = _blocks_reading(run, "c/2/4")
    assert 1 < len(failing) < 15
    progress: list[tuple[int, int]] = []
    with pytest.raises(BlockFailedError) as caught:
        run_plan(client, run.plan, run.job, max_in_flight=2, progress=False,
                 on_block=lambda done, total: progress.append((done, total)))
    error = caught.value
    message = str(error)
    assert message.startswith(f"{len(failing)} of 15 blocks failed; first: block ")
    assert "InputIncompleteError: input unreadable" in message
    assert "rerun the same command to do only the failed blocks" in message
    assert len(error.failures) == len(failing)
    by_index = {tuple(f["index"]): f for f in error.failures}
    assert set(by_index) == failing
    for index, failure in by_index.items():
        block = run.plan.block(index)
        assert failure["write"] == block.write.ranges("yx")
        assert failure["block"] == block.describe("yx")
        assert failure["block"].startswith(f"block {index[0]}.{index[1]} (y=")
        assert failure["error"].startswith("InputIncompleteError: input unreadable")
    # Every other block was written, and written right.
    done = done_blocks(run.output)
    assert {tuple(ix) for ix in np.argwhere(~done).tolist()} == failing
    labels, probs = _outputs(run.output)
    expected = softmax(reference_logits(model, image[None]))
    for block in run.plan:
        if block.index not in failing:
            region = block.write.to_slices()
            assert np.abs(probs[(slice(None), *region)]
                          - expected[(slice(None), *region)]).max() <= 1e-4
            assert (labels[region] == expected.argmax(0)[region]).mean() > 0.99
        else:
            assert not probs[(slice(None), *block.write.to_slices())].any()
    assert len(progress) == 15
    assert progress[-1] == (15 - len(failing), 15)


@pytest.mark.cluster
def test_run_plan_skips_and_counts(tmp_path: Path, make_model: Callable[..., Path],
                                   client: Any) -> None:
    model = make_model(depth=1)
    image = _image((64, 96), seed=4)
    run = _prepared(tmp_path, model, write_zarr(tmp_path / "in.zarr", image, (32, 32)))
    skip = np.zeros(run.plan.grid, dtype=bool)
    skip[1, 2] = True
    summary = run_plan(client, run.plan, run.job, skip=skip, progress=False)
    assert summary.blocks_total == 6
    assert summary.blocks_skipped == 1
    assert summary.blocks_done == 5
    assert summary.pixels == image.size - 32 * 32
    np.testing.assert_array_equal(done_blocks(run.output), ~skip)
    # The skipped block is the only one left to do: a second pass does just it.
    again = run_plan(client, run.plan, run.job, skip=done_blocks(run.output), progress=False)
    assert (again.blocks_skipped, again.blocks_done, again.pixels) == (5, 1, 32 * 32)
    labels, probs = _outputs(run.output)
    expected = softmax(reference_logits(model, image[None]))
    assert np.abs(probs - expected).max() <= 1e-4
    assert (labels == expected.argmax(0)).mean() > 0.999


@pytest.mark.cluster
def test_run_plan_on_a_client_that_is_not_the_default(tmp_path: Path, make_model: Any) -> None:
    """The archive runs each image on its own client (set_as_default=False), several
    at once: the run must wait on that client's loop, never the default client's."""
    from distributed import Client, LocalCluster

    from unet_tiles.engine.run import SegmentRequest, validate

    image = (np.random.default_rng(2).random((64, 96)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32))
    run = validate(SegmentRequest(src, str(tmp_path / "out.zarr"), str(make_model()),
                                  block_size=32))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, \
            Client(cluster.scheduler_address, set_as_default=False) as client:
        summary = run.segment(client, progress=False)
    assert summary.blocks_done == 6


@pytest.mark.cluster
def test_workers_that_join_after_the_start_get_blocks_too(tmp_path: Path,
                                                          make_model: Any) -> None:
    """SLURM jobs and Kubernetes pods start their workers after the run has begun: the
    blocks in flight follow the threads the cluster has now, not those it had at the
    start (none here), so the late workers are kept busy."""
    import threading

    from distributed import Client, LocalCluster

    image = _image((256, 384), seed=5)
    run = _prepared(tmp_path, make_model(depth=1),
                    write_zarr(tmp_path / "in.zarr", image, (32, 32)))
    assert len(run.plan) == 96
    with LocalCluster(n_workers=0, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        result: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: result.update(
            summary=run_plan(client, run.plan, run.job, progress=False)))
        runner.start()
        time.sleep(1.0)  # the run has started, on a cluster without workers
        cluster.scale(2)
        most = 0
        while runner.is_alive():
            most = max(most, sum(len(keys) for keys in client.processing().values()))
            time.sleep(0.01)
        runner.join()
    assert result["summary"].blocks_done == 96
    # 2 workers x 2 threads: twice as many blocks in flight as threads (4 with the
    # cluster it started on, which had no thread: the old cap, 2, kept 2 threads idle).
    assert most > 4
    assert done_blocks(run.output).all()


@pytest.mark.cluster
def test_the_feed_tops_up_when_the_watch_reports_more_threads(
        tmp_path: Path, make_model: Callable[..., Path]) -> None:
    """Blocks that run long finish too rarely to count the threads after each: the
    cluster's watch tells the feed, which tops up at once (tasks that wait on an event
    stand for the blocks)."""
    from distributed import Client, Event, LocalCluster, as_completed

    from unet_tiles.engine.feed import BlockFeed

    run = _prepared(tmp_path, make_model(depth=1),
                    write_zarr(tmp_path / "in.zarr", _image((160, 128)), (32, 32)))
    blocks = list(run.plan)
    assert len(blocks) == 20
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        release = Event("release", client=client)
        feed = BlockFeed(client, blocks, lambda block, _worker: client.submit(
            release.wait, key=f"long-{block.id}", pure=False), None)
        queue = as_completed(loop=client.loop)
        feed.start(queue)
        assert feed.target() == 2
        assert queue.count() == 2
        feed.workers_now({"a": {"nthreads": 1}, "b": {"nthreads": 4}})
        assert feed.target() == 10
        assert queue.count() == 10
        feed.workers_now({"a": {"nthreads": 1}})  # fewer: nothing is taken back
        assert (feed.target(), queue.count()) == (2, 10)
        feed.stop()
        release.set()
        assert sum(1 for _ in queue) == 10


@pytest.mark.cluster
def test_a_worker_that_joins_during_the_run_is_warmed_before_its_first_block(
        tmp_path: Path, make_model: Callable[..., Path]) -> None:
    """The warm-up is a worker plugin: a worker that starts after the run began (a
    SLURM job, a Kubernetes pod) loads the model and runs the warm tile as it
    registers, before it takes a block; after the run, a new worker is left cold."""
    from distributed import Client, LocalCluster

    from unet_tiles.engine.warm import stop_warming, warm_up_name

    run = _prepared(tmp_path, make_model(depth=1, seed=13),
                    write_zarr(tmp_path / "in.zarr", _image(), (32, 32)))
    job = replace(run.job, torch_threads=1)

    def models_loaded() -> int:
        from unet_tiles.pipeline.predict import cached_model

        return int(cached_model.cache_info().currsize)

    with LocalCluster(n_workers=0, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        warm_workers(client, job)  # no worker yet: nothing to wait for
        cluster.scale(1)
        client.wait_for_workers(1)
        deadline = time.monotonic() + 60
        while set(client.run(models_loaded).values()) != {1}:
            assert time.monotonic() < deadline, "the joining worker was not warmed"
            time.sleep(0.1)
        stop_warming(client, job)
        left = client.run_on_scheduler(
            lambda dask_scheduler: [*dask_scheduler.worker_plugins, *dask_scheduler.plugins])
        assert not [name for name in left if name.startswith(warm_up_name(job))]
        cluster.scale(2)
        client.wait_for_workers(2)
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert len(plugins) == 2
        assert not any(warm_up_name(job) in names for names in plugins.values())
