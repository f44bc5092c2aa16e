"""Audio and video decoding with PyAV: probe, limits, 16 kHz mono audio, frames sampled at a fixed rate.

Decoding is sequential (one demux pass over both streams, no per-frame seeks) with FFmpeg frame threading,
and frames are picked by presentation time, so sampling is exact whatever the source frame rate: sample
``k`` is the frame on screen at ``start + k / frame_rate``. FFmpeg can crash or hang on some damaged files
(PyAV issue 2344), so the pipeline calls :func:`decode_isolated`, which decodes in a long-lived child process
with a per-file wall-clock limit and turns a crash or a hang into a one-line :class:`MediaError` (the child is
then replaced).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import av
import numpy as np
from av.stream import Disposition

from mllm_dr.config import AUDIO_SAMPLE_RATE, MediaConfig, MediaLimits
from mllm_dr.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".m4a", ".mp3", ".flac", ".ogg", ".opus", ".aac")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
# Demuxers that open single pictures or text: FFmpeg reads them, but they are not interview recordings.
_NOT_RECORDINGS = ("image2", "tty", "gif", "webp_pipe")
_EPS = 1e-6
_MiB = 1024 * 1024


class MediaError(UserError):
    """A media file that cannot be used, with a one-line reason (it becomes an error row)."""


@dataclass(frozen=True)
class MediaInfo:
    """What the container declares, read without decoding."""

    path: str
    format: str
    size_bytes: int
    duration_s: float  # 0.0 when the container does not declare one
    video_codec: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    audio_codec: str | None = None
    sample_rate: int = 0
    channels: int = 0

    @property
    def has_video(self) -> bool:
        return self.video_codec is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


@dataclass
class DecodedMedia:
    """Decoded modalities: ``waveform`` float32 mono at 16 kHz, ``frames`` uint8 ``[T, H, W, 3]``."""

    waveform: np.ndarray | None
    frames: np.ndarray | None
    frame_rate: float
    duration_s: float


def probe(path: str) -> MediaInfo:
    """Read the container header: format, duration, streams. Raises :class:`MediaError` on unreadable files."""
    with _open(path) as container:
        return _describe(container, path)


def check_limits(info: MediaInfo, limits: MediaLimits) -> None:
    """Refuse files that would exhaust a worker, naming the config key that raises the limit."""
    if info.size_bytes > limits.max_file_mb * _MiB:
        raise MediaError(f"file is {info.size_bytes / _MiB:.0f} MiB, above the limit of "
                         f"{limits.max_file_mb:g} MiB (media.limits.max_file_mb)")
    if info.width > limits.max_width or info.height > limits.max_height:
        raise MediaError(f"declared resolution {info.width}x{info.height} is above the limit of "
                         f"{limits.max_width}x{limits.max_height} (media.limits.max_width/max_height)")
    if info.duration_s <= 0:
        raise MediaError(f"unknown or zero duration ({info.format} container); the file is probably truncated")
    if info.duration_s > limits.max_duration_s:
        raise MediaError(f"declared duration {info.duration_s:.0f} s is above the limit of "
                         f"{limits.max_duration_s:g} s (media.limits.max_duration_s)")


def decode(path: str, config: MediaConfig) -> DecodedMedia:
    """Decode in this process: audio to 16 kHz mono float32, video frames sampled at ``config.frame_rate``.

    Use :func:`decode_isolated` for untrusted files; this is the code it runs.
    """
    with _open(path) as container:
        info = _describe(container, path)
        check_limits(info, config.limits)
        audio, video = _recording_streams(container)
        if video is not None:
            video.codec_context.thread_type = "AUTO"
            video.codec_context.thread_count = config.decode_threads
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE) if audio else None
        origin = max(container.start_time / av.time_base, 0.0) if container.start_time is not None else 0.0
        sampler = FrameSampler(config.frame_rate, config.frame_size, origin) if video else None
        chunks: list[np.ndarray] = []
        position = 0.0
        try:
            for packet in container.demux(*(s for s in (audio, video) if s is not None)):
                for frame in packet.decode():
                    if frame.time is not None:
                        position = max(position, frame.time)
                    if packet.stream is audio:
                        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
                    else:
                        sampler.push(frame)
            if resampler is not None:
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.FFmpegError as exc:
            raise MediaError(f"decoding failed at {position - origin:.1f} s: {_ffmpeg_reason(exc)}") from None
        except (MemoryError, ValueError) as exc:
            raise MediaError(f"decoding failed at {position - origin:.1f} s: {type(exc).__name__}: {exc}") from None
    waveform = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else None
    frames = sampler.finish() if sampler else None
    decoded_s = max(len(waveform) / AUDIO_SAMPLE_RATE if waveform is not None else 0.0,
                    sampler.decoded_s if sampler else 0.0)
    if waveform is None and frames is None:
        raise MediaError("no audio or video could be decoded")
    if decoded_s < 0.9 * info.duration_s - 0.5:
        raise MediaError(f"truncated or corrupt: only {decoded_s:.1f} s of the declared "
                         f"{info.duration_s:.1f} s could be decoded")
    return DecodedMedia(waveform=waveform, frames=frames,
                        frame_rate=config.frame_rate if frames is not None else 0.0,
                        duration_s=min(decoded_s, info.duration_s))


class FrameSampler:
    """Keeps the frame on screen at each sampling instant ``origin + k / rate`` while frames stream past.

    Only the kept frames are converted (RGB, resized), so the cost beyond decoding is per sample, not per frame.
    """

    def __init__(self, rate: float, size: int, origin: float = 0.0):
        self.step, self.size, self.origin = 1.0 / rate, size, origin
        self.next_index = 0
        self.samples: list[np.ndarray] = []
        self._pending: av.VideoFrame | None = None
        self._converted: tuple[av.VideoFrame, np.ndarray] | None = None
        self._last_time: float | None = None
        self._frame_period = 0.0

    @property
    def decoded_s(self) -> float:
        if self._last_time is None:
            return 0.0
        return self._last_time - self.origin + self._frame_period

    def push(self, frame: av.VideoFrame) -> None:
        time = frame.time
        if time is None:  # no timestamps (rare, old AVI): assume a constant rate
            time = (self._last_time + (self._frame_period or 1 / 30)) if self._last_time is not None else 0.0
        if self._last_time is not None and time > self._last_time:
            self._frame_period = time - self._last_time
        # Every instant before this frame shows the previous frame (or this one if it is the first).
        while self._target() < time - _EPS:
            self._emit(self._pending if self._pending is not None else frame)
        self._pending, self._last_time = frame, time

    def finish(self) -> np.ndarray:
        """Emit the instants up to the last frame and return ``uint8 [T, size, size, 3]``."""
        if self._pending is not None:
            while self._target() <= self._last_time + _EPS:
                self._emit(self._pending)
        self._pending = self._converted = None
        if not self.samples:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        return np.stack(self.samples)

    def _target(self) -> float:
        return self.origin + self.next_index * self.step

    def _emit(self, frame: av.VideoFrame) -> None:
        """Append ``frame`` as the next sample, converting each frame once even when it fills several instants."""
        if self._converted is None or self._converted[0] is not frame:
            rgb = frame.to_ndarray(format="rgb24", width=self.size, height=self.size, interpolation="AREA")
            if frame.rotation:  # phone recordings: turn the picture the way a player would show it
                rgb = np.ascontiguousarray(np.rot90(rgb, k=round(frame.rotation / 90) % 4))
            self._converted = (frame, rgb)
        self.samples.append(self._converted[1])
        self.next_index += 1


def decode_isolated(path: str, config: MediaConfig) -> DecodedMedia:
    """:func:`decode` in a child process with ``config.limits.decode_timeout_s``.

    A crash (segfault, abort, out of memory) or a hang inside FFmpeg kills only the child and comes back as a
    one-line :class:`MediaError`; the caller carries on with the next file. Children are long-lived (one per
    concurrent caller) so a file costs no interpreter start; a crashed or stopped child is replaced.
    """
    decoder = _POOL.acquire()
    try:
        return decoder.decode(path, config)
    finally:
        _POOL.release(decoder)


def decoders_cpu_s() -> float:
    """CPU seconds the decoding children of this process have spent on files so far (for throughput accounting)."""
    return _POOL.cpu_s


def prestart_decoder() -> None:
    """Start one decoding child now (e.g. when a pipeline worker starts) instead of on the first file."""
    _POOL.release(_POOL.acquire())


class _DecoderChild:
    """One decoding child: requests as JSON lines on its stdin, answers as JSON lines, arrays as .npy files."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mllm_dr.data.media"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True, text=True)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def decode(self, path: str, config: MediaConfig) -> DecodedMedia:
        timeout = config.limits.decode_timeout_s
        with tempfile.TemporaryDirectory(prefix="mllm-dr-decode-") as workdir:
            request = {"path": path, "config": config.model_dump(mode="json"), "workdir": workdir}
            try:
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                raise MediaError(self._death()) from None
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            if not ready:
                self.stop()
                raise MediaError(f"decoding did not finish within {timeout:g} s "
                                 "(media.limits.decode_timeout_s); the decoder was stopped")
            line = self.process.stdout.readline()
            if not line:
                raise MediaError(self._death())
            result = json.loads(line)
            _POOL.add_cpu(result["cpu_s"])
            if result.get("error"):
                raise MediaError(result["error"])
            # Mapped, not read: the pages the child wrote are used in place (no second copy of ~100 MB for a
            # long interview); copy-on-write keeps the arrays writable, and the mapping outlives the file.
            arrays = {name: np.asarray(np.load(os.path.join(workdir, f"{name}.npy"), mmap_mode="c"))
                      if result[f"has_{name}"] else None for name in ("waveform", "frames")}
        return DecodedMedia(waveform=arrays["waveform"], frames=arrays["frames"],
                            frame_rate=result["frame_rate"], duration_s=result["duration_s"])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def _death(self) -> str:
        code = self.process.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the decoder crashed ({name}); the file is probably corrupt"
        return f"the decoder exited unexpectedly (exit code {code})"


class _DecoderPool:
    """Idle decoding children of this process, shared by its threads (a serving replica decodes concurrently)."""

    def __init__(self) -> None:
        self._idle: list[_DecoderChild] = []
        self._lock = threading.Lock()
        self.cpu_s = 0.0

    def add_cpu(self, seconds: float) -> None:
        with self._lock:
            self.cpu_s += seconds

    def acquire(self) -> _DecoderChild:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.alive:
                    return child
        return _DecoderChild()

    def release(self, child: _DecoderChild) -> None:
        if child.alive:
            with self._lock:
                self._idle.append(child)


_POOL = _DecoderPool()


def _serve() -> int:
    """The decoding child's loop: one request per line on stdin until EOF (the parent went away)."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    for line in sys.stdin:
        request = json.loads(line)
        started = time.process_time()
        try:
            decoded = decode(request["path"], MediaConfig.model_validate(request["config"]))
            result = {"frame_rate": decoded.frame_rate, "duration_s": decoded.duration_s}
            for name in ("waveform", "frames"):
                value = getattr(decoded, name)
                result[f"has_{name}"] = value is not None
                if value is not None:
                    np.save(os.path.join(request["workdir"], f"{name}.npy"), value)
        except MediaError as exc:
            result = {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - an unexpected failure is this file's problem; keep serving
            result = {"error": f"decoding failed: {type(exc).__name__}: {exc}"}
        result["cpu_s"] = time.process_time() - started
        protocol.write(json.dumps(result) + "\n")
        protocol.flush()
    return 0


def _open(path: str) -> av.container.InputContainer:
    try:
        status = os.stat(path)
    except OSError as exc:
        raise MediaError(f"cannot read media file: {exc.strerror or exc}") from None
    if stat.S_ISREG(status.st_mode) and status.st_size == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        return av.open(path, metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise MediaError(f"not a readable audio/video file: {_ffmpeg_reason(exc)}") from None


def _describe(container: av.container.InputContainer, path: str) -> MediaInfo:
    size = os.path.getsize(path)
    fmt = container.format.name
    if fmt in _NOT_RECORDINGS or fmt.endswith("_pipe"):
        raise MediaError(f"a still image or text ({fmt}), not an audio/video recording")
    audio, video = _recording_streams(container)
    if audio is None and video is None:
        raise MediaError(f"no audio or video stream ({fmt} container)")
    fields = {"path": path, "format": fmt, "size_bytes": size, "duration_s": _duration_s(container)}
    if video is not None:
        rate = video.average_rate or video.guessed_rate or video.base_rate
        fields.update(video_codec=video.codec_context.name, width=video.codec_context.width,
                      height=video.codec_context.height, fps=float(rate) if rate else 0.0)
    if audio is not None:
        fields.update(audio_codec=audio.codec_context.name, sample_rate=audio.codec_context.sample_rate,
                      channels=audio.codec_context.channels)
    return MediaInfo(**fields)


def _recording_streams(container: av.container.InputContainer) -> tuple[av.AudioStream | None,
                                                                        av.VideoStream | None]:
    """The first audio stream and the first real video stream (not an album-cover picture in an audio file)."""
    audio = container.streams.audio[0] if container.streams.audio else None
    video = next((s for s in container.streams.video if not s.disposition & Disposition.attached_pic), None)
    return audio, video


def _duration_s(container: av.container.InputContainer) -> float:
    """The declared duration in seconds; 0.0 when the container does not say."""
    if container.duration is not None:
        return container.duration / av.time_base
    durations = [float(s.duration * s.time_base) for s in container.streams
                 if s.duration is not None and s.time_base is not None]
    return max(durations, default=0.0)


def _ffmpeg_reason(exc: av.FFmpegError) -> str:
    """FFmpeg's reason without the file path (paths can name patients)."""
    return getattr(exc, "strerror", None) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(_serve())
