"""A tiny random causal LM + tokenizer, built locally, for the demo and the tests.

Nothing can be downloaded here, yet the demo and the tests must exercise the very code path that loads a real
Llama-3 or Qwen2 checkpoint: ``AutoModelForCausalLM.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)``.
So this writes a real Hugging Face model directory: a small randomly initialised Llama (or Qwen2) and a byte-level
BPE tokenizer trained in well under a second on a small built-in English + Chinese corpus, with the special
tokens and chat template of the family it imitates (Llama-3 headers and a two-id EOS; Qwen2 ChatML, tied
embeddings and a pad token). Same seed, same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

from mllm_dr.questionnaires import ANCHORS, PHQ9

Arch = Literal["llama", "qwen2"]

VOCAB_SIZE = 1024
HIDDEN_SIZE = 64

_LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Llama-3-Instruct's template (content trimmed, header lines, <|eot_id|> closes each turn).
_LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Qwen2-Instruct's ChatML template.
_QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_EN = """\
You are a clinical psychologist assessing depression from a recorded interview.
Rate one item of the patient health questionnaire. Score each item from 0 to 3.
Over the last two weeks, how often has the participant been bothered by this problem?
Score: 0 Rationale: The participant reports no problems with this.
Score: 1 Rationale: The participant mentions this happened on several days.
Score: 2 Rationale: The participant says this happened more than half the days.
Score: 3 Rationale: The participant describes this nearly every day.
zero one two three. The score is two. Participant: Interviewer: Audio: Video: Transcript:
Interviewer: How are you doing today? Participant: I'm okay, I guess. I've been pretty tired lately.
Interviewer: How have you been sleeping? Participant: Not great. I wake up at night and can't fall asleep again.
Interviewer: Do you still enjoy the things you used to do? Participant: Not really, I don't feel like doing much.
Interviewer: How is your appetite? Participant: I skip meals a lot, I'm just not hungry.
Interviewer: Can you concentrate at work? Participant: It's hard to focus, I read the same page over and over.
Interviewer: How do you feel about yourself? Participant: Sometimes I feel like a failure, like I let my family down.
Interviewer: When was the last time you felt really happy? Participant: I can't remember, maybe last summer.
Interviewer: Tell me about your friends. Participant: I see them less often now. I stay at home most days.
Participant: I moved slowly and people noticed. I was restless and fidgety, I could not sit still.
The interview suggests the participant feels down and hopeless. Evidence from the transcript and the voice.
[transcript truncated] item instruction answer rationale evidence sleep mood energy appetite interest.
"""

_CORPUS_ZH = """\
你是一名临床心理医生，根据访谈录像评估抑郁症状。
请对患者健康问卷的一个条目评分，每个条目评分为0到3分。
在过去两周里，受访者有多少天受到以下问题的困扰？
评估结果：0。评估理由：受访者没有提到这方面的问题。
评估结果：1。评估理由：受访者提到有好几天出现这种情况。
评估结果：2。评估理由：受访者表示一半以上的天数都是这样。
评估结果：3。评估理由：受访者描述几乎每天都是这样。
零 一 二 两 三。得分为两分。受访者： 访谈者： 音频： 视频： 访谈记录：
访谈者：你最近怎么样？受访者：还行吧，就是最近总觉得很累。
访谈者：你睡眠怎么样？受访者：不太好，晚上经常醒，醒了就睡不着。
访谈者：你还喜欢以前喜欢做的事情吗？受访者：不太喜欢了，什么都不想做。
访谈者：你的食欲怎么样？受访者：经常不想吃饭，没有胃口。
访谈者：你工作的时候能集中注意力吗？受访者：很难集中，看书看不进去。
访谈者：你怎么看待自己？受访者：有时候觉得自己很失败，让家人失望了。
[访谈记录已截断] 条目 说明 回答 理由 证据 睡眠 情绪 精力 食欲 兴趣。
"""


def _corpus() -> list[str]:
    """The built-in text plus every questionnaire item and anchor, so PHQ vocabulary gets whole tokens."""
    lines = _CORPUS_EN.splitlines() + _CORPUS_ZH.splitlines()
    for item in PHQ9.items:
        lines += [item.name["en"], item.text["en"], item.name["zh"], item.text["zh"]]
    for anchors in ANCHORS.values():
        lines += [f"{i} = {a}" for i, a in enumerate(anchors)]
    return lines


def train_tokenizer(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Byte-level BPE (the GPT-2 / Llama-3 / Qwen2 kind): any text, any language, never an unknown token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_LLAMA_SPECIALS + _QWEN_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus() * 4, trainer=trainer)
    return tokenizer


def _hf_tokenizer(arch: Arch) -> PreTrainedTokenizerFast:
    backend = train_tokenizer()
    if arch == "llama":
        # Llama-3-Instruct: no pad token; EOS is <|end_of_text|>, turns end with <|eot_id|>.
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
            chat_template=_LLAMA_TEMPLATE, model_max_length=4096)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=_QWEN_TEMPLATE, model_max_length=4096)


def build_tiny_llm(out_dir: str | Path, arch: Arch = "llama", seed: int = 0) -> str:
    """Write a tiny random ``arch`` causal LM + tokenizer to ``out_dir``; returns the directory path."""
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _hf_tokenizer(arch)
    common = {
        "vocab_size": len(tokenizer), "hidden_size": HIDDEN_SIZE, "intermediate_size": 2 * HIDDEN_SIZE,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
        # Wider than the usual 0.02 (made for hidden sizes in the thousands): with 0.02 a 64-wide random model's
        # logits stay near-uniform under any LoRA update, so the demo's LM loss could not fall.
        "initializer_range": 0.2,
    }
    if arch == "llama":
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        config = AutoConfig.for_model(
            "llama", **common, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=[tokenizer.eos_token_id, eot])
    else:
        config = AutoConfig.for_model(
            "qwen2", **common, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        do_sample=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def main(args: argparse.Namespace) -> int:
    path = build_tiny_llm(args.out, arch=args.arch, seed=args.seed)
    print(f"tiny {args.arch} LLM written to {path}")
    return 0
