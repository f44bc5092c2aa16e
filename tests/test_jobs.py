"""``mllm-dr submit`` against a real Ray head node, as on a cluster: Jobs API over HTTP, token auth on.

The module's head is started with ``ray start --head --block`` on 127.0.0.1 with its own ports, temp dir and
token file, and stopped by signalling that one process (never ``ray stop``, which would stop every Ray on the
machine). Jobs are the repository's own specs (``jobs/*.yaml``) with the cluster-only parts overridden with
``--set``: the entrypoint points at test data, and ``runtime_env.pip=null`` because the head runs in this venv,
the way a cluster image with the project baked in does. Their working_dir and py_modules are uploaded for real.
The S3 store is the moto server of ``s3_server``: the head gets the dummy credentials in its environment, as
nodes get an instance role, and the job names only the (non-secret) endpoint.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from mllm_dr.data.records import read_records
from mllm_dr.data.synthetic import synthesize
from mllm_dr.model.tiny import build_tiny_llm
from mllm_dr.storage import S3_ENDPOINT_ENV, resolve

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
_RAY_CLIENT_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Head:
    address: str
    token_path: Path

    def client_env(self, **extra: str) -> dict[str, str]:
        """Token auth from this head's token file (an empty RAY_AUTH_TOKEN is ignored, a set one would win)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(self.token_path), **extra}


@pytest.fixture(scope="module")
def ray_head(s3_server):
    root = Path(tempfile.mkdtemp(prefix="mllmjobs-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token_path = root / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in (*_RAY_CLIENT_VARS, S3_ENDPOINT_ENV)}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    dashboard_port = free_port()
    ports = {"port": free_port(), "dashboard-port": dashboard_port, "ray-client-server-port": free_port(),
             "node-manager-port": free_port(), "object-manager-port": free_port(),
             "dashboard-agent-listen-port": free_port(), "dashboard-agent-grpc-port": free_port(),
             "runtime-env-agent-port": free_port(), "metrics-export-port": free_port()}
    command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats",
               f"--temp-dir={root / 'ray'}", *(f"--{name}={port}" for name, port in ports.items())]
    log = (root / "head.log").open("wb")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_until_up(head, address, token_path.read_text(), root / "head.log")
        yield Head(address, token_path)
    finally:
        _stop(head)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_up(head: subprocess.Popen, address: str, token: str, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            response = requests.get(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=2)
            if response.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    pytest.fail(f"the Ray head did not answer within {timeout_s:g} s:\n{log.read_text()[-3000:]}")


def _stop(head: subprocess.Popen) -> None:
    """SIGTERM makes `ray start --block` stop the processes it started; then clear our process group only."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def mllm_dr(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``mllm-dr ARGS`` as a user runs it, in a subprocess (module fixtures cannot use the function-scoped ``cli``)."""
    return subprocess.run([sys.executable, "-m", "mllm_dr.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env}, check=False)


def submit(head: Head, spec: str, *overrides: str, wait: str = "300", env: dict | None = None):
    """Submit ``jobs/<spec>`` with ``--set`` overrides; pip off: the head runs in this venv, like a baked image."""
    args = ["submit", str(REPO / "jobs" / spec), "--address", head.address, "--set", "runtime_env.pip=null"]
    if wait:
        args += ["--wait", "--timeout", wait]
    for override in overrides:
        args += ["--set", override]
    return mllm_dr(*args, env=head.client_env() if env is None else env)


@dataclass(frozen=True)
class PreprocessJob:
    result: subprocess.CompletedProcess
    store: str


@pytest.fixture(scope="module")
def preprocess_job(ray_head, s3_server, tmp_path_factory) -> PreprocessJob:
    """Three synthetic interviews (one per split) preprocessed by a job into an S3 store; the training job reuses it."""
    raw = tmp_path_factory.mktemp("raw")
    synthesize(str(raw), interviews=3, seed=3, seconds=3.0)
    store = s3_server.make_bucket("jobs-store") + "/edaic"
    entrypoint = f"mllm-dr --s3-endpoint {s3_server.endpoint} preprocess --source {raw} --out {store}"
    return PreprocessJob(submit(ray_head, "preprocess.yaml", f"entrypoint={entrypoint}"), store)


def test_preprocess_job_succeeds_and_writes_the_store(preprocess_job):
    result = preprocess_job.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith("raysubmit_")  # the submission id comes first
    assert "3 ok / 0 error of 3 inputs" in result.stdout  # the job's own log, streamed back
    assert "succeeded" in result.stderr.strip().splitlines()[-1]
    store = resolve(preprocess_job.store)
    records = read_records(store)
    assert len(records) == 3 and all(r.status == "ok" and r.audio is not None for r in records)
    assert store.join("manifest.json").exists()


def test_training_job_succeeds_and_writes_the_bundle(ray_head, preprocess_job, s3_server, tmp_path):
    """The smallest real run: tiny LLM, one multitask epoch, one Ray Train worker, DeepSpeed ZeRO-2 on CPU."""
    assert preprocess_job.result.returncode == 0, "needs the preprocess job's store"
    base_llm = build_tiny_llm(str(tmp_path / "llm"))
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"store": preprocess_job.store, "shuffle_buffer": 8},
        "model": {"base_llm": base_llm, "scorer": {
            "lq_former": {"num_queries": 4, "num_layers": 1, "num_heads": 2, "width": 16},
            "projector": {"hidden_dim": 32}, "head": {"hidden_dim": 32}, "lora": {"r": 4, "alpha": 8},
            "prompt": {"transcript_max_tokens": 48}}},
        "stages": [{"name": "multitask", "epochs": 1}],
        "deepspeed": {"zero_stage": 2, "precision": "fp32", "micro_batch_size": 8},
        "scaling": {"workers": 1, "cpus_per_worker": 1},
        "run": {"name": "tiny", "storage": "s3://jobs-store/runs", "max_failures": 0},
    }))
    # The S3 endpoint (not a secret) travels in the job's env_vars to the driver and every Ray Train worker.
    result = submit(ray_head, "train.yaml", f"entrypoint=mllm-dr train --config {config}", "entrypoint_num_cpus=0",
                    f"runtime_env.env_vars.{S3_ENDPOINT_ENV}={s3_server.endpoint}", wait="540")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "model bundle: s3://jobs-store/runs/tiny/bundle" in result.stdout
    bundle = resolve("s3://jobs-store/runs/tiny/bundle")
    assert bundle.join("mllm_dr.json").exists() and bundle.join("multimodal.safetensors").exists()


def test_failing_entrypoint_gives_nonzero_exit_and_the_jobs_error(ray_head, tmp_path):
    result = submit(ray_head, "preprocess.yaml",
                    f"entrypoint=mllm-dr preprocess --source {tmp_path}/missing --out {tmp_path}/store")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job raysubmit_") and "FAILED" in last
    assert f"error: {tmp_path}/missing does not exist" in last  # the entrypoint's one-line reason
    assert not (tmp_path / "store").exists()


def test_submission_without_the_token_is_refused_in_one_line(ray_head, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("not-the-token")
    for env in ({"RAY_AUTH_MODE": "disabled"}, ray_head.client_env(RAY_AUTH_TOKEN_PATH=str(wrong))):
        result = submit(ray_head, "preprocess.yaml", env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert "token" in result.stderr and "not-the-token" not in result.stderr


def test_without_wait_prints_the_id_and_returns(ray_head, tmp_path):
    result = submit(ray_head, "preprocess.yaml", f"entrypoint=mllm-dr synth --out {tmp_path}/raw --interviews 1 "
                    "--seconds 2", wait="")
    assert result.returncode == 0, result.stderr
    submission_id = result.stdout.strip()
    assert submission_id.startswith("raysubmit_") and "ray job logs" in result.stderr
    job = f"{ray_head.address}/api/jobs/{submission_id}"
    auth = {"Authorization": f"Bearer {ray_head.token_path.read_text()}"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = requests.get(job, headers=auth, timeout=5).json()["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(1)
    assert status == "SUCCEEDED", requests.get(f"{job}/logs", headers=auth, timeout=5).json()["logs"][-2000:]
    assert (tmp_path / "raw" / "labels.csv").exists()


def test_wait_is_bounded_by_timeout(ray_head, tmp_path):
    result = submit(ray_head, "preprocess.yaml", f"entrypoint=mllm-dr synth --out {tmp_path}/raw --interviews 4 "
                    "--seconds 20", wait="0.5")
    assert result.returncode == 3, result.stderr
    assert "it keeps running" in result.stderr.strip().splitlines()[-1]
    submission_id = result.stdout.splitlines()[0]
    stop = requests.post(f"{ray_head.address}/api/jobs/{submission_id}/stop", timeout=10,
                         headers={"Authorization": f"Bearer {ray_head.token_path.read_text()}"})
    assert stop.status_code == 200
