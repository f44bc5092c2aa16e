"""Model -> predictions table: one row per interview x item x modality set, shared by ``evaluate`` and ``score``.

The table is long (one row per item) so that item metrics, subject totals (sums over items) and the
rationale of every score sit in one flat Parquet file anyone can open. An interview that could not be
scored (an error row of the store, or a failure at inference) becomes one row with ``status = "error"``,
a one-line reason and no item: every input is accounted for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from mllm_dr.data.records import STATUS_ERROR, STATUS_OK, InterviewRecord
from mllm_dr.errors import UserError

# Modality sets of the ablation: which inputs the model may see (None = everything the interview has).
MODALITY_SETS: dict[str, frozenset[str] | None] = {
    "all": None,
    "audio+text": frozenset({"audio", "text"}),
    "video+text": frozenset({"video", "text"}),
    "text": frozenset({"text"}),
}
MODALITY_ORDER = ("audio", "video", "text")

PREDICTION_SCHEMA = pa.schema(
    [
        ("interview_id", pa.string()),
        ("site", pa.string()),
        ("split", pa.string()),
        ("questionnaire", pa.string()),
        ("modality_set", pa.string()),  # what the model was allowed to see (a MODALITY_SETS key)
        ("modalities", pa.string()),  # what it actually used, e.g. "audio+text"
        ("item", pa.int8()),  # 1-based, questionnaire order; null on an error row
        ("key", pa.string()),
        ("true_score", pa.int8()),  # item label, null when unlabelled
        ("true_total", pa.int16()),  # subject label (kept when only the total is known)
        ("generated_score", pa.int8()),  # parsed from the generated text; null when unparsable or not generated
        ("regression_score", pa.float32()),
        ("final_score", pa.int8()),  # the score the model reports: generated, else from the regression head
        ("rationale", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)


class Scorer(Protocol):
    """What this module needs of :class:`mllm_dr.model.scorer.MultimodalScorer`."""

    def score(self, records: list[InterviewRecord], modalities: set[str] | None = None,
              generate: bool = True, **kwargs: Any) -> list[Any]: ...


def parse_modality_sets(text: str) -> list[str]:
    """``"all,text"`` -> ``["all", "text"]``, rejecting unknown names in one line."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODALITY_SETS]
    if unknown or not names:
        raise UserError(f"unknown modality set {','.join(unknown) or text!r} (known: {', '.join(MODALITY_SETS)})")
    return list(dict.fromkeys(names))


def _base_row(record: InterviewRecord, modality_set: str) -> dict[str, Any]:
    labelled_total = record.total_score
    if labelled_total is None and record.item_scores is not None:
        labelled_total = sum(record.item_scores)
    return {"interview_id": record.interview_id, "site": record.site, "split": record.split,
            "questionnaire": record.questionnaire, "modality_set": modality_set, "true_total": labelled_total}


def error_row(record: InterviewRecord, reason: str, modality_set: str) -> dict[str, Any]:
    return {**_base_row(record, modality_set), "status": STATUS_ERROR, "error": " ".join(reason.split())[:500]}


def item_rows(record: InterviewRecord, score: Any, modality_set: str) -> list[dict[str, Any]]:
    """One row per item of a scored interview (``score`` is an ``InterviewScore``)."""
    used = set(score.modalities)
    modalities = "+".join(m for m in MODALITY_ORDER if m in used)
    rows = []
    for item in score.items:
        true = record.item_scores[item.item - 1] if record.item_scores is not None else None
        rows.append({**_base_row(record, modality_set), "modalities": modalities, "item": item.item,
                     "key": item.key, "true_score": true, "generated_score": item.generated_score,
                     "regression_score": float(item.regression_score), "final_score": item.score,
                     "rationale": item.rationale, "status": STATUS_OK})
    return rows


def score_records(
    model: Scorer,
    records: Sequence[InterviewRecord],
    modality_set: str = "all",
    generate: bool = True,
    **score_kwargs: Any,
) -> list[dict[str, Any]]:
    """Score a batch; store error rows and interviews that fail at inference become error rows.

    The batch is scored in one call (one padded forward pass); when that fails, each interview is retried
    alone so that one bad interview cannot take its batch-mates down with it.
    """
    modalities = MODALITY_SETS[modality_set]
    allowed = set(modalities) if modalities is not None else None
    ok = [r for r in records if r.ok]
    scored: dict[int, list[dict[str, Any]]] = {}
    try:
        for record, score in zip(ok, model.score(ok, modalities=allowed, generate=generate, **score_kwargs)):
            scored[id(record)] = item_rows(record, score, modality_set)
    except Exception:  # noqa: BLE001 - retried one by one below, where the failure gets its row
        for record in ok:
            try:
                (score,) = model.score([record], modalities=allowed, generate=generate, **score_kwargs)
                scored[id(record)] = item_rows(record, score, modality_set)
            except Exception as exc:  # noqa: BLE001 - becomes an error row with the reason
                scored[id(record)] = [error_row(record, f"scoring failed: {describe(exc)}", modality_set)]
    rows: list[dict[str, Any]] = []
    for record in records:
        if record.ok:
            rows.extend(scored[id(record)])
        else:
            rows.append(error_row(record, record.error or "error in the feature store", modality_set))
    return rows


def describe(exc: BaseException) -> str:
    """The first line of the message (with the exception type unless it is a :class:`UserError`, whose
    messages are written for people), never more: tracebacks and long messages may quote their inputs."""
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    return first if isinstance(exc, UserError) and first else f"{type(exc).__name__}: {first}".rstrip(": ")


def rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([{name: row.get(name) for name in PREDICTION_SCHEMA.names} for row in rows],
                                schema=PREDICTION_SCHEMA)
