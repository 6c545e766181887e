"""Zero-shot classification: compare each input's embedding with embeddings of class-name prompts."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from pydantic import Field

from mmssl.eval.base import EvalContext, EvalOptions, register_evaluator
from mmssl.eval.embed import embed_values


class ZeroShotOptions(EvalOptions):
    modality: str = Field(description="Modality of the inputs to classify (e.g. image).")
    text: str = Field("text", description="Modality of the prompts.")
    query: str = Field("test", description="Labelled split to classify; its source must name its classes.")
    prompts: list[str] = Field(["a photo of a {}."], description="Templates with {} for the class name; averaged.")
    class_names: list[str] | None = Field(None, description="Override the split's class names.")
    baselines: list[str] = Field(default_factory=lambda: ["random_init"])


def zero_shot_accuracy(model, options: ZeroShotOptions, ctx: EvalContext, labels: np.ndarray, names) -> float:
    text_proc = ctx.processors[options.text]
    prompts = [template.format(name) for name in names for template in options.prompts]
    text = embed_values(model, options.text, text_proc, prompts, "projected", options.batch_size, ctx.device)
    classes = F.normalize(text.view(len(names), len(options.prompts), -1).mean(1), dim=-1)
    # the query split's rows, projected from the pooled embeddings a kNN or probe of the same split computed
    inputs = ctx.embeddings(model, options.modality, options.query, "projected", options.batch_size)
    pred = (inputs @ classes.T).argmax(1).numpy()
    return float((pred == labels).mean())


@register_evaluator(
    "zero_shot",
    ZeroShotOptions,
    splits=lambda o: [o.query],
    modalities=lambda o: [o.modality, o.text],
    needs=lambda o: [(o.query, "labels")] + ([] if o.class_names else [(o.query, "class_names")]),
)
def run_zero_shot(options: ZeroShotOptions, ctx: EvalContext) -> dict[str, float]:
    """Writes ``zero_shot_top1`` (and ``zero_shot_top1_random_init``)."""
    prefix = options.prefix or "zero_shot"
    source = ctx.source(options.query)
    names = options.class_names or source.class_names
    if not names:
        raise ValueError(f"zero_shot: split {options.query!r} ({source.origin}) has no class names; set class_names")
    _, labels = ctx.labelled(options.modality, options.query)
    results = {f"{prefix}_top1": zero_shot_accuracy(ctx.model, options, ctx, labels, names)}
    if "random_init" in options.baselines:
        results[f"{prefix}_top1_{ctx.baseline_name}"] = zero_shot_accuracy(
            ctx.random_model, options, ctx, labels, names
        )
    results[f"{prefix}_chance"] = 1.0 / len(names)
    return results
