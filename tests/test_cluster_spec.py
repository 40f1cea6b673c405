"""``--cluster FILE.yaml``: cluster specs (engine/cluster_spec.py) and the clusters that
engine/cluster.py builds from them; the examples and manifests in deploy/, checked
against dask-kubernetes' CRDs and the Kubernetes client's models; the GPU image's pins.

No SLURM or Kubernetes here: dask-jobqueue writes a job script without SLURM, the
operator's ``DaskCluster`` is checked offline, and ``kind: scheduler`` joins a real
scheduler started in the test.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fault_helpers import external_cluster_fixture, spawn_fixture  # noqa: F401

from unet_tiles.engine import cluster as cluster_module
from unet_tiles.engine.cluster import (
    HEAP_THRESHOLDS,
    SPEC_WORKER_ENV,
    ClusterInfo,
    connect,
    kubernetes_manifest,
    slurm_cluster,
)
from unet_tiles.engine.cluster_spec import (
    KubernetesSpec,
    SchedulerSpec,
    SlurmSpec,
    is_spec_file,
    load_spec,
    spec_from_dict,
)
from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# A one-worker cluster in this process that joins over real TCP, on loopback only.
IN_PROCESS: dict[str, Any] = {"n_workers": 1, "processes": False, "protocol": "tcp://",
                              "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}


def write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_line_error(path: str) -> str:
    with pytest.raises(UsageError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


# --- parsing ---------------------------------------------------------------------------


def test_spec_files_are_told_from_kinds_and_addresses() -> None:
    assert is_spec_file("cluster.yaml")
    assert is_spec_file("deploy/Cluster.YML")
    assert not is_spec_file("local")
    assert not is_spec_file("cuda")
    assert not is_spec_file("tcp://host.yaml:8786")


def test_a_slurm_spec_with_every_key(tmp_path: Path) -> None:
    path = write(tmp_path, """\
kind: slurm
queue: gpu
account: lab
walltime: 24:00:00
cores: 16
memory: 128GB
processes: 4
jobs: 3
gpus: 4
python: /opt/venv/bin/python
local_directory: $TMPDIR
log_directory: logs
extra:
  job_script_prologue: [module load cuda]
  death_timeout: 120
  nanny: true
  scheduler_options: {port: 8786}
""")
    spec = load_spec(path)
    assert spec == SlurmSpec(
        cores=16, memory="128GB", partition="gpu", account="lab",
        # YAML 1.1 reads an unquoted 24:00:00 as 86400: the text as written is kept.
        walltime="24:00:00", processes=4, jobs=3, gpus=4, python="/opt/venv/bin/python",
        local_directory="$TMPDIR", log_directory="logs",
        extra={"job_script_prologue": ["module load cuda"], "death_timeout": 120,
               "nanny": True, "scheduler_options": {"port": 8786}})
    assert (spec.worker_processes, spec.threads_per_worker) == (4, 4)
    assert spec.where("gpus") == f"{path}:9"


def test_slurm_defaults_one_worker_per_gpu_else_per_core() -> None:
    gpu = spec_from_dict({"kind": "slurm", "cores": 8, "memory": "64GB", "gpus": 2})
    cpu = spec_from_dict({"kind": "slurm", "cores": 8, "memory": "64GB"})
    assert isinstance(gpu, SlurmSpec)
    assert isinstance(cpu, SlurmSpec)
    assert (gpu.jobs, gpu.worker_processes, gpu.threads_per_worker) == (1, 2, 4)
    assert (cpu.worker_processes, cpu.threads_per_worker) == (8, 1)


def test_a_kubernetes_spec(tmp_path: Path) -> None:
    path = write(tmp_path, """\
kind: kubernetes
name: seg-1
namespace: imaging
image: unet-tiles-gpu:1.0
n_workers: 3
resources:
  limits: {nvidia.com/gpu: 2, memory: 32Gi, cpu: 7.5}
  requests: {nvidia.com/gpu: "2"}
env: {OMP_NUM_THREADS: 1, MODE: fast}
""")
    spec = load_spec(path)
    assert spec == KubernetesSpec(
        name="seg-1", namespace="imaging", image="unet-tiles-gpu:1.0", n_workers=3,
        # Quantities as strings, as the DaskCluster CRD has them.
        resources={"limits": {"nvidia.com/gpu": "2", "memory": "32Gi", "cpu": "7.5"},
                   "requests": {"nvidia.com/gpu": "2"}},
        env={"OMP_NUM_THREADS": "1", "MODE": "fast"})
    assert isinstance(spec, KubernetesSpec)
    assert (spec.gpus, spec.threads) == (2, 2)


def test_a_scheduler_spec_resolves_paths_next_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    path = write(tmp_path, "kind: scheduler\naddress: tls://10.0.0.5:8786\n"
                           "ca_file: tls/ca.pem\ncert: tls/client.pem\n")
    spec = load_spec(path)
    assert spec == SchedulerSpec(address="tls://10.0.0.5:8786",
                                 ca_file=str(tmp_path / "tls" / "ca.pem"),
                                 cert=str(tmp_path / "tls" / "client.pem"))
    assert isinstance(spec, SchedulerSpec)
    assert spec.tls


def test_merge_keys_give_way_to_the_files_own(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: slurm\nbase: &base {cores: 4, memory: 8GB}\n")
    # A key that only holds an anchor is still a key of the spec.
    assert "unknown key 'base'" in one_line_error(path)
    path = write(tmp_path, "kind: slurm\n<<: {cores: 4, memory: 8GB}\ncores: 8\n")
    spec = load_spec(path)
    assert isinstance(spec, SlurmSpec)
    assert (spec.cores, spec.memory) == (8, "8GB")


SLURM = "kind: slurm\ncores: 4\nmemory: 8GB\n"
KUBE = "kind: kubernetes\nname: seg\nimage: img\n"


@pytest.mark.parametrize(("text", "line", "expected"), [
    # unknown keys, with the closest known one
    (SLURM + "coress: 4\n", 4, "unknown key 'coress' in a slurm spec (did you mean 'cores'?)"),
    (KUBE + "workers: 2\n", 4, "unknown key 'workers' in a kubernetes spec"),
    ("kind: scheduler\naddress: tcp://h:1\nsecurity: {}\n", 3, "unknown key 'security'"),
    (SLURM + "extra:\n  worker_command: x\n", 5, "'extra' may not set 'worker_command'"),
    (SLURM + "extra:\n  job_extra_directive: [x]\n", 5,
     "(did you mean 'job_extra_directives'?)"),
    # the kind
    ("cores: 4\nmemory: 8GB\n", 1, "'kind' must be one of slurm, kubernetes, scheduler, got none"),
    ("\n\nkind: pbs\n", 3, "'kind' must be one of slurm, kubernetes, scheduler, got 'pbs'"),
    ("kind: [slurm]\n", 1, "'kind' must be one of slurm, kubernetes, scheduler, got a list"),
    ("- kind: slurm\n", 1, "a cluster spec must be a mapping with a 'kind'"),
    # missing required keys: the line of the mapping, or of the null
    ("kind: slurm\ncores: 4\n", 1, "a slurm spec needs 'memory'"),
    ("kind: slurm\ncores: 4\nmemory:\n", 3, "a slurm spec needs 'memory'"),
    ("kind: kubernetes\nname: seg\n", 1, "a kubernetes spec needs 'image'"),
    ("kind: scheduler\n", 1, "a scheduler spec needs one of 'address' and 'scheduler_file'"),
    # wrong types and values
    ("kind: slurm\ncores: four\nmemory: 8GB\n", 2,
     "'cores' must be an integer of at least 1, got 'four'"),
    ("kind: slurm\ncores: 0\nmemory: 8GB\n", 2, "'cores' must be at least 1, got 0"),
    ("kind: slurm\ncores: true\nmemory: 8GB\n", 2, "'cores' must be an integer"),
    (SLURM + "jobs: -1\n", 4, "'jobs' must be at least 0, got -1"),
    ("kind: slurm\ncores: 4\nmemory: lots\n", 3, "'memory' must be an amount of memory"),
    (SLURM + "walltime: tomorrow\n", 4, "'walltime' must be a SLURM time such as 24:00:00"),
    (SLURM + "partition: [a, b]\n", 4, "'partition' must be a non-empty string, got a list"),
    (SLURM + "partition: a\nqueue: b\n", 5, "'queue' and 'partition' are the same setting"),
    (SLURM + "gpus: 2\nprocesses: 1\n", 5, "'processes' must equal 'gpus' (2)"),
    (SLURM + "processes: 8\n", 4, "'processes' (8) must be at most 'cores' (4)"),
    (SLURM + "gpus: 8\n", 4, "'gpus' (8) needs at least as many 'cores', got 4"),
    (SLURM + "extra:\n  job_script_prologue: [ok, 3]\n", 5,
     "each item of 'extra.job_script_prologue' must be a string, got 3"),
    (SLURM + "extra:\n  nanny: yes please\n", 5, "'extra.nanny' must be true or false"),
    (SLURM + "extra: [a]\n", 4, "'extra' must be a mapping, got a list"),
    ("kind: kubernetes\nname: Seg_1\nimage: img\n", 2, "'name' must be a Kubernetes name"),
    (KUBE + "namespace: " + "a" * 64 + "\n", 4, "'namespace' must be a Kubernetes name"),
    (KUBE + "n_workers: 1.5\n", 4, "'n_workers' must be an integer"),
    (KUBE + "resources:\n  limit: {cpu: 1}\n", 5, "'resources' has 'limits' and 'requests'"),
    (KUBE + "resources:\n  limits:\n    nvidia.com/gpu: one\n", 6,
     "'resources.limits.nvidia.com/gpu' must be an integer"),
    (KUBE + "resources:\n  limits:\n    memory: [1]\n", 6,
     "'resources.limits.memory' must be a quantity"),
    (KUBE + "resources:\n  requests: {nvidia.com/gpu: 1}\n", 4,
     "'resources' must give nvidia.com/gpu in 'limits'"),
    (KUBE + "env:\n  1BAD NAME: x\n", 5, "'1BAD NAME' is not an environment variable name"),
    (KUBE + "env:\n  A: {b: c}\n", 5, "'env.A' must be a string or a number, got a mapping"),
    (KUBE + "scheduler_service_type: Ingress\n", 4,
     "'scheduler_service_type' must be one of ClusterIP, NodePort, LoadBalancer"),
    ("kind: scheduler\naddress: host:8786\n", 2, "'address' must be a scheduler address"),
    ("kind: scheduler\naddress: tcp://h:1\nscheduler_file: s.json\n", 3, ", not both"),
    ("kind: scheduler\naddress: tls://h:1\nkey: k.pem\n", 3,
     "TLS needs 'ca_file' and 'cert' (and 'key' unless the cert holds it); 'ca_file' is missing"),
    ("kind: scheduler\naddress: tcp://h:1\nca_file: ca.pem\ncert: c.pem\n", 2,
     "'address' must be tls://... with 'ca_file', 'cert'"),
    # the file
    (SLURM + "cores: 8\n", 4, "'cores' is set twice (first on line 2)"),
    ("kind: slurm\ncores: [4\n", 3, "invalid YAML"),
    ("kind: slurm\n3: x\n", 2, "keys must be names, got 3"),
    ("a: &a [*a]\n", 1, "nested more than 64 levels deep (a self-referencing alias?)"),
])
def test_each_problem_is_one_line_with_file_line_and_key(tmp_path: Path, text: str, line: int,
                                                         expected: str) -> None:
    path = write(tmp_path, text)
    message = one_line_error(path)
    assert message.startswith(f"{path}:{line}: "), message
    assert expected in message, message


@pytest.mark.parametrize(("text", "expected"), [
    (None, "no such cluster spec file"),
    ("", "the cluster spec is empty; it needs a 'kind'"),
    ("# only a comment\n", "the cluster spec is empty"),
])
def test_a_missing_or_empty_file(tmp_path: Path, text: str | None, expected: str) -> None:
    path = str(tmp_path / "spec.yaml")
    if text is not None:
        Path(path).write_text(text)
    message = one_line_error(path)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_a_dict_spec_names_no_line() -> None:
    with pytest.raises(UsageError, match=r"^cluster spec: a slurm spec needs 'cores'$"):
        spec_from_dict({"kind": "slurm", "memory": "8GB"})
    with pytest.raises(UsageError, match=r"^mine: unknown key 'x' in a scheduler spec"):
        spec_from_dict({"kind": "scheduler", "x": 1}, source="mine")


# --- the examples in deploy/ -------------------------------------------------------------


def deploy_examples() -> list[Path]:
    return sorted(DEPLOY.glob("cluster-*.y*ml"))


def test_deploy_has_an_example_of_each_kind() -> None:
    kinds = {load_spec(str(path)).kind for path in deploy_examples()}
    assert kinds == {"slurm", "kubernetes", "scheduler"}


@pytest.mark.parametrize("path", deploy_examples(), ids=lambda p: p.name)
def test_every_example_in_deploy_parses(path: Path) -> None:
    spec = load_spec(str(path))
    assert spec.source == str(path)
    assert path.read_text().startswith("#"), "an example says what it is for"
    if isinstance(spec, SlurmSpec):
        assert spec.gpus
        assert spec.partition
        assert spec.walltime
        script = _job_script(spec)
        assert f"--gres=gpu:{spec.gpus}" in script
    elif isinstance(spec, KubernetesSpec):
        manifest = kubernetes_manifest(spec)
        assert crd_problems(manifest) == []
        assert pod_problems(manifest) == []
    else:
        assert spec.address or spec.scheduler_file


# --- SLURM: the job script, without SLURM ---------------------------------------------------


def _job_script(spec: SlurmSpec) -> str:
    cluster = slurm_cluster(spec)
    try:
        return str(cluster.job_script())
    finally:
        cluster.close()


def test_a_gpu_job_script_asks_for_the_gpus_and_runs_dask_cuda_workers() -> None:
    spec = spec_from_dict({
        "kind": "slurm", "partition": "gpu-a100", "account": "lab", "walltime": "1-00:00:00",
        "cores": 16, "memory": "128GB", "gpus": 4, "jobs": 2,
        "local_directory": "$TMPDIR", "log_directory": "logs",
        "extra": {"job_extra_directives": ["--constraint=a100"],
                  "job_script_prologue": ["module load cuda/12"],
                  "worker_extra_args": ["--pre-import", "torch"]}})
    assert isinstance(spec, SlurmSpec)
    script = _job_script(spec)
    lines = script.splitlines()
    assert "#SBATCH -p gpu-a100" in lines
    assert "#SBATCH -A lab" in lines
    assert "#SBATCH -t 1-00:00:00" in lines
    assert "#SBATCH --cpus-per-task=16" in lines
    assert "#SBATCH --gres=gpu:4" in lines
    assert "#SBATCH --constraint=a100" in lines
    assert "#SBATCH -o logs/dask-worker-%J.out" in lines
    assert "module load cuda/12" in lines
    # Pausing off on the workers, as on local clusters (engine/paused.py).
    assert "export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False" in lines
    # The heap thresholds, for the nanny's pre-spawn environment: what a shell running
    # the job script's exports gives dask there (run for real below).
    exports = [line for line in lines if line.startswith("export DASK_")]
    assert _dask_config_after(exports) == {
        "pause": False,
        "environ": {**HEAP_THRESHOLDS, "OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                    "OPENBLAS_NUM_THREADS": 1}}
    (command,) = [line for line in lines if " -m " in line]
    # dask-cuda's `dask cuda worker` (dask_cuda/cli.py), a GPU unit per thread; no
    # --nworkers: it starts one worker per GPU of the job itself.
    assert f"{sys.executable} -m dask_cuda.cli tcp://" in command
    assert "--nthreads 4 " in command
    assert "--resources GPU=4" in command
    assert "--pre-import torch" in command
    assert "--local-directory $TMPDIR" in command
    assert "--nworkers" not in command


def _dask_config_after(exports: list[str]) -> dict[str, Any]:
    """The worker settings dask reads in a fresh Python after bash ran ``exports``."""
    program = ("import dask, distributed, json; print(json.dumps({"
               "'pause': dask.config.get('distributed.worker.memory.pause'), "
               "'environ': dask.config.get('distributed.nanny.pre-spawn-environ')}))")
    script = "\n".join([*exports, f"exec {shlex.quote(sys.executable)} -c {shlex.quote(program)}"])
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                          timeout=60)
    settings: dict[str, Any] = json.loads(done.stdout)
    return settings


def test_the_spec_workers_environment_reaches_a_real_nannys_worker(
        external_cluster: Callable[..., Any]) -> None:
    """``dask worker`` (a nanny and its worker process) started in the environment
    SLURM jobs and Kubernetes pods get: the worker runs pausing off and with the heap
    thresholds, which the nanny would otherwise set to its own trim threshold."""
    names = list(HEAP_THRESHOLDS)

    def worker_settings() -> dict[str, Any]:  # pickled by value: tests/ is not on workers
        import os

        import dask

        return {"pause": dask.config.get("distributed.worker.memory.pause"),
                **{name: os.environ.get(name) for name in names}}

    _address, client = external_cluster(nworkers=1, env=SPEC_WORKER_ENV)
    (seen,) = client.run(worker_settings).values()
    assert seen == {"pause": False, **HEAP_THRESHOLDS}


def test_a_cpu_job_script_runs_one_plain_worker_per_core() -> None:
    spec = spec_from_dict({"kind": "slurm", "cores": 4, "memory": "8GB",
                           "python": "/shared/venv/bin/python"})
    assert isinstance(spec, SlurmSpec)
    script = _job_script(spec)
    assert "--gres" not in script
    assert "dask_cuda" not in script
    assert "GPU=" not in script
    assert "/shared/venv/bin/python -m distributed.cli.dask_worker tcp://" in script
    assert "--nthreads 1 " in script
    assert "--nworkers 4 " in script


def _fake_slurm_cluster() -> Any:
    """A LocalCluster standing in for SLURMCluster: records what was scaled."""
    from distributed import LocalCluster

    class FakeSlurmCluster(LocalCluster):  # type: ignore[misc]
        scaled: dict[str, int] | None = None

        def scale(self, n: int = 0, jobs: int | None = None, **kwargs: Any) -> None:
            if jobs is None:
                super().scale(n, **kwargs)
            else:
                self.scaled = {"jobs": jobs}

    return FakeSlurmCluster(**IN_PROCESS)


@pytest.mark.parametrize(("gpus", "expected"), [
    (2, ClusterInfo("slurm", 6, 4, None, {"GPU": 1})),
    (0, ClusterInfo("slurm", 24, 1, 1, None)),
])
def test_slurm_connect_scales_to_the_jobs_and_reports_its_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gpus: int,
        expected: ClusterInfo) -> None:
    fakes: list[Any] = []

    def fake(spec: SlurmSpec) -> Any:
        fakes.append(_fake_slurm_cluster())
        return fakes[-1]

    monkeypatch.setattr(cluster_module, "slurm_cluster", fake)
    monkeypatch.setattr(cluster_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    path = write(tmp_path, f"kind: slurm\ncores: 8\nmemory: 64GB\njobs: 3\ngpus: {gpus}\n")
    with connect(path) as (client, info):
        assert info == expected
        assert client.submit(sum, [1, 2]).result() == 3
    assert fakes[0].scaled == {"jobs": 3}


def test_slurm_without_sbatch_is_a_usage_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    path = write(tmp_path, SLURM)
    with pytest.raises(UsageError, match=rf"^`cluster` {re.escape(path)}:1: kind slurm submits "
                                         r"its jobs with sbatch, which is not on PATH here"):
        with connect(path):
            pass


@pytest.mark.parametrize(("text", "modules", "extra"), [
    (SLURM, ["dask_jobqueue", "dask_jobqueue.slurm"], "slurm"),
    (KUBE, ["dask_kubernetes", "dask_kubernetes.operator"], "kubernetes"),
])
def test_a_missing_library_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           text: str, modules: list[str], extra: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    path = write(tmp_path, text)
    with pytest.raises(UsageError, match=re.escape(f"pip install 'unet-tiles[{extra}]'")):
        with connect(path):
            pass


# --- Kubernetes: the manifests against the operator's CRDs and the client's models ----------


def _shipped_crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of each CRD that dask-kubernetes ships."""
    import dask_kubernetes
    import yaml

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(Path(dask_kubernetes.__file__).parent.rglob("*.yaml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError:
            continue  # helm templates
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            for version in doc["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                if "$ref" in schema:
                    continue  # a template the package builds its CRDs from
                found[(f"{doc['spec']['group']}/{version['name']}",
                       doc["spec"]["names"]["kind"])] = schema
    return found


CRDS = _shipped_crds()


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused: kubectl's default field validation
    (strict) rejects them, where jsonschema would let them through."""
    if isinstance(schema, dict):
        if (schema.get("type") == "object" and "properties" in schema
                and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def crd_problems(doc: dict[str, Any]) -> list[str]:
    """Where ``doc`` breaks the CRD of its kind (empty: it fits)."""
    import jsonschema

    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in CRDS:
        return [f"no CRD for {key} among {sorted(CRDS)}"]
    schema = _strict(copy.deepcopy(CRDS[key]))  # type: ignore[index]
    problems = []
    name = doc.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        problems.append(f"metadata.name {name!r} is not a Kubernetes name")
    # apiVersion, kind and metadata are every object's, not in the CRD's schema.
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    for error in jsonschema.Draft7Validator(schema).iter_errors(body):
        where = ".".join(map(str, error.absolute_path))
        problems.append(f"{where}: {error.message}")
    return problems


class _Response:
    """What ApiClient.deserialize reads: an HTTP response's ``data``."""

    def __init__(self, body: Any) -> None:
        self.data = json.dumps(body)


def _lost(original: Any, parsed: Any, where: str = "") -> list[str]:
    """The fields of ``original`` that the model dropped or changed."""
    if isinstance(original, dict):
        if not isinstance(parsed, dict):
            return [f"{where}: not a mapping"]
        out = []
        for key, value in original.items():
            if key not in parsed:
                out.append(f"{where}.{key}: unknown to the model")
            else:
                out.extend(_lost(value, parsed[key], f"{where}.{key}"))
        return out
    if isinstance(original, list):
        if not isinstance(parsed, list) or len(parsed) != len(original):
            return [f"{where}: not the same list"]
        return [p for i, (a, b) in enumerate(zip(original, parsed, strict=True))
                for p in _lost(a, b, f"{where}[{i}]")]
    return [] if str(original) == str(parsed) else [f"{where}: {original!r} read as {parsed!r}"]


def pod_problems(doc: dict[str, Any]) -> list[str]:
    """What the Kubernetes client's models refuse or drop in the pod specs (and the
    scheduler's service) of a DaskCluster."""
    from kubernetes.client import ApiClient

    parts = [("spec.worker.spec", doc["spec"]["worker"]["spec"], "V1PodSpec"),
             ("spec.scheduler.spec", doc["spec"]["scheduler"]["spec"], "V1PodSpec"),
             ("spec.scheduler.service", doc["spec"]["scheduler"]["service"], "V1ServiceSpec")]
    problems = []
    with ApiClient() as api:
        for where, body, model in parts:
            try:
                parsed = api.sanitize_for_serialization(api.deserialize(_Response(body), model))
            except (ValueError, TypeError) as exc:
                problems.append(f"{where}: {exc}")
                continue
            problems.extend(_lost(body, parsed, where))
    return problems


def _deploy_manifests() -> list[dict[str, Any]]:
    import yaml

    return [doc for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_dask_kubernetes_ships_the_crds_checked_here() -> None:
    assert ("kubernetes.dask.org/v1", "DaskCluster") in CRDS
    assert ("kubernetes.dask.org/v1", "DaskWorkerGroup") in CRDS


def test_the_deploy_manifest_fits_the_operators_crd() -> None:
    manifests = _deploy_manifests()
    assert [doc["kind"] for doc in manifests] == ["DaskCluster"]
    for doc in manifests:
        assert crd_problems(doc) == []
        assert pod_problems(doc) == []


@pytest.mark.parametrize("resources", [
    {"limits": {"nvidia.com/gpu": 2, "memory": "32Gi"}},
    {},
])
def test_the_manifest_connect_builds_fits_the_crd_and_the_models(
        resources: dict[str, Any]) -> None:
    spec = spec_from_dict({"kind": "kubernetes", "name": "seg", "image": "img:1",
                           "n_workers": 3, "resources": resources, "env": {"A": 1}})
    assert isinstance(spec, KubernetesSpec)
    manifest = kubernetes_manifest(spec)
    assert crd_problems(manifest) == []
    assert pod_problems(manifest) == []
    assert manifest["metadata"]["name"] == "seg"
    assert manifest["spec"]["worker"]["replicas"] == 3
    (worker,) = manifest["spec"]["worker"]["spec"]["containers"]
    (scheduler,) = manifest["spec"]["scheduler"]["spec"]["containers"]
    assert "resources" not in scheduler  # the scheduler needs no GPU
    # Pausing off on the workers, as on local clusters (engine/paused.py).
    assert worker["env"] == scheduler["env"] == [
        {"name": name, "value": value} for name, value in SPEC_WORKER_ENV.items()] + [
        {"name": "A", "value": "1"}]
    assert _dask_config_after([f"export {e['name']}={shlex.quote(e['value'])}"
                               for e in worker["env"]])["environ"]["MALLOC_TRIM_THRESHOLD_"] \
        == HEAP_THRESHOLDS["MALLOC_TRIM_THRESHOLD_"]
    if resources:
        assert worker["resources"] == {"limits": {"nvidia.com/gpu": "2", "memory": "32Gi"}}
        assert worker["args"][:7] == ["dask", "cuda", "worker", "--nthreads", "2",
                                      "--resources", "GPU=2"]
    else:
        assert "resources" not in worker
        assert worker["args"][:5] == ["dask", "worker", "--nthreads", "1", "--name"]


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["spec"]["worker"].update(replica=2), "'replica' was unexpected"),
    (lambda d: d["spec"]["worker"]["spec"]["containers"][0]["resources"].update(
        limits={"nvidia.com/gpu": 1}), "1 is not of type 'string'"),
    (lambda d: d["spec"]["worker"].update(replicas="two"), "'two' is not of type 'integer'"),
    (lambda d: d["metadata"].update(name="Seg_1"), "not a Kubernetes name"),
    (lambda d: d.update(apiVersion="kubernetes.dask.org/v2"), "no CRD for"),
])
def test_the_crd_check_catches_bad_manifests(change: Any, expected: str) -> None:
    spec = spec_from_dict({"kind": "kubernetes", "name": "seg", "image": "img",
                           "resources": {"limits": {"nvidia.com/gpu": 1}}})
    assert isinstance(spec, KubernetesSpec)
    manifest = kubernetes_manifest(spec)
    change(manifest)
    problems = crd_problems(manifest)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(("change", "expected"), [
    (lambda pod: pod["containers"][0].pop("name"), "Invalid value for `name`"),
    (lambda pod: pod["containers"][0].update(imagee="x"), ".imagee: unknown to the model"),
    (lambda pod: pod["containers"][0]["ports"][0].update(containerPort="http"),
     "invalid literal for int()"),
    (lambda pod: pod.pop("containers"), "Invalid value for `containers`"),
])
def test_the_pod_check_catches_bad_pod_specs(change: Any, expected: str) -> None:
    spec = spec_from_dict({"kind": "kubernetes", "name": "seg", "image": "img"})
    assert isinstance(spec, KubernetesSpec)
    manifest = kubernetes_manifest(spec)
    change(manifest["spec"]["worker"]["spec"])
    problems = pod_problems(manifest)
    assert any(expected in p for p in problems), problems


def _fake_kube_cluster(made: list[dict[str, Any]]) -> Any:
    """A LocalCluster standing in for KubeCluster: records how it was made."""
    from distributed import LocalCluster

    class FakeKubeCluster(LocalCluster):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)
            super().__init__(**IN_PROCESS)

    return FakeKubeCluster


def test_kubernetes_connect_creates_the_manifest_and_reports_gpu_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dask_kubernetes.operator

    made: list[dict[str, Any]] = []
    monkeypatch.setattr(dask_kubernetes.operator, "KubeCluster", _fake_kube_cluster(made))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    path = write(tmp_path, KUBE + "namespace: lab\nn_workers: 2\n"
                                  "resources: {limits: {nvidia.com/gpu: 2}}\n")
    with connect(path) as (client, info):
        assert info == ClusterInfo("kubernetes", 4, 2, None, {"GPU": 1})
        assert client.submit(sum, [1, 2]).result() == 3
    spec = load_spec(path)
    assert isinstance(spec, KubernetesSpec)
    assert made == [{"custom_cluster_spec": kubernetes_manifest(spec),
                                      "namespace": "lab", "shutdown_on_close": True,
                                      "quiet": True}]


def test_kubernetes_without_credentials_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    path = write(tmp_path, KUBE)
    with pytest.raises(UsageError, match=r"kind kubernetes found no Kubernetes credentials"):
        with connect(path):
            pass


# --- kind: scheduler, against a real scheduler --------------------------------------------


@pytest.fixture
def local_cluster() -> Any:
    from distributed import LocalCluster

    with LocalCluster(**IN_PROCESS) as cluster:
        yield cluster


def test_connect_joins_the_scheduler_of_a_spec(tmp_path: Path, local_cluster: Any) -> None:
    import dask

    before = copy.deepcopy(dask.config.config)
    path = write(tmp_path, f"# the test's cluster\nkind: scheduler\n"
                           f"address: {local_cluster.scheduler_address}\n")
    with connect(path) as (client, info):
        assert client.scheduler.address == local_cluster.scheduler_address
        assert (info.kind, info.workers, info.resources) == ("remote", 1, None)
        assert client.submit(sum, [1, 2, 3]).result() == 6
    assert client.status == "closed"
    assert dask.config.config == before


def test_connect_reads_a_scheduler_file_next_to_the_spec(tmp_path: Path,
                                                         local_cluster: Any) -> None:
    (tmp_path / "scheduler.json").write_text(
        json.dumps({"address": local_cluster.scheduler_address}))
    path = write(tmp_path, "kind: scheduler\nscheduler_file: scheduler.json\n")
    with connect(path) as (client, info):
        assert client.scheduler.address == local_cluster.scheduler_address
        assert info.kind == "remote"
        assert info.workers == 1


def test_a_missing_scheduler_or_tls_file_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "kind: scheduler\n\nscheduler_file: nowhere.json\n")
    with pytest.raises(UsageError, match=rf"^`cluster` {re.escape(path)}:3: 'scheduler_file' "
                                         r".*nowhere\.json: no such file$"):
        with connect(path):
            pass
    path = write(tmp_path, "kind: scheduler\naddress: tls://127.0.0.1:9\n"
                           "ca_file: ca.pem\ncert: cert.pem\n")
    with pytest.raises(UsageError, match=rf"{re.escape(path)}:3: 'ca_file'"):
        with connect(path):
            pass


def test_tls_options_become_a_security(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not read in this test")
    seen: dict[str, Any] = {}

    def fake_remote(address: str | None, **kwargs: Any) -> Any:
        seen.update(kwargs, address=address)
        raise UsageError("stop here")

    monkeypatch.setattr(cluster_module, "_remote", fake_remote)
    path = write(tmp_path, "kind: scheduler\naddress: tls://10.0.0.5:8786\n"
                           "ca_file: ca.pem\ncert: cert.pem\nkey: key.pem\n")
    with pytest.raises(UsageError, match="stop here"):
        with connect(path):
            pass
    security = seen["security"]
    assert seen["address"] == "tls://10.0.0.5:8786"
    assert seen["scheduler_file"] is None
    assert security.tls_ca_file == str(tmp_path / "ca.pem")
    assert security.tls_client_cert == str(tmp_path / "cert.pem")
    assert security.tls_client_key == str(tmp_path / "key.pem")
    assert security.require_encryption


def test_the_cluster_help_mentions_spec_files() -> None:
    import argparse

    from unet_tiles.cli.options import add_cluster_options

    parser = argparse.ArgumentParser()
    add_cluster_options(parser)
    (action,) = [a for a in parser._actions if a.dest == "cluster"]
    assert action.help is not None
    assert "FILE.yaml" in action.help


# --- the GPU image pins what constraints.txt pins -----------------------------------------


def constraints(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normal(name)] = version.strip()
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().split("[")[0]


def pip_installs(dockerfile: str) -> list[tuple[int, list[str]]]:
    """(index of its RUN, arguments after ``pip install``) of each pip install."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    installs = []
    for index, line in enumerate(joined.splitlines()):
        if not line.strip().startswith("RUN "):
            continue
        for command in re.split(r"&&|;", line.strip()[4:]):
            words = shlex.split(command)
            for start in range(len(words) - 1):
                if words[start].endswith("pip") and words[start + 1] == "install":
                    installs.append((index, words[start + 2:]))
                    break
    return installs


OPTIONS_WITH_VALUES = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url",
                       "--extra-index-url", "-f", "--find-links", "-e", "--editable"}


def pin_problems(dockerfile: str, pins: dict[str, str]) -> list[str]:
    """How ``dockerfile``'s pip installs differ from ``pins`` (constraints.txt)."""
    problems = []
    installs = pip_installs(dockerfile)
    if not installs:
        return ["no pip install"]
    lines = re.sub(r"\\\n", " ", dockerfile).splitlines()
    torch_seen = False
    for index, words in installs:
        options: dict[str, str] = {}
        packages = []
        position = 0
        while position < len(words):
            word = words[position]
            if word in OPTIONS_WITH_VALUES and position + 1 < len(words):
                options[word] = words[position + 1]
                position += 2
                continue
            if not word.startswith("-"):
                packages.append(word)
            position += 1
        constrained = options.get("-c") or options.get("--constraint")
        if constrained is not None:
            copied = any(re.match(r"\s*COPY\s", line) and constrained in line.split()[1:-1]
                         for line in lines[:index])
            if constrained != "constraints.txt" or not copied:
                problems.append(f"-c {constrained}: not constraints.txt copied before it")
        for package in packages:
            name, _, version = package.partition("==")
            name = _normal(name)
            if name == "torch":
                torch_seen = True
                index_url = options.get("--index-url") or options.get("-i") or ""
                if not re.match(r"https://download\.pytorch\.org/whl/cu\d+$", index_url):
                    problems.append(f"torch not from a CUDA index: {index_url!r}")
            if version:
                if pins.get(name) != version:
                    problems.append(f"{package}: constraints.txt has {pins.get(name)}")
            elif constrained is None:
                problems.append(f"{package}: unpinned, and no -c constraints.txt")
    if not torch_seen:
        problems.append("torch is not installed")
    return problems


def test_the_gpu_image_pins_what_constraints_pins() -> None:
    dockerfile = (DEPLOY / "Dockerfile.gpu").read_text()
    pins = constraints((ROOT / "constraints.txt").read_text())
    assert pin_problems(dockerfile, pins) == []
    # The CUDA build at the tested version, and unet-tiles itself under the constraints.
    installs = [words for _, words in pip_installs(dockerfile)]
    assert any(f"torch=={pins['torch']}" in words for words in installs)
    assert any("-c" in words and "constraints.txt" in words for words in installs)


@pytest.mark.parametrize(("dockerfile", "expected"), [
    ("COPY constraints.txt ./\nRUN pip install torch --index-url "
     "https://download.pytorch.org/whl/cu126 \\\n && pip install -c constraints.txt .\n",
     "torch: unpinned"),
    ("RUN pip install torch==2.12.0 --index-url https://download.pytorch.org/whl/cu126\n",
     "torch==2.12.0: constraints.txt has 2.13.0"),
    ("RUN pip install torch==2.13.0\n", "torch not from a CUDA index"),
    ("RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126 "
     "&& pip install -c constraints.txt .\n", "not constraints.txt copied before it"),
    ("RUN pip install torch==2.13.0 -i https://download.pytorch.org/whl/cu126 dask==2025.1.0\n",
     "dask==2025.1.0: constraints.txt has 2026.7.1"),
    ("RUN python3 -m pip install numpy\n", "torch is not installed"),
])
def test_the_pin_check_catches_drift(dockerfile: str, expected: str) -> None:
    pins = {"torch": "2.13.0", "dask": "2026.7.1"}
    problems = pin_problems(dockerfile, pins)
    assert any(expected in p for p in problems), problems
