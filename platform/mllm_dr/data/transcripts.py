"""Timed transcript turns: the one place transcripts are parsed (sidecars, corpora and uploads alike)."""

from __future__ import annotations

from dataclasses import dataclass

PARTICIPANT = "participant"
INTERVIEWER = "interviewer"


@dataclass(frozen=True)
class Turn:
    """One speaker turn. ``speaker`` is normalised to ``participant`` / ``interviewer`` when known."""

    start: float
    end: float
    speaker: str
    text: str
