"""The training config (YAML -> typed, overrides, rejections) and the DeepSpeed config built from it."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from deepspeed.runtime.config import DeepSpeedConfig

from mllm_dr.config import load_config
from mllm_dr.errors import UserError
from mllm_dr.model.scorer import PARAMETER_GROUPS
from mllm_dr.train.config import AlphaSchedule, DeepSpeedSection, ParameterGroup, TrainConfig
from mllm_dr.train.deepspeed import build_ds_config

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
MINIMAL = "data: {store: /s}\nmodel: {base_llm: /m}\nrun: {name: r, storage: /runs}\n"
STAGES = "stages: [{name: align, epochs: 1}, {name: multitask, epochs: 2}]\n"


@pytest.fixture
def minimal(tmp_path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(MINIMAL)
    return path


@pytest.mark.parametrize("name", ["demo.yaml", "edaic.yaml", "cmdc.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(TrainConfig, CONFIGS / name)
    assert [stage.name for stage in config.stages] == ["align", "multitask"]


def test_paper_settings_in_the_cluster_configs():
    for name, questionnaire in (("edaic.yaml", "phq8"), ("cmdc.yaml", "phq9")):
        config = load_config(TrainConfig, CONFIGS / name)
        lora = config.model.scorer.lora
        assert (lora.r, lora.alpha, lora.target_modules) == (16, 32, ["q_proj", "v_proj"])
        multitask = config.stages[1]
        assert multitask.epochs == 8
        assert multitask.lr == {"llm": 1e-5, "lq_former": 1e-4, "projectors": 5e-4, "head": 1e-4}
        assert [multitask.alpha.at(e, 8) for e in (0, 7)] == [0.0, 1.0]
        ds = config.deepspeed
        assert ds.micro_batch_size * ds.gradient_accumulation * config.scaling.workers == 4  # the paper's batch
        assert config.model.questionnaire == questionnaire and config.data.dev_split == "dev"


def test_defaults(minimal):
    config = load_config(TrainConfig, minimal)
    align, multitask = config.stages
    assert (align.name, align.alpha.kind, align.alpha.start) == ("align", "constant", 1.0)
    assert (multitask.name, multitask.epochs, multitask.alpha.kind) == ("multitask", 8, "linear")
    assert config.deepspeed.zero_stage == 2 and config.run.selection_metric == "mae"


def test_overrides_reach_nested_sections_and_list_entries(minimal):
    minimal.write_text(MINIMAL + STAGES)
    config = load_config(TrainConfig, minimal, ["stages.1.epochs=3", "deepspeed.zero_stage=3",
                                                "stages.0.lr.projectors=0.01", "model.scorer.lora.r=4"])
    align, multitask = config.stages
    assert multitask.epochs == 3 and config.deepspeed.zero_stage == 3 and config.model.scorer.lora.r == 4
    assert align.lr == {"projectors": 0.01}  # groups left out get the paper's rates from the model


@pytest.mark.parametrize("override, message", [
    ("deepspeed.zero_stag=3", "deepspeed.zero_stag: Extra inputs are not permitted"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage: Input should be 1, 2 or 3"),
    ("deepspeed.offload_params=true", "offload_params needs zero_stage 3"),
    ("stages.0.lr.lora_a=0.1", "stages.0.lr.lora_a.[key]: Input should be"),
    ("stages.1.name=align", "each stage may appear once"),
    ("stages.5.epochs=1", "5 is not an index of the 2 list entries"),
    ("run.name=a/b", "run.name: String should match pattern"),
    ("deepspeed.precision=int8", "deepspeed.precision: Input should be 'bf16', 'fp16' or 'fp32'"),
])
def test_bad_values_fail_in_one_line(minimal, override, message):
    minimal.write_text(MINIMAL + STAGES)
    with pytest.raises(UserError) as info:
        load_config(TrainConfig, minimal, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parameter_groups_match_the_model():
    assert set(typing.get_args(ParameterGroup)) == set(PARAMETER_GROUPS)


def test_alpha_schedules():
    assert [AlphaSchedule().at(e, 5) for e in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [AlphaSchedule(kind="constant", start=0.3).at(e, 3) for e in range(3)] == [0.3, 0.3, 0.3]
    assert AlphaSchedule(start=0.2, end=0.8).at(0, 1) == 0.2


@pytest.mark.parametrize("settings", [
    {"zero_stage": 1}, {"zero_stage": 2, "precision": "fp32"}, {"zero_stage": 2, "offload_optimizer": True},
    {"zero_stage": 3, "offload_params": True, "offload_optimizer": True, "param_persistence_threshold": 0},
    {"zero_stage": 3, "precision": "fp16", "micro_batch_size": 2, "gradient_accumulation": 4},
])
def test_deepspeed_accepts_every_built_config(settings):
    section = DeepSpeedSection(**settings)
    ds = build_ds_config(section, world_size=1, on_gpu=False)
    parsed = DeepSpeedConfig(ds)  # DeepSpeed's own validation (world size 1 outside a process group)
    assert parsed.zero_optimization_stage == section.zero_stage
    assert parsed.train_batch_size == section.micro_batch_size * section.gradient_accumulation
    assert (parsed.zero_config.offload_param is not None) == section.offload_params
    assert (parsed.zero_config.offload_optimizer is not None) == section.offload_optimizer
    assert ds["bf16"]["enabled"] == (section.precision == "bf16")
    assert ds["fp16"]["enabled"] == (section.precision == "fp16")


def test_deepspeed_batch_and_optimizer_choices():
    settings = DeepSpeedSection(micro_batch_size=2, gradient_accumulation=3, gradient_clipping=0.5)
    ds = build_ds_config(settings, world_size=8, on_gpu=True)
    assert ds["train_batch_size"] == 2 * 3 * 8 and ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["torch_adam"] and ds["optimizer"]["params"]["fused"]  # no JIT kernel build
    assert "lr" not in ds["optimizer"]["params"]  # every parameter group carries its own
    offload = build_ds_config(DeepSpeedSection(offload_optimizer=True), world_size=1, on_gpu=True)
    assert "torch_adam" not in offload["optimizer"]["params"]  # ZeRO-Offload needs DeepSpeed's CPU Adam
    assert not build_ds_config(DeepSpeedSection(), world_size=1, on_gpu=False)["optimizer"]["params"]["fused"]
