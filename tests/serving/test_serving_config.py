"""The serving config files: valid Ray Serve configs whose args are valid ServingConfigs."""

from __future__ import annotations

import os

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from mllm_dr.config import PreprocessConfig
from mllm_dr.errors import UserError
from mllm_dr.serving.config import ServingConfig, parse_serving_config, read_serve_config_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", ["config.yaml", "local.yaml"])
def test_serve_config_files_validate(name):
    path = os.path.join(REPO, "serve", name)
    with open(path) as f:
        ServeDeploySchema.model_validate(yaml.safe_load(f))
    args, http_options = read_serve_config_file(path)
    config = parse_serving_config(args)
    assert http_options["port"] == 8000
    assert config.scorer.max_ongoing_requests >= config.scorer.max_batch_size
    if name == "config.yaml":  # the cluster one: GPU scorer that autoscales, auth from a file
        assert config.scorer.num_gpus >= 1 and config.scorer.autoscaling.max_replicas > 1
        assert config.auth.token_file and not config.auth.insecure_no_auth
    else:
        assert config.scorer.num_gpus == 0


def test_config_rejects_batches_that_cannot_fill_and_unknown_keys():
    with pytest.raises(UserError, match="max_batch_size"):
        parse_serving_config({"model": {"bundle": "b"}, "scorer": {"max_batch_size": 8, "max_ongoing_requests": 4}})
    with pytest.raises(UserError, match="max_upload"):
        parse_serving_config({"model": {"bundle": "b"}, "limits": {"max_upload": 3}})
    with pytest.raises(UserError, match="min_replicas"):
        parse_serving_config({"model": {"bundle": "b"}, "scorer": {"autoscaling": {"min_replicas": 3,
                                                                                   "max_replicas": 2}}})


def test_pipeline_limits_never_looser_than_serving_limits():
    config = ServingConfig.model_validate({"model": {"bundle": "b"},
                                          "limits": {"max_duration_s": 60, "max_upload_mb": 10}})
    limits = config.pipeline_config().media.limits
    assert limits.max_duration_s == 60 and limits.max_file_mb == 10


def test_serve_options_carry_autoscaling_gpus_and_shutdown():
    config = ServingConfig.model_validate({"model": {"bundle": "b"}, "scorer": {
        "num_gpus": 1, "max_batch_size": 4, "max_ongoing_requests": 8, "graceful_shutdown_timeout_s": 90,
        "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4}}})
    options = config.scorer.serve_options()
    assert options["ray_actor_options"]["num_gpus"] == 1
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4}
    assert options["max_ongoing_requests"] == 8 and options["graceful_shutdown_timeout_s"] == 90


def test_pipeline_comes_from_the_bundle_and_must_make_its_features():
    trained = PreprocessConfig.model_validate({"media": {"frame_size": 96},
                                              "encoders": {"visual": {"weights": "/train/resnet18.pth"}}})
    description = {"metadata": {"preprocess": trained.model_dump(mode="json")}}
    plain = ServingConfig.model_validate({"model": {"bundle": "b"}, "limits": {"max_duration_s": 60}})
    settled = plain.with_training_pipeline(description)
    assert settled.pipeline_config().feature_settings() == trained.feature_settings()
    assert settled.pipeline_config().media.limits.max_duration_s == 60  # serving limits still apply
    assert plain.with_training_pipeline({"metadata": {}}).pipeline_config() == plain.pipeline_config()
    # Given explicitly: the same features with the encoder weights elsewhere is fine; other features are not.
    moved = trained.model_copy(deep=True)
    moved.encoders.visual.weights = "/serve/resnet18.pth"
    explicit = plain.model_copy(update={"preprocessor": plain.preprocessor.model_copy(update={"pipeline": moved})})
    assert explicit.with_training_pipeline(description).preprocessor.pipeline.encoders.visual.weights == (
        "/serve/resnet18.pth")
    other = moved.model_copy(deep=True)
    other.media.frame_size, other.encoders.audio.n_mels = 224, 40
    wrong = plain.model_copy(update={"preprocessor": plain.preprocessor.model_copy(update={"pipeline": other})})
    with pytest.raises(UserError, match=r"\(audio\.n_mels, frame_size differ\)"):
        wrong.with_training_pipeline(description)
    with pytest.raises(UserError, match="recorded preprocessing is not valid"):
        plain.with_training_pipeline({"metadata": {"preprocess": {"media": {"frame_rate": -1}}}})
