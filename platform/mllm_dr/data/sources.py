"""What to process: ``--source [SITE=][FORMAT:]URI`` specs, the inputs they expand to, and input formats.

A *format* (``videos``, ``manifest``, ``edaic``, ``daicwoz``, ``cmdc``; see :mod:`mllm_dr.data.corpora`)
knows two things: how to *discover* the interviews under a URI (with their labels and splits), and how to
*load* one interview's raw modalities (:class:`RawInterview`) for the encoders. Discovery runs on the driver
and reads only small files; loading runs inside Ray workers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.transcripts import Turn
from mllm_dr.errors import UserError
from mllm_dr.storage import Location

FORMATS = ("videos", "edaic", "daicwoz", "cmdc", "manifest")
DEFAULT_SITE = "default"
_SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_site_name(name: str) -> bool:
    """Letters, digits, ``_ . -``; at most 64 characters (site names end up in paths and metrics keys)."""
    return bool(_SITE_RE.match(name))


@dataclass(frozen=True)
class SourceSpec:
    site: str
    format: str
    uri: str


def parse_source(text: str) -> SourceSpec:
    """``[SITE=][FORMAT:]URI``, e.g. ``london=edaic:s3://bucket/edaic``, ``videos:/data``, ``/data``."""
    site, uri = DEFAULT_SITE, text.strip()
    head, sep, tail = uri.partition("=")
    if sep and "/" not in head and ":" not in head:
        site, uri = head, tail
    if not _SITE_RE.match(site):
        raise UserError(f"--source {text!r}: site names are letters, digits, '_', '.', '-' (got {site!r})")
    fmt = "videos"
    head, sep, tail = uri.partition(":")
    if sep and not tail.startswith("//") and head in FORMATS:
        fmt, uri = head, tail
    elif sep and not tail.startswith("//") and re.fullmatch(r"[a-z][a-z0-9_]+", head):
        raise UserError(f"--source {text!r}: unknown format {head!r} (known: {', '.join(FORMATS)})")
    if not uri:
        raise UserError(f"--source {text!r}: no URI")
    return SourceSpec(site=site, format=fmt, uri=uri)


@dataclass
class InterviewInput:
    """One interview to process, as discovery found it. Small and picklable: it travels to Ray workers."""

    interview_id: str
    site: str
    format: str
    source_uri: str  # the main file (hashed into source_sha256)
    files: dict[str, str] = field(default_factory=dict)  # role -> URI, format-specific (video, audio, transcript...)
    subject_id: str | None = None  # for subject-level splits; defaults to interview_id
    split: str | None = None
    language: str = "en"
    questionnaire: str = "phq8"
    item_scores: list[int] | None = None
    total_score: int | None = None
    problem: str | None = None  # set by discovery when the input is already known to be unusable

    @property
    def key(self) -> str:
        return f"{self.site}/{self.interview_id}"


@dataclass
class RawInterview:
    """One interview's modalities before encoding. Any of them may be absent."""

    duration_s: float
    transcript: list[Turn] = field(default_factory=list)
    waveform: np.ndarray | None = None  # float32 mono at config.AUDIO_SAMPLE_RATE
    frames: np.ndarray | None = None  # uint8 [T, H, W, 3], sampled at frame_rate
    frame_rate: float = 0.0
    visual_features: np.ndarray | None = None  # precomputed per-frame features [T, D] (released corpora)
    visual_features_rate: float = 0.0
    visual_features_name: str = ""  # provenance of precomputed features, e.g. "edaic-cnn-resnet"


class InputFormat(Protocol):
    """The two things every input format provides (see :mod:`mllm_dr.data.corpora`)."""

    name: str

    def discover(self, root: Location, site: str, config: PreprocessConfig) -> list[InterviewInput]:
        """Every interview under ``root``, labels joined. Unusable ones carry ``problem`` instead of raising."""
        ...

    def load(self, item: InterviewInput, config: PreprocessConfig) -> RawInterview:
        """Read and decode one interview. Raises on bad input; the pipeline turns that into an error row."""
        ...
