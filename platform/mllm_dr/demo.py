"""``mllm-dr demo``: the whole platform end to end on one machine, with no GPU and no downloads.

Synthetic interviews at two sites -> Ray Data preprocessing -> a tiny LLM built locally -> two-stage training
with Ray Train + DeepSpeed (2 CPU workers) -> evaluation against the predict-the-mean baseline -> a Ray Serve
endpoint -> one new interview scored over HTTP -> everything shut down. Each step writes into the work
directory so a user can look at what it made; the last screen says where.

The tiny model is random at the start and small: the demo shows that every stage runs and connects, and that
training learns the signals the synthetic data plants, not what a real model would say about a real person.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mllm_dr.errors import UserError

SITES = ("north", "south")
INTERVIEWS_PER_SITE = 12
SECONDS = 12.0
# The training recipe is the one users run by hand: jobs/configs/demo.yaml, with the demo's paths.
RECIPE = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "demo.yaml"


@dataclass(frozen=True)
class DemoResult:
    workdir: Path
    store: str
    bundle: str
    report: dict[str, Any]
    assessment: dict[str, Any]


class Steps:
    """Numbered step headings with their wall-clock time, so a user sees where the minutes go."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        print(f"\n[{self.done}/{self.total}] {title}", flush=True)
        began = time.perf_counter()
        yield
        print(f"    done in {time.perf_counter() - began:.0f} s", flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def run_demo(workdir: Path, interviews_per_site: int = INTERVIEWS_PER_SITE, epochs: int | None = None) -> DemoResult:
    """Run every step; ``interviews_per_site`` and ``epochs`` (per stage) shrink it for a quick smoke run."""
    import ray

    from mllm_dr.config import PreprocessConfig, read_yaml_mapping
    from mllm_dr.data.preprocess import run_preprocess
    from mllm_dr.data.synthetic import synthesize
    from mllm_dr.evaluation.report import EvaluationConfig, evaluate
    from mllm_dr.model.tiny import build_tiny_llm
    from mllm_dr.train.config import TrainConfig
    from mllm_dr.train.trainer import run_training

    if not RECIPE.is_file():
        raise UserError(f"mllm-dr demo runs from a checkout of the repository: its training recipe {RECIPE} "
                        "is missing")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    steps = Steps(total=6)
    # Logical CPUs beyond the physical ones: the 2 training workers reserve 2 CPUs in their placement group, and
    # Ray Data still needs CPUs outside it to read the store for them.
    ray.init(num_cpus=max(4, os.cpu_count() or 4), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        with steps.step(f"Synthesizing {interviews_per_site} interviews at each of {len(SITES)} sites "
                        "(H.264/AAC MP4 + transcript + labels, PHQ-8 items planted in voice, face and words)"):
            for seed, site in enumerate(SITES, start=1):
                synthesize(str(workdir / "sites" / site), interviews_per_site, seed=seed, seconds=SECONDS, site=site)
            print(f"    {workdir / 'sites'}")

        store = str(workdir / "store")
        with steps.step("Preprocessing with Ray Data: decode (PyAV), log-mel audio + CNN visual features -> "
                        "Parquet feature store"):
            summary = run_preprocess([f"{site}=videos:{workdir / 'sites' / site}" for site in SITES], store,
                                     PreprocessConfig())
            print(f"    {summary.line()}\n    {store}")

        with steps.step("Building a tiny random Llama-architecture LLM and its tokenizer locally"):
            llm = build_tiny_llm(workdir / "tiny-llm")
            print(f"    {llm}")

        with steps.step("Training with Ray Train + DeepSpeed ZeRO-2 on 2 CPU workers: align, then multitask"):
            recipe = read_yaml_mapping(RECIPE)
            recipe["data"]["store"], recipe["model"]["base_llm"] = store, llm
            recipe["run"]["storage"] = str(workdir / "runs")
            for stage in recipe["stages"]:
                stage["epochs"] = epochs or stage["epochs"]
            config = TrainConfig.model_validate(recipe)
            trained = run_training(config)
            bundle = trained.bundle
            print(f"    {bundle}")

        with steps.step("Evaluating on the test split (paper protocol: item scores summed per subject)"):
            report = evaluate(bundle, store, ["test"], str(workdir / "report"),
                              EvaluationConfig(modality_sets=["all"], bootstrap=200, max_new_tokens=32))
            print(f"    subject totals: MAE {report['mae']:.2f} vs predict-the-mean {report['baseline_mae']:.2f}, "
                  f"RMSE {report['rmse']:.2f} vs {report['baseline_rmse']:.2f}")
            print(f"    {workdir / 'report' / 'report.md'}")

        with steps.step("Serving the model on Ray Serve and scoring a new interview over HTTP"):
            assessment = _serve_and_score(workdir, bundle)
            _print_assessment(assessment)
    finally:
        _shutdown()
    print(f"\nDemo finished in {steps.elapsed / 60:.1f} min. Everything it made is in {workdir}:")
    for name, what in (("sites/", "synthetic interview videos, transcripts, labels.csv"),
                       ("store/", "the feature store (records/*.parquet + manifest.json)"),
                       ("tiny-llm/", "the base LLM"), ("runs/demo/", "checkpoints and the model bundle"),
                       ("report/", "report.md, report.json, predictions.parquet, plots"),
                       ("serve/", "the new interview scored over HTTP and the response")):
        print(f"  {name:<12} {what}")
    return DemoResult(workdir, store, bundle, report, assessment)


def _serve_and_score(workdir: Path, bundle: str) -> dict[str, Any]:
    """Start the endpoint with a fresh token, POST a new synthetic interview, return the JSON answer."""
    import json

    import requests
    from ray import serve

    from mllm_dr.data.synthetic import synthesize
    from mllm_dr.serving.app import APP_NAME, build_app

    folder = workdir / "serve"
    folder.mkdir(exist_ok=True)
    token = secrets.token_urlsafe(24)
    token_file = folder / "tokens"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    interview = synthesize(str(folder / "new-interview"), 1, seed=99, seconds=SECONDS, site="clinic")[0]
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": {"bundle": bundle}, "auth": {"token_file": str(token_file)},
                         "scorer": {"max_new_tokens": 48}}), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    print(f"    endpoint {url}/ (page), {url}/docs (API)")
    with open(interview.video_uri, "rb") as video, open(interview.transcript_uri, "rb") as transcript:
        response = requests.post(f"{url}/v1/assessments", headers={"Authorization": f"Bearer {token}"},
                                 files={"video": ("interview.mp4", video, "video/mp4"),
                                        "transcript": (Path(interview.transcript_uri).name, transcript)},
                                 timeout=300)
    if response.status_code != 200:
        raise RuntimeError(f"the endpoint answered {response.status_code}: {response.text[:300]}")
    assessment = response.json()
    assessment["planted_item_scores"] = interview.item_scores
    (folder / "assessment.json").write_text(json.dumps(assessment, indent=2, ensure_ascii=False))
    return assessment


def _print_assessment(assessment: dict[str, Any]) -> None:
    planted = assessment["planted_item_scores"]
    print(f"    {'item':<26} score  regression  planted  rationale")
    for item, truth in zip(assessment["items"], planted):
        rationale = " ".join(item["rationale"].split())
        print(f"    {item['name']:<26} {item['score']:>5}  {item['regression_score']:>10.2f}  {truth:>7}  "
              f"{rationale[:64]}")
    print(f"    total {assessment['total']} (planted {sum(planted)}), severity {assessment['severity']}, "
          f"screen {'positive' if assessment['screen_positive'] else 'negative'}, "
          f"answered in {assessment['timing_ms']['total']:.0f} ms")


def _shutdown() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(args: argparse.Namespace) -> int:
    run_demo(Path(args.workdir), args.interviews, args.epochs)
    return 0
