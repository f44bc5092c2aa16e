"""The scoring service: a FastAPI ingress composed with the preprocessor and the scorer on Ray Serve.

``build_app(args)`` is the application builder ``serve run`` / ``serve deploy`` import (``args`` is the
:class:`~mllm_dr.serving.config.ServingConfig`); ``main`` is ``mllm-dr serve``, which starts a local Ray and
blocks until Ctrl-C. The ingress authenticates, reads and checks the request, and then hands media to the
preprocessor and records to the scorer through deployment handles. Its access log is its own: method,
path, status, latency and the assessment id, nothing from the request body.

Serve serializes a deployment class when it is decorated, so every helper its methods use is defined above it.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route methods' annotations at runtime.
import argparse
import asyncio
import logging
import time
import traceback
import uuid
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from mllm_dr import __version__
from mllm_dr.data.records import InterviewRecord
from mllm_dr.data.samples import LANGUAGES
from mllm_dr.errors import UserError
from mllm_dr.serving.api import (
    OPENAPI_REQUEST_BODY,
    Assessment,
    AssessmentRequest,
    ModelInfo,
    read_assessment_request,
)
from mllm_dr.serving.config import ServingConfig, parse_serving_config, read_serve_config_file
from mllm_dr.serving.deployments import MediaJob, Outcome, Preprocessor, Scorer
from mllm_dr.serving.security import Authenticator, ForbiddenPath, load_tokens, local_video_path

APP_NAME = "mllm-dr"
logger = logging.getLogger("ray.serve")  # lands in the replica's log file under the Ray session's logs/serve
PAGE = resources.files("mllm_dr.serving").joinpath("static/index.html").read_text(encoding="utf-8")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid bearer token"},
    403: {"description": "video_uri names a local path this server may not read"},
    413: {"description": "the upload (or the referenced video) exceeds the size limit"},
    415: {"description": "neither multipart/form-data nor application/json"},
    422: {"description": "unusable input: corrupt or non-video file, empty upload, bad transcript, too long, ..."},
    504: {"description": "preprocessing and scoring took longer than the request timeout"},
}

app = FastAPI(
    title="MLlm-DR assessment API",
    version=__version__,
    description="Per-item PHQ scores with rationales from a recorded clinical interview. "
                "Decision support for clinicians, not a diagnosis.",
)


class AccessLog:
    """ASGI middleware: one line per request with method, path, status, latency and assessment id only."""

    def __init__(self, asgi_app: Any):
        self.app = asgi_app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            assessment_id = scope.get("state", {}).get("assessment_id")
            logger.info("%s %s %d %.1fms%s", scope["method"], scope["path"], status,
                        (time.perf_counter() - started) * 1000,
                        f" assessment={assessment_id}" if assessment_id else "")


app.add_middleware(AccessLog)


def _raise_for_status(outcome: Outcome) -> Outcome:
    if not outcome.ok:
        raise HTTPException(outcome.status, outcome.reason)
    return outcome


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, preprocessor: DeploymentHandle, scorer: DeploymentHandle, config: ServingConfig):
        self.auth = Authenticator(load_tokens(config.auth.token_file), config.auth.insecure_no_auth)
        self.preprocessor = preprocessor
        self.scorer = scorer
        self.limits = config.limits
        self.preprocessing = config.pipeline_config().feature_settings()
        self._model: dict[str, Any] | None = None

    async def model_description(self) -> dict[str, Any]:
        """The bundle's name, version, questionnaire, ... as the scorer (which has the bundle) reports it."""
        if self._model is None:
            self._model = await self.scorer.describe.remote()
        return self._model

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/healthz", summary="liveness of the HTTP ingress")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", response_model=ModelInfo, responses={401: ERROR_RESPONSES[401]},
             summary="the model bundle behind this endpoint")
    async def model_info(self, request: Request) -> ModelInfo:
        self.auth.check(request)
        model = await self.model_description()
        limits = {"max_upload_mb": self.limits.max_upload_mb, "max_duration_s": self.limits.max_duration_s,
                  "request_timeout_s": self.limits.request_timeout_s}
        return ModelInfo(**model, limits=limits, preprocessing=self.preprocessing,
                         batching=await self.scorer.batch_stats.remote())

    @app.post("/v1/assessments", response_model=Assessment, responses=ERROR_RESPONSES,
              openapi_extra=OPENAPI_REQUEST_BODY, summary="score one interview")
    async def assess(self, request: Request) -> Assessment:
        started = time.perf_counter()
        self.auth.check(request)
        assessment_id = uuid.uuid4().hex
        request.state.assessment_id = assessment_id
        parsed = await read_assessment_request(request, self.limits.max_upload_bytes)
        model = await self.model_description()
        record = self._blank_record(assessment_id, parsed, model)
        timeout = self.limits.request_timeout_s
        try:
            timing = await asyncio.wait_for(self._preprocess_and_score(record, parsed), timeout)
        except TimeoutError:
            raise HTTPException(504, f"the assessment took longer than the {timeout:g} s limit") from None
        except HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - our fault, not the input's: log where, never the message
            logger.error("assessment %s failed: %s\n%s", assessment_id, type(exc).__name__,
                         "".join(traceback.format_tb(exc.__traceback__)))
            raise HTTPException(500, f"internal error (assessment {assessment_id})") from None
        score, timing_ms = timing
        timing_ms["total"] = round((time.perf_counter() - started) * 1000, 1)
        return Assessment(**score, assessment_id=assessment_id,
                          model={"name": model["name"], "version": model["version"]}, timing_ms=timing_ms)

    def _blank_record(self, assessment_id: str, parsed: AssessmentRequest, model: dict[str, Any]) -> InterviewRecord:
        """Check the request's options and video_uri before any work, and start its record."""
        questionnaire = (parsed.questionnaire or model["questionnaire"]).lower().replace("-", "")
        if questionnaire != model["questionnaire"]:
            raise HTTPException(422, f"this model scores {model['questionnaire']}, not {parsed.questionnaire!r}")
        language = (parsed.language or model["language"]).lower()
        if language not in LANGUAGES:
            raise HTTPException(422, f"unsupported language {parsed.language!r} (supported: {', '.join(LANGUAGES)})")
        if parsed.video_uri:
            try:
                local = local_video_path(parsed.video_uri, self.limits.local_video_roots)
            except ForbiddenPath as exc:
                raise HTTPException(403, str(exc)) from None
            except UserError as exc:
                raise HTTPException(422, str(exc)) from None
            if local is None and not parsed.video_uri.startswith(("s3://", "s3a://")):
                raise HTTPException(422, "video_uri must be an s3:// URI or an allowed local path")
        return InterviewRecord(interview_id=assessment_id, site="api", language=language,
                               questionnaire=questionnaire, transcript=parsed.transcript)

    async def _preprocess_and_score(self, record: InterviewRecord,
                                    parsed: AssessmentRequest) -> tuple[dict[str, Any], dict[str, float]]:
        timing_ms: dict[str, float] = {}
        if parsed.video is not None or parsed.video_uri:
            started = time.perf_counter()
            job = MediaJob(record.interview_id, parsed.video, parsed.video_suffix, parsed.video_uri)
            media: InterviewRecord = _raise_for_status(await self.preprocessor.process.remote(job)).value
            timing_ms["preprocess"] = round((time.perf_counter() - started) * 1000, 1)
            for name in ("audio", "audio_rate", "video", "video_rate", "duration_s", "encoders", "source_sha256"):
                setattr(record, name, getattr(media, name))
        started = time.perf_counter()
        scored = _raise_for_status(await self.scorer.score.remote(record))
        timing_ms["score"] = round((time.perf_counter() - started) * 1000, 1)
        timing_ms["model"] = scored.model_ms
        return scored.value, timing_ms


def build_app(args: dict[str, Any]) -> Application:
    """The application builder for ``import_path: mllm_dr.serving.app:build_app`` (``args``: ServingConfig)."""
    config = args if isinstance(args, ServingConfig) else parse_serving_config(dict(args), "application args")
    from mllm_dr.model.bundle import read_bundle_description

    config = config.with_absolute_paths()
    config = config.with_training_pipeline(read_bundle_description(config.model.bundle))
    preprocessor = Preprocessor.options(**config.preprocessor.serve_options()).bind(config)
    scorer = Scorer.options(**config.scorer.serve_options()).bind(config)
    ingress = Ingress.options(**config.ingress.serve_options(), logging_config={"enable_access_log": False})
    return ingress.bind(preprocessor, scorer, config)


def main(args: argparse.Namespace) -> int:
    """``mllm-dr serve``: a local Ray, Serve on ``--host:--port``, until Ctrl-C."""
    import ray

    from mllm_dr.model.bundle import read_bundle_description

    raw, http_options = read_serve_config_file(args.config) if args.config else ({}, {})
    raw = {**raw, "model": {**raw.get("model", {}), "bundle": args.model}}
    if args.insecure_no_auth:
        raw["auth"] = {**raw.get("auth", {}), "insecure_no_auth": True}
    config = parse_serving_config(raw, f"serving config{f' {args.config}' if args.config else ''}")
    Authenticator(load_tokens(config.auth.token_file), config.auth.insecure_no_auth)  # refuse early, here
    # A wrong --model or a pipeline the model was not trained with is a one-line error, not a failed deployment.
    config.with_training_pipeline(read_bundle_description(config.model.bundle))
    if config.auth.insecure_no_auth:
        print("warning: authentication is OFF (--insecure-no-auth); anyone who can reach the port can use it")
    host = args.host or http_options.get("host", "127.0.0.1")
    port = args.port or http_options.get("port", 8000)
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        print(f"serving on http://{host}:{port}/ (API docs at /docs); Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
