import numpy as np
import pytest
from corpus_trees import CLNF_COLUMNS, daicwoz_tree

from mllm_dr.config import PreprocessConfig
from mllm_dr.data.corpora import get_format
from mllm_dr.errors import UserError
from mllm_dr.storage import resolve


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("daicwoz")
    return root, daicwoz_tree(root)


def _by_id(tree):
    root, _ = tree
    inputs = get_format("daicwoz").discover(resolve(str(root)), "usc", PreprocessConfig())
    return {item.interview_id: item for item in inputs}


def test_discovery_reads_avec2017_splits_and_full_test_totals(tree):
    _, written = tree
    found = _by_id(tree)
    assert sorted(found) == ["300", "301", "310", "311"]
    assert (found["300"].split, found["300"].item_scores, found["300"].total_score) == \
        ("train", written["items"][300], 10)
    assert (found["301"].split, found["301"].item_scores, found["301"].total_score) == \
        ("dev", written["items"][301], 2)
    # test_split_Depression_AVEC2017.csv lists them, full_test_split.csv adds totals; no item labels.
    assert (found["310"].split, found["310"].item_scores, found["310"].total_score) == ("test", None, 15)
    assert found["311"].total_score == 3 and all(item.problem is None for item in found.values())
    assert "transcript" not in found["301"].files and "clnf_gaze" not in found["301"].files


def test_load_joins_clnf_streams_frame_aligned(tree):
    _, written = tree
    raw = get_format("daicwoz").load(_by_id(tree)["300"], PreprocessConfig())
    widths = [len(CLNF_COLUMNS[s]) for s in ("features", "AUs", "pose", "gaze")]
    assert raw.visual_features.shape == (59, sum(widths))  # gaze has one frame fewer: common frames only
    assert raw.visual_features_rate == pytest.approx(30.0, rel=0.01)
    assert raw.visual_features_name == "daicwoz-clnf-features+AUs+pose+gaze"
    assert not raw.visual_features[5].any()  # success = 0: a zero row, kept in place
    row = raw.visual_features[8]
    clnf = written["clnf"][300]
    np.testing.assert_allclose(row[:136], clnf["features"][8], rtol=1e-6)
    np.testing.assert_allclose(row[136:156], clnf["AUs"][8], rtol=1e-6)
    np.testing.assert_allclose(row[-12:], clnf["gaze"][8], rtol=1e-6)
    assert raw.visual_features[7, 136] == 0 and raw.visual_features[7, 137] == pytest.approx(clnf["AUs"][7][1])  # blank
    assert raw.duration_s == pytest.approx(2.0, abs=0.01) and raw.waveform.shape[0] == pytest.approx(32000, abs=20)


def test_transcript_quirks(tree):
    raw = get_format("daicwoz").load(_by_id(tree)["300"], PreprocessConfig())
    speakers = [t.speaker for t in raw.transcript]
    assert speakers == ["interviewer", "participant", "participant"]  # the blank Ellie line is dropped
    ellie, overlap, scrubbed = raw.transcript
    assert overlap.start < ellie.end  # overlapping turns are kept as they are
    assert scrubbed.start == scrubbed.end == 1.4 and scrubbed.text.startswith("[scrubbed_entry]")


def test_session_without_a_chosen_stream_has_no_visual_modality(tree):
    found = _by_id(tree)
    raw = get_format("daicwoz").load(found["301"], PreprocessConfig())
    assert raw.visual_features is None and raw.transcript == [] and raw.waveform is not None
    config = PreprocessConfig()
    config.corpus.clnf_streams = ["pose", "AUs"]  # a choice this session has: its features in that order
    raw = get_format("daicwoz").load(found["301"], config)
    assert raw.visual_features.shape == (60, 26) and raw.visual_features_name == "daicwoz-clnf-pose+AUs"


def test_corrupt_clnf_file_is_a_load_error(tree):
    with pytest.raises(UserError, match=r"311_CLNF_pose.txt: not an OpenFace table"):
        get_format("daicwoz").load(_by_id(tree)["311"], PreprocessConfig())

