import pytest

from mllm_dr.config import PreprocessConfig, load_config
from mllm_dr.errors import UserError


def test_yaml_and_overrides_become_typed_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("media:\n  frame_rate: 2\nencoders:\n  audio:\n    n_mels: 40\n")
    config = load_config(PreprocessConfig, path, ["media.limits.max_duration_s=60", "encoders.workers=2"])
    assert config.media.frame_rate == 2.0 and config.encoders.audio.n_mels == 40
    assert config.media.limits.max_duration_s == 60 and config.encoders.workers == 2


@pytest.mark.parametrize("override, message", [
    ("media.frame_rte=2", "media.frame_rte: Extra inputs are not permitted"),
    ("media.frame_rate=-1", "media.frame_rate: Input should be greater than 0"),
    ("nokey", "expected key.path=value"),
])
def test_bad_values_and_unknown_keys_are_rejected_in_one_line(override, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")) as info:
        load_config(PreprocessConfig, None, [override])
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(PreprocessConfig, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(PreprocessConfig, tmp_path / "bad.yaml")
