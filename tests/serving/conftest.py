"""A running assessment service for the serving tests: real Ray Serve on 127.0.0.1, a tiny model bundle,
a synthetic interview. Started once for the package (it costs ~20 s on 2 cores) and shut down after."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

# Small but real: the pipeline's own encoders on 64-pixel frames, a 1-layer LQ-former with 4 queries.
PIPELINE = {"media": {"frame_rate": 1.0, "frame_size": 64}}
SCORER_CONFIG = {"lq_former": {"num_queries": 4, "num_layers": 1, "num_heads": 4},
                 "lora": {"r": 4, "alpha": 8}, "head": {"hidden_dim": 32}}


@dataclass(frozen=True)
class Service:
    url: str
    token: str
    bundle: str
    video: Path
    transcript: Path
    item_scores: list[int]
    upload_dir: Path
    local_videos: Path
    max_upload_mb: float

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def post_interview(self, video: bytes | None = None, transcript: tuple[str, bytes] | None = None,
                       token: str | None = None, timeout: float = 120) -> requests.Response:
        files = {}
        if video is not None:
            files["video"] = ("interview.mp4", video, "video/mp4")
        if transcript is not None:
            files["transcript"] = (transcript[0], transcript[1], "text/plain")
        return requests.post(f"{self.url}/v1/assessments", files=files, headers=self.headers(token), timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def tiny_bundle(tiny_llm: str, tmp_path_factory) -> str:
    """An untrained tiny bundle whose feature dims are those the serving pipeline's encoders produce."""
    from mllm_dr.config import PreprocessConfig
    from mllm_dr.data.features import build_audio_encoder, build_visual_encoder
    from mllm_dr.model.bundle import save_bundle
    from mllm_dr.model.scorer import MultimodalScorer, ScorerConfig

    pipeline = PreprocessConfig.model_validate(PIPELINE)
    dims = {"audio": build_audio_encoder(pipeline.encoders.audio, "cpu").dim,
            "video": build_visual_encoder(pipeline.encoders.visual, "cpu").dim}
    model = MultimodalScorer.from_base(tiny_llm, ScorerConfig.model_validate(SCORER_CONFIG), "phq8", dims)
    out = tmp_path_factory.mktemp("serving-bundle") / "tiny-phq8"
    save_bundle(model, out, {"name": "tiny-phq8", "version": "test-1", "preprocess": pipeline.model_dump(mode="json")})
    return str(out)


@pytest.fixture(scope="package")
def service(ray_local, tiny_bundle: str, tmp_path_factory) -> Iterator[Service]:
    from ray import serve

    from mllm_dr.data.synthetic import synthesize
    from mllm_dr.serving.app import APP_NAME, build_app

    root = tmp_path_factory.mktemp("serving")
    local_videos = root / "videos"
    interview = synthesize(str(local_videos), interviews=1, seed=3, seconds=4.0)[0]
    token = secrets.token_urlsafe(24)
    token_file = root / "tokens"
    token_file.write_text(f"# test token\n{token}\n")
    os.chmod(token_file, 0o600)
    max_upload_mb = 1.0
    config = {
        "model": {"bundle": tiny_bundle},
        "limits": {"max_upload_mb": max_upload_mb, "max_duration_s": 60, "request_timeout_s": 90,
                   "local_video_roots": [str(local_videos)], "upload_tmp_dir": str(root / "uploads")},
        "auth": {"token_file": str(token_file)},
        "ingress": {"num_cpus": 0.1, "max_ongoing_requests": 64,
                    "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 32}},
        "preprocessor": {"num_cpus": 0.5, "max_ongoing_requests": 2,
                         "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 1}},
        "scorer": {"num_cpus": 0.5, "max_batch_size": 8, "max_ongoing_requests": 16, "batch_wait_timeout_s": 0.2,
                   "max_new_tokens": 8, "autoscaling": {"min_replicas": 1, "max_replicas": 1,
                                                        "target_ongoing_requests": 8}},
    }
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        yield Service(url=f"http://127.0.0.1:{port}", token=token, bundle=tiny_bundle,
                      video=Path(interview.video_uri), transcript=Path(interview.transcript_uri),
                      item_scores=interview.item_scores, upload_dir=root / "uploads", local_videos=local_videos,
                      max_upload_mb=max_upload_mb)
    finally:
        serve.shutdown()
