"""Export an own text transformer trained from scratch as a transformers folder that is also a sentence-transformers
model.

transformers has a pre-norm encoder with learned absolute positions, no embedding norm and a final LayerNorm:
XLM-RoBERTa-XL. The own encoder maps onto it exactly:

- qkv is split into query/key/value; the type embedding is zero; LayerNorm eps and exact GELU carry over;
- positions: XLM-RoBERTa numbers real tokens from ``pad_id + 1``, so row ``pad_id + 1 + j`` holds mmssl's position j;
- a class-token encoder gets a ``[POOL]`` token put first by the tokenizer, whose embedding is mmssl's class token
  with a zero position (mmssl adds none): the first output token is mmssl's pooled feature. A mean-pooling encoder
  needs nothing extra (mean over ``attention_mask``).

Beside ``config.json``, ``model.safetensors`` and the tokenizer, the folder holds sentence-transformers modules
(``modules.json``: Transformer, ``1_Pooling`` (cls or mean), ``2_Dense`` (the run's projection, no bias),
``3_Normalize``), so ``SentenceTransformer(FOLDER)`` gives the run's shared-space embeddings directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mmssl.export.card import copy_report_figures, model_card
from mmssl.export.files import MARKER, write_folder
from mmssl.export.own_transformer import (
    NotExportable,
    OwnTransformer,
    WordStem,
    projection_matrix,
    read_transformer,
    read_word_stem,
)
from mmssl.export.pick import pick_modality
from mmssl.export.tokenizer_files import save_tokenizer


def _read_text(encoder: Any, modality: str) -> tuple[OwnTransformer, WordStem]:
    return read_transformer(encoder, modality), read_word_stem(encoder, modality)


def xlmr_config(vit: OwnTransformer, stem: WordStem) -> dict[str, Any]:
    """The ``XLMRobertaXLConfig`` of the same architecture (one more token and position with a class token)."""
    extra = 1 if vit.pool == "cls" else 0
    return {
        "model_type": "xlm-roberta-xl",
        "architectures": ["XLMRobertaXLModel"],
        "vocab_size": stem.vocab_size + extra,
        "hidden_size": vit.width,
        "num_hidden_layers": vit.depth,
        "num_attention_heads": vit.heads,
        "intermediate_size": vit.mlp_hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": stem.pad_id + 1 + stem.max_length + extra,
        "type_vocab_size": 1,
        "layer_norm_eps": vit.norm_eps,
        "pad_token_id": stem.pad_id,
        "position_embedding_type": "absolute",
    }


def xlmr_state_dict(vit: OwnTransformer, stem: WordStem) -> dict[str, torch.Tensor]:
    """The weights under ``XLMRobertaXLModel`` names (without the pooler)."""
    d = vit.width
    word = stem.word
    positions = [torch.zeros(stem.pad_id + 1, d)]
    if vit.pool == "cls":
        word = torch.cat([word, vit.cls_token[None]])
        positions.append(torch.zeros(1, d))
    positions.append(stem.positions)
    state = {
        "embeddings.word_embeddings.weight": word,
        "embeddings.token_type_embeddings.weight": torch.zeros(1, d),
        "embeddings.position_embeddings.weight": torch.cat(positions),
        "encoder.LayerNorm.weight": vit.norm_weight,
        "encoder.LayerNorm.bias": vit.norm_bias,
    }
    for i, b in enumerate(vit.blocks):
        p = f"encoder.layer.{i}."
        q, k, v = b.qkv_weight.chunk(3)
        qb, kb, vb = b.qkv_bias.chunk(3)
        state.update({
            p + "attention.self_attn_layer_norm.weight": b.norm1_weight,
            p + "attention.self_attn_layer_norm.bias": b.norm1_bias,
            p + "attention.self.query.weight": q, p + "attention.self.query.bias": qb,
            p + "attention.self.key.weight": k, p + "attention.self.key.bias": kb,
            p + "attention.self.value.weight": v, p + "attention.self.value.bias": vb,
            p + "attention.output.dense.weight": b.proj_weight, p + "attention.output.dense.bias": b.proj_bias,
            p + "LayerNorm.weight": b.norm2_weight, p + "LayerNorm.bias": b.norm2_bias,
            p + "intermediate.dense.weight": b.fc1_weight, p + "intermediate.dense.bias": b.fc1_bias,
            p + "output.dense.weight": b.fc2_weight, p + "output.dense.bias": b.fc2_bias,
        })  # fmt: skip
    return {k: v.contiguous() for k, v in state.items()}


def sentence_transformers_files(
    folder: Path, width: int, pool: str, projection: torch.Tensor | None, max_length: int
) -> None:
    """``modules.json`` and the Pooling (``cls``: first token, ``mean``) / Dense (``projection`` [E, D], no bias) /
    Normalize module folders of sentence-transformers."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pooling = {
        "word_embedding_dimension": width,
        "pooling_mode_cls_token": pool == "cls",
        "pooling_mode_mean_tokens": pool == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if projection is not None:
        dense = {
            "in_features": int(projection.shape[1]),
            "out_features": int(projection.shape[0]),
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        }
        (folder / "2_Dense").mkdir()
        (folder / "2_Dense" / "config.json").write_text(json.dumps(dense, indent=2) + "\n")
        save_file({"linear.weight": projection.contiguous()}, str(folder / "2_Dense" / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    modules.append(
        {"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_Normalize",
         "type": "sentence_transformers.models.Normalize"}
    )  # fmt: skip
    (folder / modules[-1]["path"]).mkdir()
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    st_config = {"max_seq_length": max_length, "do_lower_case": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(st_config, indent=2) + "\n")


def _snippet(output: Path, pool: str) -> str:
    pooled = "hidden[:, 0]  # the [POOL] token" if pool == "cls" else "(hidden * mask).sum(1) / mask.sum(1)"
    return f"""import torch
from transformers import AutoModel, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained({str(output)!r})
model = AutoModel.from_pretrained({str(output)!r}).eval()
batch = tokenizer(["a photo of a sneaker."], padding=True, truncation=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
pooled = {pooled}

# or the run's shared-space embedding (pooling, projection and L2 normalisation) in one call:
from sentence_transformers import SentenceTransformer
embedding = SentenceTransformer({str(output)!r}).encode(["a photo of a sneaker."])"""


def export_hf_scratch(run: Any, run_dir: Path, output: Path, modality: str | None) -> Path:
    """Write the run's own text encoder of ``modality`` (default: the only one) as a transformers folder.

    Raises:
        NotExportable: No modality (or ``modality``) is an own word-embedding transformer.
    """
    from transformers import XLMRobertaXLConfig, XLMRobertaXLModel

    m, (vit, stem) = pick_modality(run, modality, _read_text, "hf")
    if vit.pool == "cls" and vit.cls_token is None:
        raise NotExportable(f"modality {m!r}: class-token pooling without a class token")
    config = XLMRobertaXLConfig(**{k: v for k, v in xlmr_config(vit, stem).items() if k != "model_type"})
    model = XLMRobertaXLModel(config)
    # The BERT-style pooler (tanh over the first token) was never trained: zero, so nobody mistakes it for the
    # embedding (pooler_output is 0; the embedding is last_hidden_state pooled as the card says).
    state = xlmr_state_dict(vit, stem)
    state |= {"pooler.dense.weight": torch.zeros(vit.width, vit.width), "pooler.dense.bias": torch.zeros(vit.width)}
    model.load_state_dict(state, strict=True)
    model.eval()
    projection = projection_matrix(run.model.projections[m], m)
    max_length = stem.max_length + (1 if vit.pool == "cls" else 0)
    preprocessing = {
        "tokenizer": "AutoTokenizer.from_pretrained(FOLDER)",
        "max_length": max_length,
        "pooling": "first token ([POOL])" if vit.pool == "cls" else "mean over attention_mask",
    }

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        pool_id = save_tokenizer(run.processors[m], tmp, max_length, pool_token=vit.pool == "cls")
        if pool_id is not None and pool_id != stem.vocab_size:
            raise NotExportable(f"hf export: the [POOL] token got id {pool_id}, not {stem.vocab_size}")
        sentence_transformers_files(tmp, vit.width, vit.pool, projection, max_length)
        info = {"format": "hf", "modality": m, "pooling": vit.pool, "run": str(Path(run_dir).resolve())}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        card = model_card(run.plan.recipe, "hf", {m: preprocessing}, _snippet(output, vit.pool), Path(run_dir))
        (tmp / "README.md").write_text(card)
        copy_report_figures(Path(run_dir), tmp)

    return write_folder(output, fill, MARKER)
