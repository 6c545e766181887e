"""Cross-modal retrieval: recall@k in both directions between two modalities of one split.

``match: pair`` (default): every row that has both modalities is a query (embedded from one modality) and a
gallery item (embedded from the other), in the shared projected space, ranked by cosine similarity. A query is
answered correctly at k when one of its k nearest gallery items is *relevant* to it: its own paired row, and
(``match_equal``) every row whose raw value of either modality is the same string as the query row's. Two
recordings of the same sentence, or repeated prompts such as the digits, then count as each other's matches:
retrieving the other "one" for a recording of "one" is not an error, since nothing in the data tells them apart.

``match: label``: the queries are the rows that have modality a, the gallery the rows that have modality b (no
row needs both, so two modalities never seen together can be scored, e.g. audio and image bound through text),
and a gallery item is relevant when its ``label`` equals the query's. Rows without a label (or with a negative
one) are left out. Rows whose raw value is the same string with the same label (templated captions, the word
"seven" of every recording of it) are one item, as a query and in the gallery (``unique_strings``): otherwise
the k nearest items of a query would be k copies of one text, and recall@5 would equal recall@1. The chance
level is per direction: the expected recall of a random ranking given the label counts.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from mmssl.data.dataset import is_missing
from mmssl.data.sources import Source
from mmssl.eval.base import EvalContext, EvalOptions, register_evaluator
from mmssl.eval.embed import embed_values, labelled_values


def recall_at_k(similarity: Tensor, relevant: Tensor, ks: list[int]) -> dict[int, float]:
    """Share of queries with a relevant gallery item among their ``k`` most similar ones.

    Ties in similarity are broken by ``torch.topk``.

    Shapes:
        similarity [Q, G] float, relevant [Q, G] bool -> {k: recall}
    """
    if similarity.shape != relevant.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and relevant {tuple(relevant.shape)} differ")
    q, g = similarity.shape
    if q == 0 or g == 0:
        raise ValueError("recall@k needs at least one query and one gallery item")
    top = similarity.float().topk(min(max(ks), g), dim=1).indices  # [Q, max k]
    hits = torch.gather(relevant, 1, top)  # [Q, max k]
    return {k: float(hits[:, : min(k, g)].any(dim=1).float().mean()) for k in ks}


def chance_recall_at_k(relevant: Tensor, ks: list[int]) -> dict[int, float]:
    """Expected recall@k of a random ranking: mean over queries of ``1 - C(G - m, k) / C(G, k)``, m the number
    of relevant items of the query (``k / G`` when every query has exactly one).

    Shapes:
        relevant [Q, G] bool -> {k: expected recall}
    """
    g = relevant.shape[1]
    m = relevant.sum(dim=1).double()
    out = {}
    for k in ks:
        miss = torch.ones_like(m)
        for i in range(min(k, g)):
            miss = miss * ((g - m - i) / (g - i)).clamp_min(0.0)
        out[k] = float((1.0 - miss).mean())
    return out


def _string_key(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def relevance(values_a: list[Any], values_b: list[Any], match_equal: bool = True) -> Tensor:
    """Which rows answer which: the diagonal, plus (``match_equal``) rows with an equal string value in either
    modality.

    Shapes:
        -> [N, N] bool, symmetric
    """
    n = len(values_a)
    relevant = torch.eye(n, dtype=torch.bool)
    if match_equal:
        for values in (values_a, values_b):
            keys = [_string_key(v) for v in values]
            groups: dict[str, list[int]] = {}
            for i, key in enumerate(keys):
                if key is not None:
                    groups.setdefault(key, []).append(i)
            for rows in groups.values():
                if len(rows) > 1:
                    index = torch.tensor(rows)
                    relevant[index[:, None], index[None, :]] = True
    return relevant


def label_relevance(labels_a: Any, labels_b: Any) -> Tensor:
    """Which gallery items answer which query: equal labels.

    Shapes: labels_a [Q], labels_b [G] (ints) -> [Q, G] bool
    """
    return torch.as_tensor(labels_a)[:, None] == torch.as_tensor(labels_b)[None, :]


def unique_string_rows(values: list[Any], labels: Any) -> tuple[list[Any], list[int]]:
    """Keep the first of the rows whose value is the same string with the same label; other values stay."""
    seen: set[tuple[str, int]] = set()
    out_values, out_labels = [], []
    for value, label in zip(values, labels, strict=True):
        key = _string_key(value)
        if key is not None:
            if (key, int(label)) in seen:
                continue
            seen.add((key, int(label)))
        out_values.append(value)
        out_labels.append(int(label))
    return out_values, out_labels


def paired_values(source: Source, column_a: str, column_b: str) -> tuple[list[Any], list[Any]]:
    """Raw values of the rows that have both columns."""
    values_a, values_b = [], []
    for row in source.rows:
        a, b = row.get(column_a), row.get(column_b)
        if is_missing(a) or is_missing(b):
            continue
        values_a.append(a)
        values_b.append(b)
    if not values_a:
        raise ValueError(f"{source.origin}: no rows with both columns {column_a!r} and {column_b!r}")
    return values_a, values_b


class RetrievalOptions(EvalOptions):
    modalities: tuple[str, str] = Field(description="The two paired modalities [a, b]; both directions are scored.")
    query: str = Field("test", description="Split whose rows with both modalities are the queries and the gallery.")
    ks: list[int] = Field(default_factory=lambda: [1, 5], min_length=1, description="The k of recall@k.")
    match: Literal["pair", "label"] = Field(
        "pair",
        description="pair: rows with both modalities, each answered by its own row (and equal strings, see "
        "match_equal); label: queries are the rows with one modality, the gallery the rows with the other, "
        "relevant when the labels are equal (no row needs both modalities).",
    )
    match_equal: bool = Field(
        True,
        description="Also count as correct a retrieved row whose raw value of either modality is the same string "
        "as the query row's (e.g. an identical transcript); false: only the paired row.",
    )
    unique_strings: bool = Field(
        True,
        description="match: label: rows whose raw value is the same string with the same label are one query "
        "and one gallery item (e.g. a caption template, the word of many recordings).",
    )
    baselines: list[Literal["random_init"]] = Field(
        default_factory=lambda: ["random_init"],
        description="Also score a random-init model of the same architecture.",
    )

    @field_validator("modalities")
    @classmethod
    def distinct(cls, value: tuple[str, str]) -> tuple[str, str]:
        if value[0] == value[1]:
            raise ValueError("the two modalities must differ")
        return value

    @field_validator("ks")
    @classmethod
    def positive(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"every k must be at least 1, got {value}")
        return sorted(set(value))


def retrieval_scores(model: Any, options: RetrievalOptions, ctx: EvalContext, values: tuple[list, list], relevant):
    """``{"a2b": {k: recall}, "b2a": {k: recall}}`` for one model."""
    a, b = options.modalities
    emb = []
    for modality, vals in zip((a, b), values, strict=True):
        out = embed_values(model, modality, ctx.processors[modality], vals, "projected", options.batch_size, ctx.device)
        emb.append(F.normalize(out, dim=-1))
    similarity = emb[0] @ emb[1].T  # [N a-queries, N b-items]
    return {
        f"{a}2{b}": recall_at_k(similarity, relevant, options.ks),
        f"{b}2{a}": recall_at_k(similarity.T, relevant.T, options.ks),
    }


@register_evaluator(
    "retrieval",
    RetrievalOptions,
    splits=lambda o: [o.query],
    modalities=lambda o: list(o.modalities),
    needs=lambda o: [(o.query, "labels")] if o.match == "label" else [],
)
def run_retrieval(options: RetrievalOptions, ctx: EvalContext) -> dict[str, float]:
    """Writes ``retrieval_<a>2<b>_r@<k>`` and ``retrieval_<b>2<a>_r@<k>`` for every k, the same with
    ``_random_init`` appended, and the chance level of a random ranking.

    ``match: pair``: ``retrieval_chance_r@<k>`` (k / N without duplicates) and ``retrieval_queries`` (N).
    ``match: label``: ``retrieval_<a>2<b>_chance_r@<k>`` and ``retrieval_<b>2<a>_chance_r@<k>`` (the two
    directions have different galleries), ``retrieval_<a>2<b>_queries`` and ``retrieval_<b>2<a>_queries``.
    """
    prefix = options.prefix or "retrieval"
    a, b = options.modalities
    source = ctx.source(options.query)
    if options.match == "label":
        values_a, labels_a = labelled_values(source, ctx.columns[a])
        values_b, labels_b = labelled_values(source, ctx.columns[b])
        if options.unique_strings:
            values_a, labels_a = unique_string_rows(values_a, labels_a)
            values_b, labels_b = unique_string_rows(values_b, labels_b)
        values = (values_a, values_b)
        relevant = label_relevance(labels_a, labels_b)
    else:
        values = paired_values(source, ctx.columns[a], ctx.columns[b])
        relevant = relevance(*values, match_equal=options.match_equal)
    results: dict[str, float] = {}
    models = [("", ctx.model)]
    if "random_init" in options.baselines:
        models.append((f"_{ctx.baseline_name}", ctx.random_model))
    for suffix, model in models:
        for direction, recalls in retrieval_scores(model, options, ctx, values, relevant).items():
            for k, value in recalls.items():
                results[f"{prefix}_{direction}_r@{k}{suffix}"] = value
    if options.match == "label":
        for direction, rel in ((f"{a}2{b}", relevant), (f"{b}2{a}", relevant.T)):
            for k, value in chance_recall_at_k(rel, options.ks).items():
                results[f"{prefix}_{direction}_chance_r@{k}"] = value
            results[f"{prefix}_{direction}_queries"] = float(rel.shape[0])
        return results
    for k, value in chance_recall_at_k(relevant, options.ks).items():
        results[f"{prefix}_chance_r@{k}"] = value
    results[f"{prefix}_queries"] = float(len(values[0]))
    return results
