"""The MLlm-DR scorer: a causal LLM that reads audio and video through LQ-formers and scores one PHQ item.

Per modality, an :class:`~mllm_dr.model.lq_former.LQFormer` turns the feature sequence into N tokens and a
projector MLP maps them into the LLM's embedding space, where they replace the N placeholder tokens of the
prompt (:mod:`mllm_dr.data.samples`). LoRA adapters (peft) fine-tune the LLM; a regression head pools the LLM's
last hidden states over the *prompt* positions and predicts the item score. Training minimises
``alpha * LM + (1 - alpha) * MSE``.

Three defects of the authors' code are fixed here: padded frames are excluded by a boolean mask (in the
LQ-former), the regression head only ever sees prompt positions (with a causal LLM, their hidden states cannot
depend on the answer), and :meth:`MultimodalScorer.parameter_groups` hands every trainable parameter to the
optimizer exactly once (checked, not assumed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import Field
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from mllm_dr.config import StrictModel
from mllm_dr.data.records import InterviewRecord
from mllm_dr.data.samples import (
    FEATURE_MODALITIES,
    IGNORE_INDEX,
    PLACEHOLDER_TOKENS,
    ItemSample,
    PromptBuilder,
    PromptConfig,
    collate,
    parse_rationale,
    parse_score,
    prepare_tokenizer,
    template_rationale,
)
from mllm_dr.errors import UserError
from mllm_dr.model.lq_former import LQFormer, LQFormerConfig
from mllm_dr.questionnaires import MAX_ITEM_SCORE, Questionnaire, get_questionnaire

Stage = Literal["align", "multitask"]
PARAMETER_GROUPS = ("llm", "lq_former", "projectors", "head")
DEFAULT_LRS = {"llm": 1e-5, "lq_former": 1e-4, "projectors": 5e-4, "head": 1e-4}  # the paper's
_LR_ALIASES = {"lora": "llm"}  # the LLM's trainable parameters are its LoRA adapters


class LoraSettings(StrictModel):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="module names to adapt (q_proj / v_proj exist in Llama, Qwen2 and Mistral)")


class ProjectorConfig(StrictModel):
    hidden_dim: int | None = Field(None, gt=0, description="projector MLP hidden size; default: the LLM's")


class HeadConfig(StrictModel):
    hidden_dim: int = Field(256, gt=0, description="regression MLP hidden size")
    dropout: float = Field(0.1, ge=0, lt=1)


class ScorerConfig(StrictModel):
    lq_former: LQFormerConfig = LQFormerConfig()
    projector: ProjectorConfig = ProjectorConfig()
    lora: LoraSettings = LoraSettings()
    head: HeadConfig = HeadConfig()
    prompt: PromptConfig = PromptConfig()
    multitask_trains_multimodal: bool = Field(
        False, description="in the multitask stage, keep training the LQ-formers and projectors")
    max_new_tokens: int = Field(160, gt=0, description="default generation length of score()")
    seed: int = Field(0, description="initialisation seed of the LQ-formers, projectors and head")


@dataclass
class ScorerOutput:
    loss: torch.Tensor  # alpha * lm_loss + (1 - alpha) * mse_loss
    lm_loss: torch.Tensor  # mean token cross-entropy over the answers (0 without answers)
    mse_loss: torch.Tensor  # mean squared error over labelled items (0 without labels)
    regression: torch.Tensor  # [B] float32 item-score predictions


@dataclass
class ItemScore:
    item: int  # 1-based item number
    key: str
    name: str
    score: int  # final: the generated score when valid, else the regression's, clipped and rounded
    generated_score: int | None
    regression_score: float  # clipped to 0-3
    rationale: str
    text: str = ""  # the raw generated answer ("" without generation)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "text"}


@dataclass
class InterviewScore:
    interview_id: str
    site: str
    questionnaire: str
    items: list[ItemScore]
    total: int
    severity: str
    screen_positive: bool
    modalities: list[str]  # what the prompt used: "audio", "video", "text"
    language: str = "en"

    def to_dict(self) -> dict[str, Any]:
        """The per-interview part of the HTTP response (``POST /v1/assessments``)."""
        return {"interview_id": self.interview_id, "site": self.site, "questionnaire": self.questionnaire,
                "items": [item.to_dict() for item in self.items], "total": self.total, "severity": self.severity,
                "screen_positive": self.screen_positive, "modalities": list(self.modalities)}


class Projector(nn.Module):
    """MLP from LQ-former width into the LLM's embedding space, initialised to the embeddings' scale."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, output_std: float) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        nn.init.normal_(self.fc2.weight, std=output_std / math.sqrt(hidden_dim))
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RegressionHead(nn.Module):
    """Attention pooling over the hidden states allowed by ``mask`` -> MLP -> one score per row."""

    def __init__(self, hidden_size: int, config: HeadConfig) -> None:
        super().__init__()
        self.attention = nn.Linear(hidden_size, 1, bias=False)  # softmax ignores a shared offset: no bias
        self.mlp = nn.Sequential(nn.Linear(hidden_size, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.hidden_dim, 1))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = hidden.to(self.attention.weight.dtype)
        logits = self.attention(hidden).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1).to(hidden.dtype)
        pooled = torch.einsum("bl,blh->bh", weights, hidden)
        return self.mlp(pooled).squeeze(-1).float()


def final_item_score(generated: int | None, regression: float) -> int:
    """The generated score when the answer had a valid one, else the regression's, clipped to 0-3 and rounded
    half up (1.5 -> 2, as a clinician would read it)."""
    if generated is not None:
        return generated
    return math.floor(min(max(regression, 0.0), float(MAX_ITEM_SCORE)) + 0.5)


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    try:
        return names[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise UserError(f"unknown dtype {dtype!r} (known: {', '.join(names)})") from None


class MultimodalScorer(nn.Module):
    """LLM (+LoRA) with one LQ-former and projector per modality and a regression head. Build with
    :meth:`from_base` (training) or :func:`mllm_dr.model.bundle.load_bundle` (a trained model)."""

    def __init__(self, llm: PeftModel, tokenizer: Any, config: ScorerConfig, questionnaire: Questionnaire,
                 feature_dims: Mapping[str, int], base_llm_dir: str) -> None:
        super().__init__()
        unknown = set(feature_dims) - set(FEATURE_MODALITIES)
        if unknown:
            raise UserError(f"unknown modalities {sorted(unknown)} (known: {', '.join(FEATURE_MODALITIES)})")
        self.config = config
        self.questionnaire = questionnaire
        self.feature_dims = {m: int(d) for m, d in feature_dims.items()}
        self.base_llm_dir = base_llm_dir
        self.tokenizer = tokenizer
        self.llm = llm
        self.placeholder_ids = {m: tokenizer.convert_tokens_to_ids(PLACEHOLDER_TOKENS[m]) for m in FEATURE_MODALITIES}
        hidden_size = self.causal_lm.config.get_text_config().hidden_size
        embeddings = self.causal_lm.get_input_embeddings().weight
        dtype = embeddings.dtype
        rows = embeddings.detach()[:: max(1, embeddings.shape[0] // 8192)]  # a sample: vocabularies are large
        embedding_std = float(rows.float().std())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.lq_formers = nn.ModuleDict(
                {m: LQFormer(config.lq_former, dim) for m, dim in self.feature_dims.items()})
            self.projectors = nn.ModuleDict({
                m: Projector(former.width, config.projector.hidden_dim or hidden_size, hidden_size,
                             output_std=embedding_std)
                for m, former in self.lq_formers.items()})
            self.head = RegressionHead(hidden_size, config.head)
        for module in (self.lq_formers, self.projectors, self.head):
            module.to(dtype=dtype, device=embeddings.device)
        self._prompts = PromptBuilder(tokenizer, questionnaire, config.prompt, self.query_tokens)
        self.set_stage("align")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_base(cls, llm_dir: str | Path, config: ScorerConfig | None = None,
                  questionnaire: Questionnaire | str = "phq8", feature_dims: Mapping[str, int] | None = None,
                  dtype: torch.dtype | str | None = None) -> MultimodalScorer:
        """A fresh scorer on a base causal LM from a local Hugging Face directory (Llama, Qwen2, Mistral, ...).

        ``feature_dims`` gives each modality the model reads and its feature width, e.g. ``{"audio": 80,
        "video": 512}`` (the store manifest's encoder dims); modalities left out get no LQ-former.
        """
        config = config or ScorerConfig()
        tokenizer, causal_lm = load_base_llm(llm_dir, dtype)
        resize_for_placeholders(causal_lm, tokenizer)
        lora = config.lora
        llm = get_peft_model(causal_lm, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM"))
        questionnaire = get_questionnaire(questionnaire) if isinstance(questionnaire, str) else questionnaire
        return cls(llm, tokenizer, config, questionnaire, feature_dims or {}, str(Path(llm_dir).resolve()))

    @property
    def causal_lm(self) -> nn.Module:
        """The underlying ``...ForCausalLM`` (with LoRA layers injected in place)."""
        return self.llm.get_base_model()

    @property
    def device(self) -> torch.device:
        return self.causal_lm.get_input_embeddings().weight.device

    @property
    def query_tokens(self) -> dict[str, int]:
        """Placeholder tokens per modality the model reads (what prompts must carry)."""
        return {m: self.config.lq_former.num_queries for m in self.feature_dims}

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    # ------------------------------------------------------------------ training stages

    def set_stage(self, stage: Stage) -> None:
        """``align``: the LLM is frozen, LQ-formers + projectors + head learn. ``multitask``: LoRA + head learn,
        and the LQ-formers + projectors too when ``config.multitask_trains_multimodal``."""
        if stage not in ("align", "multitask"):
            raise UserError(f"unknown training stage {stage!r} (known: align, multitask)")
        self.requires_grad_(False)
        self.head.requires_grad_(True)
        if stage == "align" or self.config.multitask_trains_multimodal:
            self.lq_formers.requires_grad_(True)
            self.projectors.requires_grad_(True)
        if stage == "multitask":
            for name, parameter in self.llm.named_parameters():
                if "lora_" in name:
                    parameter.requires_grad_(True)
        self.stage: Stage | None = stage

    def freeze(self) -> None:
        """Nothing trainable (inference); :meth:`set_stage` makes a stage trainable again."""
        self.requires_grad_(False)
        self.stage = None

    def parameter_groups(self, lrs: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        """Optimizer groups ``{"name", "params", "lr"}`` holding every trainable parameter exactly once.

        Groups: ``llm`` (its LoRA adapters; ``lora`` is accepted as an alias), ``lq_former``, ``projectors``,
        ``head``; learning rates default to :data:`DEFAULT_LRS`. Groups without trainable parameters are left out.
        """
        rates = dict(DEFAULT_LRS)
        for name, lr in (lrs or {}).items():
            name = _LR_ALIASES.get(name, name)
            if name not in rates:
                raise UserError(f"unknown parameter group {name!r} (known: {', '.join(PARAMETER_GROUPS)})")
            rates[name] = float(lr)
        owners = {"llm": self.llm, "lq_former": self.lq_formers, "projectors": self.projectors, "head": self.head}
        groups = []
        for name, module in owners.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if params:
                groups.append({"name": name, "params": params, "lr": rates[name]})
        grouped = [id(p) for g in groups for p in g["params"]]
        trainable = {id(p) for p in self.parameters() if p.requires_grad}
        if len(grouped) != len(set(grouped)) or set(grouped) != trainable:
            raise RuntimeError("parameter groups do not cover the trainable parameters exactly once")
        return groups

    # ------------------------------------------------------------------ samples

    def build_item_samples(self, record: InterviewRecord, rationales: Mapping[str | int, str] | None = None,
                           modalities: set[str] | None = None, with_targets: bool | None = None
                           ) -> list[ItemSample]:
        """This model's item samples of one interview (its tokenizer, questionnaire, prompt config, queries)."""
        return self._prompts.item_samples(record, rationales, modalities, with_targets)

    def collate(self, samples: Sequence[ItemSample]) -> dict[str, torch.Tensor]:
        return collate(samples, self.pad_token_id)

    # ------------------------------------------------------------------ forward

    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings with each modality's placeholder run replaced by its projected query tokens."""
        input_ids = batch["input_ids"].to(self.device)
        embeds = self.causal_lm.get_input_embeddings()(input_ids)
        for modality, former in self.lq_formers.items():
            slots = input_ids == self.placeholder_ids[modality]
            rows = slots.any(dim=1)
            if not rows.any():
                continue
            if modality not in batch:
                raise ValueError(f"the prompts have {modality} placeholders but the batch has no {modality!r}")
            if (slots.sum(dim=1)[rows] != former.config.num_queries).any():
                raise ValueError(f"each prompt needs 0 or {former.config.num_queries} {modality} placeholders")
            features = batch[modality].to(self.device)[rows]
            if features.shape[-1] != former.feature_dim:
                raise UserError(f"{modality} features have width {features.shape[-1]}, "
                                f"the model was built for {former.feature_dim}")
            mask = batch[f"{modality}_mask"].to(self.device)[rows]
            tokens = self.projectors[modality](former(features.to(embeds.dtype), mask))
            embeds = embeds.masked_scatter(slots[..., None], tokens.to(embeds.dtype))
        return embeds

    def forward(self, batch: Mapping[str, torch.Tensor], alpha: float = 0.5) -> ScorerOutput:
        """``alpha * LM + (1 - alpha) * MSE`` on a :func:`~mllm_dr.data.samples.collate` batch."""
        attention_mask = batch["attention_mask"].to(self.device)
        hidden = self.causal_lm.get_decoder()(
            inputs_embeds=self.embed(batch), attention_mask=attention_mask, use_cache=False).last_hidden_state
        # LM loss: logits only where an answer token is predicted (not the whole [B, L, vocab]).
        labels = batch["labels"].to(self.device)[:, 1:]
        predicts = labels != IGNORE_INDEX
        if predicts.any():
            logits = self.causal_lm.get_output_embeddings()(hidden[:, :-1][predicts])
            lm_loss = F.cross_entropy(logits.float(), labels[predicts])
        else:
            lm_loss = hidden.new_zeros((), dtype=torch.float32)
        regression = self.head(hidden, batch["prompt_mask"].to(self.device))
        labelled = batch["regression_mask"].to(self.device)
        if labelled.any():
            target = batch["regression_targets"].to(self.device)
            mse_loss = F.mse_loss(regression[labelled], target[labelled])
        else:
            mse_loss = regression.new_zeros(())
        return ScorerOutput(alpha * lm_loss + (1 - alpha) * mse_loss, lm_loss, mse_loss, regression)

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def score(self, records: Sequence[InterviewRecord], modalities: set[str] | None = None, generate: bool = True,
              max_new_tokens: int | None = None) -> list[InterviewScore]:
        """Score every item of every interview: greedy answer + regression, final score, total, severity.

        ``modalities`` restricts what the prompts use (``{"audio", "video", "text"}``; default: all that the
        model has and the interview carries). All interviews run together: each interview's prefix is computed
        once and its KV cache shared by its items, and the items of all interviews are generated as one batch
        (so a caller's batch of interviews costs about one interview's number of forward passes).
        """
        if not records:
            return []
        was_training = self.training
        self.eval()
        try:
            interviews = [self._prompts.item_samples(record, modalities=modalities, with_targets=False)
                          for record in records]
            steps = (max_new_tokens or self.config.max_new_tokens) if generate else 0
            regression, token_ids = self._run_items(interviews, steps)
            scores, start = [], 0
            for record, samples in zip(records, interviews):
                stop = start + len(samples)
                scores.append(self._interview_score(record, samples, regression[start:stop].tolist(),
                                                    token_ids[start:stop]))
                start = stop
            return scores
        finally:
            self.train(was_training)

    def _interview_score(self, record: InterviewRecord, samples: Sequence[ItemSample], regression: list[float],
                         token_ids: list[list[int]]) -> InterviewScore:
        """Turn one interview's raw outputs (regression values, answer tokens) into its scored items."""
        language = samples[0].language
        items = []
        for sample, predicted, ids in zip(samples, regression, token_ids):
            item = self.questionnaire.items[sample.item]
            clipped = min(max(predicted, 0.0), float(MAX_ITEM_SCORE))
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()  # "" without generation
            generated = parse_score(text, language) if text else None
            final = final_item_score(generated, predicted)
            rationale = parse_rationale(text, language) if text else template_rationale(item, final, language)
            items.append(ItemScore(sample.item + 1, item.key, item.name[language], final, generated,
                                   clipped, rationale, text))
        total = sum(i.score for i in items)
        return InterviewScore(
            record.interview_id, record.site, self.questionnaire.id, items, total,
            self.questionnaire.severity(total, language), self.questionnaire.screen_positive(total),
            samples[0].modalities, language)

    def _run_items(self, interviews: Sequence[Sequence[ItemSample]], max_new_tokens: int
                   ) -> tuple[torch.Tensor, list[list[int]]]:
        """Regression scores ``[n]`` and greedy answer token ids (stop token excluded) for the ``n`` items of
        all ``interviews`` (item samples grouped by interview), in that order.

        The B interview prefixes (with modality tokens) run as one right-padded batch, as in training; each
        prefix's KV cache row is then repeated for its interview's items, whose instructions are left-padded to
        one length (padding masked, positions continuing their own prefix) so that the last column is every
        item's last prompt token; decoding then proceeds for all items together, dropping finished ones.
        """
        decoder, lm_head = self.causal_lm.get_decoder(), self.causal_lm.get_output_embeddings()
        device = self.device
        samples = [sample for items in interviews for sample in items]
        n = len(samples)
        prefix = collate([ItemSample(s.interview_key, s.item, s.language, s.prefix_ids, [], [], None, s.features)
                          for s in (items[0] for items in interviews)], self.pad_token_id)
        prefix_mask = prefix["attention_mask"].to(device)
        cache = DynamicCache(config=self.causal_lm.config)
        prefix_hidden = decoder(inputs_embeds=self.embed(prefix), attention_mask=prefix_mask,
                                cache=cache, use_cache=True).last_hidden_state
        interview_of_item = torch.repeat_interleave(
            torch.arange(len(interviews), device=device), torch.tensor([len(i) for i in interviews], device=device))
        cache.batch_select_indices(interview_of_item)
        prefix_mask = prefix_mask[interview_of_item]

        width = max(len(s.item_ids) for s in samples)
        item_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long, device=device)
        item_mask = torch.zeros((n, width), dtype=torch.long, device=device)
        for row, sample in enumerate(samples):
            item_ids[row, width - len(sample.item_ids):] = torch.tensor(sample.item_ids, device=device)
            item_mask[row, width - len(sample.item_ids):] = 1
        attention_mask = torch.cat([prefix_mask, item_mask], dim=1)
        positions = prefix_mask.sum(dim=1, keepdim=True) + (item_mask.cumsum(dim=1) - 1).clamp(min=0)
        item_hidden = decoder(inputs_embeds=self.causal_lm.get_input_embeddings()(item_ids),
                              attention_mask=attention_mask, position_ids=positions, cache=cache,
                              use_cache=True).last_hidden_state
        regression = self.head(torch.cat([prefix_hidden[interview_of_item], item_hidden], dim=1),
                               attention_mask.bool())
        generated: list[list[int]] = [[] for _ in range(n)]
        if max_new_tokens <= 0:
            return regression, generated

        stop_ids = torch.tensor(sorted(self.stop_token_ids()), device=device)
        active = torch.arange(n, device=device)  # rows of the batch -> item index
        logits = lm_head(item_hidden[:, -1])
        next_position = positions[:, -1] + 1
        for step in range(max_new_tokens):
            logits[:, list(self.placeholder_ids.values())] = float("-inf")  # never emit a placeholder
            tokens = logits.argmax(dim=-1)
            stopped = torch.isin(tokens, stop_ids)
            for row, token in zip(active.tolist(), tokens.tolist()):
                generated[row].append(token)
            keep = ~stopped
            if not keep.any() or step == max_new_tokens - 1:
                break
            if not keep.all():
                index = keep.nonzero().squeeze(1)
                cache.batch_select_indices(index)
                active, tokens = active[index], tokens[index]
                attention_mask, next_position = attention_mask[index], next_position[index]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            hidden = decoder(inputs_embeds=self.causal_lm.get_input_embeddings()(tokens[:, None]),
                             attention_mask=attention_mask, position_ids=next_position[:, None],
                             cache=cache, use_cache=True).last_hidden_state
            logits = lm_head(hidden[:, -1])
            next_position = next_position + 1
        stops = set(stop_ids.tolist())
        return regression, [ids[:-1] if ids and ids[-1] in stops else ids for ids in generated]

    def stop_token_ids(self) -> set[int]:
        """EOS ids of the tokenizer and generation config, plus the token that closes an assistant turn."""
        ids = {self.tokenizer.eos_token_id}
        configured = self.causal_lm.generation_config.eos_token_id
        ids |= set(configured) if isinstance(configured, list) else {configured}
        closing = self._prompts.frame("en").after_answer
        if closing:
            first = self.tokenizer(closing, add_special_tokens=False)["input_ids"][:1]
            ids |= {i for i in first if i in self.tokenizer.all_special_ids
                    or self.tokenizer.convert_ids_to_tokens(i) in self.tokenizer.get_added_vocab()}
        return {i for i in ids if i is not None}

    # ------------------------------------------------------------------ what a bundle stores

    def multimodal_state_dict(self) -> dict[str, torch.Tensor]:
        """LQ-formers, projectors, head, and the LLM embedding rows of the placeholder tokens (added by us, so
        not in the base checkpoint)."""
        state = {f"{name}.{key}": value for name, module in
                 (("lq_formers", self.lq_formers), ("projectors", self.projectors), ("head", self.head))
                 for key, value in module.state_dict().items()}
        ids = torch.tensor(list(self.placeholder_ids.values()))
        state["placeholder_rows.input"] = self.causal_lm.get_input_embeddings().weight.detach()[ids]
        state["placeholder_rows.output"] = self.causal_lm.get_output_embeddings().weight.detach()[ids]
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    @torch.no_grad()
    def load_multimodal_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        state = dict(state)
        ids = torch.tensor(list(self.placeholder_ids.values()))
        for key, layer in (("placeholder_rows.input", self.causal_lm.get_input_embeddings()),
                           ("placeholder_rows.output", self.causal_lm.get_output_embeddings())):
            layer.weight[ids.to(layer.weight.device)] = state.pop(key).to(layer.weight)
        for name, module in (("lq_formers", self.lq_formers), ("projectors", self.projectors), ("head", self.head)):
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def load_base_llm(llm_dir: str | Path, dtype: torch.dtype | str | None = None,
                  tokenizer_dir: str | Path | None = None) -> tuple[Any, nn.Module]:
    """Tokenizer (from ``tokenizer_dir`` if given) and causal LM from a local Hugging Face directory."""
    path = Path(llm_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"base LLM directory {llm_dir} has no config.json (a local Hugging Face model is needed)")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or path, local_files_only=True)
    causal_lm = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), local_files_only=True)
    return tokenizer, causal_lm


def resize_for_placeholders(causal_lm: nn.Module, tokenizer: Any) -> None:
    """Add the placeholder tokens and grow the embeddings when their ids fall outside them.

    Base checkpoints often have spare rows (Qwen2), in which case nothing is resized. New rows start at the mean
    embedding (deterministic); the bundle stores the placeholder rows, so a reload restores them exactly.
    """
    prepare_tokenizer(tokenizer)
    old = causal_lm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return
    causal_lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings())}.values():
            layer.weight[old:] = layer.weight[:old].mean(dim=0)
