"""Safe by default: no pickles, clusters on localhost, TLS for multi-node clusters.

(Hostile zarr metadata, i.e. decompression bombs and absurd shapes, is refused in
``test_bad_input.py``: rows ``chunk-terabytes`` and ``shape-exabytes``.)
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

PACKAGE = Path(__file__).resolve().parents[1] / "unet_tiles"


UNPICKLERS = {"pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load"}


def unpickling_calls(source: str) -> list[str]:
    """Calls that may unpickle: ``pickle.load`` and friends, and ``torch.load`` without
    ``weights_only=True``, however they were imported (``from torch import load``,
    ``import torch as th``)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        head, _, rest = ast.unparse(node.func).partition(".")
        name = aliases.get(head, head) + (f".{rest}" if rest else "")
        safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                   and k.value.value is True for k in node.keywords)
        if name in UNPICKLERS or (name == "torch.load" and not safe):
            found.append(f"{node.lineno} {name}")
    return found


def test_the_unpickling_check_finds_every_spelling() -> None:
    assert unpickling_calls("from torch import load\nload('m.pt')\n") == ["2 torch.load"]
    assert unpickling_calls("import torch as th\nth.load('m.pt')\n") == ["2 torch.load"]
    assert unpickling_calls("from pickle import loads as l\nl(b'')\n") == ["2 pickle.loads"]
    assert unpickling_calls("import torch\ntorch.load('m.pt', weights_only=True)\n") == []
    assert unpickling_calls("import json\njson.load(f)\n") == []


def test_nothing_in_the_package_unpickles() -> None:
    """No ``torch.load``/``pickle.load`` without ``weights_only=True`` anywhere in unet_tiles."""
    offenders = [f"{path.relative_to(PACKAGE)}:{call}" for path in PACKAGE.rglob("*.py")
                 for call in unpickling_calls(path.read_text())]
    assert not offenders


def test_pickled_weights_are_refused_not_executed(tmp_path: Path,
                                                  make_model: Callable[..., Path]) -> None:
    """A pickle disguised as weights.safetensors is refused; its payload never runs."""
    import pickle

    from unet_tiles.errors import ModelFormatError
    from unet_tiles.model.files import load_model

    model = make_model(classes=2)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((model / "config.json").read_text())
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    (evil / "weights.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelFormatError, match="corrupt or truncated safetensors"):
        load_model(evil)
    assert not marker.exists()


@pytest.mark.cluster
def test_local_cluster_listens_on_localhost_only() -> None:
    from unet_tiles.engine.cluster import connect

    with connect("cpu", workers=1, threads_per_worker=1) as (client, _info):
        info = client.scheduler_info()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        for address in info["workers"]:
            assert address.startswith("tcp://127.0.0.1:"), address
        dashboard = client.dashboard_link or ""
        assert dashboard in ("",) or "127.0.0.1" in dashboard or "localhost" in dashboard


def _make_certs(root: Path) -> dict[str, str]:
    """A throwaway CA and one certificate it signed for 127.0.0.1."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "node.key",
        "-out", "node.csr")
    (root / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "ext.cnf", "-out", "node.pem")
    return {"ca": str(root / "ca.pem"), "cert": str(root / "node.pem"),
            "key": str(root / "node.key")}


@pytest.mark.slow
@pytest.mark.cluster
def test_segment_over_tls(tmp_path: Path, make_model: Callable[..., Path]) -> None:
    """docs/security.md's recipe: TLS scheduler and worker; the CLI joins with tls://."""
    import shutil

    import zarr

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    certs = _make_certs(tmp_path)
    tls = ["--tls-ca-file", certs["ca"], "--tls-cert", certs["cert"], "--tls-key", certs["key"]]
    dask = str(Path(sys.executable).parent / "dask")
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(
        [dask, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file), *tls],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        procs.append(subprocess.Popen(
            [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--host",
             "127.0.0.1", "--no-dashboard", *tls],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        inp = tmp_path / "img.zarr"
        array = zarr.create_array(str(inp), shape=(70, 90), chunks=(64, 64), dtype="uint8")
        array[...] = np.random.default_rng(0).integers(0, 255, (70, 90), dtype=np.uint8)
        model = make_model(classes=2)
        argv = [sys.executable, "-m", "unet_tiles.cli", "segment", str(inp),
                str(tmp_path / "out.zarr"), "--model", str(model), "--no-progress",
                "--cluster", address]
        env = {**os.environ,
               "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": certs["ca"],
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": certs["cert"],
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": certs["key"],
               "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert zarr.open_array(str(tmp_path / "out.zarr"), path="done")[...].all()
        # Without the certificates the scheduler cannot be joined: a clear error, exit 2.
        plain = {k: v for k, v in env.items() if not k.startswith("DASK_DISTRIBUTED__COMM")}
        refused = subprocess.run([*argv[:5], str(tmp_path / "out2.zarr"), *argv[6:]],
                                 env=plain, capture_output=True, text=True, timeout=180,
                                 check=False)
        assert refused.returncode == 2, refused.stderr
        assert "cannot reach a dask scheduler" in refused.stderr
    finally:
        for proc in procs:
            with __import__("contextlib").suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
