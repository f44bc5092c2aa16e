"""Real distributed runs: 2 Ray Train workers, DeepSpeed ZeRO-2 and ZeRO-3 over gloo on CPU, the tiny LLM,
a small store with a planted signal. The slowest tests of the project, kept lean: 4 training interviews,
3 short epochs (align 1, multitask 2), 4 optimizer steps per epoch, one Ray session for all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import lean_config, planted_record

from mllm_dr.model.bundle import load_bundle
from mllm_dr.storage import resolve
from mllm_dr.train.config import TrainConfig
from mllm_dr.train.trainer import run_training

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 4  # 4 interviews / 2 workers x 8 items / micro-batch 4
EPOCHS = 3


def final_checkpoint(run_dir) -> Path:
    """The newest checkpoint directory of a local run."""
    return max((p.parent for p in Path(run_dir).glob("checkpoint_*/state.json")),
               key=lambda p: state_of(p)["global_step"])


def state_of(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


@pytest.fixture(scope="module")
def reference_run(ray_local, train_store, tiny_llm, tmp_path_factory):
    """An uninterrupted ZeRO-2 run: what the other runs are compared with."""
    storage = tmp_path_factory.mktemp("runs")
    config = TrainConfig.model_validate(lean_config(train_store, tiny_llm, str(storage), "reference"))
    result = run_training(config)
    return result, storage / "reference"


def test_two_stages_on_zero2_learn_and_ship_the_best_dev_epoch(reference_run):
    result, run_dir = reference_run
    checkpoint = final_checkpoint(run_dir)
    state = state_of(checkpoint)
    history = state["history"]
    assert [(h["stage"], h["stage_epoch"], h["global_step"]) for h in history] == [
        ("align", 0, 4), ("multitask", 0, 8), ("multitask", 1, 12)]
    assert result.metrics["global_step"] == EPOCHS * STEPS_PER_EPOCH
    # Loss falls within the multitask stage (constant alpha), driven by the regression head learning the signal.
    first, last = history[1], history[2]
    assert last["train_loss"] < first["train_loss"] and last["train_mse_loss"] < first["train_mse_loss"]
    assert all(h["dev_subjects"] == 2 for h in history)
    # The shipped epoch is the final stage's best on dev, and the bundle holds exactly its weights.
    best = min(history[1:], key=lambda h: h["dev_mae"])
    assert state["best"]["global_step"] == best["global_step"]
    bundle_dir = resolve(result.bundle).path
    description = json.loads(Path(bundle_dir, "mllm_dr.json").read_text())
    assert description["metadata"]["best"]["global_step"] == best["global_step"]
    manifest = json.loads(resolve(description["metadata"]["store"]).join("manifest.json").read_text())
    assert description["metadata"]["preprocess"] == manifest["config"]
    best_weights = load_file(checkpoint / "best.safetensors")
    model = load_bundle(bundle_dir)
    shipped = model.multimodal_state_dict()
    assert shipped.keys() == {k.split("/", 1)[1] for k in best_weights if k.startswith("multimodal/")}
    assert all(torch.equal(shipped[k.split("/", 1)[1]], v) for k, v in best_weights.items()
               if k.startswith("multimodal/"))
    # ... and it scores an interview it has never seen.
    scored = model.score([planted_record(0, "test", np.random.default_rng(1))], max_new_tokens=6)[0]
    assert [item.item for item in scored.items] == list(range(1, 9))
    assert all(0 <= item.score <= 3 for item in scored.items) and scored.total == sum(i.score for i in scored.items)


def test_killed_worker_resumes_from_its_checkpoint_and_ends_like_the_uninterrupted_run(
        reference_run, train_store, tiny_llm, tmp_path):
    _, reference_dir = reference_run
    marker = tmp_path / "killed"
    config = TrainConfig.model_validate(lean_config(
        train_store, tiny_llm, str(tmp_path / "runs"), "killed",
        run={"max_failures": 1, "fail_once": {"rank": 1, "step": 6, "marker": str(marker)}}))
    result = run_training(config)

    assert marker.exists()  # worker 1 really died, mid-way through the first multitask epoch
    reference, resumed = final_checkpoint(reference_dir), final_checkpoint(tmp_path / "runs" / "killed")
    assert result.metrics["global_step"] == EPOCHS * STEPS_PER_EPOCH
    strip = ("train_seconds", "train_tokens_per_s")
    assert [{k: v for k, v in h.items() if k not in strip} for h in state_of(resumed)["history"]] == \
        [{k: v for k, v in h.items() if k not in strip} for h in state_of(reference)["history"]]
    for name in ("learned.safetensors", "best.safetensors"):
        expected, found = load_file(reference / name), load_file(resumed / name)
        assert expected.keys() == found.keys()
        assert all(torch.equal(expected[k], found[k]) for k in expected), name


def test_zero3_checkpoints_on_s3_and_rerunning_the_name_resumes_there(
        reference_run, s3_server, train_store, tiny_llm, tmp_path):
    import s3fs
    from ray.train import TrainingFailedError

    bucket = s3_server.make_bucket("train-runs")
    marker = tmp_path / "crashed"
    # Threshold 0: every parameter is partitioned (by default DeepSpeed keeps small ones whole, i.e. all of ours).
    values = lean_config(train_store, tiny_llm, f"{bucket}/runs", "zero3",
                         deepspeed={"zero_stage": 3, "param_persistence_threshold": 0},
                         run={"max_failures": 0, "fail_once": {"rank": 1, "step": 6, "marker": str(marker)}})
    with pytest.raises(TrainingFailedError):
        run_training(TrainConfig.model_validate(values))
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint}, skip_instance_cache=True)
    states = [json.loads(fs.cat(p)) for p in fs.glob("train-runs/runs/zero3/checkpoint_*/state.json")]
    assert [s["global_step"] for s in states] == [4]  # the align stage's checkpoint, on S3
    align = states[0]["history"][0]

    result = run_training(TrainConfig.model_validate(values))  # same name: resumes (the fault is disarmed)
    fs.invalidate_cache()
    final = max((json.loads(fs.cat(p)) for p in fs.glob("train-runs/runs/zero3/checkpoint_*/state.json")),
                key=lambda s: s["global_step"])
    assert result.metrics["global_step"] == final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert final["history"][0] == align  # the align epoch was not run again
    assert [h["stage"] for h in final["history"]] == ["align", "multitask", "multitask"]
    # ZeRO-3's sharded arithmetic reaches the same place as ZeRO-2's, up to float rounding.
    reference = state_of(final_checkpoint(reference_run[1]))
    assert [h["train_loss"] for h in final["history"]] == pytest.approx(
        [h["train_loss"] for h in reference["history"]], rel=1e-3)
    fs.get(max(fs.glob("train-runs/runs/zero3/checkpoint_*/learned.safetensors")), str(tmp_path / "learned"))
    gathered = load_file(tmp_path / "learned")  # full tensors, gathered from the ZeRO-3 shards
    expected = load_file(final_checkpoint(reference_run[1]) / "learned.safetensors")
    assert gathered.keys() == expected.keys()
    assert all(torch.allclose(gathered[k], expected[k], atol=1e-3) for k in expected)

    assert result.bundle == f"{bucket}/runs/zero3/bundle"
    local = tmp_path / "bundle"
    fs.get("train-runs/runs/zero3/bundle", str(local), recursive=True)
    scored = load_bundle(local).score([planted_record(0, "test", np.random.default_rng(1))],
                                      generate=False)[0]
    assert len(scored.items) == 8 and all(0 <= i.regression_score <= 3 for i in scored.items)
