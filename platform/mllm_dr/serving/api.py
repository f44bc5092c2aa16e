"""The HTTP contract: response schemas (they make the OpenAPI docs) and the reading of an assessment request.

A request is either ``multipart/form-data`` (a ``video`` file, an optional ``transcript`` file, optional
``questionnaire`` / ``language`` fields) or JSON (``video_uri`` and/or ``transcript`` turns). Both become one
:class:`AssessmentRequest`. The multipart body is parsed as it streams in, counted against the upload limit,
and every malformed part is answered with a 4xx that says what is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from mllm_dr.config import describe_validation_error
from mllm_dr.data.transcripts import FORMATS as TRANSCRIPT_FORMATS
from mllm_dr.data.transcripts import Turn, parse_transcript_bytes, turns_from_json
from mllm_dr.errors import UserError
from mllm_dr.serving.security import limited_stream, read_limited

MAX_TEXT_FIELD_BYTES = 256
FORM_FIELDS = {"video": "file", "transcript": "file", "questionnaire": "text", "language": "text"}


class ItemResult(BaseModel):
    item: int = Field(description="1-based item number in questionnaire order")
    name: str
    score: int = Field(ge=0, le=3, description="final 0-3 score: the generated one, or the regression fallback")
    regression_score: float = Field(description="the regression head's estimate, reported alongside")
    rationale: str


class ModelRef(BaseModel):
    name: str
    version: str


class Assessment(BaseModel):
    assessment_id: str
    questionnaire: str
    items: list[ItemResult]
    total: int = Field(description="sum of the item scores")
    severity: str
    screen_positive: bool = Field(description="total at or above the questionnaire's screening cut-off")
    modalities: list[str] = Field(description="what the score is based on: audio, video, text")
    model: ModelRef
    timing_ms: dict[str, float] = Field(
        description="wall-clock ms: preprocess (decode + encoders), score (queue + batch + model), model (the "
                    "batch's model call), total (in the ingress)")


class ModelInfo(BaseModel):
    name: str
    version: str
    questionnaire: str
    language: str
    base_llm: str | None
    feature_dims: dict[str, int]
    limits: dict[str, float]
    preprocessing: dict[str, object] = Field(
        description="what uploads are turned into: frame rate and size, audio and visual encoders (the settings "
                    "the model was trained with)")
    batching: dict[str, object] = Field(description="batch-size statistics of the scorer replica that answered")


class AssessmentJson(BaseModel):
    """The JSON form of a request, for systems that already hold the video somewhere (s3://, a shared folder)."""

    model_config = ConfigDict(extra="forbid")
    video_uri: str | None = Field(None, description="s3://bucket/key, or a local path under an allowed folder")
    transcript: list[dict[str, Any]] | None = Field(
        None, description="timed turns: [{start, end, speaker, text}, ...] (seconds; speaker participant/interviewer)")
    questionnaire: str | None = None
    language: str | None = None


@dataclass
class AssessmentRequest:
    video: bytes | None = None
    video_suffix: str = ""  # kept so the decoder sees a familiar name; the content decides
    video_uri: str | None = None
    transcript: list[Turn] = field(default_factory=list)
    questionnaire: str | None = None
    language: str | None = None


# The request body schema for the OpenAPI docs: the route reads the body itself to stream and count it.
OPENAPI_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {
                    "video": {"type": "string", "format": "binary", "description": "interview video (mp4, mkv, ...)"},
                    "transcript": {"type": "string", "format": "binary",
                                   "description": f"optional timed transcript: {', '.join(TRANSCRIPT_FORMATS)}"},
                    "questionnaire": {"type": "string", "example": "phq8"},
                    "language": {"type": "string", "example": "en"},
                },
            }},
            "application/json": {"schema": AssessmentJson.model_json_schema()},
        },
    }
}


async def read_assessment_request(request: Request, limit_bytes: int) -> AssessmentRequest:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise HTTPException(400, "multipart body without a boundary")
        return _from_form(await _read_multipart(request, boundary, limit_bytes))
    if content_type == b"application/json":
        return _from_json(await read_limited(request, limit_bytes))
    raise HTTPException(415, "send multipart/form-data (video file, optional transcript file) or application/json")


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    name: str = ""
    filename: str | None = None


async def _read_multipart(request: Request, boundary: bytes, limit_bytes: int) -> dict[str, _Part]:
    parts: list[_Part] = []
    header = [bytearray(), bytearray()]

    def on_header_end() -> None:
        parts[-1].headers[header[0].decode("latin-1").lower()] = bytes(header[1])
        header[0].clear()
        header[1].clear()

    parser = MultipartParser(boundary, {
        "on_part_begin": lambda: parts.append(_Part()),
        "on_header_field": lambda data, start, end: header[0].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header[1].extend(data[start:end]),
        "on_header_end": on_header_end,
        "on_part_data": lambda data, start, end: parts[-1].data.extend(data[start:end]),
    })
    try:
        async for chunk in limited_stream(request, limit_bytes):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError:
        raise HTTPException(400, "malformed multipart body") from None

    by_name: dict[str, _Part] = {}
    for part in parts:
        _, disposition = parse_options_header(part.headers.get("content-disposition", b""))
        part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        part.filename = None if filename is None else filename.decode("utf-8", "replace")
        kind = FORM_FIELDS.get(part.name)
        if kind is None:
            raise HTTPException(422, f"unexpected form field {part.name[:40]!r} (expected: {', '.join(FORM_FIELDS)})")
        if part.name in by_name:
            raise HTTPException(422, f"form field {part.name!r} given more than once")
        if kind == "file" and part.filename is None:
            raise HTTPException(422, f"{part.name!r} must be a file upload")
        if kind == "text" and len(part.data) > MAX_TEXT_FIELD_BYTES:
            raise HTTPException(422, f"form field {part.name!r} is too long")
        by_name[part.name] = part
    return by_name


def _from_form(parts: dict[str, _Part]) -> AssessmentRequest:
    request = AssessmentRequest(
        questionnaire=_text(parts.get("questionnaire")), language=_text(parts.get("language")))
    video = parts.get("video")
    if video is not None:
        if not video.data:
            raise HTTPException(422, "the video file is empty")
        request.video = bytes(video.data)
        suffix = PurePath(video.filename or "").suffix
        request.video_suffix = suffix.lower() if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ""
    transcript = parts.get("transcript")
    if transcript is not None:
        request.transcript = _parse_transcript(bytes(transcript.data), transcript.filename or "")
    if request.video is None and not request.transcript:
        raise HTTPException(422, "no interview: send a 'video' file (and optionally a 'transcript' file)")
    return request


def _text(part: _Part | None) -> str | None:
    if part is None:
        return None
    return part.data.decode("utf-8", "replace").strip() or None


def _parse_transcript(data: bytes, filename: str) -> list[Turn]:
    """An uploaded transcript, its format told by the file's extension."""
    fmt = PurePath(filename).suffix
    if not fmt:
        raise HTTPException(422, f"transcript: the file name needs an extension ({', '.join(TRANSCRIPT_FORMATS)})")
    if not data.strip():
        raise HTTPException(422, "the transcript file is empty")
    try:
        turns = parse_transcript_bytes(data, fmt, name="transcript")
    except UserError as exc:
        raise HTTPException(422, one_line(exc)) from None
    if not turns:
        raise HTTPException(422, "transcript: no speaker turns found")
    return turns


def _from_json(body: bytes) -> AssessmentRequest:
    try:
        payload = AssessmentJson.model_validate(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(422, "the body is not valid JSON") from None
    except ValidationError as exc:
        raise HTTPException(422, f"invalid request: {describe_validation_error(exc)}") from None
    try:
        transcript = turns_from_json(payload.transcript or [])
    except UserError as exc:
        raise HTTPException(422, one_line(exc)) from None
    if not payload.video_uri and not transcript:
        raise HTTPException(422, "no interview: give a 'video_uri' and/or 'transcript' turns")
    return AssessmentRequest(video_uri=payload.video_uri or None, transcript=transcript,
                             questionnaire=payload.questionnaire, language=payload.language)


def one_line(exc: BaseException) -> str:
    """An error's message as one bounded line: what a 4xx ``detail`` carries."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__
