"""Experiment trackers (``train.report_to``) through Accelerate: TensorBoard, Weights & Biases, MLflow.

Everything stays in the run folder and works offline: TensorBoard events under ``tb/<recipe name>/``, wandb in
offline mode under ``wandb/`` (``WANDB_MODE`` overrides; ``wandb sync`` uploads later), MLflow in a local file
store ``mlruns/`` (``MLFLOW_TRACKING_URI`` overrides). The recipe is logged as the run's parameters (flattened
``section.key`` names); ``eval.json`` results are added as ``eval/<metric>`` to the same runs when evaluation ends
(``log_evaluation``). The tracker run ids go to ``trackers.json`` so a resumed run and its evaluation continue them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TRACKERS_FILE = "trackers.json"


def flat_parameters(tree: Any, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested dicts as ``a.b.c`` keys; lists and other values as JSON text (trackers take scalars only)."""
    out: dict[str, str | int | float | bool] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flat_parameters(value, f"{prefix}{key}."))
        return out
    name = prefix[:-1]
    out[name] = tree if isinstance(tree, str | int | float | bool) else json.dumps(tree)
    return out


def mlflow_uri(output: Path) -> str:
    """``MLFLOW_TRACKING_URI``, else the run folder's file store ``mlruns/``.

    MLflow 3 keeps its file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``: set here (when the URI is
    ours) because a database backend would need a server-side install and the file store is what works offline.
    """
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path(output).resolve() / "mlruns").as_uri()


def init_kwargs(names: list[str], output: Path, resume_step: int) -> dict[str, dict[str, Any]]:
    """Per-tracker arguments: offline wandb in the run folder, resumed runs where ``trackers.json`` has ids."""
    saved = _saved(output)
    kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in names and resume_step:
        kwargs["tensorboard"] = {"purge_step": resume_step + 1}
    if "wandb" in names:
        kwargs["wandb"] = {"mode": os.environ.get("WANDB_MODE", "offline"), "dir": str(output)}
        if "wandb" in saved:
            kwargs["wandb"] |= {"id": saved["wandb"], "resume": "allow"}
    if "mlflow" in names:
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri(output))
        kwargs["mlflow"] = {"run_id": saved["mlflow"]} if "mlflow" in saved else {}
    return kwargs


def start(accelerator: Any, names: list[str], recipe_tree: dict[str, Any], name: str, output: Path, step: int) -> None:
    """``init_trackers`` with the recipe as parameters; remembers the run ids in ``trackers.json``."""
    if not names:
        return
    parameters = flat_parameters(recipe_tree)
    accelerator.init_trackers(name, config=parameters, init_kwargs=init_kwargs(names, output, step))
    if not accelerator.is_main_process:
        return
    ids: dict[str, str] = {"name": name}
    if "mlflow" in names:
        ids["mlflow"] = accelerator.get_tracker("mlflow", unwrap=True).info.run_id
        ids["mlflow_uri"] = mlflow_uri(output)
    if "wandb" in names:
        ids["wandb"] = accelerator.get_tracker("wandb", unwrap=True).id
    (Path(output) / TRACKERS_FILE).write_text(json.dumps(ids, indent=2) + "\n")


def _saved(output: Path) -> dict[str, str]:
    file = Path(output) / TRACKERS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def log_evaluation(run_dir: Path, names: list[str], results: dict[str, float], step: int) -> None:
    """Add evaluation results as ``eval/<metric>`` (and, for wandb, the run summary) to the run's trackers."""
    saved = _saved(run_dir)
    metrics = {f"eval/{k}": float(v) for k, v in results.items()}
    if not metrics or not names:
        return
    if "tensorboard" in names:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(run_dir) / "tb" / saved.get("name", "")))
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)
        writer.close()
    if "mlflow" in names and "mlflow" in saved:
        import mlflow

        if saved["mlflow_uri"].startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(saved["mlflow_uri"])
        with mlflow.start_run(run_id=saved["mlflow"]):
            mlflow.log_metrics(metrics, step=step)
    if "wandb" in names and "wandb" in saved:
        import wandb

        run = wandb.init(
            project=saved.get("name"), id=saved["wandb"], resume="allow", dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )  # fmt: skip
        run.summary.update(metrics)  # a resumed offline run cannot log at an earlier step: the summary holds them
        run.finish()
