"""Warm every worker before its first block: those there at the start, and those that
join while the run goes on (the jobs of a SLURM or Kubernetes cluster start late).

A dask worker plugin does both: registering it warms the workers the cluster has and
waits for them; dask runs its ``setup`` on every worker that registers afterwards,
before that worker takes a task. It is unregistered when the run's blocks are done, so
a cluster that outlives the run (``--cluster tcp://...``) does not keep warming for it;
a driver killed before that (no ``finally`` runs) leaves it to a scheduler plugin that
drops it when the driver's client leaves the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from unet_tiles.engine.blocks import job_model, set_torch_threads

if TYPE_CHECKING:
    from distributed import Client

    from unet_tiles.engine.blocks import BlockJob

logger = logging.getLogger(__name__)


def warm_worker(job: BlockJob, worker_name: object = None) -> None:
    """Import torch, load the model and run one batch of the plan's tile on a worker
    before its first block.

    So that the blocks' time is the blocks' work and no block waits on a cold worker:
    on a GPU the CUDA context and cuDNN's kernel choice, on CPU oneDNN's kernels for
    the tile's shape and layout and the heap the activations need (a CPU worker's first
    block took 0.15-0.45 s longer than the next ones on the demo model without it).
    """
    import torch

    from unet_tiles.pipeline.predict import (
        auto_batch,
        autocast,
        device_lock,
        in_layout,
        pick_device,
    )

    set_torch_threads(job)
    # "cuda:worker" picks the GPU by the worker's name, which tasks find themselves.
    device = pick_device(job.device, worker_name)
    model, channels_last = job_model(job, device)
    if job.warm_tile is None:
        return
    on_gpu = device.startswith("cuda")
    if on_gpu:
        # Every tile of a block has one shape, and most blocks share it: autotuning pays.
        torch.backends.cudnn.benchmark = True
    batch = job.batch_size or auto_batch(model, job.warm_tile, device)
    # In the blocks' layout: the kernels chosen are per layout.
    x = in_layout(torch.zeros((batch, model.config.in_channels, *job.warm_tile),
                              device=device), channels_last)
    with device_lock(device), torch.inference_mode(), autocast(job.precision, device):
        model(x)
    if on_gpu:
        torch.cuda.synchronize(device)


class WarmUp(WorkerPlugin):
    """``warm_worker`` for ``job`` on every worker, now and as workers join.

    ``setup`` runs the warm-up in the worker's own task threads, awaited on its event
    loop: a plain function there would stop the worker's heartbeats and its answers
    to the scheduler while a long warm-up (a large tile, a slow CPU, a first CUDA
    context) runs. The task threads' pool warms the thread that runs the blocks (a
    one-thread CPU worker's only one): torch's per-thread settings and oneDNN's
    per-thread scratch memory are that thread's. The worker's name picks the GPU of
    workers sharing GPUs. A warm-up that fails is logged: the first block meets the
    same error as a task, where the retry rules and the out-of-memory advice of
    ``run_plan`` apply.
    """

    def __init__(self, job: BlockJob) -> None:
        self.job = job

    async def setup(self, worker: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(worker.executors["default"], warm_worker, self.job,
                                       worker.name)
        except Exception as exc:  # logged for the worker; the blocks report it
            logger.warning("warming worker %s failed (%s: %s); its first block runs cold",
                           worker.address, type(exc).__name__, exc)


class ForgetWithClient(SchedulerPlugin):
    """On the scheduler: drops the worker plugin ``plugin_name`` (and itself) when the
    client ``client_id`` leaves without having unregistered it: a driver killed with
    SIGKILL or by the OOM killer, whose run would otherwise warm every worker that joins
    the cluster later (each loading a model nobody uses) until the cluster stops."""

    def __init__(self, client_id: str, plugin_name: str) -> None:
        self.client_id = client_id
        self.plugin_name = plugin_name

    def remove_client(self, scheduler: Any, client: str) -> None:
        if client != self.client_id:
            return
        if scheduler.worker_plugins.pop(self.plugin_name, None) is not None:
            logger.info("client %s left without unregistering %s: dropped",
                        client, self.plugin_name)
        scheduler.plugins.pop(_guard_name(self.plugin_name), None)


def warm_up_name(job: BlockJob) -> str:
    return f"unet-tiles-warm-up-{job.run_id}"


def _guard_name(plugin_name: str) -> str:
    return f"{plugin_name}-forget-with-client"


def warm_workers(client: Client, job: BlockJob) -> None:
    """Warm every worker of ``client``'s cluster, and from now on each that joins.

    A worker that dies here (a tile too large for its memory limit kills it in this
    pass) is only logged: its first block meets the same death as a task, instead of
    the registration's traceback ending the run before any block.
    """
    name = warm_up_name(job)
    try:  # first: the driver may be killed while the workers warm
        client.register_plugin(ForgetWithClient(client.id, name), name=_guard_name(name))
    except Exception as exc:  # a scheduler without unet-tiles cannot load it
        logger.info("the scheduler keeps run %s's warm-up if this process is killed "
                    "(%s: %s)", job.run_id, type(exc).__name__, exc)
    try:
        client.register_plugin(WarmUp(job), name=name)
    except Exception as exc:  # a worker died warming: the blocks' retry rules apply
        logger.warning("warming worker(s) failed (%s: %s); their first blocks run cold",
                       type(exc).__name__, exc)


def stop_warming(client: Client, job: BlockJob) -> None:
    """Workers that join from now on are not warmed for ``job``."""
    name = warm_up_name(job)
    for unregister, plugin in ((client.unregister_worker_plugin, name),
                               (client.unregister_scheduler_plugin, _guard_name(name))):
        try:
            unregister(plugin)
        except Exception:  # the cluster is gone, or never had it: nothing to undo
            logger.debug("no %s to unregister for run %s", plugin, job.run_id,
                         exc_info=True)


__all__ = ["ForgetWithClient", "WarmUp", "stop_warming", "warm_up_name", "warm_worker",
           "warm_workers"]
