"""The embedded store's vector index: exact (flat) while small, an HNSW graph once large.

Both are faiss indexes over unit vectors with inner-product (= cosine) scores, keyed by the
SQLite row id of each chunk (IndexIDMap2). A flat index removes vectors in place; an HNSW graph
cannot, so removed ids become tombstones that searches skip, and the owner rebuilds the graph
once too many pile up (`needs_rebuild`). Filtered searches that admit few chunks are exact in
either kind, because a graph walk that may only stop on a few nodes loses recall.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

FLAT, HNSW = "flat", "hnsw"


@dataclass(frozen=True)
class IndexParams:
    hnsw_threshold: int = 20_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256
    exact_filter_limit: int = 20_000
    build_threads: int = 0
    search_threads: int = 1
    # keyword and hybrid search score BM25 from in-memory postings (keyword_index.py) instead of FTS5
    keyword_index: bool = True


def set_search_threads(n: int) -> None:
    # One OpenMP thread is far faster for single queries on few cores (measured 0.35 ms vs 16 ms).
    faiss.omp_set_num_threads(max(1, n))


class VectorIndex:
    def __init__(self, dim: int, params: IndexParams, kind: str = FLAT):
        self.dim = dim
        self.params = params
        self.kind = kind
        self.index = self._empty(kind)
        self.dead: set[int] = set()  # HNSW tombstones
        self._positions: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, their positions)

    def _empty(self, kind: str) -> faiss.Index:
        if kind == HNSW:
            inner = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.params.ef_construction
            inner.hnsw.efSearch = self.params.ef_search
        else:
            inner = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIDMap2(inner)

    # -- contents --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self.dead)

    def ids(self) -> np.ndarray:
        """Live ids, sorted."""
        all_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        if self.dead:
            all_ids = all_ids[~np.isin(all_ids, np.fromiter(self.dead, np.int64, len(self.dead)))]
        return np.sort(all_ids)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if self.kind == HNSW:
            self._with_build_threads(lambda: self.index.add_with_ids(vectors, ids))
        else:
            self.index.add_with_ids(vectors, ids)
        self._positions = None

    def remove(self, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kind == HNSW:
            present = faiss.vector_to_array(self.index.id_map)
            self.dead.update(int(i) for i in ids[np.isin(ids, present)])
        else:
            self.index.remove_ids(ids)
            self._positions = None

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def needs_rebuild(self) -> str | None:
        """The kind this index should be rebuilt as, or None."""
        live = len(self)
        if self.kind == FLAT and live >= self.params.hnsw_threshold:
            return HNSW
        if self.kind == HNSW:
            if live < self.params.hnsw_threshold // 2:
                return FLAT
            if len(self.dead) > max(1000, live // 4):
                return HNSW
        return None

    @classmethod
    def build(cls, dim: int, params: IndexParams, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        kind = HNSW if len(ids) >= params.hnsw_threshold else FLAT
        index = cls(dim, params, kind)
        index.add(ids, vectors)
        return index

    # -- search ----------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, cosine scores), best first; `allowed` restricts the ids (None: all)."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        if self.index.ntotal == 0 or k <= 0 or (allowed is not None and len(allowed) == 0):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if self.kind == FLAT:
            params = None if allowed is None else faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
            scores, ids = self.index.search(q, k, params=params)
        elif allowed is not None and len(allowed) <= self.params.exact_filter_limit:
            scores, ids = self._exact_subset(q, k, allowed)
        else:
            selector = None
            if allowed is not None:
                selector = faiss.IDSelectorBatch(allowed)
            elif self.dead:
                selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self.dead, np.int64, len(self.dead))))
            params = faiss.SearchParametersHNSW(efSearch=max(self.params.ef_search, k))
            if selector is not None:
                params.sel = selector
            scores, ids = self.index.search(q, k, params=params)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def _exact_subset(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over a few allowed ids, scanning the graph's flat storage by position."""
        if self._positions is None:
            id_map = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            order = np.argsort(id_map)
            self._positions = (id_map[order], order.astype(np.int64))
        sorted_ids, order = self._positions
        allowed = np.asarray(allowed, dtype=np.int64)
        at = np.searchsorted(sorted_ids, allowed)
        ok = (at < len(sorted_ids)) & (sorted_ids[np.minimum(at, len(sorted_ids) - 1)] == allowed)
        positions = order[at[ok]]
        if len(positions) == 0:
            return np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64)
        storage = faiss.downcast_index(faiss.downcast_index(self.index.index).storage)
        # a bitmap selector costs one bit test per stored vector; a hash-set selector was twice as slow
        bits = np.zeros(int(self.index.ntotal), dtype=bool)
        bits[positions] = True
        packed = np.packbits(bits, bitorder="little")
        selector = faiss.IDSelectorBitmap(packed)
        scores, pos = storage.search(q, k, params=faiss.SearchParameters(sel=selector))
        id_map = faiss.vector_to_array(self.index.id_map)
        ids = np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)
        return scores, ids

    # -- persistence -------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Atomically write the index (tombstones are not saved: loading reconciles with the database)."""
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, dim: int, params: IndexParams) -> VectorIndex:
        raw = faiss.read_index(str(path))
        if raw.d != dim:
            raise ValueError(f"index at {path} has dimension {raw.d}, expected {dim}")
        index = cls(dim, params, HNSW if isinstance(faiss.downcast_index(raw.index), faiss.IndexHNSW) else FLAT)
        index.index = faiss.downcast_index(raw) if not isinstance(raw, faiss.IndexIDMap2) else raw
        if index.kind == HNSW:
            faiss.downcast_index(index.index.index).hnsw.efSearch = params.ef_search
        return index

    def _with_build_threads(self, fn) -> None:
        threads = self.params.build_threads or os.cpu_count() or 1
        faiss.omp_set_num_threads(threads)
        try:
            fn()
        finally:
            set_search_threads(self.params.search_threads)
