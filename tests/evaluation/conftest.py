"""Evaluation fixtures: an untrained tiny-model bundle and a small feature store built from synthetic arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mllm_dr.data.records import InterviewRecord, write_records
from mllm_dr.data.transcripts import Turn
from mllm_dr.storage import resolve

AUDIO_DIM, VIDEO_DIM = 8, 12
MAX_NEW_TOKENS = 6  # the untrained model's answers are noise: a few tokens exercise generation and parsing


def make_record(i: int, split: str, site: str = "a", audio: bool = True, video: bool = True) -> InterviewRecord:
    rng = np.random.default_rng(i)
    scores = [int(s) for s in rng.integers(0, 4, 8)]
    return InterviewRecord(
        interview_id=f"p{i:02d}", site=site, split=split, item_scores=scores, total_score=sum(scores),
        transcript=[Turn(0.0, 2.0, "interviewer", "How have you been sleeping lately?"),
                    Turn(2.0, 6.0, "participant", "Not well. I wake up at night and feel tired all day.")],
        audio=rng.normal(size=(20 + i, AUDIO_DIM)).astype(np.float16) if audio else None, audio_rate=50.0,
        video=rng.normal(size=(4 + i, VIDEO_DIM)).astype(np.float16) if video else None, video_rate=1.0,
        duration_s=6.0, source_uri=f"/videos/p{i:02d}.mp4", source_sha256="0" * 64)


@dataclass(frozen=True)
class Store:
    uri: str
    train: list[InterviewRecord]
    test: list[InterviewRecord]  # error row included

    @property
    def test_ok(self) -> list[InterviewRecord]:
        return [r for r in self.test if r.ok]


@pytest.fixture
def record_factory():
    """``make_record`` for tests that build their own stores."""
    return make_record


@pytest.fixture(scope="session")
def feature_store(tmp_path_factory) -> Store:
    """Two sites; test has every modality mix and one error row; two part files like the pipeline writes."""
    train = [make_record(i, "train", site="ab"[i % 2]) for i in range(4)]
    test = [make_record(10, "test"), make_record(11, "test", site="b", audio=False),
            make_record(12, "test", video=False), make_record(13, "test", site="b", audio=False, video=False),
            InterviewRecord.failed("p14", "corrupt video: moov atom not found", site="b", split="test")]
    uri = str(tmp_path_factory.mktemp("store"))
    write_records(resolve(uri), train, "part-0")
    write_records(resolve(uri), test, "part-1")
    return Store(uri, train, test)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_llm, tmp_path_factory) -> str:
    """An untrained MultimodalScorer on the tiny Llama, saved as a bundle (what training writes)."""
    from mllm_dr.model.bundle import save_bundle
    from mllm_dr.model.lq_former import LQFormerConfig
    from mllm_dr.model.scorer import HeadConfig, MultimodalScorer, ProjectorConfig, ScorerConfig

    config = ScorerConfig(lq_former=LQFormerConfig(num_queries=4, num_layers=1, num_heads=4, dropout=0.0),
                          projector=ProjectorConfig(hidden_dim=32), head=HeadConfig(hidden_dim=32, dropout=0.0),
                          max_new_tokens=MAX_NEW_TOKENS)
    model = MultimodalScorer.from_base(tiny_llm, config, "phq8", {"audio": AUDIO_DIM, "video": VIDEO_DIM})
    out = str(tmp_path_factory.mktemp("bundle"))
    save_bundle(model, out, {"name": "tiny-untrained", "version": "0"})
    return out
