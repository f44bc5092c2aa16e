from collections import Counter, defaultdict

import pytest

from mllm_dr.config import PreprocessConfig, load_config
from mllm_dr.data.sources import InterviewInput
from mllm_dr.data.splits import assign_splits, normalize_split
from mllm_dr.errors import UserError


def _inputs(site, n, subjects=None, split=None):
    return [InterviewInput(interview_id=f"i{k}", site=site, format="videos", source_uri=f"/{site}/{k}.mp4",
                           subject_id=None if subjects is None else f"s{k % subjects}", split=split)
            for k in range(n)]


def _config(**corpus):
    return load_config(PreprocessConfig, overrides=[f"corpus.{k}={v}" for k, v in corpus.items()])


def _split_of_subject(inputs):
    seen = defaultdict(set)
    for item in inputs:
        seen[(item.site, item.subject_id or item.interview_id)].add(item.split)
    return seen


def test_hashed_subject_split_is_deterministic_keeps_subjects_whole_and_follows_fractions():
    inputs = assign_splits(_inputs("a", 600, subjects=300), PreprocessConfig())
    assert all(len(splits) == 1 for splits in _split_of_subject(inputs).values())
    counts = Counter(item.split for item in inputs)
    assert counts["train"] == pytest.approx(420, abs=50) and counts["dev"] == pytest.approx(90, abs=30)
    again = assign_splits(list(reversed(_inputs("a", 600, subjects=300))), PreprocessConfig())
    assert {i.interview_id: i.split for i in inputs} == {i.interview_id: i.split for i in again}
    other_seed = assign_splits(_inputs("a", 600, subjects=300), _config(split_seed=1))
    assert [i.split for i in other_seed] != [i.split for i in inputs]


def test_own_split_is_kept_and_shared_by_the_subject():
    inputs = _inputs("a", 4, subjects=2)
    inputs[0].split = "Validation"  # subject s0: i0 (dev) and i2 (no split of its own)
    assign_splits(inputs, PreprocessConfig())
    assert inputs[0].split == inputs[2].split == "dev"


def test_conflicting_splits_of_one_subject_and_duplicate_ids_become_problems():
    inputs = _inputs("a", 4, subjects=2)
    inputs[0].split, inputs[2].split = "train", "test"
    duplicate = InterviewInput(interview_id="i1", site="a", format="videos", source_uri="/other/1.mp4",
                               split="test")
    same_id_other_site = InterviewInput(interview_id="i1", site="b", format="videos", source_uri="/b/1.mp4")
    assign_splits([*inputs, duplicate, same_id_other_site], PreprocessConfig())
    assert inputs[0].problem == inputs[2].problem == "subject 's0' of site 'a' is in more than one split (test, train)"
    assert duplicate.problem == "duplicate interview id 'i1' in site 'a' (already from /a/1.mp4)"
    assert inputs[1].problem is None and same_id_other_site.problem is None  # ids are namespaced by site


def test_leave_one_site_out():
    a, b = _inputs("a", 50, subjects=25, split="train"), _inputs("b", 40)
    b[0].split, b[1].split = "dev", "test"
    assign_splits([*a, *b], _config(leave_site_out="a"))
    assert {i.split for i in a} == {"test"}
    assert b[0].split == "dev" and b[1].split in ("train", "dev")  # b's own test joins train/dev
    assert {i.split for i in b} == {"train", "dev"}


@pytest.mark.parametrize("corpus, message", [
    ({"leave_site_out": "nowhere"}, "not a site of this run"),
    ({"split_fractions": "[0.5, 0.2, 0.2]"}, "summing to 1"),
])
def test_bad_split_options(corpus, message):
    with pytest.raises(UserError, match=message):
        assign_splits(_inputs("a", 3), _config(**corpus))


def test_unknown_split_name_is_a_problem_row():
    inputs = _inputs("a", 2)
    inputs[0].split = "holdout"
    assign_splits(inputs, PreprocessConfig())
    assert inputs[0].problem == "unknown split 'holdout' (use train, dev or test)"
    assert normalize_split(" TEST ") == "test" and normalize_split("") is None
