"""Manifests (``manifest:URI``): a CSV or JSONL file listing each interview's files and labels.

For data that follows no known layout. URI is the manifest file itself (``.csv``, ``.jsonl``) or a folder
holding ``manifest.csv`` / ``manifest.jsonl``. One row (line) per interview:

===============  ===========================================================================================
interview_id     required; unique within its site
subject_id       optional (default: interview_id); interviews of one subject always share a split
video            video file (frames and, when it has one, the audio track)
audio            audio file; replaces the video's audio track when both are given
transcript       transcript file (csv / tsv / srt / vtt / json / txt)
site             optional; overrides the ``SITE=`` of the ``--source``
split            optional train / dev / test (else a subject-level split is assigned)
language         ``en`` (default) or ``zh``
questionnaire    ``phq8`` (default) or ``phq9``
item_scores      item scores in questionnaire order: a JSON list in JSONL; ``1 0 2 ...``, ``1;0;2`` or
                 ``[1, 0, 2, ...]`` in CSV
total_score      total score; must equal the sum of item_scores when both are given
===============  ===========================================================================================

File URIs are relative to the manifest's folder, or absolute (a local path, ``file://``, ``s3://``). At least
one of video, audio, transcript is needed. An unknown CSV column is an error for the whole file (a typo would
otherwise drop a modality silently); a bad row becomes an error row with the reason.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from mllm_dr.config import PreprocessConfig, StrictModel, describe_validation_error
from mllm_dr.data.corpora.decoding import decode_audio, decode_file
from mllm_dr.data.corpora.labels import normalize_header, read_table
from mllm_dr.data.sources import InterviewInput, RawInterview, is_site_name
from mllm_dr.data.transcripts import parse_transcript
from mllm_dr.errors import UserError
from mllm_dr.questionnaires import get_questionnaire
from mllm_dr.storage import Location, resolve

MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
FILE_ROLES = ("video", "audio", "transcript")


class ManifestRow(StrictModel):
    """One interview of a manifest, validated; blank values arrive as ``None``."""

    interview_id: str = Field(min_length=1)
    subject_id: str | None = None
    video: str | None = None
    audio: str | None = None
    transcript: str | None = None
    site: str | None = None
    split: str | None = None
    language: Literal["en", "zh"] = "en"
    questionnaire: Literal["phq8", "phq9"] = "phq8"
    item_scores: list[int] | None = None
    total_score: int | None = None

    @field_validator("interview_id", "subject_id", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("item_scores", mode="before")
    @classmethod
    def _scores_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            cells = [c for c in re.split(r"[\s,;]+", value.strip().strip("[]")) if c]
            return [int(c) if re.fullmatch(r"\d+", c) else c for c in cells]
        return value

    @field_validator("site")
    @classmethod
    def _site_name(cls, value: str | None) -> str | None:
        if value is not None and not is_site_name(value):
            raise ValueError("site names are letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ManifestRow:
        if not any(getattr(self, role) for role in FILE_ROLES):
            raise ValueError("no video, audio or transcript")
        questionnaire = get_questionnaire(self.questionnaire)
        if self.item_scores is not None:
            try:
                questionnaire.validate_scores(self.item_scores)
            except UserError as exc:
                raise ValueError(str(exc)) from None
            if self.total_score is not None and self.total_score != sum(self.item_scores):
                raise ValueError(f"total_score {self.total_score} is not the sum of item_scores "
                                 f"({sum(self.item_scores)})")
        if self.total_score is not None and not 0 <= self.total_score <= questionnaire.max_total:
            raise ValueError(f"total_score {self.total_score} is outside 0-{questionnaire.max_total}")
        return self


KNOWN_COLUMNS = {normalize_header(name): name for name in ManifestRow.model_fields}


class ManifestFormat:
    name = "manifest"

    def discover(self, root: Location, site: str, config: PreprocessConfig) -> list[InterviewInput]:
        manifest = _manifest_file(root)
        base = Location(manifest.fs, posixpath.dirname(manifest.path), manifest.protocol)
        inputs = []
        for number, row in _rows(manifest):
            where = f"{posixpath.basename(manifest.path)} row {number}"
            try:
                if isinstance(row, str):
                    raise UserError(row)
                entry = ManifestRow.model_validate(row)
            except (UserError, ValidationError) as exc:
                reason = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
                row_id = row.get("interview_id") if isinstance(row, dict) else None
                inputs.append(InterviewInput(
                    interview_id=str(row_id or f"row-{number}"), site=site, format=self.name,
                    source_uri=manifest.uri, problem=f"{where}: {reason}"))
                continue
            files = {role: _file_uri(base, getattr(entry, role)) for role in FILE_ROLES if getattr(entry, role)}
            inputs.append(InterviewInput(
                interview_id=entry.interview_id, site=entry.site or site, format=self.name,
                source_uri=next(files[role] for role in FILE_ROLES if role in files), files=files,
                subject_id=entry.subject_id, split=entry.split, language=entry.language,
                questionnaire=entry.questionnaire, item_scores=entry.item_scores,
                total_score=entry.total_score if entry.item_scores is None else sum(entry.item_scores)))
        if not inputs:
            raise UserError(f"{manifest.uri}: the manifest lists no interviews")
        return inputs

    def load(self, item: InterviewInput, config: PreprocessConfig) -> RawInterview:
        raw = RawInterview(duration_s=0.0)
        if "video" in item.files:
            decoded = decode_file(item.files["video"], config.media)
            raw.waveform, raw.frames, raw.frame_rate = decoded.waveform, decoded.frames, decoded.frame_rate
            raw.duration_s = decoded.duration_s
        if "audio" in item.files:
            raw.waveform, audio_s = decode_audio(item.files["audio"], config.media)
            raw.duration_s = max(raw.duration_s, audio_s)
        if "transcript" in item.files:
            raw.transcript = parse_transcript(resolve(item.files["transcript"]))
            if raw.transcript:
                raw.duration_s = max(raw.duration_s, max(turn.end for turn in raw.transcript))
        return raw


def _manifest_file(root: Location) -> Location:
    if not root.exists():
        raise UserError(f"{root.uri} does not exist")
    if not root.isdir():
        return root
    for name in MANIFEST_NAMES:
        if root.join(name).exists():
            return root.join(name)
    raise UserError(f"{root.uri}: no {' or '.join(MANIFEST_NAMES)} in this folder")


def _rows(manifest: Location) -> list[tuple[int, dict[str, Any] | str]]:
    """(row number, values by field name), or (line number, why the line is unusable) for a bad JSONL line."""
    if manifest.path.lower().endswith((".jsonl", ".ndjson", ".json")):
        rows: list[tuple[int, dict[str, Any] | str]] = []
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    value = json.loads(line)
                    row = value if isinstance(value, dict) else "not a JSON object"
                except json.JSONDecodeError:
                    row = "not valid JSON"
                rows.append((number, row))
        return rows
    table = read_table(manifest)
    unknown = sorted({key for row in table for key in row} - set(KNOWN_COLUMNS))
    if unknown:
        raise UserError(f"{manifest.uri}: unknown column(s) {', '.join(unknown)} "
                        f"(known: {', '.join(ManifestRow.model_fields)})")
    return [(number, {KNOWN_COLUMNS[k]: v for k, v in row.items() if v != ""})
            for number, row in enumerate(table, start=1)]


def _file_uri(base: Location, value: str) -> str:
    """Absolute URIs and paths as they are; anything else relative to the manifest's folder."""
    if "://" in value or value.startswith("/"):
        return value
    return Location(base.fs, posixpath.normpath(posixpath.join(base.path, value)), base.protocol).uri


FORMAT = ManifestFormat()
