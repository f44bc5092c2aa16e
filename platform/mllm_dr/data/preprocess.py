"""``mllm-dr preprocess``: interviews from one or many sources -> the Parquet feature store, with Ray Data.

The pipeline, per run::

    discover (driver)  every --source through its InputFormat; splits assigned over all sites at once
    load     (actors)  hash the main file, skip it if the store already has it, else decode + parse
                       (decoding runs in a child process, see media.decode_isolated)
    encode   (actors)  audio / visual encoders (on GPU with encoders.num_gpus), build InterviewRecords
                       and write them as Parquet part files <store>/records/<run>-<n>.parquet
    finish   (driver)  drop rows superseded by this run, write <store>/manifest.json

Every input ends as exactly one row, ``ok`` or ``error`` with a one-line reason: ok + error = inputs.
:func:`process_video` runs the same load -> encode -> record code on one file without Ray (for serving).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

import mllm_dr
from mllm_dr.config import PreprocessConfig, load_config
from mllm_dr.data.corpora import get_format
from mllm_dr.data.media import MediaError, decoders_cpu_s, prestart_decoder
from mllm_dr.data.records import (
    STATUS_ERROR,
    STATUS_OK,
    InterviewRecord,
    records_dir,
    table_to_records,
    write_records,
)
from mllm_dr.data.sources import InterviewInput, RawInterview, parse_source
from mllm_dr.data.splits import assign_splits
from mllm_dr.data.transcripts import Turn
from mllm_dr.errors import UserError
from mllm_dr.ray_runtime import ray_session
from mllm_dr.storage import Location, resolve

if TYPE_CHECKING:
    from mllm_dr.data.features import AudioEncoder, VisualEncoder

MANIFEST = "manifest.json"
Identity = tuple[str, str]  # (site/interview_id, source_uri): one input's rows across runs
STATUS_SKIPPED = "skipped"  # in the run's summary only: already in the store with the same content hash
_HASH_BLOCK = 1 << 22


# --- one interview: load -> encode -> record (shared by the Ray stages and process_video) ---------------


@dataclass
class Loaded:
    """The load stage's result for one input: raw modalities, or the reason there are none."""

    item: InterviewInput
    sha256: str = ""
    raw: RawInterview | None = None
    status: str = STATUS_OK
    error: str | None = None
    cpu_s: float = 0.0


def load_interview(item: InterviewInput, config: PreprocessConfig, done: dict[Identity, str] | None = None,
                   overwrite: bool = False) -> Loaded:
    """Hash the main file, skip it when the store already has it with that hash (``done``), else decode it.

    Never raises for bad input: the reason goes into ``Loaded.error``.
    """
    clock = _CpuClock()
    if item.problem:
        return Loaded(item, status=STATUS_ERROR, error=item.problem)
    sha256 = ""
    try:
        with _local_main_file(item, config) as (local_item, sha256):
            if not overwrite and done is not None and done.get((item.key, item.source_uri)) == sha256:
                return Loaded(item, sha256, status=STATUS_SKIPPED, cpu_s=clock.elapsed())
            raw = get_format(item.format).load(local_item, config)
        return Loaded(item, sha256, raw=raw, cpu_s=clock.elapsed())
    except UserError as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug or an odd file must cost one row, not the run
        reason = f"{type(exc).__name__}: {exc}"
    return Loaded(item, sha256, status=STATUS_ERROR, error=reason, cpu_s=clock.elapsed())


class FeatureEncoders:
    """The configured encoders, built on first use (a corpus with released visual features never builds a CNN)."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self._audio: AudioEncoder | None = None
        self._visual: VisualEncoder | None = None

    @property
    def audio(self) -> AudioEncoder:
        if self._audio is None:
            from mllm_dr.data.features import build_audio_encoder  # torch: imported where encoding happens

            self._audio = build_audio_encoder(self.config.encoders.audio)
        return self._audio

    @property
    def visual(self) -> VisualEncoder:
        if self._visual is None:
            from mllm_dr.data.features import build_visual_encoder

            self._visual = build_visual_encoder(self.config.encoders.visual, frame_rate=self.config.media.frame_rate)
        return self._visual

    def record(self, loaded: Loaded) -> InterviewRecord:
        """The feature-store row of one loaded interview (an error row when loading or encoding failed)."""
        item = loaded.item
        fields = {"site": item.site, "split": item.split, "language": item.language,
                  "questionnaire": item.questionnaire, "item_scores": item.item_scores,
                  "total_score": item.total_score, "source_uri": item.source_uri, "source_sha256": loaded.sha256}
        if loaded.status == STATUS_ERROR or loaded.raw is None:
            return InterviewRecord.failed(item.interview_id, loaded.error or "not loaded", **fields)
        raw = loaded.raw
        try:
            audio = video = None
            audio_rate = video_rate = 0.0
            encoders: dict[str, Any] = {}
            if raw.waveform is not None and len(raw.waveform):
                audio, audio_rate = self.audio.encode(raw.waveform), self.audio.rate
                encoders["audio"] = self.audio.describe()
            if raw.visual_features is not None and len(raw.visual_features):
                video, video_rate = np.asarray(raw.visual_features, np.float16), raw.visual_features_rate
                encoders["video"] = {"name": raw.visual_features_name or "precomputed", "kind": "precomputed",
                                     "dim": int(video.shape[1]), "rate": video_rate}
            elif raw.frames is not None and len(raw.frames):
                video, video_rate = self.visual.encode(raw.frames), raw.frame_rate
                encoders["video"] = self.visual.describe()
        except UserError as exc:
            return InterviewRecord.failed(item.interview_id, str(exc), **fields)
        except Exception as exc:  # noqa: BLE001 - one interview's failure is one error row
            return InterviewRecord.failed(item.interview_id, f"encoding failed: {type(exc).__name__}: {exc}",
                                          **fields)
        if audio is None and video is None and not raw.transcript:
            return InterviewRecord.failed(item.interview_id, "no audio, video or transcript content", **fields)
        return InterviewRecord(interview_id=item.interview_id, transcript=list(raw.transcript), audio=audio,
                               audio_rate=audio_rate, video=video, video_rate=video_rate,
                               duration_s=float(raw.duration_s), encoders=encoders, **fields)


def process_video(video_path: str, transcript_path: str | None, config: PreprocessConfig) -> InterviewRecord:
    """One recording (local path or URI) -> an ``ok`` InterviewRecord, by the pipeline's own code, without Ray.

    Bad input (unreadable media, a malformed transcript) raises :class:`UserError` with the row's one-line reason.
    """
    location = resolve(video_path)
    stem = os.path.splitext(os.path.basename(location.path))[0] or "interview"
    files = {"media": location.uri}
    if transcript_path:
        files["transcript"] = resolve(transcript_path).uri
    item = InterviewInput(interview_id=stem, site="default", format="videos", source_uri=location.uri, files=files)
    loaded = load_interview(item, config)
    record = _cached_encoders(config.model_dump_json()).record(loaded)
    if not record.ok:
        raise UserError(record.error or "the recording could not be processed")
    return record


@functools.lru_cache(maxsize=2)
def _cached_encoders(config_json: str) -> FeatureEncoders:
    """Encoders are costly to build (a CNN, an HF model): a serving replica builds them once per config."""
    return FeatureEncoders(PreprocessConfig.model_validate_json(config_json))


# --- Ray Data stages -------------------------------------------------------------------------------------


class LoadStage:
    """Actor: decode one input per call (the decoding itself runs in a child process)."""

    def __init__(self, config_json: str, done: dict[Identity, str], overwrite: bool):
        self.config = PreprocessConfig.model_validate_json(config_json)
        self.done, self.overwrite = done, overwrite
        prestart_decoder()  # its interpreter start belongs to the worker's start, not to the first file

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        rows = [_loaded_to_row(load_interview(_input_from_json(text), self.config, self.done, self.overwrite))
                for text in batch["input"]]
        return {name: _column([row[name] for row in rows]) for name in rows[0]}


class EncodeStage:
    """Actor: encode, build records, write them as one Parquet part file per call; return a small summary."""

    def __init__(self, config_json: str, store: Location, run_id: str):
        self.encoders = FeatureEncoders(PreprocessConfig.model_validate_json(config_json))
        self.store, self.run_id = store, run_id
        self.actor_tag = uuid.uuid4().hex[:8]
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        clock = _CpuClock()
        loaded = [_row_to_loaded(row) for row in _batch_rows(batch)]
        records = [self.encoders.record(x) for x in loaded if x.status != STATUS_SKIPPED]
        part = ""
        if records:
            self.calls += 1
            part = write_records(self.store, records, f"{self.run_id}-{self.actor_tag}-{self.calls:05d}").path
        by_key = {r.key: r for r in records}
        encode_cpu = clock.elapsed() / max(len(records), 1)
        summary = []
        for x in loaded:
            record = by_key.get(x.item.key)
            summary.append({
                "key": x.item.key, "site": x.item.site, "interview_id": x.item.interview_id,
                "source_uri": x.item.source_uri,
                "status": record.status if record else STATUS_SKIPPED, "error": (record.error if record else "") or "",
                "duration_s": float(record.duration_s if record else 0.0), "part": part if record else "",
                "load_cpu_s": x.cpu_s, "encode_cpu_s": encode_cpu if record else 0.0,
                "encoders": json.dumps(record.encoders if record else {}, sort_keys=True)})
        return {name: _column([row[name] for row in summary]) for name in summary[0]}


def _loaded_to_row(loaded: Loaded) -> dict[str, Any]:
    """A Loaded as Ray Data columns: tensors are always present (empty when absent) so every block types alike."""
    raw = loaded.raw or RawInterview(duration_s=0.0)
    size = 0 if raw.frames is None else raw.frames.shape[1]
    return {
        "input": json.dumps(dataclasses.asdict(loaded.item)), "sha256": loaded.sha256, "status": loaded.status,
        "error": loaded.error or "", "cpu_s": loaded.cpu_s, "has_raw": loaded.raw is not None,
        "duration_s": float(raw.duration_s),
        "transcript": json.dumps([dataclasses.asdict(t) for t in raw.transcript]),
        "has_waveform": raw.waveform is not None,
        "waveform": np.zeros(0, np.float32) if raw.waveform is None else np.asarray(raw.waveform, np.float32),
        "has_frames": raw.frames is not None, "frame_rate": float(raw.frame_rate),
        "frames": np.zeros((0, size, size, 3), np.uint8) if raw.frames is None else raw.frames,
        "has_visual_features": raw.visual_features is not None,
        "visual_features": (np.zeros((0, 0), np.float32) if raw.visual_features is None
                            else np.asarray(raw.visual_features, np.float32)),
        "visual_features_rate": float(raw.visual_features_rate), "visual_features_name": raw.visual_features_name,
    }


def _row_to_loaded(row: dict[str, Any]) -> Loaded:
    raw = None
    if row["has_raw"]:
        raw = RawInterview(
            duration_s=float(row["duration_s"]), transcript=[Turn(**t) for t in json.loads(row["transcript"])],
            waveform=np.asarray(row["waveform"], np.float32) if row["has_waveform"] else None,
            frames=np.asarray(row["frames"], np.uint8) if row["has_frames"] else None,
            frame_rate=float(row["frame_rate"]),
            visual_features=np.asarray(row["visual_features"], np.float32) if row["has_visual_features"] else None,
            visual_features_rate=float(row["visual_features_rate"]),
            visual_features_name=str(row["visual_features_name"]))
    return Loaded(_input_from_json(row["input"]), str(row["sha256"]), raw, str(row["status"]),
                  str(row["error"]) or None, float(row["cpu_s"]))


def _input_from_json(text: str) -> InterviewInput:
    return InterviewInput(**json.loads(text))


def _batch_rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    size = len(next(iter(batch.values())))
    for index in range(size):
        yield {name: values[index] for name, values in batch.items()}


def _column(values: list[Any]) -> Any:
    """A list of same-shaped arrays stacks; anything else stays a list (Ray Data takes both)."""
    if values and all(isinstance(v, np.ndarray) for v in values) and len({v.shape for v in values}) == 1:
        return np.stack(values)
    return values


# --- the feature store: what is already there, pruning, manifest -----------------------------------------


@dataclass
class StoredRow:
    key: str
    site: str
    source_uri: str
    status: str
    sha256: str
    part: str
    encoders: str

    @property
    def identity(self) -> Identity:
        return self.key, self.source_uri

    @property
    def run(self) -> str:
        """The run that wrote it: part files are named ``<run>-<worker>-<n>.parquet``, runs sort by time."""
        return os.path.basename(self.part).rsplit("-", 2)[0]


def scan_store(store: Location) -> list[StoredRow]:
    """The light columns of every row in the store, in part-file order (part names sort by run time)."""
    folder = records_dir(store)
    if not folder.exists():
        return []
    rows = []
    for part in folder.list_files():
        if not part.path.endswith(".parquet"):
            continue
        with part.open("rb") as f:
            table = pq.read_table(f, columns=["interview_id", "site", "source_uri", "status", "source_sha256",
                                              "encoders"])
        for values in table.to_pylist():
            rows.append(StoredRow(f"{values['site']}/{values['interview_id']}", values["site"], values["source_uri"],
                                  values["status"], values["source_sha256"] or "", part.path,
                                  values["encoders"] or "{}"))
    return rows


def superseded(existing: list[StoredRow], summaries: list[dict[str, Any]]) -> dict[str, set[Identity]]:
    """Rows of earlier runs to drop (part path -> identities) once this run's rows are written.

    A row goes when this run wrote a row for the same input (same interview and source file), when this run
    processed its interview successfully from another file (it moved), or when a later run already replaced
    it (an interrupted run can leave both). Rows of one run never replace each other: two inputs with the same
    id (one of them an error row saying so) are both kept.
    """
    written = {(row["key"], row["source_uri"]) for row in summaries if row["status"] != STATUS_SKIPPED}
    ok_keys = {row["key"] for row in summaries if row["status"] == STATUS_OK}
    latest_run: dict[Identity, str] = {}
    for row in existing:
        latest_run[row.identity] = max(latest_run.get(row.identity, ""), row.run)
    drop: dict[str, set[Identity]] = defaultdict(set)
    for row in existing:
        if row.identity in written or row.key in ok_keys or row.run < latest_run[row.identity]:
            drop[row.part].add(row.identity)
    return drop


def prune_store(store: Location, drop: dict[str, set[Identity]]) -> None:
    """Remove rows from the part files named in ``drop`` (part path -> identities), deleting emptied parts."""
    for path, identities in drop.items():
        part = Location(store.fs, path, store.protocol)
        with part.open("rb") as f:
            kept = [r for r in table_to_records(pq.read_table(f)) if (r.key, r.source_uri) not in identities]
        if kept:
            write_records(store, kept, os.path.splitext(os.path.basename(path))[0])
        else:
            store.fs.rm(path)


def read_manifest(store: Location) -> dict[str, Any] | None:
    target = store.join(MANIFEST)
    if not target.exists():
        return None
    try:
        return json.loads(target.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{target.uri} is not valid JSON; remove it or write to a new --out") from None


def code_version() -> dict[str, str | None]:
    """The package version and, when running from a git checkout, its commit."""
    commit = None
    try:
        result = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(mllm_dr.__file__)), "rev-parse",
                                 "HEAD"], check=False, capture_output=True, text=True, timeout=10)
        commit = result.stdout.strip() or None if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"mllm_dr": mllm_dr.__version__, "git_commit": commit}


def _store_encoders(rows: list[StoredRow]) -> dict[str, Any]:
    """Each modality's encoder description, as the ok rows of the store record it."""
    found: dict[str, Any] = {}
    for row in rows:
        if row.status == STATUS_OK:
            for modality, description in json.loads(row.encoders).items():
                found.setdefault(modality, description)
    return found


def _counts(rows: list[StoredRow]) -> dict[str, Any]:
    by_site: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        by_site[row.site][row.status] += 1
    total = Counter()
    for counter in by_site.values():
        total.update(counter)
    return {"total": _status_counts(total),
            "by_site": {site: _status_counts(c) for site, c in sorted(by_site.items())}}


def _status_counts(counter: Counter) -> dict[str, int]:
    return {STATUS_OK: counter[STATUS_OK], STATUS_ERROR: counter[STATUS_ERROR], "rows": sum(counter.values())}


# --- the run ---------------------------------------------------------------------------------------------


@dataclass
class PreprocessSummary:
    store_uri: str
    inputs: int
    ok: int = 0
    error: int = 0
    skipped: int = 0
    seconds: float = 0.0
    interview_seconds: float = 0.0  # of the interviews processed ok in this run
    load_cpu_s: float = 0.0
    encode_cpu_s: float = 0.0
    by_site: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (site/interview_id, reason)

    @property
    def interview_hours_per_hour(self) -> float:
        return self.interview_seconds / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        skipped = f" / {self.skipped} already in the store" if self.skipped else ""
        return (f"{self.ok} ok / {self.error} error{skipped} of {self.inputs} inputs in {self.seconds:.1f} s; "
                f"{self.interview_seconds / 3600:.2f} interview-hours processed, "
                f"{self.interview_hours_per_hour:.1f} interview-hours per hour -> {self.store_uri}")


def discover_inputs(sources: list[str], config: PreprocessConfig) -> list[InterviewInput]:
    """Every input of every source, splits assigned across sites; a source with no inputs is a user error."""
    specs = [parse_source(text) for text in sources]
    if not specs:
        raise UserError("no --source given (e.g. --source /data/videos or --source site_a=edaic:s3://bucket/edaic)")
    inputs: list[InterviewInput] = []
    for spec in specs:
        root = resolve(spec.uri)
        found = get_format(spec.format).discover(root, spec.site, config)
        if not found:
            raise UserError(f"no interviews found in {root.uri} (format {spec.format!r}"
                            f"{', looking for audio/video files' if spec.format == 'videos' else ''})")
        inputs.extend(found)
    return assign_splits(inputs, config)


def run_preprocess(sources: list[str], out_uri: str, config: PreprocessConfig, overwrite: bool = False,
                   progress: bool = True) -> PreprocessSummary:
    """Process every interview of ``sources`` (``[SITE=][FORMAT:]URI``) into the feature store at ``out_uri``."""
    started = time.perf_counter()
    store = resolve(out_uri)
    inputs = discover_inputs([*sources, *config.sites], config)
    _check_writable(store)
    manifest = read_manifest(store)
    settings = config.feature_settings()
    existing = scan_store(store)
    if existing and manifest and manifest.get("feature_settings") != settings:
        if not overwrite:
            raise UserError(f"{store.uri} was built with other feature settings (media frame rate/size, encoders "
                            "or visual stream); re-run with --overwrite to rebuild it, or write to a new --out")
        _remove_all(store, existing)
        existing = []
    done = {row.identity: row.sha256 for row in existing if row.status == STATUS_OK}  # later parts win

    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    summaries = _run_ray_pipeline(inputs, store, config, done, overwrite, run_id, progress)

    prune_store(store, superseded(existing, summaries))

    summary = PreprocessSummary(store_uri=store.uri, inputs=len(inputs), seconds=time.perf_counter() - started)
    site_counts: dict[str, Counter] = defaultdict(Counter)
    for row in summaries:
        site_counts[row["site"]][row["status"]] += 1
        if row["status"] == STATUS_OK:
            summary.ok += 1
            summary.interview_seconds += row["duration_s"]
        elif row["status"] == STATUS_ERROR:
            summary.error += 1
            summary.errors.append((row["key"], row["error"]))
        else:
            summary.skipped += 1
        summary.load_cpu_s += row["load_cpu_s"]
        summary.encode_cpu_s += row["encode_cpu_s"]
    summary.by_site = {site: dict(c) for site, c in sorted(site_counts.items())}
    if summary.ok + summary.error + summary.skipped != len(inputs):
        raise RuntimeError(f"pipeline lost inputs: {len(inputs)} in, {len(summaries)} out")
    _write_manifest(store, config, sources, summary, manifest)
    return summary


def _run_ray_pipeline(inputs: list[InterviewInput], store: Location, config: PreprocessConfig,
                      done: dict[Identity, str], overwrite: bool, run_id: str, progress: bool) -> list[dict[str, Any]]:
    import ray

    with ray_session():
        ray.data.DataContext.get_current().enable_progress_bars = progress  # Ray's per-stage interview counts
        encoder_workers = config.encoders.workers
        loaders = config.decode_workers or max(1, int(ray.cluster_resources().get("CPU", 1)) - encoder_workers)
        config_json = config.model_dump_json()
        items = [{"input": json.dumps(dataclasses.asdict(item))} for item in inputs]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        dataset = dataset.map_batches(
            LoadStage, fn_constructor_kwargs={"config_json": config_json, "done": done, "overwrite": overwrite},
            compute=ray.data.ActorPoolStrategy(size=loaders), batch_size=1, batch_format="numpy", num_cpus=1)
        gpu_args = {"num_gpus": config.encoders.num_gpus} if config.encoders.num_gpus else {}
        dataset = dataset.map_batches(
            EncodeStage, fn_constructor_kwargs={"config_json": config_json, "store": store, "run_id": run_id},
            compute=ray.data.ActorPoolStrategy(size=encoder_workers), batch_size=1, batch_format="numpy",
            num_cpus=1, **gpu_args)
        return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
                for row in dataset.iter_rows()]


def _check_writable(store: Location) -> None:
    """Fail before any work when the store cannot be written (missing bucket, no permission)."""
    probe = store.join(f".write-test-{uuid.uuid4().hex[:8]}")
    probe.write_text("")
    probe.fs.rm(probe.path)


def _remove_all(store: Location, rows: list[StoredRow]) -> None:
    for part in sorted({row.part for row in rows}):
        store.fs.rm(part)


def _write_manifest(store: Location, config: PreprocessConfig, sources: list[str], summary: PreprocessSummary,
                    previous: dict[str, Any] | None) -> None:
    rows = scan_store(store)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = {
        "format_version": 1,
        "created": (previous or {}).get("created", now),
        "updated": now,
        "code_version": code_version(),
        "config": config.model_dump(mode="json"),
        "feature_settings": config.feature_settings(),
        "sources": [*sources, *config.sites],
        "encoders": _store_encoders(rows),
        "counts": _counts(rows),
        "last_run": {"inputs": summary.inputs, "ok": summary.ok, "error": summary.error, "skipped": summary.skipped,
                     "seconds": round(summary.seconds, 3), "interview_seconds": round(summary.interview_seconds, 3),
                     "by_site": summary.by_site},
    }
    store.join(MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _local_main_file(item: InterviewInput, config: PreprocessConfig) -> Iterator[tuple[InterviewInput, str]]:
    """The input with its main file on local disk (one download for remote files) and that file's sha256.

    The size limit is checked before anything is downloaded.
    """
    location = resolve(item.source_uri)
    limit = config.media.limits.max_file_mb
    size = location.size()
    if size > limit * 1024 * 1024:
        raise MediaError(f"file is {size / 1024 / 1024:.0f} MiB, above the limit of {limit:g} MiB "
                         "(media.limits.max_file_mb)")
    with location.local_copy() as path:
        local_uri = path if location.protocol != "file" else location.uri
        files = {role: (local_uri if uri == item.source_uri else uri) for role, uri in item.files.items()}
        yield dataclasses.replace(item, source_uri=local_uri, files=files), sha256_file(path)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class _CpuClock:
    """CPU seconds of this process, its finished children and its decoding children since creation."""

    def __init__(self) -> None:
        self.start = self._now()

    @staticmethod
    def _now() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime + decoders_cpu_s()

    def elapsed(self) -> float:
        return self._now() - self.start


def main(args: argparse.Namespace) -> int:
    config = load_config(PreprocessConfig, args.config, args.set)
    summary = run_preprocess(args.source, args.out, config, overwrite=args.overwrite)
    for key, reason in summary.errors[:20]:
        print(f"error row {key}: {reason}", file=sys.stderr)
    if len(summary.errors) > 20:
        print(f"... and {len(summary.errors) - 20} more error rows (see the store's error column)", file=sys.stderr)
    print(summary.line())
    return 0
