"""The GPU measurement of bench/train.py can only be taken where a GPU is lent; its code runs here on the CPU
(gloo, fp32, a tiny model) so that it is known to work when one is."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_train_benchmark_mfu_mode_runs_on_cpu():
    command = [sys.executable, os.path.join(REPO, "bench", "train.py"), "--gpu", "--device", "cpu", "--size", "tiny",
               "--seq", "600", "--steps", "2", "--warmup", "1", "--micro", "4", "--peak-tflops", "0.1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "MASTER_PORT": "29531"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device: CPU (code-path check); model tiny" in result.stdout
    found = re.search(r"tokens/s (\d+); ([\d.e+-]+) GFLOP/token; achieved ([\d.e+-]+) TFLOP/s; MFU ([\d.]+)%",
                      result.stdout)
    assert found, result.stdout[-2000:]
    tokens_per_s, gflop_per_token, achieved, mfu = (float(g) for g in found.groups())
    assert tokens_per_s > 0 and gflop_per_token > 0
    assert mfu == pytest.approx(100 * achieved / 0.1, rel=0.02, abs=0.1)
