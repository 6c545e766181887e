"""The raw-input baseline of text: a TF-IDF bag of tokens over the tokenizer's own ids."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

#: Columns of the bag of tokens at most: the most frequent token ids of the rows featurised. Bounds the dense
#: matrix to N x 4096 float32 (200 MB for 12k rows, 1 GB for 60k).
MAX_TOKENS = 4096


def bag_of_tokens(rows: Iterable[Sequence[int]], ignore: Collection[int] = (), max_tokens: int = MAX_TOKENS) -> Tensor:
    """TF-IDF bag of tokens with L2-normalised rows, fitted on ``rows`` alone (scikit-learn's ``TfidfVectorizer``
    defaults over token ids).

    Each row counts its token ids, leaving out ``ignore`` (padding and other special tokens). The columns are the
    ``max_tokens`` ids of highest total count over all rows (ties: lower id first), in increasing id order. A
    count ``c`` of an id found in ``df`` of the ``N`` rows becomes ``c * (ln((1 + N) / (1 + df)) + 1)`` (smooth
    idf, so ids in every row still count); each row is then divided by its L2 norm (a row without any kept token
    stays zero). idf down-weights ids common to most rows (punctuation, articles, word-piece suffixes), which
    would otherwise dominate cosine similarity; it reads no labels.

    Args:
        rows: Token ids of each row, read once.
        ignore: Ids never counted.
        max_tokens: Columns at most (K).

    Shapes:
        -> [N, K'] float32, K' = min(K, distinct ids counted).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    skip = np.asarray(sorted(ignore), dtype=np.int64)
    ids_of, counts_of = [], []
    for row in rows:
        ids = np.asarray(row, dtype=np.int64).reshape(-1)
        ids, counts = np.unique(ids[~np.isin(ids, skip)], return_counts=True)
        ids_of.append(ids)
        counts_of.append(counts)
    n = len(ids_of)
    ids = np.concatenate(ids_of) if n else np.zeros(0, dtype=np.int64)
    counts = np.concatenate(counts_of) if n else np.zeros(0, dtype=np.int64)
    if len(ids) and int(ids.min()) < 0:
        raise ValueError(f"token ids must be >= 0, got {int(ids.min())}")
    row_of = np.repeat(np.arange(n), [len(i) for i in ids_of])
    size = int(ids.max()) + 1 if len(ids) else 0
    total = np.bincount(ids, weights=counts, minlength=size)
    df = np.bincount(ids, minlength=size)
    present = np.flatnonzero(df)
    chosen = np.sort(present[np.lexsort((present, -total[present]))][:max_tokens])
    column = np.full(size, -1, dtype=np.int64)
    column[chosen] = np.arange(len(chosen))
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    kept = column[ids] >= 0
    out = np.zeros((n, len(chosen)), dtype=np.float32)
    out[row_of[kept], column[ids[kept]]] = counts[kept] * idf[ids[kept]]
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norm, out=out, where=norm > 0)
    return torch.from_numpy(out)
