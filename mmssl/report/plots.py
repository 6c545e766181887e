"""The report's figures, drawn with matplotlib (Agg backend: no display needed) and saved as PNG files."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mmssl.report.runlog import BASELINE_LABELS, RunLog  # noqa: E402

COLORS = {"": "#1f77b4", "random_init": "#ff7f0e", "released": "#ff7f0e", "raw": "#2ca02c", "chance": "#7f7f7f"}


def save(figure: Figure, file: Path) -> Path:
    figure.tight_layout()
    figure.savefig(file, dpi=110)
    plt.close(figure)
    return file


def _grid(count: int, columns: int = 3, size: tuple[float, float] = (4.2, 2.9)) -> tuple[Figure, list[Any]]:
    rows = max(1, -(-count // columns))
    cols = min(columns, max(count, 1))
    figure, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = list(axes.flat)
    for extra in flat[count:]:
        extra.set_visible(False)
    return figure, flat[:count]


def loss_terms(log: RunLog, file: Path) -> Path | None:
    """The total loss and every objective's terms over steps (one panel per objective)."""
    groups = log.objective_groups()
    if "loss" not in log.steps and not groups:
        return None
    panels = [("total loss", ["loss"])] if "loss" in log.steps else []
    for label, names in groups.items():
        losses = [n for n in names if "loss" in n.rsplit("/", 1)[-1]]
        panels.append((f"{label}: loss terms", losses or names))
        for name in names:  # other terms (accuracy, temperature, ...) each on their own scale; constants left out
            if name not in losses and losses and len(set(log.steps[name][1])) > 1:
                panels.append((f"{label}: {name.split('/', 1)[-1]}", [name]))
    figure, axes = _grid(len(panels))
    for ax, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            steps, values = log.steps[name]
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=name.split("/", 1)[-1])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(names) > 1:
            ax.legend(fontsize=7)
    return save(figure, file)


def schedule(log: RunLog, file: Path) -> Path | None:
    """Learning rate, throughput and gradient norm over steps."""
    panels = [(n, t) for n, t in (("lr", "learning rate"), ("samples_per_s", "throughput (samples / s)"),
                                  ("grad_norm", "gradient norm (before clipping)")) if n in log.steps]  # fmt: skip
    if not panels:
        return None
    figure, axes = _grid(len(panels))
    for ax, (name, title) in zip(axes, panels, strict=True):
        steps, values = log.steps[name]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, color="#444")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return save(figure, file)


def monitors(log: RunLog, file: Path) -> tuple[Path | None, dict[str, list[int]]]:
    """Label-free monitors per modality (RankMe, std, uniformity, alignment); collapse warnings as red lines.

    Returns:
        The PNG (None when the run logged no monitors) and modality -> steps flagged as collapsed.
    """
    groups = log.monitor_groups()
    if not groups:
        return None, {}
    panels = [(m, name) for m, names in groups.items() for name in names]
    figure, axes = _grid(len(panels))
    flagged = {m: log.collapse_steps(m) for m in groups}
    for ax, (modality, name) in zip(axes, panels, strict=True):
        steps, values = log.steps[name]
        ax.plot(steps, values, marker=".", color="#1f77b4")
        for k, step in enumerate(flagged[modality]):
            ax.axvline(step, color="#d62728", alpha=0.6, lw=1.5, label="collapse warning" if k == 0 else None)
        if flagged[modality]:
            ax.legend(fontsize=7)
        ax.set_title(f"{modality}: {name.rsplit('/', 1)[-1]}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return save(figure, file), {m: s for m, s in flagged.items() if s}


def evaluation_bars(table: dict[str, dict[str, float]], file: Path) -> Path | None:
    """Every evaluation metric: trained beside random init (or released), raw input and chance."""
    if not table:
        return None
    kinds = [k for k in ("", "random_init", "released", "raw", "chance") if any(k in row for row in table.values())]
    metrics = list(table)
    figure, ax = plt.subplots(figsize=(max(6.0, 1.9 * len(metrics) + 2), 3.8))
    width = 0.8 / len(kinds)
    x = np.arange(len(metrics))
    for i, kind in enumerate(kinds):
        values = [table[m].get(kind, np.nan) for m in metrics]
        bars = ax.bar(x + (i - (len(kinds) - 1) / 2) * width, values, width, label=BASELINE_LABELS[kind],
                      color=COLORS[kind])  # fmt: skip
        for bar, value in zip(bars, values, strict=True):
            if not np.isnan(value):
                ax.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")  # fmt: skip
    ax.set_xticks(x, metrics, rotation=0, fontsize=8)
    ax.set_ylim(0, max(1.0, np.nanmax([v for row in table.values() for v in row.values()]) * 1.15))
    ax.legend(fontsize=8, ncols=len(kinds), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("evaluation: trained vs baselines")
    return save(figure, file)


def embedding_map(points: np.ndarray, labels: np.ndarray, names: list[str] | None, title: str, file: Path) -> Path:
    """A 2-D map of embeddings coloured by label. Shapes: points [N, 2]; labels [N]."""
    figure, ax = plt.subplots(figsize=(7.0, 5.6))
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        chosen = labels == c
        name = names[int(c)] if names and 0 <= int(c) < len(names) else str(int(c))
        ax.scatter(points[chosen, 0], points[chosen, 1], s=6, color=cmap(i % cmap.N), label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save(figure, file)


def _show(ax: Any, value: Any, caption: str) -> None:
    """Draw one retrieved item: an image thumbnail for [C, H, W] arrays (C = 1 or 3), else wrapped text."""
    array = np.asarray(value) if hasattr(value, "__array__") else None
    if array is not None and array.ndim == 3 and array.shape[0] in (1, 3):
        image = np.clip(np.transpose(array, (1, 2, 0)), 0, 1)
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
    else:
        text = value if isinstance(value, str) else repr(value)
        ax.text(0.5, 0.5, textwrap.fill(text[:160], 22), ha="center", va="center", fontsize=8, wrap=True)
    ax.set_title(caption, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def retrieval_examples(rows: list[tuple[Any, list[tuple[Any, float, bool]]]], title: str, file: Path) -> Path:
    """Queries (first column) and their top matches with cosine similarity; a match of the query's label (or its
    own paired value) is marked in green."""
    top = max(len(matches) for _, matches in rows)
    figure, axes = plt.subplots(len(rows), top + 1, figsize=(1.9 * (top + 1), 1.9 * len(rows)), squeeze=False)
    for r, (query, matches) in enumerate(rows):
        _show(axes[r, 0], query, "query")
        axes[r, 0].patch.set_edgecolor("#1f77b4")
        for c in range(top):
            if c < len(matches):
                value, score, correct = matches[c]
                _show(axes[r, c + 1], value, f"#{c + 1} cos {score:.2f}" + (" (match)" if correct else ""))
                if correct:
                    axes[r, c + 1].title.set_color("#2ca02c")
            else:
                axes[r, c + 1].set_visible(False)
    figure.suptitle(title, fontsize=10)
    return save(figure, file)
