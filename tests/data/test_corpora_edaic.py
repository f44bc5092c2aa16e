import numpy as np
import pytest
from corpus_trees import edaic_tree, write_mat_v5, write_mat_v73

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.corpora import get_format
from mllm_dr.data.corpora.edaic import read_mat_matrix
from mllm_dr.errors import UserError
from mllm_dr.storage import resolve


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("edaic")
    return root, edaic_tree(root)


def _by_id(tree, config=None):
    root, _ = tree
    inputs = get_format("edaic").discover(resolve(str(root)), "london", config or PreprocessConfig())
    return {item.interview_id: item for item in inputs}


def test_discovery_joins_splits_and_item_labels_in_questionnaire_order(tree):
    root, written = tree
    found = _by_id(tree)
    assert sorted(found) == ["300", "301", "302", "303", "304", "305"]
    first = found["300"]
    assert (first.site, first.format, first.subject_id, first.language, first.questionnaire) == \
        ("london", "edaic", "300", "en", "phq8")
    assert first.split == "train" and first.problem is None
    assert first.item_scores == written["items"][300] and first.total_score == 13
    assert first.source_uri == str(root / "data/300_P/300_AUDIO.wav")
    assert set(first.files) == {"audio", "transcript", "resnet", "openface"}
    assert found["301"].split == "dev" and found["301"].item_scores == written["items"][301]
    assert "transcript" not in found["301"].files
    assert found["304"].split == "test" and found["304"].item_scores is None and found["304"].total_score == 3


def test_unusable_participants_carry_a_reason_instead_of_failing_discovery(tree):
    found = _by_id(tree)
    assert found["302"].problem == "participant 302 is listed in dev_split.csv but has no 302_P folder"
    assert found["303"].problem == "participant 303: 303_P.tar.gz is not unpacked"
    assert found["304"].problem == "participant 304: no 304_AUDIO.wav in 304_P/"
    assert all(found[pid].problem is None for pid in ("300", "301", "305"))


def test_load_resnet_classic_mat(tree):
    _, written = tree
    raw = get_format("edaic").load(_by_id(tree)["300"], PreprocessConfig())
    assert raw.duration_s == pytest.approx(2.0, abs=0.01)
    assert raw.waveform.dtype == np.float32 and len(raw.waveform) == pytest.approx(32000, abs=20)
    assert np.allclose(raw.waveform[:1000], written["waveform"][300][:1000], atol=1e-3)
    np.testing.assert_array_equal(raw.visual_features, written["resnet"][300])
    assert raw.visual_features_rate == pytest.approx(30 / 2.0, rel=0.01)  # N frames / audio duration
    assert raw.visual_features_name == "edaic-cnn-resnet"
    assert [t.speaker for t in raw.transcript] == ["participant", "participant"]
    assert raw.transcript[1].start == 1.0 and raw.transcript[1].text.startswith("[laughter]")


def test_load_resnet_v73_mat_is_transposed_back(tree):
    _, written = tree
    raw = get_format("edaic").load(_by_id(tree)["301"], PreprocessConfig())
    assert raw.visual_features.shape == (30, 2048)
    np.testing.assert_array_equal(raw.visual_features, written["resnet"][301])
    assert raw.transcript == []  # no transcript file: text modality absent, interview still loads


def test_load_openface_stream(tree):
    _, written = tree
    config = PreprocessConfig()
    config.corpus.visual_stream = "openface"
    raw = get_format("edaic").load(_by_id(tree)["300"], config)
    assert raw.visual_features.shape == (60, 49)
    assert raw.visual_features_rate == pytest.approx(30.0, rel=1e-3)
    assert raw.visual_features_name == "edaic-openface2.1.0-pose-gaze-aus"
    assert not raw.visual_features[3:5].any()  # success = 0 rows are zero rows, kept in place
    np.testing.assert_allclose(raw.visual_features[5], written["openface"][300][5], rtol=1e-6)


def test_corrupt_mat_is_a_load_error_with_the_file_named(tree):
    with pytest.raises(UserError, match=r"305_CNN_ResNet.mat: not a readable MATLAB file"):
        get_format("edaic").load(_by_id(tree)["305"], PreprocessConfig())


def test_read_mat_matrix_checks_the_variable(tmp_path):
    write_mat_v5(tmp_path / "a.mat", np.ones((3, 4), np.float32), key="other")
    with pytest.raises(UserError, match="no variable 'feature'"):
        read_mat_matrix(resolve(str(tmp_path / "a.mat")), "feature")
    write_mat_v73(tmp_path / "b.mat", np.ones((3, 4), np.float32), key="other")
    with pytest.raises(UserError, match=r"no variable 'feature' \(found: other\)"):
        read_mat_matrix(resolve(str(tmp_path / "b.mat")), "feature")
    (tmp_path / "c.mat").write_bytes(b"")
    with pytest.raises(UserError, match="c.mat"):
        read_mat_matrix(resolve(str(tmp_path / "c.mat")), "feature")


def test_empty_source_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no edaic participant folders"):
        get_format("edaic").discover(resolve(str(tmp_path)), "default", PreprocessConfig())

