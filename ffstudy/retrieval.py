"""Position-controlled retrieval: how much of a later token's attention to an entity's first-frame keys is about
*what* is there rather than *where* it is.

A later-frame token may read a first-frame entity because it shows that entity (content) or simply because
attention favours keys at small offsets, and the entity happens to sit there (position: Wan's 3-D RoPE makes
attention depend on the query-key offset). In plain image-to-video, sprites barely move, so the two coincide. The
position-only model here predicts each attention weight from the query-key offset alone: the mean weight over all
query-key pairs with the same (row, column) offset, fitted per record (block, step) and per later frame on the
same run. Content retrieval is what the real attention puts on an entity beyond that prediction; measure it where
position and content disagree (after a hard cut, or in an FFGo composite whose cut-outs sit left of the scene).

These functions read the raw first-frame attention slice a probe keeps with ``keep_attention=True`` (small models:
it is heads × later tokens × first-frame tokens per record).
"""
from __future__ import annotations

import numpy as np


def _offset_bins(rows: int, cols: int) -> np.ndarray:
    """(n0, n0) index of the (row, column) offset from query token i to key token k, both in a rows × cols grid."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    dr = r[None, :] - r[:, None] + rows - 1
    dc = c[None, :] - c[:, None] + cols - 1
    return dr * (2 * cols - 1) + dc


def offset_means(attention: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(2·rows − 1, 2·cols − 1): the mean weight of one frame's attention (n0 queries × n0 keys) at each
    key-minus-query offset, (0, 0) at the centre — the position-only model's whole content."""
    bins = _offset_bins(rows, cols).ravel()
    size = (2 * rows - 1) * (2 * cols - 1)
    sums = np.bincount(bins, weights=attention.ravel(), minlength=size)
    return (sums / np.maximum(np.bincount(bins, minlength=size), 1)).reshape(2 * rows - 1, 2 * cols - 1)


def position_prediction(attention: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The position-only model of ``attention`` (…, n0 queries, n0 keys) of one later frame or several (leading
    axes kept): each weight replaced by the mean weight of all query-key pairs with its offset."""
    bins = _offset_bins(rows, cols)
    flat = attention.reshape(-1, rows * cols, rows * cols)
    predicted = np.stack([offset_means(a, rows, cols).ravel()[bins] for a in flat])
    return predicted.reshape(attention.shape)


def entity_retrieval(result, entity_weights: np.ndarray, record: int) -> dict[str, np.ndarray]:
    """For one probe record: per later frame t, query token i and entity e, the mass the head-mean attention puts
    on e's first-frame keys (``observed``, weighted by ``entity_weights`` (n0, E): each key's share of each
    entity), what the position-only model predicts (``position``), and their difference (``content``), each
    (F-1, n0, E)."""
    if result.attention is None:
        raise ValueError("this probe result has no raw attention: probe with keep_attention=True (small models)")
    f, h, w = result.grid
    attention = result.attention[record].mean(0).reshape(f - 1, h * w, h * w)
    observed = attention @ entity_weights
    position = position_prediction(attention, h, w) @ entity_weights
    return {"observed": observed, "position": position, "content": observed - position}


def own_entity_retrieval(result, entity_weights: np.ndarray, labels: np.ndarray, frames, record: int,
                         permutation: np.ndarray | None = None) -> dict[str, float] | None:
    """Over the later-frame tokens labelled entity e (``labels`` (F-1, n0): entity index + 1, 0 for none) in latent
    ``frames``: mean observed mass on e's first-frame keys, the position-only prediction, and the content excess.
    ``permutation`` relabels the entity read (the shuffled-entity control: same tokens, entity e's token reads
    entity permutation[e]). None when no token of those frames is labelled."""
    parts = entity_retrieval(result, entity_weights, record)
    rows = []
    for t in frames:
        for i in np.flatnonzero(labels[t - 1]):
            e = labels[t - 1, i] - 1
            e = e if permutation is None else permutation[e]
            rows.append([parts[k][t - 1, i, e] for k in ("observed", "position", "content")])
    if not rows:
        return None
    observed, position, content = np.mean(rows, axis=0)
    return {"observed": float(observed), "position": float(position), "content": float(content),
            "tokens": len(rows)}
