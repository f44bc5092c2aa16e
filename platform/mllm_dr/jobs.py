"""``mllm-dr submit``: run one pipeline stage as a Ray job on a cluster, from a YAML job spec in ``jobs/``.

A spec is the arguments of ``JobSubmissionClient.submit_job`` (and of ``ray job submit``) as typed data:
an ``mllm-dr`` entrypoint, a runtime_env, the entrypoint's resources. It is validated here, before anything
reaches the cluster: the entrypoint must parse as an ``mllm-dr`` command, and no environment variable may
carry a credential (runtime_env variables are stored in the job table and shown in the dashboard; clusters
get S3 access from instance roles / service accounts, and the Ray token from Ray's own token mechanism).
Relative paths in a spec are relative to the spec file, so a spec means the same wherever it is submitted from.

Cluster token authentication is Ray's: with ``RAY_AUTH_MODE=token`` in the submitter's environment,
``JobSubmissionClient`` sends the token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``. This module never reads or handles the token itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from mllm_dr.config import StrictModel, load_config
from mllm_dr.errors import UserError

ADDRESS_ENV = "RAY_ADDRESS"
# Ray lets these variables override an explicit address; on our command line the explicit flag wins.
_RAY_ADDRESS_OVERRIDES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")

_SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE_KEY|API_?KEY|ACCESS_KEY|AUTH_KEY", re.IGNORECASE)
_URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")


def _refuse_embedded_credentials(value: str, where: str) -> str:
    if _URL_WITH_PASSWORD.search(value):
        raise ValueError(f"{where} has a password in a URL; use the cluster's credential chain instead")
    return value


class PipSpec(StrictModel):
    """runtime_env ``pip`` in Ray's dict form; each package line is a line of a requirements file."""

    packages: list[str] = Field(description="requirement lines; ${RAY_RUNTIME_ENV_CREATE_WORKING_DIR} = working_dir")
    pip_check: bool = False
    pip_install_options: list[str] | None = None
    pip_version: str | None = None

    @field_validator("packages")
    @classmethod
    def _no_credentials(cls, packages: list[str]) -> list[str]:
        return [_refuse_embedded_credentials(p, "runtime_env.pip") for p in packages]


class RuntimeEnvConfigSpec(StrictModel):
    setup_timeout_seconds: int = Field(600, ge=-1, description="limit for installing the env on a node (-1: none)")
    eager_install: bool = True


class RuntimeEnvSpec(StrictModel):
    """The subset of Ray's runtime_env a stage needs. Local paths are relative to the spec file."""

    working_dir: str | None = Field(None, description="local folder (uploaded) or remote .zip URI; the job's cwd")
    py_modules: list[str] = Field(default_factory=list, description="local packages (uploaded) put on PYTHONPATH")
    excludes: list[str] = Field(default_factory=list, description="gitignore-style patterns not uploaded")
    pip: PipSpec | list[str] | str | None = Field(None, description="packages, or a requirements file path")
    env_vars: dict[str, str] = Field(default_factory=dict, description="non-secret variables for every process")
    config: RuntimeEnvConfigSpec | None = None

    @field_validator("env_vars")
    @classmethod
    def _no_secrets(cls, env_vars: dict[str, str]) -> dict[str, str]:
        for name, value in env_vars.items():
            if _SECRET_NAME.search(name):
                raise ValueError(
                    f"{name} looks like a credential; runtime_env variables are visible in the dashboard and job "
                    "table: use instance roles / service accounts for S3 and Ray's token file for the cluster")
            _refuse_embedded_credentials(value, f"runtime_env.env_vars.{name}")
        return env_vars

    @field_validator("working_dir", "py_modules", "pip")
    @classmethod
    def _no_credentials_in_uris(cls, value: Any) -> Any:
        for item in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            _refuse_embedded_credentials(item, "runtime_env")
        return value

    def resolved(self, base: Path) -> RuntimeEnvSpec:
        """A copy with local paths made absolute against ``base`` (the spec's folder)."""
        return self.model_copy(update={
            "working_dir": _resolve(self.working_dir, base),
            "py_modules": [_resolve(m, base) for m in self.py_modules],
            "pip": _resolve(self.pip, base) if isinstance(self.pip, str) else self.pip,
        })

    def to_ray(self) -> dict[str, Any]:
        """The runtime_env dict Ray takes, without empty fields."""
        env = self.model_dump(exclude_none=True)
        return {key: value for key, value in env.items() if value not in ([], {})}


class JobSpec(StrictModel):
    """One pipeline stage as a Ray job: the keyword arguments of ``JobSubmissionClient.submit_job``."""

    entrypoint: str = Field(description="an mllm-dr command, run in working_dir on the head (or entrypoint node)")
    runtime_env: RuntimeEnvSpec = RuntimeEnvSpec()
    entrypoint_num_cpus: float = Field(0, ge=0, description="CPUs reserved for the entrypoint process itself")
    entrypoint_num_gpus: float = Field(0, ge=0, description="GPUs reserved for the entrypoint process itself")
    entrypoint_memory: int = Field(0, ge=0, description="bytes of memory reserved for the entrypoint process")
    entrypoint_resources: dict[str, float] = Field(default_factory=dict, description="custom resources reserved")
    submission_id: str | None = Field(None, description="unique per cluster; Ray generates one when absent")
    metadata: dict[str, str] = Field(default_factory=dict, description="labels stored with the job")

    @field_validator("entrypoint")
    @classmethod
    def _is_mllm_dr_command(cls, entrypoint: str) -> str:
        parse_entrypoint(entrypoint)
        return entrypoint

    def submit_kwargs(self) -> dict[str, Any]:
        """Arguments for ``JobSubmissionClient.submit_job``; unset resources left to Ray's defaults."""
        kwargs = {
            "entrypoint": self.entrypoint,
            "runtime_env": self.runtime_env.to_ray(),
            "entrypoint_num_cpus": self.entrypoint_num_cpus or None,
            "entrypoint_num_gpus": self.entrypoint_num_gpus or None,
            "entrypoint_memory": self.entrypoint_memory or None,
            "entrypoint_resources": self.entrypoint_resources or None,
            "submission_id": self.submission_id,
            "metadata": self.metadata or None,
        }
        return {key: value for key, value in kwargs.items() if value is not None}

    def ray_job_submit_command(self, address: str) -> str:
        """The equivalent ``ray job submit`` command line (it streams logs and waits unless --no-wait)."""
        args = ["ray", "job", "submit", "--address", address]
        if self.submission_id:
            args += ["--submission-id", self.submission_id]
        runtime_env = self.runtime_env.to_ray()
        if runtime_env:
            args += ["--runtime-env-json", json.dumps(runtime_env, separators=(",", ":"))]
        if self.metadata:
            args += ["--metadata-json", json.dumps(self.metadata, separators=(",", ":"))]
        for flag, value in (("--entrypoint-num-cpus", f"{self.entrypoint_num_cpus:g}"),
                            ("--entrypoint-num-gpus", f"{self.entrypoint_num_gpus:g}"),
                            ("--entrypoint-memory", str(self.entrypoint_memory))):
            if value != "0":
                args += [flag, value]
        if self.entrypoint_resources:
            args += ["--entrypoint-resources", json.dumps(self.entrypoint_resources, separators=(",", ":"))]
        return shlex.join(args) + " -- " + self.entrypoint


def parse_entrypoint(entrypoint: str) -> argparse.Namespace:
    """Parse an ``mllm-dr ...`` command line with the real CLI parser; ValueError with argparse's reason if bad."""
    from mllm_dr.cli import build_parser

    try:
        words = shlex.split(entrypoint)
    except ValueError as exc:
        raise ValueError(f"entrypoint is not a valid command line ({exc})") from None
    if not words or words[0] != "mllm-dr":
        raise ValueError("entrypoint must be an mllm-dr command, e.g. 'mllm-dr preprocess --source ... --out ...'")
    if len(words) > 1 and words[1] == "submit":
        raise ValueError("entrypoint cannot be 'mllm-dr submit' (a job that submits jobs)")
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(words[1:])
    except SystemExit:
        reason = (stderr.getvalue().strip().splitlines() or ["not a valid mllm-dr command"])[-1]
        raise ValueError(f"entrypoint: {reason.removeprefix('mllm-dr: ')}") from None


def load_job_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read and validate a spec (``--set a.b=c`` overrides applied), with local paths resolved."""
    spec = load_config(JobSpec, path, list(overrides))
    return spec.model_copy(update={"runtime_env": spec.runtime_env.resolved(Path(path).resolve().parent)})


def _resolve(path: str | None, base: Path) -> str | None:
    if path is None or "://" in path or os.path.isabs(path):
        return path
    resolved = (base / os.path.expanduser(path)).resolve()
    if not resolved.exists():
        raise UserError(f"runtime_env path not found: {path} (resolved against {base} to {resolved})")
    return str(resolved)


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in _RAY_ADDRESS_OVERRIDES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str):
    """A JobSubmissionClient for ``address``, with connection and auth failures as one-line UserErrors."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not address.startswith(("http://", "https://")):
        raise UserError(f"--address {address}: expected the Jobs API URL of the head, e.g. http://127.0.0.1:8265")
    try:
        with _explicit_address():
            return JobSubmissionClient(address)
    except AuthenticationError:
        raise UserError(
            f"the cluster at {address} requires a token: set RAY_AUTH_MODE=token and put the cluster's token in "
            "~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH); get it with `ray get-auth-token` on the head") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray Jobs API at {address}: {_first_line(exc)}") from None


def submit(spec: JobSpec, address: str, wait: bool = False, timeout_s: float | None = None) -> int:
    """Submit ``spec``; print the submission id; with ``wait``, stream logs and return 0 only if it succeeded."""
    from ray.exceptions import AuthenticationError

    client = connect(address)
    try:
        submission_id = client.submit_job(**spec.submit_kwargs())
    except AuthenticationError:
        raise UserError(f"the cluster at {address} rejected the token (RAY_AUTH_MODE=token)") from None
    except (RuntimeError, ValueError, OSError) as exc:
        raise UserError(f"job submission failed: {_first_line(exc)}") from None
    print(submission_id, flush=True)
    if not wait:
        print(f"follow with: ray job logs --address {address} --follow {submission_id}", file=sys.stderr)
        return 0
    try:
        return _wait(client, submission_id, timeout_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running. Stop it with: ray job stop --address {address} "
              f"{submission_id}", file=sys.stderr)
        raise


def _wait(client, submission_id: str, timeout_s: float | None) -> int:
    import aiohttp
    from ray.job_submission import JobStatus

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        asyncio.run(asyncio.wait_for(_print_logs(client, submission_id), timeout_s))
    except TimeoutError:
        pass
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:  # a dropped log stream must not lose the outcome
        print(f"(log stream ended early: {_first_line(exc)}; polling the job status)", file=sys.stderr)
    status = client.get_job_status(submission_id)
    while not status.is_terminal() and (deadline is None or time.monotonic() < deadline):
        time.sleep(1.0)
        status = client.get_job_status(submission_id)
    if not status.is_terminal():
        print(f"error: job {submission_id} still {status.value} after {timeout_s:g} s; it keeps running",
              file=sys.stderr)
        return 3
    if status == JobStatus.SUCCEEDED:
        print(f"job {submission_id} succeeded", file=sys.stderr)
        return 0
    info = client.get_job_info(submission_id)
    print(f"error: job {submission_id} {status.value}: {_job_error(info.message or '')}", file=sys.stderr)
    return 1


async def _print_logs(client, submission_id: str) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        print(chunk, end="", flush=True)


def _job_error(message: str) -> str:
    """Ray's failure message is a headline plus the log tail; keep the headline and the last log line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else "no error message from Ray"
    return f"{lines[0].rstrip(':')} — {lines[-1]}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(args: argparse.Namespace) -> int:
    spec = load_job_spec(args.spec, args.set)
    address = args.address or os.environ.get(ADDRESS_ENV)
    if args.dry_run:
        print(spec.ray_job_submit_command(address or "http://127.0.0.1:8265"))
        return 0
    if not address:
        raise UserError(f"no cluster address: pass --address http://HEAD:8265 or set {ADDRESS_ENV}")
    return submit(spec, address, wait=args.wait, timeout_s=args.timeout)
