"""The preprocessing pipeline end to end on real synthetic videos, with a real local Ray and a real S3 server."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mllm_dr.config import PreprocessConfig, load_config
from mllm_dr.data.preprocess import StoredRow, process_video, run_preprocess, superseded
from mllm_dr.data.records import SCHEMA, read_records
from mllm_dr.data.synthetic import INTERVIEWER_LEVEL, VOICE_LEVEL, malformed_files, synthesize
from mllm_dr.data.transcripts import parse_transcript
from mllm_dr.errors import UserError
from mllm_dr.storage import resolve

SECONDS = 6.0


def small_config(**overrides: str) -> PreprocessConfig:
    """Tiny frames so the CNN is cheap on 2 cores; every other setting is the shipped default."""
    return load_config(PreprocessConfig, None, ["media.frame_size=32", *(f"{k}={v}" for k, v in overrides.items())])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("videos")
    return folder, synthesize(str(folder), interviews=3, seed=11, seconds=SECONDS)


@pytest.fixture(scope="module")
def local_store(ray_local, corpus, tmp_path_factory):
    """One pipeline run over the local corpus, shared by the tests that only read its result."""
    folder, _ = corpus
    store = tmp_path_factory.mktemp("stores") / "local"
    return store, run_preprocess([str(folder)], str(store), small_config(), progress=False)


def test_local_folder_end_to_end(corpus, local_store):
    folder, made = corpus
    store, summary = local_store
    assert (summary.inputs, summary.ok, summary.error, summary.skipped) == (3, 3, 0, 0)
    assert summary.interview_seconds == pytest.approx(3 * SECONDS, abs=0.3)

    parts = sorted((store / "records").glob("*.parquet"))
    assert parts and all(pq.read_schema(p).equals(SCHEMA) for p in parts)
    records = {r.interview_id: r for r in read_records(resolve(str(store)))}
    assert sorted(records) == [m.interview_id for m in made]
    for planted in made:
        record = records[planted.interview_id]
        video = folder / f"{planted.interview_id}.mp4"
        assert record.status == "ok" and record.error is None and record.site == "default"
        assert (record.item_scores, record.total_score, record.split) == (
            planted.item_scores, planted.total_score, planted.split)
        assert (record.language, record.questionnaire) == ("en", "phq8")
        assert record.source_uri == str(video)
        assert record.source_sha256 == hashlib.sha256(video.read_bytes()).hexdigest()
        assert record.duration_s == pytest.approx(SECONDS, abs=0.1)
        assert record.audio.dtype == np.float16 and record.audio_rate == 50.0
        assert record.audio.shape[1] == 80 and abs(record.audio.shape[0] - SECONDS * 50) <= 2
        assert record.video.dtype == np.float16 and record.video_rate == 1.0
        assert record.video.shape == (int(SECONDS), 512)
        assert np.isfinite(record.audio.astype(np.float32)).all() and np.isfinite(record.video.astype(np.float32)).all()
        assert record.transcript == parse_transcript(str(folder / f"{planted.interview_id}.csv"))
        assert [(t.start, t.end, t.speaker, t.text) for t in record.transcript] == planted.turns
        assert record.encoders["audio"]["dim"] == 80 and record.encoders["video"]["dim"] == 512
        assert _recovered_energy(record) == planted.score("energy")

    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["counts"]["total"] == {"ok": 3, "error": 0, "rows": 3}
    assert manifest["counts"]["by_site"] == {"default": {"ok": 3, "error": 0, "rows": 3}}
    assert manifest["encoders"]["audio"]["dim"] == 80 and manifest["encoders"]["video"]["dim"] == 512
    assert manifest["code_version"]["mllm_dr"] and manifest["config"]["media"]["frame_size"] == 32
    assert manifest["last_run"]["ok"] == 3 and manifest["sources"] == [str(folder)]


def test_process_video_matches_the_pipeline(corpus, local_store, tmp_path):
    folder, made = corpus
    planted = made[1]
    video, transcript = folder / f"{planted.interview_id}.mp4", folder / f"{planted.interview_id}.csv"
    record = process_video(str(video), str(transcript), small_config())
    assert record.ok and record.interview_id == planted.interview_id
    assert [(t.start, t.end, t.speaker, t.text) for t in record.transcript] == planted.turns
    stored = next(r for r in read_records(resolve(str(local_store[0]))) if r.interview_id == planted.interview_id)
    np.testing.assert_array_equal(record.audio, stored.audio)
    np.testing.assert_allclose(record.video.astype(np.float32), stored.video.astype(np.float32), atol=1e-2)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(video.read_bytes()[:2000])
    with pytest.raises(UserError, match="broken.mp4: not a readable audio/video file"):
        process_video(str(broken), None, small_config())
    bad_transcript = tmp_path / "bad.srt"
    bad_transcript.write_text("this is not a subtitle file")
    with pytest.raises(UserError, match="bad.srt: cue 1 has no 'start --> end' timing line"):
        process_video(str(video), str(bad_transcript), small_config())


def test_rerun_skips_what_is_stored_and_replaces_what_changed(corpus, local_store, tmp_path):
    folder, made = corpus
    source, store = tmp_path / "videos", tmp_path / "store"
    shutil.copytree(folder, source)
    shutil.copytree(local_store[0], store)
    config = small_config()

    moved = run_preprocess([str(source)], str(store), config, progress=False)  # same interviews, new place
    assert (moved.ok, moved.skipped) == (3, 0)
    assert {r.source_uri for r in read_records(resolve(str(store)))} == {str(source / f"{m.interview_id}.mp4")
                                                                        for m in made}
    parts = sorted(p.name for p in (store / "records").glob("*.parquet"))

    again = run_preprocess([str(source)], str(store), config, progress=False)
    assert (again.inputs, again.ok, again.error, again.skipped) == (3, 0, 0, 3)
    assert sorted(p.name for p in (store / "records").glob("*.parquet")) == parts

    changed = made[0].interview_id
    shutil.copy(folder / f"{made[1].interview_id}.mp4", source / f"{changed}.mp4")  # new content, same id
    third = run_preprocess([str(source)], str(store), config, progress=False)
    assert (third.ok, third.skipped) == (1, 2)
    records = {r.interview_id: r for r in read_records(resolve(str(store)))}
    assert len(records) == 3 == len(read_records(resolve(str(store))))
    assert records[changed].source_sha256 == hashlib.sha256((source / f"{changed}.mp4").read_bytes()).hexdigest()

    other_features = small_config(**{"media.frame_size": 48})
    with pytest.raises(UserError, match="other feature settings.*--overwrite"):
        run_preprocess([str(source)], str(store), other_features, progress=False)
    rebuilt = run_preprocess([str(source)], str(store), other_features, overwrite=True, progress=False)
    assert (rebuilt.ok, rebuilt.skipped) == (3, 0)
    assert len(read_records(resolve(str(store)))) == 3
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["counts"]["total"]["rows"] == 3 and manifest["config"]["media"]["frame_size"] == 48


def test_bad_files_become_error_rows_and_good_ones_stay_ok(ray_local, cli, corpus, tmp_path):
    """Through the command line, on the running cluster (RAY_ADDRESS): a malformed corpus next to a good file."""
    import ray

    folder, made = corpus
    source = tmp_path / "mixed"
    source.mkdir()
    good = made[0].interview_id
    shutil.copy(folder / f"{good}.mp4", source)
    shutil.copy(folder / f"{good}.csv", source)
    for name, content in malformed_files((folder / f"{good}.mp4").read_bytes()):
        (source / name).write_bytes(content)
    (source / "labels.csv").write_text(
        "interview_id,split,total\n" f"{good},train,5\n" "random-bytes,dev,7\n" "no-such-video,test,3\n")
    (source / "README.txt").write_text("not an interview")  # neither media nor a sidecar of one: ignored

    result = cli("preprocess", "--source", f"clinic={source}", "--out", str(tmp_path / "store"),
                 "--set", "media.frame_size=32", env={"RAY_ADDRESS": ray.get_runtime_context().gcs_address})
    assert result.returncode == 0, result.stderr[-3000:]
    bad = {name.rsplit(".", 1)[0] for name, _ in malformed_files(b"")} | {"no-such-video"}
    assert f"1 ok / {len(bad)} error of {len(bad) + 1} inputs" in result.stdout
    assert "interview-hours per hour" in result.stdout
    assert "error row clinic/zero-bytes: zero-bytes.mp4: empty file (0 bytes)" in result.stderr

    records = {r.interview_id: r for r in read_records(resolve(str(tmp_path / "store")))}
    assert set(records) == bad | {good} and {r.site for r in records.values()} == {"clinic"}
    assert records[good].ok and records[good].total_score == 5 and records[good].transcript
    reasons = {key: records[key].error for key in bad}
    assert all(records[key].status == "error" and reasons[key] for key in bad)
    assert "empty file" in reasons["zero-bytes"]
    assert "not a readable audio/video file" in reasons["truncated"]  # its index (at the end) was cut off
    assert "not a readable audio/video file" in reasons["random-bytes"]
    assert "not a readable audio/video file" in reasons["text-file"]
    assert "still image" in reasons["image-as-video"]
    assert "declared resolution 16000x16000" in reasons["huge-resolution"]
    assert "listed in labels.csv but no audio/video file" in reasons["no-such-video"]
    assert records["random-bytes"].total_score == 7 and records["random-bytes"].split == "dev"
    assert records["random-bytes"].audio is None and records["random-bytes"].video is None


def test_s3_source_and_store(ray_local, s3_server):
    bucket = s3_server.make_bucket("interviews")
    made = synthesize(f"{bucket}/site-b", interviews=2, seed=5, seconds=SECONDS, site="site_b")
    summary = run_preprocess([f"site_b={bucket}/site-b"], f"{bucket}/store", small_config(), progress=False)
    assert (summary.ok, summary.error) == (2, 0) and summary.by_site == {"site_b": {"ok": 2}}
    store = resolve(f"{bucket}/store")
    records = {r.interview_id: r for r in read_records(store)}
    assert sorted(records) == ["site_b-000", "site_b-001"]
    for planted in made:
        record = records[planted.interview_id]
        assert record.site == "site_b" and record.source_uri == planted.video_uri
        assert record.source_sha256 == hashlib.sha256(resolve(planted.video_uri).read_bytes()).hexdigest()
        assert record.item_scores == planted.item_scores and len(record.transcript) == len(planted.turns)
        assert record.video.shape == (int(SECONDS), 512) and record.audio.shape[1] == 80
    manifest = json.loads(store.join("manifest.json").read_text())
    assert manifest["counts"]["by_site"] == {"site_b": {"ok": 2, "error": 0, "rows": 2}}


def test_superseded_rows():
    """Which stored rows a run replaces: same input rewritten, interview moved, or left by an interrupted run."""
    def row(key, uri, status, part):
        return StoredRow(key, "s", uri, status, "sha", f"/store/records/{part}-w-00001.parquet", "{}")

    older, interrupted = "20250101T000000Z-aaaaaa", "20250102T000000Z-bbbbbb"
    existing = [row("s/1", "u1", "ok", older), row("s/2", "u2", "ok", older), row("s/3", "u3", "error", older),
                row("s/4", "u4", "ok", older), row("s/4", "u4-copy", "error", older),
                row("s/5", "u5-old-place", "ok", older), row("s/1", "u1", "ok", interrupted)]
    summaries = [{"key": "s/1", "source_uri": "u1", "status": "skipped"},
                 {"key": "s/2", "source_uri": "u2", "status": "ok"},  # changed content
                 {"key": "s/3", "source_uri": "u3", "status": "error"},  # retried
                 {"key": "s/4", "source_uri": "u4", "status": "skipped"},
                 {"key": "s/4", "source_uri": "u4-copy", "status": "error"},  # the duplicate id, again
                 {"key": "s/5", "source_uri": "u5-new-place", "status": "ok"}]  # moved
    drop = {path.rsplit("/", 1)[1].split("-w-")[0]: ids for path, ids in superseded(existing, summaries).items()}
    assert drop == {older: {("s/1", "u1"), ("s/2", "u2"), ("s/3", "u3"), ("s/4", "u4-copy"),
                            ("s/5", "u5-old-place")}}


@pytest.mark.parametrize("source, message", [
    ("ftp://host/videos", "unsupported URI scheme 'ftp'"),
    ("/no/such/folder", "/no/such/folder does not exist"),
    ("mp4:/data", "unknown format 'mp4'"),
    ("s3://", "an s3:// URI needs a bucket"),
])
def test_bad_sources_are_user_errors(tmp_path, source, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run_preprocess([source], str(tmp_path / "store"), small_config())


def test_empty_source(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no recordings here")
    with pytest.raises(UserError, match="no interviews found in .*empty"):
        run_preprocess([str(tmp_path / "empty")], str(tmp_path / "store"), small_config())


def test_missing_s3_credentials(s3_server, tmp_path, monkeypatch):
    bucket = s3_server.make_bucket("locked")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UserError, match="NoCredentialsError"):
        run_preprocess([f"{bucket}/videos"], str(tmp_path / "store"), small_config())


def test_cli_error_is_one_line(cli, tmp_path):
    result = cli("preprocess", "--source", "ftp://host/videos", "--out", str(tmp_path / "store"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: ftp://host/videos: unsupported URI scheme 'ftp' (use a local path, " \
                                    "file:// or s3://)"


def _recovered_energy(record) -> int:
    """The planted loudness, read back from the log-mel features: participant vs the fixed interviewer voice."""
    power = np.exp(record.audio.astype(np.float64)).sum(axis=1)
    means = {}
    for speaker in ("participant", "interviewer"):
        frames = [power[int(t.start * 50) + 5:int(t.end * 50) - 5] for t in record.transcript if t.speaker == speaker]
        means[speaker] = np.median(np.concatenate(frames))
    level = INTERVIEWER_LEVEL * np.sqrt(means["participant"] / means["interviewer"])
    return int(np.argmin([abs(np.log(v) - np.log(level)) for v in VOICE_LEVEL]))


