"""Feature encoders: log-mel, torchvision CNNs and Hugging Face speech / vision models built locally."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from mllm_dr.config import AUDIO_SAMPLE_RATE, AudioEncoderConfig, VisualEncoderConfig
from mllm_dr.data.features import RANDOM_INIT, LogMelEncoder, build_audio_encoder, build_visual_encoder
from mllm_dr.errors import UserError

SR = AUDIO_SAMPLE_RATE


def tone(hz: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- log-mel ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frame_rate", "n_mels", "seconds", "expected_frames"),
                         [(50.0, 80, 2.5, 125), (10.0, 40, 2.5, 25), (100.0, 64, 1.0, 100)])
def test_logmel_shape_and_rate(frame_rate, n_mels, seconds, expected_frames):
    encoder = build_audio_encoder(AudioEncoderConfig(frame_rate=frame_rate, n_mels=n_mels), device="cpu")
    features = encoder.encode(tone(440, seconds))
    assert features.shape == (expected_frames, n_mels) and features.dtype == np.float16
    assert encoder.rate == frame_rate and encoder.dim == n_mels and encoder.name == "logmel"
    assert encoder.describe()["rate"] == frame_rate and encoder.describe()["dim"] == n_mels


def test_logmel_rate_is_exact_when_the_hop_is_rounded():
    encoder = build_audio_encoder(AudioEncoderConfig(frame_rate=30.0), device="cpu")
    assert encoder.rate == SR / 533
    assert encoder.encode(tone(440, 2.0)).shape[0] == 2 * SR // 533


def test_logmel_separates_a_low_from_a_high_tone():
    encoder = build_audio_encoder(AudioEncoderConfig(), device="cpu")
    low, high = (encoder.encode(tone(hz, 1.0)).astype(np.float32) for hz in (200, 2000))
    for features, hz in ((low, 200), (high, 2000)):
        peak = encoder.mel_centers_hz[features.mean(0).argmax()]
        assert abs(peak - hz) / hz < 0.1
    # Every frame, edges included, is nearer its own tone's mean frame than the other tone's.
    centroids = np.stack([low.mean(0), high.mean(0)])
    for features, label in ((low, 0), (high, 1)):
        distances = np.linalg.norm(features[:, None] - centroids[None], axis=2)
        assert (distances.argmin(1) == label).all()


def test_logmel_keeps_loudness_unless_normalised():
    raw = build_audio_encoder(AudioEncoderConfig(), device="cpu")
    quiet, loud = raw.encode(tone(300, 1.0, 0.05)), raw.encode(tone(300, 1.0, 0.5))
    peak_band = loud.astype(np.float32).mean(0).argmax()
    assert loud[:, peak_band].astype(np.float32).mean() - quiet[:, peak_band].astype(np.float32).mean() == \
        pytest.approx(2 * np.log(10), abs=0.05)  # power ratio 100
    normalised = build_audio_encoder(AudioEncoderConfig(normalize=True), device="cpu").encode(
        tone(300, 1.0) + np.random.default_rng(0).normal(0, 0.01, SR).astype(np.float32))
    assert np.abs(normalised.astype(np.float32).mean(0)).max() < 0.01


def test_logmel_chunking_is_invisible_and_short_audio_is_empty():
    audio = np.random.default_rng(1).normal(0, 0.1, int(3.3 * SR)).astype(np.float32)
    whole = LogMelEncoder(chunk_frames=10_000).encode(audio)
    chunked = LogMelEncoder(chunk_frames=7).encode(audio)
    np.testing.assert_array_equal(whole, chunked)
    assert LogMelEncoder().encode(np.zeros(100, np.float32)).shape == (0, 80)


# --- torchvision CNN -------------------------------------------------------------------------------------


def reference_embeddings(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    model.fc = torch.nn.Identity()
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()((pixels - mean) / std).numpy()


def test_torchvision_cnn_from_a_local_state_dict(tmp_path):
    torch.manual_seed(123)
    trained = torchvision.models.resnet18(num_classes=7)  # a fine-tuned head of any width is ignored
    path = tmp_path / "resnet18.pth"
    torch.save(trained.state_dict(), path)
    batch = frames(3)

    encoder = build_visual_encoder(VisualEncoderConfig(arch="resnet18", weights=str(path), batch_size=2),
                                   device="cpu", frame_rate=2.0)
    features = encoder.encode(batch)
    assert features.shape == (3, 512) and features.dtype == np.float16
    expected = reference_embeddings(trained, batch)
    np.testing.assert_allclose(features.astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    description = encoder.describe()
    assert description["weights"] not in (RANDOM_INIT, None) and len(description["weights"]) == 16
    assert (encoder.dim, encoder.rate, description["rate"], description["dim"]) == (512, 2.0, 2.0, 512)

    random_init = build_visual_encoder(VisualEncoderConfig(arch="resnet18"), device="cpu")
    assert random_init.describe()["weights"] == RANDOM_INIT
    assert not np.allclose(random_init.encode(batch).astype(np.float32), expected, atol=1e-2)

    # Checkpoint wrappers: {"state_dict": ...} with DataParallel's "module." prefix.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}, "epoch": 3},
               wrapped)
    rewrapped = build_visual_encoder(VisualEncoderConfig(weights=str(wrapped), batch_size=2), device="cpu")
    np.testing.assert_array_equal(rewrapped.encode(batch), features)


def test_torchvision_random_init_is_seeded_and_batch_consistent():
    batch = frames(3, seed=3)
    one = build_visual_encoder(VisualEncoderConfig(batch_size=3, seed=7), device="cpu")
    again = build_visual_encoder(VisualEncoderConfig(batch_size=2, seed=7), device="cpu")
    other = build_visual_encoder(VisualEncoderConfig(batch_size=3, seed=8), device="cpu")
    a, b, c = (e.encode(batch).astype(np.float32) for e in (one, again, other))
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)
    assert not np.allclose(a, c, atol=1e-2)
    assert one.encode(batch[:0]).shape == (0, 512)


def test_other_torchvision_heads_are_removed():
    encoder = build_visual_encoder(VisualEncoderConfig(arch="mobilenet_v3_small"), device="cpu")
    assert encoder.dim == 1024 and encoder.encode(frames(2)).shape == (2, 1024)


def test_torchvision_bad_weights_and_arch(tmp_path):
    mismatched = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), mismatched)
    with pytest.raises(UserError, match="resnet50.pth: weights do not match resnet18"):
        build_visual_encoder(VisualEncoderConfig(weights=str(mismatched)), device="cpu")
    partial = tmp_path / "partial.pth"
    state = torchvision.models.resnet18().state_dict()
    torch.save({k: v for k, v in state.items() if not k.startswith("layer4")}, partial)
    with pytest.raises(UserError, match=r"partial.pth: weights do not match resnet18 \(\d+ missing"):
        build_visual_encoder(VisualEncoderConfig(weights=str(partial)), device="cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth: not a readable PyTorch state dict"):
        build_visual_encoder(VisualEncoderConfig(weights=str(garbage)), device="cpu")
    with pytest.raises(UserError, match="no such file"):
        build_visual_encoder(VisualEncoderConfig(weights=str(tmp_path / "missing.pth")), device="cpu")
    with pytest.raises(UserError, match="unknown torchvision architecture 'resnet19'"):
        build_visual_encoder(VisualEncoderConfig(arch="resnet19"), device="cpu")
    with pytest.raises(UserError, match="no linear classifier"):
        build_visual_encoder(VisualEncoderConfig(arch="squeezenet1_0"), device="cpu")


# --- Hugging Face speech encoders ------------------------------------------------------------------------

TINY_SPEECH = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "conv_dim": (16,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


def save_speech_model(directory, family: str) -> torch.nn.Module:
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    families = {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model), "hubert": (HubertConfig, HubertModel)}
    config_class, model_class = families[family]
    torch.manual_seed(0)
    model = model_class(config_class(**TINY_SPEECH)).eval()
    model.save_pretrained(directory)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True).save_pretrained(directory)
    return model


@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_hf_speech_encoder_from_a_local_directory(tmp_path, family):
    model = save_speech_model(tmp_path, family)
    audio = np.random.default_rng(0).normal(0, 0.1, 3 * SR + 123).astype(np.float32)

    config = AudioEncoderConfig(kind="hf", path=str(tmp_path), layer=1, batch_seconds=1.0)
    encoder = build_audio_encoder(config, device="cpu")
    features = encoder.encode(audio)
    assert (encoder.name, encoder.dim, encoder.rate) == (f"hf:{family}", 32, 50.0)
    assert features.shape == (len(audio) // 320, 32) and features.dtype == np.float16

    # The first 1-second window, with the 80 samples of receptive field it needs, through the model directly.
    window = audio[:50 * 320 + 80]
    window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    with torch.no_grad():
        hidden_states = model(torch.from_numpy(window)[None], output_hidden_states=True).hidden_states
    expected, last = hidden_states[1][0].numpy(), hidden_states[-1][0].numpy()
    assert expected.shape[0] == 50
    np.testing.assert_allclose(features[:50].astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    assert not np.allclose(features[:50].astype(np.float32), last, atol=1e-2)  # layer 1 kept, not the last

    description = encoder.describe()
    assert description["weights"] != RANDOM_INIT and len(description["weights"]) == 16
    assert description["layer"] == 1
    assert encoder.encode(np.zeros(100, np.float32)).shape == (0, 32)


def test_hf_speech_encoder_bad_directories(tmp_path):
    with pytest.raises(UserError, match="encoders.audio.path is required"):
        build_audio_encoder(AudioEncoderConfig(kind="hf"), device="cpu")
    with pytest.raises(UserError, match="no such directory"):
        build_audio_encoder(AudioEncoderConfig(kind="hf", path=str(tmp_path / "nope")), device="cpu")
    with pytest.raises(UserError, match="no config.json"):
        build_audio_encoder(AudioEncoderConfig(kind="hf", path=str(tmp_path)), device="cpu")
    with pytest.raises(UserError, match="must be a local directory"):
        build_audio_encoder(AudioEncoderConfig(kind="hf", path="s3://bucket/hubert"), device="cpu")

    model_dir = tmp_path / "model"
    save_speech_model(model_dir, "wav2vec2")
    with pytest.raises(UserError, match="layer 5 is out of range"):
        build_audio_encoder(AudioEncoderConfig(kind="hf", path=str(model_dir), layer=5), device="cpu")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "hidden_size": 48, "intermediate_size": 96}))
    with pytest.raises(UserError, match="weights do not match"):
        build_audio_encoder(AudioEncoderConfig(kind="hf", path=str(model_dir)), device="cpu")


# --- Hugging Face vision models --------------------------------------------------------------------------


def save_vision_model(directory, pooler: bool = True) -> tuple[torch.nn.Module, object]:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64)
    model = ViTModel(config, add_pooling_layer=pooler).eval()
    model.save_pretrained(directory)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(directory)
    return model, processor


def test_hf_vision_encoder_pooled_output_and_batches(tmp_path):
    model, processor = save_vision_model(tmp_path)
    batch = frames(5, size=48)
    encoder = build_visual_encoder(VisualEncoderConfig(kind="hf", path=str(tmp_path), batch_size=2),
                                   device="cpu", frame_rate=1.0)
    features = encoder.encode(batch)
    assert features.shape == (5, 32) and features.dtype == np.float16
    assert (encoder.name, encoder.dim, encoder.rate) == ("hf:vit", 32, 1.0)
    with torch.no_grad():
        expected = model(**processor(images=list(batch), return_tensors="pt")).pooler_output.numpy()
    np.testing.assert_allclose(features.astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    whole = build_visual_encoder(VisualEncoderConfig(kind="hf", path=str(tmp_path), batch_size=8),
                                 device="cpu")
    np.testing.assert_allclose(whole.encode(batch).astype(np.float32), features.astype(np.float32), atol=1e-3)
    assert encoder.describe()["pooling"] == "pooler"


def test_hf_vision_encoder_without_pooler_uses_cls(tmp_path):
    model, processor = save_vision_model(tmp_path, pooler=False)
    batch = frames(3, size=32)
    encoder = build_visual_encoder(VisualEncoderConfig(kind="hf", path=str(tmp_path)), device="cpu")
    with torch.no_grad():
        expected = model(**processor(images=list(batch), return_tensors="pt")).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(encoder.encode(batch).astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    assert encoder.describe()["pooling"] == "cls"


def test_hf_vision_encoder_needs_its_image_processor(tmp_path):
    save_vision_model(tmp_path)
    (tmp_path / "preprocessor_config.json").unlink()
    with pytest.raises(UserError, match="no preprocessor_config.json"):
        build_visual_encoder(VisualEncoderConfig(kind="hf", path=str(tmp_path)), device="cpu")
