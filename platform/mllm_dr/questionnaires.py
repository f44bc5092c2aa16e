"""PHQ-8 and PHQ-9: items, frequency anchors, severity bands and the screening cut-off.

Every item is scored 0-3 for how often the problem bothered the person over the last two weeks; the
subject's total is the sum of the items. PHQ-8 is PHQ-9 without item 9 (thoughts of self-harm), which
interview corpora such as DAIC-WOZ leave out.
"""

from __future__ import annotations

from dataclasses import dataclass

from mllm_dr.errors import UserError

MAX_ITEM_SCORE = 3


@dataclass(frozen=True)
class Item:
    key: str  # short stable id, e.g. "sleep"
    name: dict[str, str]  # language -> short name
    text: dict[str, str]  # language -> the item as the questionnaire asks it


@dataclass(frozen=True)
class SeverityBand:
    low: int
    high: int
    label: dict[str, str]


ANCHORS: dict[str, tuple[str, ...]] = {
    "en": ("not at all", "several days", "more than half the days", "nearly every day"),
    "zh": ("完全不会", "好几天", "一半以上的天数", "几乎每天"),
}

SEVERITY_BANDS: tuple[SeverityBand, ...] = (
    SeverityBand(0, 4, {"en": "none-minimal", "zh": "无或极轻微"}),
    SeverityBand(5, 9, {"en": "mild", "zh": "轻度"}),
    SeverityBand(10, 14, {"en": "moderate", "zh": "中度"}),
    SeverityBand(15, 19, {"en": "moderately severe", "zh": "中重度"}),
    SeverityBand(20, 27, {"en": "severe", "zh": "重度"}),
)

_ITEMS: tuple[Item, ...] = (
    Item("interest", {"en": "Little interest", "zh": "兴趣减退"},
         {"en": "Little interest or pleasure in doing things", "zh": "做事时提不起劲或没有兴趣"}),
    Item("mood", {"en": "Depressed mood", "zh": "情绪低落"},
         {"en": "Feeling down, depressed, or hopeless", "zh": "感到心情低落、沮丧或绝望"}),
    Item("sleep", {"en": "Sleep problems", "zh": "睡眠问题"},
         {"en": "Trouble falling or staying asleep, or sleeping too much", "zh": "入睡困难、睡不安稳或睡眠过多"}),
    Item("energy", {"en": "Tiredness", "zh": "疲倦乏力"},
         {"en": "Feeling tired or having little energy", "zh": "感觉疲倦或没有活力"}),
    Item("appetite", {"en": "Appetite", "zh": "食欲问题"},
         {"en": "Poor appetite or overeating", "zh": "食欲不振或吃太多"}),
    Item("self_worth", {"en": "Feeling a failure", "zh": "自我否定"},
         {"en": "Feeling bad about yourself, or that you are a failure or have let yourself or your family down",
          "zh": "觉得自己很糟，或觉得自己很失败，或让自己或家人失望"}),
    Item("concentration", {"en": "Concentration", "zh": "注意力不集中"},
         {"en": "Trouble concentrating on things, such as reading the newspaper or watching television",
          "zh": "对事物专注有困难，例如阅读报纸或看电视时"}),
    Item("psychomotor", {"en": "Moving slowly or restless", "zh": "动作迟缓或烦躁"},
         {"en": "Moving or speaking so slowly that other people could have noticed, or being so fidgety or "
                "restless that you have been moving around a lot more than usual",
          "zh": "动作或说话速度缓慢到别人已经察觉，或正好相反，烦躁或坐立不安、动来动去的情况更胜于平常"}),
    Item("self_harm", {"en": "Thoughts of self-harm", "zh": "自伤念头"},
         {"en": "Thoughts that you would be better off dead, or of hurting yourself in some way",
          "zh": "有不如死掉或用某种方式伤害自己的念头"}),
)


@dataclass(frozen=True)
class Questionnaire:
    id: str
    items: tuple[Item, ...]
    screen_cutoff: int = 10  # total >= cutoff screens positive

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def max_total(self) -> int:
        return MAX_ITEM_SCORE * self.n_items

    def severity(self, total: float, language: str = "en") -> str:
        rounded = round(min(max(total, 0), self.max_total))
        band = next(b for b in SEVERITY_BANDS if b.low <= rounded <= b.high)
        return band.label.get(language, band.label["en"])

    def screen_positive(self, total: float, cutoff: int | None = None) -> bool:
        return total >= (self.screen_cutoff if cutoff is None else cutoff)

    def validate_scores(self, scores: list[int]) -> None:
        if len(scores) != self.n_items:
            raise UserError(f"{self.id} has {self.n_items} items, got {len(scores)} scores")
        if any(not 0 <= s <= MAX_ITEM_SCORE for s in scores):
            raise UserError(f"{self.id} item scores must be 0-{MAX_ITEM_SCORE}, got {scores}")


PHQ8 = Questionnaire("phq8", _ITEMS[:8])
PHQ9 = Questionnaire("phq9", _ITEMS)
QUESTIONNAIRES = {q.id: q for q in (PHQ8, PHQ9)}


def get_questionnaire(name: str) -> Questionnaire:
    try:
        return QUESTIONNAIRES[name.lower().replace("-", "")]
    except KeyError:
        raise UserError(f"unknown questionnaire {name!r} (known: {', '.join(QUESTIONNAIRES)})") from None
