"""The layout E-DAIC-WOZ and DAIC-WOZ share: one ``XXX_P/`` folder per participant, labels in split files.

Both corpora are released as ``XXX_P.zip`` / ``.tar.gz`` archives plus label CSVs; once unpacked (anywhere
below the source URI, at any depth), each participant's files sit in a folder named ``<id>_P``. A split file
names the split of every participant it lists; a participant in no split file keeps ``split=None`` and gets
a subject-level split from :func:`mllm_dr.data.splits.assign_splits`.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.corpora.decoding import decode_audio
from mllm_dr.data.corpora.labels import PHQ8_ITEM_COLUMNS, Labels, item_scores, read_table, total_score
from mllm_dr.data.sources import InterviewInput, RawInterview
from mllm_dr.data.transcripts import parse_transcript
from mllm_dr.errors import UserError
from mllm_dr.questionnaires import PHQ8
from mllm_dr.storage import Location, resolve

_FOLDER = re.compile(r"^(\d+)_P$", re.IGNORECASE)
_ARCHIVE = re.compile(r"^(\d+)_P\.(zip|tar|tar\.gz|tgz)$", re.IGNORECASE)
PARTICIPANT_COLUMNS = ("participantid", "participant")


@dataclass
class Participant:
    id: str
    folder: Location | None = None
    files: dict[str, Location] = field(default_factory=dict)  # lower-case path inside the folder -> file
    archive: Location | None = None  # a still-packed XXX_P.zip / .tar.gz

    def find(self, name: str) -> Location | None:
        """A file by its lower-case path inside the folder, e.g. ``features/300_cnn_resnet.mat``."""
        return self.files.get(name.lower())

    def missing_reason(self, labels: Labels) -> str | None:
        """Why a participant known only from an archive or a label file cannot be processed (else ``None``)."""
        if self.folder is not None:
            return None
        if self.archive is not None:
            return f"participant {self.id}: {posixpath.basename(self.archive.path)} is not unpacked"
        where = labels.source or "a label file"
        return f"participant {self.id} is listed in {where} but has no {self.id}_P folder"


def discover_participants(root: Location, site: str, format_name: str, split_files: dict[str, str],
                          total_columns: tuple[str, ...], roles: Callable[[str], dict[str, str]],
                          detail_file: str | None = None) -> list[InterviewInput]:
    """Every participant with a folder, an archive or a label row, labels joined, in id order.

    ``roles(pid)`` names the files of one participant (role -> lower-case path inside ``<pid>_P/``); the audio
    role is required, the others are optional. ``detail_file`` is a per-item label table (E-DAIC-WOZ).
    """
    files = root.list_files()
    people = scan(root, files)
    named = by_basename(files)
    labels, problems = read_split_labels(named, split_files, total_columns)
    if detail_file is not None and detail_file in named:
        add_item_labels(labels, problems, named[detail_file], total_columns)
    if not people and not labels:
        raise UserError(f"{root.uri}: no {format_name} participant folders (XXX_P/) or split files found")
    inputs = []
    for pid in sorted(set(people) | set(labels), key=int):
        person, label = people.get(pid) or Participant(pid), labels.get(pid) or Labels()
        found = {role: person.find(name) for role, name in roles(pid).items()}
        uris = {role: file.uri for role, file in found.items() if file is not None}
        problem = problems.get(pid) or person.missing_reason(label) or (
            None if "audio" in uris else f"participant {pid}: no {pid}_AUDIO.wav in {pid}_P/")
        inputs.append(InterviewInput(
            interview_id=pid, site=site, format=format_name, files=uris, subject_id=pid,
            source_uri=uris.get("audio") or root.join(f"{pid}_P", f"{pid}_AUDIO.wav").uri,
            split=label.split, language="en", questionnaire="phq8", item_scores=label.item_scores,
            total_score=label.total_score, problem=problem))
    return inputs


def load_audio_and_transcript(item: InterviewInput, config: PreprocessConfig) -> RawInterview:
    """The part of loading both corpora share; each adds its own visual features."""
    waveform, duration = decode_audio(item.files["audio"], config.media)
    transcript = parse_transcript(resolve(item.files["transcript"])) if "transcript" in item.files else []
    return RawInterview(duration_s=duration, transcript=transcript, waveform=waveform)


def scan(root: Location, files: list[Location]) -> dict[str, Participant]:
    """Group a recursive listing into participants by their ``<id>_P`` folder (ids as label files write them:
    decimal, no leading zeros)."""
    found: dict[str, Participant] = {}
    for file in files:
        parts = posixpath.relpath(file.path, root.path).split("/")
        packed = _ARCHIVE.match(parts[-1])
        if packed:
            pid = str(int(packed.group(1)))
            found.setdefault(pid, Participant(pid)).archive = file
            continue
        for depth, part in enumerate(parts[:-1]):
            match = _FOLDER.match(part)
            if match:
                pid = str(int(match.group(1)))
                person = found.setdefault(pid, Participant(pid))
                person.folder = person.folder or Location(root.fs, posixpath.join(root.path, *parts[: depth + 1]),
                                                          root.protocol)
                person.files["/".join(parts[depth + 1:]).lower()] = file
                break
    return found


def by_basename(files: list[Location]) -> dict[str, Location]:
    """Lower-case file name -> the shallowest file of that name (label files may sit in a ``labels/`` folder)."""
    named: dict[str, Location] = {}
    for file in sorted(files, key=lambda f: (f.path.count("/"), f.path)):
        named.setdefault(posixpath.basename(file.path).lower(), file)
    return named


def read_split_labels(named: dict[str, Location], split_files: dict[str, str],
                      total_columns: tuple[str, ...]) -> tuple[dict[str, Labels], dict[str, str]]:
    """Join the split files (``file name -> split``) into per-participant :class:`Labels`.

    Returns the labels and, separately, per-participant problems (a non-numeric score, a participant listed
    in two splits, two files disagreeing on a score): those participants become error rows with the reason,
    the others are unaffected.
    """
    labels: dict[str, Labels] = {}
    problems: dict[str, str] = {}
    rows_by_id: dict[str, list[tuple[str, str, dict[str, str]]]] = defaultdict(list)
    for name, split in split_files.items():
        if name in named:
            for row in _rows_with_ids(named[name]):
                rows_by_id[row[0]].append((name, split, row[1]))
    for pid, rows in rows_by_id.items():
        try:
            labels[pid] = _merge(pid, rows, total_columns)
        except UserError as exc:
            problems[pid] = str(exc)
    return labels, problems


def add_item_labels(labels: dict[str, Labels], problems: dict[str, str], table: Location,
                    total_columns: tuple[str, ...]) -> None:
    """Join a per-item table (E-DAIC's ``Detailed_PHQ8_Labels.csv``) into split labels already read."""
    for pid, row in _rows_with_ids(table):
        what = f"{posixpath.basename(table.path)}, participant {pid}"
        try:
            items = item_scores(row, PHQ8_ITEM_COLUMNS, PHQ8, what)
            total = total_score(row, total_columns, PHQ8, what)
        except UserError as exc:
            problems.setdefault(pid, str(exc))
            continue
        entry = labels.setdefault(pid, Labels(source=posixpath.basename(table.path)))
        entry.item_scores = entry.item_scores or items
        entry.total_score = entry.total_score if entry.total_score is not None else total
        if items is not None and entry.total_score is None:
            entry.total_score = sum(items)


def _rows_with_ids(table: Location) -> list[tuple[str, dict[str, str]]]:
    rows = read_table(table)
    column = next((c for c in PARTICIPANT_COLUMNS if rows and c in rows[0]), None)
    if rows and column is None:
        raise UserError(f"{table.uri}: no Participant_ID column")
    out = []
    for row in rows:
        value = row.get(column, "")
        try:
            out.append((str(int(float(value))), row))
        except ValueError:
            raise UserError(f"{table.uri}: participant id {value!r} is not a number") from None
    return out


def _merge(pid: str, rows: list[tuple[str, str, dict[str, str]]], total_columns: tuple[str, ...]) -> Labels:
    merged = Labels()
    for name, split, row in rows:
        what = f"{name}, participant {pid}"
        if merged.split is not None and merged.split != split:
            raise UserError(f"participant {pid} is listed in both {merged.source} and {name}")
        items = item_scores(row, PHQ8_ITEM_COLUMNS, PHQ8, what)
        total = total_score(row, total_columns, PHQ8, what)
        if merged.total_score is not None and total is not None and total != merged.total_score:
            raise UserError(f"participant {pid}: PHQ total {merged.total_score} in {merged.source}, {total} in {name}")
        merged.split, merged.source = split, merged.source or name
        merged.item_scores = merged.item_scores or items
        merged.total_score = total if total is not None else merged.total_score
    if merged.item_scores is not None and merged.total_score is None:
        merged.total_score = sum(merged.item_scores)
    return merged
