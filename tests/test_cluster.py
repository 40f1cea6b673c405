"""connect(): what the clusters it starts or joins look like, and the specs it refuses.

Already checked elsewhere and not repeated here: the local cluster listens on
127.0.0.1 only (test_security.py), and in a fresh process two clusters in a row
get MALLOC_MMAP_THRESHOLD_, MALLOC_ARENA_MAX and the 1 s tick while the driver's
tick comes back to 20ms (test_segment.py::test_two_local_clusters_in_a_fresh_process).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from unet_tiles.engine.cluster import (
    CPU_WORKER_MALLOC,
    LOCAL_CLUSTER_CONFIG,
    ClusterInfo,
    connect,
    gpus_present,
    usable_cores,
)
from unet_tiles.errors import UsageError

HAS_DASK_CUDA = importlib.util.find_spec("dask_cuda") is not None


def _worker_settings() -> dict[str, Any]:
    import dask

    return {
        "environ": {name: os.environ.get(name) for name in
                    [*CPU_WORKER_MALLOC, "OMP_NUM_THREADS"]},
        "config": {key: dask.config.get(key) for key in LOCAL_CLUSTER_CONFIG},
    }


def _scheduler_config() -> dict[str, Any]:
    import dask

    return {key: dask.config.get(key) for key in LOCAL_CLUSTER_CONFIG}


def _pause_fraction(dask_worker: Any) -> Any:
    return dask_worker.memory_manager.memory_pause_fraction


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = copy.deepcopy(value)
    # distributed's scheduler appends "missing_bokeh" to this list in place each time it
    # starts without bokeh: its own doing, not the config that connect() sets.
    out.pop("distributed.scheduler.http.routes", None)
    return out


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.mark.cluster
def test_local_cpu_cluster_info_workers_and_config(no_gpus: None) -> None:
    import dask
    import distributed  # noqa: F401  (its defaults are part of the config compared)

    cores = usable_cores()
    before = _flat(dask.config.config)
    with connect("local", workers=1) as (client, info):  # no GPU: local means cpu
        assert info == ClusterInfo("cpu", workers=1, threads_per_worker=1,
                                   torch_threads=cores, resources=None, device=None)
        assert list(client.nthreads().values()) == [1]
        (settings,) = client.run(_worker_settings).values()
        assert settings["environ"] == {**CPU_WORKER_MALLOC, "OMP_NUM_THREADS": "1"}
        assert settings["config"] == LOCAL_CLUSTER_CONFIG
        assert client.run_on_scheduler(_scheduler_config) == LOCAL_CLUSTER_CONFIG
        # The worker's profiler is off: no samples (distributed's default takes ~150 in
        # the 1.5 s a task sleeps here).
        client.submit(time.sleep, 1.5, pure=False).result()
        profile = client.profile()
        assert profile["count"] == 0
        # Pausing is off in the worker's memory manager itself (engine/paused.py).
        (pause,) = client.run(_pause_fraction).values()
        assert pause is False
    # The driver's whole dask config is as it was, not just the keys set.
    assert _flat(dask.config.config) == before


@pytest.mark.cluster
def test_torch_threads_share_the_cores_among_worker_threads() -> None:
    cores = usable_cores()
    with connect("cpu", workers=1, threads_per_worker=2) as (client, info):
        assert (info.kind, info.workers, info.threads_per_worker) == ("cpu", 1, 2)
        assert info.torch_threads == max(1, cores // 2)
        assert list(client.nthreads().values()) == [2]


CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
# In a private mount namespace: a cgroup v1 cpu group of its own, seen where a
# container sees its cgroup (dask.system reads the quota there), joined, then Python.
IN_CGROUP = """set -e
mount --make-rprivate /
mkdir -p "$1/group" && mount --bind "$2" "$1/group"
mount -t tmpfs none /sys/fs/cgroup
mkdir /sys/fs/cgroup/cpu,cpuacct && mount --bind "$1/group" /sys/fs/cgroup/cpu,cpuacct
echo $$ > /sys/fs/cgroup/cpu,cpuacct/cgroup.procs
exec "$3" -c "$4"
"""
WORKERS_STARTED = """
from unet_tiles.engine.cluster import connect
with connect("cpu") as (client, info):
    print(info.workers, len(client.nthreads()), info.torch_threads)
"""


@pytest.mark.cluster
@pytest.mark.skipif(os.geteuid() != 0 or not (CGROUP_V1_CPU / "cpu.cfs_quota_us").exists()
                    or not shutil.which("unshare") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs root, cgroup v1's cpu controller, unshare and 2+ cores")
@pytest.mark.parametrize("quota_us", [-1, 100_000])
def test_the_local_cluster_counts_a_containers_cpu_limit(tmp_path: Path, quota_us: int,
                                                         no_gpus: None) -> None:
    """A container or pod limited to 1 CPU (a cgroup CPU quota, Docker's ``--cpus 1``, a
    Kubernetes CPU limit) on a host with more cores gets a one-worker local cluster,
    not a worker per host core; without a quota, one per core it may run on."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode:
        pytest.skip("no mount namespaces here (unshare -m needs CAP_SYS_ADMIN)")
    group = CGROUP_V1_CPU / f"unet-tiles-test-{os.getpid()}-{quota_us}"
    try:
        group.mkdir()
    except OSError as exc:  # a read-only cgroup mount, as in most containers
        pytest.skip(f"cannot make a cgroup: {exc}")
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text(str(quota_us))
        done = subprocess.run(["unshare", "-m", "sh", "-c", IN_CGROUP, "sh", str(tmp_path),
                               str(group), sys.executable, WORKERS_STARTED],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        _remove_cgroup(group)
    cores = len(os.sched_getaffinity(0))
    expected = (cores, cores, 1) if quota_us < 0 else (1, 1, 1)
    assert tuple(map(int, done.stdout.split())) == expected


def _remove_cgroup(group: Path, timeout_s: float = 30.0) -> None:
    """rmdir a cgroup once it is empty: the cluster's processes may still be exiting
    after the driver has (EBUSY until then); what is left after a moment is killed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            group.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@pytest.mark.cluster
def test_joining_a_running_scheduler(client: Any) -> None:
    address = client.scheduler.address
    with connect(address) as (joined, info):
        assert joined.scheduler.address == address
        assert info == ClusterInfo("remote", workers=2, threads_per_worker=1,
                                   torch_threads=None, resources=None)
        assert joined.submit(sum, [1, 2, 3]).result() == 6
    # Leaving closes only the joined client; the cluster runs on.
    assert joined.status == "closed"
    assert client.submit(sum, [4, 5]).result() == 9


@pytest.mark.parametrize("spec", ["nonsense", "gpu", "CPU", "127.0.0.1:8786", ""])
def test_unknown_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError, match=rf"`cluster` '{spec}' is not one of local, cpu, cuda "
                                         r"or a scheduler address such as tcp://127\.0\.0\.1"):
        with connect(spec):
            pass


@pytest.mark.slow
def test_unreachable_scheduler_is_a_usage_error() -> None:
    # Port 9 (discard) refuses at once, but distributed retries until its connect
    # timeout (20 s in cluster._remote): bounded, not instant.
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"`cluster` tcp://127\.0\.0\.1:9: cannot reach a dask "
                                         r"scheduler there .*start one with 'dask scheduler'"):
        with connect("tcp://127.0.0.1:9"):
            pass
    assert time.monotonic() - started < 40


def test_tls_without_tls_config_is_a_usage_error() -> None:
    started = time.monotonic()
    with pytest.raises(UsageError, match=r"`cluster` tls://127\.0\.0\.1:9: cannot reach .*TLS"):
        with connect("tls://127.0.0.1:9"):
            pass
    assert time.monotonic() - started < 5


def test_cuda_without_a_gpu_is_a_usage_error(no_gpus: None) -> None:
    assert gpus_present() == 0
    message = "`cluster` cuda found no GPU; use `cluster` cpu" if HAS_DASK_CUDA else \
        r"`cluster` cuda needs dask-cuda .*pip install 'unet-tiles\[gpu\]'"
    with pytest.raises(UsageError, match=message):
        with connect("cuda"):
            pass


@pytest.mark.skipif(HAS_DASK_CUDA, reason="would start a CUDA cluster")
def test_local_with_gpus_but_no_dask_cuda_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(UsageError, match="needs dask-cuda"):
        with connect("local"):
            pass


@pytest.mark.parametrize(("visible", "count"), [
    ("", 0), ("-1", 0), ("0", 1), ("0,1", 2), ("0, 2, 3", 3), ("GPU-3f2a,GPU-77b1", 2)])
def test_gpus_present_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch,
                                                   visible: str, count: int) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpus_present() == count


@pytest.mark.cluster
def test_the_drivers_environment_is_left_as_it_was() -> None:
    """Nannies set the workers' pre-spawn environment in the driver process; a
    cluster's end must put the driver's back (one malloc arena, one OpenMP thread)."""
    import os

    from unet_tiles.engine.cluster import CPU_WORKER_MALLOC

    names = [*CPU_WORKER_MALLOC, "OMP_NUM_THREADS"]
    before = {name: os.environ.get(name) for name in names}
    with connect("cpu", workers=1) as (client, _info):
        inside = client.run(lambda: os.environ.get("MALLOC_ARENA_MAX"))
    assert set(inside.values()) == {"1"}
    assert {name: os.environ.get(name) for name in names} == before
