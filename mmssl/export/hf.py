"""Export a transformers-based encoder of a run as a folder ``AutoModel.from_pretrained`` loads.

LoRA adapters are merged first, so the folder holds the released architecture with the adapted weights. The
tokenizer / feature-extractor files and, for mean-pooled sentence encoders, the sentence-transformers module
files come along; the run's projection into the shared space is saved beside them as
``mmssl_projection.safetensors``.
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

#: Files copied from the released folder (or the text processor's tokenizer folder) when present.
PREPROCESSING_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "preprocessor_config.json",
)
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def transformers_modalities(recipe: Any) -> list[str]:
    return [m for m, spec in recipe.modalities.items() if spec.encoder and spec.encoder.library == "transformers"]


def pick_modality(recipe: Any, modality: str | None) -> str:
    """The modality to export: ``modality`` if given, else the run's only transformers-based one."""
    found = transformers_modalities(recipe)
    described = {
        m: (spec.encoder.library if spec.encoder else "mmssl's own encoder") for m, spec in recipe.modalities.items()
    }
    if modality is not None:
        if modality not in recipe.modalities:
            raise ValueError(f"--modality {modality!r} is not in the run (has {sorted(recipe.modalities)})")
        if modality not in found:
            raise ValueError(
                f"hf export needs an encoder that started from transformers; modality {modality!r} uses "
                f"{described[modality]} (use --format safetensors)"
            )
        return modality
    if len(found) != 1:
        what = "no modality" if not found else f"several modalities ({found}); pick one with --modality"
        raise ValueError(f"hf export needs one transformers-based encoder; the run has {what}: {described}")
    return found[0]


def effective_preprocessing(released: dict[str, Any], options: Any) -> dict[str, Any]:
    """The released encoder's preprocessing with the values the run actually used (the plugin's adopted options,
    e.g. a ``max_length`` below the model's position limit)."""
    return {k: getattr(options, k, v) for k, v in released.items()}


def _snippet(output: Path, pooling: str, kind: str, max_length: int | None = None) -> str:
    folder = str(output)
    if kind != "tokens":
        return (
            "from transformers import AutoModel\n\n"
            f"model = AutoModel.from_pretrained({folder!r}).eval()\n"
            "# feed inputs prepared as in `Preprocessing` above; the pooled embedding is "
            + ("the first token" if pooling == "cls" else "the mean of the tokens")
        )
    pool = "hidden[:, 0]" if pooling == "cls" else "(hidden * mask).sum(1) / mask.sum(1)  # mean over real tokens"
    return f"""import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({folder!r})
model = AutoModel.from_pretrained({folder!r}).eval()
batch = tokenizer(["an example sentence"], padding=True, truncation=True, max_length={max_length}, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
embedding = {pool}"""


@register_export_format("hf", per_modality=True)
@register_export_format("transformers", per_modality=True)
@register_export_format("sentence_transformers", per_modality=True)
def export_hf(run_dir: Path, output: Path, modality: str | None = None, trust_plugins: bool = False) -> Path:
    """Write the run's transformers encoder of ``modality`` (LoRA merged) as a Hugging Face model folder.

    A run without a transformers-based encoder exports its own text encoder trained from scratch instead
    (``mmssl.export.hf_scratch``: an XLM-RoBERTa-XL folder that is also a sentence-transformers model).

    Raises:
        ValueError: The run has no (or several, without ``modality``) transformers-based or own text encoders.
        FileExistsError: ``output`` is a non-empty folder that is not an earlier export.
    """
    from mmssl.export.hf_scratch import export_hf_scratch, sentence_transformers_files
    from mmssl.export.tokenizer_files import save_tokenizer
    from mmssl.run import load_run

    run = load_run(run_dir, trust_plugins=trust_plugins)
    recipe = run.plan.recipe
    found = transformers_modalities(recipe)
    if (modality is None and not found) or (modality is not None and modality not in found):
        if modality is not None and modality in recipe.modalities and recipe.modalities[modality].encoder:
            pick_modality(recipe, modality)  # a released encoder of another library: say so
        return export_hf_scratch(run, Path(run_dir), Path(output), modality)
    m = pick_modality(recipe, modality)
    released = run.plan.released[m]
    encoder = merge_lora(copy.deepcopy(run.model.encoders[m]))
    hf_model = encoder.model
    pooling = released.export.get("pooling", getattr(encoder, "pooling", "mean"))
    kind = released.preprocessing.input
    origin = Path(released.export["path"]) if released.export.get("path") else None  # None: random init
    sources = [origin] if origin is not None else []
    if released.preprocessing.tokenizer:
        sources.insert(0, Path(released.preprocessing.tokenizer))
    preprocessing = effective_preprocessing(released.preprocessing.to_json(), run.plan.modality_options[m])
    preprocessing["pooling"] = pooling
    preprocessing.pop("tokenizer", None)
    projection = {k: v.detach().contiguous() for k, v in run.model.projections[m].state_dict().items()}

    def fill(tmp: Path) -> None:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        for name in PREPROCESSING_FILES:
            for folder in sources:
                if (folder / name).is_file():
                    shutil.copy2(folder / name, tmp / name)
                    break
        if origin is None and kind == "tokens":  # trained from random init on the run's own tokenizer
            length = int(run.plan.modality_options[m].max_length)
            save_tokenizer(run.processors[m], tmp, length, pool_token=False)
            weight = projection.get("weight")
            sentence_transformers_files(tmp, encoder.width, pooling, weight, length)
        if origin is not None and kind == "tokens" and pooling == "mean" and (origin / "modules.json").is_file():
            for name in SENTENCE_TRANSFORMERS_FILES:
                if (origin / name).is_file():
                    shutil.copy2(origin / name, tmp / name)
            st_config = tmp / "sentence_bert_config.json"
            if st_config.is_file() and preprocessing.get("max_length"):
                settings = json.loads(st_config.read_text())
                st_config.write_text(json.dumps({**settings, "max_seq_length": preprocessing["max_length"]}, indent=2))
            for sub in origin.iterdir():
                if sub.is_dir() and sub.name[:1].isdigit() and "_" in sub.name:
                    shutil.copytree(sub, tmp / sub.name)
        if projection:
            save_file(projection, str(tmp / "mmssl_projection.safetensors"))
        info = {"modality": m, "pooling": pooling, "preprocessing": preprocessing, "run": str(Path(run_dir).resolve())}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        snippet = _snippet(output, pooling, kind, preprocessing.get("max_length"))
        card = model_card(recipe, "hf", {m: preprocessing}, snippet, Path(run_dir))
        (tmp / "README.md").write_text(card)
        copy_report_figures(Path(run_dir), tmp)

    return write_folder(output, fill, MARKER)
