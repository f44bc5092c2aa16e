"""The serving configuration: model bundle, request limits, auth and one section per Serve deployment.

It is the ``args`` block of a Ray Serve config file (``serve/config.yaml``, ``serve/local.yaml``), so the same
typed data drives ``serve run`` / ``serve deploy`` on a cluster and ``mllm-dr serve`` on a laptop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from mllm_dr.config import PreprocessConfig, StrictModel, describe_validation_error, read_yaml_mapping
from mllm_dr.errors import UserError


class ModelSource(StrictModel):
    bundle: str = Field(description="model bundle directory (mllm_dr.json, adapter/, tokenizer/, ...)")
    base_llm: str | None = Field(None, description="base LLM directory; overrides the one recorded in the bundle")


class Limits(StrictModel):
    """What one request may cost. Anything beyond is refused with a 4xx and the limit in the reason."""

    max_upload_mb: float = Field(512, gt=0, description="largest accepted request body, MiB")
    max_duration_s: float = Field(3600, gt=0, description="longest accepted interview, seconds")
    request_timeout_s: float = Field(600, gt=0, description="preprocessing + scoring wall-clock limit, seconds")
    local_video_roots: list[str] = Field(
        default_factory=list,
        description="folders a JSON request's video_uri may point into as a local path (empty: local paths refused)")
    upload_tmp_dir: str | None = Field(None, description="parent of the private per-request upload folders "
                                                          "(default: the system temp dir)")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class Auth(StrictModel):
    token_file: str | None = Field(
        None, description="file with one bearer token per line (added to those in $MLLM_DR_API_TOKENS)")
    insecure_no_auth: bool = Field(False, description="accept requests without a token (local use only)")


class Autoscaling(StrictModel):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2, gt=0, description="ongoing requests per replica Serve aims for")

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class DeploymentOptions(StrictModel):
    """The Serve options every deployment takes; ``serve_options()`` turns them into ``.options(**...)``."""

    num_cpus: float = Field(1, ge=0)
    max_ongoing_requests: int = Field(4, gt=0, description="requests one replica holds at once")
    autoscaling: Autoscaling = Autoscaling()
    graceful_shutdown_timeout_s: float = Field(30, ge=0, description="time in-flight requests get on scale-down")
    health_check_period_s: float = Field(10, gt=0)
    health_check_timeout_s: float = Field(30, gt=0)

    def serve_options(self) -> dict[str, Any]:
        return {
            "ray_actor_options": {"num_cpus": self.num_cpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "autoscaling_config": self.autoscaling.model_dump(),
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }


class PreprocessorOptions(DeploymentOptions):
    pipeline: PreprocessConfig | None = Field(
        None,
        description="the preprocessing (media, encoders) to run on uploads; default: the one recorded in the "
                    "bundle by training. If given it must make the same features (encoder file locations may "
                    "differ). Its media limits are tightened to the serving limits")


class ScorerOptions(DeploymentOptions):
    max_ongoing_requests: int = Field(16, gt=0, description="at least max_batch_size, so a batch can fill")
    num_gpus: float = Field(0, ge=0, description="GPUs per scorer replica (0: CPU)")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="default: the bundle's")
    max_batch_size: int = Field(8, gt=0, description="interviews scored in one model call")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="how long a partial batch waits for company")
    generate: bool = Field(True, description="generate rationales (False: regression scores only, faster)")
    max_new_tokens: int = Field(96, gt=0, description="generated tokens per item (score + rationale)")

    @model_validator(mode="after")
    def _batch_fits(self) -> ScorerOptions:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be at least max_batch_size "
                             f"({self.max_batch_size}), or a batch can never fill")
        return self

    def serve_options(self) -> dict[str, Any]:
        options = super().serve_options()
        options["ray_actor_options"]["num_gpus"] = self.num_gpus
        return options


class ServingConfig(StrictModel):
    model: ModelSource
    limits: Limits = Limits()
    auth: Auth = Auth()
    # Defaults fit one 2-core machine (1.6 CPUs in all); serve/config.yaml sizes a GPU cluster.
    ingress: DeploymentOptions = DeploymentOptions(
        num_cpus=0.1, max_ongoing_requests=64, autoscaling=Autoscaling(target_ongoing_requests=32))
    preprocessor: PreprocessorOptions = PreprocessorOptions(
        num_cpus=0.5, max_ongoing_requests=2, autoscaling=Autoscaling(target_ongoing_requests=1))
    scorer: ScorerOptions = ScorerOptions(autoscaling=Autoscaling(target_ongoing_requests=8))

    def with_absolute_paths(self) -> ServingConfig:
        """Relative local paths resolved where the config is read: replicas do not share the reader's cwd."""
        config = self.model_copy(deep=True)
        config.model.bundle = _absolute(config.model.bundle)
        config.model.base_llm = _absolute(config.model.base_llm)
        config.auth.token_file = _absolute(config.auth.token_file)
        config.limits.upload_tmp_dir = _absolute(config.limits.upload_tmp_dir)
        config.limits.local_video_roots = [_absolute(root) for root in config.limits.local_video_roots]
        return config

    def with_training_pipeline(self, bundle_description: dict[str, Any]) -> ServingConfig:
        """This config with ``preprocessor.pipeline`` settled against the preprocessing the bundle was trained
        with (``metadata.preprocess`` in its mllm_dr.json): taken from the bundle when not given, checked when
        given. A model fed features of another kind scores nonsense with no error, hence the refusal."""
        recorded = (bundle_description.get("metadata") or {}).get("preprocess")
        if recorded is None:
            return self
        try:
            trained = PreprocessConfig.model_validate(recorded)
        except ValidationError as exc:
            raise UserError(f"the bundle's recorded preprocessing is not valid here: "
                            f"{describe_validation_error(exc)}") from None
        config = self.model_copy(deep=True)
        if config.preprocessor.pipeline is None:
            config.preprocessor.pipeline = trained
            return config
        differences = _differences(config.preprocessor.pipeline.feature_settings(), trained.feature_settings())
        if differences:
            raise UserError(f"preprocessor.pipeline makes other features than the model was trained on "
                            f"({', '.join(differences)} differ); remove preprocessor.pipeline to use the bundle's")
        return config

    def pipeline_config(self) -> PreprocessConfig:
        """The preprocessing config with media limits no looser than the serving limits."""
        pipeline = (self.preprocessor.pipeline or PreprocessConfig()).model_copy(deep=True)
        limits = pipeline.media.limits
        limits.max_duration_s = min(limits.max_duration_s, self.limits.max_duration_s)
        limits.max_file_mb = min(limits.max_file_mb, self.limits.max_upload_mb)
        limits.decode_timeout_s = min(limits.decode_timeout_s, self.limits.request_timeout_s)
        return pipeline


# Where an encoder's files live differs between the preprocessing and the serving machines; what they are does not.
_LOCATIONS = frozenset({"weights", "path"})


def _differences(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested settings mappings (file locations excepted)."""
    found = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if key in _LOCATIONS:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def _absolute(path: str | None) -> str | None:
    return path if not path or "://" in path else os.path.abspath(os.path.expanduser(path))


def parse_serving_config(args: dict[str, Any], where: str = "serving config") -> ServingConfig:
    try:
        return ServingConfig.model_validate(args)
    except ValidationError as exc:
        raise UserError(f"invalid {where}: {describe_validation_error(exc)}") from None


def read_serve_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(args, http_options)`` of the one application in a Ray Serve config file such as serve/local.yaml."""
    data = read_yaml_mapping(path)
    applications = data.get("applications")
    if not isinstance(applications, list) or len(applications) != 1 or not isinstance(applications[0], dict):
        raise UserError(f"{path}: expected a Ray Serve config file with exactly one entry under 'applications'")
    args = applications[0].get("args") or {}
    if not isinstance(args, dict):
        raise UserError(f"{path}: applications[0].args must be a mapping")
    return args, data.get("http_options") or {}
