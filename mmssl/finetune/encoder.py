"""The encoder: loading it from a run folder or a recipe, and embedding rows with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmssl.eval.embed import evaluating
from mmssl.finetune.config import FinetuneError
from mmssl.modality import Processor


def encoder_kind(path: Path) -> tuple[str, Path]:
    """``("run", folder/recipe.yaml)`` or ``("recipe", file)``.

    Raises:
        FinetuneError: ``path`` is neither a run folder nor a recipe file.
    """
    path = Path(path)
    if path.is_dir() and (path / "recipe.yaml").is_file():
        return "run", path / "recipe.yaml"
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return "recipe", path
    what = "a folder without recipe.yaml" if path.is_dir() else ("not found" if not path.exists() else "a file")
    raise FinetuneError(
        f"encoder {path} ({what}) is neither an mmssl run folder (a folder with recipe.yaml, written by "
        "`mmssl train`) nor a recipe file (.yaml)"
    )


def recipe_column(path: Path, modality: str, trust_plugins: bool = False) -> str:
    """The data column of ``modality`` in the recipe of a run folder or recipe file (compiled without weights;
    a run folder's plugin files only with ``trust_plugins``).

    Raises:
        FinetuneError: The path is neither, or the recipe has no such modality.
    """
    from mmssl.compiler import compile_recipe
    from mmssl.run import compile_run_recipe

    kind, recipe_file = encoder_kind(path)
    if kind == "run":
        recipe = compile_run_recipe(Path(path), trust_plugins, weights=False).recipe
    else:
        recipe = compile_recipe(recipe_file, weights=False, check_evaluation_data=False).recipe
    if modality not in recipe.modalities:
        has = sorted(recipe.modalities)
        raise FinetuneError(f"modality {modality!r} is not in the recipe {recipe_file} (has {has})")
    return recipe.column_of(modality)


def load_encoder(
    path: Path, modality: str, fit_values: list[Any], seed: int, trust_plugins: bool = False
) -> tuple[nn.Module, Processor, str, bool]:
    """``(encoder, processor, kind, released)`` of ``modality``.

    A run folder gives its trained encoder and fitted processor. A recipe gives a released encoder
    (``modalities.<m>.encoder``) or a random init (drawn from ``seed``) of the plugin's own, with a processor
    fitted on ``fit_values`` (the training manifest's column).
    """
    from mmssl.build import build_encoder
    from mmssl.compiler import compile_recipe

    kind, recipe_file = encoder_kind(path)
    if kind == "run":
        from mmssl.run import load_run

        run = load_run(path, trust_plugins=trust_plugins)
        released = run.plan.recipe.modalities[modality].encoder is not None
        return run.model.encoders[modality], run.processors[modality], kind, released
    plan = compile_recipe(recipe_file, weights=[modality], check_evaluation_data=False)
    plugin = plan.plugins[modality]
    processor = plugin.build_processor(plan.modality_options[modality], iter(fit_values))
    torch.manual_seed(seed)
    encoder = build_encoder(plan, modality, processor)
    return encoder, processor, kind, plan.encoder_spec(modality) is not None


def pooled(encoder: nn.Module, processor: Processor, samples: list[Any], device: str) -> Tensor:
    """Pooled features of prepared samples, gradients kept. Shapes: -> [B, D] float32 on ``device``."""
    return encoder(processor.collate(samples).to(device)).pooled.float()


@torch.no_grad()
def embed(encoder: nn.Module, processor: Processor, values: list[Any], batch_size: int, device: str) -> Tensor:
    """Pooled features of raw values with the encoder in eval mode. Shapes: -> [N, D] float32 on the CPU."""
    with evaluating(encoder):
        out = [
            pooled(
                encoder,
                processor,
                [processor.prepare(processor.decode(v)) for v in values[lo : lo + batch_size]],
                device,
            ).cpu()
            for lo in range(0, len(values), batch_size)
        ]
    return torch.cat(out)
