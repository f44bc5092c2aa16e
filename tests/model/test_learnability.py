"""Learnability: a short seeded CPU training loop recovers a score planted in the audio features."""

from __future__ import annotations

import numpy as np
import torch
from model_helpers import AUDIO_DIM, small_config

from mllm_dr.data.records import InterviewRecord
from mllm_dr.model.lq_former import LQFormerConfig
from mllm_dr.model.scorer import LoraSettings, MultimodalScorer

SHIFT = 1.5  # frames move this far along a fixed direction per severity point (frame noise: unit normal)


def planted_interviews(rng: np.random.Generator, count: int, direction: np.ndarray) -> list[InterviewRecord]:
    """Severity 0-3 shifts the audio frames along ``direction``; every item carries that severity. No transcript,
    no video: the audio tokens are the only route to the answer."""
    records = []
    for i in range(count):
        severity = int(rng.integers(0, 4))
        frames = rng.normal(size=(int(rng.integers(6, 14)), AUDIO_DIM)) + SHIFT * severity * direction
        records.append(InterviewRecord(f"s{i}", item_scores=[severity] * 8, audio=frames.astype(np.float16)))
    return records


def test_regression_learns_planted_signal_well_below_mean_baseline(tiny_llm):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    direction = rng.normal(size=AUDIO_DIM)
    direction /= np.linalg.norm(direction)
    train, test = planted_interviews(rng, 64, direction), planted_interviews(rng, 16, direction)

    config = small_config(lq_former=LQFormerConfig(num_queries=2, num_layers=1, num_heads=4, dropout=0.0),
                          lora=LoraSettings(dropout=0.0))
    model = MultimodalScorer.from_base(tiny_llm, config, "phq8", {"audio": AUDIO_DIM})
    model.set_stage("align")  # the LLM stays frozen: LQ-former, projector and head must carry the signal
    optimizer = torch.optim.AdamW(model.parameter_groups({"lq_former": 2e-3, "projectors": 2e-3, "head": 2e-3}))
    samples = [s for record in train for s in model.build_item_samples(record)]
    model.train()
    for _ in range(70):
        batch = model.collate([samples[i] for i in rng.choice(len(samples), size=8, replace=False)])
        model(batch, alpha=0.0).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    truth = np.array([r.item_scores for r in test], dtype=float)
    predicted = np.array([[i.regression_score for i in s.items] for s in model.score(test, generate=False)])
    baseline = np.abs(truth - np.mean([r.item_scores for r in train])).mean()
    mae = np.abs(truth - predicted).mean()
    assert baseline > 0.8
    assert mae < 0.5 * baseline, f"MAE {mae:.3f} vs predict-the-mean {baseline:.3f}"
