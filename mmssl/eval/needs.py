"""What each evaluation needs from its data (labelled rows, class names), checked before training.

Each evaluator declares its needs (``EvaluatorType.needs``); a split is looked at only when its source can be
peeked at cheaply (``SourceType.peek``: a manifest is read, nothing is decoded). Sources that cannot be peeked at
are trusted, and an evaluation that still fails is recorded in ``eval.json`` while the others stand.
"""

from __future__ import annotations

from typing import Any

from mmssl.data.sources import Source


def _has_labels(source: Source) -> bool:
    """A row holds a class index (>= 0) or a class name not yet numbered by the run's label space."""
    for row in source.rows:
        label = row.get("label")
        if isinstance(label, str) and label != "" and source.label_names:
            return True
        try:
            if label is not None and label != "" and int(label) >= 0:
                return True
        except (TypeError, ValueError):
            continue
    return False


def evaluation_needs_errors(plan: Any) -> list[tuple[str, str]]:
    """``(key path, message)`` for every need of ``plan.evaluations`` its data cannot meet.

    Args:
        plan: A validated ``mmssl.build.Plan`` (its evaluations line up with ``recipe.evaluations``).
    """
    errors: list[tuple[str, str]] = []
    peeked: dict[str, Source | None] = {}
    for i, (kind, options) in enumerate(plan.evaluations):
        for split, need in kind.needs(options):
            if split not in plan.sources:
                continue  # validation named the missing split
            if split not in peeked:
                peeked[split] = _peek(plan, split, errors)
            source = peeked[split]
            if source is None:
                continue
            if need == "labels" and not _has_labels(source):
                errors.append(
                    (
                        f"evaluations[{i}]",
                        f"{kind.name} needs labelled rows in split {split!r}, but {source.origin} has no labels "
                        f"(give data.{split} a label column, e.g. label_column)",
                    )
                )
            elif need == "class_names" and not (source.class_names or source.label_names):
                errors.append(
                    (
                        f"evaluations[{i}].class_names",
                        f"{kind.name} needs class names, and split {split!r} ({source.origin}) names none (its "
                        "labels are integers or absent); list them here in label order, e.g. class_names: [cat, dog]",
                    )
                )
    return errors


def _peek(plan: Any, split: str, errors: list[tuple[str, str]]) -> Source | None:
    kind, options = plan.sources[split]
    if kind.peek is None:
        return None
    try:
        return kind.peek(options, plan.recipe.base_dir)
    except (ValueError, KeyError) as err:  # a malformed manifest: say so now rather than after training
        errors.append((f"data.{split}", str(err.args[0]) if err.args else str(err)))
        return None
