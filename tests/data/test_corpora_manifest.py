import json

import numpy as np
import pytest
from corpus_trees import write_wav

from mllm_dr.config import AUDIO_SAMPLE_RATE, PreprocessConfig
from mllm_dr.data.corpora import get_format
from mllm_dr.data.synthetic import write_recording
from mllm_dr.errors import UserError
from mllm_dr.storage import resolve


def write_mp4(path, seconds=2.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    write_recording(str(path), seconds, video=lambda s: np.full((32, 48, 3), int(100 + 50 * s), np.uint8), fps=5,
                    audio=(0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), audio_rate=16000,
                    width=48, height=32)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    write_mp4(root / "videos/a.mp4")
    write_wav(root / "audio/b.wav", 1.5)
    (root / "text").mkdir()
    (root / "text/a.vtt").write_text("WEBVTT\n\n00:00.000 --> 00:01.000\n<v Interviewer>How are you?\n\n"
                                     "00:01.000 --> 00:01.900\n<v Participant>Tired.\n")
    (root / "text/c.json").write_text(json.dumps([{"start": 0, "end": 3.5, "speaker": "patient", "text": "ok"}]))
    return root


def _discover(uri):
    return {i.interview_id: i for i in get_format("manifest").discover(resolve(str(uri)), "clinic", PreprocessConfig())}


def test_csv_manifest_relative_uris_labels_and_site_override(media):
    (media / "manifest.csv").write_text(
        "interview_id,subject_id,video,audio,transcript,site,split,language,questionnaire,item_scores,total_score\n"
        "a,s1,videos/a.mp4,,text/a.vtt,,train,en,phq8,1 0 2 3 0 1 1 0,8\n"
        "b,s1,,audio/b.wav,,,,,,,12\n"
        "c,s2,,,text/c.json,berlin,val,zh,phq9,\"[0,1,2,3,0,1,2,3,1]\",\n")
    found = _discover(media)  # a folder holding manifest.csv
    a, b, c = found["a"], found["b"], found["c"]
    assert a.files == {"video": str(media / "videos/a.mp4"), "transcript": str(media / "text/a.vtt")}
    assert a.source_uri == str(media / "videos/a.mp4") and b.source_uri == str(media / "audio/b.wav")
    assert (a.site, a.subject_id, a.split, a.item_scores, a.total_score) == \
        ("clinic", "s1", "train", [1, 0, 2, 3, 0, 1, 1, 0], 8)
    assert (b.item_scores, b.total_score, b.language, b.questionnaire) == (None, 12, "en", "phq8")
    assert (c.site, c.split, c.language, c.questionnaire, c.total_score) == ("berlin", "val", "zh", "phq9", 13)
    assert all(i.problem is None for i in found.values())


def test_load_decodes_listed_media_and_parses_transcripts(media):
    (media / "m.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"interview_id": "a", "video": "videos/a.mp4", "transcript": "text/a.vtt"},
        {"interview_id": 7, "audio": str(media / "audio/b.wav"), "transcript": "text/c.json"},
    ]) + "\n")
    found = _discover(media / "m.jsonl")
    config = PreprocessConfig()
    raw = get_format("manifest").load(found["a"], config)
    assert raw.frames.shape == (2, 224, 224, 3) and raw.frame_rate == 1.0
    assert len(raw.waveform) == pytest.approx(2 * AUDIO_SAMPLE_RATE, abs=1200) and raw.duration_s >= 1.9
    assert [t.speaker for t in raw.transcript] == ["interviewer", "participant"]
    raw = get_format("manifest").load(found["7"], config)
    assert raw.frames is None and len(raw.waveform) == pytest.approx(1.5 * AUDIO_SAMPLE_RATE, abs=10)
    assert raw.duration_s == 3.5  # the transcript runs longer than the audio


def test_bad_rows_become_problems_and_the_rest_survive(media):
    (media / "bad.jsonl").write_text("\n".join([
        json.dumps({"interview_id": "ok", "audio": "audio/b.wav"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"interview_id": "short", "audio": "audio/b.wav", "item_scores": [1, 2, 3]}),
        json.dumps({"interview_id": "sum", "audio": "audio/b.wav", "item_scores": [0] * 8, "total_score": 5}),
        json.dumps({"interview_id": "nomedia", "split": "train"}),
        json.dumps({"interview_id": "typo", "audio": "audio/b.wav", "trancript": "x.csv"}),
        json.dumps({"interview_id": "site", "audio": "audio/b.wav", "site": "bad site"}),
    ]) + "\n")
    found = _discover(media / "bad.jsonl")
    assert found["ok"].problem is None
    assert found["row-2"].problem == "bad.jsonl row 2: not valid JSON"
    assert found["row-3"].problem == "bad.jsonl row 3: not a JSON object"
    assert "phq8 has 8 items, got 3 scores" in found["short"].problem
    assert "total_score 5 is not the sum of item_scores (0)" in found["sum"].problem
    assert "no video, audio or transcript" in found["nomedia"].problem
    assert "trancript" in found["typo"].problem and "site names" in found["site"].problem


def test_missing_media_is_a_load_error_and_unknown_csv_columns_a_file_error(media):
    (media / "gone.csv").write_text("interview_id,audio\nx,audio/missing.wav\n")
    with pytest.raises(UserError, match="missing.wav"):
        get_format("manifest").load(_discover(media / "gone.csv")["x"], PreprocessConfig())
    (media / "typo.csv").write_text("interview_id,audio,trancript\nx,audio/b.wav,t.csv\n")
    with pytest.raises(UserError, match=r"unknown column\(s\) trancript"):
        _discover(media / "typo.csv")
    with pytest.raises(UserError, match="no manifest.csv or manifest.jsonl"):
        _discover(media / "videos")

