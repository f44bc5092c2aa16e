"""The feature-store record: one row per interview, exactly the columns of DESIGN.md.

This is the contract between preprocessing (which writes records) and everything downstream (samples,
training, evaluation, serving, which read them). Audio and video feature sequences are stored as Ray's
variable-shaped tensor extension type (float16 ``[T, D]``), nullable for a missing modality.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data._internal.tensor_extensions.arrow import (
    ArrowVariableShapedTensorArray,
    ArrowVariableShapedTensorType,
)

from mllm_dr.data.transcripts import Turn
from mllm_dr.storage import Location

STATUS_OK = "ok"
STATUS_ERROR = "error"

_FEATURE_TYPE = ArrowVariableShapedTensorType(pa.float16(), 2)
TURN_TYPE = pa.struct(
    [("start", pa.float64()), ("end", pa.float64()), ("speaker", pa.string()), ("text", pa.string())]
)

SCHEMA = pa.schema(
    [
        ("interview_id", pa.string()),
        ("site", pa.string()),
        ("split", pa.string()),
        ("language", pa.string()),
        ("questionnaire", pa.string()),
        ("item_scores", pa.list_(pa.int8())),
        ("total_score", pa.int16()),
        ("transcript", pa.list_(TURN_TYPE)),
        ("audio", _FEATURE_TYPE),
        ("audio_rate", pa.float32()),
        ("video", _FEATURE_TYPE),
        ("video_rate", pa.float32()),
        ("duration_s", pa.float32()),
        ("source_uri", pa.string()),
        ("source_sha256", pa.string()),
        ("encoders", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# Columns cheap to read (no feature tensors): what counting, splitting and resuming need.
LIGHT_COLUMNS = tuple(c for c in COLUMNS if c not in ("audio", "video", "transcript"))


@dataclass
class InterviewRecord:
    """One interview in memory. ``audio`` / ``video`` are float16 ``[T, D]`` arrays or ``None`` when absent."""

    interview_id: str
    site: str = "default"
    split: str | None = None
    language: str = "en"
    questionnaire: str = "phq8"
    item_scores: list[int] | None = None
    total_score: int | None = None
    transcript: list[Turn] = field(default_factory=list)
    audio: np.ndarray | None = None
    audio_rate: float = 0.0
    video: np.ndarray | None = None
    video_rate: float = 0.0
    duration_s: float = 0.0
    source_uri: str = ""
    source_sha256: str = ""
    encoders: dict[str, Any] = field(default_factory=dict)
    status: str = STATUS_OK
    error: str | None = None

    @property
    def key(self) -> str:
        """Unique across sites: interview ids are only unique within their site."""
        return f"{self.site}/{self.interview_id}"

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def modalities(self) -> list[str]:
        present = [name for name in ("audio", "video") if getattr(self, name) is not None]
        return present + (["text"] if self.transcript else [])

    @classmethod
    def failed(cls, interview_id: str, reason: str, **fields: Any) -> InterviewRecord:
        """An error row: the input is accounted for, with a one-line reason."""
        one_line = " ".join(str(reason).split())[:500] or "unknown error"
        return cls(interview_id=interview_id, status=STATUS_ERROR, error=one_line, **fields)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["transcript"] = [asdict(t) for t in self.transcript]
        row["encoders"] = json.dumps(self.encoders, sort_keys=True)
        for name in ("audio", "video"):
            value = getattr(self, name)
            row[name] = None if value is None else np.ascontiguousarray(value, dtype=np.float16)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> InterviewRecord:
        values = {name: row.get(name) for name in COLUMNS if name in row}
        values["transcript"] = [Turn(**t) for t in (row.get("transcript") or [])]
        encoders = row.get("encoders")
        values["encoders"] = json.loads(encoders) if isinstance(encoders, str) and encoders else {}
        if values.get("item_scores") is not None:
            values["item_scores"] = [int(s) for s in values["item_scores"]]
        if values.get("total_score") is not None:
            values["total_score"] = int(values["total_score"])
        for name in ("audio", "video"):
            if values.get(name) is not None:
                values[name] = np.asarray(values[name], dtype=np.float16)
        for name in ("audio_rate", "video_rate", "duration_s"):
            values[name] = float(values.get(name) or 0.0)
        return cls(**values)


def feature_array(tensors: Sequence[np.ndarray | None]) -> pa.Array:
    """A nullable variable-shaped float16 tensor column (Ray's own ``from_numpy`` cannot hold nulls)."""
    filled = [np.zeros((0, 0), np.float16) if t is None else np.asarray(t, np.float16) for t in tensors]
    storage = ArrowVariableShapedTensorArray.from_numpy(filled).storage
    mask = pa.array([t is None for t in tensors], type=pa.bool_())
    storage = pa.StructArray.from_arrays(
        [storage.field("data"), storage.field("shape")], fields=list(storage.type), mask=mask
    )
    return pa.ExtensionArray.from_storage(_FEATURE_TYPE, storage)


def records_to_table(records: Iterable[InterviewRecord]) -> pa.Table:
    rows = [r.to_row() for r in records]
    columns = {}
    for column in SCHEMA:
        values = [row[column.name] for row in rows]
        columns[column.name] = (
            feature_array(values) if column.name in ("audio", "video") else pa.array(values, column.type)
        )
    return pa.table(columns, schema=SCHEMA)


def table_to_records(table: pa.Table) -> list[InterviewRecord]:
    """Decode rows read with plain pyarrow (no Ray needed), tolerating column subsets."""
    data = {name: table.column(name) for name in table.column_names}
    rows: list[dict[str, Any]] = [{} for _ in range(table.num_rows)]
    for name, column in data.items():
        values = _decode_features(column) if name in ("audio", "video") else column.to_pylist()
        for row, value in zip(rows, values):
            row[name] = value
    return [InterviewRecord.from_row(row) for row in rows]


def _decode_features(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for chunk in column.chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        valid = storage.is_valid().to_pylist()
        shapes = storage.field("shape").to_pylist()
        data = storage.field("data")
        for i, (is_valid, shape) in enumerate(zip(valid, shapes)):
            values = data[i].values.to_numpy(zero_copy_only=False) if is_valid else None
            out.append(None if values is None else np.asarray(values, np.float16).reshape(shape))
    return out


def records_dir(store: Location) -> Location:
    return store.join("records")


def read_records(store: Location, columns: Sequence[str] | None = None,
                 filters: list[tuple[str, str, Any]] | None = None) -> list[InterviewRecord]:
    """All rows of a (small) store in memory; big stores are read with Ray Data instead.

    ``filters`` (pyarrow's DNF, e.g. ``[("split", "in", ["test"])]``) skips other rows before decoding them.
    """
    files = [f for f in records_dir(store).list_files() if f.path.endswith(".parquet")]
    tables = [pq.read_table(f.path, filesystem=store.fs, columns=list(columns) if columns else None,
                            filters=filters)
              for f in files]
    return [r for t in tables for r in table_to_records(t)]


def write_records(store: Location, records: Sequence[InterviewRecord], name: str) -> Location:
    """Write one Parquet part file ``records/<name>.parquet`` (the pipeline writes many of these)."""
    target = records_dir(store).join(f"{name}.parquet")
    with target.open("wb") as f:
        pq.write_table(records_to_table(records), f)
    return target
