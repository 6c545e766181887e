"""Reading a finished (or checkpointed) run folder back: its recipe, processors and model; evaluating it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmssl.build import build_model, load_processors, load_source
from mmssl.compiler import Plan, compile_recipe
from mmssl.data.labels import LabelSpace
from mmssl.eval.base import EvalContext, EvalReport, run_evaluations
from mmssl.modality import Processor
from mmssl.model import JointEmbeddingModel
from mmssl.plugins import check_plugin_files
from mmssl.recipe import Recipe
from mmssl.train import checkpoint as ckpt
from mmssl.train import integrity
from mmssl.train.dist_checkpoint import checkpoint_tensors, is_sharded_checkpoint
from mmssl.train.trackers import log_evaluation


@dataclass
class Run:
    path: Path
    plan: Plan
    processors: dict[str, Processor]
    model: JointEmbeddingModel


#: What ``mmssl eval`` may override: the evaluations, data splits other than the training one, data.on_error.
EVAL_OVERRIDES = "evaluations.*, data.<split>.* of splits other than train, data.on_error, data.max_errors"
_TRAINING_DATA = ("train",)


def check_eval_overrides(overrides: list[str]) -> None:
    """Refuse overrides of anything training used (the model, objectives, the training data, ...).

    Raises:
        ValueError: Naming the first such key.
    """
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        parts = key.replace("[", ".").replace("]", "").split(".")
        if parts[0] == "evaluations" or (parts[0] == "data" and len(parts) > 1 and parts[1] not in _TRAINING_DATA):
            continue
        raise ValueError(
            f"override {key!r}: `mmssl eval` changes only how a trained run is evaluated ({EVAL_OVERRIDES}); "
            "this key changes what was trained: train again to change it"
        )


def compile_run_recipe(
    path: Path, trust_plugins: bool = False, overrides: list[str] | None = None, weights: bool = True
) -> Plan:
    """Compile the recipe of run folder ``path``: its paths resolved as when it trained, its plugin files imported
    only with ``trust_plugins`` and only when their SHA-256 matches what the run recorded."""
    recipe_file = path / "recipe.yaml"
    if not recipe_file.is_file():
        raise FileNotFoundError(f"{path} is not an mmssl run folder (no recipe.yaml)")
    meta = json.loads((path / "run.json").read_text()) if (path / "run.json").is_file() else {}
    base_dir = Path(meta.get("base_dir", path))
    if overrides:
        check_eval_overrides(overrides)

    def consent(recipe: Recipe) -> None:
        if trust_plugins and "plugins" in meta:
            check_plugin_files(recipe.plugins, base_dir, meta["plugins"], str(path))

    return compile_recipe(
        recipe_file,
        overrides or [],
        base_dir=base_dir,
        weights=weights,
        trust_plugins=trust_plugins,
        before_plugins=consent,
        check_evaluation_data=False,
    )


def load_run(
    path: str | Path,
    device: torch.device | str = "cpu",
    trust_plugins: bool = False,
    overrides: list[str] | None = None,
) -> Run:
    """Load ``path/model.safetensors``, or the model part of the latest checkpoint when training did not finish.

    Args:
        trust_plugins: Import the plugin files the run's recipe names (checked against the SHA-256 the run
            recorded). Without it they are not imported: a run folder is data, and may come from anywhere.
        overrides: ``key.path=value`` overrides of the run's recipe (see ``check_eval_overrides``).
    """
    path = Path(path)
    plan = compile_run_recipe(path, trust_plugins, overrides, weights=True)
    if (path / "labels.json").is_file():
        plan.set_labels(LabelSpace.from_json(json.loads((path / "labels.json").read_text())))
    processors = load_processors(plan, path / "processors")
    model = build_model(plan, processors)
    weights = path / "model.safetensors"
    if weights.is_file():
        ckpt.load_weights(model, weights)
    else:
        found = ckpt.latest_checkpoint(path / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"{path}: no model.safetensors and no checkpoint")
        if is_sharded_checkpoint(found):  # FSDP: gathered from the shard files in this one process
            saved = checkpoint_tensors(found)
        else:
            saved = integrity.reading(found / "model.safetensors", lambda: load_file(str(found / "model.safetensors")))
        model.load_state_dict({k.removeprefix("model."): v for k, v in saved.items() if k.startswith("model.")})
    return Run(path, plan, processors, model.to(device).eval())


def random_init_model(plan: Plan, processors: dict[str, Processor]) -> JointEmbeddingModel:
    """The model before training: fresh weights drawn from the recipe's seed, released encoders as released."""
    torch.manual_seed(plan.recipe.seed)
    return build_model(plan, processors).eval()


def evaluate(run: Run, device: torch.device | str = "cpu") -> EvalReport:
    """Run the recipe's evaluations, rewriting ``eval.json`` atomically after each one.

    An evaluation that fails is recorded under ``"errors"`` in ``eval.json`` with its error; the others still run
    and keep their results.
    """
    ctx = EvalContext(
        model=run.model.to(device),
        processors=run.processors,
        columns={m: run.plan.recipe.column_of(m) for m in run.plan.recipe.modalities},
        load_split=lambda split: load_source(run.plan, split),
        build_random_model=lambda: random_init_model(run.plan, run.processors),
        device=device,
        baseline_name="released"
        if any(s.encoder and s.encoder.init == "released" for s in run.plan.recipe.modalities.values())
        else "random_init",
        on_error=run.plan.recipe.data.on_error,
    )

    def write(report: EvalReport) -> None:
        text = json.dumps(report.as_json(), indent=2, sort_keys=True) + "\n"
        ckpt.atomic_write_text(run.path / "eval.json", text)

    rng = torch.get_rng_state()
    report = run_evaluations(run.plan.evaluations, ctx, on_update=write)
    torch.set_rng_state(rng)
    log_evaluation(run.path, list(run.plan.recipe.train.report_to), report.results, run.plan.recipe.train.steps)
    return report
