"""A real Prefect server (and helpers for workers) for the flow and deployment tests.

The server is started once per test session, whichever module asks first, as
``python -m prefect server start`` on 127.0.0.1 and a free port, with its own
PREFECT_HOME; every process here is started in its own process group and the
whole group is killed at teardown. Import the fixture where needed::

    from prefect_fixtures import prefect_server  # noqa: F401
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[1]
# Measured 17-30 s to healthy on 2 busy cores; leave room.
SERVER_START_TIMEOUT_S = 150.0
# prefect 3.8.8's client sends explicit nulls for filter paging that FastAPI
# >= 0.151 rejects (422), which breaks 'prefect deploy' and the worker.
MAX_FASTAPI = (0, 151)


@dataclass
class PrefectServer:
    url: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_env(url: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_CLI_PROMPT="false",
        PREFECT_LOGGING_LEVEL="INFO",
        **extra,
    )
    return env


def spawn(args: list[str], env: dict[str, str], log: Path,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a process in a new session (its own process group), output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # orphans of an exited leader
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout_s:.0f} s:\n{log.read_text()}")


def check_fastapi() -> None:
    import fastapi

    version = tuple(int(p) for p in fastapi.__version__.split(".")[:2])
    if version >= MAX_FASTAPI:
        pytest.fail(
            f"fastapi {fastapi.__version__} breaks prefect 3.8.8's server (422 on filter "
            "requests with null limit/offset: 'prefect deploy' and workers fail); "
            "pip install 'fastapi>=0.139,<0.151'"
        )


_SHARED: dict[str, tuple[PrefectServer, subprocess.Popen[bytes]]] = {}


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """One Prefect server for the whole session, stopped at its end."""
    check_fastapi()
    if "server" not in _SHARED:
        home = tmp_path_factory.mktemp("prefect-home")
        url = f"http://127.0.0.1:{free_port()}/api"
        env = prefect_env(url, home)
        port = url.rsplit(":", 1)[1].split("/")[0]
        log = home / "server.log"
        proc = spawn([sys.executable, "-m", "prefect", "server", "start",
                      "--host", "127.0.0.1", "--port", port], env, log)
        try:
            wait_healthy(url, proc, log, SERVER_START_TIMEOUT_S)
        except BaseException:
            stop(proc)
            raise
        _SHARED["server"] = (PrefectServer(url, home, env), proc)
    server, proc = _SHARED["server"]
    yield server
    # Session scope: every module's copy of this fixture ends at session end; the
    # first to get here stops the server, the others find it stopped.
    stop(proc)


@contextlib.contextmanager
def using(server: PrefectServer) -> Iterator[None]:
    """Point this process's Prefect client at ``server``."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_HOME: server.home}):
        yield
