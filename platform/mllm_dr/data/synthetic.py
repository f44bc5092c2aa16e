"""``mllm-dr synth``: synthetic interview recordings whose PHQ-8 item scores are planted in the signals.

Each interview is a real encoded H.264/AAC MP4 (PyAV: libx264 + aac), a timed transcript sidecar
(``<id>.csv``: start, end, speaker, text) with alternating interviewer/participant turns, and a row in
``labels.csv``. Every item is carried by exactly one modality, so a model has to use all three:

* audio:  ``mood`` sets the participant's voice pitch, ``energy`` its loudness (:data:`VOICE_PITCH_HZ`,
  :data:`VOICE_LEVEL`); the interviewer's voice is the same in every interview;
* video:  ``sleep`` sets the background brightness, ``psychomotor`` how far the face moves (:data:`BRIGHTNESS`,
  :data:`MOTION`);
* text:   ``interest``, ``appetite``, ``self_worth`` and ``concentration`` pick the participant's answer
  (:data:`ANSWERS`).

Everything is deterministic by seed; splits are assigned per site from the seed as well.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from mllm_dr.data.sources import is_site_name
from mllm_dr.errors import UserError
from mllm_dr.questionnaires import PHQ8
from mllm_dr.storage import Location, resolve

ITEM_KEYS = tuple(item.key for item in PHQ8.items)
AUDIO_ITEMS = ("mood", "energy")
VIDEO_ITEMS = ("sleep", "psychomotor")
TEXT_ITEMS = ("interest", "appetite", "self_worth", "concentration")

VOICE_PITCH_HZ = (210.0, 180.0, 150.0, 120.0)  # participant's fundamental, by mood score
VOICE_LEVEL = (0.40, 0.28, 0.18, 0.10)  # participant's peak amplitude, by energy score
INTERVIEWER_PITCH_HZ, INTERVIEWER_LEVEL = 260.0, 0.25
BRIGHTNESS = (200, 150, 100, 50)  # background grey level, by sleep score
MOTION = (0.0, 0.08, 0.16, 0.24)  # horizontal swing of the face, fraction of the width, by psychomotor score
MOTION_HZ = 0.7
FACE_COLOUR = (230, 170, 140)

QUESTIONS = {
    "interest": "What do you enjoy doing these days?",
    "appetite": "How has your appetite been lately?",
    "self_worth": "How do you feel about yourself?",
    "concentration": "Can you focus when you read or watch TV?",
}
ANSWERS = {
    "interest": ("I still love hiking and seeing my friends.", "Some days I do not feel like doing much.",
                 "Most things feel like a chore lately.", "Nothing interests me anymore, not even music."),
    "appetite": ("I eat normally, my appetite is fine.", "A few days I skipped meals.",
                 "I often forget to eat or I eat far too much.", "I barely eat at all, food has no taste."),
    "self_worth": ("I feel fine about who I am.", "Sometimes I feel I let people down.",
                   "I often feel like a failure.", "I am a total failure and a burden to my family."),
    "concentration": ("Yes, I can read for hours.", "Now and then my mind wanders.",
                      "I lose track of what I read most days.", "I cannot focus on anything at all."),
}
SMALL_TALK = ("Tell me a bit more about your week.", "It has been an ordinary week, work and home.")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass
class SyntheticInterview:
    interview_id: str
    site: str
    split: str
    item_scores: list[int]
    video_uri: str
    transcript_uri: str
    seconds: float
    turns: list[tuple[float, float, str, str]] = field(default_factory=list)

    @property
    def total_score(self) -> int:
        return sum(self.item_scores)

    def score(self, key: str) -> int:
        return self.item_scores[ITEM_KEYS.index(key)]


def synthesize(out_uri: str, interviews: int = 8, seed: int = 0, seconds: float = 20.0, *,
               site: str | None = None, width: int = 160, height: int = 120, fps: int = 5,
               audio_rate: int = 24_000, preset: str = "veryfast") -> list[SyntheticInterview]:
    """Write ``interviews`` recordings + transcripts + ``labels.csv`` under ``out_uri`` (local or s3://).

    ``site`` names the interviews (``<site>-003``) and mixes into the seed, so two sites get different people.
    """
    if interviews < 1:
        raise UserError("--interviews must be at least 1")
    if seconds < 2:
        raise UserError("--seconds must be at least 2 (an interview needs a question and an answer)")
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise UserError("--width and --height must be even and at least 16 (H.264 with 4:2:0 chroma)")
    if site is not None and not is_site_name(site):
        raise UserError(f"--site {site!r}: site names are letters, digits, '_', '.', '-'")
    out = resolve(out_uri)
    out.makedirs()
    prefix = site or "synth"
    site_key = int.from_bytes(hashlib.sha256(site.encode()).digest()[:4], "big") if site else 0
    splits = _assign_splits(interviews, np.random.default_rng([seed, site_key, 1]))
    made = []
    for index in range(interviews):
        rng = np.random.default_rng([seed, site_key, 0, index])
        interview_id = f"{prefix}-{index:03d}"
        scores = _draw_scores(rng)
        turns = _script(scores, seconds)
        with tempfile.TemporaryDirectory(prefix="mllm-dr-synth-") as folder:
            local = os.path.join(folder, f"{interview_id}.mp4")
            write_recording(local, seconds, video=_scene(scores, width, height, rng), fps=fps,
                            audio=_voice(scores, turns, seconds, audio_rate, rng), audio_rate=audio_rate,
                            video_codec="libx264", audio_codec="aac", video_options={"preset": preset, "crf": "23"},
                            width=width, height=height)
            video = out.join(f"{interview_id}.mp4")
            _upload(local, video)
        transcript = out.join(f"{interview_id}.csv")
        transcript.write_text(_transcript_csv(turns))
        made.append(SyntheticInterview(interview_id, site or "default", splits[index], scores, video.uri,
                                       transcript.uri, seconds, turns))
    out.join("labels.csv").write_text(_labels_csv(made))
    return made


def write_recording(path: str, seconds: float, *, video: Callable[[float], np.ndarray] | None, fps: int = 5,
                    audio: np.ndarray | None = None, audio_rate: int = 24_000, video_codec: str = "libx264",
                    audio_codec: str = "aac", width: int = 160, height: int = 120,
                    video_options: dict[str, str] | None = None, container_format: str | None = None,
                    container_options: dict[str, str] | None = None, display_rotation: int = 0) -> None:
    """Encode ``video(t) -> uint8 [H, W, 3]`` at ``fps`` and/or a mono ``audio`` waveform into one file.

    Audio and video are muxed second by second so the file is interleaved like a camera's.
    ``display_rotation`` (degrees counter-clockwise) is metadata, as a phone held upright writes it.
    """
    with av.open(path, "w", format=container_format, options=container_options or {}) as container:
        vstream = astream = None
        if video is not None:
            vstream = container.add_stream(video_codec, rate=fps, options=video_options or {})
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
            if display_rotation:
                vstream.set_display_rotation(display_rotation)
        if audio is not None:
            astream = container.add_stream(audio_codec, rate=audio_rate, layout="mono")
        n_frames = round(seconds * fps)
        n_samples = len(audio) if audio is not None else 0
        for second in range(int(np.ceil(seconds))):
            if vstream is not None:
                for index in range(second * fps, min((second + 1) * fps, n_frames)):
                    frame = av.VideoFrame.from_ndarray(video(index / fps), format="rgb24")
                    frame.pts = index
                    container.mux(vstream.encode(frame))
            if astream is not None:
                start, stop = second * audio_rate, min((second + 1) * audio_rate, n_samples)
                if start < stop:
                    chunk = av.AudioFrame.from_ndarray(audio[None, start:stop].astype(np.float32), format="flt",
                                                       layout="mono")
                    chunk.sample_rate, chunk.pts, chunk.time_base = audio_rate, start, Fraction(1, audio_rate)
                    container.mux(astream.encode(chunk))
        for stream in (vstream, astream):
            if stream is not None:
                container.mux(stream.encode(None))


# --- planted signals -------------------------------------------------------------------------------------

def _draw_scores(rng: np.random.Generator) -> list[int]:
    """Items share a latent severity (as real PHQ items do) so totals span the whole range."""
    severity = rng.uniform(0, 1)
    return [int(np.clip(np.rint(3 * severity + rng.normal(0, 0.9)), 0, 3)) for _ in ITEM_KEYS]


def _script(scores: list[int], seconds: float) -> list[tuple[float, float, str, str]]:
    """Alternating question/answer turns: the four text items first, then small talk to fill the time."""
    pairs = max(len(TEXT_ITEMS), int(seconds // 6))
    span = seconds / pairs
    turns = []
    for index in range(pairs):
        start = index * span
        if index < len(TEXT_ITEMS):
            key = TEXT_ITEMS[index]
            question, answer = QUESTIONS[key], ANSWERS[key][scores[ITEM_KEYS.index(key)]]
        else:
            question, answer = SMALL_TALK
        asked = start + 0.35 * span
        turns.append((round(start + 0.05, 3), round(asked - 0.05, 3), "interviewer", question))
        turns.append((round(asked + 0.05, 3), round(start + span - 0.05, 3), "participant", answer))
    return turns


def _voice(scores: list[int], turns: list[tuple[float, float, str, str]], seconds: float, rate: int,
           rng: np.random.Generator) -> np.ndarray:
    """Harmonic 'speech' with a 4 Hz syllable envelope in each turn, over faint room noise."""
    wave = rng.normal(0, 0.002, round(seconds * rate)).astype(np.float32)
    pitch = VOICE_PITCH_HZ[scores[ITEM_KEYS.index("mood")]]
    level = VOICE_LEVEL[scores[ITEM_KEYS.index("energy")]]
    for start, end, speaker, _ in turns:
        f0, peak = (pitch, level) if speaker == "participant" else (INTERVIEWER_PITCH_HZ, INTERVIEWER_LEVEL)
        first, last = int(start * rate), min(int(end * rate), len(wave))
        t = np.arange(last - first) / rate
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3, 4))
        envelope = 0.55 + 0.45 * np.sin(np.pi * 4 * t) ** 2
        wave[first:last] += (peak / 2.1 * tone * envelope).astype(np.float32)
    return wave


def _scene(scores: list[int], width: int, height: int, rng: np.random.Generator) -> Callable[[float], np.ndarray]:
    """A face-coloured square on a grey background; brightness and swing carry two items."""
    grey = BRIGHTNESS[scores[ITEM_KEYS.index("sleep")]]
    swing = MOTION[scores[ITEM_KEYS.index("psychomotor")]] * width
    phase = rng.uniform(0, 2 * np.pi)
    side = height // 3
    background = np.full((height, width, 3), grey, np.uint8)

    def frame(t: float) -> np.ndarray:
        image = background.copy()
        x = round(width / 2 + swing * np.sin(2 * np.pi * MOTION_HZ * t + phase) - side / 2)
        y = (height - side) // 2
        image[y:y + side, max(x, 0):max(x + side, 0)] = FACE_COLOUR
        return image

    return frame


def _assign_splits(n: int, rng: np.random.Generator) -> list[str]:
    """Shuffled train/dev/test with every split present once there are three interviews."""
    counts = [round(f * n) for f in SPLIT_FRACTIONS[1:]]
    if n >= 3:
        counts = [max(c, 1) for c in counts]
    dev, test = counts
    splits = ["dev"] * dev + ["test"] * test
    splits = ["train"] * max(n - len(splits), 0) + splits
    return [splits[i] for i in rng.permutation(n)]


# --- files -----------------------------------------------------------------------------------------------

def _transcript_csv(turns: list[tuple[float, float, str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["start", "end", "speaker", "text"])
    writer.writerows(turns)
    return buffer.getvalue()


def _labels_csv(interviews: list[SyntheticInterview]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["interview_id", "split", *ITEM_KEYS, "total"])
    for item in interviews:
        writer.writerow([item.interview_id, item.split, *item.item_scores, item.total_score])
    return buffer.getvalue()


def _upload(local: str, target: Location) -> None:
    if target.protocol == "file":
        os.replace(local, target.path)
    else:
        with open(local, "rb") as f:
            target.write_bytes(f.read())


def malformed_files(good: bytes, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """Broken inputs for tests, as (file name, content): each must become an error row, never a crash.

    ``good`` is a valid MP4 whose index sits at the end (PyAV's default), so cutting it loses the index.
    """
    rng = np.random.default_rng(seed)
    yield "zero-bytes.mp4", b""
    yield "truncated.mp4", good[: len(good) // 2]
    yield "random-bytes.mp4", rng.bytes(64 * 1024)
    yield "text-file.mov", b"This is a text file with a video extension.\n" * 40
    yield "image-as-video.mp4", _png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    # A YUV4MPEG2 header declaring a 16000x16000 picture with almost no data behind it.
    yield "huge-resolution.mkv", b"YUV4MPEG2 W16000 H16000 F30:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096)


def declare_duration(mkv: bytes, seconds: float) -> bytes:
    """A Matroska file whose header declares ``seconds`` of content (a lie when the data is short)."""
    data = bytearray(mkv)
    at = data.find(b"\x44\x89")  # the Segment Info Duration element, in TimestampScale units (1 ms)
    if at < 0:
        raise ValueError("no Matroska Duration element")
    size = data[at + 2]
    if size not in (0x84, 0x88):
        raise ValueError("unexpected Matroska Duration size")
    struct.pack_into(">d" if size == 0x88 else ">f", data, at + 3, seconds * 1000.0)
    return bytes(data)


def _png(image: np.ndarray) -> bytes:
    """A minimal RGB PNG (the 'wrong kind of file with a video extension' case)."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main(args: argparse.Namespace) -> int:
    made = synthesize(args.out, interviews=args.interviews, seed=args.seed, seconds=args.seconds,
                      site=args.site, width=args.width, height=args.height, fps=args.fps)
    splits = {s: sum(m.split == s for m in made) for s in ("train", "dev", "test")}
    print(f"wrote {len(made)} synthetic interviews ({args.seconds:g} s each; "
          f"{', '.join(f'{n} {s}' for s, n in splits.items())}) to {resolve(args.out).uri}")
    return 0

