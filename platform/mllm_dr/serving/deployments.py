"""The two workers behind the ingress: a CPU preprocessor and a (GPU when available) batching scorer.

Neither raises for bad input: a bad interview comes back as an :class:`Outcome` with a 4xx status and a
reason, because Serve logs the message of every exception a replica raises, and a reason can quote the
input. The preprocessor runs the pipeline's own ``process_video`` (decode isolated in a child process, so
a crashing file costs a child, never the replica). The scorer batches interviews across requests with
``@serve.batch`` and runs each batch in a worker thread, so the replica keeps accepting the next batch and
answering health checks while the model works.

Serve serializes a deployment class when it is decorated, so every helper its methods use is defined above it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from ray import serve
from ray.serve.metrics import Histogram

from mllm_dr.data.preprocess import process_video, sha256_file
from mllm_dr.data.records import InterviewRecord
from mllm_dr.data.synthetic import write_recording
from mllm_dr.data.transcripts import PARTICIPANT, Turn
from mllm_dr.errors import UserError
from mllm_dr.serving.api import one_line
from mllm_dr.serving.config import ServingConfig
from mllm_dr.serving.security import local_video_path, private_tempdir
from mllm_dr.storage import resolve

logger = logging.getLogger("ray.serve")


@dataclass
class MediaJob:
    """One interview's media for the preprocessor: uploaded bytes or a URI (never both)."""

    assessment_id: str
    video: bytes | None = None
    video_suffix: str = ""
    video_uri: str | None = None


@dataclass
class Outcome:
    """A result, or the 4xx status and reason to answer with."""

    value: Any = None
    status: int = 200
    reason: str = ""
    model_ms: float = 0.0  # time in the model call that produced it (shared by a batch)

    @property
    def ok(self) -> bool:
        return self.status == 200


class _TooLarge(Exception):
    """A referenced video above the upload limit (413, like an upload)."""


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _write_private(path: Path, data: bytes) -> Path:
    with open(path, "wb", opener=_private_opener) as f:
        f.write(data)
    return path


def _probe_recording() -> bytes:
    """A one-second grey clip with a quiet tone: enough to run the decoder and both encoders."""
    with private_tempdir() as folder:
        path = folder / "probe.mp4"
        tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000)).astype(np.float32)
        write_recording(str(path), 1.0, video=lambda t: np.full((64, 64, 3), 128, np.uint8), fps=5, audio=tone,
                        audio_rate=16_000, width=64, height=64)
        return path.read_bytes()


def describe_bundle(bundle_dir: str, model: Any) -> dict[str, Any]:
    """What ``GET /v1/model`` shows: name and version from the bundle's training metadata when it has them,
    else the folder name and a digest of the multimodal weights (which change with every training run)."""
    from mllm_dr.model.bundle import MULTIMODAL_WEIGHTS, read_bundle_description

    description = read_bundle_description(bundle_dir)
    metadata = description.get("metadata") or {}
    version = metadata.get("version")
    if not version:
        version = f"sha256-{sha256_file(str(Path(bundle_dir) / MULTIMODAL_WEIGHTS))[:12]}"
    return {
        "name": str(metadata.get("name") or Path(bundle_dir).resolve().name),
        "version": str(version),
        "questionnaire": model.questionnaire.id,
        "language": metadata.get("language") or model.config.prompt.language or "en",
        "base_llm": model.base_llm_dir,
        "feature_dims": dict(model.feature_dims),
    }


def _probe_record() -> InterviewRecord:
    return InterviewRecord(interview_id="health-probe",
                           transcript=[Turn(0.0, 2.0, PARTICIPANT, "I have been sleeping well.")])


@serve.deployment(name="Preprocessor")
class Preprocessor:
    def __init__(self, config: ServingConfig):
        self.pipeline = config.pipeline_config()
        self.limits = config.limits
        self.period_s = config.preprocessor.health_check_period_s
        self._probe = _probe_recording()
        self._last_success = 0.0
        self._check_probe()  # warm-up: builds the encoders and proves decoding works before traffic arrives

    async def process(self, job: MediaJob) -> Outcome:
        return await asyncio.to_thread(self._process, job, self.limits.upload_tmp_dir)

    def _process(self, job: MediaJob, tmp_parent: str | None) -> Outcome:
        try:
            with private_tempdir(tmp_parent) as folder:
                record = process_video(str(self._materialise(job, folder)), None, self.pipeline)
        except UserError as exc:
            return Outcome(status=422, reason=one_line(exc))
        except _TooLarge as exc:
            return Outcome(status=413, reason=str(exc))
        self._last_success = time.monotonic()
        return Outcome(record)

    def _materialise(self, job: MediaJob, folder: Path) -> Path:
        """The video as a local file: the upload written into ``folder``, an s3:// object copied there, or an
        allowed local path as it is."""
        if job.video is not None:
            return _write_private(folder / f"interview{job.video_suffix}", job.video)
        assert job.video_uri is not None
        too_large = _TooLarge(f"the video exceeds the {self.limits.max_upload_mb:g} MiB limit")
        local = local_video_path(job.video_uri, self.limits.local_video_roots)
        if local is not None:
            if local.stat().st_size > self.limits.max_upload_bytes:
                raise too_large
            return local
        source = resolve(job.video_uri)
        if not source.exists():
            raise UserError(f"not found: {job.video_uri}")
        if source.size() > self.limits.max_upload_bytes:
            raise too_large
        target = folder / f"interview{PurePosixPath(source.path).suffix[:9]}"
        with source.open("rb") as src, open(target, "wb", opener=_private_opener) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return target

    async def check_health(self) -> None:
        """Decode and encode a one-second clip through ``process_video``, unless a request just did."""
        if time.monotonic() - self._last_success >= self.period_s:
            await asyncio.to_thread(self._check_probe)

    def _check_probe(self) -> None:
        outcome = self._process(MediaJob("health-probe", self._probe, ".mp4"), None)  # not in the uploads folder
        if not outcome.ok:
            raise RuntimeError(f"the preprocessing probe failed: {outcome.reason}")


class BatchStats:
    """How full the scorer's batches are: the evidence that batching happens (and a tuning aid)."""

    def __init__(self) -> None:
        self.sizes: Counter[int] = Counter()
        self.histogram = Histogram("mllm_dr_scorer_batch_size", description="interviews per scorer model call",
                                   boundaries=[1, 2, 4, 8, 16, 32, 64])

    def record(self, size: int) -> None:
        self.sizes[size] += 1
        self.histogram.observe(size)

    def as_dict(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        interviews = sum(size * count for size, count in self.sizes.items())
        return {
            "batches": batches,
            "interviews": interviews,
            "max_batch_size_seen": max(self.sizes, default=0),
            "mean_batch_size": round(interviews / batches, 3) if batches else 0.0,
            "histogram": {str(size): count for size, count in sorted(self.sizes.items())},
        }


@serve.deployment(name="Scorer")
class Scorer:
    def __init__(self, config: ServingConfig):
        import torch

        from mllm_dr.model.bundle import load_bundle

        options = config.scorer
        device = "cuda" if options.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.model = load_bundle(config.model.bundle, base_llm_dir=config.model.base_llm, device=device,
                                 dtype=options.dtype)
        self.description = describe_bundle(config.model.bundle, self.model)
        self.options = options
        self.stats = BatchStats()
        self._lock = threading.Lock()  # one model call at a time: batches and health probes take turns
        self._busy_since: float | None = None
        self._last_success = 0.0
        self._stuck_after_s = config.limits.request_timeout_s
        self.score_batch.set_max_batch_size(options.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(options.batch_wait_timeout_s)

    def describe(self) -> dict[str, Any]:
        return self.description

    async def score(self, record: InterviewRecord) -> Outcome:
        mismatch = self._feature_mismatch(record)
        if mismatch:
            logger.error("assessment %s: %s", record.interview_id, mismatch)
            return Outcome(status=500, reason=f"server misconfigured: {mismatch}")
        return await self.score_batch(record)

    def _feature_mismatch(self, record: InterviewRecord) -> str | None:
        """The serving preprocessing must make the features the model was trained on."""
        for modality, expected in self.model.feature_dims.items():
            features = getattr(record, modality)
            if features is not None and features.shape[-1] != expected:
                return (f"the preprocessor makes {features.shape[-1]}-dim {modality} features, the model reads "
                        f"{expected}-dim ones (preprocessor.pipeline must match the training store's)")
        return None

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def score_batch(self, records: list[InterviewRecord]) -> list[Outcome]:
        self.stats.record(len(records))
        return await asyncio.to_thread(self._score_isolating_failures, records)

    def _score_isolating_failures(self, records: list[InterviewRecord]) -> list[Outcome]:
        """Score the batch; if that fails, score one by one so one bad interview cannot fail its neighbours."""
        started = time.perf_counter()
        try:
            scores = self._score(records)
            model_ms = round((time.perf_counter() - started) * 1000, 1)
            return [Outcome(score, model_ms=model_ms) for score in scores]
        except Exception as exc:  # noqa: BLE001 - reported per request below, without the message
            if len(records) == 1:
                logger.error("scoring failed for assessment %s: %s", records[0].interview_id, type(exc).__name__)
                return [Outcome(status=500, reason=f"scoring failed ({type(exc).__name__})")]
        return [self._score_isolating_failures([record])[0] for record in records]

    def _score(self, records: list[InterviewRecord]) -> list[dict[str, Any]]:
        with self._model_call():
            scores = self.model.score(records, generate=self.options.generate,
                                      max_new_tokens=self.options.max_new_tokens)
        return [s.to_dict() for s in scores]

    @contextmanager
    def _model_call(self) -> Iterator[None]:
        with self._lock:
            self._busy_since = time.monotonic()
            try:
                yield
                self._last_success = time.monotonic()
            finally:
                self._busy_since = None

    def batch_stats(self) -> dict[str, Any]:
        return self.stats.as_dict()

    async def check_health(self) -> None:
        """Prove the model still scores: a tiny regression-only call, unless a batch just succeeded or is
        under way (and not stuck past the request timeout)."""
        now = time.monotonic()
        busy_since = self._busy_since
        if busy_since is not None:
            if now - busy_since > self._stuck_after_s:
                raise RuntimeError(f"a model call has been running for {now - busy_since:.0f} s")
            return
        if now - self._last_success < self.options.health_check_period_s:
            return
        await asyncio.to_thread(self._probe)

    def _probe(self) -> None:
        with self._model_call():
            self.model.score([_probe_record()], generate=False)
