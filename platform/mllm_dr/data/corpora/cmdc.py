"""CMDC (``cmdc:URI``): the Chinese Multimodal Depression Corpus, one clip per answer to 12 interview questions.

Layout (documented in docs/corpora.md)::

    labels.csv                  subject_id, PHQ9_1 ... PHQ9_9 [, PHQ9_total] [, split]
    questions.csv (optional)    question, text        the interviewer's questions, by number (1-12)
    HC/HC01/Q1.wav Q1.txt Q1.csv ... Q12.*            controls (the HC/ and MDD/ grouping folders are optional)
    MDD/MDD01/...                                     patients

A subject is a folder named ``HC<n>`` or ``MDD<n>``. Per answer ``Q<n>`` (also ``Q01``, ``HC01_Q1``): the
audio (any audio extension), the transcript (``.txt``) and the OpenFace 2 frame table (``.csv``); any of them
may be missing. Questions are laid end to end in number order on one clock: answer *n* spans
``[offset_n, offset_n + d_n]`` where ``d_n`` is its audio clip's duration (its OpenFace length when it has no
audio). The transcript keeps the structure: per question an interviewer turn (the question text from
``questions.csv``, else ``问题 n``) at ``offset_n`` and the participant's answer over the span. Audio is the
clips concatenated (silence for an answer without audio); visual features are the per-answer OpenFace tables
concatenated, each cut or zero-padded to its span so that frames stay aligned with audio and transcript.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict

import numpy as np

from mllm_dr.config import AUDIO_SAMPLE_RATE, PreprocessConfig
from mllm_dr.data.corpora.decoding import decode_audio
from mllm_dr.data.corpora.labels import Labels, item_scores, parse_int, read_table, total_score
from mllm_dr.data.corpora.openface import FrameTable, fit_length, read_frame_table
from mllm_dr.data.corpora.participants import by_basename
from mllm_dr.data.media import AUDIO_EXTENSIONS
from mllm_dr.data.sources import InterviewInput, RawInterview
from mllm_dr.data.transcripts import question_answer_turns, read_text
from mllm_dr.errors import UserError
from mllm_dr.questionnaires import PHQ9
from mllm_dr.storage import Location, resolve

_SUBJECT = re.compile(r"^(HC|MDD)\d+$", re.IGNORECASE)
_ANSWER = re.compile(r"(?:^|[_-])q0*(\d{1,2})$", re.IGNORECASE)
LABEL_FILE = "labels.csv"
QUESTION_FILE = "questions.csv"
SUBJECT_COLUMNS = ("subjectid", "subject", "participantid", "id")
ITEM_COLUMNS = [f"phq9{n}" for n in range(1, PHQ9.n_items + 1)]  # PHQ9_1 ... PHQ9_9, questionnaire order
TOTAL_COLUMNS = ("phq9total", "phq9score", "phqscore", "total")
ROLES = {".txt": "transcript", ".csv": "openface", **{ext: "audio" for ext in AUDIO_EXTENSIONS}}


class CmdcFormat:
    name = "cmdc"

    def discover(self, root: Location, site: str, config: PreprocessConfig) -> list[InterviewInput]:
        files = root.list_files()
        subjects: dict[str, dict[str, str]] = defaultdict(dict)  # subject -> "role:NN" -> uri
        for file in files:
            parts = posixpath.relpath(file.path, root.path).split("/")
            if len(parts) >= 2 and _SUBJECT.match(parts[-2]):
                stem, ext = posixpath.splitext(parts[-1])
                answer, role = _ANSWER.search(stem), ROLES.get(ext.lower())
                if answer and role:
                    subjects[parts[-2].upper()][f"{role}:{int(answer.group(1)):02d}"] = file.uri
        named = by_basename(files)
        labels, problems = _read_labels(named[LABEL_FILE]) if LABEL_FILE in named else ({}, {})
        if not subjects and not labels:
            raise UserError(f"{root.uri}: no CMDC subject folders (HCxx/, MDDxx/) or {LABEL_FILE} found")
        questions = {"questions": named[QUESTION_FILE].uri} if QUESTION_FILE in named else {}
        inputs = []
        for subject in sorted(set(subjects) | set(labels), key=_subject_order):
            answers, label = subjects.get(subject, {}), labels.get(subject) or Labels()
            main = next((answers[k] for k in sorted(answers, key=_main_file_order)), None)
            problem = problems.get(subject) or (
                None if answers else f"subject {subject} is listed in {LABEL_FILE} but has no answer files")
            inputs.append(InterviewInput(
                interview_id=subject, site=site, format=self.name, files={**answers, **questions},
                source_uri=main or root.join(subject).uri, subject_id=subject, split=label.split,
                language="zh", questionnaire="phq9", item_scores=label.item_scores,
                total_score=label.total_score, problem=problem))
        return inputs

    def load(self, item: InterviewInput, config: PreprocessConfig) -> RawInterview:
        numbers = sorted({int(key.split(":")[1]) for key in item.files if ":" in key})
        question_texts = _read_questions(item.files["questions"]) if "questions" in item.files else {}
        clips: list[tuple[int, np.ndarray | None, FrameTable | None, str]] = []
        for n in numbers:
            audio, openface, text = (item.files.get(f"{role}:{n:02d}") for role in ("audio", "openface", "transcript"))
            clips.append((n, decode_audio(audio, config.media)[0] if audio else None,
                          read_frame_table(resolve(openface)) if openface else None,
                          read_text(text) if text else ""))
        return _assemble(clips, question_texts)


def _assemble(clips: list[tuple[int, np.ndarray | None, FrameTable | None, str]],
              question_texts: dict[int, str]) -> RawInterview:
    """Lay the answers end to end on one clock (see the module docstring)."""
    tables = [table for _, _, table, _ in clips if table is not None]
    rate = tables[0].rate if tables else 0.0
    if len({t.features.shape[1] for t in tables}) > 1:
        raise UserError("the answers' OpenFace files have different numbers of feature columns")
    has_audio = any(waveform is not None for _, waveform, _, _ in clips)
    audio, visual, turns, offset = [], [], [], 0.0
    for n, waveform, table, answer in clips:
        if waveform is not None:
            duration = len(waveform) / AUDIO_SAMPLE_RATE
        elif table is not None:
            duration = table.features.shape[0] / rate
        else:
            duration = 0.0
        if has_audio:
            audio.append(waveform if waveform is not None else np.zeros(round(duration * AUDIO_SAMPLE_RATE),
                                                                        np.float32))
        if tables:
            width = tables[0].features.shape[1]
            features = table.features if table is not None else np.zeros((0, width), np.float32)
            visual.append(fit_length(features, round((offset + duration) * rate) - round(offset * rate)))
        turns.extend(question_answer_turns(question_texts.get(n, f"问题 {n}"), answer, offset, offset + duration))
        offset += duration
    return RawInterview(
        duration_s=offset, transcript=turns,
        waveform=np.concatenate(audio).astype(np.float32, copy=False) if has_audio else None,
        visual_features=np.concatenate(visual) if tables else None, visual_features_rate=rate,
        visual_features_name="cmdc-openface" if tables else "")


def _read_labels(table: Location) -> tuple[dict[str, Labels], dict[str, str]]:
    rows = read_table(table)
    column = next((c for c in SUBJECT_COLUMNS if rows and c in rows[0]), None)
    if rows and column is None:
        raise UserError(f"{table.uri}: no subject_id column")
    labels: dict[str, Labels] = {}
    problems: dict[str, str] = {}
    for row in rows:
        subject = row.get(column, "").upper()
        what = f"{LABEL_FILE}, subject {subject}"
        if not _SUBJECT.match(subject):
            raise UserError(f"{table.uri}: subject id {subject!r} is not HC<n> or MDD<n>")
        if subject in labels or subject in problems:
            problems[subject] = f"subject {subject} has more than one row in {LABEL_FILE}"
            continue
        try:
            items = item_scores(row, ITEM_COLUMNS, PHQ9, what)
            total = total_score(row, TOTAL_COLUMNS, PHQ9, what)
            if items is not None and total is not None and total != sum(items):
                raise UserError(f"{what}: total {total} is not the sum of the items ({sum(items)})")
            labels[subject] = Labels(split=row.get("split") or None, item_scores=items,
                                     total_score=total if total is not None else (sum(items) if items else None),
                                     source=LABEL_FILE)
        except UserError as exc:
            problems[subject] = str(exc)
    return labels, problems


def _read_questions(uri: str) -> dict[int, str]:
    """``questions.csv`` (question, text) -> {number: text}; a question number that is not a number is an error."""
    questions = {}
    for row in read_table(resolve(uri)):
        number = parse_int(row.get("question") or row.get("number"), f"{QUESTION_FILE}: question")
        if number is not None and row.get("text"):
            questions[number] = row["text"]
    return questions


def _subject_order(subject: str) -> tuple[str, int]:
    group = "HC" if subject.startswith("HC") else "MDD"
    return group, int(subject[len(group):])


def _main_file_order(key: str) -> tuple[int, int]:
    """The provenance file is the first answer's audio, else its transcript, else its OpenFace table."""
    role, number = key.split(":")
    return ["audio", "transcript", "openface"].index(role), int(number)


FORMAT = CmdcFormat()
