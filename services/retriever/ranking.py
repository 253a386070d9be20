"""Score fusion for hybrid search and maximal-marginal-relevance re-ranking."""

from __future__ import annotations

import numpy as np


def min_max(scores: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the candidates; all-equal scores map to 1 when positive, else 0."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo <= 1e-12:
        return np.full_like(scores, 1.0 if hi > 0 else 0.0)
    return (scores - lo) / (hi - lo)


def relative_score_fusion(vector_scores: np.ndarray, keyword_scores: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * normalised vector + (1 - alpha) * normalised keyword, as Weaviate's relativeScoreFusion
    combines them (alpha 1 = pure vector, 0 = pure keyword). Inputs are aligned over the candidate
    union; a chunk that no query term occurs in has keyword score 0."""
    return alpha * min_max(vector_scores) + (1.0 - alpha) * min_max(keyword_scores)


def mmr(vectors: np.ndarray, relevance: np.ndarray, k: int, lambda_mult: float) -> list[int]:
    """Indices of `k` candidates picked greedily by
    lambda * relevance - (1 - lambda) * max cosine similarity to those already picked.
    `relevance` is scaled to [0, 1] first so that both terms share a scale whatever the mode."""
    n = len(vectors)
    if n == 0 or k <= 0:
        return []
    rel = min_max(relevance)
    vecs = np.asarray(vectors, dtype=np.float32)
    sims = vecs @ vecs.T
    picked: list[int] = []
    redundancy = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(min(k, n)):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        value = lambda_mult * rel - (1.0 - lambda_mult) * penalty
        value[~available] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, sims[best])
    return picked
