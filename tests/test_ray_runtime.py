"""Every command gets Ray the same way: an existing connection is used and left open, else one is started
(with the S3 endpoint in its runtime env) and shut down afterwards."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, ray
    from mllm_dr.ray_runtime import ray_session

    os.environ["MLLM_DR_S3_ENDPOINT"] = "http://127.0.0.1:9"
    with ray_session():
        endpoint = ray.get(ray.remote(lambda: os.environ.get("MLLM_DR_S3_ENDPOINT")).remote())
        env_vars = ray.get_runtime_context().runtime_env.get("env_vars", {})
        print("started", endpoint, env_vars.get("MLLM_DR_S3_ENDPOINT"))
    print("after", ray.is_initialized())
    ray.init(num_cpus=1, include_dashboard=False)
    with ray_session():
        pass
    print("kept", ray.is_initialized())
    ray.shutdown()
""")


@pytest.mark.slow
def test_ray_session_starts_and_stops_its_own_ray_and_leaves_an_existing_one():
    env = {"PATH": "/usr/bin:/bin", "RAY_ADDRESS": ""}  # no cluster to find: a local one is started
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                            env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "started http://127.0.0.1:9 http://127.0.0.1:9" in lines
    assert "after False" in lines and "kept True" in lines
