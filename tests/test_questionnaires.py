import pytest

from mllm_dr.errors import UserError
from mllm_dr.questionnaires import PHQ8, PHQ9, get_questionnaire


def test_item_counts_and_totals():
    assert (PHQ8.n_items, PHQ8.max_total, PHQ9.n_items, PHQ9.max_total) == (8, 24, 9, 27)
    assert PHQ9.items[:8] == PHQ8.items and PHQ9.items[8].key == "self_harm"
    assert get_questionnaire("PHQ-8") is PHQ8


@pytest.mark.parametrize("total, band", [(0, "none-minimal"), (4, "none-minimal"), (5, "mild"), (9.4, "mild"),
                                         (10, "moderate"), (15, "moderately severe"), (20, "severe"),
                                         (24, "severe")])
def test_severity_bands(total, band):
    assert PHQ8.severity(total) == band


def test_screening_cutoff_is_inclusive_and_configurable():
    assert PHQ8.screen_positive(10) and not PHQ8.screen_positive(9)
    assert PHQ9.screen_positive(9, cutoff=9)


def test_validation_and_unknown_names():
    PHQ8.validate_scores([0, 1, 2, 3, 0, 1, 2, 3])
    with pytest.raises(UserError):
        PHQ8.validate_scores([0, 1, 2])
    with pytest.raises(UserError):
        PHQ8.validate_scores([4] * 8)
    with pytest.raises(UserError, match="unknown questionnaire"):
        get_questionnaire("gad7")
