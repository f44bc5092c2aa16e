"""The multimodal scorer on tiny random Llama and Qwen2 models: stages, gradients, the head's view, modalities,
prefix-cached scoring against Hugging Face's own generation."""

from __future__ import annotations

import itertools

import pytest
import torch
from model_helpers import AUDIO_DIM, VIDEO_DIM, make_record, randomize_trainables, small_config
from torch import nn

from mllm_dr.data.samples import IGNORE_INDEX, PLACEHOLDER_TOKENS
from mllm_dr.errors import UserError
from mllm_dr.model.scorer import DEFAULT_LRS, MultimodalScorer, ScorerConfig, final_item_score
from mllm_dr.questionnaires import PHQ8

DIMS = {"audio": AUDIO_DIM, "video": VIDEO_DIM}


@pytest.fixture(scope="module")
def scorer(tiny_base) -> MultimodalScorer:
    model = MultimodalScorer.from_base(tiny_base, small_config(), "phq8", DIMS)
    randomize_trainables(model)
    return model


def mixed_batch(model: MultimodalScorer) -> dict[str, torch.Tensor]:
    """Items of an audio+video+text interview next to items of an audio-only one."""
    full = model.build_item_samples(make_record("full"))[:3]
    audio_only = model.build_item_samples(make_record("audio", seed=1, audio_frames=20, video_frames=None,
                                                      text=False))[5:7]
    return model.collate(full + audio_only)


def test_from_base_wires_tokens_lora_and_modules(scorer):
    tokenizer = scorer.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDER_TOKENS.values()]
    assert len(set(ids)) == 2 and max(ids) < scorer.causal_lm.get_input_embeddings().weight.shape[0]
    assert max(ids) < scorer.causal_lm.get_output_embeddings().weight.shape[0]
    assert scorer.query_tokens == {"audio": 4, "video": 4}
    adapted = {name.rsplit(".", 1)[-1] for name, module in scorer.llm.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "v_proj"}
    lora = scorer.llm.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (16, 32, 0.1)
    assert scorer.lq_formers["video"].width == 12  # 10 features, 4 heads: projected
    defaults = ScorerConfig()
    assert (defaults.lq_former.num_queries, defaults.lq_former.num_layers) == (32, 4)


@pytest.mark.parametrize("stage, trains_multimodal", [("align", False), ("multitask", False), ("multitask", True)])
def test_stage_gradients_reach_exactly_the_trained_parameters(scorer, stage, trains_multimodal):
    scorer.config.multitask_trains_multimodal = trains_multimodal
    scorer.set_stage(stage)
    scorer.train()
    scorer.zero_grad(set_to_none=True)
    try:
        output = scorer(mixed_batch(scorer), alpha=0.5)
        assert output.lm_loss > 0 and output.mse_loss > 0
        torch.testing.assert_close(output.loss, 0.5 * output.lm_loss + 0.5 * output.mse_loss)
        output.loss.backward()

        def trained(name: str) -> bool:
            multimodal = name.startswith(("lq_formers.", "projectors."))
            if stage == "align":
                return multimodal or name.startswith("head.")
            return name.startswith("head.") or "lora_" in name or (multimodal and trains_multimodal)

        for name, parameter in scorer.named_parameters():
            if trained(name):
                assert parameter.requires_grad, name
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient: {name}"
            else:
                assert not parameter.requires_grad and parameter.grad is None, name
        groups = scorer.parameter_groups()
        grouped = [id(p) for g in groups for p in g["params"]]
        assert len(grouped) == len(set(grouped))
        assert set(grouped) == {id(p) for name, p in scorer.named_parameters() if trained(name)}
        expected_groups = {"align": {"lq_former", "projectors", "head"},
                           "multitask": {"llm", "head"} | ({"lq_former", "projectors"} if trains_multimodal else set())}
        assert {g["name"] for g in groups} == expected_groups[stage]
    finally:
        scorer.config.multitask_trains_multimodal = False
        scorer.zero_grad(set_to_none=True)
        scorer.eval()


def test_parameter_groups_learning_rates_and_coverage_check(scorer):
    scorer.set_stage("multitask")
    groups = {g["name"]: g["lr"] for g in scorer.parameter_groups()}
    assert groups == {"llm": DEFAULT_LRS["llm"], "head": DEFAULT_LRS["head"]} == {"llm": 1e-5, "head": 1e-4}
    scorer.set_stage("align")
    groups = {g["name"]: g["lr"] for g in scorer.parameter_groups({"lora": 2e-5, "projectors": 1e-3})}
    assert groups == {"lq_former": 1e-4, "projectors": 1e-3, "head": 1e-4}
    torch.optim.AdamW(scorer.parameter_groups())  # a real optimizer accepts them
    with pytest.raises(UserError, match="unknown parameter group 'encoder'"):
        scorer.parameter_groups({"encoder": 1e-3})
    # A trainable parameter outside the known parts is caught, never silently left out of the optimizer.
    scorer.stray = nn.Parameter(torch.zeros(2))
    try:
        with pytest.raises(RuntimeError, match="exactly once"):
            scorer.parameter_groups()
    finally:
        del scorer.stray


def test_regression_head_never_sees_the_answer(scorer):
    scorer.eval()
    record = make_record()
    short = scorer.build_item_samples(record, rationales={i: "Brief." for i in range(1, 9)})[:3]
    record.item_scores = [3, 3, 0, 0, 1, 2, 3, 1]
    long = scorer.build_item_samples(record, rationales={i: "A much longer rationale that quotes the participant "
                                                         "at length about nights, mornings and work." for i in range(1, 9)})[:3]
    assert all(a.target_ids != b.target_ids for a, b in zip(short, long))
    with torch.no_grad():
        first, second = scorer(scorer.collate(short)), scorer(scorer.collate(long))
        together = scorer(scorer.collate(short[:2] + long[:2]))
    assert not torch.isclose(first.lm_loss, second.lm_loss)  # the answers really differ
    torch.testing.assert_close(first.regression, second.regression, rtol=0, atol=1e-6)
    torch.testing.assert_close(together.regression, torch.cat([first.regression[:2], second.regression[:2]]),
                               rtol=0, atol=1e-5)
    # Control: pooling over all attended positions (the authors' bug) would let the answer in.
    with torch.no_grad():
        batches = [scorer.collate(short), scorer.collate(long)]
        leaky = [scorer.head(scorer.causal_lm.get_decoder()(inputs_embeds=scorer.embed(b),
                                                            attention_mask=b["attention_mask"]).last_hidden_state,
                             b["attention_mask"].bool()) for b in batches]
    assert not torch.allclose(leaky[0], leaky[1], atol=1e-4)


COMBINATIONS = list(itertools.product([True, False], repeat=3))  # audio, video, text present?


def test_every_modality_combination_in_one_batch(scorer):
    """All 8 present/absent combinations side by side: in one training batch and in one scoring call."""
    records = [make_record(f"r{i}", seed=i, audio_frames=9 + i if audio else None, video_frames=4 if video else None,
                           text=text) for i, (audio, video, text) in enumerate(COMBINATIONS)]
    samples = []
    for index, (record, (audio, video, text)) in enumerate(zip(records, COMBINATIONS)):
        item = scorer.build_item_samples(record)[index]  # a different item per record
        expected = [m for m, present in (("audio", audio), ("video", video), ("text", text)) if present]
        assert item.modalities == expected
        for modality in ("audio", "video"):
            assert item.prefix_ids.count(scorer.placeholder_ids[modality]) == (4 if modality in expected else 0)
        samples.append(item)
    batch = scorer.collate(samples)
    assert batch["audio_mask"].any(dim=1).tolist() == [a for a, _, _ in COMBINATIONS]
    assert batch["video_mask"].any(dim=1).tolist() == [v for _, v, _ in COMBINATIONS]
    scorer.set_stage("align")
    output = scorer(batch, alpha=0.3)
    assert torch.isfinite(output.loss) and torch.isfinite(output.regression).all()
    output.loss.backward()
    scorer.zero_grad(set_to_none=True)
    # Each row's prediction is its own: the same item scored alone gives the same value.
    with torch.no_grad():
        scorer.eval()
        alone = torch.cat([scorer(scorer.collate([sample])).regression for sample in samples[:3]])
        torch.testing.assert_close(scorer(batch).regression[:3], alone, rtol=0, atol=1e-5)
    results = scorer.score(records, generate=False)
    for result, (audio, video, text) in zip(results, COMBINATIONS):
        assert result.modalities == [m for m, p in (("audio", audio), ("video", video), ("text", text)) if p]
        assert len(result.items) == 8


def test_text_only_model_and_restricted_modalities(tiny_llm):
    text_only = MultimodalScorer.from_base(tiny_llm, small_config(), "phq8", feature_dims={})
    assert dict(text_only.lq_formers) == {}
    result = text_only.score([make_record()], generate=False)[0]
    assert result.modalities == ["text"]
    audio_model = MultimodalScorer.from_base(tiny_llm, small_config(), "phq8", {"audio": AUDIO_DIM})
    assert audio_model.score([make_record()], modalities={"audio"}, generate=False)[0].modalities == ["audio"]
    with pytest.raises(UserError, match="unknown modalities"):
        MultimodalScorer.from_base(tiny_llm, small_config(), "phq8", {"depth": 3})


def test_feature_width_mismatch_is_a_user_error(tiny_llm):
    model = MultimodalScorer.from_base(tiny_llm, small_config(), "phq8", {"audio": AUDIO_DIM + 1})
    with pytest.raises(UserError, match="width 8, the model was built for 9"):
        model(model.collate(model.build_item_samples(make_record())[:1]))


def test_prefix_cached_scoring_matches_uncached_generation_and_training_forward(scorer):
    """One prefix pass + a KV cache shared by the 8 items must equal 8 independent full-prompt generations by
    Hugging Face's ``generate`` (no shared cache) and the regression of the training forward pass."""
    scorer.eval()
    with torch.no_grad():
        scorer.head.mlp[-1].bias.fill_(1.5)  # keep the regression inside 0-3, where clipping changes nothing
    record = make_record(scores=None)
    result = scorer.score([record], max_new_tokens=6)[0]
    samples = scorer.build_item_samples(record)
    assert len({len(s.item_ids) for s in samples}) > 1  # items of different lengths: left padding is exercised
    with torch.no_grad():
        forward = scorer(scorer.collate(samples)).regression
        for index in (0, 5, 7):  # the shortest instruction, the longest, and the last item
            sample, item = samples[index], result.items[index]
            batch = scorer.collate([sample])
            generated = scorer.llm.generate(
                inputs_embeds=scorer.embed(batch), attention_mask=batch["attention_mask"], max_new_tokens=6,
                do_sample=False, eos_token_id=sorted(scorer.stop_token_ids()), pad_token_id=scorer.pad_token_id,
                suppress_tokens=list(scorer.placeholder_ids.values()))[0].tolist()
            assert item.text == scorer.tokenizer.decode(generated, skip_special_tokens=True).strip()
    torch.testing.assert_close(torch.tensor([i.regression_score for i in result.items]), forward, rtol=0, atol=1e-5)
    assert all(0 < i.regression_score < 3 for i in result.items)


def test_a_batch_of_interviews_scores_as_each_interview_alone(scorer):
    """Interviews with prefixes of different lengths and modality sets, scored in one batch (padded prefixes,
    one KV cache row per interview repeated for its items) give each interview's own answers and regression."""
    scorer.eval()
    with torch.no_grad():
        scorer.head.mlp[-1].bias.fill_(1.5)
    records = [make_record("full", scores=None),
               make_record("audio", seed=1, audio_frames=20, video_frames=None, text=False, scores=None),
               make_record("video", seed=2, audio_frames=None, video_frames=9, scores=None)]
    prefixes = {len(scorer.build_item_samples(r)[0].prefix_ids) for r in records}
    assert len(prefixes) == len(records)  # every prefix a different length: padding is exercised
    together = scorer.score(records, max_new_tokens=6)
    for record, result in zip(records, together):
        alone = scorer.score([record], max_new_tokens=6)[0]
        assert result.interview_id == record.interview_id and result.modalities == alone.modalities
        assert [i.text for i in result.items] == [i.text for i in alone.items]
        torch.testing.assert_close(torch.tensor([i.regression_score for i in result.items]),
                                   torch.tensor([i.regression_score for i in alone.items]), rtol=0, atol=1e-5)
    assert scorer.score([], max_new_tokens=6) == []


def test_interview_score_fields(scorer):
    scorer.eval()
    results = scorer.score([make_record("a"), make_record("b", seed=3, scores=None)], max_new_tokens=3)
    for result in results:
        assert [i.item for i in result.items] == list(range(1, 9))
        assert [i.key for i in result.items] == [item.key for item in PHQ8.items]
        for item in result.items:
            assert item.score == final_item_score(item.generated_score, item.regression_score)
            assert 0 <= item.score <= 3 and 0 <= item.regression_score <= 3 and item.rationale
        assert result.total == sum(i.score for i in result.items)
        assert result.severity == PHQ8.severity(result.total) and result.screen_positive == (result.total >= 10)
        data = result.to_dict()
        assert data["interview_id"] == result.interview_id and data["questionnaire"] == "phq8"
        assert {"item", "name", "score", "regression_score", "rationale"} <= set(data["items"][0])
        assert set(data) >= {"items", "total", "severity", "screen_positive", "modalities"}
    without = scorer.score([make_record()], generate=False)[0]
    assert all(i.generated_score is None and i.text == "" and "(score" in i.rationale for i in without.items)


def test_final_item_score_prefers_a_valid_generation():
    assert final_item_score(2, 0.1) == 2
    assert final_item_score(None, 1.5) == 2 and final_item_score(None, 1.49) == 1
    assert final_item_score(None, -0.7) == 0 and final_item_score(None, 7.2) == 3


def test_unknown_stage_is_a_user_error(scorer):
    with pytest.raises(UserError, match="unknown training stage"):
        scorer.set_stage("pretrain")


def test_labels_mask_prompt_and_modality_tokens(scorer):
    batch = mixed_batch(scorer)
    for modality in ("audio", "video"):
        slots = batch["input_ids"] == scorer.placeholder_ids[modality]
        assert slots.any() and (batch["labels"][slots] == IGNORE_INDEX).all()
    assert (batch["labels"][batch["prompt_mask"]] == IGNORE_INDEX).all()
