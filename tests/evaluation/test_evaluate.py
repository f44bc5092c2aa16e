"""``mllm-dr evaluate`` end to end: tiny untrained bundle, synthetic feature store, real files."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from mllm_dr import cli


def test_evaluate_writes_a_report_that_agrees_with_its_predictions(cli, feature_store, tiny_bundle, tmp_path):
    out = tmp_path / "report"
    result = cli("evaluate", "--model", tiny_bundle, "--store", feature_store.uri, "--split", "test",
                 "--out", str(out), "--bootstrap", "100", "--modality-sets", "all,audio+text", check=True)
    assert "MAE" in result.stdout and "Traceback" not in result.stderr
    report = json.loads((out / "report.json").read_text())
    for name in ("report.md", "predictions.parquet", *report["plots"].values()):
        assert (out / name).stat().st_size > 0, name

    frame = pq.read_table(out / "predictions.parquet").to_pandas()
    ok = feature_store.test_ok
    assert len(frame) == 2 * (8 * len(ok) + 1)  # two modality sets x (8 items per ok interview + 1 error row)
    errors = frame[frame.status == "error"]
    assert set(errors.interview_id) == {"p14"} and errors.error.str.contains("moov atom").all()
    scored = frame[frame.status == "ok"]
    assert scored.rationale.str.len().gt(0).all() and scored.final_score.between(0, 3).all()

    # masking at inference: what each modality set let the model use, given what each interview carries
    used = scored.groupby(["modality_set", "interview_id"]).modalities.first()
    assert used["all"].to_dict() == {"p10": "audio+video+text", "p11": "video+text", "p12": "audio+text",
                                     "p13": "text"}
    assert used["audio+text"].to_dict() == {"p10": "audio+text", "p11": "text", "p12": "audio+text", "p13": "text"}

    # the report's headline numbers, recomputed from predictions.parquet
    rows = scored[scored.modality_set == "all"]
    totals = rows.groupby("interview_id").agg(true=("true_total", "first"), pred=("final_score", "sum"))
    labels = {r.interview_id: r.total_score for r in ok}
    assert totals.true.to_dict() == labels
    assert report["n_subjects"] == 4 and report["counts"]["errors"] == 1
    assert report["mae"] == pytest.approx((totals.pred - totals.true).abs().mean())
    assert report["rmse"] == pytest.approx(np.sqrt(((totals.pred - totals.true) ** 2).mean()))
    train_mean = np.mean([r.total_score for r in feature_store.train])
    assert report["baseline"]["total"] == pytest.approx(train_mean) and "train split" in report["baseline"]["source"]
    assert report["baseline_mae"] == pytest.approx((totals.true - train_mean).abs().mean())
    assert set(report["by_modality_set"]) == {"all", "audio+text"} and set(report["by_site"]) == {"a", "b"}
    assert report["model"]["metadata"]["name"] == "tiny-untrained"
    assert "Decision support, not diagnosis" in (out / "report.md").read_text()


def test_evaluate_scores_what_the_model_scores(feature_store, tiny_bundle, tmp_path):
    """The predictions table carries exactly the scorer's outputs for the masked modality set."""
    from mllm_dr.evaluation.report import EvaluationConfig, evaluate
    from mllm_dr.model.bundle import load_bundle

    config = EvaluationConfig(bootstrap=0, modality_sets=["video+text"], generate=False)
    evaluate(tiny_bundle, feature_store.uri, ["test"], str(tmp_path), config, progress=False)
    frame = pq.read_table(tmp_path / "predictions.parquet").to_pandas()
    record = feature_store.test_ok[0]
    (expected,) = load_bundle(tiny_bundle).score([record], modalities={"video", "text"}, generate=False)
    mine = frame[frame.interview_id == record.interview_id].sort_values("item")
    assert mine.regression_score.tolist() == pytest.approx([i.regression_score for i in expected.items], abs=1e-5)
    assert mine.final_score.tolist() == [i.score for i in expected.items]
    assert mine.generated_score.isna().all() and set(mine.modalities) == {"video+text"}


def test_an_interview_the_model_cannot_score_becomes_an_error_row(feature_store, tiny_bundle):
    """Features from another encoder (wrong width) fail at inference; the batch-mates are still scored."""
    from mllm_dr.evaluation.predictions import score_records
    from mllm_dr.model.bundle import load_bundle

    good = feature_store.test_ok[0]
    bad = dataclasses.replace(good, interview_id="wrong-encoder", audio=np.zeros((30, 5), np.float16))
    rows = score_records(load_bundle(tiny_bundle), [bad, good], generate=False)
    assert [r["interview_id"] for r in rows] == ["wrong-encoder"] + [good.interview_id] * 8
    assert rows[0]["status"] == "error" and rows[0]["error"].startswith("scoring failed: ")
    assert "\n" not in rows[0]["error"] and all(r["status"] == "ok" for r in rows[1:])


def test_evaluate_bad_input_is_one_line(feature_store, tiny_bundle, tmp_path, capsys):
    assert cli.main(["evaluate", "--model", str(tmp_path), "--store", feature_store.uri, "--out",
                     str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert cli.main(["evaluate", "--model", tiny_bundle, "--store", feature_store.uri, "--split", "nope",
                     "--out", str(tmp_path / "r")]) == 2
    assert "no phq8 interviews in split nope" in capsys.readouterr().err
    assert cli.main(["evaluate", "--model", tiny_bundle, "--store", feature_store.uri, "--modality-sets", "smell",
                     "--out", str(tmp_path / "r")]) == 2
    assert "unknown modality set 'smell'" in capsys.readouterr().err
