"""Training-test helpers: interviews with a planted signal and a lean config for 2 CPU workers."""

from __future__ import annotations

from typing import Any

import numpy as np

from mllm_dr.data.records import InterviewRecord
from mllm_dr.data.transcripts import Turn

AUDIO_DIM, VIDEO_DIM = 8, 6
SPLITS = {"train": 4, "dev": 2, "test": 1}


def planted_record(index: int, split: str, rng: np.random.Generator) -> InterviewRecord:
    """Audio channel k carries item k's score (plus noise); video carries the total; words follow severity."""
    scores = rng.integers(0, 4, size=8)
    frames = int(rng.integers(10, 16))
    audio = rng.normal(0, 0.3, size=(frames, AUDIO_DIM)) + scores[None, :]
    video = rng.normal(0, 0.3, size=(4, VIDEO_DIM)) + scores.sum() / 8
    mood = ["fine", "a bit low", "often down", "down every day"][round(float(scores.mean()))]
    turns = [Turn(0, 2, "interviewer", "How have you been?"), Turn(2, 5, "participant", f"I feel {mood}.")]
    return InterviewRecord(interview_id=f"{split}{index}", site="synthetic", split=split,
                           item_scores=[int(s) for s in scores], total_score=int(scores.sum()), transcript=turns,
                           audio=audio.astype(np.float16), audio_rate=2.0, video=video.astype(np.float16),
                           video_rate=1.0)


def lean_config(store: str, base_llm: str, storage: str, name: str, **sections: Any) -> dict[str, Any]:
    """A tiny model, 3 short epochs (align 1, multitask 2), 2 workers on CPU: the shape of a real run, lean."""
    lrs = {"llm": 2e-3, "lq_former": 1e-3, "projectors": 1e-3, "head": 2e-3}
    config = {
        "data": {"store": store, "shuffle_buffer": 16},
        "model": {"base_llm": base_llm, "scorer": {
            "lq_former": {"num_queries": 4, "num_layers": 1, "num_heads": 2, "width": 16, "dropout": 0.0},
            "projector": {"hidden_dim": 32}, "head": {"hidden_dim": 32, "dropout": 0.0},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "prompt": {"transcript_max_tokens": 48}}},
        "stages": [{"name": "align", "epochs": 1, "lr": lrs, "alpha": {"kind": "constant", "start": 1.0}},
                   {"name": "multitask", "epochs": 2, "lr": lrs, "alpha": {"kind": "constant", "start": 0.5}}],
        "deepspeed": {"zero_stage": 2, "precision": "fp32", "micro_batch_size": 4},
        "scaling": {"workers": 2, "cpus_per_worker": 0.5},
        "run": {"name": name, "storage": storage, "checkpoints_to_keep": 2, "max_failures": 0},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config
