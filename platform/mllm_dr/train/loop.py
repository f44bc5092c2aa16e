"""What each Ray Train worker runs: both stages, epoch by epoch, under a DeepSpeed ZeRO engine.

Per epoch: stream this worker's shard of the training split (``ray.train.get_dataset_shard``), turn each
interview into its item samples with the model's own prompt code, shuffle them in a buffer, train a fixed number
of optimizer steps (the same on every worker, computed by the trainer), evaluate the regression head on the dev
split (every worker scores the dev interviews whose key hashes to its rank; ZeRO-3 needs every worker in every
forward pass, so workers that run out early repeat a batch and discard it), and report metrics with a checkpoint.

A checkpoint directory holds:

- ``deepspeed/``: DeepSpeed's own checkpoint (optimizer state and fp32 master weights, each worker's shard;
  frozen base-LLM weights left out: they come from the base directory);
- ``learned.safetensors``: every weight the run has changed (LoRA, LQ-formers, projectors, head, placeholder
  embedding rows), gathered from the ZeRO-3 shards: what the next stage starts from;
- ``best.safetensors``: the same for the best dev epoch of the final stage so far (what ships);
- ``state.json``: stage, epoch, optimizer steps, the best epoch and every epoch's metrics.

Resuming (a restarted worker group, or the same run name started again) rebuilds the model from the base LLM,
loads ``learned.safetensors`` and, within a stage, the DeepSpeed state; the interrupted epoch is run again from
its start with the same data order and random seeds, so the run ends with the same number of steps.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from mllm_dr.data.records import InterviewRecord
from mllm_dr.data.samples import ItemSample
from mllm_dr.evaluation import metrics
from mllm_dr.model.bundle import save_bundle
from mllm_dr.model.scorer import MultimodalScorer
from mllm_dr.questionnaires import MAX_ITEM_SCORE
from mllm_dr.storage import Location
from mllm_dr.train.config import StageConfig, TrainConfig
from mllm_dr.train.deepspeed import build_ds_config

LEARNED = "learned.safetensors"
BEST = "best.safetensors"
STATE = "state.json"
DS_DIR = "deepspeed"
DS_TAG = "engine"
BUNDLE_DIR = "bundle"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
T = TypeVar("T")


@dataclass
class WorkerPlan:
    """What the trainer works out once on the driver and hands to every worker."""

    config: TrainConfig
    feature_dims: dict[str, int]
    steps_per_epoch: int  # optimizer steps per epoch, identical on every worker
    rationales: dict[tuple[str, str], dict[int, str]]  # (site, interview_id) -> {item number: rationale}
    bundle: Location  # <storage>/<run>/bundle
    preprocess: dict[str, Any] | None = None  # the store's preprocessing config: the bundle records it for serving


@dataclass
class RunState:
    """Progress of a run, saved in every checkpoint. ``stage``/``epoch`` name the last *finished* epoch."""

    stage: int = -1
    epoch: int = -1
    global_step: int = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ data


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (run seed, stage, epoch, rank): the same parts, the same seed, on any worker."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def epoch_batches(rows: Iterator[dict[str, Any]], model: MultimodalScorer, plan: WorkerPlan,
                  rng: random.Random) -> Iterator[dict[str, torch.Tensor]]:
    """Full micro-batches of shuffled item samples from a stream of store rows (a final partial batch is dropped)."""
    micro = plan.config.deepspeed.micro_batch_size
    buffer: list[ItemSample] = []

    def drain(keep: int) -> Iterator[dict[str, torch.Tensor]]:
        rng.shuffle(buffer)
        while len(buffer) - micro >= keep:
            yield model.collate([buffer.pop() for _ in range(micro)])

    for row in rows:
        record = InterviewRecord.from_row(row)
        buffer.extend(model.build_item_samples(record, plan.rationales.get((record.site, record.interview_id))))
        if len(buffer) >= plan.config.data.shuffle_buffer + micro:
            yield from drain(plan.config.data.shuffle_buffer // 2)
    yield from drain(0)


def dev_batches(rows: Iterator[dict[str, Any]], model: MultimodalScorer, micro: int, rank: int, world: int
                ) -> Iterator[tuple[dict[str, torch.Tensor], list[str]]]:
    """This worker's dev interviews (by a hash of their key, whatever the row order): batches of item samples
    with the interview key of each row."""
    pending: list[ItemSample] = []
    for row in rows:
        record = InterviewRecord.from_row(row)
        if zlib.crc32(record.key.encode()) % world != rank:
            continue
        pending.extend(model.build_item_samples(record))
        while len(pending) >= micro:
            chunk, pending = pending[:micro], pending[micro:]
            yield model.collate(chunk), [s.interview_key for s in chunk]
    if pending:
        yield model.collate(pending), [s.interview_key for s in pending]


# ------------------------------------------------------------------------------------------------ weights


def _learned_parameters(model: MultimodalScorer) -> list[torch.nn.Parameter]:
    """Every parameter a run changes, plus the embedding matrices holding the placeholder rows."""
    lora = [p for name, p in model.llm.named_parameters() if "lora_" in name]
    modules = (model.lq_formers, model.projectors, model.head, model.causal_lm.get_input_embeddings(),
               model.causal_lm.get_output_embeddings())
    found = {id(p): p for p in lora + [p for m in modules for p in m.parameters()]}
    return list(found.values())


def learned_state(model: MultimodalScorer, zero3: bool) -> dict[str, torch.Tensor]:
    """The learned weights as full CPU tensors; under ZeRO-3 every worker must call this (it gathers shards)."""
    import deepspeed
    from peft import get_peft_model_state_dict

    with deepspeed.zero.GatheredParameters(_learned_parameters(model), enabled=zero3):
        state = {f"multimodal/{k}": v for k, v in model.multimodal_state_dict().items()}
        lora = get_peft_model_state_dict(model.llm)
        state.update({f"lora/{k}": v.detach().cpu().clone().contiguous() for k, v in lora.items()})
    return state


def load_learned_state(model: MultimodalScorer, state: dict[str, torch.Tensor]) -> None:
    """Put learned weights into a model that is not (yet) partitioned by ZeRO."""
    from peft import set_peft_model_state_dict

    model.load_multimodal_state_dict({k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("multimodal/")})
    lora = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith("lora/")}
    result = set_peft_model_state_dict(model.llm, lora)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"checkpoint LoRA weights do not fit the model: {result.unexpected_keys[:3]}")


def build_model(plan: WorkerPlan) -> MultimodalScorer:
    config = plan.config
    torch.manual_seed(config.seed)  # the same LoRA initialisation on every worker
    return MultimodalScorer.from_base(config.model.base_llm, config.model.scorer, config.model.questionnaire,
                                      plan.feature_dims, dtype=_DTYPES[config.deepspeed.precision])


# ------------------------------------------------------------------------------------------------ engine


def build_engine(model: MultimodalScorer, stage: StageConfig, plan: WorkerPlan, world: int, on_gpu: bool) -> Any:
    import deepspeed

    model.set_stage(stage.name)
    groups = model.parameter_groups(stage.lr)
    scheduler = None
    if stage.warmup_steps:
        warmup = stage.warmup_steps

        def scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))

    engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, lr_scheduler=scheduler,
                                      config=build_ds_config(plan.config.deepspeed, world, on_gpu))
    return engine


def release(engine: Any) -> None:
    engine.destroy()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def in_lockstep(items: Iterator[T], spare: T, device: torch.device) -> Iterator[tuple[T, bool]]:
    """``(item, real)`` while any worker still has items. A worker that ran out repeats its last item (or
    ``spare``, having had none) with ``real`` False, so every worker takes part in every forward pass, as ZeRO-3
    requires."""
    last = spare
    while True:
        item = next(items, None)
        more = torch.tensor([item is not None], dtype=torch.int64, device=device)
        dist.all_reduce(more, op=dist.ReduceOp.MAX)
        if not more.item():
            return
        if item is not None:
            last = item
        yield last, item is not None


# ------------------------------------------------------------------------------------------------ epochs


def train_epoch(engine: Any, batches: Iterator[dict[str, torch.Tensor]], steps: int, accumulation: int,
                alpha: float, state: RunState, plan: WorkerPlan, rank: int
                ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Exactly ``steps`` optimizer steps. Returns the losses averaged over workers, and the last batch."""
    engine.train()
    device = engine.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, lm, mse, tokens
    micro_steps = steps * accumulation
    started = time.perf_counter()
    for micro in range(micro_steps):
        batch = next(batches, None)
        if batch is None:
            raise RuntimeError(f"worker {rank} ran out of training samples after {micro} of {micro_steps} "
                               "micro-batches (the store changed while training?)")
        output = engine(batch, alpha=alpha)
        engine.backward(output.loss)
        engine.step()
        # Summed on the device: no host synchronisation per step.
        totals += torch.stack([t.detach().to(device, torch.float64) for t in (
            output.loss, output.lm_loss, output.mse_loss, batch["attention_mask"].sum())])
        if (micro + 1) % accumulation == 0:
            state.global_step += 1
            _maybe_fail(plan, rank, state.global_step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock stops when the GPU's work is done, not when it was queued
    seconds = time.perf_counter() - started
    dist.all_reduce(totals)
    world = dist.get_world_size()
    loss, lm, mse, tokens = totals.tolist()
    return {"train_loss": loss / (micro_steps * world), "train_lm_loss": lm / (micro_steps * world),
            "train_mse_loss": mse / (micro_steps * world), "train_tokens_per_s": tokens / seconds,
            "train_seconds": seconds}, batch


def _maybe_fail(plan: WorkerPlan, rank: int, step: int) -> None:
    fault = plan.config.run.fail_once
    if fault and fault.rank == rank and fault.step == step and not os.path.exists(fault.marker):
        Path(fault.marker).write_text(f"worker {rank} exited after step {step}\n")
        os._exit(1)


@torch.no_grad()
def evaluate(engine: Any, batches: Iterator[tuple[dict[str, torch.Tensor], list[str]]],
             spare: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Dev metrics of the regression head, all workers pooled: subject totals (MAE, RMSE, CCC) and items (MAE).
    ``spare`` is any batch, run (and ignored) by a worker without dev interviews of its own."""
    engine.eval()
    predictions: list[tuple[str, float, float]] = []  # (interview key, true item score, predicted)
    lm_loss, lm_batches = 0.0, 0
    for (batch, keys), real in in_lockstep(batches, (spare, []), engine.device):
        output = engine(batch, alpha=1.0)
        if not real:
            continue
        lm_loss, lm_batches = lm_loss + output.lm_loss.item(), lm_batches + 1
        predicted = output.regression.float().clamp(0, MAX_ITEM_SCORE).cpu().tolist()
        for key, target, labelled, value in zip(keys, batch["regression_targets"].tolist(),
                                                batch["regression_mask"].tolist(), predicted):
            if labelled:
                predictions.append((key, target, value))
    engine.train()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (predictions, lm_loss, lm_batches))
    rows = [p for part, _, _ in gathered for p in part]
    lm_total, lm_count = sum(g[1] for g in gathered), sum(g[2] for g in gathered)
    if not rows:
        return {"dev_subjects": 0}
    totals: dict[str, list[float]] = {}
    for key, target, value in rows:
        pair = totals.setdefault(key, [0.0, 0.0])
        pair[0] += target
        pair[1] += value
    true_totals, predicted_totals = zip(*totals.values())
    return {"dev_subjects": len(totals), "dev_mae": metrics.mae(true_totals, predicted_totals),
            "dev_rmse": metrics.rmse(true_totals, predicted_totals),
            "dev_ccc": metrics.ccc(true_totals, predicted_totals),
            "dev_item_mae": metrics.mae([r[1] for r in rows], [r[2] for r in rows]),
            "dev_lm_loss": lm_total / lm_count}


def _better(value: float | None, best: dict[str, Any] | None, metric: str) -> bool:
    if best is None:
        return True
    if value is None:
        return False
    previous = best.get(f"dev_{metric}")
    if previous is None:
        return True
    return value > previous if metric == "ccc" else value < previous


# ------------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(engine: Any, model: MultimodalScorer, state: RunState, best_state: dict[str, torch.Tensor] | None,
                    metrics_row: dict[str, Any], rank: int, zero3: bool) -> None:
    """Write this worker's part of the epoch checkpoint and report it (Ray merges the workers' parts)."""
    import ray.train
    from safetensors.torch import save_file

    learned = learned_state(model, zero3)
    with tempfile.TemporaryDirectory(prefix="mllm-dr-ckpt-") as folder:
        engine.save_checkpoint(os.path.join(folder, DS_DIR), tag=DS_TAG, exclude_frozen_parameters=True)
        if rank == 0:
            save_file(learned, os.path.join(folder, LEARNED))
            if best_state is not None:
                save_file(best_state, os.path.join(folder, BEST))
            Path(folder, STATE).write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
        ray.train.report(metrics_row, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _plan_of_epochs(config: TrainConfig) -> list[tuple[int, int]]:
    return [(s, e) for s, stage in enumerate(config.stages) for e in range(stage.epochs)]


# ------------------------------------------------------------------------------------------------ the worker


def train_worker(loop_config: dict[str, Any]) -> None:
    """The ``train_loop_per_worker`` of the run's ``TorchTrainer``; ``loop_config["plan"]`` is a :class:`WorkerPlan`."""
    import ray.train
    from safetensors.torch import load_file

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    plan: WorkerPlan = loop_config["plan"]
    config = plan.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    on_gpu = torch.cuda.is_available()
    zero3 = config.deepspeed.zero_stage == 3
    train_shard = ray.train.get_dataset_shard("train")
    dev_data = ray.train.get_dataset_shard("dev")
    metric = config.run.selection_metric

    with contextlib.ExitStack() as stack:
        state, learned, best_state, resume_dir = RunState(), None, None, None
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            resume_dir = stack.enter_context(checkpoint.as_directory())
            state = RunState(**json.loads(Path(resume_dir, STATE).read_text()))
            learned = load_file(os.path.join(resume_dir, LEARNED))
            if rank == 0 and os.path.exists(os.path.join(resume_dir, BEST)):
                best_state = load_file(os.path.join(resume_dir, BEST))

        engine, model, engine_stage = None, None, None
        for stage_index, epoch in [p for p in _plan_of_epochs(config) if p > (state.stage, state.epoch)]:
            stage = config.stages[stage_index]
            if engine_stage != stage_index:  # a new stage (or a resumed one): fresh model and engine
                if engine is not None:
                    learned = learned_state(model, zero3)
                    release(engine)
                model = build_model(plan)
                if learned is not None:
                    load_learned_state(model, learned)
                engine = build_engine(model, stage, plan, world, on_gpu)
                if resume_dir is not None and stage_index == state.stage:  # mid-stage: optimizer state too
                    engine.load_checkpoint(os.path.join(resume_dir, DS_DIR), tag=DS_TAG, load_module_strict=False)
                engine_stage = stage_index

            torch.manual_seed(derive_seed(config.seed, stage_index, epoch, rank))  # dropout: replayed on resume
            order = random.Random(derive_seed(config.seed, stage_index, epoch))
            alpha = stage.alpha.at(epoch, stage.epochs)
            batches = epoch_batches(train_shard.iter_rows(), model, plan, order)
            row, last_batch = train_epoch(engine, batches, plan.steps_per_epoch,
                                          config.deepspeed.gradient_accumulation, alpha, state, plan, rank)
            dev = dev_batches(dev_data.iter_rows(), model, config.deepspeed.micro_batch_size, rank, world)
            row.update(evaluate(engine, dev, last_batch))
            row.update(stage=stage.name, stage_epoch=epoch, global_step=state.global_step, alpha=alpha)

            # Every worker computes the same pooled dev metrics, hence the same decision (and gathers together).
            is_best = stage_index == len(config.stages) - 1 and _better(row.get(f"dev_{metric}"), state.best, metric)
            if is_best:
                state.best = {k: row.get(k) for k in ("stage", "stage_epoch", "global_step", "dev_mae", "dev_rmse",
                                                       "dev_ccc", "dev_item_mae")}
                snapshot = learned_state(model, zero3)
                best_state = snapshot if rank == 0 else None
            state.stage, state.epoch = stage_index, epoch
            state.history.append(row)
            report = {**row, "is_best": is_best, "best_global_step": state.best and state.best["global_step"]}
            save_checkpoint(engine, model, state, best_state, report, rank, zero3)
        if engine is not None:
            release(engine)

    if rank == 0:
        write_bundle(plan, best_state, state)


def write_bundle(plan: WorkerPlan, weights: dict[str, torch.Tensor] | None, state: RunState) -> None:
    """Rank 0: the shipped model (best dev epoch of the final stage) as a bundle at ``<storage>/<run>/bundle``."""
    if weights is None:
        raise RuntimeError("no trained weights to write a bundle from")
    config = plan.config
    model = build_model(plan)
    load_learned_state(model, weights)
    metadata = {"run": config.run.name, "storage": config.run.storage, "store": config.data.store,
                "rationales": config.data.rationales, "best": state.best, "global_steps": state.global_step,
                "history": state.history, "train_config": config.model_dump(mode="json"),
                "preprocess": plan.preprocess}
    target = plan.bundle
    if target.protocol == "file":
        save_bundle(model, target.path, metadata)
        return
    with tempfile.TemporaryDirectory(prefix="mllm-dr-bundle-") as folder:
        save_bundle(model, folder, metadata)
        files = sorted(Path(folder).rglob("*"), key=lambda p: p.name == "mllm_dr.json")  # the marker goes last
        for path in files:
            if path.is_file():
                target.fs.put_file(str(path), target.join(str(path.relative_to(folder))).path)
        shutil.rmtree(folder, ignore_errors=True)
