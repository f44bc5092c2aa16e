"""Model-test fixtures: a tiny Qwen2 next to the shared tiny Llama (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    from mllm_dr.model.tiny import build_tiny_llm

    return build_tiny_llm(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2")


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_base(request, tiny_llm, tiny_qwen2) -> str:
    return {"llama": tiny_llm, "qwen2": tiny_qwen2}[request.param]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on 2 cores shared by several test sessions: one intra-op thread is many times faster than
    OpenMP threads spinning against each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
