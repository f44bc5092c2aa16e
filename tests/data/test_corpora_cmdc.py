import numpy as np
import pytest
from corpus_trees import cmdc_tree

from mllm_dr.config import AUDIO_SAMPLE_RATE, PreprocessConfig
from mllm_dr.data.corpora import get_format
from mllm_dr.errors import UserError
from mllm_dr.storage import resolve


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmdc")
    return root, cmdc_tree(root)


def _by_id(tree):
    root, _ = tree
    inputs = get_format("cmdc").discover(resolve(str(root)), "beijing", PreprocessConfig())
    return {item.interview_id: item for item in inputs}


def test_discovery_finds_subjects_answers_and_phq9_labels(tree):
    root, _ = tree
    found = _by_id(tree)
    assert list(found) == ["HC01", "MDD01", "MDD02"]
    hc = found["HC01"]
    assert (hc.language, hc.questionnaire, hc.subject_id, hc.split) == ("zh", "phq9", "HC01", None)
    assert hc.item_scores == [0, 0, 1, 0, 0, 0, 0, 0, 0] and hc.total_score == 1
    assert found["MDD01"].item_scores == [3, 2, 3, 2, 1, 2, 3, 2, 1] and found["MDD01"].total_score == 19
    assert hc.source_uri == str(root / "HC/HC01/Q1.wav")
    assert {k for k in hc.files if k.startswith("audio:")} == {"audio:01", "audio:02", "audio:03"}
    assert "audio:02" not in found["MDD01"].files and found["MDD01"].source_uri == str(root / "MDD/MDD01/Q1.wav")
    assert found["MDD02"].problem == "subject MDD02 is listed in labels.csv but has no answer files"


def test_load_lays_answers_end_to_end_with_question_turns(tree):
    _, written = tree
    raw = get_format("cmdc").load(_by_id(tree)["HC01"], PreprocessConfig())
    lengths = [written["durations"][("HC01", q)] for q in (1, 2, 3)]
    assert raw.duration_s == pytest.approx(sum(lengths), abs=0.01)
    assert len(raw.waveform) == pytest.approx(sum(lengths) * AUDIO_SAMPLE_RATE, abs=30)
    assert [t.speaker for t in raw.transcript] == ["interviewer", "participant"] * 3
    starts = np.cumsum([0.0] + lengths[:-1])
    for q, (question, answer) in enumerate(zip(raw.transcript[::2], raw.transcript[1::2])):
        assert question.text == f"请谈谈第{q + 1}个话题。" and question.start == question.end
        assert answer.start == pytest.approx(starts[q], abs=0.01)
        assert answer.end == pytest.approx(starts[q] + lengths[q], abs=0.01)
        assert answer.text.startswith(f"第{q + 1}个回答")
    # OpenFace clips (2 frames longer than their audio) are cut to their answer's span: aligned with the audio.
    assert raw.visual_features_rate == pytest.approx(30.0, rel=0.01)
    assert raw.visual_features.shape == (round(sum(lengths) * 30), 10)
    assert raw.visual_features_name == "cmdc-openface"


def test_answer_without_audio_is_silence_of_its_video_length(tree):
    _, written = tree
    raw = get_format("cmdc").load(_by_id(tree)["MDD01"], PreprocessConfig())
    q2 = (round(written["durations"][("MDD01", 2)] * 30) + 2) / 30  # its OpenFace length
    lengths = [written["durations"][("MDD01", 1)], q2, written["durations"][("MDD01", 3)]]
    assert raw.duration_s == pytest.approx(sum(lengths), abs=0.01)
    start = round(lengths[0] * AUDIO_SAMPLE_RATE)
    silence = raw.waveform[start + 10: start + round(q2 * AUDIO_SAMPLE_RATE) - 10]
    assert silence.size > 0 and not silence.any() and raw.waveform[:start].any()
    assert raw.transcript[3].start == pytest.approx(lengths[0], abs=0.01)


def test_default_question_text_and_bad_labels(tmp_path):
    cmdc_tree(tmp_path, questions=1)
    (tmp_path / "questions.csv").unlink()
    labels = (tmp_path / "labels.csv").read_text().replace("MDD01,3,2,3", "MDD01,3,x,3")
    (tmp_path / "labels.csv").write_text(labels)
    inputs = {i.interview_id: i for i in get_format("cmdc").discover(resolve(str(tmp_path)), "b", PreprocessConfig())}
    assert inputs["MDD01"].problem == "labels.csv, subject MDD01: phq92: 'x' is not a number"
    raw = get_format("cmdc").load(inputs["HC01"], PreprocessConfig())
    assert raw.transcript[0].text == "问题 1"


def test_unreadable_openface_is_a_load_error(tmp_path):
    cmdc_tree(tmp_path, questions=1)
    (tmp_path / "HC/HC01/Q1.csv").write_text("frame, timestamp\n")
    item = get_format("cmdc").discover(resolve(str(tmp_path)), "b", PreprocessConfig())[0]
    with pytest.raises(UserError, match="Q1.csv: not an OpenFace table"):
        get_format("cmdc").load(item, PreprocessConfig())

