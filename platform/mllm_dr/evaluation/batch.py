"""``mllm-dr score``: offline batch scoring of a whole feature store with Ray Data.

``read_parquet(store) -> map_batches(ScorerActor, ActorPoolStrategy)``: each actor loads the bundle once (on a
GPU when the cluster has them) and turns store rows into prediction rows (:mod:`.predictions`: one row per
item with its rationale; store error rows and interviews that fail at inference become error rows). The
driver streams the results into Parquet part files under ``--out`` as they arrive, each written whole (a
hidden temporary file renamed into place locally; a single object upload on S3), so an interrupted run
loses at most one unflushed buffer. Rerunning the same command skips every interview that already has rows
in ``--out`` (delete its part files to score it again).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mllm_dr.data.records import InterviewRecord, read_records, records_dir, table_to_records
from mllm_dr.errors import UserError
from mllm_dr.evaluation.predictions import rows_to_table, score_records
from mllm_dr.ray_runtime import ray_session
from mllm_dr.storage import Location, resolve

KEY_COLUMNS = ("site", "interview_id")
_USER_ERROR_LINE = re.compile(r"^mllm_dr\.[\w.]*Error: (.+)$", re.MULTILINE)
PART_PREFIX = "part-"


@dataclass(frozen=True)
class ScoreSummary:
    interviews: int  # scored by this run, error rows included
    errors: int  # of which error rows
    items: int  # item scores produced
    skipped: int  # already in the output before this run
    seconds: float

    @property
    def interviews_per_s(self) -> float:
        return self.interviews / self.seconds if self.seconds > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


class ScorerActor:
    """One model replica: loaded once when the actor starts, then called on batches of store rows."""

    def __init__(self, model_dir: str, base_llm_dir: str | None, device: str, generate: bool,
                 max_new_tokens: int | None) -> None:
        from mllm_dr.model.bundle import load_bundle

        self.model = load_bundle(model_dir, base_llm_dir=base_llm_dir, device=device)
        self.generate = generate
        self.score_kwargs = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        records = [self._check_questionnaire(r) for r in table_to_records(batch)]
        return rows_to_table(score_records(self.model, records, generate=self.generate, **self.score_kwargs))

    def _check_questionnaire(self, record: InterviewRecord) -> InterviewRecord:
        expected = self.model.questionnaire.id
        if not record.ok or record.questionnaire == expected:
            return record
        return dataclasses.replace(record, status="error", error=(
            f"questionnaire {record.questionnaire} does not match the model's {expected}"))


def interview_keys(table: pa.Table) -> pa.Array:
    """``site/interview_id`` per row: interview ids are only unique within their site."""
    return pc.binary_join_element_wise(table["site"], table["interview_id"], "/")


def drop_scored(batch: pa.Table, scored: Sequence[str]) -> pa.Table:
    """Rows of ``batch`` whose interview is not in ``scored`` (the resume filter, before any scoring)."""
    return batch.filter(pc.invert(pc.is_in(interview_keys(batch), value_set=pa.array(scored, pa.string()))))


def scored_keys(out: Location) -> set[str]:
    """Interviews that already have rows in ``out``."""
    if not out.exists():
        return set()
    keys: set[str] = set()
    for part in out.list_files(recursive=False):
        if part.path.endswith(".parquet"):
            keys.update(interview_keys(pq.read_table(part.path, filesystem=out.fs, columns=list(KEY_COLUMNS)))
                        .to_pylist())
    return keys


def write_part(out: Location, table: pa.Table) -> Location:
    """Write one whole part file: no reader (or resumed run) ever sees half of it."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    name = f"{PART_PREFIX}{uuid.uuid4().hex}.parquet"
    target = out.join(name)
    if out.protocol != "file":
        target.write_bytes(buffer.getvalue())  # an S3 object appears only once its upload completes
        return target
    temporary = out.join(f".{name}.tmp")
    temporary.write_bytes(buffer.getvalue())
    out.fs.mv(temporary.path, target.path)
    return target


def run_score(model_dir: str, store_uri: str, out_uri: str, *, base_llm_dir: str | None = None, workers: int = 1,
              batch_size: int = 4, gpus_per_worker: float | None = None, generate: bool = True,
              max_new_tokens: int | None = None, flush_every: int = 64) -> ScoreSummary:
    """Score every interview of the store not yet in ``out``; connects to (or starts) Ray as needed."""
    import ray
    import ray.data

    from mllm_dr.model.bundle import read_bundle_description

    if workers < 1 or batch_size < 1:
        raise UserError("--workers and --batch-size must be at least 1")
    read_bundle_description(model_dir)  # a clear error here, not in every actor
    store, out = resolve(store_uri), resolve(out_uri)
    stored = {f"{r.site}/{r.interview_id}" for r in read_records(store, columns=KEY_COLUMNS)}
    done = scored_keys(out) & stored
    todo = len(stored) - len(done)
    if not todo:
        print(f"nothing to score: all {len(stored)} interviews of {store.uri} are already in {out.uri}")
        return ScoreSummary(0, 0, 0, len(done), 0.0)

    try:
        with ray_session():
            gpus = gpus_per_worker if gpus_per_worker is not None else (
                1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0)
            dataset = ray.data.read_parquet(records_dir(store).uri, filesystem=store.arrow_filesystem())
            if done:
                dataset = dataset.map_batches(drop_scored, fn_kwargs={"scored": sorted(done)},
                                              batch_format="pyarrow")
            dataset = dataset.map_batches(
                ScorerActor,
                fn_constructor_kwargs={"model_dir": str(model_dir), "base_llm_dir": base_llm_dir,
                                       "device": "cuda" if gpus > 0 else "cpu", "generate": generate,
                                       "max_new_tokens": max_new_tokens},
                compute=ray.data.ActorPoolStrategy(size=workers), num_gpus=gpus, batch_size=batch_size,
                batch_format="pyarrow")
            return _stream_to_parquet(dataset, out, flush_every, len(done))
    except ray.exceptions.RayError as exc:
        # A UserError inside an actor (bundle and base LLM that do not fit, ...) reaches us only as text.
        found = _USER_ERROR_LINE.search(str(exc))
        if found:
            raise UserError(f"scoring worker: {found.group(1)}") from None
        raise


def _stream_to_parquet(dataset: Any, out: Location, flush_every: int, skipped: int) -> ScoreSummary:
    """Pull prediction blocks as the actors produce them; one part file per ``flush_every`` interviews."""
    started = time.perf_counter()
    pending: list[pa.Table] = []
    pending_interviews = interviews = errors = items = 0
    for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if not table.num_rows:
            continue
        n_interviews = len(set(interview_keys(table).to_pylist()))  # an actor call returns whole interviews
        n_items = int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)
        interviews, items, errors = interviews + n_interviews, items + n_items, errors + table.num_rows - n_items
        pending.append(table)
        pending_interviews += n_interviews
        if pending_interviews >= flush_every:
            write_part(out, pa.concat_tables(pending))
            pending, pending_interviews = [], 0
    if pending:
        write_part(out, pa.concat_tables(pending))
    return ScoreSummary(interviews, errors, items, skipped, time.perf_counter() - started)


def main(args: argparse.Namespace) -> int:
    summary = run_score(args.model, args.store, args.out, base_llm_dir=args.base_llm, workers=args.workers,
                        batch_size=args.batch_size, gpus_per_worker=args.gpus_per_worker,
                        generate=not args.no_generate, max_new_tokens=args.max_new_tokens)
    if summary.interviews:
        print(f"scored {summary.interviews} interviews ({summary.errors} error rows, {summary.skipped} already "
              f"in {args.out}) in {summary.seconds:.1f} s: {summary.interviews_per_s:.3f} interviews/s, "
              f"{summary.items_per_s:.2f} items/s")
    return 0
