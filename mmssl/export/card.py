"""The model card (README.md) every export carries: training data, objectives, preprocessing, how to load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

#: The report's figures a card shows (``mmssl report``), in order, with their captions.
CARD_FIGURES = {
    "evaluation": "Evaluation: trained vs random init (or released) vs raw input vs chance",
    "loss": "Training loss and every objective term",
    "monitors": "Label-free monitors (red: collapse warnings)",
    "embedding_map": "t-SNE of test embeddings by label",
}
REPORT_FOLDER = "report"


def report_figures(run_dir: Path) -> dict[str, Path]:
    """The run's report PNGs a card shows (``RUN_DIR/report/<name>.png``), those that exist."""
    folder = Path(run_dir) / REPORT_FOLDER
    return {name: folder / f"{name}.png" for name in CARD_FIGURES if (folder / f"{name}.png").is_file()}


def copy_report_figures(run_dir: Path, export_dir: Path) -> None:
    """Copy the figures the card links (``report/<name>.png``) into the export folder."""
    figures = report_figures(run_dir)
    if figures:
        (Path(export_dir) / REPORT_FOLDER).mkdir(exist_ok=True)
    for file in figures.values():
        shutil.copy2(file, Path(export_dir) / REPORT_FOLDER / file.name)


def _evaluation_lines(found: dict[str, Any]) -> list[str]:
    """eval.json's metrics as a table: each beside its baselines (random init or released, raw input, chance)."""
    from mmssl.report.runlog import BASELINE_LABELS, RunLog

    evaluation = {k: float(v) for k, v in found.items() if isinstance(v, int | float)}
    table = RunLog(evaluation=evaluation).evaluation_table()
    kinds = [k for k in ("", "random_init", "released", "raw", "chance") if any(k in r for r in table.values())]
    lines = ["| metric | " + " | ".join(BASELINE_LABELS[k] for k in kinds) + " |"]
    lines.append("| --- |" + " --- |" * len(kinds))
    for metric, row in table.items():
        lines.append(f"| {metric} | " + " | ".join(f"{row[k]:.4f}" if k in row else "" for k in kinds) + " |")
    shown = {v for row in table.values() for v in row.values()}
    rest = {k: v for k, v in sorted(evaluation.items()) if v not in shown}
    lines += [f"| {k} | {v:.4f} |" + " |" * (len(kinds) - 1) for k, v in rest.items()]
    return lines


def _data_lines(recipe: Any) -> list[str]:
    lines = []
    for split, entry in recipe.data.items():
        details = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "source")
        lines.append(f"- `{split}`: source `{entry.get('source')}`" + (f" ({details})" if details else ""))
    return lines


def _encoder_lines(recipe: Any) -> list[str]:
    lines = []
    for modality, spec in recipe.modalities.items():
        if spec.encoder is None:
            lines.append(f"- `{modality}`: mmssl's own `{spec.plugin or modality}` encoder, trained from scratch")
            continue
        enc = spec.encoder
        start = enc.path or getattr(enc, "pretrained", None)  # fields beyond EncoderSpec's belong to the library
        how = {"full": "all weights trained", "frozen": "frozen (LiT-style)", "lora": "LoRA adapters, merged"}
        name = getattr(enc, "model", None)
        model = f" `{name}`" if name else ""
        lines.append(f"- `{modality}`: started from {enc.library}{model} `{start}`; {how[enc.train]}")
    return lines


def model_card(recipe: Any, export_format: str, preprocessing: dict[str, Any], load_snippet: str, run_dir: Path) -> str:
    """Markdown text of a model card.

    Args:
        recipe: The run's ``Recipe``.
        export_format: ``safetensors``, ``hf`` or ``open_clip``.
        preprocessing: modality -> what its inputs need (sizes, mean/std, tokenizer, sample rate, ...).
        load_snippet: Python code that loads the export without mmssl.
        run_dir: The run folder; its ``eval.json`` and ``parameters.json`` go into the card when present.
    """
    evaluation = _read_json(Path(run_dir) / "eval.json")
    parameters = _read_json(Path(run_dir) / "parameters.json")
    objectives = [f"- `{o.get('name')}`" + _objective_details(o) for o in recipe.objectives]
    parts = [
        "---",
        yaml.safe_dump({"library_name": _library(export_format), "tags": ["mmssl", "self-supervised"]}).strip(),
        "---",
        "",
        f"# {recipe.name}",
        "",
        recipe.description.strip() or "Trained with mmssl.",
        "",
        f"Exported by `mmssl export --format {export_format}`.",
        "",
        "## Training data",
        *_data_lines(recipe),
        "",
        "## Encoders",
        *_encoder_lines(recipe),
        "",
        "## Objectives",
        *objectives,
        f"- {recipe.train.steps} steps of batch {recipe.train.batch_size} x {recipe.train.grad_accum} accumulation, "
        f"peak lr {recipe.train.lr}, schedule {recipe.train.schedule}, seed {recipe.seed}",
        "",
        "## Preprocessing",
        "```json",
        json.dumps(preprocessing, indent=2, sort_keys=True),
        "```",
        "",
        "## How to load",
        "```python",
        load_snippet.strip(),
        "```",
    ]
    if parameters:
        parts += ["", "## Parameters", "```json", json.dumps(parameters, indent=2), "```"]
    if evaluation:
        parts += ["", "## Evaluation (eval.json of the run)", *_evaluation_lines(evaluation)]
        failed = {k: str(e).replace("|", "/") for k, e in evaluation.get("errors", {}).items()}
        parts += [f"| {k} | failed: {e} |" for k, e in sorted(failed.items())]
    figures = report_figures(run_dir)
    if figures:
        parts += ["", "## Training report", "", "From `mmssl report` of the training run (`report/`)."]
        for name, file in figures.items():
            parts += ["", f"![{CARD_FIGURES[name]}]({REPORT_FOLDER}/{file.name})"]
    return "\n".join(parts) + "\n"


def _objective_details(entry: dict[str, Any]) -> str:
    rest = {k: v for k, v in entry.items() if k != "name"}
    return f" ({', '.join(f'{k}={v}' for k, v in rest.items())})" if rest else ""


def _library(export_format: str) -> str:
    return {"hf": "transformers", "open_clip": "open_clip", "timm": "timm", "torch_export": "pytorch"}.get(
        export_format, "safetensors"
    )


def _read_json(file: Path) -> dict[str, Any] | None:
    return json.loads(file.read_text()) if file.is_file() else None
