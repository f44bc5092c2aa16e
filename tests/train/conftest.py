"""Training-test fixtures: a small feature store with a planted signal (see train_fixtures.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import SPLITS, planted_record

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.preprocess import MANIFEST
from mllm_dr.data.records import InterviewRecord, write_records
from mllm_dr.storage import resolve


@pytest.fixture(scope="session")
def train_store(tmp_path_factory) -> str:
    """One Parquet part (a deterministic row order) with train/dev/test interviews and one error row."""
    rng = np.random.default_rng(7)
    records = [planted_record(i, split, rng) for split, n in SPLITS.items() for i in range(n)]
    records.append(InterviewRecord.failed("broken", "could not decode", split="train"))
    store = resolve(str(tmp_path_factory.mktemp("store")))
    write_records(store, records, "part-0")
    # The part of the manifest training reads: the preprocessing config, which the bundle records for serving.
    preprocess = PreprocessConfig.model_validate({"media": {"frame_size": 64}}).model_dump(mode="json")
    store.join(MANIFEST).write_text(json.dumps({"config": preprocess}))
    return store.uri
