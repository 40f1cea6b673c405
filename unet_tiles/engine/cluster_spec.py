"""``--cluster FILE.yaml``: a cluster spec, parsed and checked before anything starts.

A spec is a YAML mapping whose ``kind`` says where the blocks run:

``kind: slurm``
    dask-jobqueue's ``SLURMCluster``: jobs of ``cores`` and ``memory`` each on
    ``partition`` (or ``queue``), with ``account``, ``walltime``, ``processes`` (dask
    workers per job), ``jobs`` (how many to scale to, default 1), ``gpus`` per job
    (``#SBATCH --gres=gpu:N``; the workers are then ``dask cuda worker``s, one per GPU),
    ``python`` (the workers' interpreter), ``local_directory``, ``log_directory`` and
    ``extra``: the ``SLURMCluster`` options in ``SLURM_EXTRA`` (``job_extra_directives``,
    ``job_script_prologue``, ``interface``, ...).
``kind: kubernetes``
    dask-kubernetes' operator ``KubeCluster``: ``name``, ``namespace``, ``image``,
    ``n_workers``, ``threads_per_worker``, ``resources`` (``limits`` / ``requests``;
    ``nvidia.com/gpu`` in the limits makes GPU workers, ``dask cuda worker``), ``env``
    and ``scheduler_service_type``.
``kind: scheduler``
    a running scheduler: ``address`` (``tcp://`` / ``tls://``) or ``scheduler_file``,
    and for TLS ``ca_file``, ``cert`` and ``key`` (distributed's ``Security``).

Every problem is one ``UsageError`` line naming the file, the line and the key: an
unknown key (with the closest known one), a value of the wrong type, a required key
missing. Relative paths of ``scheduler_file``, ``ca_file``, ``cert`` and ``key`` are
relative to the spec file; the SLURM paths are the worker nodes' and are kept as written.
Nothing here imports dask-jobqueue or dask-kubernetes: ``engine/cluster.py`` builds
the clusters.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from unet_tiles.engine.yaml_file import Located, load, shown
from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

KINDS = ("slurm", "kubernetes", "scheduler")
SUFFIXES = (".yaml", ".yml")
# ``extra:`` of a slurm spec: SLURMCluster options passed on as given, and their types.
# None of them changes what unet-tiles sets itself (the worker command, cores, memory,
# GPUs); lists are appended to what it sets.
SLURM_EXTRA: dict[str, str] = {
    "job_extra_directives": "strings",
    "job_script_prologue": "strings",
    "job_directives_skip": "strings",
    "worker_extra_args": "strings",
    "interface": "string",
    "job_name": "string",
    "shebang": "string",
    "death_timeout": "number",
    "nanny": "boolean",
    "scheduler_options": "mapping",
}
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
GPU_RESOURCE = "nvidia.com/gpu"
# Threads of a GPU worker: the next block is read while the current one runs on the
# device (as engine/cluster.py's LocalCUDACluster).
GPU_THREADS = 2
# SLURM's walltime forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_WALLTIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}")
# An RFC 1123 label, as Kubernetes names and namespaces must be.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# "-scheduler" and "-default" are appended to a DaskCluster's name; a label has 63.
_MAX_NAME = 63 - len("-scheduler")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


def is_spec_file(spec: str) -> bool:
    """Whether ``connect``'s ``spec`` names a cluster spec file rather than a kind or address."""
    return "://" not in spec and spec.lower().endswith(SUFFIXES)


class _Fields:
    """A spec mapping's keys, each read once and checked, with the file's lines."""

    def __init__(self, node: Located, source: str, kind: str, known: tuple[str, ...]) -> None:
        self.source = source
        self.kind = kind
        if not isinstance(node.value, dict):
            raise UsageError(f"{self.at(node.line)}: a {kind} spec must be a mapping, got "
                             f"{_shown(node)}")
        self.items: dict[str, Located] = node.value
        self.line = node.line
        for key, item in self.items.items():
            if key not in known:
                raise UsageError(f"{self.at(item.line)}: {_unknown(key, known, kind)}")

    def at(self, line: int) -> str:
        return f"{self.source}:{line}" if line else self.source

    def lines(self) -> dict[str, int]:
        return {key: item.line for key, item in self.items.items()}

    def required(self, key: str, check: Callable[[Located, str], Any]) -> Any:
        item = self.items.get(key)
        if item is None or item.value is None:
            raise UsageError(f"{self.at(self.line if item is None else item.line)}: "
                             f"a {self.kind} spec needs {key!r}")
        return check(item, key)

    def optional(self, key: str, check: Callable[[Located, str], Any],
                 default: Any = None) -> Any:
        item = self.items.get(key)
        if item is None or item.value is None:
            return default
        return check(item, key)

    def wrong(self, item: Located, key: str, expected: str) -> UsageError:
        return UsageError(f"{self.at(item.line)}: {key!r} must be {expected}, got {_shown(item)}")

    # --- the types -----------------------------------------------------------------

    def string(self, item: Located, key: str) -> str:
        if not isinstance(item.value, str) or not item.value.strip():
            raise self.wrong(item, key, "a non-empty string")
        return item.value

    def path(self, item: Located, key: str) -> str:
        """A path on this machine: relative to the spec file's folder."""
        value = os.path.expanduser(self.string(item, key))
        # ``source`` is the spec file's path when the spec came from a file.
        folder = os.path.dirname(self.source) if os.path.isfile(self.source) else ""
        return os.path.normpath(os.path.join(folder, value)) if folder else value

    def integer(self, item: Located, key: str, least: int = 0) -> int:
        value = item.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong(item, key, f"an integer of at least {least}")
        if value < least:
            raise UsageError(f"{self.at(item.line)}: {key!r} must be at least {least}, "
                             f"got {value}")
        return value

    def positive(self, item: Located, key: str) -> int:
        return self.integer(item, key, 1)

    def number(self, item: Located, key: str) -> int | float:
        value = item.value
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.wrong(item, key, "a number of at least 0")
        return value

    def boolean(self, item: Located, key: str) -> bool:
        if not isinstance(item.value, bool):
            raise self.wrong(item, key, "true or false")
        return item.value

    def strings(self, item: Located, key: str) -> tuple[str, ...]:
        if not isinstance(item.value, list):
            raise self.wrong(item, key, "a list of strings")
        out = []
        for element in item.value:
            if not isinstance(element.value, str):
                raise UsageError(f"{self.at(element.line)}: each item of {key!r} must be a "
                                 f"string, got {_shown(element)}")
            out.append(element.value)
        return tuple(out)

    def mapping(self, item: Located, key: str) -> dict[str, Located]:
        if not isinstance(item.value, dict):
            raise self.wrong(item, key, "a mapping")
        return dict(item.value)

    def scalars(self, item: Located, key: str) -> dict[str, str | int | float | bool]:
        """A mapping of names to scalar values."""
        out: dict[str, str | int | float | bool] = {}
        for name, value in self.mapping(item, key).items():
            if not isinstance(value.value, str | int | float | bool):
                raise UsageError(f"{self.at(value.line)}: {key}.{name} must be a string, a "
                                 f"number or true/false, got {_shown(value)}")
            out[name] = value.value
        return out

    def choice(self, item: Located, key: str, choices: tuple[str, ...]) -> str:
        if item.value not in choices:
            raise self.wrong(item, key, "one of " + ", ".join(choices))
        return str(item.value)


def _shown(item: Located) -> str:
    return shown(item.value)


def _unknown(key: str, known: tuple[str, ...], kind: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r} in a {kind} spec{hint}; known: {', '.join(known)}"


@dataclass(frozen=True)
class _Spec:
    """What every spec kind has: where it came from, for messages."""

    KIND: ClassVar[str] = ""
    KEYS: ClassVar[tuple[str, ...]] = ()

    # The file (or "cluster spec" for a dict), and the line of each key in it.
    source: str = field(default="cluster spec", compare=False, kw_only=True)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False,
                                     kw_only=True)

    @property
    def kind(self) -> str:
        return self.KIND

    def where(self, key: str | None = None) -> str:
        """``FILE:LINE`` of ``key`` (of ``kind`` if None) for a message."""
        line = self.lines.get(key or "kind", 0)
        return f"{self.source}:{line}" if line else self.source


@dataclass(frozen=True)
class SlurmSpec(_Spec):
    """Jobs of a SLURM partition, through dask-jobqueue's ``SLURMCluster``."""

    KIND: ClassVar[str] = "slurm"
    KEYS: ClassVar[tuple[str, ...]] = (
        "kind", "partition", "queue", "account", "walltime", "cores", "memory",
        "processes", "jobs", "gpus", "python", "local_directory", "log_directory", "extra")

    cores: int
    memory: str
    partition: str | None = None
    account: str | None = None
    walltime: str | None = None
    processes: int | None = None
    jobs: int = 1
    gpus: int = 0
    python: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Located,
                  source: str = "cluster spec") -> SlurmSpec:
        fields = _Fields(Located.wrap(data), source, cls.KIND, cls.KEYS)
        if "partition" in fields.items and "queue" in fields.items:
            raise UsageError(f"{fields.at(fields.items['queue'].line)}: 'queue' and "
                             "'partition' are the same setting; give one")
        partition = fields.optional("partition", fields.string) or fields.optional(
            "queue", fields.string)
        cores = fields.required("cores", fields.positive)
        gpus = fields.optional("gpus", fields.integer, 0)
        processes = fields.optional("processes", fields.positive)
        if processes is not None:
            if gpus and processes != gpus:
                raise UsageError(
                    f"{fields.at(fields.items['processes'].line)}: 'processes' must equal "
                    f"'gpus' ({gpus}) or be left out: dask cuda worker starts one worker "
                    "per GPU of a job")
            if processes > cores:
                raise UsageError(f"{fields.at(fields.items['processes'].line)}: 'processes' "
                                 f"({processes}) must be at most 'cores' ({cores})")
        elif gpus > cores:
            raise UsageError(f"{fields.at(fields.items['gpus'].line)}: 'gpus' ({gpus}) "
                             f"needs at least as many 'cores', got {cores}")
        return cls(
            cores=cores,
            memory=fields.required("memory", _memory(fields)),
            partition=partition,
            account=fields.optional("account", fields.string),
            walltime=fields.optional("walltime", _walltime(fields)),
            processes=processes,
            jobs=fields.optional("jobs", fields.integer, 1),
            gpus=gpus,
            python=fields.optional("python", fields.string),
            local_directory=fields.optional("local_directory", fields.string),
            log_directory=fields.optional("log_directory", fields.string),
            extra=fields.optional("extra", _slurm_extra(fields), {}),
            source=source,
            lines=fields.lines(),
        )

    @property
    def worker_processes(self) -> int:
        """Dask workers per job: one per GPU, else one per core (one thread each, as
        the local CPU cluster), unless ``processes`` says otherwise."""
        return self.processes or self.gpus or self.cores

    @property
    def threads_per_worker(self) -> int:
        return max(1, self.cores // self.worker_processes)


def _memory(fields: _Fields) -> Callable[[Located, str], str]:
    def check(item: Located, key: str) -> str:
        from dask.utils import parse_bytes

        value = item.value
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise fields.wrong(item, key, "an amount of memory such as 64GB")
        try:
            amount = parse_bytes(value)
        except (ValueError, TypeError):
            raise fields.wrong(item, key, "an amount of memory such as 64GB") from None
        if amount <= 0:
            raise fields.wrong(item, key, "more than 0 bytes")
        return str(value)

    return check


def _walltime(fields: _Fields) -> Callable[[Located, str], str]:
    def check(item: Located, key: str) -> str:
        # YAML 1.1 reads an unquoted 24:00:00 as the integer 86400: take it as written.
        text = item.value if isinstance(item.value, str) else item.text
        if isinstance(item.value, bool) or not isinstance(item.value, str | int) or (
                text is None or not _WALLTIME.fullmatch(text.strip())):
            raise fields.wrong(item, key, "a SLURM time such as 24:00:00 or 1-12:00:00")
        return text.strip()

    return check


def _slurm_extra(fields: _Fields) -> Callable[[Located, str], dict[str, Any]]:
    def check(item: Located, key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in fields.mapping(item, key).items():
            kind = SLURM_EXTRA.get(name)
            if kind is None:
                close = difflib.get_close_matches(name, list(SLURM_EXTRA), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UsageError(
                    f"{fields.at(value.line)}: 'extra' may not set {name!r}{hint}; it "
                    f"takes {', '.join(SLURM_EXTRA)} (the others are keys of the spec, or "
                    "set by unet-tiles)")
            label = f"extra.{name}"
            if kind == "strings":
                out[name] = list(fields.strings(value, label))
            elif kind == "string":
                out[name] = fields.string(value, label)
            elif kind == "number":
                out[name] = fields.number(value, label)
            elif kind == "boolean":
                out[name] = fields.boolean(value, label)
            else:
                out[name] = fields.scalars(value, label)
        return out

    return check


@dataclass(frozen=True)
class KubernetesSpec(_Spec):
    """A ``DaskCluster`` of the dask-kubernetes operator, through its ``KubeCluster``."""

    KIND: ClassVar[str] = "kubernetes"
    KEYS: ClassVar[tuple[str, ...]] = (
        "kind", "name", "namespace", "image", "n_workers", "threads_per_worker",
        "resources", "env", "scheduler_service_type")

    name: str
    image: str
    namespace: str | None = None
    n_workers: int = 1
    threads_per_worker: int | None = None
    # {"limits": {...}, "requests": {...}}: the worker containers' resources.
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    scheduler_service_type: str = "ClusterIP"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Located,
                  source: str = "cluster spec") -> KubernetesSpec:
        fields = _Fields(Located.wrap(data), source, cls.KIND, cls.KEYS)
        return cls(
            name=fields.required("name", _dns_label(fields, _MAX_NAME)),
            image=fields.required("image", fields.string),
            namespace=fields.optional("namespace", _dns_label(fields, 63)),
            n_workers=fields.optional("n_workers", fields.integer, 1),
            threads_per_worker=fields.optional("threads_per_worker", fields.positive),
            resources=fields.optional("resources", _resources(fields), {}),
            env=fields.optional("env", _env(fields), {}),
            scheduler_service_type=fields.optional(
                "scheduler_service_type",
                lambda item, key: fields.choice(item, key, SERVICE_TYPES), "ClusterIP"),
            source=source,
            lines=fields.lines(),
        )

    @property
    def gpus(self) -> int:
        """GPUs of each worker pod (its ``nvidia.com/gpu`` limit)."""
        return int(self.resources.get("limits", {}).get(GPU_RESOURCE, 0))

    @property
    def threads(self) -> int:
        return self.threads_per_worker or (GPU_THREADS if self.gpus else 1)


def _dns_label(fields: _Fields, longest: int) -> Callable[[Located, str], str]:
    def check(item: Located, key: str) -> str:
        value = item.value
        if not isinstance(value, str) or len(value) > longest or not _DNS_LABEL.fullmatch(
                value):
            raise fields.wrong(item, key, f"a Kubernetes name (lower-case letters, digits and "
                               f"'-', at most {longest} characters)")
        return value

    return check


def _resources(fields: _Fields) -> Callable[[Located, str], dict[str, dict[str, str]]]:
    def check(item: Located, key: str) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for part, amounts in fields.mapping(item, key).items():
            if part not in ("limits", "requests"):
                raise UsageError(f"{fields.at(amounts.line)}: 'resources' has 'limits' and "
                                 f"'requests', got {part!r}")
            out[part] = {}
            for name, amount in fields.mapping(amounts, f"resources.{part}").items():
                label = f"resources.{part}.{name}"
                value = amount.value
                if name == GPU_RESOURCE:
                    if isinstance(value, str) and value.strip().isdigit():
                        value = int(value)
                    value = fields.integer(Located(value, amount.line), label)
                elif isinstance(value, bool) or not isinstance(value, str | int | float):
                    raise fields.wrong(amount, label, "a quantity such as 4 or 16Gi")
                # The DaskCluster CRD has quantities as strings: "1", not 1.
                out[part][name] = str(value) if isinstance(value, int) else (
                    value if isinstance(value, str) else str(amount.text))
        limits, requests = out.get("limits", {}), out.get("requests", {})
        if GPU_RESOURCE in requests and requests[GPU_RESOURCE] != limits.get(GPU_RESOURCE):
            raise UsageError(f"{fields.at(item.line)}: 'resources' must give {GPU_RESOURCE} "
                             "in 'limits', and the same number in 'requests' if there")
        return out

    return check


def _env(fields: _Fields) -> Callable[[Located, str], dict[str, str]]:
    def check(item: Located, key: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in fields.mapping(item, key).items():
            if not _ENV_NAME.fullmatch(name):
                raise UsageError(f"{fields.at(value.line)}: {name!r} is not an environment "
                                 "variable name")
            if isinstance(value.value, bool) or not isinstance(value.value, str | int | float):
                raise fields.wrong(value, f"env.{name}", "a string or a number")
            out[name] = value.value if isinstance(value.value, str) else (value.text or "")
        return out

    return check


@dataclass(frozen=True)
class SchedulerSpec(_Spec):
    """A running scheduler, by address or scheduler file, optionally over TLS."""

    KIND: ClassVar[str] = "scheduler"
    KEYS: ClassVar[tuple[str, ...]] = (
        "kind", "address", "scheduler_file", "ca_file", "cert", "key")

    address: str | None = None
    scheduler_file: str | None = None
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Located,
                  source: str = "cluster spec") -> SchedulerSpec:
        fields = _Fields(Located.wrap(data), source, cls.KIND, cls.KEYS)
        address = fields.optional("address", _address(fields))
        scheduler_file = fields.optional("scheduler_file", fields.path)
        if (address is None) == (scheduler_file is None):
            where = fields.items.get("scheduler_file")
            raise UsageError(f"{fields.at(where.line if where else fields.line)}: a scheduler "
                             "spec needs one of 'address' and 'scheduler_file'"
                             + (", not both" if address is not None else ""))
        ca_file = fields.optional("ca_file", fields.path)
        cert = fields.optional("cert", fields.path)
        key = fields.optional("key", fields.path)
        given = [name for name in ("ca_file", "cert", "key") if name in fields.items]
        if given and (ca_file is None or cert is None):
            missing = "ca_file" if ca_file is None else "cert"
            raise UsageError(f"{fields.at(fields.items[given[0]].line)}: TLS needs "
                             f"'ca_file' and 'cert' (and 'key' unless the cert holds it); "
                             f"{missing!r} is missing")
        if given and address is not None and not address.startswith("tls://"):
            raise UsageError(f"{fields.at(fields.items['address'].line)}: 'address' must be "
                             f"tls://... with {', '.join(map(repr, given))}, got {address!r}")
        return cls(address=address, scheduler_file=scheduler_file, ca_file=ca_file,
                   cert=cert, key=key, source=source, lines=fields.lines())

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


def _address(fields: _Fields) -> Callable[[Located, str], str]:
    def check(item: Located, key: str) -> str:
        value = fields.string(item, key)
        if "://" not in value:
            raise fields.wrong(item, key, "a scheduler address such as tcp://host:8786")
        return value

    return check


ClusterSpec = SlurmSpec | KubernetesSpec | SchedulerSpec
SPECS: dict[str, type[SlurmSpec] | type[KubernetesSpec] | type[SchedulerSpec]] = {
    spec.KIND: spec for spec in (SlurmSpec, KubernetesSpec, SchedulerSpec)
}


def spec_from_dict(data: Mapping[str, Any] | Located,
                   source: str = "cluster spec") -> ClusterSpec:
    """The spec of ``data`` (a mapping with ``kind``), checked; ``UsageError`` if not."""
    node = Located.wrap(data)
    if not isinstance(node.value, dict):
        where = f"{source}:{node.line}" if node.line else source
        raise UsageError(f"{where}: a cluster spec must be a mapping with a 'kind' "
                         f"({', '.join(KINDS)}), got {_shown(node)}")
    kind = node.value.get("kind")
    if kind is None or not isinstance(kind.value, str) or kind.value not in SPECS:
        line = node.line if kind is None else kind.line
        where = f"{source}:{line}" if line else source
        got = "none" if kind is None else _shown(kind)
        raise UsageError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, got {got}")
    return SPECS[str(kind.value)].from_dict(node, source)


def load_spec(path: str) -> ClusterSpec:
    """The cluster spec in the YAML file ``path``, checked."""
    node = load(path, "cluster spec file")
    if node is None:
        raise UsageError(f"{path}: the cluster spec is empty; it needs a 'kind' "
                         f"({', '.join(KINDS)})")
    return spec_from_dict(node, path)
