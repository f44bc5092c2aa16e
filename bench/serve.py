"""Serving: latency and throughput through HTTP (Ray Serve) vs the model called in-process, batched vs unbatched.

    python bench/serve.py [--model BUNDLE] [--requests 48] [--max-new-tokens 16] [--video]

Inputs: transcript-only interviews (JSON requests), so the numbers are about Serve and the scorer, not video
decoding; ``--video`` adds one end-to-end row with uploads of a 10-second synthetic interview.
Without ``--model`` an untrained tiny bundle is built (tiny random Llama, 1-layer LQ-formers).

  in-process   ``model.score([record])`` one call after another on the driver (torch pinned to the scorer
               replica's thread count), and ``model.score(records[:16])`` for what batching offers the model;
  HTTP         ``POST /v1/assessments`` with a bearer token from 1, 4 and 16 concurrent clients against the app
               of ``mllm_dr.serving.app:build_app`` with an unbatched scorer (max_batch_size 1) and a batched one
               (max_batch_size 16, batch_wait_timeout_s 0.02).
Reported: p50/p95 latency and throughput per level; Serve overhead at concurrency 1 (unbatched, so no batch wait
is counted) measured two ways: the median paired difference (each interview in-process, then over HTTP, back to
back) and the median of client latency minus the model call time the scorer replica reports (``timing_ms.model``);
batching gain = batched / unbatched throughput at concurrency 16. For scale, Serve's own floor on the machine: the
same two hops (proxy -> FastAPI ingress -> one handle call) with no-op deployments.
Each measurement prints one JSON line; the last line is the summary for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch

from mllm_dr.data.records import InterviewRecord
from mllm_dr.data.synthetic import ANSWERS, QUESTIONS, synthesize
from mllm_dr.data.transcripts import INTERVIEWER, PARTICIPANT, Turn

CONCURRENCY = (1, 4, 16)
SCORER_THREADS = 1  # the scorer replica runs with num_cpus=1, so Ray gives it one OpenMP thread


def tiny_bundle(folder: Path) -> str:
    from mllm_dr.config import PreprocessConfig
    from mllm_dr.data.features import build_audio_encoder, build_visual_encoder
    from mllm_dr.model.bundle import save_bundle
    from mllm_dr.model.scorer import MultimodalScorer, ScorerConfig
    from mllm_dr.model.tiny import build_tiny_llm

    pipeline = PreprocessConfig()
    dims = {"audio": build_audio_encoder(pipeline.encoders.audio, "cpu").dim,
            "video": build_visual_encoder(pipeline.encoders.visual, "cpu").dim}
    config = ScorerConfig.model_validate({"lq_former": {"num_queries": 8, "num_layers": 1, "num_heads": 4}})
    model = MultimodalScorer.from_base(build_tiny_llm(folder / "llm"), config, "phq8", dims)
    save_bundle(model, folder / "bundle", {"name": "tiny-bench", "version": "bench"})
    return str(folder / "bundle")


def interviews(n: int, seed: int = 0) -> list[list[dict]]:
    """Transcripts in the synthetic interviews' style: the four text items' question/answer pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        turns, t = [], 0.0
        for key, question in QUESTIONS.items():
            answer = ANSWERS[key][int(rng.integers(0, 4))]
            turns += [{"start": t, "end": t + 2, "speaker": INTERVIEWER, "text": question},
                      {"start": t + 2, "end": t + 6, "speaker": PARTICIPANT, "text": answer}]
            t += 6
        out.append(turns)
    return out


def stats(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies_s)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 1),
            "throughput_rps": round(len(ms) / wall_s, 2)}


def records_of(transcripts: list[list[dict]]) -> list[InterviewRecord]:
    return [InterviewRecord(interview_id=f"bench-{i}", site="api",
                            transcript=[Turn(t["start"], t["end"], t["speaker"], t["text"]) for t in turns])
            for i, turns in enumerate(transcripts)]


def in_process(model, records: list[InterviewRecord], max_new_tokens: int) -> dict[str, dict]:
    """The model alone: one interview per call, then 16 per call."""
    latencies, started = [], time.perf_counter()
    for record in records:
        t0 = time.perf_counter()
        model.score([record], max_new_tokens=max_new_tokens)
        latencies.append(time.perf_counter() - t0)
    results = {"sequential": stats(latencies, time.perf_counter() - started)}
    started = time.perf_counter()
    for start in range(0, len(records), 16):
        model.score(records[start:start + 16], max_new_tokens=max_new_tokens)
    results["score(16 records)"] = {"throughput_rps": round(len(records) / (time.perf_counter() - started), 2)}
    return results


def paired_overhead(model, records: list[InterviewRecord], url: str, token: str, bodies: list[dict],
                    max_new_tokens: int) -> dict[str, float]:
    """The same interview in-process then over HTTP, back to back, so load drift on a shared machine hits
    both alike; the median of the per-interview differences is the overhead."""
    local, remote, timings = [], [], []
    with requests.Session() as session:
        for record, body in zip(records, bodies):
            t0 = time.perf_counter()
            model.score([record], max_new_tokens=max_new_tokens)
            t1 = time.perf_counter()
            response = session.post(url, headers={"Authorization": f"Bearer {token}"}, json=body, timeout=600)
            t2 = time.perf_counter()
            response.raise_for_status()
            local.append(t1 - t0)
            remote.append(t2 - t1)
            timings.append({k: v / 1000 for k, v in response.json()["timing_ms"].items()})
    def ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 1)

    beyond_model = [r - t["model"] for r, t in zip(remote, timings)]
    return {"in_process_p50_ms": ms(local), "http_p50_ms": ms(remote),
            "overhead_p50_ms": ms([r - l for r, l in zip(remote, local)]),
            "ratio": round(statistics.median(remote) / statistics.median(local), 3),
            # the same overhead without the model's run-to-run noise: client latency - the replica's model call
            "http_minus_server_model_p50_ms": ms(beyond_model),
            "http_minus_server_model_min_ms": round(min(beyond_model) * 1000, 1),
            # where it goes, from the response's timing_ms
            "client_to_ingress_p50_ms": ms([r - t["total"] for r, t in zip(remote, timings)]),
            "ingress_own_p50_ms": ms([t["total"] - t["score"] for t in timings]),
            "ingress_to_scorer_p50_ms": ms([t["score"] - t["model"] for t in timings]),
            "model_p50_ms": ms([t["model"] for t in timings])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_config(bundle: str, token_file: str, max_batch_size: int, max_new_tokens: int) -> dict:
    return {
        "model": {"bundle": bundle},
        "auth": {"token_file": token_file},
        "ingress": {"num_cpus": 0.1, "max_ongoing_requests": 64,
                    "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 32}},
        "preprocessor": {"num_cpus": 0.5, "max_ongoing_requests": 2},
        "scorer": {"num_cpus": SCORER_THREADS, "max_batch_size": max_batch_size,
                   "max_ongoing_requests": max(16, 2 * max_batch_size),
                   "batch_wait_timeout_s": 0.02 if max_batch_size > 1 else 0.0, "max_new_tokens": max_new_tokens,
                   "autoscaling": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": max_batch_size}},
    }


def load(url: str, token: str, bodies: list[dict], concurrency: int, files: list[bytes] | None = None) -> dict:
    """``len(bodies)`` requests from ``concurrency`` clients, each with its own keep-alive session."""
    headers = {"Authorization": f"Bearer {token}"}
    chunks = [list(range(i, len(bodies), concurrency)) for i in range(concurrency)]

    def client(indices: list[int]) -> list[float]:
        times = []
        with requests.Session() as session:
            for i in indices:
                t0 = time.perf_counter()
                if files:
                    response = session.post(url, headers=headers, timeout=600,
                                            files={"video": ("v.mp4", files[i % len(files)])})
                else:
                    response = session.post(url, headers=headers, json=bodies[i], timeout=600)
                response.raise_for_status()
                times.append(time.perf_counter() - t0)
        return times

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for times in pool.map(client, chunks) for t in times]
    return stats(latencies, time.perf_counter() - started)


def serve_floor(url_base: str, requests_n: int) -> dict[str, float]:
    """Ray Serve's own cost on this machine: proxy -> FastAPI ingress -> one handle call to a no-op deployment,
    the same two hops an assessment takes, with nothing else."""
    from fastapi import FastAPI
    from ray import serve

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Echo:
        async def __call__(self, value: int) -> int:
            return value

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, echo):
            self.echo = echo

        @app.post("/floor")
        async def floor(self) -> dict:
            return {"value": await self.echo.remote(1)}

    serve.run(Ingress.bind(Echo.bind()), name="floor", route_prefix="/floor-app")
    latencies = []
    with requests.Session() as session:
        for _ in range(requests_n + 8):
            t0 = time.perf_counter()
            session.post(f"{url_base}/floor-app/floor", timeout=60).raise_for_status()
            latencies.append(time.perf_counter() - t0)
    serve.delete("floor")
    latencies = latencies[8:]
    return {"p50_ms": round(statistics.median(latencies) * 1000, 1), "min_ms": round(min(latencies) * 1000, 1)}


def over_http(model, transcripts: list[list[dict]], bundle: str, max_new_tokens: int,
              video: bytes | None) -> dict[str, dict]:
    from ray import serve

    from mllm_dr.serving.app import APP_NAME, build_app

    token = secrets.token_urlsafe(16)
    records = records_of(transcripts)
    bodies = [{"transcript": turns} for turns in transcripts]
    results: dict[str, dict] = {}

    def report(name: str, values: dict) -> None:
        results[name] = values
        print(json.dumps({"measure": name, **values}), flush=True)

    with tempfile.TemporaryDirectory() as folder:
        token_file = os.path.join(folder, "tokens")
        Path(token_file).write_text(token)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}/v1/assessments"
        try:
            report("serve floor (no-op, 2 hops)", serve_floor(f"http://127.0.0.1:{port}", 2 * len(bodies)))
            for name, batch in (("unbatched", 1), ("batched", 16)):
                serve.run(build_app(serving_config(bundle, token_file, batch, max_new_tokens)), name=APP_NAME,
                          route_prefix="/")
                load(url, token, bodies[:4], 2)  # warm-up
                if name == "unbatched":
                    report("overhead c=1 (paired)", paired_overhead(model, records, url, token, bodies,
                                                                    max_new_tokens))
                    for label, values in in_process(model, records, max_new_tokens).items():
                        report(f"in-process {label}", values)
                for concurrency in CONCURRENCY:
                    report(f"http {name} c={concurrency}", load(url, token, bodies, concurrency))
                if video is not None and name == "unbatched":
                    report("http video upload c=1", load(url, token, bodies[:8], 1, files=[video]))
                serve.delete(APP_NAME)
        finally:
            serve.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model bundle (default: build an untrained tiny one)")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generated tokens per item")
    parser.add_argument("--video", action="store_true", help="add an end-to-end row with video uploads")
    args = parser.parse_args()

    import ray

    from mllm_dr.model.bundle import load_bundle

    torch.set_num_threads(SCORER_THREADS)
    with tempfile.TemporaryDirectory(prefix="mllm-dr-bench-serve-") as folder:
        bundle = args.model or tiny_bundle(Path(folder))
        video = None
        if args.video:
            made = synthesize(os.path.join(folder, "videos"), interviews=1, seed=1, seconds=10.0)[0]
            video = Path(made.video_uri).read_bytes()
        model = load_bundle(bundle)
        transcripts = interviews(args.requests)
        model.score(records_of(transcripts[:2]), max_new_tokens=args.max_new_tokens)  # warm-up
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            results = over_http(model, transcripts, bundle, args.max_new_tokens, video)
        finally:
            ray.shutdown()

    overhead = results["overhead c=1 (paired)"]
    summary = {
        "summary": True, "requests_per_level": args.requests, "max_new_tokens": args.max_new_tokens,
        "serve_overhead_p50_ms": overhead["overhead_p50_ms"], "serve_overhead_ratio": overhead["ratio"],
        "http_minus_server_model_p50_ms": overhead["http_minus_server_model_p50_ms"],
        "serve_floor_p50_ms": results["serve floor (no-op, 2 hops)"]["p50_ms"],
        "batching_gain_c16": round(results["http batched c=16"]["throughput_rps"]
                                   / results["http unbatched c=16"]["throughput_rps"], 2),
        "in_process_batch16_gain": round(results["in-process score(16 records)"]["throughput_rps"]
                                         / results["in-process sequential"]["throughput_rps"], 2),
        "results": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
