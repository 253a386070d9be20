"""The Weaviate backend (weaviate-client v4): one Weaviate collection per genstack collection.

Each chunk is an object holding our own vector (no server-side vectorizer) and these properties:
text (BM25-searchable), document_id, chunk_index, offsets, section, page, source, content_type,
the document's metadata as JSON, an ingest id, and per metadata key a filterable copy:
`m_<key>` (text, exact match), `n_<key>` (number, when the value reads as one) and `d_<key>`
(date, when the value reads as one). Properties for new keys are added to the schema on demand.

Hybrid search is Weaviate's own hybrid query with relative score fusion and the request's alpha;
the per-mode scores of each hit are the cosine of its returned vector with the query and a BM25
query restricted to the hits. Re-ingesting a document writes the new chunks under a fresh ingest
id first and only then deletes the old ones, so a failed batch is rolled back by deleting its own
ingest id and the previous version stays intact.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import numpy as np

from services.retriever.filters import ANY_OF, DATE_RANGE, EQUALS, NUMBER_RANGE, MetadataFilter, as_number, as_timestamp
from services.retriever.settings import RetrieverSettings
from services.retriever.stores.base import (
    HYBRID,
    KEYWORD,
    VECTOR,
    Candidate,
    CollectionStats,
    DocumentRecord,
    Store,
    StoreQuery,
    WriteResult,
)
from shared.errors import FailedPrecondition, GenstackError, Internal, NotFound, Unavailable

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6f1c1b8e-3c43-4d0e-9a4e-2b7f5d8a9c10")
_FIXED_PROPERTIES = (
    "text", "document_id", "chunk_index", "start_offset", "end_offset", "section", "page", "source",
    "content_type", "metadata_json", "ingest_id",
)
_RETURN_PROPERTIES = [p for p in _FIXED_PROPERTIES if p != "ingest_id"]
_DELETE_PAGE = 10_000  # Weaviate deletes at most QUERY_MAXIMUM_RESULTS objects per call
_INSERT_BATCH = 1000  # objects per insert_many request, to stay well below message size limits


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, secure) of a Weaviate REST URL such as http://weaviate:8080."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise FailedPrecondition(f"weaviate_url must look like http://host:8080 (got {url!r})")
    secure = parsed.scheme == "https"
    return parsed.hostname, parsed.port or (443 if secure else 8080), secure


def text_property(key: str) -> str:
    return f"m_{key}"


def number_property(key: str) -> str:
    return f"n_{key}"


def date_property(key: str) -> str:
    return f"d_{key}"


def metadata_properties(metadata: dict[str, str]) -> dict[str, Any]:
    """The filterable copies of a document's metadata."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        out[text_property(key)] = value
        number = as_number(value)
        if number is not None:
            out[number_property(key)] = number
        ts = as_timestamp(value)
        if ts is not None:
            out[date_property(key)] = datetime.fromtimestamp(ts, UTC)
    return out


def translate_filters(filters: list[MetadataFilter], known: set[str]):
    """Our filters as one Weaviate filter (all must hold). Returns (filter or None, satisfiable):
    a filter on a property the collection has never seen cannot match anything."""
    from weaviate.classes.query import Filter

    parts = []
    for f in filters:
        if f.op in (EQUALS, ANY_OF):
            name = text_property(f.key)
            if name not in known:
                return None, False
            prop = Filter.by_property(name)
            parts.append(prop.equal(f.values[0]) if f.op == EQUALS else prop.contains_any(list(f.values)))
            continue
        name = number_property(f.key) if f.op == NUMBER_RANGE else date_property(f.key)
        if name not in known:
            return None, False
        r = f.range
        assert r is not None

        def bound(x: float, _op=f.op):
            return datetime.fromtimestamp(x, UTC) if _op == DATE_RANGE else x

        prop = Filter.by_property(name)
        if r.lower is not None:
            low = bound(r.lower)
            parts.append(prop.greater_or_equal(low) if r.lower_inclusive else prop.greater_than(low))
        if r.upper is not None:
            high = bound(r.upper)
            parts.append(prop.less_or_equal(high) if r.upper_inclusive else prop.less_than(high))
    if not parts:
        return None, True
    return (parts[0] if len(parts) == 1 else Filter.all_of(parts)), True


def _vector_of(obj) -> np.ndarray | None:
    vec = obj.vector
    if isinstance(vec, dict):
        vec = vec.get("default") or next(iter(vec.values()), None)
    return None if vec is None else np.asarray(vec, dtype=np.float32)


class WeaviateStore(Store):
    backend = "weaviate"

    def __init__(self, settings: RetrieverSettings):
        self.settings = settings
        self.prefix = settings.weaviate_prefix
        self._client = None
        self._schema_lock = threading.Lock()
        self._known: dict[str, set[str]] = {}

    # -- connection ------------------------------------------------------------------------------

    def warm_up(self) -> None:
        if self._client is not None:
            return
        if not self.settings.weaviate_url:
            raise FailedPrecondition(
                "GENSTACK_RETRIEVER_BACKEND=weaviate needs GENSTACK_RETRIEVER_WEAVIATE_URL (or GENSTACK_WEAVIATE_URL)"
            )
        import weaviate
        from weaviate.classes.init import AdditionalConfig, Auth, Timeout

        host, port, secure = parse_url(self.settings.weaviate_url)
        key = self.settings.weaviate_api_key
        t = self.settings.weaviate_timeout_s
        try:
            self._client = weaviate.connect_to_custom(
                http_host=host, http_port=port, http_secure=secure,
                grpc_host=host, grpc_port=self.settings.weaviate_grpc_port, grpc_secure=secure,
                auth_credentials=Auth.api_key(key.get_secret_value()) if key else None,
                additional_config=AdditionalConfig(timeout=Timeout(init=t, query=t, insert=max(t, 90))),
            )
        except Exception as exc:  # noqa: BLE001 - any failure to connect means the dependency is down
            raise Unavailable(f"cannot reach Weaviate at {self.settings.weaviate_url}: {exc}") from None
        log.info("connected to Weaviate", extra={"fields": {"url": self.settings.weaviate_url}})

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self):
        if self._client is None:
            self.warm_up()
        return self._client

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run a Weaviate call, mapping its failures onto our errors."""
        from weaviate.exceptions import (
            WeaviateBaseError,
            WeaviateClosedClientError,
            WeaviateConnectionError,
            WeaviateGRPCUnavailableError,
            WeaviateTimeoutError,
        )

        try:
            return fn()
        except GenstackError:
            raise
        except (WeaviateConnectionError, WeaviateGRPCUnavailableError, WeaviateTimeoutError,
                WeaviateClosedClientError, ConnectionError, TimeoutError) as exc:
            raise Unavailable(f"Weaviate unavailable during {what}: {exc}") from None
        except WeaviateBaseError as exc:
            log.error("Weaviate error", extra={"fields": {"during": what, "error": str(exc)}})
            raise Internal(f"Weaviate failed during {what}") from None

    def name(self, collection: str) -> str:
        return f"{self.prefix}{collection}"

    def _collection(self, collection: str, must_exist: bool = True):
        name = self.name(collection)
        if must_exist and not self._call("exists", lambda: self.client.collections.exists(name)):
            raise NotFound(f"collection {collection!r} does not exist")
        return self.client.collections.use(name)

    # -- schema ------------------------------------------------------------------------------------

    def _description(self, collection: str) -> dict | None:
        name = self.name(collection)
        if not self._call("exists", lambda: self.client.collections.exists(name)):
            return None
        config = self._call("config", lambda: self.client.collections.use(name).config.get())
        self._known[collection] = {p.name for p in config.properties}
        try:
            return json.loads(config.description or "{}")
        except json.JSONDecodeError:
            return {}

    def _create(self, collection: str, model: str, dimension: int) -> None:
        from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances

        def text(name, searchable=False, filterable=True):
            return Property(name=name, data_type=DataType.TEXT, index_searchable=searchable,
                            index_filterable=filterable, tokenization=Tokenization.WORD if searchable else
                            Tokenization.FIELD, skip_vectorization=True)

        def integer(name):
            return Property(name=name, data_type=DataType.INT, skip_vectorization=True)

        props = [
            text("text", searchable=True, filterable=False),
            text("document_id"), integer("chunk_index"), integer("start_offset"), integer("end_offset"),
            text("section", filterable=False), integer("page"), text("source", filterable=False),
            text("content_type"), text("metadata_json", filterable=False), text("ingest_id"),
        ]
        description = json.dumps({"genstack": 1, "embedding_model": model, "dimension": dimension})
        self._call("create collection", lambda: self.client.collections.create(
            self.name(collection),
            description=description,
            properties=props,
            vector_config=Configure.Vectors.self_provided(
                vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
            ),
            inverted_index_config=Configure.inverted_index(bm25_b=0.75, bm25_k1=1.2),
        ))
        self._known[collection] = set(_FIXED_PROPERTIES)

    def _ensure_properties(self, collection: str, documents: list[DocumentRecord]) -> None:
        from weaviate.classes.config import DataType, Property, Tokenization

        wanted: dict[str, Any] = {}
        for doc in documents:
            for prop, value in metadata_properties(doc.metadata).items():
                wanted.setdefault(prop, value)
        missing = [p for p in wanted if p not in self._known.get(collection, set())]
        if not missing:
            return
        coll = self.client.collections.use(self.name(collection))
        for prop in missing:
            if prop.startswith("m_"):
                spec = Property(name=prop, data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                                index_searchable=False, skip_vectorization=True)
            elif prop.startswith("n_"):
                spec = Property(name=prop, data_type=DataType.NUMBER, index_range_filters=True, skip_vectorization=True)
            else:
                spec = Property(name=prop, data_type=DataType.DATE, index_range_filters=True, skip_vectorization=True)
            self._call("add property", lambda s=spec: coll.config.add_property(s))
            self._known.setdefault(collection, set()).add(prop)

    # -- reads ---------------------------------------------------------------------------------------

    def describe(self, collection: str) -> tuple[str, int] | None:
        desc = self._description(collection)
        if desc is None:
            return None
        return str(desc.get("embedding_model", "")), int(desc.get("dimension", 0))

    def list_collections(self) -> list[CollectionStats]:
        names = self._call("list", lambda: list(self.client.collections.list_all(simple=True)))
        out = []
        for full in sorted(names):
            if not full.startswith(self.prefix):
                continue
            collection = full[len(self.prefix):]
            desc = self._description(collection) or {}
            docs, chunks = self._counts(collection)
            out.append(CollectionStats(collection, docs, chunks, str(desc.get("embedding_model", "")),
                                       int(desc.get("dimension", 0)), self.backend))
        return out

    def _counts(self, collection: str, where=None) -> tuple[int, int]:
        from weaviate.classes.aggregate import GroupByAggregate

        coll = self.client.collections.use(self.name(collection))
        chunks = self._call("count", lambda: coll.aggregate.over_all(filters=where, total_count=True)).total_count or 0
        # one group per document; the limit is explicit because the server's default would cap it
        groups = self._call("count documents", lambda: coll.aggregate.over_all(
            filters=where, group_by=GroupByAggregate(prop="document_id", limit=max(1, int(chunks))),
            total_count=True)).groups
        return len(groups), int(chunks)

    def _per_document(self, coll, where, documents: int) -> dict[str, int]:
        from weaviate.classes.aggregate import GroupByAggregate

        result = self._call("count chunks", lambda: coll.aggregate.over_all(
            filters=where, group_by=GroupByAggregate(prop="document_id", limit=max(1, documents)),
            total_count=True))
        return {str(g.grouped_by.value): int(g.total_count or 0) for g in result.groups}

    # -- writes --------------------------------------------------------------------------------------

    def write(self, collection: str, documents: list[DocumentRecord], model: str, dimension: int) -> list[WriteResult]:
        from weaviate.classes.data import DataObject
        from weaviate.classes.query import Filter

        with self._schema_lock:
            desc = self._description(collection)
            if desc is None:
                self._create(collection, model, dimension)
            elif desc.get("embedding_model") != model or int(desc.get("dimension", 0)) != dimension:
                raise FailedPrecondition(
                    f"collection {collection!r} was built with embedding model {desc.get('embedding_model')!r} "
                    f"({desc.get('dimension')}-d); this service embeds with {model!r} ({dimension}-d)"
                )
            self._ensure_properties(collection, documents)
        if not documents:
            return []
        coll = self.client.collections.use(self.name(collection))
        ingest_id = uuid.uuid4().hex
        objects = []
        for doc in documents:
            extra = metadata_properties(doc.metadata)
            for c in doc.chunks:
                props = {
                    "text": c.text, "document_id": doc.document_id, "chunk_index": c.index,
                    "start_offset": c.start, "end_offset": c.end, "section": c.section, "page": c.page,
                    "source": doc.source, "content_type": doc.content_type,
                    "metadata_json": json.dumps(doc.metadata), "ingest_id": ingest_id, **extra,
                }
                objects.append(DataObject(
                    properties=props, vector=np.asarray(c.vector, dtype=np.float32).tolist(),
                    uuid=uuid.uuid5(_NAMESPACE, f"{collection}/{doc.document_id}/{c.index}/{ingest_id}"),
                ))
        mine = Filter.by_property("ingest_id").equal(ingest_id)
        try:
            for i in range(0, len(objects), _INSERT_BATCH):
                part = objects[i : i + _INSERT_BATCH]
                result = self._call("insert", lambda p=part: coll.data.insert_many(p))
                if result.has_errors:
                    first = next(iter(result.errors.values()))
                    raise Internal(f"Weaviate rejected {len(result.errors)} of {len(part)} chunks: {first.message}")
        except BaseException:
            # roll back: remove whatever of this batch landed; earlier versions were not touched
            try:
                self._delete_where(coll, mine)
            except GenstackError:
                log.error("rollback of a failed ingest did not finish", extra={"fields": {"ingest_id": ingest_id}})
            raise
        ids = [d.document_id for d in documents]
        old = Filter.all_of([Filter.by_property("document_id").contains_any(ids),
                             Filter.by_property("ingest_id").not_equal(ingest_id)])
        replaced = self._per_document(coll, old, len(ids))
        self._delete_where(coll, old)
        return [WriteResult(d.document_id, len(d.chunks), replaced.get(d.document_id, 0)) for d in documents]

    def _delete_where(self, coll, where) -> int:
        deleted = 0
        while True:
            result = self._call("delete", lambda: coll.data.delete_many(where=where))
            deleted += int(result.successful)
            if result.failed:
                raise Internal(f"Weaviate failed to delete {result.failed} chunks")
            if result.matches < _DELETE_PAGE:
                return deleted

    def delete_documents(self, collection: str, document_ids: list[str]) -> tuple[list[str], int]:
        from weaviate.classes.query import Filter

        coll = self._collection(collection)
        ids = list(dict.fromkeys(document_ids))
        where = Filter.by_property("document_id").contains_any(ids)
        present = self._per_document(coll, where, len(ids))
        chunks = self._delete_where(coll, where) if present else 0
        return [d for d in ids if d in present], chunks

    def delete_collection(self, collection: str) -> CollectionStats:
        desc = self._description(collection)
        if desc is None:
            raise NotFound(f"collection {collection!r} does not exist")
        docs, chunks = self._counts(collection)
        self._call("delete collection", lambda: self.client.collections.delete(self.name(collection)))
        self._known.pop(collection, None)
        return CollectionStats(collection, docs, chunks, str(desc.get("embedding_model", "")),
                               int(desc.get("dimension", 0)), self.backend)

    # -- search --------------------------------------------------------------------------------------

    def search(self, collection: str, query: StoreQuery) -> list[Candidate]:
        from weaviate.classes.query import Filter, HybridFusion, MetadataQuery

        if collection not in self._known and self._description(collection) is None:
            raise NotFound(f"collection {collection!r} does not exist")
        coll = self.client.collections.use(self.name(collection))
        where, satisfiable = translate_filters(query.filters, self._known.get(collection, set()))
        if not satisfiable:
            return []
        q = np.asarray(query.vector, dtype=np.float32) if query.vector is not None else None
        common = dict(limit=query.limit, filters=where, return_properties=_RETURN_PROPERTIES)
        if query.mode == VECTOR:
            res = self._call("near_vector", lambda: coll.query.near_vector(
                near_vector=q.tolist(), return_metadata=MetadataQuery(distance=True),
                include_vector=query.with_vectors, **common))
            # cosine distance = 1 - cosine similarity
            return [self._candidate(o, 1.0 - float(o.metadata.distance), vector_score=1.0 - float(o.metadata.distance))
                    for o in res.objects]
        if query.mode == KEYWORD:
            res = self._call("bm25", lambda: coll.query.bm25(
                query=query.text, query_properties=["text"], return_metadata=MetadataQuery(score=True),
                include_vector=query.with_vectors, **common))
            return [self._candidate(o, float(o.metadata.score), keyword_score=float(o.metadata.score))
                    for o in res.objects]
        assert query.mode == HYBRID
        res = self._call("hybrid", lambda: coll.query.hybrid(
            query=query.text, vector=q.tolist(), alpha=query.alpha, query_properties=["text"],
            fusion_type=HybridFusion.RELATIVE_SCORE, return_metadata=MetadataQuery(score=True),
            include_vector=True, **common))
        objs = list(res.objects)
        keyword: dict[str, float] = {}
        if objs:
            only = Filter.by_id().contains_any([o.uuid for o in objs])
            kw = self._call("bm25", lambda: coll.query.bm25(
                query=query.text, query_properties=["text"], limit=len(objs),
                filters=only if where is None else Filter.all_of([only, where]),
                return_metadata=MetadataQuery(score=True), return_properties=[]))
            keyword = {str(o.uuid): float(o.metadata.score) for o in kw.objects}
        out = []
        for o in objs:
            vec = _vector_of(o)  # exact cosine of our unit vectors
            cosine = float(vec @ q) if vec is not None else None
            out.append(self._candidate(o, float(o.metadata.score), vector_score=cosine,
                                       keyword_score=keyword.get(str(o.uuid), 0.0)))
        return out

    def _candidate(self, obj, score: float, vector_score: float | None = None, keyword_score: float | None = None):
        p = obj.properties
        return Candidate(
            chunk_id=f"{p['document_id']}#{int(p['chunk_index'])}", document_id=p["document_id"],
            index=int(p["chunk_index"]), text=p["text"], start=int(p["start_offset"]), end=int(p["end_offset"]),
            section=p.get("section") or "", page=int(p.get("page") or 0),
            metadata=json.loads(p.get("metadata_json") or "{}"), source=p.get("source") or "",
            content_type=p.get("content_type") or "", score=score, vector_score=vector_score,
            keyword_score=keyword_score, vector=_vector_of(obj),
        )
