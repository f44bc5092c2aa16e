"""Timed transcript turns: the one place transcripts are parsed (sidecars, corpora and uploads alike).

Accepted formats: ``csv`` / ``tsv`` (columns found by name, e.g. E-DAIC-WOZ's ``Start_Time, End_Time, Text``
and DAIC-WOZ's tab-separated ``start_time, stop_time, speaker, value``), ``srt``, ``vtt``, ``json`` (a list of
turn objects, or an object holding one under ``turns`` / ``transcript`` / ``segments`` / ``utterances``)
and ``txt`` (one turn per line, ``Speaker: text`` or plain text).

Cleaning is deliberately light: whitespace is collapsed, bracketed annotations (``<laughter>``,
``[scrubbed_entry]``) become one canonical token ``[laughter]`` or are stripped, sync markers are removed,
turns left empty are dropped, and timed turns are sorted by start. Turns are never merged. Speakers are
normalised to ``participant`` / ``interviewer`` when recognised; a turn without a speaker is the participant's
(E-DAIC-WOZ transcripts carry only the participant's speech). Untimed turns have ``start = end = 0.0``.

Error messages name the file and line, never the transcript's content: it is health data.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mllm_dr.errors import UserError
from mllm_dr.storage import Location, resolve

PARTICIPANT = "participant"
INTERVIEWER = "interviewer"

FORMATS = ("csv", "tsv", "srt", "vtt", "json", "txt")
# Sidecar transcripts sit next to a video with the same stem; earlier suffixes are preferred.
SIDECAR_SUFFIXES = tuple(f".{fmt}" for fmt in FORMATS)

Annotations = Literal["keep", "strip"]


@dataclass(frozen=True)
class Turn:
    """One speaker turn. ``speaker`` is normalised to ``participant`` / ``interviewer`` when known."""

    start: float
    end: float
    speaker: str
    text: str


# --- public API ------------------------------------------------------------------------------------------


def parse_transcript(path_or_location: str | Path | Location, fmt: str | None = None,
                     annotations: Annotations = "keep") -> list[Turn]:
    """Read a transcript file (local path, URI or :class:`Location`); the format defaults to its suffix."""
    location = path_or_location if isinstance(path_or_location, Location) else resolve(str(path_or_location))
    name = posixpath.basename(location.path)
    if fmt is None:
        fmt = posixpath.splitext(name)[1]
        if not fmt:
            raise UserError(f"{name}: no file suffix to tell the transcript format ({', '.join(FORMATS)})")
    return parse_transcript_bytes(location.read_bytes(), fmt, name=name, annotations=annotations)


def parse_transcript_bytes(data: bytes, fmt: str, name: str = "transcript",
                           annotations: Annotations = "keep") -> list[Turn]:
    """Parse transcript content (e.g. an upload); ``name`` is only used in error messages."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"{name}: unsupported transcript format {fmt!r} (use one of {', '.join(FORMATS)})")
    text = decode_text(data, name)
    if not text.strip():
        return []
    if fmt in ("csv", "tsv"):
        raw = _parse_delimited(text, name, tab_separated=fmt == "tsv")
    else:
        raw = {"srt": _parse_cues, "vtt": _parse_cues, "json": _parse_json, "txt": _parse_txt}[fmt](text, name)
    return _finish(raw, annotations)


def read_text(path_or_location: str | Path | Location) -> str:
    """A small text file (e.g. a CMDC answer transcript) decoded the way transcripts are."""
    location = path_or_location if isinstance(path_or_location, Location) else resolve(str(path_or_location))
    return decode_text(location.read_bytes(), posixpath.basename(location.path))


def question_answer_turns(question: str, answer: str, start: float, end: float,
                          annotations: Annotations = "keep") -> list[Turn]:
    """One interview question and its answer (CMDC-style per-answer transcripts) as two timed turns.

    The question was asked before the answer's recording starts, so it is an instant interviewer turn at
    ``start``; the answer is the participant's turn over ``[start, end]``. An empty side is dropped.
    """
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        raise UserError(f"question/answer timing must satisfy start <= end (got {start}, {end})")
    turns = [Turn(start, start, INTERVIEWER, question), Turn(start, end, PARTICIPANT, answer)]
    return _finish(turns, annotations)


def normalise_speaker(label: str | None) -> str:
    """``Ellie``/``Interviewer``/``医生``... → ``interviewer``; ``Participant``/``患者``... → ``participant``.

    An empty label is the participant; any other label is kept as written (e.g. ``Speaker 2``).
    """
    label = (label or "").strip()
    key = _alias_key(label)
    if not key or key in _PARTICIPANT_ALIASES:
        return PARTICIPANT
    if key in _INTERVIEWER_ALIASES:
        return INTERVIEWER
    return label


def decode_text(data: bytes, name: str) -> str:
    """UTF-8 (with or without BOM), UTF-16 with BOM, or GB18030 (Chinese corpora); binary is refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise UserError(f"{name}: not valid UTF-16 text") from None
    if b"\x00" in data:
        raise UserError(f"{name}: binary data, not a text transcript")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UserError(f"{name}: not UTF-8 or GB18030 text")


# --- speakers, annotations, times ------------------------------------------------------------------------

_INTERVIEWER_ALIASES = {
    "ellie", "interviewer", "int", "i", "therapist", "doctor", "dr", "clinician", "psychiatrist",
    "psychologist",
    "counselor", "counsellor", "agent", "virtualagent", "virtualinterviewer", "assessor", "rater", "q",
    "医生", "医师", "访谈者", "访员", "主试", "治疗师", "咨询师", "问", "提问",
}
_PARTICIPANT_ALIASES = {
    "participant", "p", "patient", "pt", "subject", "s", "client", "interviewee", "respondent", "user", "a",
    "患者", "病人", "被试", "受访者", "来访者", "答", "回答",
}
_SYNC_MARKERS = {"sync", "synch"}
_ANNOTATION_RE = re.compile(r"<([^<>\n]{1,40})>|\[([^\[\]\n]{1,40})\]")
_SPACE_RE = re.compile(r"\s+")


def _alias_key(label: str) -> str:
    return re.sub(r"[\s_.\-]", "", label.lower())


def clean_text(text: str, annotations: Annotations = "keep") -> str:
    """Collapse whitespace; annotations become ``[word]`` (keep) or vanish (strip); sync marks vanish."""

    def replace(match: re.Match[str]) -> str:
        inner = _SPACE_RE.sub(" ", (match.group(1) or match.group(2)).strip().lower())
        if annotations == "strip" or not inner or inner in _SYNC_MARKERS:
            return " "
        return f"[{inner}]"

    return _SPACE_RE.sub(" ", _ANNOTATION_RE.sub(replace, text)).strip()


_CLOCK_RE = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)$")


def parse_time(value: str) -> float:
    """Seconds from ``12.5``, ``01:02:03.450``, ``01:02:03,450`` or ``02:03.4``; ``ValueError`` otherwise."""
    value = value.strip()
    match = _CLOCK_RE.match(value)
    if match:
        hours, minutes, seconds = match.groups()
        result = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds.replace(",", "."))
    else:
        result = float(value)
    if not math.isfinite(result) or result < 0:
        raise ValueError(value)
    return result


def _finish(turns: Iterable[Turn], annotations: Annotations) -> list[Turn]:
    """Clean text, drop empty turns, repair reversed times, sort by start (stable: file order on ties)."""
    cleaned = []
    for turn in turns:
        text = clean_text(turn.text, annotations)
        if text:
            cleaned.append(Turn(turn.start, max(turn.start, turn.end), turn.speaker, text))
    return sorted(cleaned, key=lambda t: t.start)


# --- csv / tsv -------------------------------------------------------------------------------------------

_COLUMN_ALIASES = {
    "start": {"start", "starttime", "startsec", "startseconds", "begin", "begintime", "onset", "from",
              "tstart"},
    "end": {"end", "endtime", "endsec", "endseconds", "stop", "stoptime", "offset", "to", "finish", "tend"},
    "speaker": {"speaker", "speakername", "speakerlabel", "speakerid", "role", "who", "spk", "talker"},
    "text": {"text", "value", "utterance", "transcript", "transcription", "content", "sentence", "words"},
}
# Headerless files (first cell is a time): positional columns by count.
_POSITIONAL = {3: ("start", "end", "text"), 4: ("start", "end", "speaker", "text")}


def _column_roles(header: Sequence[str]) -> dict[str, int]:
    roles: dict[str, int] = {}
    for index, cell in enumerate(header):
        key = _alias_key(cell.strip().strip('"'))
        for role, aliases in _COLUMN_ALIASES.items():
            if key in aliases and role not in roles:
                roles[role] = index
    return roles


def _sniff_delimiter(first_line: str) -> str:
    """The delimiter that splits the header into the most known columns (DAIC-WOZ's .csv is tab-separated)."""
    scored = [(len(_column_roles(first_line.split(d))), first_line.count(d), d) for d in (",", "\t", ";")]
    return max(scored)[2]


def _parse_delimited(text: str, name: str, tab_separated: bool) -> list[Turn]:
    first = next(line for line in text.splitlines() if line.strip())
    delimiter = "\t" if tab_separated else _sniff_delimiter(first)
    # Tab-separated corpus files do not quote; a stray quote in speech must not swallow the next lines.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
    try:
        rows = [(number, row) for number, row in enumerate(reader, start=1) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise UserError(f"{name}: line {reader.line_num}: malformed delimited text ({exc})") from None
    header = rows[0][1]
    roles = _column_roles(header)
    if "text" in roles:
        rows = rows[1:]
    elif _looks_headerless(header):
        roles = {role: i for i, role in enumerate(_POSITIONAL[min(len(header), 4)])}
    else:
        raise UserError(f"{name}: no text column in the header (e.g. text, value, utterance, transcript)")

    text_index = roles["text"]
    turns, last_time = [], 0.0
    for number, row in rows:
        row = [_unquote(c) for c in row] if quoting == csv.QUOTE_NONE else row
        if text_index == len(header) - 1 and len(row) > len(header):
            row = row[:text_index] + [delimiter.join(row[text_index:])]  # unquoted delimiters inside speech
        cells = {role: row[index] if index < len(row) else "" for role, index in roles.items()}
        where = f"{name}: row {number}"
        start = _time_value(cells.get("start"), where, "start", default=last_time)
        end = _time_value(cells.get("end"), where, "end", default=start)
        last_time = end
        turns.append(Turn(start, end, normalise_speaker(cells.get("speaker")), cells["text"]))
    return turns


def _looks_headerless(first_row: Sequence[str]) -> bool:
    if len(first_row) < 3:
        return False
    try:
        parse_time(first_row[0])
        return True
    except ValueError:
        return False


def _unquote(cell: str) -> str:
    return cell[1:-1] if len(cell) >= 2 and cell[0] == cell[-1] == '"' else cell


def _time_value(value: Any, where: str, what: str, default: float) -> float:
    """A missing time (a DAIC-WOZ quirk) takes ``default``, so the turn keeps its place; junk is an error."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    problem = UserError(f"{where}: {what} time is not a number of seconds or hh:mm:ss")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise problem
    try:
        return parse_time(str(value))
    except ValueError:
        raise problem from None


# --- srt / vtt -------------------------------------------------------------------------------------------

_CUE_TIMING_RE = re.compile(r"^\s*(\S+)\s*-->\s*(\S+)")
_VOICE_RE = re.compile(r"^\s*<v(?:\.[^\s>]*)?\s+([^>]+)>")
_MARKUP_RE = re.compile(r"</?(?:i|b|u|c|v|lang|ruby|rt|font|span)(?:[.\s][^>]*)?>|<\d[\d:.]*>|\{\\[^}]*\}",
                        re.IGNORECASE)
_VTT_SKIPPED_BLOCKS = ("NOTE", "STYLE", "REGION")


def _parse_cues(text: str, name: str) -> list[Turn]:
    """SRT and WebVTT cues: optional id line, ``start --> end [settings]``, then text lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    blocks = [block.splitlines() for block in re.split(r"\n\s*\n", text)]
    if blocks and blocks[0][0].lstrip("\ufeff").startswith("WEBVTT"):
        blocks = blocks[1:]
    turns = []
    for number, lines in enumerate(blocks, start=1):
        if lines[0].split(" ", 1)[0] in _VTT_SKIPPED_BLOCKS:
            continue
        timing = next((i for i, line in enumerate(lines[:2]) if "-->" in line), None)
        match = _CUE_TIMING_RE.match(lines[timing]) if timing is not None else None
        if match is None:
            raise UserError(f"{name}: cue {number} has no 'start --> end' timing line")
        try:
            start, end = parse_time(match.group(1)), parse_time(match.group(2))
        except ValueError:
            raise UserError(f"{name}: cue {number}: timing is not hh:mm:ss.mmm --> hh:mm:ss.mmm") from None
        body = " ".join(lines[timing + 1:])
        voice = _VOICE_RE.match(body)
        label, body = (voice.group(1), body[voice.end():]) if voice else (None, body)
        label, body = _split_speaker(_MARKUP_RE.sub("", body), label)
        turns.append(Turn(start, end, normalise_speaker(label), body))
    if not turns:
        raise UserError(f"{name}: no subtitle cues found")
    return turns


# --- txt -------------------------------------------------------------------------------------------------

_SPEAKER_PREFIX_RE = re.compile(r"^\s*([^\W\d][\w .'\-]{0,23}?)\s*[:：]\s*(.*)$", re.DOTALL)


def _split_speaker(line: str, label: str | None = None) -> tuple[str | None, str]:
    """``Speaker: text`` → (``Speaker``, text). A label is a known alias or at most two words."""
    if label is not None:
        return label, line
    match = _SPEAKER_PREFIX_RE.match(line)
    if match:
        candidate = match.group(1).strip()
        key = _alias_key(candidate)
        if key in _INTERVIEWER_ALIASES or key in _PARTICIPANT_ALIASES or len(candidate.split()) <= 2:
            return candidate, match.group(2)
    return None, line


def _parse_txt(text: str, name: str) -> list[Turn]:
    """One turn per line. A line without a ``Speaker:`` prefix continues with the previous line's speaker."""
    turns, speaker = [], PARTICIPANT
    for line in text.splitlines():
        if not line.strip():
            continue
        label, body = _split_speaker(line)
        if label is not None:
            speaker = normalise_speaker(label)
        turns.append(Turn(0.0, 0.0, speaker, body))
    return turns


# --- json ------------------------------------------------------------------------------------------------

_JSON_LIST_KEYS = ("turns", "transcript", "segments", "utterances")


def _parse_json(text: str, name: str) -> list[Turn]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    return _json_turns(data, name)


def turns_from_json(data: Any, name: str = "transcript", annotations: Annotations = "keep") -> list[Turn]:
    """Turns from decoded JSON (e.g. the ``transcript`` field of an HTTP request), cleaned like a file's."""
    return _finish(_json_turns(data, name), annotations)


def _json_turns(data: Any, name: str) -> list[Turn]:
    if isinstance(data, dict):
        key = next((k for k in _JSON_LIST_KEYS if isinstance(data.get(k), list)), None)
        if key is None:
            raise UserError(f"{name}: a JSON transcript is a list of turns or an object with a "
                            f"{' / '.join(_JSON_LIST_KEYS)} list")
        data = data[key]
    if not isinstance(data, list):
        raise UserError(f"{name}: a JSON transcript is a list of turns")
    turns, last_time = [], 0.0
    for number, item in enumerate(data, start=1):
        where = f"{name}: turn {number}"
        if not isinstance(item, dict):
            raise UserError(f"{where}: not an object with start/end/speaker/text")
        fields = {role: value for key, value in item.items() for role, aliases in _COLUMN_ALIASES.items()
                  if _alias_key(str(key)) in aliases}
        text, speaker = fields.get("text", ""), fields.get("speaker")
        if not isinstance(text, str):
            raise UserError(f"{where}: text is not a string")
        if speaker is not None and not isinstance(speaker, (str, int)):
            raise UserError(f"{where}: speaker is not a string")
        start = _time_value(fields.get("start"), where, "start", default=last_time)
        end = _time_value(fields.get("end"), where, "end", default=start)
        last_time = end
        turns.append(Turn(start, end, normalise_speaker(None if speaker is None else str(speaker)), text))
    return turns
