"""The report's model-dependent parts: a 2-D map of test embeddings and retrieval examples for aligned modalities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmssl.data.dataset import is_missing
from mmssl.eval.embed import embed_values

#: Rows embedded for the map (t-SNE cost grows with the square of it) and for the retrieval gallery.
MAP_ROWS = 1500
GALLERY_ROWS = 300
QUERIES = 4
TOP = 3


@dataclass
class Labelled:
    """Where the map comes from: a modality and a labelled split the evaluations use."""

    modality: str
    split: str


def labelled_target(plan: Any) -> Labelled | None:
    """The first (modality, query/test split) of the recipe's evaluations."""
    for kind, options in plan.evaluations:
        split = getattr(options, "query", None) or getattr(options, "test", None)
        modalities = kind.modalities(options)
        if split and modalities:
            return Labelled(modalities[0], split)
    return None


def aligned_pairs(plan: Any) -> list[tuple[str, str]]:
    """Modality pairs an objective aligns (``modalities: [a, b]`` of CLIP, SigLIP, ...), each once."""
    pairs: list[tuple[str, str]] = []
    for _, _, options in plan.objectives:
        found = tuple(getattr(options, "modalities", ()) or ())
        if len(found) == 2 and found not in pairs:
            pairs.append(found)  # type: ignore[arg-type]
    return pairs


def map_points(run: Any, source: Any, modality: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """t-SNE (scikit-learn) of the shared-space embeddings of up to ``MAP_ROWS`` labelled rows.

    Returns:
        (points [N, 2], labels [N]), or None when fewer than 10 labelled rows have the modality.
    """
    from sklearn.manifold import TSNE

    column = run.plan.recipe.column_of(modality)
    rows = [r for r in source.rows if not is_missing(r.get(column)) and r.get("label") is not None]
    rows = [r for r in rows if int(r["label"]) >= 0]
    if len(rows) < 10:
        return None
    picked = np.random.default_rng(seed).permutation(len(rows))[:MAP_ROWS]
    values = [rows[i][column] for i in picked]
    labels = np.asarray([int(rows[i]["label"]) for i in picked])
    emb = embed_values(run.model, modality, run.processors[modality], values, "projected").numpy()
    perplexity = float(min(30.0, (len(values) - 1) / 3))
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)
    return points, labels


def _key(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)[:200]


def retrieval_rows(
    run: Any, source: Any, query: str, gallery: str
) -> list[tuple[Any, list[tuple[Any, float, bool]]]]:
    """For a few rows of ``query``, the ``TOP`` most similar distinct ``gallery`` values among the split's rows.

    A match is correct when its row has the query row's label (rows with labels), else when it is the query row's
    own paired value (or the same string).

    Returns:
        (decoded query, [(decoded match, cosine, correct)]) per query; empty without paired rows.
    """
    cq, cg = run.plan.recipe.column_of(query), run.plan.recipe.column_of(gallery)
    rows = [r for r in source.rows if not is_missing(r.get(cq)) and not is_missing(r.get(cg))][:GALLERY_ROWS]
    if len(rows) < TOP + 1:
        return []
    distinct: dict[str, dict[str, Any]] = {}
    for r in rows:
        distinct.setdefault(_key(r[cg]), r)
    gallery_rows = list(distinct.values())
    gallery_values = [r[cg] for r in gallery_rows]
    labelled = all(r.get("label") is not None for r in rows)

    def correct(query_row: dict[str, Any], match_row: dict[str, Any]) -> bool:
        if labelled:
            return int(query_row["label"]) == int(match_row["label"])
        return _key(match_row[cg]) == _key(query_row[cg])

    queries, seen = [], set()
    for r in rows:  # queries whose paired values differ, so the examples are not all one class
        if _key(r[cg]) not in seen:
            seen.add(_key(r[cg]))
            queries.append(r)
        if len(queries) == QUERIES:
            break
    pq, pg = run.processors[query], run.processors[gallery]
    q = embed_values(run.model, query, pq, [r[cq] for r in queries], "projected")
    g = embed_values(run.model, gallery, pg, gallery_values, "projected")
    scores = q @ g.T
    out = []
    for i, r in enumerate(queries):
        best = torch.topk(scores[i], min(TOP, len(gallery_values))).indices.tolist()
        matches = [(pg.decode(gallery_values[j]), float(scores[i, j]), correct(r, gallery_rows[j])) for j in best]
        out.append((pq.decode(r[cq]), matches))
    return out
