"""What a run is fed, checked without starting Ray: the plan (store, splits, steps, rationales, feature widths),
and the batches each worker makes from store rows."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from train_fixtures import AUDIO_DIM, VIDEO_DIM, lean_config, planted_record

from mllm_dr.data.distill import RATIONALE_SCHEMA
from mllm_dr.data.samples import IGNORE_INDEX
from mllm_dr.errors import UserError
from mllm_dr.model.scorer import MultimodalScorer
from mllm_dr.storage import resolve
from mllm_dr.train.config import TrainConfig
from mllm_dr.train.loop import WorkerPlan, dev_batches, epoch_batches
from mllm_dr.train.trainer import plan_run

RATIONALE = "Wakes at four every night and cannot fall asleep again."


def config_for(store: str, base_llm: str, tmp_path, **sections) -> TrainConfig:
    return TrainConfig.model_validate(lean_config(store, base_llm, str(tmp_path / "runs"), "plan", **sections))


@pytest.fixture(scope="module")
def model(tiny_llm) -> MultimodalScorer:
    config = TrainConfig.model_validate(lean_config("/s", tiny_llm, "/r", "n"))
    return MultimodalScorer.from_base(tiny_llm, config.model.scorer, "phq8", {"audio": AUDIO_DIM, "video": VIDEO_DIM})


def test_plan_counts_steps_reads_rationales_and_feature_widths(train_store, tiny_llm, tmp_path):
    rationales = tmp_path / "rationales"
    rationales.mkdir()
    rows = [{"interview_id": "train0", "site": "synthetic", "item": 3, "score": 2, "rationale": RATIONALE,
             "teacher": "t"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=RATIONALE_SCHEMA), rationales / "part-0.parquet")
    plan, store = plan_run(config_for(train_store, tiny_llm, tmp_path, data={"rationales": str(rationales)}))
    assert store.uri == train_store
    assert plan.steps_per_epoch == 4  # 4 labelled train interviews (the error row does not count) / 2 x 8 / 4
    assert plan.feature_dims == {"audio": AUDIO_DIM, "video": VIDEO_DIM}  # no manifest: read from the rows
    assert plan.rationales == {("synthetic", "train0"): {3: RATIONALE}}
    assert plan.bundle.uri == str(tmp_path / "runs" / "plan" / "bundle")


@pytest.mark.parametrize("sections, message", [
    ({"scaling": {"workers": 64}}, "make no optimizer step for 64 workers"),
    ({"data": {"dev_split": "train"}}, "data.dev_split must differ"),
    ({"data": {"rationales": "/nowhere/rationales"}}, "does not exist; run `mllm-dr distill` first"),
    ({"model": {"base_llm": "/nowhere/llm"}}, "is not a local Hugging Face model directory"),
])
def test_plan_refuses_runs_that_cannot_work(train_store, tiny_llm, tmp_path, sections, message):
    if "model" in sections:
        values = lean_config(train_store, tiny_llm, str(tmp_path), "n")
        values["model"]["base_llm"] = sections["model"]["base_llm"]
        config = TrainConfig.model_validate(values)
    else:
        config = config_for(train_store, tiny_llm, tmp_path, **sections)
    with pytest.raises(UserError, match=message.replace("`", ".").replace("(", r"\(")):
        plan_run(config)


def test_plan_refuses_a_folder_that_is_not_a_store(tiny_llm, tmp_path):
    with pytest.raises(UserError, match="is not a feature store"):
        plan_run(config_for(str(tmp_path), tiny_llm, tmp_path))


def _targets(model: MultimodalScorer, batch: dict[str, torch.Tensor]) -> list[str]:
    return [model.tokenizer.decode(row[row != IGNORE_INDEX]) for row in batch["labels"]]


def test_worker_batches_join_rationales_and_shuffle_by_seed(model, tiny_llm, tmp_path):
    rng = np.random.default_rng(3)
    records = [planted_record(i, "train", rng) for i in range(2)]
    plan = WorkerPlan(config_for("/s", tiny_llm, tmp_path), {"audio": AUDIO_DIM, "video": VIDEO_DIM}, 4,
                      {("synthetic", "train0"): {3: RATIONALE}}, resolve(str(tmp_path / "b")))
    rows = [r.to_row() for r in records]
    batches = list(epoch_batches(iter(rows), model, plan, random.Random(0)))
    assert len(batches) == 4 and all(b["input_ids"].shape[0] == 4 for b in batches)  # 16 item samples
    targets = [t for b in batches for t in _targets(model, b)]
    assert sum(RATIONALE in t for t in targets) == 1  # train0, item 3 only
    assert sum("Over the last two weeks the participant was bothered by" in t for t in targets) == 15
    assert {"audio", "audio_mask", "video", "video_mask"} <= batches[0].keys()

    def order(seed: int) -> list[int]:
        return [int(i) for b in epoch_batches(iter(rows), model, plan, random.Random(seed)) for i in b["item_index"]]

    assert order(0) == order(0) and order(0) != order(1)


def test_dev_batches_split_interviews_between_workers_whatever_the_order(model):
    rng = np.random.default_rng(5)
    rows = [planted_record(i, "dev", rng).to_row() for i in range(5)]
    seen = {}
    for rank in range(2):
        for shuffled in (rows, rows[::-1]):
            keys = [k for _, batch_keys in dev_batches(iter(shuffled), model, 4, rank, 2) for k in batch_keys]
            seen.setdefault(rank, sorted(keys))
            assert sorted(keys) == seen[rank]
    assert sorted(seen[0] + seen[1]) == sorted(f"synthetic/dev{i}" for i in range(5) for _ in range(8))


def test_cli_reports_an_impossible_run_in_one_line(cli, train_store, tiny_llm, tmp_path):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(lean_config(train_store, tiny_llm, str(tmp_path / "runs"), "cli")))
    result = cli("train", "--config", str(path), "--set", "scaling.workers=64")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and result.stderr.strip().count("\n") == 0
    assert "make no optimizer step" in result.stderr
