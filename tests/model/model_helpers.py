"""Helpers shared by the model tests: a small scorer config and synthetic interviews."""

from __future__ import annotations

import numpy as np
import torch

from mllm_dr.data.records import InterviewRecord
from mllm_dr.data.transcripts import Turn

AUDIO_DIM, VIDEO_DIM = 8, 10  # 10 is not divisible by the 4 heads below: exercises the input projection


def small_config(**overrides):
    """Small enough for 2 shared CPU cores, with every part present."""
    from mllm_dr.model.scorer import HeadConfig, LQFormerConfig, ProjectorConfig, ScorerConfig

    values = {"lq_former": LQFormerConfig(num_queries=4, num_layers=2, num_heads=4, dropout=0.0),
              "projector": ProjectorConfig(hidden_dim=32), "head": HeadConfig(hidden_dim=32, dropout=0.0)}
    values.update(overrides)
    return ScorerConfig(**values)


def make_record(interview_id: str = "p1", seed: int = 0, audio_frames: int | None = 12,
                video_frames: int | None = 5, text: bool = True, scores=(0, 1, 2, 3, 0, 1, 2, 3)) -> InterviewRecord:
    rng = np.random.default_rng(seed)
    turns = [Turn(0, 2, "interviewer", "How have you been sleeping?"),
             Turn(2, 5, "participant", "Not well. I wake up at night and I am tired all day.")]
    return InterviewRecord(
        interview_id=interview_id, site="siteA", item_scores=list(scores) if scores else None,
        audio=None if audio_frames is None else rng.normal(size=(audio_frames, AUDIO_DIM)).astype(np.float16),
        video=None if video_frames is None else rng.normal(size=(video_frames, VIDEO_DIM)).astype(np.float16),
        transcript=turns if text else [])


def randomize_trainables(model, seed: int = 0, std: float = 0.05) -> None:
    """LoRA B starts at zero (a no-op adapter): give every LoRA, LQ-former, projector and head weight a nudge so
    that each of them changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name or not name.startswith("llm."):
                parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter) * std)
