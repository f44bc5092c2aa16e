"""``mllm-dr score`` on a real local Ray: actor pool, predictions on a real S3 server, resume, error rows."""

import pyarrow.parquet as pq
import pytest

from mllm_dr import cli
from mllm_dr.data.records import InterviewRecord, write_records
from mllm_dr.errors import UserError
from mllm_dr.evaluation.batch import run_score, scored_keys
from mllm_dr.storage import resolve


def _read(out_uri: str):
    out = resolve(out_uri)
    parts = [p for p in out.list_files() if p.path.endswith(".parquet")]
    return [pq.read_table(p.path, filesystem=out.fs).to_pandas() for p in parts]


def test_score_a_store_then_resume_with_new_interviews(ray_local, s3_server, tiny_bundle, record_factory, tmp_path,
                                                       capsys):
    make_record = record_factory
    store = resolve(str(tmp_path / "store"))
    first = [make_record(20, "test"), make_record(21, None, site="b", video=False),
             InterviewRecord.failed("p22", "decode timed out after 1800 s", site="b")]
    write_records(store, first, "part-0")
    out_uri = f"{s3_server.make_bucket('predictions')}/run"

    summary = run_score(tiny_bundle, store.uri, out_uri, batch_size=2)
    assert (summary.interviews, summary.errors, summary.items, summary.skipped) == (3, 1, 16, 0)
    assert summary.interviews_per_s > 0 and summary.items_per_s > 0
    (frame,) = _read(out_uri)
    assert sorted(frame.interview_id.unique()) == ["p20", "p21", "p22"]
    error = frame[frame.status == "error"]
    assert error.interview_id.tolist() == ["p22"] and "decode timed out" in error.error.iloc[0]
    scored = frame[frame.status == "ok"]
    assert scored.groupby("interview_id").item.apply(sorted).tolist() == [list(range(1, 9))] * 2
    assert scored.rationale.str.len().gt(0).all() and set(scored.modality_set) == {"all"}
    assert scored[scored.interview_id == "p21"].modalities.iloc[0] == "audio+text"
    assert scored[scored.interview_id == "p20"].true_score.tolist() == first[0].item_scores

    # new interviews land in the store; a rerun scores only those (same id on another site is new too)
    write_records(store, [make_record(23, "test"), make_record(20, "test", site="c")], "part-1")
    assert cli.main(["score", "--model", tiny_bundle, "--store", store.uri, "--out", out_uri,
                     "--no-generate", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "scored 2 interviews" in printed and "3 already in" in printed and "interviews/s" in printed
    frames = _read(out_uri)
    assert len(frames) == 2
    keys = [f"{s}/{i}" for f in frames for s, i in f[["site", "interview_id"]].drop_duplicates().itertuples(False)]
    assert sorted(keys) == ["a/p20", "a/p23", "b/p21", "b/p22", "c/p20"]  # each exactly once
    assert frames[1].generated_score.isna().all()
    assert scored_keys(resolve(out_uri)) == set(keys)

    # everything scored: nothing to do, and no Ray work started
    assert run_score(tiny_bundle, store.uri, out_uri).interviews == 0

    # a failure inside the actors (here: no base LLM where it is said to be) is one line, not a Ray traceback
    write_records(store, [make_record(24, "test")], "part-2")
    assert cli.main(["score", "--model", tiny_bundle, "--base-llm", str(tmp_path / "nowhere"), "--store", store.uri,
                     "--out", out_uri]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: scoring worker: base LLM")


def test_score_bad_input_is_one_line(tiny_bundle, tmp_path, capsys):
    assert cli.main(["score", "--model", tiny_bundle, "--store", str(tmp_path / "missing"),
                     "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["score", "--model", str(tmp_path), "--store", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not a model bundle" in capsys.readouterr().err
    with pytest.raises(UserError, match="at least 1"):
        run_score(tiny_bundle, str(tmp_path), str(tmp_path / "out"), batch_size=0)

