"""Export every encoder and projection of a run as one safetensors file, with preprocessing and a model card.

The format any tool reads: ``model.safetensors`` (keys ``encoders.<modality>.*`` and ``projections.<modality>.*``,
LoRA merged), ``config.json`` (modalities, encoders, widths, embed_dim, preprocessing), the fitted processors
(``processors/<modality>/``), the recipe and ``README.md``.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from mmssl.encoders.adapt import merge_lora
from mmssl.export.card import copy_report_figures, model_card
from mmssl.export.files import MARKER, write_folder
from mmssl.export.formats import register_export_format
from mmssl.modality import pooled_width
from mmssl.recipe import dump_recipe


@register_export_format("safetensors")
def export_safetensors(run_dir: Path, output: Path, trust_plugins: bool = False) -> Path:
    """Write the run's model (LoRA merged) as ``model.safetensors`` plus its preprocessing and card."""
    from mmssl.run import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir, trust_plugins=trust_plugins)
    recipe = run.plan.recipe
    model = merge_lora(copy.deepcopy(run.model))
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    preprocessing: dict[str, Any] = {}
    modalities: dict[str, Any] = {}
    for m, spec in recipe.modalities.items():
        released = run.plan.released.get(m)
        preprocessing[m] = (
            released.preprocessing.to_json() if released else run.plan.modality_options[m].model_dump(mode="json")
        )
        modalities[m] = {
            "plugin": recipe.plugin_of(m),
            "encoder": spec.encoder.model_dump(mode="json") if spec.encoder else None,
            "width": int(model.encoders[m].width),
            "pooled_width": pooled_width(model.encoders[m]),
            "projection": spec.projection,
        }
    config = {"embed_dim": model.embed_dim, "modalities": modalities, "preprocessing": preprocessing}
    snippet = (
        "from safetensors.torch import load_file\n\n"
        f"weights = load_file({str(Path(output) / 'model.safetensors')!r})\n"
        "# keys: encoders.<modality>.* and projections.<modality>.*; config.json describes each encoder\n"
        "# with mmssl installed: mmssl.run.load_run on the training run rebuilds the modules"
    )

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        shutil.copytree(run_dir / "processors", tmp / "processors")
        (tmp / "recipe.yaml").write_text(dump_recipe(recipe))
        (tmp / MARKER).write_text(json.dumps({"run": str(run_dir.resolve()), "format": "safetensors"}) + "\n")
        (tmp / "README.md").write_text(model_card(recipe, "safetensors", preprocessing, snippet, run_dir))
        copy_report_figures(run_dir, tmp)

    return write_folder(output, fill, MARKER)
