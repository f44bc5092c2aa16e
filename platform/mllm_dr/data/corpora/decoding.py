"""Decode a corpus file by URI: local or S3, always through :func:`mllm_dr.data.media.decode_isolated`.

Interviews of the released corpora and of manifests are made of several files, so a failure names the file
(its base name: corpus file names carry participant ids, never names) before the decoder's reason.
"""

from __future__ import annotations

import posixpath

import numpy as np

from mllm_dr.config import MediaConfig
from mllm_dr.data.media import DecodedMedia, MediaError, decode_isolated
from mllm_dr.storage import resolve


def decode_file(uri: str, config: MediaConfig) -> DecodedMedia:
    location = resolve(uri)
    name = posixpath.basename(location.path)
    try:
        with location.local_copy() as path:
            return decode_isolated(path, config)
    except MediaError as exc:
        raise MediaError(f"{name}: {exc}") from None


def decode_audio(uri: str, config: MediaConfig) -> tuple[np.ndarray, float]:
    """16 kHz mono float32 waveform and its duration in seconds; a file without audio is an error."""
    decoded = decode_file(uri, config)
    if decoded.waveform is None:
        raise MediaError(f"{posixpath.basename(uri)}: no audio track")
    return decoded.waveform, decoded.duration_s
