"""The assessment API over real HTTP against the running Serve app (see conftest.py): scoring end to end,
auth, limits, bad input, concurrency with batching, and the logs. Tests run in file order; the log scan
comes last so it sees every request made here."""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import ray
import requests

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.synthetic import declare_duration, malformed_files, write_recording
from mllm_dr.model.bundle import read_bundle_description
from mllm_dr.questionnaires import PHQ8

# Planted in every transcript sent below; it must never reach a log line.
SECRET = f"quokkasecret{secrets.token_hex(6)}"
TRANSCRIPT_CSV = (f"start,end,speaker,text\n0.0,1.5,interviewer,How have you been sleeping?\n"
                  f"1.5,3.5,participant,Badly. My {SECRET} keeps me awake and I feel tired.\n").encode()


def text_only(note: str = "") -> dict:
    return {"transcript": [{"start": 0.0, "end": 1.0, "speaker": "interviewer", "text": "How is your appetite?"},
                           {"start": 1.0, "end": 3.0, "speaker": "participant",
                            "text": f"I barely eat, {SECRET} {note}"}]}


def assert_still_serving(service) -> None:
    """A cheap good request (transcript only: ingress + scorer) after a bad one."""
    response = requests.post(f"{service.url}/v1/assessments", json=text_only(), headers=service.headers(),
                             timeout=60)
    assert response.status_code == 200, response.text


def assessment_schema(service) -> dict:
    spec = requests.get(f"{service.url}/openapi.json", timeout=10).json()
    return {**spec["components"]["schemas"]["Assessment"], "components": spec["components"]}


def check_assessment(body: dict, service, modalities: list[str]) -> None:
    jsonschema.validate(body, assessment_schema(service))
    assert [item["item"] for item in body["items"]] == list(range(1, 9))
    assert [item["name"] for item in body["items"]] == [item.name["en"] for item in PHQ8.items]
    assert all(0 <= item["score"] <= 3 and 0 <= item["regression_score"] <= 3 for item in body["items"])
    assert all(item["rationale"] for item in body["items"])
    assert body["total"] == sum(item["score"] for item in body["items"])
    assert body["severity"] == PHQ8.severity(body["total"])
    assert body["screen_positive"] == (body["total"] >= PHQ8.screen_cutoff)
    assert body["questionnaire"] == "phq8" and body["modalities"] == modalities
    assert body["model"] == {"name": "tiny-phq8", "version": "test-1"}
    assert len(body["assessment_id"]) == 32


def test_scores_an_uploaded_interview_end_to_end(service):
    response = service.post_interview(service.video.read_bytes(), ("interview.csv", TRANSCRIPT_CSV))
    assert response.status_code == 200, response.text
    body = response.json()
    check_assessment(body, service, ["audio", "video", "text"])
    assert body["timing_ms"]["preprocess"] > 0 and body["timing_ms"]["total"] >= body["timing_ms"]["score"]
    assert list(service.upload_dir.iterdir()) == []  # the private upload folder is gone


def test_video_uri_from_s3_and_from_an_allowed_folder(service, s3_server):
    bucket = s3_server.make_bucket("serving-videos")
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint}).put(
        str(service.video), "serving-videos/clinic-a/interview.mp4")
    response = requests.post(f"{service.url}/v1/assessments", headers=service.headers(), timeout=120,
                             json={"video_uri": f"{bucket}/clinic-a/interview.mp4", **text_only("s3")})
    assert response.status_code == 200, response.text
    check_assessment(response.json(), service, ["audio", "video", "text"])

    response = requests.post(f"{service.url}/v1/assessments", headers=service.headers(), timeout=120,
                             json={"video_uri": str(service.video)})
    assert response.status_code == 200, response.text
    check_assessment(response.json(), service, ["audio", "video"])  # no transcript, no text modality

    for uri, status in ((f"{bucket}/clinic-a/missing.mp4", 422), ("/etc/hostname", 403),
                        (str(service.local_videos / ".." / "tokens"), 403), ("http://example.org/a.mp4", 422)):
        response = requests.post(f"{service.url}/v1/assessments", json={"video_uri": uri},
                                 headers=service.headers(), timeout=60)
        assert response.status_code == status, (uri, response.text)


def test_tokens_are_required(service):
    video = service.video.read_bytes()
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {service.token}"},
                    {"Authorization": f"Bearer {service.token}x"}):
        response = requests.post(f"{service.url}/v1/assessments", files={"video": ("a.mp4", video)},
                                 headers=headers, timeout=30)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert requests.get(f"{service.url}/v1/model", timeout=10).status_code == 401
    assert requests.get(f"{service.url}/healthz", timeout=10).json() == {"status": "ok"}
    assert_still_serving(service)


def test_too_large_is_413_declared_or_streamed(service):
    limit = int(service.max_upload_mb * 2**20)
    big = service.video.read_bytes() + b"\0" * limit
    response = service.post_interview(big)  # Content-Length says it all: refused before the body is read
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert_still_serving(service)

    def chunked():  # no Content-Length: counted while streaming
        for start in range(0, len(big), 64 * 1024):
            yield big[start:start + 64 * 1024]

    response = requests.post(f"{service.url}/v1/assessments", data=chunked(), timeout=60,
                             headers={**service.headers(), "Content-Type": "application/json"})
    assert response.status_code == 413
    assert_still_serving(service)


def _matroska(tmp_path: Path) -> bytes:
    path = tmp_path / "short.mkv"
    write_recording(str(path), 1.0, video=lambda t: np.zeros((64, 64, 3), np.uint8), width=64, height=64,
                    container_format="matroska")
    return path.read_bytes()


@pytest.mark.parametrize("case", ["corrupt-videos", "text-file", "empty-upload", "too-long"])
def test_bad_media_is_422_with_a_reason(service, case, tmp_path):
    good = service.video.read_bytes()
    if case == "corrupt-videos":
        uploads = [(name, data) for name, data in malformed_files(good) if data]
    elif case == "text-file":
        uploads = [("notes.txt", b"Patient notes: not a video.\n" * 50)]
    elif case == "empty-upload":
        uploads = [("interview.mp4", b"")]
    else:
        uploads = [("long.mkv", declare_duration(_matroska(tmp_path), 3 * 3600))]
    for name, data in uploads:
        response = requests.post(f"{service.url}/v1/assessments", headers=service.headers(), timeout=120,
                                 files={"video": (name, data), "transcript": ("t.csv", TRANSCRIPT_CSV)})
        assert response.status_code == 422, (name, response.status_code, response.text)
        reason = response.json()["detail"]
        assert isinstance(reason, str) and reason and SECRET not in reason
        if case == "too-long":
            assert "duration" in reason
        if case == "empty-upload":
            assert "empty" in reason
        assert_still_serving(service)
    assert list(service.upload_dir.iterdir()) == []
    if case == "corrupt-videos":  # the preprocessor survived every one of them
        response = service.post_interview(good)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("name, content, expected", [
    ("t.csv", b"\x00\x01\x02\xff" * 500, "transcript"),
    ("t.srt", f"1\nthis is not a timestamp\n{SECRET}\n".encode(), "transcript"),
    ("t.json", b'{"turns": [{"start": "soon", "text": 1}]}', "transcript"),
    ("t.docx", TRANSCRIPT_CSV, "docx"),
    ("t.csv", b"", "empty"),
])
def test_bad_transcripts_are_422_with_a_reason(service, name, content, expected):
    response = service.post_interview(service.video.read_bytes(), (name, content))
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]
    assert_still_serving(service)


@pytest.mark.parametrize("request_kwargs, expected", [
    ({"data": "not json", "headers": {"Content-Type": "application/json"}}, "JSON"),
    ({"json": {"transcript": "I feel fine"}}, "transcript"),
    ({"json": {"video": "x.mp4"}}, "video"),
    ({"json": {}}, "no interview"),
    ({"json": {**text_only(), "questionnaire": "phq9"}}, "phq8"),
    ({"json": {**text_only(), "language": "fr"}}, "language"),
    ({"files": {"video": ("a.mp4", b"x"), "comment": (None, "hello")}}, "comment"),
    ({"data": b"<xml/>", "headers": {"Content-Type": "application/xml"}}, "multipart"),
])
def test_bad_requests_are_4xx_with_a_reason(service, request_kwargs, expected):
    headers = {**service.headers(), **request_kwargs.pop("headers", {})}
    response = requests.post(f"{service.url}/v1/assessments", headers=headers, timeout=30, **request_kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert expected in response.json()["detail"]
    assert_still_serving(service)


def test_concurrent_clients_all_succeed_and_the_scorer_batches(service):
    before = requests.get(f"{service.url}/v1/model", headers=service.headers(), timeout=30).json()["batching"]
    errors: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> int:
        done = 0
        with requests.Session() as session:
            for request in range(4):
                if request == 0 and number < 4:  # some full uploads in the mix
                    response = session.post(f"{service.url}/v1/assessments", headers=service.headers(), timeout=180,
                                            files={"video": ("v.mp4", service.video.read_bytes())})
                else:
                    response = session.post(f"{service.url}/v1/assessments", json=text_only(f"c{number}r{request}"),
                                            headers=service.headers(), timeout=180)
                if response.status_code == 200 and sum(i["score"] for i in response.json()["items"]) == \
                        response.json()["total"]:
                    done += 1
                else:
                    with lock:
                        errors.append(f"{response.status_code} {response.text[:200]}")
        return done

    with ThreadPoolExecutor(max_workers=16) as pool:
        completed = sum(pool.map(client, range(16)))
    assert errors == [] and completed == 64
    after = requests.get(f"{service.url}/v1/model", headers=service.headers(), timeout=30).json()["batching"]
    assert after["interviews"] - before["interviews"] == 64
    new_batches = after["batches"] - before["batches"]
    assert new_batches < 64 and after["max_batch_size_seen"] > 1  # interviews shared model calls
    grown = {size: count - before["histogram"].get(size, 0) for size, count in after["histogram"].items()}
    assert any(int(size) > 1 and count > 0 for size, count in grown.items())


def test_model_info_health_and_docs(service):
    info = requests.get(f"{service.url}/v1/model", headers=service.headers(), timeout=30).json()
    assert info["name"] == "tiny-phq8" and info["version"] == "test-1" and info["questionnaire"] == "phq8"
    assert info["base_llm"] and set(info["feature_dims"]) == {"audio", "video"}
    assert info["limits"]["max_upload_mb"] == service.max_upload_mb
    # No preprocessor.pipeline in the service config: the one recorded in the bundle by training is used.
    recorded = read_bundle_description(service.bundle)["metadata"]["preprocess"]["media"]["frame_size"]
    assert info["preprocessing"]["frame_size"] == recorded != PreprocessConfig().media.frame_size
    docs = requests.get(f"{service.url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = requests.get(f"{service.url}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/assessments"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    page = requests.get(f"{service.url}/", timeout=10)
    assert page.status_code == 200 and "not a diagnosis" in page.text


def test_logs_never_hold_interview_content(service):
    """Every file of the Ray session's logs (Serve replicas, proxy, controller, workers' stdout/stderr)."""
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file()]
    hits = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert hits == []
    serve_logs = b"".join(p.read_bytes() for p in (logs / "serve").glob("replica_*Ingress*"))
    # The scan saw the ingress's access log: method, path, status, latency, assessment id.
    assert b"POST /v1/assessments 200" in serve_logs and b"assessment=" in serve_logs
    assert b"POST /v1/assessments 422" in serve_logs and b"POST /v1/assessments 401" in serve_logs
