"""Feature encoders: a waveform or sampled frames in, a float16 ``[T, D]`` feature sequence out.

Audio: a log-mel filterbank that needs no weights (the default), or a Hugging Face speech encoder
(wav2vec2 / HuBERT / WavLM family) from a local directory. Visual: a torchvision CNN with its classifier
removed (weights from a local state-dict file, or a seeded random init), or a Hugging Face vision model from
a local directory. Nothing is ever downloaded.

Every encoder has ``name``, ``dim``, ``rate`` (output frames per second) and ``describe()`` (what goes into
the feature store's ``encoders`` JSON, including a hash of the weights so a result can be traced to them),
and ``encode(...)``, batched, under ``torch.inference_mode``, on the given device (the GPU when there is one).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mllm_dr.config import AUDIO_SAMPLE_RATE, AudioEncoderConfig, VisualEncoderConfig
from mllm_dr.errors import UserError

RANDOM_INIT = "random-init"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class AudioEncoder(Protocol):
    name: str
    dim: int
    rate: float  # output frames per second

    def describe(self) -> dict[str, Any]: ...

    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """float32 mono waveform at ``AUDIO_SAMPLE_RATE`` → float16 ``[T, dim]``."""
        ...


class VisualEncoder(Protocol):
    name: str
    dim: int
    rate: float  # output frames per second: one feature per input frame, so the sampling frame rate

    def describe(self) -> dict[str, Any]: ...

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames ``[T, H, W, 3]`` → float16 ``[T, dim]``."""
        ...


def build_audio_encoder(cfg: AudioEncoderConfig, device: str | torch.device | None = None) -> AudioEncoder:
    device = resolve_device(device)
    if cfg.kind == "logmel":
        return LogMelEncoder(cfg.n_mels, cfg.frame_rate, cfg.normalize, device)
    directory = _local_model_dir(cfg.path, "encoders.audio.path")
    return HFSpeechEncoder(directory, cfg.layer, cfg.batch_seconds, device)


def build_visual_encoder(cfg: VisualEncoderConfig, device: str | torch.device | None = None,
                         frame_rate: float = 1.0) -> VisualEncoder:
    """``frame_rate`` is the rate frames were sampled at (``config.media.frame_rate``): the output's rate."""
    device = resolve_device(device)
    if cfg.kind == "torchvision":
        return TorchvisionEncoder(cfg.arch, cfg.weights, cfg.seed, cfg.batch_size, frame_rate, device)
    directory = _local_model_dir(cfg.path, "encoders.visual.path")
    return HFVisionEncoder(directory, cfg.batch_size, frame_rate, device)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else the GPU when there is one, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


# --- audio: log-mel filterbank ---------------------------------------------------------------------------


class LogMelEncoder:
    """Log mel-band power, one frame per ``1 / rate`` seconds: frame ``k`` is centred on ``(k + 0.5) / rate``.

    A window of 25 ms (or one hop, when hops are longer) and HTK mel bands from 0 Hz to Nyquist. Long audio is
    processed in chunks, so memory stays flat for multi-hour interviews.
    """

    kind = "logmel"

    def __init__(self, n_mels: int = 80, frame_rate: float = 50.0, normalize: bool = False,
                 device: str | torch.device = "cpu", chunk_frames: int = 6000) -> None:
        self.hop = round(AUDIO_SAMPLE_RATE / frame_rate)
        if self.hop < 1:
            raise UserError(f"encoders.audio.frame_rate {frame_rate} exceeds the sample rate")
        self.win = max(round(0.025 * AUDIO_SAMPLE_RATE), self.hop)
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.name, self.dim, self.rate = "logmel", n_mels, AUDIO_SAMPLE_RATE / self.hop
        self.normalize, self.chunk_frames = normalize, chunk_frames
        self.device = torch.device(device)
        self.mel_centers_hz, filters = mel_filterbank(n_mels, self.n_fft, AUDIO_SAMPLE_RATE)
        self._filters = torch.from_numpy(filters).to(self.device)
        self._window = torch.hann_window(self.win, periodic=True, device=self.device)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "weights": None, "dim": self.dim, "rate": self.rate,
                "hop": self.hop, "win": self.win, "n_fft": self.n_fft, "normalize": self.normalize}

    @torch.inference_mode()
    def encode(self, waveform: np.ndarray) -> np.ndarray:
        samples = _as_mono(waveform)
        frames = len(samples) // self.hop
        if frames == 0:
            return np.zeros((0, self.dim), np.float16)
        left = self.n_fft // 2 - self.hop // 2
        right = max(0, (frames - 1) * self.hop + self.n_fft - left - len(samples))
        mode = "reflect" if len(samples) > max(left, right) else "constant"
        padded = torch.from_numpy(np.pad(samples, (left, right), mode=mode))
        chunks = []
        for first in range(0, frames, self.chunk_frames):
            last = min(frames, first + self.chunk_frames)
            segment = padded[first * self.hop:(last - 1) * self.hop + self.n_fft].to(self.device)
            spectrum = torch.stft(segment, self.n_fft, self.hop, self.win, self._window, center=False,
                                  return_complex=True)
            power = spectrum.real.square() + spectrum.imag.square()  # [freq, frames]
            chunks.append(torch.log((power.T @ self._filters).clamp_min(1e-10)))
        features = torch.cat(chunks)
        if self.normalize:
            features = (features - features.mean(0)) / (features.std(0, unbiased=False) + 1e-5)
        return features.to(torch.float16).cpu().numpy()


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """HTK-mel triangles, area-normalised: (centres in Hz [n_mels], weights [n_fft // 2 + 1, n_mels])."""
    top_mel = 2595.0 * np.log10(1.0 + (sample_rate / 2) / 700.0)
    edges = 700.0 * (10.0 ** (np.linspace(0.0, top_mel, n_mels + 2) / 2595.0) - 1.0)
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)[:, None]
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return centre, weights.astype(np.float32)


def _as_mono(waveform: np.ndarray) -> np.ndarray:
    samples = np.asarray(waveform, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected a mono waveform [samples], got shape {samples.shape}")
    return samples


# --- audio: Hugging Face speech encoder ------------------------------------------------------------------


class HFSpeechEncoder:
    """A wav2vec2-style model (convolutional feature encoder + transformer) from a local directory.

    Long audio is cut into windows of about ``batch_seconds``; each window is fed with the few extra samples
    its convolutional receptive field needs, so the windows' outputs join into exactly one frame per stride.
    """

    kind = "hf"

    def __init__(self, directory: str, layer: int = -1, batch_seconds: float = 30.0,
                 device: str | torch.device = "cpu") -> None:
        from transformers import AutoFeatureExtractor

        self.directory, self.device = directory, torch.device(device)
        self.model, _ = _load_hf_model(directory, "speech encoder", self.device)
        config = self.model.config
        kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
        if not kernels or not strides:
            raise UserError(f"{directory}: {config.model_type} is not a wav2vec2/HuBERT-style speech encoder "
                            "(no convolutional feature encoder in its config)")
        self.extractor = _load_hf_processor(directory, "feature extractor", AutoFeatureExtractor)
        extractor_rate = getattr(self.extractor, "sampling_rate", AUDIO_SAMPLE_RATE)
        if extractor_rate != AUDIO_SAMPLE_RATE:
            raise UserError(f"{directory}: the model expects {extractor_rate} Hz audio, the platform decodes "
                            f"{AUDIO_SAMPLE_RATE} Hz")
        self.stride = math.prod(strides)
        self.receptive_field = 1 + sum((k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernels))
        n_states = config.num_hidden_layers + 1
        if not -n_states <= layer < n_states:
            raise UserError(f"encoders.audio.layer {layer} is out of range ({n_states} hidden states)")
        self.layer = layer
        self.window_frames = max(1, round(batch_seconds * AUDIO_SAMPLE_RATE / self.stride))
        self.batch_seconds = batch_seconds
        self.name, self.dim = f"hf:{config.model_type}", config.hidden_size
        self.rate = AUDIO_SAMPLE_RATE / self.stride
        self._digest: str | None = None

    def describe(self) -> dict[str, Any]:
        self._digest = self._digest or _weights_digest(self.directory)
        return {"name": self.name, "kind": self.kind, "path": self.directory, "weights": self._digest,
                "dim": self.dim, "rate": self.rate, "layer": self.layer, "batch_seconds": self.batch_seconds}

    @torch.inference_mode()
    def encode(self, waveform: np.ndarray) -> np.ndarray:
        samples = _as_mono(waveform)
        frames = len(samples) // self.stride
        if frames == 0:
            return np.zeros((0, self.dim), np.float16)
        windows = math.ceil(frames / self.window_frames)
        bounds = np.linspace(0, frames, windows + 1).round().astype(int)
        extra = self.receptive_field - self.stride
        outputs = []
        for first, last in itertools.pairwise(bounds):
            length = (last - first) * self.stride + extra
            segment = samples[first * self.stride:first * self.stride + length]
            segment = np.pad(segment, (0, length - len(segment)))
            inputs = self.extractor(segment, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")
            with _autocast(self.device):
                output = self.model(**inputs.to(self.device), output_hidden_states=True)
            hidden = output.hidden_states[self.layer]
            outputs.append(hidden[0, :last - first].float())
        return torch.cat(outputs).to(torch.float16).cpu().numpy()


# --- visual: torchvision CNN -----------------------------------------------------------------------------


class TorchvisionEncoder:
    """A torchvision classifier with its final linear layer removed: one pooled embedding per frame."""

    kind = "torchvision"

    def __init__(self, arch: str = "resnet18", weights: str | None = None, seed: int = 0,
                 batch_size: int = 32, frame_rate: float = 1.0, device: str | torch.device = "cpu") -> None:
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a seeded random init: stores built with it stay comparable
            try:
                model = torchvision.models.get_model(arch, weights=None)
            except ValueError:
                raise UserError(f"encoders.visual.arch: unknown torchvision architecture {arch!r}") from None
        head, self.dim = _remove_classifier(model, arch)
        if weights:
            _load_state_dict(model, weights, head, arch)
        self.arch, self.weights, self.seed, self.batch_size = arch, weights, seed, batch_size
        self.name, self.rate = f"torchvision:{arch}", frame_rate
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self._mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._digest: str | None = None

    def describe(self) -> dict[str, Any]:
        if self.weights:
            self._digest = self._digest or _weights_digest(self.weights)
        return {"name": self.name, "kind": self.kind, "arch": self.arch,
                "weights": self._digest if self.weights else RANDOM_INIT,
                "seed": None if self.weights else self.seed, "dim": self.dim, "rate": self.rate}

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = _as_frames(frames)
        outputs = [torch.zeros((0, self.dim))]
        for batch in _batches(frames, self.batch_size):
            pixels = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            with _autocast(self.device):
                outputs.append(self.model((pixels - self._mean) / self._std).float().flatten(1).cpu())
        return torch.cat(outputs).to(torch.float16).numpy()


def _remove_classifier(model: nn.Module, arch: str) -> tuple[str, int]:
    """Replace the last linear layer of the classifier head with identity; return its name and input width."""
    for attribute in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attribute, None)
        if head is None:
            continue
        linears = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            break
        name, layer = linears[-1]
        qualified = f"{attribute}.{name}" if name else attribute
        parent = model.get_submodule(qualified.rsplit(".", 1)[0]) if "." in qualified else model
        setattr(parent, qualified.rsplit(".", 1)[-1], nn.Identity())
        return qualified, layer.in_features
    raise UserError(f"encoders.visual.arch: {arch} has no linear classifier to remove (try resnet18)")


def _load_state_dict(model: nn.Module, path: str, head: str, arch: str) -> None:
    """Load a local state dict; the removed classifier's weights (any number of classes) are ignored."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise UserError(f"encoders.visual.weights: no such file {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and safetensors each raise their own types
        raise UserError(f"{name}: not a readable PyTorch state dict ({type(exc).__name__})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{name}: not a PyTorch state dict (a mapping of parameter names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    state = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        shapes = sum("size mismatch" in line for line in str(exc).splitlines())
        raise UserError(f"{name}: weights do not match {arch} ({shapes} tensors of another shape)") from None
    if result.missing_keys or result.unexpected_keys:
        example = (result.missing_keys or result.unexpected_keys)[0]
        raise UserError(f"{name}: weights do not match {arch} ({len(result.missing_keys)} missing, "
                        f"{len(result.unexpected_keys)} unexpected parameters, e.g. {example})")


# --- visual: Hugging Face vision model -------------------------------------------------------------------


class HFVisionEncoder:
    """A Hugging Face image model from a local directory: its pooled output, or the CLS token without one."""

    kind = "hf"

    def __init__(self, directory: str, batch_size: int = 32, frame_rate: float = 1.0,
                 device: str | torch.device = "cpu") -> None:
        from transformers import AutoImageProcessor

        self.directory, self.batch_size, self.device = directory, batch_size, torch.device(device)
        self.model, missing = _load_hf_model(directory, "vision model", self.device)
        # A pooler absent from the checkpoint would be random: fall back to the CLS token then.
        self.use_pooler = not any(key.startswith("pooler.") for key in missing)
        self.processor = _load_hf_processor(directory, "image processor", AutoImageProcessor)
        self.name, self.rate = f"hf:{self.model.config.model_type}", frame_rate
        try:
            self.dim = int(self._embed(np.zeros((1, 64, 64, 3), np.uint8)).shape[1])
        except Exception as exc:  # noqa: BLE001 - any failure here means the directory holds the wrong kind of model
            raise UserError(f"{directory}: {self.model.config.model_type} does not embed images "
                            f"({type(exc).__name__})") from None
        self._digest: str | None = None

    def describe(self) -> dict[str, Any]:
        self._digest = self._digest or _weights_digest(self.directory)
        return {"name": self.name, "kind": self.kind, "path": self.directory, "weights": self._digest,
                "dim": self.dim, "rate": self.rate, "pooling": "pooler" if self.use_pooler else "cls"}

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = _as_frames(frames)
        outputs = [torch.zeros((0, self.dim))]
        outputs += [self._embed(batch) for batch in _batches(frames, self.batch_size)]
        return torch.cat(outputs).to(torch.float16).numpy()

    @torch.inference_mode()
    def _embed(self, frames: np.ndarray) -> torch.Tensor:
        pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"].to(self.device)
        with _autocast(self.device):
            output = self.model(pixel_values=pixels)
        pooled = getattr(output, "pooler_output", None) if self.use_pooler else None
        if pooled is None:
            hidden = output.last_hidden_state
            pooled = hidden[:, 0] if hidden.ndim == 3 else hidden.mean(dim=(2, 3))
        return pooled.float().flatten(1).cpu()


# --- shared helpers --------------------------------------------------------------------------------------

# Parameters a checkpoint may legitimately lack: a pooler (then unused) and wav2vec2's pre-training mask.
_OPTIONAL_PARAMETERS = ("pooler.", "masked_spec_embed")


def _local_model_dir(path: str | None, field: str) -> str:
    if not path:
        raise UserError(f"{field} is required for kind=hf (a local Hugging Face model directory)")
    local = path.removeprefix("file://")
    if "://" in local:
        raise UserError(f"{field}: {path} must be a local directory (copy the model to each worker)")
    if not os.path.isdir(local):
        raise UserError(f"{field}: no such directory {path}")
    if not os.path.isfile(os.path.join(local, "config.json")):
        raise UserError(f"{field}: {path} is not a Hugging Face model directory (no config.json)")
    return local


def _load_hf_model(directory: str, what: str, device: torch.device) -> tuple[nn.Module, set[str]]:
    """``AutoModel.from_pretrained`` that refuses a checkpoint whose weights do not fit the architecture."""
    from transformers import AutoModel

    model, info = _hf_call(directory, what, AutoModel.from_pretrained, directory, output_loading_info=True)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(_OPTIONAL_PARAMETERS))
    if missing:
        raise UserError(f"{directory}: weights do not match the {model.config.model_type} architecture "
                        f"({len(missing)} parameters missing from the checkpoint, e.g. {missing[0]})")
    return model.eval().to(device), set(info.get("missing_keys", ()))


def _load_hf_processor(directory: str, what: str, auto_class: Any) -> Any:
    if not os.path.isfile(os.path.join(directory, "preprocessor_config.json")):
        raise UserError(f"{directory}: no preprocessor_config.json (save the model's {what} beside it)")
    return _hf_call(directory, what, auto_class.from_pretrained, directory)


def _hf_call(directory: str, what: str, loader: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return loader(*args, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "ignore_mismatched_sizes" in reason:
            reason = "weights do not match the architecture in config.json: tensors of the wrong shape"
        raise UserError(f"{directory}: cannot load a Hugging Face {what} ({reason})") from None


def _weights_digest(path: str) -> str:
    """sha256 (16 hex digits) of a weights file, or of a model directory's weight files in name order."""
    files = [Path(path)] if os.path.isfile(path) else sorted(
        p for p in Path(path).iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _as_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def _batches(frames: np.ndarray, size: int) -> Iterable[np.ndarray]:
    for first in range(0, len(frames), size):
        yield np.ascontiguousarray(frames[first:first + size])


def _autocast(device: torch.device) -> torch.autocast:
    """Half precision on GPU (features are stored as float16 anyway), full precision on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda")
