"""The model bundle: a trained scorer as a directory, loadable with one call on CPU or GPU.

Layout (DESIGN.md, "Model bundle")::

    mllm_dr.json              model config, base LLM reference, questionnaire, feature dims, training metadata
    multimodal.safetensors    LQ-formers, projectors, regression head, placeholder embedding rows
    adapter/                  a standard PEFT LoRA adapter (``PeftModel.from_pretrained`` reads it)
    tokenizer/                the tokenizer with the modality placeholder tokens

The base LLM itself is not copied (it can be 16 GB): ``mllm_dr.json`` records its directory and a few shape
facts, checked on load so that a bundle paired with the wrong base fails with a clear message. The embedding
rows of the placeholder tokens are not in the base checkpoint, so they are stored with the multimodal weights
and a reload reproduces the saved model exactly. ``mllm_dr.json`` is written last: a bundle without it is
incomplete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from mllm_dr import __version__
from mllm_dr.errors import UserError
from mllm_dr.model.scorer import (
    MultimodalScorer,
    ScorerConfig,
    load_base_llm,
    resize_for_placeholders,
    resolve_dtype,
)
from mllm_dr.questionnaires import get_questionnaire

BUNDLE_JSON = "mllm_dr.json"
MULTIMODAL_WEIGHTS = "multimodal.safetensors"
ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
_SHAPE_FACTS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads")


def _base_facts(model: MultimodalScorer) -> dict[str, Any]:
    config = model.causal_lm.config.get_text_config()
    return {key: getattr(config, key, None) for key in _SHAPE_FACTS}


def save_bundle(model: MultimodalScorer, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` as a bundle to the local directory ``out_dir`` (created; existing files replaced)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / BUNDLE_JSON).unlink(missing_ok=True)
    save_file(model.multimodal_state_dict(), str(out / MULTIMODAL_WEIGHTS), metadata={"format": "pt"})
    # The placeholder rows live in multimodal.safetensors; never copy the whole embedding matrix into the adapter.
    model.llm.save_pretrained(str(out / ADAPTER_DIR), save_embedding_layers=False)
    model.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    description = {
        "format_version": FORMAT_VERSION,
        "mllm_dr_version": __version__,
        "config": model.config.model_dump(mode="json"),
        "base_llm": model.base_llm_dir,
        "base_llm_facts": _base_facts(model),
        "questionnaire": model.questionnaire.id,
        "feature_dims": model.feature_dims,
        "dtype": str(model.causal_lm.get_input_embeddings().weight.dtype).removeprefix("torch."),
        "metadata": metadata or {},
    }
    (out / BUNDLE_JSON).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def read_bundle_description(bundle_dir: str | Path) -> dict[str, Any]:
    """``mllm_dr.json`` of a bundle (what ``GET /v1/model`` and reports show), validated lightly."""
    path = Path(bundle_dir) / BUNDLE_JSON
    if not path.is_file():
        raise UserError(f"{bundle_dir} is not a model bundle (no {BUNDLE_JSON})")
    try:
        description = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg})") from None
    if description.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: unsupported bundle format version {description.get('format_version')!r}")
    return description


def load_bundle(bundle_dir: str | Path, base_llm_dir: str | Path | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype | str | None = None) -> MultimodalScorer:
    """A bundle as a ready-to-score :class:`MultimodalScorer` (eval mode, nothing trainable).

    ``base_llm_dir`` overrides the base LLM directory recorded at save time (e.g. the same checkpoint mounted
    elsewhere on a serving node); ``dtype`` defaults to the saved one.
    """
    bundle = Path(bundle_dir)
    description = read_bundle_description(bundle)
    base = Path(base_llm_dir or description["base_llm"])
    if not base.is_dir():
        raise UserError(f"base LLM {base} not found; pass base_llm_dir (the bundle was trained on "
                        f"{description['base_llm']})")
    config = ScorerConfig.model_validate(description["config"])
    tokenizer, causal_lm = load_base_llm(base, resolve_dtype(dtype or description["dtype"]), bundle / TOKENIZER_DIR)
    text_config = causal_lm.config.get_text_config()
    found = {key: getattr(text_config, key, None) for key in _SHAPE_FACTS}
    if found != description["base_llm_facts"]:
        raise UserError(f"base LLM {base} does not match the bundle: {found} != {description['base_llm_facts']}")
    resize_for_placeholders(causal_lm, tokenizer)
    llm = PeftModel.from_pretrained(causal_lm, str(bundle / ADAPTER_DIR), is_trainable=True)
    model = MultimodalScorer(llm, tokenizer, config, get_questionnaire(description["questionnaire"]),
                             description["feature_dims"], str(base.resolve()))
    model.load_multimodal_state_dict(load_file(str(bundle / MULTIMODAL_WEIGHTS)))
    model.freeze()
    return model.to(device).eval()
