"""The tiny LLM: a real Hugging Face directory, loaded through the same Auto* path as a real checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mllm_dr.model.tiny import build_tiny_llm


def digest(directory: str | Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).iterdir())}


def test_same_seed_same_files_other_seed_other_weights(tiny_llm, tmp_path):
    assert digest(build_tiny_llm(tmp_path / "again")) == digest(tiny_llm)
    other = digest(build_tiny_llm(tmp_path / "seed1", seed=1))
    assert other["model.safetensors"] != digest(tiny_llm)["model.safetensors"]
    assert other["tokenizer.json"] == digest(tiny_llm)["tokenizer.json"]


@pytest.mark.parametrize("arch, model_class", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_loads_with_auto_classes_and_generates(arch, model_class, tiny_llm, tiny_qwen2):
    directory = {"llama": tiny_llm, "qwen2": tiny_qwen2}[arch]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert type(model).__name__ == model_class and model.config.hidden_size == 64
    assert sum(p.numel() for p in model.parameters()) < 300_000
    text = "Score: 2\nRationale: 受访者几乎每天都睡不好 (trouble falling asleep)."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text and tokenizer.unk_token_id not in ids  # byte-level: nothing unknown
    assert len(ids) < len(text.encode()) // 2  # trained merges: far fewer tokens than bytes
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n" if arch == "llama"
                         else "<|im_start|>assistant\n")
    prompt = tokenizer(chat, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 3) or int(out[0, -1]) in (
        model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id])


def test_cli_init_tiny_llm(cli, tmp_path, tiny_llm):
    result = cli("init-tiny-llm", "--out", str(tmp_path / "tiny"), check=True)
    assert "tiny llama LLM written to" in result.stdout
    assert digest(tmp_path / "tiny") == digest(tiny_llm)
    bad = cli("init-tiny-llm", "--out", str(tmp_path / "x"), "--arch", "gpt2")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
