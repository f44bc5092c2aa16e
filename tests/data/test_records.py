import numpy as np
import pyarrow.parquet as pq

from mllm_dr.data.records import (
    COLUMNS,
    SCHEMA,
    InterviewRecord,
    read_records,
    records_to_table,
    write_records,
)
from mllm_dr.data.transcripts import Turn
from mllm_dr.storage import resolve


def _record(i: int, audio: bool, video: bool) -> InterviewRecord:
    rng = np.random.default_rng(i)
    return InterviewRecord(
        interview_id=f"i{i}", site="s", split="train", item_scores=[i % 4] * 8, total_score=(i % 4) * 8,
        transcript=[Turn(0.0, 1.5, "participant", "hello")],
        audio=rng.normal(size=(10 + i, 80)).astype(np.float16) if audio else None, audio_rate=50.0,
        video=rng.normal(size=(3 + i, 512)).astype(np.float16) if video else None, video_rate=1.0,
        duration_s=3.0, source_uri="/x.mp4", source_sha256="ab", encoders={"audio": {"name": "logmel"}})


def test_round_trip_keeps_values_shapes_and_missing_modalities(tmp_path):
    records = [_record(0, True, True), _record(1, False, True), _record(2, True, False),
               InterviewRecord.failed("bad", "zero-byte file\nsecond line", site="s", source_uri="/bad.mp4")]
    store = resolve(str(tmp_path / "store"))
    write_records(store, records, "part-0")
    table = pq.read_table(tmp_path / "store/records/part-0.parquet")
    assert tuple(table.column_names) == COLUMNS and table.schema.equals(SCHEMA)
    back = read_records(store)
    for original, loaded in zip(records, back):
        for name in ("audio", "video"):
            a, b = getattr(original, name), getattr(loaded, name)
            assert (a is None and b is None) or (a.shape == b.shape and np.array_equal(a, b))
        assert loaded.transcript == original.transcript and loaded.item_scores == original.item_scores
    assert back[3].status == "error" and back[3].error == "zero-byte file second line"
    assert [r.modalities for r in back[:3]] == [["audio", "video", "text"], ["video", "text"], ["audio", "text"]]


def test_ray_data_reads_the_store(tmp_path, ray_local):
    import ray.data

    write_records(resolve(str(tmp_path)), [_record(0, True, False), _record(1, False, True)], "p")
    rows = sorted(ray.data.read_parquet(str(tmp_path / "records")).take_all(), key=lambda r: r["interview_id"])
    assert rows[0]["audio"].shape == (10, 80) and rows[0]["video"] is None
    assert InterviewRecord.from_row(rows[1]).video.shape == (4, 512)
    assert records_to_table([_record(3, True, True)]).num_rows == 1
