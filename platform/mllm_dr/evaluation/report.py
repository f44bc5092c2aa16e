"""``mllm-dr evaluate``: the paper's protocol on one split, as ``report.json``, ``report.md``, plots and predictions.

Two halves, kept apart so the second can be tested on hand-made predictions:

- model -> predictions (:func:`predict`): every ok interview of the split scored once per modality set (the
  ablation masks modalities at inference), error rows carried along;
- predictions -> report (:func:`build_report`, :func:`write_report`): pure arithmetic on the predictions table
  through :mod:`mllm_dr.evaluation.metrics`, then files.

Headline figures are on subject totals of the final score with every modality; breakdowns by score kind
(generated / regression / final), modality set, site and split follow the same layout (a *block*: the
metrics, the training-mean baseline's ``baseline_*`` and the bootstrap ``ci``).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, ValidationError
from tqdm import tqdm

from mllm_dr.config import StrictModel, describe_validation_error
from mllm_dr.data.records import LIGHT_COLUMNS, STATUS_OK, InterviewRecord, read_records
from mllm_dr.errors import UserError
from mllm_dr.evaluation import metrics, plots
from mllm_dr.evaluation.predictions import (
    MODALITY_SETS,
    Scorer,
    parse_modality_sets,
    rows_to_table,
    score_records,
)
from mllm_dr.questionnaires import Questionnaire, get_questionnaire
from mllm_dr.storage import Location, resolve

DECISION_SUPPORT = ("Decision support, not diagnosis: these scores help a clinician review an interview; "
                    "they do not diagnose depression and must not replace a clinical assessment.")
SCORE_COLUMNS = {"final": "final_score", "generated": "generated_score", "regression": "regression_score"}
PLOTS = {"scatter": "totals_scatter.png", "confusion": "item_confusion.png", "sites": "error_by_site.png"}
_SCORE_CHUNK = 8  # interviews per model.score call: one forward pass (its KV cache grows with it), a progress step,
# and the unit of failure isolation


class EvaluationConfig(StrictModel):
    cutoff: int | None = Field(None, ge=0, description="screening cut-off (total >= cutoff); default: the "
                                                        "questionnaire's (10); the CMDC protocol uses 9")
    bootstrap: int = Field(metrics.DEFAULT_BOOTSTRAP, ge=0, description="bootstrap resamples (0: no intervals)")
    seed: int = Field(0, description="bootstrap seed")
    level: float = Field(metrics.DEFAULT_LEVEL, gt=0, lt=1, description="confidence level of the intervals")
    modality_sets: list[str] = Field(default_factory=lambda: list(MODALITY_SETS),
                                     description="modality sets to score (the first with 'all' is the headline)")
    generate: bool = Field(True, description="generate rationales (False: regression head only, fast)")
    max_new_tokens: int | None = Field(None, gt=0, description="generation length (default: the model's)")


@dataclass(frozen=True)
class TrainingMeans:
    """What the baseline predicts for every subject: the training mean total and item means."""

    total: float
    items: list[float]
    n_subjects: int
    source: str


# --------------------------------------------------------------------------- baseline


def training_means(records: Sequence[InterviewRecord], questionnaire: Questionnaire, source: str) -> TrainingMeans:
    """Mean total and item scores over the labelled ok records of ``questionnaire``.

    Records labelled with a total only (no item scores) count for the total; when no record has item scores,
    each item mean is the total mean spread evenly over the items.
    """
    labelled = [r for r in records if r.ok and r.questionnaire == questionnaire.id
                and (r.total_score is not None or r.item_scores is not None)]
    if not labelled:
        raise UserError(f"no labelled {questionnaire.id} interviews for the baseline ({source})")
    totals = [r.total_score if r.total_score is not None else sum(r.item_scores) for r in labelled]
    itemised = np.array([r.item_scores for r in labelled if r.item_scores is not None], dtype=float)
    total = float(np.mean(totals))
    items = itemised.mean(0).tolist() if len(itemised) else [total / questionnaire.n_items] * questionnaire.n_items
    return TrainingMeans(total, [float(m) for m in items], len(labelled), source)


def store_training_means(store: Location, questionnaire: Questionnaire,
                         evaluated: Sequence[InterviewRecord]) -> TrainingMeans:
    """The baseline from the store's train split; without one, from the evaluated records themselves.

    The fallback knows the test labels' mean, so it flatters the baseline (the model looks worse, never
    better); ``source`` says which one was used and the report prints it.
    """
    train = [r for r in read_records(store, columns=LIGHT_COLUMNS) if r.split == "train"]
    try:
        return training_means(train, questionnaire, f"train split of {store.uri}")
    except UserError:
        return training_means(evaluated, questionnaire,
                              "the evaluated interviews themselves (the store has no labelled train split; "
                              "an optimistic baseline)")


# --------------------------------------------------------------------------- model -> predictions


def predict(model: Scorer, records: Sequence[InterviewRecord], modality_sets: Sequence[str],
            generate: bool = True, max_new_tokens: int | None = None, progress: bool = True) -> pa.Table:
    """Score every record once per modality set; a table of :data:`PREDICTION_SCHEMA` rows."""
    kwargs = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    chunks = [records[i:i + _SCORE_CHUNK] for i in range(0, len(records), _SCORE_CHUNK)]
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(records) * len(modality_sets), unit="interview", disable=not progress) as bar:
        for modality_set in modality_sets:
            bar.set_description(f"scoring ({modality_set})")
            for chunk in chunks:
                rows.extend(score_records(model, chunk, modality_set, generate=generate, **kwargs))
                bar.update(len(chunk))
    return rows_to_table(rows)


# --------------------------------------------------------------------------- predictions -> report


def subject_totals(predictions: pd.DataFrame, score: str = "final") -> pd.DataFrame:
    """One row per labelled, scored subject and modality set: ``true_total`` and the ``predicted`` total.

    A subject enters a score kind's totals only when every item has that score (a generated score can be
    missing when the answer could not be parsed).
    """
    column = SCORE_COLUMNS[score]
    ok = predictions[(predictions["status"] == STATUS_OK) & predictions["true_total"].notna()]
    grouped = ok.groupby(["modality_set", "site", "interview_id"], sort=True)
    totals = grouped.agg(split=("split", "first"), true_total=("true_total", "first"),
                         predicted=(column, "sum"), scored=(column, "count"), items=("item", "count"))
    complete = totals[totals["scored"] == totals["items"]]
    return complete.drop(columns=["scored", "items"]).reset_index()


def totals_block(totals: pd.DataFrame, means: TrainingMeans, cutoff: int, config: EvaluationConfig) -> dict:
    return metrics.total_metrics(totals["true_total"].to_numpy(float), totals["predicted"].to_numpy(float),
                                 means.total, cutoff, config.bootstrap, config.seed, config.level)


def item_blocks(rows: pd.DataFrame, column: str, questionnaire: Questionnaire, means: TrainingMeans) -> list[dict]:
    labelled = rows[(rows["status"] == STATUS_OK) & rows["true_score"].notna() & rows[column].notna()]
    blocks = []
    for index, item in enumerate(questionnaire.items):
        of_item = labelled[labelled["item"] == index + 1]
        blocks.append({"item": index + 1, "key": item.key, "name": item.name["en"],
                       **metrics.item_metrics(of_item["true_score"].to_numpy(float),
                                              of_item[column].to_numpy(float), means.items[index])})
    return blocks


def _ordered_sets(predictions: pd.DataFrame) -> list[str]:
    present = set(predictions["modality_set"].dropna())
    return [name for name in MODALITY_SETS if name in present]


def build_report(predictions: pa.Table | pd.DataFrame, questionnaire: Questionnaire, means: TrainingMeans,
                 config: EvaluationConfig, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every number of the report from a predictions table (pure: no model, no files)."""
    frame = predictions.to_pandas() if isinstance(predictions, pa.Table) else predictions
    cutoff = questionnaire.screen_cutoff if config.cutoff is None else config.cutoff
    sets = _ordered_sets(frame)
    if not sets:
        raise UserError("no predictions to report on")
    headline_set = sets[0]
    rows = frame[frame["modality_set"] == headline_set]
    by_kind = {kind: subject_totals(rows, kind) for kind in SCORE_COLUMNS}
    final = by_kind["final"]
    keys = rows[["site", "interview_id"]].drop_duplicates()
    errors = rows.loc[rows["status"] != STATUS_OK, ["site", "interview_id"]].drop_duplicates()
    scored = rows[rows["status"] == STATUS_OK]
    unlabelled = scored.loc[scored["true_total"].isna(), ["site", "interview_id"]].drop_duplicates()

    def block(totals: pd.DataFrame) -> dict[str, Any]:
        return totals_block(totals, means, cutoff, config)

    all_sets = subject_totals(frame, "final")
    report: dict[str, Any] = {
        "title": f"MLlm-DR evaluation ({questionnaire.id.upper()})",
        "notice": DECISION_SUPPORT,
        **(context or {}),
        "questionnaire": questionnaire.id,
        "cutoff": cutoff,
        "headline": {"score": "final", "modality_set": headline_set},
        "protocol": {
            "unit": "subject total = sum of the item scores",
            "moments": "population (ddof=0)",
            "screening": f"total >= {cutoff} is positive",
            "bootstrap": {"resamples": config.bootstrap, "seed": config.seed, "level": config.level,
                          "by": "subject", "method": "percentile"},
        },
        "baseline": asdict(means),
        "counts": {"interviews": len(keys), "subjects": len(final), "errors": len(errors),
                   "unlabelled": len(unlabelled)},
        **block(final),
        "items": item_blocks(rows, "final_score", questionnaire, means),
        "by_score": {
            kind: {**block(totals),
                   "coverage": _coverage(scored, SCORE_COLUMNS[kind]),
                   "items": item_blocks(rows, SCORE_COLUMNS[kind], questionnaire, means)}
            for kind, totals in by_kind.items()
        },
        "by_modality_set": {name: block(all_sets[all_sets["modality_set"] == name]) for name in sets},
        "by_site": {site: block(final[final["site"] == site]) for site in sorted(final["site"].unique())},
        "by_split": {str(split): block(final[final["split"].astype(str) == str(split)])
                     for split in sorted(final["split"].astype(str).unique())},
        "plots": dict(PLOTS),
    }
    return report


def _coverage(scored: pd.DataFrame, column: str) -> float | None:
    """Share of scored items that have this score (the generated answer's parse rate)."""
    return float(scored[column].notna().mean()) if len(scored) else None


def write_report(predictions: pa.Table, questionnaire: Questionnaire, means: TrainingMeans,
                 config: EvaluationConfig, out: Location, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the report and write ``predictions.parquet``, ``report.json``, ``report.md`` and the plots."""
    report = build_report(predictions, questionnaire, means, config, context)
    buffer = io.BytesIO()
    pq.write_table(predictions, buffer)
    out.join("predictions.parquet").write_bytes(buffer.getvalue())
    out.join("report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    out.join("report.md").write_text(render_markdown(report))
    frame = predictions.to_pandas()
    headline = subject_totals(frame[frame["modality_set"] == report["headline"]["modality_set"]], "final")
    out.join(PLOTS["scatter"]).write_bytes(plots.totals_scatter(headline, report))
    out.join(PLOTS["confusion"]).write_bytes(plots.item_confusions(report["items"]))
    out.join(PLOTS["sites"]).write_bytes(plots.error_by_site(report["by_site"]))
    return report


# --------------------------------------------------------------------------- markdown


def _f(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ci(block: dict[str, Any], name: str) -> str:
    interval = (block.get("ci") or {}).get(name)
    return "—" if interval is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


_TOTAL_ROWS = (("mae", "MAE ↓"), ("rmse", "RMSE ↓"), ("ccc", "CCC ↑"), ("pearson_r", "Pearson r ↑"),
               ("precision", "precision ↑"), ("recall", "recall ↑"), ("f1", "F1 ↑"),
               ("balanced_accuracy", "balanced accuracy ↑"))


def _summary_table(title: str, blocks: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"| {title} | n | MAE | RMSE | CCC | r | F1 | baseline MAE | baseline RMSE |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, b in blocks.items():
        lines.append(f"| {name} | {b['n_subjects']} | {_f(b['mae'])} | {_f(b['rmse'])} | {_f(b['ccc'])} | "
                     f"{_f(b['pearson_r'])} | {_f(b['f1'])} | {_f(b['baseline_mae'])} | {_f(b['baseline_rmse'])} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """A readable summary of ``report.json``: the same numbers, as tables."""
    level = round(100 * report["protocol"]["bootstrap"]["level"])
    baseline, counts, headline = report["baseline"], report["counts"], report["headline"]
    lines = [
        f"# {report['title']}", "",
        f"> **{report['notice']}**", "",
        (f"- Model: `{report.get('model', {}).get('path', '—')}`; store: `{report.get('store', '—')}`; "
         f"split: {report.get('split', '—')}"),
        (f"- Subjects: {counts['subjects']} scored and labelled of {counts['interviews']} interviews "
         f"(error rows: {counts['errors']}, unlabelled: {counts['unlabelled']})"),
        f"- Screening: PHQ total ≥ {report['cutoff']} is positive",
        (f"- Baseline: predict the training mean ({baseline['total']:.2f}, from {baseline['n_subjects']} "
         f"subjects of {baseline['source']}) for everyone"),
        (f"- Intervals: {level}% percentile bootstrap over subjects, {report['protocol']['bootstrap']['resamples']} "
         f"resamples, seed {report['protocol']['bootstrap']['seed']}; population moments (ddof=0)"), "",
        f"## Subject totals ({headline['score']} score, modality set `{headline['modality_set']}`)", "",
        f"| metric | model | {level}% CI | training-mean baseline | {level}% CI |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in _TOTAL_ROWS:
        lines.append(f"| {label} | {_f(report[key])} | {_ci(report, key)} | {_f(report['baseline_' + key])} | "
                     f"{_ci(report, 'baseline_' + key)} |")
    c = report["confusion"]
    lines += ["", f"Screening confusion: TP {c['tp']}, FP {c['fp']}, FN {c['fn']}, TN {c['tn']}.", "",
              "## Items (final score)", "",
              "| # | item | n | MAE | baseline MAE | exact accuracy | baseline accuracy |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for item in report["items"]:
        lines.append(f"| {item['item']} | {item['name']} | {item['n_subjects']} | {_f(item['mae'])} | "
                     f"{_f(item['baseline_mae'])} | {_f(item['accuracy'])} | {_f(item['baseline_accuracy'])} |")
    lines += ["", "## Generated vs regression vs final score", "",
              *_summary_table("score", report["by_score"]), "",
              "Coverage (items with that score): " + ", ".join(
                  f"{kind} {_f(b['coverage'], 2)}" for kind, b in report["by_score"].items()) + ".", "",
              "## Modality sets (final score; missing modalities masked at inference)", "",
              *_summary_table("modality set", report["by_modality_set"]), "",
              "## Sites", "", *_summary_table("site", report["by_site"]), "",
              "## Splits", "", *_summary_table("split", report["by_split"]), "",
              "## Plots", "",
              f"![Predicted vs true totals]({PLOTS['scatter']})", "",
              f"![Item confusion matrices]({PLOTS['confusion']})", "",
              f"![Error by site]({PLOTS['sites']})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def evaluate(model_dir: str, store_uri: str, splits: Sequence[str], out_uri: str, config: EvaluationConfig,
             base_llm_dir: str | None = None, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Load the bundle, score the split(s), write the report; returns ``report.json``'s content."""
    from mllm_dr.model.bundle import load_bundle, read_bundle_description

    description = read_bundle_description(model_dir)
    store = resolve(store_uri)
    questionnaire = get_questionnaire(description["questionnaire"])
    filters = [("questionnaire", "=", questionnaire.id)]
    if "all" not in splits:
        filters.append(("split", "in", list(splits)))
    records = read_records(store, filters=filters)
    if not records:
        raise UserError(f"no {questionnaire.id} interviews in split {','.join(splits)} of {store.uri}")
    means = store_training_means(store, questionnaire, records)
    device = device or _default_device()
    model = load_bundle(model_dir, base_llm_dir=base_llm_dir, device=device)
    started = time.perf_counter()
    predictions = predict(model, records, config.modality_sets, config.generate, config.max_new_tokens, progress)
    context = {"model": {"path": str(model_dir), "base_llm": base_llm_dir or description["base_llm"],
                         "metadata": description.get("metadata", {})},
               "store": store.uri, "split": ",".join(splits), "device": device,
               "scoring_seconds": round(time.perf_counter() - started, 3)}
    return write_report(predictions, questionnaire, means, config, resolve(out_uri), context)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(args: argparse.Namespace) -> int:
    try:
        config = EvaluationConfig(
            cutoff=args.cutoff, bootstrap=args.bootstrap, seed=args.seed,
            modality_sets=parse_modality_sets(args.modality_sets), generate=not args.no_generate,
            max_new_tokens=args.max_new_tokens)
    except ValidationError as exc:
        raise UserError(f"invalid option: {describe_validation_error(exc)}") from None
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    report = evaluate(args.model, args.store, splits, args.out, config, args.base_llm, args.device)
    print(f"{report['counts']['subjects']} subjects: MAE {_f(report['mae'])} (baseline {_f(report['baseline_mae'])}), "
          f"RMSE {_f(report['rmse'])}, CCC {_f(report['ccc'])}, F1 {_f(report['f1'])} -> {args.out}")
    return 0
