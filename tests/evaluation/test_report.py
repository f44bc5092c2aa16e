"""predictions table -> report, on hand-made predictions (no model): files, and numbers recomputed by hand."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mllm_dr.data.records import InterviewRecord, write_records
from mllm_dr.errors import UserError
from mllm_dr.evaluation.predictions import rows_to_table
from mllm_dr.evaluation.report import (
    EvaluationConfig,
    TrainingMeans,
    build_report,
    store_training_means,
    training_means,
    write_report,
)
from mllm_dr.questionnaires import PHQ8
from mllm_dr.storage import resolve

MEANS = TrainingMeans(total=7.0, items=[0.9] * 8, n_subjects=20, source="hand-made")
CONFIG = EvaluationConfig(bootstrap=200, seed=0)


def _predictions() -> pd.DataFrame:
    """8 labelled subjects on two sites and two splits, scored with 'all' and 'text'; plus one unlabelled
    interview and one error row. Subject 3's generated answer for item 5 did not parse."""
    rng = np.random.default_rng(0)
    rows = []
    for subject in range(8):
        where = {"interview_id": f"s{subject}", "site": "a" if subject < 5 else "b",
                 "split": "test" if subject % 2 == 0 else "dev", "questionnaire": "phq8"}
        truth = rng.integers(0, 4, 8)
        for modality_set, noise in (("all", 1), ("text", 2)):
            final = np.clip(truth + rng.integers(-noise, noise + 1, 8), 0, 3)
            regression = np.clip(final + rng.normal(0, 0.4, 8), 0, 3)
            for item in range(8):
                rows.append({**where, "modality_set": modality_set,
                             "modalities": "audio+video+text" if modality_set == "all" else "text",
                             "item": item + 1, "key": PHQ8.items[item].key, "true_score": int(truth[item]),
                             "true_total": int(truth.sum()),
                             "generated_score": None if (subject == 3 and item == 4) else int(final[item]),
                             "regression_score": float(regression[item]), "final_score": int(final[item]),
                             "rationale": "r", "status": "ok"})
    for modality_set in ("all", "text"):
        where = {"site": "a", "split": "test", "questionnaire": "phq8", "modality_set": modality_set}
        rows += [{**where, "interview_id": "unlabelled", "modalities": "text", "item": i + 1,
                  "key": PHQ8.items[i].key, "true_score": None, "true_total": None, "generated_score": 1,
                  "regression_score": 1.0, "final_score": 1, "rationale": "r", "status": "ok"} for i in range(8)]
        rows.append({**where, "interview_id": "broken", "site": "b", "status": "error", "error": "zero-byte file"})
    return rows_to_table(rows)


def _totals_by_hand(frame: pd.DataFrame, column: str, modality_set: str = "all") -> pd.DataFrame:
    rows = frame[(frame.modality_set == modality_set) & (frame.status == "ok") & frame.true_total.notna()]
    return rows.groupby("interview_id").agg(true=("true_total", "first"), pred=(column, "sum"),
                                            n=(column, "count"), site=("site", "first"))


def test_report_files_agree_with_the_predictions_file(tmp_path):
    report = write_report(_predictions(), PHQ8, MEANS, CONFIG, resolve(str(tmp_path / "report")),
                          context={"split": "dev,test"})
    out = tmp_path / "report"
    for name in ("report.json", "report.md", "predictions.parquet", "totals_scatter.png", "item_confusion.png",
                 "error_by_site.png"):
        assert (out / name).is_file(), name
    for name in report["plots"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))

    frame = pq.read_table(out / "predictions.parquet").to_pandas()
    totals = _totals_by_hand(frame, "final_score")
    errors = totals.pred - totals.true
    assert on_disk["n_subjects"] == 8 and on_disk["counts"] == {
        "interviews": 10, "subjects": 8, "errors": 1, "unlabelled": 1}
    assert on_disk["mae"] == pytest.approx(errors.abs().mean())
    assert on_disk["rmse"] == pytest.approx(np.sqrt((errors ** 2).mean()))
    assert on_disk["pearson_r"] == pytest.approx(np.corrcoef(totals.true, totals.pred)[0, 1])
    assert on_disk["baseline_mae"] == pytest.approx((totals.true - 7.0).abs().mean())
    assert on_disk["baseline_rmse"] == pytest.approx(np.sqrt(((totals.true - 7.0) ** 2).mean()))
    positive, predicted = totals.true >= 10, totals.pred >= 10
    tp = int((positive & predicted).sum())
    assert on_disk["confusion"]["tp"] == tp
    assert on_disk["f1"] == pytest.approx(2 * tp / (positive.sum() + predicted.sum()) if tp else 0.0)
    for key in ("mae", "rmse", "ccc", "pearson_r", "f1"):
        assert len(on_disk["ci"][key]) == 2

    # per item: item 2 of the final score
    item2 = frame[(frame.modality_set == "all") & (frame.item == 2) & frame.true_score.notna()]
    assert on_disk["items"][1]["mae"] == pytest.approx((item2.final_score - item2.true_score).abs().mean())
    assert sum(map(sum, on_disk["items"][1]["confusion"])) == 8

    # generated totals leave out subject 3 (one unparsed item); regression totals are fractional sums
    generated = _totals_by_hand(frame, "generated_score")
    generated = generated[generated.n == 8]
    assert on_disk["by_score"]["generated"]["n_subjects"] == 7
    assert on_disk["by_score"]["generated"]["mae"] == pytest.approx((generated.pred - generated.true).abs().mean())
    assert on_disk["by_score"]["generated"]["coverage"] == pytest.approx(1 - 1 / 72)
    regression = _totals_by_hand(frame, "regression_score")
    assert on_disk["by_score"]["regression"]["mae"] == pytest.approx(
        (regression.pred - regression.true).abs().mean(), rel=1e-5)

    # breakdowns: sites, splits, modality sets
    assert {s: b["n_subjects"] for s, b in on_disk["by_site"].items()} == {"a": 5, "b": 3}
    site_b = totals[totals.site == "b"]
    assert on_disk["by_site"]["b"]["mae"] == pytest.approx((site_b.pred - site_b.true).abs().mean())
    assert {s: b["n_subjects"] for s, b in on_disk["by_split"].items()} == {"dev": 4, "test": 4}
    text = _totals_by_hand(frame, "final_score", "text")
    assert on_disk["by_modality_set"]["text"]["mae"] == pytest.approx((text.pred - text.true).abs().mean())
    assert on_disk["by_modality_set"]["all"]["mae"] == on_disk["mae"]

    markdown = (out / "report.md").read_text()
    assert "Decision support, not diagnosis" in markdown
    assert f"| MAE ↓ | {on_disk['mae']:.3f} |" in markdown and "(totals_scatter.png)" in markdown
    assert "| text | 8 |" in markdown


def test_report_goes_to_s3(s3_server):
    import s3fs

    bucket = s3_server.make_bucket("reports")
    write_report(_predictions(), PHQ8, MEANS, EvaluationConfig(bootstrap=0), resolve(f"{bucket}/run1"))
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint})
    assert {p.rsplit("/", 1)[1] for p in fs.ls("reports/run1")} >= {"report.json", "report.md",
                                                                     "predictions.parquet", "totals_scatter.png"}
    report = json.loads(fs.cat("reports/run1/report.json"))
    assert report["ci"]["mae"] is None and report["mae"] is not None  # bootstrap=0: no intervals


def test_cutoff_is_configurable():
    default = build_report(_predictions(), PHQ8, MEANS, CONFIG)
    cmdc = build_report(_predictions(), PHQ8, MEANS, EvaluationConfig(cutoff=9, bootstrap=0))
    assert default["cutoff"] == 10 and cmdc["cutoff"] == 9
    assert sum(cmdc["confusion"].values()) == sum(default["confusion"].values()) == 8


def test_training_means_come_from_the_train_split_or_say_they_do_not(tmp_path):
    store = resolve(str(tmp_path / "store"))
    train = [InterviewRecord(f"t{i}", split="train", item_scores=[i] * 8, total_score=8 * i) for i in range(3)]
    test = [InterviewRecord("x", split="test", item_scores=[3] * 8, total_score=24)]
    write_records(store, [*train, *test, InterviewRecord.failed("bad", "oops", split="train")], "part-0")
    means = store_training_means(store, PHQ8, test)
    assert means.total == pytest.approx(8.0) and means.items == pytest.approx([1.0] * 8)
    assert means.n_subjects == 3 and "train split" in means.source

    bare = resolve(str(tmp_path / "bare"))
    write_records(bare, test, "part-0")
    fallback = store_training_means(bare, PHQ8, test)
    assert fallback.total == 24.0 and "optimistic" in fallback.source

    totals_only = training_means([InterviewRecord("y", total_score=16)], PHQ8, "x")
    assert totals_only.items == pytest.approx([2.0] * 8)
    with pytest.raises(UserError, match="no labelled phq8"):
        training_means([InterviewRecord("z")], PHQ8, "x")
