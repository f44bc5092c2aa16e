"""Shared fixtures: a real S3-compatible server on 127.0.0.1 (moto) and a real local Ray.

Area-specific fixtures live in ``tests/<area>/conftest.py``. Everything here is session-scoped and
started at most once, because a Ray start costs seconds on the 2-core CI machine.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def make_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        return f"s3://{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto in server mode on loopback; the code under test reaches it through s3fs like any S3 endpoint.

    The credentials are moto's dummy values for this loopback server, set in the environment before Ray
    starts so that Ray workers find them through the standard AWS chain, as they would on a cluster.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                              "MLLM_DR_S3_ENDPOINT")}
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", MLLM_DR_S3_ENDPOINT=endpoint)
    try:
        yield S3Server(endpoint)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def ray_local(s3_server: S3Server) -> Iterator[None]:
    """A real local Ray, started after the S3 variables so its workers inherit them.

    4 logical CPUs on the 2-core machine: Ray Train's placement group reserves its workers' CPUs, and Ray Data
    still needs CPUs outside it to feed them; with exactly 2 a lingering actor could starve a read forever.
    """
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> str:
    """A tiny random Llama + byte-level BPE tokenizer (what ``mllm-dr init-tiny-llm`` writes), built once."""
    from mllm_dr.model.tiny import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture
def cli(tmp_path):
    """Run ``mllm-dr ...`` as a user would, in a subprocess; returns the CompletedProcess."""
    import subprocess

    def run(*args: str, check: bool = False, timeout: float = 600, env: dict | None = None):
        result = subprocess.run([sys.executable, "-m", "mllm_dr.cli", *args], capture_output=True, text=True,
                                timeout=timeout, cwd=tmp_path, env={**os.environ, **(env or {})}, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"mllm-dr {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    return run
