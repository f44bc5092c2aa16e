"""``mllm-dr train``: the driver side of a fine-tuning run on Ray Train.

It checks everything that can be checked before any worker starts (a config error should not cost a worker group
and its retries), reads the feature store through Ray Data, works out the number of optimizer steps per epoch,
and hands :func:`mllm_dr.train.loop.train_worker` to a ``TorchTrainer``. Fault tolerance is Ray Train's: a lost
worker restarts the group from the last checkpoint (``run.max_failures`` times), and starting a run again with
the same ``run.name`` and ``run.storage`` resumes it. The shipped model is written to
``<run.storage>/<run.name>/bundle``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mllm_dr.config import load_config
from mllm_dr.data.distill import rationale_lookup
from mllm_dr.data.preprocess import read_manifest
from mllm_dr.data.records import records_dir, table_to_records
from mllm_dr.errors import UserError
from mllm_dr.questionnaires import get_questionnaire
from mllm_dr.ray_runtime import ray_session
from mllm_dr.storage import Location, resolve
from mllm_dr.train.config import TrainConfig
from mllm_dr.train.loop import BUNDLE_DIR, WorkerPlan, train_worker

# What the workers read of each store row (provenance and rates are not needed to train).
TRAIN_COLUMNS = ["interview_id", "site", "split", "language", "questionnaire", "item_scores", "transcript", "audio",
                 "video", "status"]
_LABEL_COLUMNS = ["split", "status", "item_scores"]


@dataclass
class TrainResult:
    metrics: dict[str, Any]  # the last epoch's report (rank 0)
    checkpoint: str | None  # the last checkpoint's path in the run storage
    bundle: str  # URI of the shipped model bundle


def _parts(store: Location) -> list[Location]:
    folder = records_dir(store)
    parts = [f for f in folder.list_files() if f.path.endswith(".parquet")] if folder.exists() else []
    if not parts:
        raise UserError(f"{store.uri} is not a feature store (no records/*.parquet); run `mllm-dr preprocess`")
    return parts


def count_labelled(store: Location, split: str) -> int:
    """Usable interviews of a split: ok rows with item labels (read from the light columns only)."""
    count = 0
    for part in _parts(store):
        table = pq.read_table(part.path, filesystem=store.fs, columns=_LABEL_COLUMNS)
        for split_value, status, scores in zip(*(table.column(c).to_pylist() for c in _LABEL_COLUMNS)):
            count += split_value == split and status == "ok" and scores is not None
    return count


def feature_dims(store: Location, manifest: dict[str, Any]) -> dict[str, int]:
    """Each modality's feature width: from the manifest's encoders, else from the first rows that carry it."""
    encoders = manifest.get("encoders") or {}
    from_manifest = {m: int(e["dim"]) for m, e in encoders.items() if m in ("audio", "video") and "dim" in e}
    if from_manifest:
        return from_manifest
    dims: dict[str, int] = {}
    for part in _parts(store):
        with part.open("rb") as f:
            batches = pq.ParquetFile(f).iter_batches(batch_size=32, columns=["interview_id", "audio", "video", "status"])
            for batch in batches:
                for record in table_to_records(pa.Table.from_batches([batch])):
                    for modality in ("audio", "video"):
                        value = getattr(record, modality)
                        if record.ok and value is not None and value.ndim == 2:
                            dims.setdefault(modality, int(value.shape[1]))
                if len(dims) == 2:
                    return dims
    return dims


def plan_run(config: TrainConfig) -> tuple[WorkerPlan, Location]:
    """Validate the run against the store and the base LLM; the plan every worker gets, and the store."""
    store = resolve(config.data.store)
    if not Path(config.model.base_llm, "config.json").is_file():
        raise UserError(f"model.base_llm {config.model.base_llm} is not a local Hugging Face model directory "
                        "(it must be readable by the driver and every worker)")
    n_train = count_labelled(store, config.data.train_split)
    workers = config.scaling.workers
    ds = config.deepspeed
    items = get_questionnaire(config.model.questionnaire).n_items
    steps = (n_train // workers * items // ds.micro_batch_size) // ds.gradient_accumulation
    if steps < 1:
        raise UserError(f"{n_train} labelled {config.data.train_split!r} interviews ({items} items each) make no "
                        f"optimizer step for {workers} workers x micro-batch {ds.micro_batch_size} x "
                        f"accumulation {ds.gradient_accumulation}")
    if config.data.dev_split == config.data.train_split:
        raise UserError("data.dev_split must differ from data.train_split (the dev split chooses the model)")
    rationales = {}
    if config.data.rationales:
        location = resolve(config.data.rationales)
        if not location.exists():
            raise UserError(f"data.rationales {location.uri} does not exist; run `mllm-dr distill` first")
        rationales = rationale_lookup(location)
    manifest = read_manifest(store) or {}
    dims = dict(config.model.feature_dims) if config.model.feature_dims is not None else feature_dims(store, manifest)
    storage = resolve(config.run.storage)
    plan = WorkerPlan(config=config, feature_dims=dims, steps_per_epoch=steps, rationales=rationales,
                      bundle=storage.join(config.run.name, BUNDLE_DIR),
                      preprocess=manifest.get("config"))
    return plan, store


def build_trainer(plan: WorkerPlan, store: Location) -> Any:
    """The ``TorchTrainer`` of a planned run (not started)."""
    import ray.data
    import ray.train
    from ray.data.expressions import col
    from ray.train.torch import TorchTrainer

    config = plan.config
    rows = ray.data.read_parquet(records_dir(store).uri, filesystem=store.arrow_filesystem(), columns=TRAIN_COLUMNS)
    usable = (col("status") == "ok") & col("item_scores").is_not_null()
    train = rows.filter(expr=usable & (col("split") == config.data.train_split))
    # Dev is small and every worker reads all of it every epoch: read it once into the object store.
    datasets = {"train": train.materialize() if config.data.materialize else train,
                "dev": rows.filter(expr=usable & (col("split") == config.data.dev_split)).materialize()}
    storage = resolve(config.run.storage)
    scaling = config.scaling
    run_config = ray.train.RunConfig(
        name=config.run.name,
        storage_path=storage.path,
        storage_filesystem=None if storage.protocol == "file" else storage.arrow_filesystem(),
        failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.run.checkpoints_to_keep),
    )
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"plan": plan},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.workers, use_gpu=scaling.gpus_per_worker > 0,
            resources_per_worker={"CPU": scaling.cpus_per_worker, "GPU": scaling.gpus_per_worker}),
        run_config=run_config,
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),  # every worker sees all of dev
    )
    return trainer


def run_training(config: TrainConfig) -> TrainResult:
    """Run (or resume) the whole two-stage training; returns once the bundle is written."""
    plan, store = plan_run(config)
    with ray_session(log_to_driver=True):  # the workers' epoch lines are the run's progress
        result = build_trainer(plan, store).fit()
    if not plan.bundle.join("mllm_dr.json").exists():
        raise RuntimeError(f"training finished but wrote no bundle at {plan.bundle.uri}")
    return TrainResult(metrics=dict(result.metrics or {}),
                       checkpoint=result.checkpoint.path if result.checkpoint else None, bundle=plan.bundle.uri)


def main(args: argparse.Namespace) -> int:
    from ray.train import TrainingFailedError

    config = load_config(TrainConfig, args.config, args.set)
    try:
        result = run_training(config)
    except TrainingFailedError as exc:
        reason = str(exc).strip().splitlines()
        print(f"error: training failed ({reason[0] if reason else type(exc).__name__}); see the worker logs above",
              file=sys.stderr)
        return 1
    best = json.loads(resolve(result.bundle).join("mllm_dr.json").read_text())["metadata"].get("best")
    last = {k: result.metrics.get(k) for k in ("stage", "stage_epoch", "global_step", "train_loss", "dev_mae")}
    print(f"run {config.run.name}: last epoch {json.dumps(last)}")
    print(f"shipped epoch (best dev {config.run.selection_metric}): {json.dumps(best)}")
    print(f"model bundle: {result.bundle}")
    return 0
