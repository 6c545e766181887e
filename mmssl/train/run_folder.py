"""A run folder's setup: one recipe per folder, written atomically, compared with the recipe on ``--resume``.

The setup is ``processors/``, ``labels.json``, ``recipe.yaml`` and, written last, ``run.json``: a folder with
``run.json`` has a complete setup. ``run.json`` also records the plugin files the run imported (with their SHA-256)
and the history of the recipe changes made when resuming.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mmssl.train import checkpoint as ckpt

SETUP_FILES = ("processors", "labels.json", "recipe.yaml", "run.json")

RESUMABLE_KEYS = (
    "name",
    "description",
    "evaluations",
    "train.steps",
    "train.warmup_steps",
    "train.decay_fraction",
    "train.min_lr_ratio",
    "train.log_every",
    "train.report_to",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.monitor_every",
    "train.monitor_rows",
    "train.num_workers",
    # How the same step is computed (equal results, tests/test_distributed_equivalence.py, test_grad_cache.py):
    "train.strategy",
    "train.fsdp",
    "train.activation_checkpointing",
    "train.compile",
    "train.contrastive_chunk",
    # Per-process rows, when the process count changes and the global batch stays (checked on resume):
    "train.batch_size",
)
"""Key paths (and their sub-keys) a user may change when resuming: run length, schedule length, logging,
checkpoint cadence, evaluations. Any other change (model, data, seed, objectives, optimizer) is refused."""


class RunExistsError(FileExistsError):
    """The output folder holds (part of) another run; the message says how to resume it or start over."""


class RecipeChangedError(ValueError):
    """``--resume`` with a recipe that differs from the run's in keys that cannot change mid-run."""


def has_checkpoint(output: Path) -> bool:
    return ckpt.latest_checkpoint(output / "checkpoints") is not None or (output / "model.safetensors").is_file()


def check_output(output: Path, resume: bool) -> bool:
    """Check that ``output`` can take this run; returns True when a complete setup is there to reuse.

    Raises:
        RunExistsError: Without ``resume``: the folder holds a run, or leftovers of one (setup files without a
            checkpoint). With ``resume``: there is nothing to resume, or the setup is incomplete.
    """
    leftovers = [name for name in SETUP_FILES if (output / name).exists()]
    if not resume:
        if has_checkpoint(output):
            raise RunExistsError(
                f"{output} already holds a run; pass --resume to continue it or choose another --output"
            )
        if leftovers:
            raise RunExistsError(
                f"{output} holds the setup of a run that has no checkpoint yet ({', '.join(leftovers)}); pass "
                "--resume to start that run from step 0 with its saved setup (the recipe must match), or delete "
                f"the folder (rm -r {output}) to start over"
            )
        return False
    if not (output / "run.json").is_file():
        if leftovers:
            raise RunExistsError(
                f"{output}: the run's setup is incomplete (has {', '.join(leftovers)}, no run.json: it stopped while "
                f"the setup was written); delete the folder (rm -r {output}) and train again without --resume"
            )
        raise FileNotFoundError(
            f"--resume: no checkpoint in {output / 'checkpoints'} and no run setup in {output}; train without --resume"
        )
    return True


def write_setup(
    output: Path, write_processors: Callable[[Path], None], labels: dict[str, Any], recipe_yaml: str,
    meta: dict[str, Any],
) -> None:  # fmt: skip
    """Write the setup files atomically, ``run.json`` last (it marks the setup complete)."""
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob(".processors.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = output / f".processors.tmp{os.getpid()}"
    write_processors(tmp)
    os.replace(tmp, output / "processors")
    ckpt.atomic_write_text(output / "labels.json", json.dumps(labels, indent=2) + "\n")
    ckpt.atomic_write_text(output / "recipe.yaml", recipe_yaml)
    ckpt.atomic_write_text(output / "run.json", json.dumps(meta, indent=2) + "\n")


def read_meta(output: Path) -> dict[str, Any]:
    path = output / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, {"c": 2}]}}`` -> ``{"a.b[0]": 1, "a.b[1].c": 2}`` (empty sections kept as leaves)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(tree, list) and tree:
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in RESUMABLE_KEYS)


def recipe_changes(saved_yaml: str, new_yaml: str) -> dict[str, tuple[Any, Any]]:
    """Key path -> (saved value, new value) of every leaf that differs (``None`` where a key is absent)."""
    old, new = flatten(yaml.safe_load(saved_yaml)), flatten(yaml.safe_load(new_yaml))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def check_resume_recipe(output: Path, new_yaml: str) -> dict[str, tuple[Any, Any]]:
    """Compare the recipe of a resumed run with the saved one; returns the (allowed) changes.

    Raises:
        RecipeChangedError: A change to a key outside ``RESUMABLE_KEYS``; every such key path is listed.
    """
    changes = recipe_changes((output / "recipe.yaml").read_text(), new_yaml)
    refused = {k: v for k, v in changes.items() if not _resumable(k)}
    if refused:
        lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise RecipeChangedError(
            f"--resume: the recipe differs from the one {output} was trained with, in keys that change the model, "
            f"the data, the seed or the optimisation:\n{lines}\nResume with the saved recipe "
            f"({output / 'recipe.yaml'}) or train into a new --output. Keys that may change when resuming: "
            f"{', '.join(RESUMABLE_KEYS)}."
        )
    return changes


def record_resume(output: Path, step: int, changes: dict[str, tuple[Any, Any]], new_yaml: str) -> None:
    """Write the recipe that runs now to ``recipe.yaml`` and add the changes to ``run.json``'s history."""
    if not changes:
        return
    meta = read_meta(output)
    meta.setdefault("history", []).append(
        {"resumed_at_step": step, "changed": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}
    )
    ckpt.atomic_write_text(output / "recipe.yaml", new_yaml)
    ckpt.atomic_write_text(output / "run.json", json.dumps(meta, indent=2) + "\n")
