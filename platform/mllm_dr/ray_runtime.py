"""One way for every command to get a Ray cluster: the one already connected, ``RAY_ADDRESS``, or a local one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from mllm_dr.storage import S3_ENDPOINT_ENV


@contextlib.contextmanager
def ray_session(log_to_driver: bool = False) -> Iterator[None]:
    """Ray is up inside the block. A connection that already exists (a job driver, a test, the demo) is used
    and left open; otherwise this connects to ``RAY_ADDRESS`` (or starts a local Ray) and disconnects after.

    Workers resolve ``s3://`` URIs themselves, so a custom S3 endpoint (an address, not a secret) travels to them
    in the runtime env. A job driver must not pass it again: Ray refuses a runtime env that repeats one of the
    job's own variables, which already carry it.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    endpoint = os.environ.get(S3_ENDPOINT_ENV)
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    runtime_env = {"env_vars": {S3_ENDPOINT_ENV: endpoint}} if endpoint and not in_job else None
    ray.init(runtime_env=runtime_env, log_to_driver=log_to_driver, include_dashboard=False)  # RAY_ADDRESS if set
    try:
        yield
    finally:
        ray.shutdown()
