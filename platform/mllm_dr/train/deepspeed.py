"""The DeepSpeed config of a run: a pure function of the training config, so it can be read and tested alone.

Learning rates are not in it: each optimizer parameter group (``MultimodalScorer.parameter_groups``) carries its
own. The optimizer is PyTorch's AdamW (fused on GPUs), which needs no JIT-compiled kernel; with optimizer offload
it is DeepSpeed's CPU Adam, which ZeRO-Offload requires.
"""

from __future__ import annotations

from typing import Any

from mllm_dr.train.config import DeepSpeedSection

# Large enough that DeepSpeed never prints its own step logs; the loop reports metrics itself.
_QUIET_STEPS = 10**9


def build_ds_config(settings: DeepSpeedSection, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The ``config`` for ``deepspeed.initialize`` of ``world_size`` data-parallel workers."""
    zero: dict[str, Any] = {"stage": settings.zero_stage, "contiguous_gradients": True, "overlap_comm": on_gpu}
    if settings.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if settings.param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = settings.param_persistence_threshold
    if settings.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    adam: dict[str, Any] = {"betas": list(settings.betas), "eps": settings.eps, "weight_decay": settings.weight_decay}
    if not settings.offload_optimizer:
        adam.update(torch_adam=True, fused=on_gpu)
    return {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation,
        "train_batch_size": settings.micro_batch_size * settings.gradient_accumulation * world_size,
        "gradient_clipping": settings.gradient_clipping,
        "optimizer": {"type": "AdamW", "params": adam},
        "zero_optimization": zero,
        "bf16": {"enabled": settings.precision == "bf16"},
        "fp16": {"enabled": settings.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": _QUIET_STEPS,
        "wall_clock_breakdown": False,
    }
