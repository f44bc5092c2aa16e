"""A folder or S3 prefix of interview recordings (``videos:URI``, the default format).

Layout (any depth below URI; hidden files are ignored)::

    p001.mp4            one recording per interview: video (.mp4 .mov .mkv .avi .webm .m4v ...) or
                        audio only (.wav .m4a .mp3 .flac .ogg ...); the interview id is the file stem
    p001.csv            optional sidecar transcript with the same stem (.csv .tsv .srt .vtt .json .txt)
    labels.csv          optional, at the top: interview_id, [subject_id], [split], [language], [questionnaire],
                        item scores (columns named by item key -- interest, mood, ... -- or item_1 .. item_9),
                        and/or a total (total / total_score / phq8_score / phq9_score)

A recording without a labels row is processed unlabelled; a labels row without a recording, or with
unusable values, becomes an error row with the reason. The questionnaire is PHQ-9 when the labels carry a
ninth item, else PHQ-8, unless a ``questionnaire`` column says otherwise.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.corpora.decoding import decode_file
from mllm_dr.data.corpora.labels import Labels, item_scores, normalize_header, read_table, total_score
from mllm_dr.data.media import MEDIA_EXTENSIONS
from mllm_dr.data.sources import InterviewInput, RawInterview
from mllm_dr.data.transcripts import SIDECAR_SUFFIXES, parse_transcript
from mllm_dr.errors import UserError
from mllm_dr.questionnaires import PHQ8, PHQ9, Questionnaire, get_questionnaire
from mllm_dr.storage import Location, resolve

LABELS_FILE = "labels.csv"
ID_COLUMNS = ("interviewid", "id", "participantid")
TOTAL_COLUMNS = ("total", "totalscore", "phq8score", "phq9score", "phqscore")
LANGUAGES = ("en", "zh")


class VideosFormat:
    name = "videos"

    def discover(self, root: Location, site: str, config: PreprocessConfig) -> list[InterviewInput]:
        files = root.list_files()
        recordings = [f for f in files if _suffix(f) in MEDIA_EXTENSIONS]
        sidecars = _sidecars(files)
        labels_file = root.join(LABELS_FILE) if root.isdir() else None
        rows = _read_labels(labels_file) if labels_file is not None and labels_file.exists() else {}
        inputs = []
        for recording in recordings:
            interview_id = _stem(recording)
            transcript = sidecars.get((posixpath.dirname(recording.path), interview_id))
            item = InterviewInput(interview_id=interview_id, site=site, format=self.name,
                                  source_uri=recording.uri, files={"media": recording.uri})
            if transcript is not None:
                item.files["transcript"] = transcript.uri
            _apply_labels(item, rows.pop(interview_id, None))
            inputs.append(item)
        for interview_id, row in rows.items():  # listed in labels.csv, but no recording
            item = InterviewInput(interview_id=interview_id, site=site, format=self.name,
                                  source_uri=labels_file.uri,
                                  problem=f"listed in {LABELS_FILE} but no audio/video file named "
                                          f"{interview_id}.<ext> was found")
            _apply_labels(item, row)
            inputs.append(item)
        return inputs

    def load(self, item: InterviewInput, config: PreprocessConfig) -> RawInterview:
        decoded = decode_file(item.files["media"], config.media)
        transcript = parse_transcript(resolve(item.files["transcript"])) if "transcript" in item.files else []
        return RawInterview(duration_s=decoded.duration_s, transcript=transcript, waveform=decoded.waveform,
                            frames=decoded.frames, frame_rate=decoded.frame_rate)


FORMAT = VideosFormat()


def _suffix(location: Location) -> str:
    return posixpath.splitext(location.path)[1].lower()


def _stem(location: Location) -> str:
    return posixpath.splitext(posixpath.basename(location.path))[0]


def _sidecars(files: list[Location]) -> dict[tuple[str, str], Location]:
    """(folder, stem) -> transcript, preferring the earlier suffix of SIDECAR_SUFFIXES when several exist."""
    found: dict[tuple[str, str], Location] = {}
    for file in sorted(files, key=lambda f: SIDECAR_SUFFIXES.index(_suffix(f)) if _suffix(f) in SIDECAR_SUFFIXES
                       else len(SIDECAR_SUFFIXES)):
        if _suffix(file) in SIDECAR_SUFFIXES and posixpath.basename(file.path).lower() != LABELS_FILE:
            found.setdefault((posixpath.dirname(file.path), _stem(file)), file)
    return found


class _LabelRow:
    """One interview's labels, or the reason they cannot be used."""

    def __init__(self, labels: Labels | None = None, problem: str | None = None, subject_id: str | None = None,
                 language: str = "en", questionnaire: str = "phq8"):
        self.labels, self.problem, self.subject_id = labels, problem, subject_id
        self.language, self.questionnaire = language, questionnaire


def _read_labels(location: Location) -> dict[str, _LabelRow]:
    """``labels.csv`` by interview id. A file without an id column is a user error for the whole run."""
    rows = read_table(location)
    if not rows:
        return {}
    id_column = next((c for c in ID_COLUMNS if c in rows[0]), None)
    if id_column is None:
        raise UserError(f"{location.uri}: no interview_id column")
    columns = set(rows[0])
    out: dict[str, _LabelRow] = {}
    counts: dict[str, int] = defaultdict(int)
    for number, row in enumerate(rows, start=2):
        interview_id = row.get(id_column, "")
        if not interview_id:
            raise UserError(f"{location.uri}: row {number} has no interview_id")
        counts[interview_id] += 1
        out[interview_id] = _label_row(row, columns, f"{LABELS_FILE} row {number}")
    for interview_id, count in counts.items():
        if count > 1:
            out[interview_id] = _LabelRow(problem=f"{LABELS_FILE} lists interview {interview_id!r} {count} times")
    return out


def _label_row(row: dict[str, str], columns: set[str], what: str) -> _LabelRow:
    try:
        questionnaire = _questionnaire(row, columns)
        language = (row.get("language") or "en").lower()
        if language not in LANGUAGES:
            raise UserError(f"{what}: language {language!r} is not one of {', '.join(LANGUAGES)}")
        items = _item_columns(questionnaire, columns)
        scores = item_scores(row, items, questionnaire, what) if items else None
        total = total_score(row, TOTAL_COLUMNS, questionnaire, what)
        if scores is not None and total is not None and total != sum(scores):
            raise UserError(f"{what}: total {total} is not the sum of the item scores ({sum(scores)})")
        if scores is not None and total is None:
            total = sum(scores)
        labels = Labels(split=row.get("split") or None, item_scores=scores, total_score=total, source=LABELS_FILE)
        return _LabelRow(labels, subject_id=row.get("subjectid") or None, language=language,
                         questionnaire=questionnaire.id)
    except UserError as exc:
        return _LabelRow(problem=str(exc))


def _questionnaire(row: dict[str, str], columns: set[str]) -> Questionnaire:
    if row.get("questionnaire"):
        return get_questionnaire(row["questionnaire"])
    ninth = {normalize_header(PHQ9.items[8].key), "item9"}
    return PHQ9 if columns & ninth else PHQ8


def _item_columns(questionnaire: Questionnaire, columns: set[str]) -> list[str]:
    """Item columns in questionnaire order: by item key (``self_worth``) or by number (``item_6``)."""
    by_key = [normalize_header(item.key) for item in questionnaire.items]
    by_number = [f"item{i}" for i in range(1, questionnaire.n_items + 1)]
    for candidate in (by_key, by_number):
        present = [c for c in candidate if c in columns]
        if len(present) == len(candidate):
            return candidate
        if present:
            missing = ", ".join(c for c in candidate if c not in columns)
            raise UserError(f"{LABELS_FILE}: {questionnaire.id} item columns incomplete (missing {missing})")
    return []


def _apply_labels(item: InterviewInput, row: _LabelRow | None) -> None:
    if row is None:
        return
    if row.problem:
        item.problem = row.problem
        return
    item.split, item.item_scores, item.total_score = row.labels.split, row.labels.item_scores, row.labels.total_score
    item.subject_id, item.language, item.questionnaire = row.subject_id, row.language, row.questionnaire
