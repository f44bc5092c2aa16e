"""Typed configuration, validated at the edge: YAML files and ``--set a.b=c`` overrides become pydantic models.

Each stage owns its config model (preprocessing's lives here because sources, media, features and the
pipeline all read it); every model rejects unknown keys so a typo fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mllm_dr.errors import UserError

AUDIO_SAMPLE_RATE = 16_000


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class MediaLimits(StrictModel):
    """Inputs outside these limits become error rows with a reason instead of exhausting a worker."""

    max_file_mb: float = Field(4096, gt=0, description="largest accepted media file, MiB")
    max_duration_s: float = Field(4 * 3600, gt=0, description="longest accepted interview, seconds")
    max_width: int = Field(7680, gt=0, description="largest accepted frame width, pixels")
    max_height: int = Field(4320, gt=0, description="largest accepted frame height, pixels")
    decode_timeout_s: float = Field(1800, gt=0, description="per-file wall-clock limit for decoding")


class MediaConfig(StrictModel):
    frame_rate: float = Field(1.0, gt=0, description="video frames sampled per second")
    frame_size: int = Field(224, gt=0, description="sampled frames are resized to frame_size x frame_size")
    decode_threads: int = Field(0, ge=0, description="FFmpeg frame threads per decode (0 = FFmpeg's choice)")
    limits: MediaLimits = MediaLimits()


class AudioEncoderConfig(StrictModel):
    kind: Literal["logmel", "hf"] = "logmel"
    path: str | None = Field(None, description="local Hugging Face model directory (kind=hf)")
    n_mels: int = Field(80, gt=0)
    frame_rate: float = Field(50.0, gt=0, description="log-mel feature frames per second (hop = 16000 / rate)")
    layer: int = Field(-1, description="hidden layer to keep (kind=hf)")
    batch_seconds: float = Field(30.0, gt=0, description="audio window per encoder call (kind=hf)")
    normalize: bool = Field(False, description="per-utterance mean/variance normalisation of each mel band "
                            "(kind=logmel; off by default because it removes loudness differences between interviews)")


class VisualEncoderConfig(StrictModel):
    kind: Literal["torchvision", "hf"] = "torchvision"
    arch: str = Field("resnet18", description="torchvision architecture (kind=torchvision)")
    weights: str | None = Field(None, description="local .pth state dict; random init when absent (kind=torchvision)")
    path: str | None = Field(None, description="local Hugging Face vision model directory (kind=hf)")
    batch_size: int = Field(32, gt=0, description="frames per encoder call")
    seed: int = Field(0, description="seed of the random initialisation when no weights are given (kind=torchvision)")


class EncodersConfig(StrictModel):
    audio: AudioEncoderConfig = AudioEncoderConfig()
    visual: VisualEncoderConfig = VisualEncoderConfig()
    num_gpus: float = Field(0, ge=0, description="GPUs per encoder actor (0 = CPU)")
    workers: int = Field(1, ge=1, description="encoder actors")


class CorpusConfig(StrictModel):
    visual_stream: Literal["resnet", "openface"] = Field(
        "resnet", description="E-DAIC-WOZ visual features to keep: ResNet face embeddings or OpenFace")
    clnf_streams: list[Literal["features", "features3D", "AUs", "pose", "gaze"]] = Field(
        ["features", "AUs", "pose", "gaze"], min_length=1,
        description="DAIC-WOZ CLNF files joined frame by frame, in this order, as the visual features")
    split_seed: int = Field(0, description="seed of the subject-level split for corpora without one")
    split_fractions: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train/dev/test")
    leave_site_out: str | None = Field(None, description="make this site the test split, the others train/dev")


class PreprocessConfig(StrictModel):
    media: MediaConfig = MediaConfig()
    encoders: EncodersConfig = EncodersConfig()
    corpus: CorpusConfig = CorpusConfig()
    decode_workers: int = Field(0, ge=0, description="parallel decoders (0 = one per CPU)")
    sites: list[str] = Field(default_factory=list, description="extra --source entries: [SITE=][FORMAT:]URI")

    def feature_settings(self) -> dict[str, Any]:
        """The values that change the features: rows made with different ones must not share a store, and a
        model must be served with the ones it was trained on."""
        visual = self.encoders.visual.model_dump(mode="json", exclude={"batch_size"})
        audio = self.encoders.audio.model_dump(mode="json", exclude={"batch_seconds"})
        return {"frame_rate": self.media.frame_rate, "frame_size": self.media.frame_size, "audio": audio,
                "visual": visual, "corpus": self.corpus.model_dump(mode="json", include={"visual_stream",
                                                                                         "clnf_streams"})}


ConfigT = TypeVar("ConfigT", bound=StrictModel)


def load_config(model: type[ConfigT], path: str | Path | None = None, overrides: list[str] = ()) -> ConfigT:
    """Read YAML (if given), apply ``a.b=c`` overrides (values parsed as YAML), validate into ``model``."""
    data = read_yaml_mapping(path) if path else {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise UserError(f"--set {override!r}: expected key.path=value")
        _set_path(data, key.split("."), yaml.safe_load(raw) if raw else None)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"invalid config{f' {path}' if path else ''}: {describe_validation_error(exc)}") from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; a missing or malformed file is a one-line UserError."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of keys to values")
    return data


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem of a pydantic error, on one line: ``a.b: message``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _set_path(data: dict[str, Any] | list[Any], keys: list[str], value: Any) -> None:
    """Set ``a.b.c`` in nested mappings; a number indexes a list (``stages.1.epochs=3``)."""
    for key in keys[:-1]:
        node = data[_list_index(data, key, keys)] if isinstance(data, list) else data.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise UserError(f"--set {'.'.join(keys)}: {key} is not a section")
        data = node
    if isinstance(data, list):
        data[_list_index(data, keys[-1], keys)] = value
    else:
        data[keys[-1]] = value


def _list_index(items: list[Any], key: str, keys: list[str]) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise UserError(f"--set {'.'.join(keys)}: {key} is not an index of the {len(items)} list entries")
    return int(key)
