"""The retriever's logic: validate, parse, chunk, embed, store; search with filters, fusion and MMR.

No gRPC or Celery here: `grpc_api.py` converts messages to the plain types below and back.
Everything a request can get wrong is checked before anything is written, so a bad document
fails its whole batch with an error naming it (`documents[3].content_type: ...`).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.retriever.chunking import Chunk, Chunker
from services.retriever.filters import (
    ANY_OF,
    DATE_RANGE,
    EQUALS,
    NUMBER_RANGE,
    MetadataFilter,
    build_range,
    check_key,
    date_bound,
)
from services.retriever.parsing import SUPPORTED, ParsedText, ParseError, normalize_content_type, parse
from services.retriever.ranking import mmr
from services.retriever.settings import RetrieverSettings
from services.retriever.stores.base import (
    HYBRID,
    KEYWORD,
    VECTOR,
    Candidate,
    ChunkRecord,
    CollectionStats,
    DocumentRecord,
    Store,
    StoreQuery,
    WriteResult,
)
from shared import metrics, tracing
from shared.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

COLLECTION_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")
COLLECTION_RULE = "1-63 characters of lowercase letters, digits and '_', starting with a letter"
MAX_ID_CHARS = 256
MAX_SOURCE_CHARS = 2048
MAX_METADATA_ENTRIES = 64
MAX_METADATA_VALUE_CHARS = 1024
MIN_CHUNK_TOKENS = 16
# texts per embedding call while ingesting: small enough for steady progress reports and cancellation
EMBED_SLICE = 32
MODES = (VECTOR, KEYWORD, HYBRID)

# progress stages (mirrors IngestStage in the proto)
PARSING, EMBEDDING, WRITING, DONE = "parsing", "embedding", "writing", "done"
Progress = Callable[[str, int, int, int, int], None]  # (stage, done, total, documents, chunks)


@dataclass
class DocumentInput:
    id: str
    text: str | None = None
    data: bytes | None = None
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""


@dataclass
class FilterInput:
    """A filter as received: `condition` names the set oneof member (None when none is)."""

    key: str
    condition: str | None
    equals: str | None = None
    any_of: list[str] | None = None
    # (gte, gt, lte, lt): floats for number_range, ISO strings for date_range
    bounds: tuple = (None, None, None, None)


@dataclass
class SearchInput:
    collection: str
    query: str
    top_k: int | None = None
    mode: str | None = None
    alpha: float | None = None
    filters: list[FilterInput] = field(default_factory=list)
    min_score: float | None = None
    mmr: bool = False
    mmr_lambda: float | None = None
    mmr_fetch_k: int | None = None


@dataclass
class IngestResult:
    collection: str
    documents: list[WriteResult]

    @property
    def chunks_written(self) -> int:
        return sum(d.chunks for d in self.documents)


@dataclass
class EmbedResult:
    vectors: np.ndarray  # (n, dimension) float32, unit rows
    tokens: list[int]
    truncated: list[bool]
    model: str
    max_tokens: int


@dataclass
class SearchResult:
    hits: list[Candidate]
    mode: str
    alpha: float


@dataclass
class _Prepared:
    doc: DocumentInput
    content_type: str
    parsed: ParsedText
    chunks: list[Chunk]


def check_collection(name: str, field_name: str = "collection") -> None:
    if not isinstance(name, str) or not COLLECTION_PATTERN.fullmatch(name):
        raise InvalidArgument(f"must be {COLLECTION_RULE} (got {name!r})", field=field_name)


def build_store(settings: RetrieverSettings) -> Store:
    from services.retriever.stores.vector_index import IndexParams

    if settings.backend == "weaviate":
        from services.retriever.stores.weaviate_store import WeaviateStore

        return WeaviateStore(settings)
    from services.retriever.stores.embedded import EmbeddedStore

    params = IndexParams(
        hnsw_threshold=settings.hnsw_threshold,
        hnsw_m=settings.hnsw_m,
        ef_construction=settings.hnsw_ef_construction,
        ef_search=settings.hnsw_ef_search,
        exact_filter_limit=settings.exact_filter_limit,
        build_threads=settings.faiss_build_threads,
        search_threads=settings.faiss_threads,
    )
    return EmbeddedStore(
        settings.store_path(), params, busy_timeout_s=settings.sqlite_busy_timeout_s,
        snapshot_every=settings.snapshot_every,
    )


class RetrieverCore:
    def __init__(self, settings: RetrieverSettings | None = None, store: Store | None = None, embedder=None):
        self.settings = settings or RetrieverSettings()
        self._store = store
        self._embedder = embedder
        self._ready = False
        # a gRPC server warms up in the background while early calls may already need the store
        self._warm_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        with self._warm_lock:
            if not self._ready:
                self._warm_up()

    def _warm_up(self) -> None:
        if self._embedder is None:
            from shared.embeddings import get_embedder

            self._embedder = get_embedder()
        self._embedder.load()
        if self._store is None:
            self._store = build_store(self.settings)
        self._store.warm_up()
        self._ready = True
        log.info(
            "retriever ready",
            extra={"fields": {"backend": self._store.backend, "model": self.model_name, "dim": self.dimension}},
        )

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> Store:
        if not self._ready:
            self.warm_up()
        assert self._store is not None
        return self._store

    @property
    def embedder(self):
        if not self._ready:
            self.warm_up()
        return self._embedder

    @property
    def model_name(self) -> str:
        return self._embedder.settings.model

    @property
    def dimension(self) -> int:
        return self._embedder.dimension

    @property
    def max_chunk_tokens(self) -> int:
        # room for the [CLS] and [SEP] tokens the model adds
        return int(getattr(self.embedder.load(), "max_seq_length", 512) or 512) - 2

    # -- embed -----------------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> EmbedResult:
        """Unit vectors of `texts` with the embedding model ingest and search use, plus each text's
        token count and whether it was cut to the model's maximum sequence length."""
        s = self.settings
        if not texts:
            raise InvalidArgument("must hold at least one text", field="texts")
        if len(texts) > s.max_embed_texts:
            raise InvalidArgument(f"must hold at most {s.max_embed_texts} texts (got {len(texts)})", field="texts")
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument("must be a non-empty text", field=f"texts[{i}]")
            if len(text) > s.max_embed_chars:
                raise InvalidArgument(f"must be at most {s.max_embed_chars} characters (got {len(text)})",
                                      field=f"texts[{i}]")
        embedder = self.embedder
        limit = int(getattr(embedder.load(), "max_seq_length", 512) or 512)
        counts = [len(ids) for ids in embedder.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        vectors = embedder.encode(texts)
        return EmbedResult(vectors, counts, [n > limit for n in counts], self.model_name, limit)

    # -- ingest ----------------------------------------------------------------------------------

    def ingest(
        self,
        collection: str,
        documents: list[DocumentInput],
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        *,
        max_documents: int | None = None,
        progress: Progress | None = None,
        check: Callable[[], None] | None = None,
    ) -> IngestResult:
        """Ingest a batch all or nothing. `check` raises to abandon the batch (cancel / deadline)."""
        s = self.settings
        check_collection(collection)
        cap = max_documents or s.max_documents_per_request
        if not documents:
            raise InvalidArgument("must hold at least one document", field="documents")
        if len(documents) > cap:
            raise InvalidArgument(
                f"holds {len(documents)} documents; at most {cap} per call (send larger batches to the "
                "retriever.ingest task, or split them)",
                field="documents",
            )
        size, overlap = self._chunking(chunk_size, chunk_overlap)
        t0 = time.perf_counter()
        report = progress or (lambda *a: None)
        check = check or (lambda: None)

        prepared = self._prepare(documents, Chunker(self.embedder.tokenizer, size, overlap), report, check)
        total_chunks = sum(len(p.chunks) for p in prepared)

        texts = [f"{c.section}\n{c.text}" if c.section else c.text for p in prepared for c in p.chunks]
        vectors = np.zeros((len(texts), self.dimension), np.float32)
        # slices of similar length (sorted over the whole batch, not per slice), so that each forward
        # pass pads little; the vectors go back to their chunks' order
        order = np.argsort([len(t) for t in texts], kind="stable")
        report(EMBEDDING, 0, total_chunks, len(prepared), total_chunks)
        for i in range(0, len(texts), EMBED_SLICE):
            check()
            rows = order[i : i + EMBED_SLICE]
            vectors[rows] = self.embedder.encode([texts[j] for j in rows])
            report(EMBEDDING, min(i + EMBED_SLICE, len(texts)), total_chunks, len(prepared), total_chunks)
        check()

        records, row = [], 0
        for p in prepared:
            chunks = []
            for c in p.chunks:
                start, end = p.parsed.source_span(c.start, c.end)
                chunks.append(
                    ChunkRecord(f"{p.doc.id}#{c.index}", c.index, c.text, start, end, c.section,
                                p.parsed.page_at(c.start), vectors[row])
                )
                row += 1
            records.append(DocumentRecord(p.doc.id, p.content_type, p.doc.source, dict(p.doc.metadata), chunks))
        report(WRITING, 0, total_chunks, len(prepared), total_chunks)
        written = self.store.write(collection, records, self.model_name, self.dimension)
        report(DONE, total_chunks, total_chunks, len(prepared), total_chunks)
        metrics.observe_ingest(total_chunks, time.perf_counter() - t0)
        tracing.record("retriever.ingest", time.perf_counter() - t0, {"genstack.chunks": total_chunks})
        return IngestResult(collection, written)

    def _chunking(self, size: int | None, overlap: int | None) -> tuple[int, int]:
        max_tokens = self.max_chunk_tokens
        size = self.settings.chunk_size_tokens if size is None else size
        if not MIN_CHUNK_TOKENS <= size <= max_tokens:
            raise InvalidArgument(
                f"must be between {MIN_CHUNK_TOKENS} and {max_tokens} (the embedding model's limit) (got {size})",
                field="chunking.chunk_size_tokens",
            )
        overlap = min(self.settings.chunk_overlap_tokens, size // 2) if overlap is None else overlap
        if not 0 <= overlap <= size // 2:
            raise InvalidArgument(
                f"must be between 0 and half the chunk size ({size // 2}) (got {overlap})",
                field="chunking.chunk_overlap_tokens",
            )
        return size, overlap

    def _prepare(self, documents: list[DocumentInput], chunker: Chunker, report: Progress, check) -> list[_Prepared]:
        s = self.settings
        seen: dict[str, int] = {}
        out = []
        n = len(documents)
        for i, doc in enumerate(documents):
            check()
            where = f"documents[{i}]"
            tail = f"; document {doc.id!r}; nothing from this batch was written"
            if not isinstance(doc.id, str) or not doc.id or len(doc.id) > MAX_ID_CHARS or _has_control(doc.id):
                raise InvalidArgument(
                    f"must be 1-{MAX_ID_CHARS} characters without control characters (got {doc.id!r}); "
                    "nothing from this batch was written",
                    field=f"{where}.id",
                )
            if doc.id in seen:
                raise InvalidArgument(f"repeats the id of documents[{seen[doc.id]}]{tail}", field=f"{where}.id")
            seen[doc.id] = i
            content_type, params = normalize_content_type(doc.content_type)
            if not content_type:
                raise InvalidArgument(
                    f"must be {SUPPORTED} (got {doc.content_type!r}){tail}", field=f"{where}.content_type"
                )
            content_field = f"{where}.data" if doc.data is not None else f"{where}.text"
            if doc.text is None and doc.data is None:
                raise InvalidArgument(f"set text or data{tail}", field=f"{where}.text")
            size = len(doc.data) if doc.data is not None else len(doc.text.encode("utf-8"))
            if size > s.max_document_bytes:
                raise InvalidArgument(
                    f"is {size} bytes; the limit is {s.max_document_bytes} bytes{tail}", field=content_field
                )
            if len(doc.source) > MAX_SOURCE_CHARS:
                raise InvalidArgument(f"must be at most {MAX_SOURCE_CHARS} characters{tail}", field=f"{where}.source")
            self._check_metadata(doc.metadata, f"{where}.metadata", tail)
            try:
                parsed = parse(content_type, doc.text if doc.data is None else None, doc.data, params)
            except ParseError as exc:
                raise InvalidArgument(f"{exc}{tail}", field=content_field) from None
            if len(parsed.text) > s.max_extracted_chars:
                raise InvalidArgument(
                    f"expands to {len(parsed.text)} characters of text; the limit is {s.max_extracted_chars}{tail}",
                    field=content_field,
                )
            chunks = chunker.chunk(parsed)
            if not chunks:
                raise InvalidArgument(f"holds no text to index{tail}", field=content_field)
            out.append(_Prepared(doc, content_type, parsed, chunks))
            report(PARSING, i + 1, n, n, 0)
        return out

    @staticmethod
    def _check_metadata(metadata: dict[str, str], where: str, tail: str) -> None:
        if len(metadata) > MAX_METADATA_ENTRIES:
            raise InvalidArgument(f"has {len(metadata)} entries; at most {MAX_METADATA_ENTRIES}{tail}", field=where)
        for key, value in metadata.items():
            try:
                check_key(key, f"{where}[{key!r}]")
            except InvalidArgument as exc:
                raise InvalidArgument(f"{exc.message}{tail}") from None
            if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
                raise InvalidArgument(
                    f"must be a string of at most {MAX_METADATA_VALUE_CHARS} characters{tail}",
                    field=f"{where}[{key!r}]",
                )

    # -- other writes ------------------------------------------------------------------------------

    def delete_documents(self, collection: str, document_ids: list[str]) -> tuple[list[str], list[str], int]:
        """(deleted ids, ids not found, chunks deleted)."""
        check_collection(collection)
        if not document_ids:
            raise InvalidArgument("must list at least one document id", field="document_ids")
        for i, doc_id in enumerate(document_ids):
            if not doc_id or len(doc_id) > MAX_ID_CHARS:
                raise InvalidArgument(
                    f"must be 1-{MAX_ID_CHARS} characters (got {doc_id!r})", field=f"document_ids[{i}]"
                )
        deleted, chunks = self.store.delete_documents(collection, list(document_ids))
        gone = set(deleted)
        not_found = [d for d in dict.fromkeys(document_ids) if d not in gone]
        return deleted, not_found, chunks

    def delete_collection(self, collection: str) -> CollectionStats:
        check_collection(collection)
        return self.store.delete_collection(collection)

    def list_collections(self) -> list[CollectionStats]:
        return self.store.list_collections()

    # -- search --------------------------------------------------------------------------------------

    def search(self, q: SearchInput) -> SearchResult:
        s = self.settings
        check_collection(q.collection)
        if not q.query or not q.query.strip():
            raise InvalidArgument("must not be empty", field="query")
        if len(q.query) > s.max_query_chars:
            raise InvalidArgument(f"must be at most {s.max_query_chars} characters (got {len(q.query)})", field="query")
        top_k = s.default_top_k if q.top_k is None else q.top_k
        if not 1 <= top_k <= s.max_top_k:
            raise InvalidArgument(f"must be between 1 and {s.max_top_k} (got {top_k})", field="top_k")
        mode = q.mode or HYBRID
        if mode not in MODES:
            raise InvalidArgument(f"must be one of {', '.join(MODES)} (got {mode!r})", field="mode")
        alpha = s.default_alpha if q.alpha is None else q.alpha
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
            raise InvalidArgument(f"must be between 0 and 1 (got {alpha!r})", field="alpha")
        if q.min_score is not None and not math.isfinite(q.min_score):
            raise InvalidArgument(f"must be a finite number (got {q.min_score!r})", field="min_score")
        filters = self._filters(q.filters)
        lambda_mult, fetch_k = 0.5, top_k
        if q.mmr:
            lambda_mult = 0.5 if q.mmr_lambda is None else q.mmr_lambda
            if not (math.isfinite(lambda_mult) and 0.0 <= lambda_mult <= 1.0):
                raise InvalidArgument(f"must be between 0 and 1 (got {lambda_mult!r})", field="mmr.lambda_mult")
            fetch_k = min(4 * top_k, s.max_fetch_k) if q.mmr_fetch_k is None else q.mmr_fetch_k
            if not top_k <= fetch_k <= s.max_fetch_k:
                raise InvalidArgument(
                    f"must be between top_k ({top_k}) and {s.max_fetch_k} (got {fetch_k})", field="mmr.fetch_k"
                )

        described = self.store.describe(q.collection)
        if described is None:
            raise NotFound(f"collection {q.collection!r} does not exist")
        model, dim = described
        if model and (model != self.model_name or dim != self.dimension):
            raise FailedPrecondition(
                f"collection {q.collection!r} was built with embedding model {model!r} ({dim}-d); this service "
                f"embeds with {self.model_name!r} ({self.dimension}-d)"
            )

        started = time.perf_counter()
        vector = (
            self.embedder.encode([q.query])[0] if mode != KEYWORD else np.zeros(self.dimension, np.float32)
        )
        candidates = self.store.search(
            q.collection,
            StoreQuery(
                text=q.query, vector=vector, mode=mode, alpha=alpha, limit=fetch_k, filters=filters,
                pool=max(s.hybrid_candidates, fetch_k), with_vectors=q.mmr,
            ),
        )
        if q.min_score is not None:
            candidates = [c for c in candidates if c.score >= q.min_score]
        if q.mmr and candidates:
            vecs = np.stack([c.vector for c in candidates])
            order = mmr(vecs, np.array([c.score for c in candidates]), top_k, lambda_mult)
            candidates = [candidates[i] for i in order]
        hits = candidates[:top_k]
        for h in hits:
            h.vector = None
        log.debug("search", extra={"fields": {"mode": mode, "hits": len(hits),
                                              "ms": round((time.perf_counter() - started) * 1e3, 2)}})
        took = time.perf_counter() - started
        metrics.SEARCH_LATENCY.labels(mode).observe(took)
        tracing.record("retriever.search", took, {"genstack.mode": mode, "genstack.hits": len(hits)})
        return SearchResult(hits, mode, alpha)

    def _filters(self, raw: list[FilterInput]) -> list[MetadataFilter]:
        s = self.settings
        if len(raw) > s.max_filters:
            raise InvalidArgument(f"at most {s.max_filters} filters (got {len(raw)})", field="filters")
        out = []
        for i, f in enumerate(raw):
            where = f"filters[{i}]"
            check_key(f.key, f"{where}.key")
            if f.condition == EQUALS:
                out.append(MetadataFilter(f.key, EQUALS, (f.equals or "",)))
            elif f.condition == ANY_OF:
                values = list(f.any_of or [])
                if not 1 <= len(values) <= s.max_filter_values:
                    raise InvalidArgument(
                        f"must hold 1 to {s.max_filter_values} values (got {len(values)})", field=f"{where}.any_of"
                    )
                out.append(MetadataFilter(f.key, ANY_OF, tuple(values)))
            elif f.condition == NUMBER_RANGE:
                gte, gt, lte, lt = f.bounds
                bounds = build_range(f"{where}.number_range", gte, gt, lte, lt, "number")
                out.append(MetadataFilter(f.key, NUMBER_RANGE, (), bounds))
            elif f.condition == DATE_RANGE:
                names = ("gte", "gt", "lte", "lt")
                ts = [date_bound(v, f"{where}.date_range.{n}") for v, n in zip(f.bounds, names, strict=True)]
                out.append(MetadataFilter(f.key, DATE_RANGE, (), build_range(f"{where}.date_range", *ts, "date")))
            else:
                raise InvalidArgument(
                    "must set exactly one condition: equals, any_of, number_range or date_range", field=where
                )
        return out


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)
