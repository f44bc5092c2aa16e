"""PyAV decoding of real files encoded here, and a malformed corpus where every file fails with a reason.

All files are 4 s long at 5 fps; frame ``i`` of the counting video has grey level ``12 * i``, so a sampled
frame tells which source frame it came from. The audio is a 440 Hz tone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from mllm_dr.config import AUDIO_SAMPLE_RATE, MediaConfig, MediaLimits
from mllm_dr.data.media import MediaError, decode, decode_isolated, probe
from mllm_dr.data.synthetic import declare_duration, malformed_files, write_recording

SECONDS, FPS, TONE_HZ = 4, 5, 440.0
SIZE = 32


def counting_frame(t: float) -> np.ndarray:
    return np.full((120, 160, 3), 12 * round(t * FPS), np.uint8)


def tone(rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * TONE_HZ * np.arange(SECONDS * rate) / rate)).astype(np.float32)


# name -> (video codec, audio codec, audio rate, has video, has audio)
GOOD = {
    "h264_aac.mp4": ("libx264", "aac", 44_100, True, True),
    "vp9_opus.webm": ("libvpx-vp9", "libopus", 48_000, True, True),
    "mpeg4_mp3.avi": ("mpeg4", "libmp3lame", 44_100, True, True),
    "mpeg4_flac.mkv": ("mpeg4", "flac", 22_050, True, True),
    "audio_only.wav": (None, "pcm_s16le", 22_050, False, True),
    "audio_only.m4a": (None, "aac", 48_000, False, True),
    "video_only.mp4": ("libx264", None, 0, True, False),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    for name, (vcodec, acodec, rate, has_video, has_audio) in GOOD.items():
        write_recording(str(folder / name), SECONDS, video=counting_frame if has_video else None, fps=FPS,
                        audio=tone(rate) if has_audio else None, audio_rate=rate or 16_000,
                        video_codec=vcodec or "libx264", audio_codec=acodec or "aac")
    # A real WebM with a misleading extension: FFmpeg probes content, so it decodes.
    (folder / "webm_named.mp4").write_bytes((folder / "vp9_opus.webm").read_bytes())
    # Index at the front, so a cut file still opens and the damage shows while decoding.
    write_recording(str(folder / "faststart.mp4"), SECONDS, video=counting_frame, fps=FPS, audio=tone(44_100),
                    audio_rate=44_100, container_options={"movflags": "faststart"})
    bad = folder / "bad"
    bad.mkdir()
    for name, content in malformed_files((folder / "faststart.mp4").read_bytes()):
        (bad / name).write_bytes(content)
    (bad / "declared-50-hours.mkv").write_bytes(
        declare_duration((folder / "mpeg4_flac.mkv").read_bytes(), 50 * 3600))
    return folder


@pytest.mark.parametrize("name", [*GOOD, "webm_named.mp4"])
def test_decodes_real_encoded_files(media, name):
    _, _, _, has_video, has_audio = GOOD.get(name, GOOD["vp9_opus.webm"])
    decoded = decode_isolated(str(media / name), MediaConfig(frame_rate=1.0, frame_size=SIZE))
    assert decoded.duration_s == pytest.approx(SECONDS, abs=0.25)
    if has_audio:
        wave = decoded.waveform
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert len(wave) == pytest.approx(SECONDS * AUDIO_SAMPLE_RATE, rel=0.03)
        spectrum = np.abs(np.fft.rfft(wave[4000:-4000]))
        peak = np.fft.rfftfreq(len(wave) - 8000, 1 / AUDIO_SAMPLE_RATE)[spectrum.argmax()]
        assert peak == pytest.approx(TONE_HZ, abs=3)  # resampled to 16 kHz without changing pitch
    else:
        assert decoded.waveform is None
    if has_video:
        assert decoded.frames.dtype == np.uint8
        assert decoded.frames.shape in ((SECONDS, SIZE, SIZE, 3), (SECONDS + 1, SIZE, SIZE, 3))
        assert decoded.frame_rate == 1.0
    else:
        assert decoded.frames is None and decoded.frame_rate == 0.0


def test_probe_reads_the_header(media):
    info = probe(str(media / "h264_aac.mp4"))
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height, info.fps) == (160, 120, FPS)
    assert info.sample_rate == 44_100 and info.channels == 1
    assert info.duration_s == pytest.approx(SECONDS, abs=0.1)
    assert probe(str(media / "audio_only.wav")).has_video is False


@pytest.mark.parametrize("name", ["h264_aac.mp4", "vp9_opus.webm", "mpeg4_flac.mkv"])
@pytest.mark.parametrize("rate", [2.0, 10.0])
def test_frames_are_picked_by_timestamp(media, name, rate):
    """Sample k is the frame on screen at k / rate: source frame floor(k * FPS / rate), also above the source fps."""
    decoded = decode(str(media / name), MediaConfig(frame_rate=rate, frame_size=SIZE))
    expected_sources = [int(np.floor(k * FPS / rate + 1e-9)) for k in range(len(decoded.frames))]
    assert len(decoded.frames) == int((SECONDS - 1 / FPS) * rate + 1e-9) + 1
    levels = decoded.frames[:, SIZE // 2, SIZE // 2, 0].astype(int)
    np.testing.assert_allclose(levels, [12 * i for i in expected_sources], atol=5)  # neighbours differ by 12


def test_display_rotation_is_applied(tmp_path):
    """A phone-style file stored sideways with 'rotate 90 degrees clockwise' metadata comes out upright."""
    left_half_white = np.zeros((120, 160, 3), np.uint8)
    left_half_white[:, :80] = 255
    write_recording(str(tmp_path / "portrait.mp4"), 2, video=lambda t: left_half_white, fps=FPS,
                    display_rotation=-90)
    frames = decode(str(tmp_path / "portrait.mp4"), MediaConfig(frame_size=SIZE)).frames
    assert frames[:, : SIZE // 2 - 2].min() > 200 and frames[:, SIZE // 2 + 2:].max() < 50  # left went to the top


def test_isolated_decoding_matches_in_process(media):
    config = MediaConfig(frame_rate=1.0, frame_size=SIZE)
    here, there = decode(str(media / "h264_aac.mp4"), config), decode_isolated(str(media / "h264_aac.mp4"), config)
    np.testing.assert_array_equal(here.frames, there.frames)
    np.testing.assert_array_equal(here.waveform, there.waveform)


MALFORMED = {
    "zero-bytes.mp4": "empty file",
    "truncated.mp4": "decoding failed at",
    "random-bytes.mp4": "not a readable audio/video file",
    "text-file.mov": "not a readable audio/video file",
    "image-as-video.mp4": "still image",
    "huge-resolution.mkv": "declared resolution 16000x16000 is above the limit",
    "declared-50-hours.mkv": "declared duration 180000 s is above the limit",
}


def test_malformed_corpus_fails_file_by_file(media):
    """Each bad file is a one-line MediaError with its reason; a good file decoded after them still works."""
    config = MediaConfig(frame_size=SIZE)
    assert sorted(p.name for p in (media / "bad").iterdir()) == sorted(MALFORMED)
    for name, reason in MALFORMED.items():
        with pytest.raises(MediaError, match=reason) as caught:
            decode_isolated(str(media / "bad" / name), config)
        assert "\n" not in str(caught.value)
    assert decode_isolated(str(media / "h264_aac.mp4"), config).frames is not None


def test_size_limit_is_checked(media):
    config = MediaConfig(limits=MediaLimits(max_file_mb=0.001))
    with pytest.raises(MediaError, match=r"above the limit of 0.001 MiB \(media.limits.max_file_mb\)"):
        decode_isolated(str(media / "h264_aac.mp4"), config)


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="cannot read media file"):
        decode_isolated(str(tmp_path / "nope.mp4"), MediaConfig())


def test_a_hanging_decoder_is_stopped(media, tmp_path):
    """A FIFO nobody writes to blocks FFmpeg's open() forever: a real hang, ended by the timeout."""
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    before = len(_decoder_children())
    started = time.monotonic()
    with pytest.raises(MediaError, match=r"did not finish within 3 s"):
        decode_isolated(str(fifo), MediaConfig(limits=MediaLimits(decode_timeout_s=3)))
    assert time.monotonic() - started < 30
    assert len(_decoder_children()) <= before  # the stuck child was killed, not left behind
    assert decode_isolated(str(media / "h264_aac.mp4"), MediaConfig(frame_size=SIZE)).frames is not None


def test_a_crashing_decoder_becomes_an_error(media, tmp_path):
    """The decoding child dies of SIGSEGV (sent for real, as FFmpeg's own crash would): one MediaError, no crash."""
    fifo = tmp_path / "crash.mp4"
    os.mkfifo(fifo)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            decode_isolated(str(fifo), MediaConfig(limits=MediaLimits(decode_timeout_s=120)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(3.0)  # the child starts (or is reused) and blocks in FFmpeg's open() on the FIFO
    children = _decoder_children()
    assert children, "no decoding child"
    for child in children:
        child.send_signal(signal.SIGSEGV)
    thread.join(60)
    assert isinstance(outcome.get("error"), MediaError)
    assert "decoder crashed (SIGSEGV)" in str(outcome["error"])
    assert decode_isolated(str(media / "h264_aac.mp4"), MediaConfig(frame_size=SIZE)).frames is not None


def _decoder_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "mllm_dr.data.media" in " ".join(p.cmdline())]
