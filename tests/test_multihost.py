"""Several hosts on one machine: scheduler and workers in separate network namespaces.

Two network namespaces joined by a veth pair stand in for two hosts: the TLS
scheduler listens on the first one's address only, two workers and the driver
(``unet-tiles segment --cluster tls://...``) run in the second. The addresses
(a private /30) exist only inside the namespaces made here, so no traffic leaves
them. The store (input image, model, output) lies on the shared filesystem, as on
a cluster with a shared disk. The output must equal a single-host run byte for byte.

Needs root, ``ip`` (iproute2) and a kernel that lets us make network namespaces
(not a container without CAP_SYS_ADMIN); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SHAPE = (128, 192)
CHUNK = 64
BLOCK = "64"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def _need_namespaces() -> None:
    """Skip, with the reason, where network namespaces cannot be made here."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    probe = f"ut-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    _ip("netns", "del", probe, check=False)


@contextlib.contextmanager
def _two_hosts() -> Iterator[tuple[str, str, str, str]]:
    """Namespaces (sched, work) joined by a veth pair; yields (sched, work, ip1, ip2).

    The veth ends are created inside the namespaces (never in this one); deleting
    the namespaces removes them."""
    pid = os.getpid()
    sched, work = f"ut-sched-{pid}", f"ut-work-{pid}"
    net = f"10.231.{pid % 250}"
    ip1, ip2 = f"{net}.1", f"{net}.2"
    made: list[str] = []
    try:
        for name in (sched, work):
            _ip("netns", "add", name)
            made.append(name)
        _ip("-n", sched, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
            "netns", work)
        for name, dev, addr in ((sched, "veth0", ip1), (work, "veth1", ip2)):
            _ip("-n", name, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", name, "link", "set", dev, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield sched, work, ip1, ip2
    finally:
        for name in made:
            # Whatever still runs in a namespace made here was started by this test.
            pids = _ip("netns", "pids", name, check=False).stdout.split()
            for p in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            _ip("netns", "del", name, check=False)


def _make_certs(root: Path, ips: list[str]) -> dict[str, str]:
    """A throwaway CA and one certificate it signed for ``ips`` (as test_security's)."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ips[0]}", "-keyout",
        "node.key", "-out", "node.csr")
    sans = ",".join(f"IP:{ip}" for ip in ips)
    (root / "ext.cnf").write_text(f"subjectAltName={sans}\n")
    ssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "ext.cnf", "-out", "node.pem")
    return {"ca": str(root / "ca.pem"), "cert": str(root / "node.pem"),
            "key": str(root / "node.key")}


def _store_files(root: Path) -> list[tuple[str, bytes]]:
    """Every file under a store: sorted relative paths and their bytes."""
    return [(str(p.relative_to(root)), p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()]


def _listening(netns: str) -> list[str]:
    """Local addresses of the TCP sockets listening in ``netns``."""
    done = _ip("netns", "exec", netns, "ss", "-Htln", check=True)
    return [line.split()[3] for line in done.stdout.splitlines() if line.strip()]


def _logs(root: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(root.glob("*.log")))


def test_segment_across_network_namespaces(tmp_path: Path,
                                           make_model: Callable[..., Path]) -> None:
    """TLS scheduler in one namespace, workers and driver in another: same bytes as
    a single-host run."""
    import zarr

    import unet_tiles

    _need_namespaces()
    inp = tmp_path / "img.zarr"
    array = zarr.create_array(str(inp), shape=SHAPE, chunks=(CHUNK, CHUNK), dtype="uint8")
    array[...] = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
    model = make_model(classes=2)
    ref, out = tmp_path / "ref.zarr", tmp_path / "out.zarr"
    logs = tmp_path / "logs"
    logs.mkdir()

    procs: list[subprocess.Popen[bytes]] = []

    def start(netns: str, name: str, *argv: str, env: dict[str, str] | None = None) -> None:
        with (logs / f"{name}.log").open("wb") as log:
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, *argv], cwd=REPO, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    with _two_hosts() as (sched, work, ip1, ip2):
        try:
            certs = _make_certs(tmp_path, [ip1, ip2])
            tls = ["--tls-ca-file", certs["ca"], "--tls-cert", certs["cert"],
                   "--tls-key", certs["key"]]
            sched_file = tmp_path / "scheduler.json"
            # --no-dashboard alone still serves HTTP (/health, /metrics) on 0.0.0.0 (8787 for
            # the scheduler, any port for workers): on loopback, as docs/security.md says.
            start(sched, "scheduler", "-m", "distributed.cli.dask_scheduler", "--protocol",
                  "tls", "--host", ip1, "--port", "0", "--no-dashboard",
                  "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file),
                  *tls)
            deadline = time.monotonic() + 60
            address = None
            while address is None and time.monotonic() < deadline:
                assert procs[0].poll() is None, _logs(logs)
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
                    address = str(json.loads(sched_file.read_text())["address"])
                time.sleep(0.1)
            assert address is not None, _logs(logs)
            # The scheduler listens on its namespace's address, and only there.
            assert address.startswith(f"tls://{ip1}:"), address
            assert address.startswith("tls://10.")
            port = address.rsplit(":", 1)[1]
            if shutil.which("ss") is not None:
                listening = _listening(sched)
                assert f"{ip1}:{port}" in listening, listening
                assert all(a.startswith((f"{ip1}:", "127.0.0.1:")) for a in listening), listening

            # Two workers on the other "host"; one torch thread each (2 cores shared).
            worker_env = {**os.environ, "OMP_NUM_THREADS": "1"}
            start(work, "workers", "-m", "distributed.cli.dask_worker", address,
                  "--nworkers", "2", "--nthreads", "1", "--host", ip2, "--no-dashboard",
                  "--dashboard-address", "127.0.0.1:0", *tls, env=worker_env)

            client_env = {**os.environ,
                          "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": certs["ca"],
                          "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": certs["cert"],
                          "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": certs["key"],
                          "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
            # Both workers joined (from the workers' namespace, over TLS) before the run.
            wait = ("import json, sys\nfrom distributed import Client\n"
                    "with Client(sys.argv[1], timeout='30s') as c:\n"
                    "    c.wait_for_workers(2, timeout=90)\n"
                    "    print(json.dumps(sorted(c.scheduler_info(n_workers=-1)['workers'])))\n")
            joined = subprocess.run(
                ["ip", "netns", "exec", work, sys.executable, "-c", wait, address],
                cwd=REPO, env=client_env, capture_output=True, text=True, timeout=150,
                check=False)
            assert joined.returncode == 0, joined.stderr + _logs(logs)
            workers = json.loads(joined.stdout.strip().splitlines()[-1])
            assert len(workers) == 2, workers
            assert all(w.startswith(f"tls://{ip2}:") for w in workers), workers
            if shutil.which("ss") is not None:
                listening = _listening(work)
                assert all(a.startswith((f"{ip2}:", "127.0.0.1:")) for a in listening), listening

            # The driver runs on the workers' "host" too: the CLI joins with tls://.
            argv = ["-m", "unet_tiles.cli", "segment", str(inp), str(out), "--model",
                    str(model), "--block-size", BLOCK, "--no-progress", "--cluster", address]
            done = subprocess.run(
                ["ip", "netns", "exec", work, sys.executable, *argv], cwd=REPO,
                env=client_env, capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, done.stderr + _logs(logs)
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)

    # The same image on one host, in this process: the same bytes, every file.
    unet_tiles.segment(str(inp), str(ref), str(model), cluster="cpu", workers=1,
                       progress=False, block_size=int(BLOCK))
    got, want = dict(_store_files(out)), dict(_store_files(ref))
    assert sorted(got) == sorted(want), set(got) ^ set(want)
    differ = [name for name in sorted(got) if got[name] != want[name]]
    assert not differ, f"{len(differ)} files differ, e.g. {differ[:5]}"
    assert zarr.open_array(str(out), path="done")[...].all()
