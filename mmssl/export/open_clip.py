"""Export a run whose image and text modalities are the two towers of one open_clip model, in open_clip's format.

The folder holds ``open_clip_model.safetensors`` (the whole CLIP state dict), ``open_clip_config.json``
(``{"model_cfg", "preprocess_cfg"}``, what open_clip's ``local-dir:`` and ``hf-hub:`` loaders read),
``model_configs/<name>.json`` (the bare model config, for ``open_clip.add_model_config``) and ``README.md``.
The trained towers (LoRA merged), mmssl's linear projections (folded into ``visual.proj`` / ``text_projection``)
and the CLIP objective's learned temperature replace those of the source checkpoint.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmssl.encoders.adapt import merge_lora
from mmssl.export.card import REPORT_FOLDER, model_card, report_figures
from mmssl.export.files import MARKER, write_folder
from mmssl.export.formats import register_export_format

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"
MODEL_CONFIGS = "model_configs"
_WHY = "open_clip export needs image and text towers of one open_clip model"


def _describe(spec: Any) -> str:
    enc = spec.encoder
    if enc is None:
        return f"mmssl's own {spec.plugin or 'plugin'} encoder" if spec.plugin else "mmssl's own encoder"
    if enc.library != "open_clip":
        return enc.library
    return f"open_clip {enc.model} ({enc.tower} tower)"


def find_towers(recipe: Any) -> tuple[str, str]:
    """The modalities holding the image and the text tower of one open_clip model.

    Raises:
        ValueError: A tower is missing, given twice, or the two come from different models or checkpoints.
    """
    towers: dict[str, list[str]] = {"image": [], "text": []}
    for modality, spec in recipe.modalities.items():
        enc = spec.encoder
        if enc is not None and enc.library == "open_clip" and enc.tower in towers:
            towers[enc.tower].append(modality)
    uses = "; ".join(f"modality {m!r} uses {_describe(s)}" for m, s in recipe.modalities.items())
    for tower, found in towers.items():
        if not found:
            raise ValueError(f"{_WHY}; no modality is an open_clip {tower} tower ({uses})")
        if len(found) > 1:
            raise ValueError(f"{_WHY}; modalities {found} are all open_clip {tower} towers, keep one")
    image, text = towers["image"][0], towers["text"][0]
    a, b = recipe.modalities[image].encoder, recipe.modalities[text].encoder
    key = ("model", "path", "pretrained", "kwargs")
    if any(getattr(a, k) != getattr(b, k) for k in key):
        raise ValueError(
            f"{_WHY}; modality {image!r} loads {a.model} from {a.path or a.pretrained} (kwargs {a.kwargs}) but "
            f"modality {text!r} loads {b.model} from {b.path or b.pretrained} (kwargs {b.kwargs})"
        )
    return image, text


def _fold(projection: nn.Module, target: Any, where: str, modality: str) -> Any:
    """``target`` (a [D, E] matrix) followed by mmssl's projection, as one [D, E'] matrix (None: unchanged)."""
    if isinstance(projection, nn.Identity):
        return None
    if not isinstance(projection, nn.Linear) or projection.bias is not None:
        raise ValueError(f"modality {modality!r}: its projection {projection} is not a linear map without bias")
    if not isinstance(target, Tensor) or target.ndim != 2:
        raise ValueError(
            f"modality {modality!r}: mmssl's linear projection cannot be folded into open_clip's {where} "
            f"({type(target).__name__}, not a plain matrix); train with `projection: identity`"
        )
    return target.detach() @ projection.weight.detach().T.to(target.dtype)


def _logit_terms(run: Any, image: str, text: str) -> dict[str, Tensor]:
    """``logit_scale`` (and ``logit_bias``) of the clip (else siglip) objective that pairs the two modalities."""
    file = run.path / "objectives.safetensors"
    if not file.is_file():
        return {}
    saved = load_file(str(file))
    for wanted in ("clip", "siglip"):
        for label, kind, options in run.plan.objectives:
            pair = set(getattr(options, "modalities", ()) or ())
            if kind.name != wanted or pair != {image, text}:
                continue
            terms = {
                name: saved[f"{label}.{name}"] for name in ("logit_scale", "logit_bias") if f"{label}.{name}" in saved
            }
            if terms:
                return terms
    return {}


def _write_folder(output: Path, files: dict[str, bytes | dict[str, Tensor]]) -> None:
    """Write ``files`` into ``output`` atomically (see ``mmssl.export.files.write_folder``)."""

    def fill(tmp: Path) -> None:
        for name, content in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, dict):
                save_file({k: v.detach().contiguous().cpu() for k, v in content.items()}, str(tmp / name))
            else:
                (tmp / name).write_bytes(content)

    write_folder(output, fill, MARKER)  # not CONFIG_FILE: a downloaded open_clip model has one too


def _snippet(name: str, builtin: bool, output: Path) -> str:
    folder = str(output)
    lines = ["import open_clip", ""]
    if builtin:
        lines += [
            f"model, _, preprocess = open_clip.create_model_and_transforms({name!r}, "
            f"pretrained={folder + '/' + WEIGHTS_FILE!r})",
            f"tokenizer = open_clip.get_tokenizer({name!r})",
        ]
    else:
        lines += [
            f"# {name!r} is not one of open_clip's built-in architectures: register its config first",
            f"open_clip.add_model_config({folder + '/' + MODEL_CONFIGS!r})",
            f"model, _, preprocess = open_clip.create_model_and_transforms({name!r}, "
            f"pretrained={folder + '/' + WEIGHTS_FILE!r})",
            f"tokenizer = open_clip.get_tokenizer({name!r})",
        ]
    lines += [
        "",
        "# or, with the preprocessing of open_clip_config.json and without registering anything:",
        f"# model, _, preprocess = open_clip.create_model_and_transforms('local-dir:{folder}')",
        f"# tokenizer = open_clip.get_tokenizer('local-dir:{folder}')",
        "model.eval()",
        "image_features = model.encode_image(preprocess(image).unsqueeze(0), normalize=True)",
        'text_features = model.encode_text(tokenizer(["a photo of a cat"]), normalize=True)',
    ]
    return "\n".join(lines)


@register_export_format("open_clip")
def export_open_clip(run_dir: Path, output: Path, trust_plugins: bool = False) -> Path:
    """Write the run's image and text towers as one open_clip model in ``output``; returns ``output``.

    The towers are two of one released open_clip model, or mmssl's own ViT and text transformer trained from
    scratch (``mmssl.export.open_clip_scratch``).

    Raises:
        ValueError: The run has no such pair of towers, or a projection cannot be folded.
    """
    import open_clip

    from mmssl.encoders.open_clip_adapter import create_clip, final_model_config
    from mmssl.export.open_clip_scratch import export_open_clip_scratch, find_pair
    from mmssl.run import compile_run_recipe, load_run

    run_dir, output = Path(run_dir), Path(output)
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise FileNotFoundError(f"{run_dir} is not an mmssl run folder (no recipe.yaml)")
    parsed = compile_run_recipe(run_dir, trust_plugins, weights=False).recipe  # fail before loading any weights
    if not any(s.encoder is not None and s.encoder.library == "open_clip" for s in parsed.modalities.values()):
        run = load_run(run_dir, trust_plugins=trust_plugins)
        return export_open_clip_scratch(run, run_dir, output, _logit_terms(run, *find_pair(run)))
    find_towers(parsed)
    run = load_run(run_dir, trust_plugins=trust_plugins)
    recipe = run.plan.recipe
    image, text = find_towers(recipe)
    spec = recipe.modalities[image].encoder
    released = {m: run.plan.released[m] for m in (image, text)}
    clip, _ = create_clip(spec, recipe.base_dir)
    state = clip.state_dict()
    for modality in (image, text):
        tower = merge_lora(copy.deepcopy(run.model.encoders[modality]).cpu())
        prefix = released[modality].export.get("prefix", "")
        for key, value in tower.state_dict().items():
            full = prefix + key
            if full not in state:
                raise ValueError(f"modality {modality!r}: tower weight {key!r} has no place ({full!r}) in the model")
            state[full] = value.detach().clone()
    embed_dim = run.model.embed_dim
    folded = {
        "visual.proj": _fold(run.model.projections[image], state.get("visual.proj"), "visual.proj", image),
    }
    text_key = released[text].export.get("prefix", "") + "text_projection"
    folded[text_key] = _fold(run.model.projections[text], state.get(text_key), "text_projection", text)
    for key, value in folded.items():
        if value is not None:
            state[key] = value
    for name, value in _logit_terms(run, image, text).items():
        if name in state and state[name] is not None:
            state[name] = value.detach().reshape(state[name].shape).to(state[name].dtype)

    name = spec.model
    config = final_model_config(name, spec.kwargs) or released[image].export.get("model_cfg")
    if config is None:
        raise ValueError(f"open_clip has no config for model {name!r}; cannot write {CONFIG_FILE}")
    config = copy.deepcopy(config)
    if released[image].export.get("model_class") == "CustomTextCLIP":
        config["custom_text"] = True
    changed = config.get("embed_dim") != embed_dim
    config["embed_dim"] = embed_dim
    shipped = (Path(open_clip.__file__).parent / "model_configs" / f"{name}.json").is_file()
    builtin = shipped and not changed and not spec.kwargs
    export_name = name.replace("/", "-")
    if shipped and not builtin:
        export_name = f"{export_name}-mmssl"  # never shadow a built-in config with a changed one

    processor = run.processors[image]
    preprocess = dict(released[image].export.get("preprocess_cfg") or {})
    preprocess.update(
        size=int(processor.options.image_size),
        mean=[float(m) for m in processor.mean],
        std=[float(s) for s in processor.std],
    )
    preprocess = {
        k: v
        for k, v in preprocess.items()
        if k in ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")
    }
    text_options = run.processors[text].options
    card_preprocessing = {
        image: {**preprocess, "input": "pixels [B, 3, H, W]"},
        text: {"tokenizer": f"open_clip.get_tokenizer({export_name!r})", "context_length": text_options.max_length},
    }
    card = model_card(recipe, "open_clip", card_preprocessing, _snippet(export_name, builtin, output), run_dir)
    files: dict[str, Any] = {
        WEIGHTS_FILE: {k: v for k, v in state.items() if isinstance(v, Tensor)},
        CONFIG_FILE: (json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}, indent=2) + "\n").encode(),
        f"{MODEL_CONFIGS}/{export_name}.json": (json.dumps(config, indent=2) + "\n").encode(),
        "README.md": card.encode(),
        MARKER: (json.dumps({"run": str(run_dir.resolve()), "format": "open_clip"}) + "\n").encode(),
    }
    files |= {f"{REPORT_FOLDER}/{f.name}": f.read_bytes() for f in report_figures(run_dir).values()}
    _write_folder(output, files)
    return output
