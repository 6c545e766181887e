"""``mmssl report RUN_DIR``: a run explained in plots, as one self-contained ``report.html`` plus its PNGs.

The page embeds every figure (base64 PNG), so it opens offline and can be mailed as one file: the loss and every
objective term, learning rate and throughput, the label-free monitors with collapse warnings marked, the evaluation
table (trained vs random init / released vs raw input vs chance) as numbers and bars, a t-SNE map of test
embeddings coloured by label, and retrieval examples (with thumbnails) for modalities an objective aligns.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmssl.report import plots
from mmssl.report.runlog import BASELINE_LABELS, read_run_log

REPORT_FOLDER = "report"


@dataclass
class Report:
    """What ``build_report`` wrote: the page, every PNG by name, and the collapse warnings by modality."""

    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    collapse: dict[str, list[int]] = field(default_factory=dict)


def _img(file: Path, alt: str) -> str:
    data = base64.b64encode(file.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(table: dict[str, dict[str, float]]) -> str:
    kinds = [k for k in ("", "random_init", "released", "raw", "chance") if any(k in r for r in table.values())]
    head = "".join(f"<th>{BASELINE_LABELS[k]}</th>" for k in kinds)
    body = []
    for metric, row in table.items():
        cells = []
        for k in kinds:
            if k in row:
                better = k and row[""] > row[k]
                mark = ' class="below"' if k and not better else ""
                cells.append(f'<td data-metric="{html.escape(metric)}" data-kind="{k or "trained"}" '
                             f'data-value="{row[k]!r}"{mark}>{row[k]:.4f}</td>')  # fmt: skip
            else:
                cells.append("<td>&ndash;</td>")
        body.append(f"<tr><th>{html.escape(metric)}</th>{''.join(cells)}</tr>")
    return f'<table class="eval"><tr><th>metric</th>{head}</tr>{"".join(body)}</table>'


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1180px; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
img { max-width: 100%; border: 1px solid #eee; }
table.eval { border-collapse: collapse; margin: 0.6em 0; }
table.eval td, table.eval th { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: right; }
table.eval td.below { color: #b00; font-weight: 600; }
.facts { color: #555; } .warn { color: #b00; } .note { color: #666; font-size: 0.9em; }
"""


def build_report(
    run_dir: Path, output: Path | None = None, with_model: bool = True, trust_plugins: bool = False
) -> Report:
    """Write ``report.html`` and the PNGs into ``output`` (default ``RUN_DIR/report``); returns what was written.

    Args:
        with_model: Also load the model for the embedding map and retrieval examples.
        trust_plugins: Import the run's recipe plugin files (see ``mmssl.run.load_run``).

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not an mmssl run folder (no recipe.yaml)")
    output = Path(output) if output is not None else run_dir / REPORT_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    log = read_run_log(run_dir)
    report = Report(output / "report.html")
    figures = report.figures
    sections: list[str] = []

    def add(name: str, file: Path | None) -> Path | None:
        if file is not None:
            figures[name] = file
        return file

    loss = add("loss", plots.loss_terms(log, output / "loss.png"))
    sched = add("schedule", plots.schedule(log, output / "schedule.png"))
    sections.append("<h2>Training</h2>")
    if loss is None:
        sections.append('<p class="note">No metrics.jsonl in the run folder.</p>')
    else:
        sections.append("<p>Total loss and each objective's terms, averaged over each logging interval.</p>")
        sections.append(_img(loss, "loss and objective terms"))
    if sched is not None:
        sections.append(_img(sched, "learning rate and throughput"))

    monitor_png, report.collapse = plots.monitors(log, output / "monitors.png")
    sections.append("<h2>Label-free monitors</h2>")
    if monitor_png is None:
        sections.append('<p class="note">No monitors were logged (set <code>train.monitor_every</code>).</p>')
    else:
        add("monitors", monitor_png)
        for modality, steps in report.collapse.items():
            sections.append(f'<p class="warn">Collapse warning for {html.escape(modality)} at steps '
                            f"{', '.join(map(str, steps))} (red lines).</p>")  # fmt: skip
        if not report.collapse:
            sections.append("<p>No collapse warning.</p>")
        sections.append(_img(monitor_png, "label-free monitors"))

    table = log.evaluation_table()
    sections.append("<h2>Evaluation</h2>")
    if table:
        sections.append("<p>From <code>eval.json</code>. Red: the trained encoder does not beat that baseline.</p>")
        sections.append(_table(table))
        sections.append(_img(add("evaluation", plots.evaluation_bars(table, output / "evaluation.png")), "evaluation"))
    else:
        sections.append('<p class="note">No evaluation results (run <code>mmssl eval RUN_DIR</code>).</p>')
    for label, error in log.errors.items():
        sections.append(f'<p class="warn">Evaluation {html.escape(label)} failed: {html.escape(str(error))}</p>')

    recipe_name = run_dir.name
    if with_model:
        recipe_name = _model_sections(run_dir, output, figures, sections, trust_plugins)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mmssl report: {html.escape(recipe_name)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(recipe_name)}</h1>"
        f'<p class="facts">{html.escape(str(run_dir.resolve()))}</p>{"".join(sections)}</body></html>\n'
    )
    tmp = report.html.with_name(f".{report.html.name}.tmp{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, report.html)
    return report


def _model_sections(
    run_dir: Path, output: Path, figures: dict[str, Path], sections: list[str], trust_plugins: bool
) -> str:
    """The embedding map and retrieval examples (they need the model); returns the recipe's name."""
    from mmssl.build import load_source
    from mmssl.report.embeddings import aligned_pairs, labelled_target, map_points, retrieval_rows
    from mmssl.run import load_run

    run = load_run(run_dir, trust_plugins=trust_plugins)
    recipe = run.plan.recipe
    facts = {"description": recipe.description.strip(), "steps": recipe.train.steps,
             "batch size": recipe.train.batch_size, "objectives": ", ".join(str(o.get("name")) for o in
                                                                           recipe.objectives)}  # fmt: skip
    sections.insert(0, "<ul class='facts'>" + "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>"
                                                      for k, v in facts.items()) + "</ul>")  # fmt: skip
    target = labelled_target(run.plan)
    sections.append("<h2>Embedding map</h2>")
    if target is None or target.split not in recipe.data:
        sections.append('<p class="note">No labelled split in the recipe\'s evaluations to draw.</p>')
    else:
        source = load_source(run.plan, target.split)
        found = map_points(run, source, target.modality, recipe.seed)
        if found is None:
            sections.append('<p class="note">Too few labelled rows to draw a map.</p>')
        else:
            title = f"t-SNE of {target.modality} embeddings ({target.split}, {len(found[1])} rows) by label"
            file = plots.embedding_map(found[0], found[1], source.class_names, title, output / "embedding_map.png")
            figures["embedding_map"] = file
            sections.append(_img(file, "embedding map"))
    pairs = aligned_pairs(run.plan)
    if pairs and target is not None and target.split in recipe.data:
        sections.append("<h2>Retrieval examples</h2>")
        source = load_source(run.plan, target.split)
        for a, b in pairs:
            for query, gallery in ((a, b), (b, a)):
                rows = retrieval_rows(run, source, query, gallery)
                if not rows:
                    continue
                name = f"retrieval_{query}_to_{gallery}"
                title = f"{query} -> {gallery}: top matches among distinct {gallery} values of {target.split}"
                figures[name] = plots.retrieval_examples(rows, title, output / f"{name}.png")
                sections.append(_img(figures[name], title))
    return recipe.name


def eval_numbers_in(page: str) -> dict[tuple[str, str], float]:
    """The evaluation numbers a report page shows: (metric, kind) -> value (for tests and tools)."""
    import re

    found = {}
    for metric, kind, value in re.findall(r'data-metric="([^"]+)" data-kind="([^"]+)" data-value="([^"]+)"', page):
        found[(html.unescape(metric), kind)] = float(value)
    return found


__all__ = ["Report", "build_report", "eval_numbers_in"]
