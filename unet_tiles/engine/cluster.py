"""Make or join a dask cluster: local CPU, local CUDA, an existing scheduler, or the
cluster of a spec file (SLURM, Kubernetes, a scheduler with TLS: engine/cluster_spec.py).

``dask_cuda``, ``dask_jobqueue`` and ``dask_kubernetes`` are imported only on the code
path that starts their cluster, so hosts without them never need them installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_tiles.engine.cluster_spec import (
    ClusterSpec,
    KubernetesSpec,
    SchedulerSpec,
    SlurmSpec,
    is_spec_file,
    load_spec,
)
from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from distributed import Client

logger = logging.getLogger(__name__)

# Measured in bench/throughput.py on 2 cores: see bench/README.md.
DEFAULT_THREADS_PER_WORKER = 1


# glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh
# mmaps, and the Nanny's MALLOC_TRIM_THRESHOLD_=65536 returns freed memory at
# once: a U-Net's activations (tens of MiB) then page-fault on every forward
# pass. Keeping them in the heap made CPU workers 20 % faster end to end here
# (bench/README.md); memory stays bounded by the largest block's working set.
#
# Tasks run in a worker's thread, and glibc gives threads other than the main
# one their own arenas of 64 MiB heaps, which it unmaps as soon as they empty
# whatever the trim threshold: the same page faults again (up to 7,500 per
# forward pass of a 780 px tile here, 0 with one arena; bench/worker_overhead.py
# counts them per block). One arena keeps the tensors in the main heap; a CPU
# worker has one compute thread, so it costs no lock contention.
#
# A GPU worker's threads read, mirror, encode and write blocks between forward
# passes, and that host path is what feeds the device: with the thresholds it ran
# 1.5x the blocks per second with 1 and 2 threads (bench/gpu_feed.py, the device
# simulated); its arenas stay, for threads that allocate at once.
HEAP_THRESHOLDS = {
    "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(512 << 20),
}
CPU_WORKER_MALLOC = {**HEAP_THRESHOLDS, "MALLOC_ARENA_MAX": "1"}
GPU_WORKER_MALLOC = HEAP_THRESHOLDS

# Event-loop housekeeping of the clusters started here. A worker samples its
# threads' stacks every 10 ms for the dashboard's profile, checks its event loop
# every 20 ms and samples CPU, memory and I/O every 0.5 s; on a machine with as
# many workers as cores that takes CPU from the model. Measured on 2 cores
# (bench/worker_overhead.py): a worker's event-loop thread used 2.3 s of CPU in
# a 27 s run with distributed's defaults, 0.3 s with these. Blocks take
# seconds, so nothing is lost but the dashboard's profile page and resolution;
# profile on your own cluster (--cluster tcp://...). The memory monitor (OOM
# protection) keeps its default.
#
# Pausing is off: a worker pauses above 80 % of its memory limit until spilling
# task results brings it down, but blocks return no data to spill, so the memory is
# the worker's own heap and a paused worker never resumes (engine/paused.py). A
# block that does not fit meets the nanny's limit instead, and its advice.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.pause": False,
}


@dataclass(frozen=True)
class ClusterInfo:
    """What the engine needs to know about the cluster it runs on."""

    kind: str
    workers: int
    threads_per_worker: int
    torch_threads: int | None
    resources: dict[str, float] | None = field(default=None)
    device: str | None = None
    # The scheduler's dashboard URL, None where it has none (or bokeh is missing).
    # Shown to people, never used by the engine: not part of equality.
    dashboard: str | None = field(default=None, compare=False)


def gpus_present() -> int:
    """Count NVIDIA GPUs without importing torch or CUDA libraries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity and its cgroup's CPU quota (a
    container's or a Kubernetes pod's CPU limit, rounded up), not the host's count,
    which would start a worker per core of a 64-core node in a 4-CPU pod."""
    from dask.system import cpu_count

    return int(cpu_count())


@contextlib.contextmanager
def connect(spec: str = "local", workers: int | None = None,
            threads_per_worker: int | None = None) -> Iterator[tuple[Client, ClusterInfo]]:
    """Yield a connected ``Client`` and what it runs on; close what was started.

    ``spec``: ``local`` (CUDA if GPUs are present, else CPU), ``cpu``, ``cuda``,
    a scheduler address ``tcp://host:port`` / ``tls://host:port``, or a cluster spec
    file ``FILE.yaml`` (engine/cluster_spec.py: ``kind`` slurm, kubernetes or
    scheduler). ``workers`` and ``threads_per_worker`` size local clusters only: a
    spec file sizes its own cluster.
    """
    if spec == "local":
        spec = "cuda" if gpus_present() else "cpu"
    if spec == "cpu":
        with _local_cpu(workers, threads_per_worker) as (client, info):
            yield client, _with_dashboard(client, info)
    elif spec == "cuda":
        with _local_cuda(workers, threads_per_worker) as (client, info):
            yield client, _with_dashboard(client, info)
    elif "://" in spec:
        with _remote(spec) as (client, info):
            yield client, _with_dashboard(client, info)
    elif is_spec_file(spec):
        with _from_spec(load_spec(spec)) as (client, info):
            yield client, _with_dashboard(client, info)
    else:
        raise UsageError(
            f"`cluster` {spec!r} is not one of local, cpu, cuda or a scheduler address "
            "such as tcp://127.0.0.1:8786, nor a cluster spec FILE.yaml"
        )


def dashboard_link(client: Client) -> str | None:
    """The dashboard URL of ``client``'s scheduler; None where there is none.

    distributed answers "" or raises (KeyError, AttributeError) when the
    scheduler runs without a dashboard or cannot say; none of that is an error.
    """
    try:
        link = client.dashboard_link
    except Exception:  # a property that reaches the scheduler: any failure means none
        logger.debug("no dashboard link", exc_info=True)
        return None
    return str(link) if link else None


def _with_dashboard(client: Client, info: ClusterInfo) -> ClusterInfo:
    return replace(info, dashboard=dashboard_link(client))


@contextlib.contextmanager
def _local_cpu(workers: int | None,
               threads: int | None) -> Iterator[tuple[Client, ClusterInfo]]:
    cores = usable_cores()
    threads = threads or DEFAULT_THREADS_PER_WORKER
    workers = workers or max(1, cores // threads)
    torch_threads = max(1, cores // (workers * threads))
    with _loopback_cluster(workers, threads, CPU_WORKER_MALLOC) as client:
        yield client, ClusterInfo("cpu", workers, threads, torch_threads)


@contextlib.contextmanager
def _local_config(worker_environ: dict[str, str] | None = None) -> Iterator[None]:
    """``LOCAL_CLUSTER_CONFIG`` (and ``worker_environ`` for the worker processes)
    while a cluster starts: nannies hand the config to their workers, and the
    scheduler reads it when it starts."""
    import dask

    # distributed is imported first so its defaults are in dask's config:
    # leaving config.set() would otherwise drop the whole section.
    import distributed  # noqa: F401

    config: dict[str, object] = dict(LOCAL_CLUSTER_CONFIG)
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    if worker_environ:
        environ.update(worker_environ)
        config["distributed.nanny.pre-spawn-environ"] = environ
    # Nannies put the pre-spawn environment into *this* process's os.environ
    # before they spawn a worker; without the restore the driver (and whatever it
    # starts later) would keep one malloc arena and one OpenMP thread.
    with preserved_environ(environ), dask.config.set(config):
        yield


@contextlib.contextmanager
def preserved_environ(names: Iterable[str]) -> Iterator[None]:
    """This process's environment variables ``names`` as they were, afterwards."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _loopback_cluster(workers: int, threads: int,
                      worker_environ: dict[str, str] | None = None) -> Iterator[Client]:
    """A LocalCluster of worker processes listening on 127.0.0.1 only."""
    from distributed import Client, LocalCluster

    with _local_config(worker_environ), LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        # Dashboard on loopback only: it shows paths and logs, and has no auth.
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
    ) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _local_cuda(workers: int | None,
                threads: int | None) -> Iterator[tuple[Client, ClusterInfo]]:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise UsageError(
            f"`cluster` cuda needs dask-cuda ({exc}); install it with "
            "pip install 'unet-tiles[gpu]'"
        ) from None
    from distributed import Client

    gpus = gpus_present()
    if gpus == 0:
        raise UsageError("`cluster` cuda found no GPU; use `cluster` cpu")
    threads = threads or 2
    if workers is not None and workers > gpus:
        with _shared_gpus(workers, threads, gpus) as connected:
            yield connected
        return
    # Each task claims one unit of GPU; a worker has ``threads`` units so the
    # next block is read while the current one runs on the device.
    with _local_config(GPU_WORKER_MALLOC), LocalCUDACluster(
        n_workers=workers or gpus,
        threads_per_worker=threads,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        resources={"GPU": threads},
        silence_logs=logging.CRITICAL,
    ) as cluster, Client(cluster) as client:
        # torch's CPU threads (tile stacking, host work) shared among the GPU workers,
        # not each taking every core.
        cores = usable_cores()
        yield client, ClusterInfo("cuda", workers or gpus, threads,
                                  max(1, cores // (workers or gpus)), {"GPU": 1})


@contextlib.contextmanager
def _shared_gpus(workers: int, threads: int,
                 gpus: int) -> Iterator[tuple[Client, ClusterInfo]]:
    """More worker processes than GPUs: each worker uses GPU (name mod count).

    A small model outruns one process's reading, decoding and writing of
    blocks (the GIL and zarr's event loop serialise them); several processes
    per GPU keep the device fed. dask-cuda pins one worker per GPU, so this
    is a plain LocalCluster whose tasks pick their GPU by worker name.
    """
    with _loopback_cluster(workers, threads, GPU_WORKER_MALLOC) as client:
        yield client, ClusterInfo("cuda", workers, threads, None, None, "cuda:worker")


@contextlib.contextmanager
def _remote(address: str | None, *, scheduler_file: str | None = None,
            security: Any = None, what: str | None = None) -> Iterator[tuple[Client, ClusterInfo]]:
    """Join the scheduler at ``address`` (or the one ``scheduler_file`` names)."""
    from distributed import Client

    what = what or str(address)
    try:
        if scheduler_file is not None:
            client = Client(scheduler_file=scheduler_file, security=security, timeout="20s")
        else:
            client = Client(address, security=security, timeout="20s")
    except (OSError, TypeError) as exc:  # TypeError: tls:// without TLS config (docs/security.md)
        raise UsageError(
            f"`cluster` {what}: cannot reach a dask scheduler there ({exc}); "
            "start one with 'dask scheduler' or check the address"
        ) from None
    with client:
        info = client.scheduler_info()
        workers = info.get("workers", {})
        threads = max((w.get("nthreads", 1) for w in workers.values()), default=1)
        has_gpu = any("GPU" in (w.get("resources") or {}) for w in workers.values())
        yield client, ClusterInfo(
            "remote", len(workers), threads, None, {"GPU": 1} if has_gpu else None
        )


# --- clusters of a spec file (engine/cluster_spec.py) -----------------------------------

# Where the clusters below put their scheduler's dashboard: loopback only, as the local
# clusters do (it shows paths and logs, and has no auth); ssh -L to look at it.
SPEC_DASHBOARD = "127.0.0.1:0"
# The workers of SLURM jobs and Kubernetes pods start as the local ones do, through
# their environment, the one setting they share: pausing off (LOCAL_CLUSTER_CONFIG)
# and the heap thresholds, which their nannies hand to the worker processes (dask
# merges a dict from the environment into its default pre-spawn environment, which
# otherwise sets MALLOC_TRIM_THRESHOLD_=65536 over any exported value). The arenas
# stay: a spec's workers may run several threads.
SPEC_WORKER_ENV = {
    "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE": "False",
    "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": repr(HEAP_THRESHOLDS),
}
# What `python -m` runs on a SLURM job's GPU node: dask-cuda's `dask cuda worker`
# (dask_cuda/cli.py runs its worker command as __main__), one worker per GPU.
SLURM_GPU_WORKER = "dask_cuda.cli"


@contextlib.contextmanager
def _from_spec(spec: ClusterSpec) -> Iterator[tuple[Client, ClusterInfo]]:
    if isinstance(spec, SlurmSpec):
        with _slurm(spec) as connected:
            yield connected
    elif isinstance(spec, KubernetesSpec):
        with _kubernetes(spec) as connected:
            yield connected
    else:
        with _scheduler(spec) as connected:
            yield connected


def _missing(spec: ClusterSpec, package: str, extra: str, exc: ImportError) -> UsageError:
    return UsageError(f"`cluster` {spec.where()}: kind {spec.kind} needs {package} ({exc}); "
                      f"install it with pip install 'unet-tiles[{extra}]'")


def slurm_cluster(spec: SlurmSpec) -> Any:
    """dask-jobqueue's ``SLURMCluster`` for ``spec``, its scheduler started here and no
    job submitted yet (``scale`` submits them; ``job_script()`` shows one)."""
    try:
        from dask_jobqueue.slurm import SLURMCluster
    except ImportError as exc:
        raise _missing(spec, "dask-jobqueue", "slurm", exc) from None
    extra = dict(spec.extra)
    directives = [f"--gres=gpu:{spec.gpus}"] if spec.gpus else []
    directives += extra.pop("job_extra_directives", [])
    worker_args = list(extra.pop("worker_extra_args", []))
    if spec.gpus:
        # Each block claims one unit of GPU; a worker has a unit per thread.
        worker_args = ["--resources", f"GPU={spec.threads_per_worker}", *worker_args]
        extra["worker_command"] = SLURM_GPU_WORKER
    extra["job_script_prologue"] = [*(f"export {name}={shlex.quote(value)}"
                                      for name, value in SPEC_WORKER_ENV.items()),
                                    *extra.get("job_script_prologue", [])]
    extra["scheduler_options"] = {"dashboard_address": SPEC_DASHBOARD,
                                  **extra.get("scheduler_options", {})}
    given: dict[str, Any] = {
        "queue": spec.partition, "account": spec.account, "walltime": spec.walltime,
        "python": spec.python, "local_directory": spec.local_directory,
        "log_directory": spec.log_directory}
    return SLURMCluster(
        n_workers=0,
        cores=spec.cores,
        memory=spec.memory,
        processes=spec.worker_processes,
        job_extra_directives=directives,
        worker_extra_args=worker_args,
        silence_logs=logging.CRITICAL,
        **{key: value for key, value in given.items() if value is not None},
        **extra,
    )


@contextlib.contextmanager
def _slurm(spec: SlurmSpec) -> Iterator[tuple[Client, ClusterInfo]]:
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError as exc:
        raise _missing(spec, "dask-jobqueue", "slurm", exc) from None
    if shutil.which("sbatch") is None:
        raise UsageError(
            f"`cluster` {spec.where()}: kind slurm submits its jobs with sbatch, which is not "
            "on PATH here; run unet-tiles on a machine of the SLURM cluster (a login node)")
    from distributed import Client

    with slurm_cluster(spec) as cluster:
        cluster.scale(jobs=spec.jobs)
        with Client(cluster) as client:
            threads = spec.threads_per_worker
            workers = spec.jobs * spec.worker_processes
            if spec.gpus:
                yield client, ClusterInfo("slurm", workers, threads, None, {"GPU": 1})
            else:
                torch_threads = max(1, spec.cores // (spec.worker_processes * threads))
                yield client, ClusterInfo("slurm", workers, threads, torch_threads)


def kubernetes_manifest(spec: KubernetesSpec) -> dict[str, Any]:
    """The ``DaskCluster`` resource of ``spec``: dask-kubernetes' ``make_cluster_spec``,
    with ``resources`` on the workers only (the scheduler needs no GPU) and, for GPU
    workers, ``dask cuda worker`` with a ``GPU`` resource per thread."""
    try:
        from dask_kubernetes.operator import make_cluster_spec
    except ImportError as exc:
        raise _missing(spec, "dask-kubernetes", "kubernetes", exc) from None
    threads = spec.threads
    command = ["dask", "cuda", "worker"] if spec.gpus else ["dask", "worker"]
    command += ["--nthreads", str(threads)]
    if spec.gpus:
        command += ["--resources", f"GPU={threads}"]
    manifest: dict[str, Any] = make_cluster_spec(
        name=spec.name, image=spec.image, n_workers=spec.n_workers,
        env={**SPEC_WORKER_ENV, **spec.env}, worker_command=command,
        scheduler_service_type=spec.scheduler_service_type)
    worker = manifest["spec"]["worker"]["spec"]["containers"][0]
    if spec.resources:
        worker["resources"] = {part: dict(amounts) for part, amounts in spec.resources.items()}
    without_none: dict[str, Any] = _without_none(manifest)
    return without_none


def _without_none(value: Any) -> Any:
    """``value`` without the None entries of its mappings (the API server's schemas
    have no nulls: ``env: null`` is "no env")."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def _kube_credentials() -> bool:
    return bool(os.environ.get("KUBECONFIG") or os.environ.get("KUBERNETES_SERVICE_HOST")
                or Path("~/.kube/config").expanduser().is_file())


@contextlib.contextmanager
def _kubernetes(spec: KubernetesSpec) -> Iterator[tuple[Client, ClusterInfo]]:
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as exc:
        raise _missing(spec, "dask-kubernetes", "kubernetes", exc) from None
    if not _kube_credentials():
        raise UsageError(
            f"`cluster` {spec.where()}: kind kubernetes found no Kubernetes credentials "
            "(no KUBECONFIG, ~/.kube/config or in-cluster service account); set kubectl up "
            "for the cluster that runs the dask-kubernetes operator")
    from distributed import Client

    manifest = kubernetes_manifest(spec)
    try:
        cluster = KubeCluster(custom_cluster_spec=manifest, namespace=spec.namespace,
                              shutdown_on_close=True, quiet=True)
    except (ValueError, OSError, TimeoutError) as exc:
        raise UsageError(
            f"`cluster` {spec.where()}: cannot create the DaskCluster {spec.name!r} ({exc}); "
            "check kubectl's context and that the dask-kubernetes operator runs there"
        ) from None
    with cluster, Client(cluster) as client:
        workers = spec.n_workers * max(1, spec.gpus)
        if spec.gpus:
            yield client, ClusterInfo("kubernetes", workers, spec.threads, None, {"GPU": 1})
        else:
            yield client, ClusterInfo("kubernetes", workers, spec.threads, None)


@contextlib.contextmanager
def _scheduler(spec: SchedulerSpec) -> Iterator[tuple[Client, ClusterInfo]]:
    for key in ("scheduler_file", "ca_file", "cert", "key"):
        path = getattr(spec, key)
        if path is not None and not Path(path).is_file():
            raise UsageError(f"`cluster` {spec.where(key)}: {key!r} {path}: no such file")
    security = None
    if spec.tls:
        from distributed import Security

        security = Security(tls_ca_file=spec.ca_file, tls_client_cert=spec.cert,
                            tls_client_key=spec.key, require_encryption=True)
    what = f"{spec.where('address' if spec.address else 'scheduler_file')} " + (
        spec.address or f"(scheduler file {spec.scheduler_file})")
    with _remote(spec.address, scheduler_file=spec.scheduler_file, security=security,
                 what=what) as connected:
        yield connected
