"""OpenFace / CLNF per-frame feature tables (E-DAIC OpenFace 2.1, DAIC-WOZ CLNF, CMDC OpenFace).

All of them are comma-separated with a header whose first columns are metadata (``frame``, ``timestamp``,
``confidence``, ``success``; OpenFace 2 may add ``face_id``) and the rest feature values; headers often carry
a leading space. Frames where face tracking failed (``success`` = 0) are **kept as zero rows**, not dropped,
so that row *i* stays at time ``i / rate`` and the sequence lines up with the audio and the transcript;
blank or non-numeric values (``-1.#IND``, empty cells) become 0 as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mllm_dr.data.corpora.labels import normalize_header
from mllm_dr.errors import UserError
from mllm_dr.storage import Location

METADATA = ("frame", "faceid", "timestamp", "confidence", "success")
DEFAULT_RATE = 30.0  # OpenFace's and CLNF's capture rate in these corpora, used when timestamps cannot tell


@dataclass
class FrameTable:
    frames: np.ndarray  # int64 [T] frame numbers
    timestamps: np.ndarray  # float64 [T] seconds
    features: np.ndarray  # float32 [T, D], zero where tracking failed
    columns: list[str]  # the D feature names, as in the file

    @property
    def rate(self) -> float:
        """Frames per second over the whole span: frame numbers over seconds. Timestamps are written rounded
        to the millisecond, so a single step would be off by percents; rows missing from the file do not
        bias it either, because it counts frame numbers, not rows."""
        span_s = float(self.timestamps[-1] - self.timestamps[0])
        span_frames = int(self.frames[-1] - self.frames[0])
        return span_frames / span_s if span_s > 0 and span_frames > 0 else DEFAULT_RATE


def read_frame_table(location: Location) -> FrameTable:
    """Parse one OpenFace/CLNF file; a file that is not one raises a one-line :class:`UserError`."""
    try:
        with location.open("rb") as f:
            table = pd.read_csv(f, skipinitialspace=True, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{location.uri}: not an OpenFace table ({str(exc).splitlines()[0]})") from None
    names = [normalize_header(c) for c in table.columns]
    missing = [m for m in ("frame", "timestamp", "success") if m not in names]
    if missing:
        raise UserError(f"{location.uri}: not an OpenFace table (no {', '.join(missing)} column)")
    if table.empty:
        raise UserError(f"{location.uri}: OpenFace table has no frames")
    original = {name: str(column).strip() for name, column in zip(names, table.columns)}
    table.columns = names
    feature_names = [c for c in names if c not in METADATA]
    if not feature_names:
        raise UserError(f"{location.uri}: OpenFace table has no feature columns")
    numeric = table.apply(pd.to_numeric, errors="coerce")
    features = np.array(numeric[feature_names].to_numpy(np.float32))  # pandas may hand out a read-only view
    features[~np.isfinite(features)] = 0.0
    features[numeric["success"].fillna(0).to_numpy() == 0] = 0.0
    frames = numeric["frame"].to_numpy()
    timestamps = numeric["timestamp"].to_numpy(np.float64)
    if np.isnan(frames).any() or np.isnan(timestamps).any():
        raise UserError(f"{location.uri}: OpenFace table has rows without a frame number or timestamp")
    return FrameTable(frames.astype(np.int64), timestamps, features, [original[c] for c in feature_names])


def align_frames(tables: list[FrameTable]) -> FrameTable:
    """Join several tables of one session side by side on their frame numbers (frames all of them have)."""
    common = tables[0].frames
    for table in tables[1:]:
        common = np.intersect1d(common, table.frames)
    if common.size == 0:
        raise UserError("the feature files share no frame numbers")
    parts, timestamps = [], None
    for table in tables:
        unique, first_row = np.unique(table.frames, return_index=True)
        index = first_row[np.searchsorted(unique, common)]
        parts.append(table.features[index])
        timestamps = table.timestamps[index] if timestamps is None else timestamps
    return FrameTable(common, timestamps, np.concatenate(parts, axis=1), [c for t in tables for c in t.columns])


def fit_length(features: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad a [T, D] sequence to ``length`` rows (keeps per-clip sequences on the audio's clock)."""
    if features.shape[0] >= length:
        return features[:length]
    return np.concatenate([features, np.zeros((length - features.shape[0], features.shape[1]), features.dtype)])
