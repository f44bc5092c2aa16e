"""The training config: one YAML file (plus ``--set a.b=c`` overrides) describes a whole fine-tuning run.

Sections: ``data`` (feature store, splits, rationale set), ``model`` (base LLM, questionnaire, scorer),
``stages`` (align, multitask: epochs, learning rates, alpha schedule), ``deepspeed`` (ZeRO, precision,
batching), ``scaling`` (Ray Train workers) and ``run`` (storage, name, checkpoints, failures). Every key is
validated; unknown keys are errors. See ``jobs/configs/`` for complete examples.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from mllm_dr.config import StrictModel
from mllm_dr.model.scorer import DEFAULT_LRS, ScorerConfig, Stage

# The optimizer parameter groups of MultimodalScorer.parameter_groups (llm = its LoRA adapters).
ParameterGroup = Literal["llm", "lq_former", "projectors", "head"]


class DataSection(StrictModel):
    store: str = Field(description="feature store URI (local path or s3://bucket/prefix) written by preprocess")
    train_split: str = Field("train", description="split the model learns from")
    dev_split: str = Field("dev", description="split that chooses the best epoch (never the test split)")
    rationales: str | None = Field(
        None, description="rationale set URI written by `mllm-dr distill`; without it every answer gets the "
                          "documented template rationale (a plain restatement of the score)")
    materialize: bool = Field(
        True, description="read the training split once into Ray's object store (spilled to disk when it does not "
                          "fit) instead of re-reading the store every epoch; turn off for splits far larger than "
                          "the cluster's memory and disk (then leave CPUs outside the workers for Ray Data's reads)")
    shuffle_buffer: int = Field(
        256, gt=0, description="item samples each worker shuffles together before cutting micro-batches")


class ModelSection(StrictModel):
    base_llm: str = Field(description="local Hugging Face causal LM directory (Llama, Qwen2, Mistral, ...)")
    questionnaire: Literal["phq8", "phq9"] = Field("phq8", description="items the model scores")
    feature_dims: dict[Literal["audio", "video"], int] | None = Field(
        None, description="modalities the model reads and their feature widths; default: every modality of the "
                          "store, with the widths from its manifest (or its rows)")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig, description="LQ-former, LoRA, projector, head, prompt")


class AlphaSchedule(StrictModel):
    """Weight of the LM loss in ``alpha * LM + (1 - alpha) * MSE``, one value per epoch of a stage."""

    kind: Literal["linear", "constant"] = Field(
        "linear", description="linear: start -> end over the stage's epochs; constant: start throughout")
    start: float = Field(0.0, ge=0, le=1, description="alpha of the first epoch")
    end: float = Field(1.0, ge=0, le=1, description="alpha of the last epoch (kind=linear)")

    def at(self, epoch: int, epochs: int) -> float:
        """Alpha of ``epoch`` (0-based) of ``epochs``: ``start + (end - start) * epoch / (epochs - 1)``."""
        if self.kind == "constant" or epochs <= 1:
            return self.start
        return self.start + (self.end - self.start) * epoch / (epochs - 1)


class StageConfig(StrictModel):
    name: Stage = Field(description="align: LLM frozen, LQ-formers + projectors + head learn; "
                                    "multitask: LoRA + head learn (see model.scorer.multitask_trains_multimodal)")
    epochs: int = Field(description="passes over the training split", ge=1)
    lr: dict[ParameterGroup, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_LRS),
        description="learning rate per parameter group: llm (its LoRA adapters), lq_former, projectors, head; "
                    "groups left out get the paper's rates")
    alpha: AlphaSchedule = Field(default_factory=AlphaSchedule, description="LM-loss weight per epoch")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear learning-rate warm-up from 0")


def _default_stages() -> list[StageConfig]:
    return [StageConfig(name="align", epochs=1, alpha=AlphaSchedule(kind="constant", start=1.0)),
            StageConfig(name="multitask", epochs=8)]


class DeepSpeedSection(StrictModel):
    zero_stage: Literal[1, 2, 3] = Field(2, description="ZeRO stage: 1 optimizer states, 2 + gradients, "
                                                        "3 + parameters partitioned across workers")
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="training precision")
    offload_optimizer: bool = Field(False, description="keep optimizer states on the CPU (ZeRO-Offload)")
    offload_params: bool = Field(False, description="keep parameters on the CPU (ZeRO-3 only)")
    param_persistence_threshold: int | None = Field(
        None, ge=0, description="ZeRO-3: parameters with fewer elements stay whole on every worker instead of "
                                "being partitioned (default: DeepSpeed's, 100000)")
    micro_batch_size: int = Field(4, ge=1, description="item samples per worker per forward pass")
    gradient_accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")
    gradient_clipping: float = Field(1.0, ge=0, description="global gradient-norm clip (0 = off)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")

    @model_validator(mode="after")
    def _offload_params_needs_zero3(self) -> DeepSpeedSection:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self


class ScalingSection(StrictModel):
    workers: int = Field(1, ge=1, description="Ray Train workers (one process per GPU)")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker; 0 trains on CPU (gloo)")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker")


class FailOnce(StrictModel):
    """Testing aid: one worker process exits abruptly once, so recovery from a lost worker can be exercised."""

    rank: int = Field(ge=0, description="world rank of the worker that exits")
    step: int = Field(ge=1, description="global optimizer step after which it exits")
    marker: str = Field(description="local file written just before exiting; its presence disarms the fault")


class RunSection(StrictModel):
    name: str = Field(description="run name; re-running the same name in the same storage resumes the run",
                      pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    storage: str = Field(description="where checkpoints and the bundle go: local path or s3://bucket/prefix")
    checkpoints_to_keep: int = Field(2, ge=1, description="most recent epoch checkpoints kept")
    max_failures: int = Field(3, ge=0, description="worker-group failures survived by restoring the last checkpoint")
    selection_metric: Literal["mae", "rmse", "ccc"] = Field(
        "mae", description="dev metric (of subject totals) that picks the shipped epoch of the final stage")
    fail_once: FailOnce | None = Field(None, description="testing only: inject one worker failure")


class TrainConfig(StrictModel):
    data: DataSection = Field(description="what to train on")
    model: ModelSection = Field(description="what to train")
    stages: list[StageConfig] = Field(default_factory=_default_stages, min_length=1,
                                      description="run in order, in one job")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection, description="ZeRO, precision, batching")
    scaling: ScalingSection = Field(default_factory=ScalingSection, description="Ray Train workers")
    run: RunSection = Field(description="where it is kept and how it recovers")
    seed: int = Field(0, description="seed of data order, dropout and LoRA initialisation")

    @model_validator(mode="after")
    def _stages_are_distinct(self) -> TrainConfig:
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"each stage may appear once, got {names}")
        return self
