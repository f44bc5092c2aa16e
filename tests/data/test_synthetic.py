"""Synthetic interviews: real H.264/AAC files, deterministic, and every planted item recoverable from its signal."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest

from mllm_dr.config import AUDIO_SAMPLE_RATE, MediaConfig
from mllm_dr.data.media import decode, probe
from mllm_dr.data.synthetic import (
    ANSWERS,
    BRIGHTNESS,
    FACE_COLOUR,
    INTERVIEWER_LEVEL,
    ITEM_KEYS,
    MOTION,
    TEXT_ITEMS,
    VOICE_LEVEL,
    VOICE_PITCH_HZ,
    synthesize,
)
from mllm_dr.data.transcripts import INTERVIEWER, PARTICIPANT, parse_transcript

SECONDS, WIDTH = 8.0, 160


@pytest.fixture(scope="module")
def interviews(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    return folder, synthesize(str(folder), interviews=6, seed=7, seconds=SECONDS)


def test_writes_real_h264_aac_files_transcripts_and_labels(interviews):
    folder, made = interviews
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["labels.csv", *(f"{m.interview_id}.mp4" for m in made), *(f"{m.interview_id}.csv" for m in made)])
    info = probe(str(folder / "synth-000.mp4"))
    assert (info.video_codec, info.audio_codec, info.width, info.height) == ("h264", "aac", 160, 120)
    assert info.duration_s == pytest.approx(SECONDS, abs=0.1)
    with open(folder / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["interview_id"] for r in rows] == [m.interview_id for m in made]
    for row, item in zip(rows, made):
        assert [int(row[k]) for k in ITEM_KEYS] == item.item_scores
        assert int(row["total"]) == sum(item.item_scores) == item.total_score
        assert row["split"] == item.split
    assert {m.split for m in made} == {"train", "dev", "test"}


def test_transcript_alternates_speakers_and_carries_the_text_items(interviews):
    folder, made = interviews
    for item in made:
        turns = parse_transcript(str(folder / f"{item.interview_id}.csv"))
        assert [t.speaker for t in turns] == [INTERVIEWER, PARTICIPANT] * (len(turns) // 2)
        assert all(a.end <= b.start for a, b in itertools.pairwise(turns))
        answers = [t.text for t in turns if t.speaker == PARTICIPANT]
        for key, answer in zip(TEXT_ITEMS, answers):
            assert ANSWERS[key].index(answer) == item.score(key)


def test_planted_audio_and_video_items_are_recoverable(interviews):
    """Pitch -> mood, loudness (against the fixed interviewer voice) -> energy, background -> sleep, swing -> psychomotor."""
    folder, made = interviews
    seen = {key: set() for key in ("mood", "energy", "sleep", "psychomotor")}
    for item in made:
        decoded = decode(str(folder / f"{item.interview_id}.mp4"), MediaConfig(frame_rate=5.0, frame_size=WIDTH))
        pitches, participant, interviewer = [], [], []
        for start, end, speaker, _ in item.turns:
            segment = decoded.waveform[int(start * AUDIO_SAMPLE_RATE) + 800:int(end * AUDIO_SAMPLE_RATE) - 800]
            (participant if speaker == "participant" else interviewer).append(np.sqrt(np.mean(segment ** 2)))
            if speaker == "participant":
                pitches.append(_pitch(segment))
        level = INTERVIEWER_LEVEL * np.median(participant) / np.median(interviewer)
        background = decoded.frames[:, :6, :6].mean()
        face = np.abs(decoded.frames.astype(int) - np.array(FACE_COLOUR)).sum(-1) < 60
        centres = [np.nonzero(mask.any(0))[0].mean() for mask in face]
        swing = np.std(centres) * np.sqrt(2) / WIDTH
        recovered = {"mood": _nearest(VOICE_PITCH_HZ, np.median(pitches)), "energy": _nearest(VOICE_LEVEL, level),
                     "sleep": _nearest(BRIGHTNESS, background), "psychomotor": _nearest(MOTION, swing)}
        assert recovered == {key: item.score(key) for key in recovered}, item.interview_id
        for key, value in recovered.items():
            seen[key].add(value)
    assert all(len(values) >= 2 for values in seen.values()), seen  # the check tells scores apart


def test_same_seed_same_interviews_and_sites_differ(tmp_path, interviews):
    _, made = interviews
    again = synthesize(str(tmp_path / "again"), interviews=6, seed=7, seconds=SECONDS)
    assert [(m.item_scores, m.split, m.turns) for m in again] == [(m.item_scores, m.split, m.turns) for m in made]
    other = synthesize(str(tmp_path / "site"), interviews=6, seed=7, seconds=SECONDS, site="site_b")
    assert [m.interview_id for m in other][:2] == ["site_b-000", "site_b-001"]
    assert {m.site for m in other} == {"site_b"}
    assert [m.item_scores for m in other] != [m.item_scores for m in made]


def test_synth_command(cli, tmp_path):
    result = cli("synth", "--out", str(tmp_path / "out"), "--interviews", "2", "--seconds", "3", "--site", "x")
    assert result.returncode == 0, result.stderr
    assert "wrote 2 synthetic interviews" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "labels.csv", "x-000.csv", "x-000.mp4", "x-001.csv", "x-001.mp4"]
    bad = cli("synth", "--out", str(tmp_path / "bad"), "--seconds", "1")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --seconds must be at least 2")
    assert len(bad.stderr.strip().splitlines()) == 1


def _pitch(segment: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment))))
    freqs = np.fft.rfftfreq(len(segment), 1 / AUDIO_SAMPLE_RATE)
    band = (freqs > 80) & (freqs < 400)
    return float(freqs[band][spectrum[band].argmax()])


def _nearest(levels: tuple[float, ...], value: float) -> int:
    return int(np.argmin([abs(np.log(level + 1e-3) - np.log(value + 1e-3)) for level in levels]))


