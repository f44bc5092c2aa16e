"""The report's figures as PNG bytes (matplotlib's Agg canvas, no pyplot state: safe in workers and servers)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)  # fixed margins: "tight" would draw twice
    return buffer.getvalue()


def totals_scatter(totals: pd.DataFrame, report: dict[str, Any]) -> bytes:
    """Predicted vs true subject totals, the identity line, the cut-off and the baseline's constant guess."""
    figure = Figure(figsize=(5.2, 5))
    ax = figure.subplots()
    top = 3 * len(report["items"])
    ax.plot([0, top], [0, top], color="grey", lw=1, label="identity")
    ax.axhline(report["baseline"]["total"], color="tab:orange", ls="--", lw=1, label="training-mean baseline")
    ax.axvline(report["cutoff"] - 0.5, color="tab:red", ls=":", lw=1, label=f"cut-off ≥ {report['cutoff']}")
    ax.axhline(report["cutoff"] - 0.5, color="tab:red", ls=":", lw=1)
    ax.scatter(totals["true_total"], totals["predicted"], s=22, alpha=0.75, label="subjects")
    ax.set(xlim=(-0.5, top + 0.5), ylim=(-0.5, top + 0.5), xlabel="true total", ylabel="predicted total",
           title=f"Subject totals (n={len(totals)}, MAE {_num(report['mae'])}, CCC {_num(report['ccc'])})")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    return _png(figure)


def item_confusions(items: list[dict[str, Any]]) -> bytes:
    """One 4x4 confusion matrix per item (rows true score, columns predicted), counts written in the cells."""
    columns = min(3, len(items))
    rows = math.ceil(len(items) / columns)
    figure = Figure(figsize=(3.1 * columns, 3 * rows))
    figure.subplots_adjust(wspace=0.45, hspace=0.6, top=0.92, bottom=0.08)
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax, item in zip(axes, items):
        matrix = np.array(item["confusion"])
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max())))
        for (true, predicted), count in np.ndenumerate(matrix):
            ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set(xticks=range(4), yticks=range(4), xlabel="predicted", ylabel="true",
               title=f"{item['item']}. {item['name']} (acc {_num(item['accuracy'], 2)})")
        ax.title.set_fontsize(8)
    for ax in axes[len(items):]:
        ax.set_visible(False)
    return _png(figure)


def error_by_site(by_site: dict[str, dict[str, Any]]) -> bytes:
    """MAE of subject totals per site with its bootstrap interval, beside the training-mean baseline's."""
    sites = list(by_site)
    figure = Figure(figsize=(max(4.0, 1.2 * len(sites) + 2), 3.6))
    ax = figure.subplots()
    x = np.arange(len(sites))
    for offset, prefix, label in ((-0.2, "", "model"), (0.2, "baseline_", "training-mean baseline")):
        values = [by_site[s][prefix + "mae"] or 0.0 for s in sites]
        errors = np.array([_error_bar(by_site[s], prefix + "mae") for s in sites]).T.reshape(2, len(sites))
        ax.bar(x + offset, values, width=0.4, yerr=errors, capsize=3, label=label)
    ax.set_xticks(x, [f"{s}\n(n={by_site[s]['n_subjects']})" for s in sites])
    ax.set(ylabel="MAE of totals", title="Error by site")
    figure.subplots_adjust(bottom=0.2)
    ax.legend(fontsize=8)
    return _png(figure)


def _error_bar(block: dict[str, Any], name: str) -> tuple[float, float]:
    value, interval = block[name], (block.get("ci") or {}).get(name)
    if value is None or interval is None:
        return 0.0, 0.0
    return max(0.0, value - interval[0]), max(0.0, interval[1] - value)


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
