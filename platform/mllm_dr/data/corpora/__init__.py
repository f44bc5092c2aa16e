"""Input formats: one module per layout, each exposing ``FORMAT`` (an :class:`~mllm_dr.data.sources.InputFormat`).

``videos``: a folder/prefix of video files with optional sidecar transcripts and a ``labels.csv``;
``manifest``: a CSV/JSONL listing each interview's files; ``edaic`` / ``daicwoz`` / ``cmdc``: released corpora.
"""

from __future__ import annotations

import importlib

from mllm_dr.data.sources import FORMATS, InputFormat
from mllm_dr.errors import UserError


def get_format(name: str) -> InputFormat:
    if name not in FORMATS:
        raise UserError(f"unknown input format {name!r} (known: {', '.join(FORMATS)})")
    return importlib.import_module(f"{__name__}.{name}").FORMAT
