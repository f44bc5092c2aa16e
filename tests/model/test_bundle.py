"""Model bundle: layout, exact round trip, dtype on load, clear errors for wrong or missing pieces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_helpers import AUDIO_DIM, VIDEO_DIM, make_record, randomize_trainables, small_config

from mllm_dr.errors import UserError
from mllm_dr.model.bundle import load_bundle, read_bundle_description, save_bundle
from mllm_dr.model.scorer import MultimodalScorer


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """A scorer whose every trainable part differs from its initialisation, saved as a bundle."""
    model = MultimodalScorer.from_base(tiny_base, small_config(), "phq8", {"audio": AUDIO_DIM, "video": VIDEO_DIM})
    randomize_trainables(model, seed=1)
    model.eval()
    bundle = tmp_path_factory.mktemp("bundle")
    save_bundle(model, bundle, {"stage": "multitask", "epochs": 2, "selected_on": "dev"})
    return model, bundle


def test_bundle_layout(trained, tiny_base):
    _, bundle = trained
    assert {p.name for p in bundle.iterdir()} == {"mllm_dr.json", "multimodal.safetensors", "adapter", "tokenizer"}
    adapter = json.loads((bundle / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 32 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert (bundle / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000  # no embedding copy
    description = read_bundle_description(bundle)
    assert description["base_llm"] == str(Path(tiny_base).resolve())
    assert description["questionnaire"] == "phq8" and description["feature_dims"] == {"audio": 8, "video": 10}
    assert description["metadata"] == {"stage": "multitask", "epochs": 2, "selected_on": "dev"}
    assert description["config"]["lq_former"]["num_queries"] == 4 and description["dtype"] == "float32"
    tokens = json.loads((bundle / "tokenizer" / "tokenizer.json").read_text())["added_tokens"]
    assert {"<|mllm_dr_audio|>", "<|mllm_dr_video|>"} <= {t["content"] for t in tokens}


def test_round_trip_gives_identical_outputs(trained):
    model, bundle = trained
    loaded = load_bundle(bundle)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    records = [make_record("a"), make_record("b", seed=5, video_frames=None)]
    batch = model.collate([s for r in records for s in model.build_item_samples(r)[:3]])
    with torch.no_grad():
        before, after = model(batch), loaded(batch)
    assert torch.equal(before.regression, after.regression) and torch.equal(before.lm_loss, after.lm_loss)
    assert [r.to_dict() for r in model.score(records, max_new_tokens=5)] == [
        r.to_dict() for r in loaded.score(records, max_new_tokens=5)]
    for name, tensor in model.state_dict().items():  # every weight, LLM embeddings of the placeholders included
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_load_in_bfloat16_and_continue_training(trained):
    model, bundle = trained
    half = load_bundle(bundle, dtype="bfloat16")
    # peft keeps LoRA weights in float32 over a half-precision base (its autocast_adapter_dtype default).
    assert {p.dtype for n, p in half.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    record = make_record()
    full_scores = [i.regression_score for i in model.score([record], generate=False)[0].items]
    half_scores = [i.regression_score for i in half.score([record], generate=False)[0].items]
    assert max(abs(a - b) for a, b in zip(full_scores, half_scores)) < 0.15
    half.set_stage("multitask")  # a loaded bundle can be trained further
    assert {g["name"] for g in half.parameter_groups()} == {"llm", "head"}


def test_load_errors_are_clear(trained, tiny_llm, tiny_qwen2, tmp_path):
    model, bundle = trained
    with pytest.raises(UserError, match="is not a model bundle"):
        load_bundle(tmp_path)
    with pytest.raises(UserError, match="base LLM .* not found"):
        load_bundle(bundle, base_llm_dir=tmp_path / "nowhere")
    other = tiny_qwen2 if model.causal_lm.config.model_type == "llama" else tiny_llm
    with pytest.raises(UserError, match="does not match the bundle"):
        load_bundle(bundle, base_llm_dir=other)
    assert load_bundle(bundle, base_llm_dir=model.base_llm_dir).base_llm_dir == model.base_llm_dir
