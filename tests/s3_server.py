"""A real S3-compatible server (moto's server mode) on 127.0.0.1 for the S3 tests.

The server is started once per test module that asks for it, as
``python -m moto.server`` on 127.0.0.1 and a free port, in its own process
group (killed at teardown). The ``s3`` fixture points the usual AWS environment
variables at it (monkeypatched, so every subprocess a test starts inherits
them) with a random secret per run, and gives each test a fresh bucket::

    from s3_server import S3, s3_fixture, s3_server_fixture  # noqa: F401
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

SERVER_START_TIMEOUT_S = 60.0
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen[bytes]


@dataclass
class S3:
    """One test's view of the server: its environment and its bucket."""

    endpoint: str
    key_id: str
    secret: str
    bucket: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION}

    def fs(self) -> Any:
        """A fresh (uncached) s3fs filesystem on the server."""
        import s3fs

        return s3fs.S3FileSystem(key=self.key_id, secret=self.secret, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint})

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def upload(self, local: str | Path, key: str) -> str:
        """Copy a local store (a folder) to ``s3://BUCKET/key``; its URL."""
        fs = self.fs()
        target = f"{self.bucket}/{key.strip('/')}"
        local = Path(local)
        for path in sorted(local.rglob("*")):
            if path.is_file():
                fs.pipe_file(f"{target}/{path.relative_to(local).as_posix()}",
                             path.read_bytes())
        return f"s3://{target}"

    def objects(self, key: str) -> dict[str, bytes]:
        """Every object under ``s3://BUCKET/key/``, by key relative to it."""
        fs = self.fs()
        root = f"{self.bucket}/{key.strip('/')}"
        names = fs.find(root)
        return {name[len(root) + 1:]: fs.cat_file(name) for name in sorted(names)}

    def all_keys(self) -> list[str]:
        return sorted(self.fs().find(self.bucket))


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


@contextlib.contextmanager
def start_server(log: Path) -> Iterator[S3Server]:
    """``python -m moto.server`` on 127.0.0.1 and a free port, until the block ends."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield S3Server(endpoint, proc)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def require_auth(endpoint: str) -> tuple[str, str]:
    """Make the server check signatures from now on; an IAM user's (key id, secret)
    allowed everything (the requests making it are the last unauthenticated ones)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION,
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="tester")
    iam.put_user_policy(UserName="tester", PolicyName="all", PolicyDocument=(
        '{"Version": "2012-10-17", "Statement": '
        '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
    key = iam.create_access_key(UserName="tester")["AccessKey"]
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10):
        pass
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@pytest.fixture(name="s3_server", scope="module")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(name="s3")
def s3_fixture(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3:
    """The AWS environment pointed at the server (a random secret), and a new bucket."""
    s3 = S3(endpoint=s3_server.endpoint, key_id="testing" + secrets.token_hex(4),
            secret="sekrit-" + secrets.token_hex(16), bucket="b-" + secrets.token_hex(6))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    import fsspec

    fsspec.config.conf.pop("s3", None)
    s3.fs().mkdir(s3.bucket)
    # fsspec caches filesystem instances by their arguments: the environment
    # changed, so a cached one would carry the previous test's credentials.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3
