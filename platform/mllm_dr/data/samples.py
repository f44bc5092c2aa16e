"""Samples and prompts: the one place an (interview, questionnaire item) pair becomes model input.

Training, evaluation, distillation targets and serving all build prompts here, so the model always sees the
same text at inference as in training.

Prompt layout (DESIGN.md, "prompt layout"): everything that is the same for every item of an interview comes
first, the item instruction last::

    [chat frame: system prompt with the PHQ anchors, user header]
    Audio: <|mllm_dr_audio|> x N          # only for modalities the model has and the interview carries
    Video: <|mllm_dr_video|> x N
    Transcript:
    [transcript truncated: ...]             # only when turns were left out
    Participant: ...
    Interviewer: ...
                                            # ---- end of the shared interview prefix ----
    Item 3 of the PHQ-8: Trouble falling or staying asleep, or sleeping too much. ...
    [chat frame: end of user turn, assistant header]
    Score: 2\\nRationale: ...                # the assistant target (training only)

The prefix, the item part and the target are tokenized separately and concatenated, so the prefix token ids
are identical for all items of an interview and its KV cache can be computed once and reused.

The chat frame comes from the tokenizer's chat template when it has one (templates that reject a system role,
such as Mistral's, get the system prompt at the top of the user turn). Without a template, this documented
fallback is used: ``<bos>### System:\\n{system}\\n\\n### User:\\n{user}\\n\\n### Assistant:\\n{answer}<eos>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mllm_dr.config import StrictModel
from mllm_dr.data.records import InterviewRecord
from mllm_dr.data.transcripts import INTERVIEWER, PARTICIPANT, Turn
from mllm_dr.errors import UserError
from mllm_dr.questionnaires import ANCHORS, MAX_ITEM_SCORE, Item, Questionnaire, get_questionnaire

FEATURE_MODALITIES = ("audio", "video")
TEXT = "text"
PLACEHOLDER_TOKENS = {"audio": "<|mllm_dr_audio|>", "video": "<|mllm_dr_video|>"}
IGNORE_INDEX = -100  # label value that carries no LM loss (prompt, modality tokens, padding)
LANGUAGES = tuple(ANCHORS)

_USER_SLOT = "\x00MLLM_DR_USER\x00"
_ANSWER_SLOT = "\x00MLLM_DR_ANSWER\x00"


class PromptConfig(StrictModel):
    transcript_max_tokens: int = Field(
        1024, ge=0, description="token budget for the transcript turns; participant turns are kept first")
    include_interviewer: bool = Field(
        True, description="keep the interviewer's turns; set false for DAIC-WOZ, whose follow-ups leak the label")
    language: str | None = Field(None, description="prompt language (en / zh); default: each interview's own")


_TEXTS: dict[str, dict[str, Any]] = {
    "en": {
        "system": (
            "You are a clinical psychologist. You assess depression from a recorded clinical interview, one item "
            "of the {questionnaire} at a time. Rate how often the participant has been bothered by the problem "
            "over the last two weeks: {anchors}. Answer in this form:\nScore: <0-3>\nRationale: <the evidence "
            "from the interview, in one or two sentences>"),
        "audio": "Audio: ", "video": "Video: ", "transcript": "Transcript:",
        "truncated": "[transcript truncated: {left_out} of {total} turns left out]",
        "speakers": {PARTICIPANT: "Participant", INTERVIEWER: "Interviewer"}, "speaker": "Speaker", "colon": ": ",
        "list_separator": ", ",
        "item": ("Item {number} of the {questionnaire}: {text}.\nOver the last two weeks, how often has the "
                 "participant been bothered by this?"),
        "answer": "Score: {score}\nRationale: {rationale}",
        "template_rationale": ("Over the last two weeks the participant was bothered by {text}: {anchor} "
                               "(score {score})."),
    },
    "zh": {
        "system": (
            "你是一名临床心理医生，根据临床访谈录像评估抑郁症状，每次评估{questionnaire}问卷的一个条目。"
            "请判断在过去两周里受访者受该问题困扰的频率：{anchors}。请按以下格式回答：\n"
            "评估结果：<0-3>。评估理由：<来自访谈的证据，一到两句话>"),
        "audio": "音频：", "video": "视频：", "transcript": "访谈记录：",
        "truncated": "[访谈记录已截断：共{total}轮，省略了{left_out}轮]",
        "speakers": {PARTICIPANT: "受访者", INTERVIEWER: "访谈者"}, "speaker": "说话人", "colon": "：",
        "list_separator": "；",
        "item": "{questionnaire}问卷第{number}项：{text}。\n在过去两周里，受访者受这个问题困扰的频率如何？",
        "answer": "评估结果：{score}。评估理由：{rationale}",
        "template_rationale": "过去两周内，受访者受“{text}”困扰的频率：{anchor}（{score}分）。",
    },
}


def questionnaire_title(questionnaire: Questionnaire) -> str:
    return questionnaire.id.upper().replace("PHQ", "PHQ-")


def format_answer(score: int, rationale: str, language: str) -> str:
    """The assistant target: ``Score: k\\nRationale: ...`` / ``评估结果：k。评估理由：...``."""
    return _TEXTS[language]["answer"].format(score=score, rationale=rationale.strip())


def template_rationale(item: Item, score: int, language: str) -> str:
    """A plain restatement of the score, for items without a distilled rationale (honest, if uninformative)."""
    text = item.text[language]
    return _TEXTS[language]["template_rationale"].format(
        text=text[0].lower() + text[1:] if language == "en" else text, anchor=ANCHORS[language][score], score=score)


# ---------------------------------------------------------------- parsing generated answers

_NUMBER_WORDS = {"zero": 0, "none": 0, "one": 1, "two": 2, "three": 3,
                 "零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3}
_EN_SCORE = re.compile(
    r"\bscor(?:e|ed|ing)\b(?:\s*(?:is|of|was|would\s+be|should\s+be|=|:|-)\s*)*\s*(?:a\s+)?"
    r"(zero|none|one|two|three|\d+(?:\.\d+)?)(?!\w|\.\d)", re.IGNORECASE)
_ZH_SCORE = re.compile(r"(?:评估结果|评分|得分|分数|评定)\s*(?:为|是|:)?\s*([零〇一二两三四五六七八九]|\d+(?:\.\d+)?)")
_LEADING = re.compile(r"^\W*(zero|one|two|three|\d+(?:\.\d+)?|[零〇一二两三])(?!\w|\.\d)", re.IGNORECASE)
_RATIONALE = {"en": re.compile(r"\brationale\s*[:：]\s*", re.IGNORECASE), "zh": re.compile(r"评估理由\s*[:：]\s*")}


def _score_value(token: str) -> int | None:
    value = _NUMBER_WORDS.get(token.lower())
    if value is None and token.isdigit():
        value = int(token)
    return value if value is not None and 0 <= value <= MAX_ITEM_SCORE else None


def parse_score(text: str, language: str = "en") -> int | None:
    """The 0-3 item score in a generated answer, or ``None`` when there is no valid one.

    Tolerant of form: ``Score: 2``, ``score is two``, ``评估结果：2``, ``评分为两分``, full-width digits, a bare
    leading number. Strict on content: ``5``, ``2.5`` or no number at all give ``None`` (the caller then falls
    back to the regression head). The answer's own language is tried first, then the other.
    """
    normalized = unicodedata.normalize("NFKC", text)  # full-width digits and colons -> ASCII
    patterns = (_ZH_SCORE, _EN_SCORE) if language == "zh" else (_EN_SCORE, _ZH_SCORE)
    for pattern in patterns:
        match = pattern.search(normalized)
        if match:
            return _score_value(match.group(1))
    match = _LEADING.match(normalized)
    return _score_value(match.group(1)) if match else None


def parse_rationale(text: str, language: str = "en") -> str:
    """The text after ``Rationale:`` / ``评估理由：``; the whole answer when the model wrote no such marker."""
    for lang in (language, *(other for other in _RATIONALE if other != language)):
        match = _RATIONALE[lang].search(text)
        if match:
            return text[match.end():].strip()
    return text.strip()


# ---------------------------------------------------------------- tokenizer and chat frame


def prepare_tokenizer(tokenizer: Any) -> int:
    """Register the modality placeholders as special tokens (never split or merged) and make sure padding works.

    Returns how many tokens were added to the vocabulary. Idempotent: a tokenizer saved in a bundle already has
    them. A tokenizer without a pad token (Llama-3) pads with EOS; padded positions are masked everywhere.
    """
    missing = [t for t in PLACEHOLDER_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return len(missing)


@dataclass(frozen=True)
class ChatFrame:
    """How the chat format wraps the user's content and the assistant's answer, as literal text."""

    before_user: str  # start of text, system turn, user header
    after_user: str  # end of the user turn, assistant header (the generation prompt)
    after_answer: str  # end-of-turn markup that closes the assistant's answer

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, system: str) -> ChatFrame:
        if not getattr(tokenizer, "chat_template", None):
            return cls(before_user=f"{tokenizer.bos_token or ''}### System:\n{system}\n\n### User:\n",
                       after_user="\n\n### Assistant:\n", after_answer=tokenizer.eos_token or "")
        try:
            return cls._render(tokenizer, [{"role": "system", "content": system}], _USER_SLOT)
        except Exception:  # noqa: BLE001 - jinja raises for templates without a system role (Mistral)
            return cls._render(tokenizer, [], f"{system}\n\n{_USER_SLOT}")

    @classmethod
    def _render(cls, tokenizer: Any, system: list[dict[str, str]], user: str) -> ChatFrame:
        messages = [*system, {"role": "user", "content": user}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": _ANSWER_SLOT}], tokenize=False)
        before_user, _, after_user = prompt.partition(_USER_SLOT)
        return cls(before_user, after_user, after_answer=full.partition(_ANSWER_SLOT)[2])


# ---------------------------------------------------------------- samples


@dataclass
class ItemSample:
    """One (interview, item) pair as token ids and feature sequences. ``prefix_ids`` is shared by the items."""

    interview_key: str
    item: int  # 0-based index into the questionnaire's items
    language: str
    prefix_ids: list[int]
    item_ids: list[int]
    target_ids: list[int]  # empty without a label (inference)
    score: int | None
    features: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> [T, D], placeholders present
    modalities: list[str] = field(default_factory=list)  # what the prompt uses, e.g. ["audio", "text"]

    @property
    def prompt_ids(self) -> list[int]:
        return self.prefix_ids + self.item_ids

    @property
    def input_ids(self) -> list[int]:
        return self.prefix_ids + self.item_ids + self.target_ids


@dataclass(frozen=True)
class InterviewPrompt:
    """The shared part of one interview's prompts: its prefix tokens and the modalities it carries."""

    interview_key: str
    language: str
    prefix_ids: list[int]
    features: dict[str, np.ndarray]
    modalities: list[str]  # what the prompt actually uses, e.g. ["audio", "text"]


class PromptBuilder:
    """Builds every prompt of the platform for one tokenizer, questionnaire and prompt config.

    ``query_tokens`` maps each modality the model has to its number of query tokens (its LQ-former's N);
    a modality outside it, absent from the interview, or not asked for gets no placeholders at all.
    """

    def __init__(self, tokenizer: Any, questionnaire: Questionnaire | str, config: PromptConfig | None = None,
                 query_tokens: Mapping[str, int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.questionnaire = get_questionnaire(questionnaire) if isinstance(questionnaire, str) else questionnaire
        self.config = config or PromptConfig()
        self.query_tokens = dict(query_tokens or {})
        unknown = set(self.query_tokens) - set(FEATURE_MODALITIES)
        if unknown:
            raise UserError(f"unknown modalities {sorted(unknown)} (known: {', '.join(FEATURE_MODALITIES)})")
        if self.query_tokens:
            prepare_tokenizer(tokenizer)
            vocab = tokenizer.get_vocab()
            self.placeholder_ids = {m: vocab[PLACEHOLDER_TOKENS[m]] for m in self.query_tokens}
        else:
            self.placeholder_ids = {}
        self._frames: dict[str, ChatFrame] = {}
        special = {str(t) for t in tokenizer.all_special_tokens} | set(PLACEHOLDER_TOKENS.values())
        special |= {str(t) for t in tokenizer.added_tokens_decoder.values() if t.special}
        self._special = re.compile("|".join(re.escape(t) for t in sorted(special, key=len, reverse=True)))

    # -- pieces

    def language(self, record: InterviewRecord) -> str:
        language = self.config.language or record.language or "en"
        if language not in LANGUAGES:
            raise UserError(f"interview {record.key}: unsupported language {language!r} "
                            f"(supported: {', '.join(LANGUAGES)})")
        return language

    def frame(self, language: str) -> ChatFrame:
        if language not in self._frames:
            texts = _TEXTS[language]
            anchors = texts["list_separator"].join(f"{i} = {a}" for i, a in enumerate(ANCHORS[language]))
            system = texts["system"].format(questionnaire=questionnaire_title(self.questionnaire), anchors=anchors)
            self._frames[language] = ChatFrame.from_tokenizer(self.tokenizer, system)
        return self._frames[language]

    def item_instruction(self, item: int, language: str) -> str:
        return _TEXTS[language]["item"].format(
            number=item + 1, questionnaire=questionnaire_title(self.questionnaire),
            text=self.questionnaire.items[item].text[language])

    def transcript_lines(self, turns: Sequence[Turn], language: str) -> list[str]:
        """Turns as ``Speaker: text`` lines within the token budget, participant turns kept first.

        Turns are kept whole, in their original order. The participant's turns claim the budget first (in order,
        skipping any that no longer fit), then the interviewer's; a marker says how many were left out. Unknown
        speakers count as participant speech (undiarised transcripts). Text is stripped of special tokens so a
        transcript cannot inject placeholders or chat markup.
        """
        texts = _TEXTS[language]
        if not self.config.include_interviewer:
            turns = [t for t in turns if t.speaker != INTERVIEWER]
        turns = [Turn(t.start, t.end, t.speaker, self._clean(t.text)) for t in turns]
        turns = [t for t in turns if t.text]
        lines = [f"{texts['speakers'].get(t.speaker, texts['speaker'])}{texts['colon']}{t.text}" for t in turns]
        if not lines:
            return []
        costs = [len(ids) + 1 for ids in self.tokenizer(lines, add_special_tokens=False)["input_ids"]]  # + "\n"
        keep = [False] * len(lines)
        budget = self.config.transcript_max_tokens
        for wanted in (lambda s: s != INTERVIEWER, lambda s: s == INTERVIEWER):
            for i, turn in enumerate(turns):
                if wanted(turn.speaker) and costs[i] <= budget:
                    keep[i] = True
                    budget -= costs[i]
        kept = [line for line, k in zip(lines, keep) if k]
        if len(kept) < len(lines):
            kept.insert(0, texts["truncated"].format(left_out=len(lines) - len(kept), total=len(lines)))
        return kept

    def _clean(self, text: str) -> str:
        return " ".join(self._special.sub("", text).split())

    # -- whole prompts

    def interview_prompt(self, record: InterviewRecord, modalities: set[str] | None = None) -> InterviewPrompt:
        """The shared prefix of every item prompt of ``record``, tokenized once."""
        if not record.ok:
            raise UserError(f"interview {record.key} is an error row ({record.error}); it cannot be scored")
        language = self.language(record)
        texts = _TEXTS[language]
        parts: list[str] = []
        features: dict[str, np.ndarray] = {}
        for modality, n_queries in self.query_tokens.items():
            value = getattr(record, modality)
            if value is None or len(value) == 0 or (modalities is not None and modality not in modalities):
                continue
            if np.ndim(value) != 2:
                raise UserError(f"interview {record.key}: {modality} features must be [T, D], got {np.shape(value)}")
            features[modality] = value
            parts.append(texts[modality] + PLACEHOLDER_TOKENS[modality] * n_queries)
        lines = (self.transcript_lines(record.transcript, language)
                 if modalities is None or TEXT in modalities else [])
        if lines:
            parts.append("\n".join([texts["transcript"], *lines]))
        user_prefix = "".join(f"{part}\n" for part in parts) + ("\n" if parts else "")
        prefix_ids = self._encode(self.frame(language).before_user + user_prefix)
        for modality in features:
            found = prefix_ids.count(self.placeholder_ids[modality])
            if found != self.query_tokens[modality]:
                raise UserError(f"the tokenizer split the {modality} placeholders ({found} of "
                                f"{self.query_tokens[modality]} found); is it a byte-level BPE tokenizer?")
        used = [*features, *([TEXT] if lines else [])]
        return InterviewPrompt(record.key, language, prefix_ids, features, used)

    def item_samples(self, record: InterviewRecord, rationales: Mapping[str | int, str] | None = None,
                     modalities: set[str] | None = None, with_targets: bool | None = None) -> list[ItemSample]:
        """One sample per questionnaire item; targets (score + rationale) when the interview is labelled.

        ``rationales`` maps an item's key (``"sleep"``) or 1-based number to its distilled rationale; items
        without one get :func:`template_rationale`. ``with_targets=None`` means "when labels exist".
        """
        prompt = self.interview_prompt(record, modalities)
        labels = self._labels(record)
        if with_targets is None:
            with_targets = labels is not None
        if with_targets and labels is None:
            raise UserError(f"interview {record.key} has no item scores to train on")
        frame = self.frame(prompt.language)
        samples = []
        for index, item in enumerate(self.questionnaire.items):
            score = labels.get(item.key) if labels else None
            target_ids: list[int] = []
            if with_targets and score is not None:
                rationale = (rationales or {}).get(item.key) or (rationales or {}).get(index + 1)
                answer = format_answer(score, rationale or template_rationale(item, score, prompt.language),
                                       prompt.language)
                target_ids = self._encode(answer + frame.after_answer)
            samples.append(ItemSample(
                interview_key=record.key, item=index, language=prompt.language, prefix_ids=prompt.prefix_ids,
                item_ids=self._encode(self.item_instruction(index, prompt.language) + frame.after_user),
                target_ids=target_ids, score=score, features=prompt.features, modalities=prompt.modalities))
        return samples

    def _labels(self, record: InterviewRecord) -> dict[str, int] | None:
        """Item scores by item key, so a PHQ-9 record can train a PHQ-8 model (and vice versa, minus item 9)."""
        if record.item_scores is None:
            return None
        own = get_questionnaire(record.questionnaire)
        if len(record.item_scores) != own.n_items:
            raise UserError(f"interview {record.key}: {own.id} needs {own.n_items} item scores, "
                            f"got {len(record.item_scores)}")
        return {item.key: int(score) for item, score in zip(own.items, record.item_scores)}

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def build_item_samples(record: InterviewRecord, tokenizer: Any, questionnaire: Questionnaire | str,
                       rationales: Mapping[str | int, str] | None = None, config: PromptConfig | None = None,
                       *, query_tokens: Mapping[str, int] | None = None, modalities: set[str] | None = None,
                       with_targets: bool | None = None) -> list[ItemSample]:
    """All item samples of one interview (see :meth:`PromptBuilder.item_samples`).

    A model's own ``query_tokens`` come from ``MultimodalScorer.query_tokens``; the scorer's
    ``build_item_samples`` fills them in for you.
    """
    builder = PromptBuilder(tokenizer, questionnaire, config, query_tokens)
    return builder.item_samples(record, rationales, modalities, with_targets)


def collate(samples: Sequence[ItemSample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of item samples into tensors.

    Keys: ``input_ids`` / ``attention_mask`` / ``labels`` (``IGNORE_INDEX`` except on the answer) /
    ``prompt_mask`` (True on prompt tokens: what the regression head may look at) ``[B, L]``;
    ``regression_targets`` (float, 0 where unlabelled) / ``regression_mask`` / ``item_index`` ``[B]``; and for
    each modality any sample carries, ``<modality>`` float32 ``[B, T, D]`` zero-padded with
    ``<modality>_mask`` bool ``[B, T]`` (True on real frames; all False for a sample without that modality).
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    batch_size, length = len(samples), max(len(s.input_ids) for s in samples)
    input_ids = torch.full((batch_size, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    prompt_mask = torch.zeros((batch_size, length), dtype=torch.bool)
    for row, sample in enumerate(samples):
        ids, n_prompt = sample.input_ids, len(sample.prompt_ids)
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        labels[row, n_prompt: len(ids)] = torch.tensor(sample.target_ids, dtype=torch.long)
        prompt_mask[row, :n_prompt] = True
    batch = {
        "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "prompt_mask": prompt_mask,
        "regression_targets": torch.tensor([float(s.score or 0) for s in samples], dtype=torch.float32),
        "regression_mask": torch.tensor([s.score is not None for s in samples], dtype=torch.bool),
        "item_index": torch.tensor([s.item for s in samples], dtype=torch.long),
    }
    for modality in FEATURE_MODALITIES:
        present = [s.features[modality] for s in samples if modality in s.features]
        if not present:
            continue
        dims = {int(f.shape[1]) for f in present}
        if len(dims) > 1:
            raise UserError(f"{modality} features of different widths in one batch: {sorted(dims)}")
        frames = max(len(f) for f in present)
        values = torch.zeros((batch_size, frames, dims.pop()), dtype=torch.float32)
        mask = torch.zeros((batch_size, frames), dtype=torch.bool)
        for row, sample in enumerate(samples):
            feature = sample.features.get(modality)
            if feature is not None:
                values[row, : len(feature)] = torch.from_numpy(np.asarray(feature, dtype=np.float32))
                mask[row, : len(feature)] = True
        batch[modality], batch[f"{modality}_mask"] = values, mask
    return batch
