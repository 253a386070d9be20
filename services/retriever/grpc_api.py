"""Retriever API: protobuf <-> core. Used by the gRPC servicer, the Celery tasks and inproc."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.retriever.v1 import retriever_pb2 as pb
from genstack.retriever.v1 import retriever_pb2_grpc as pb_grpc
from services.retriever.core import (
    COLLECTION_PATTERN,
    DONE,
    EMBEDDING,
    PARSING,
    WRITING,
    DocumentInput,
    FilterInput,
    IngestResult,
    RetrieverCore,
    SearchInput,
    check_collection,
)
from services.retriever.stores.base import HYBRID, KEYWORD, VECTOR, Candidate, CollectionStats
from shared.auth import tenant_collection, visible_collection
from shared.errors import GenstackError, InvalidArgument
from shared.rpc import CallContext, ServiceApi, opt

_MODES = {
    pb.SEARCH_MODE_UNSPECIFIED: None,
    pb.SEARCH_MODE_VECTOR: VECTOR,
    pb.SEARCH_MODE_KEYWORD: KEYWORD,
    pb.SEARCH_MODE_HYBRID: HYBRID,
}
_MODE_ENUM = {VECTOR: pb.SEARCH_MODE_VECTOR, KEYWORD: pb.SEARCH_MODE_KEYWORD, HYBRID: pb.SEARCH_MODE_HYBRID}
_STAGES = {
    PARSING: pb.INGEST_STAGE_PARSING,
    EMBEDDING: pb.INGEST_STAGE_EMBEDDING,
    WRITING: pb.INGEST_STAGE_WRITING,
    DONE: pb.INGEST_STAGE_DONE,
}


def to_documents(request: pb.IngestDocumentsRequest) -> list[DocumentInput]:
    out = []
    for d in request.documents:
        which = d.WhichOneof("content")
        out.append(
            DocumentInput(
                id=d.id,
                text=d.text if which == "text" else None,
                data=d.data if which == "data" else None,
                content_type=d.content_type,
                metadata=dict(d.metadata),
                source=d.source,
            )
        )
    return out


def to_filter(f: pb.MetadataFilter) -> FilterInput:
    which = f.WhichOneof("condition")
    if which == "equals":
        return FilterInput(f.key, which, equals=f.equals)
    if which == "any_of":
        return FilterInput(f.key, which, any_of=list(f.any_of.values))
    if which == "number_range":
        r = f.number_range
        return FilterInput(f.key, which, bounds=(opt(r, "gte"), opt(r, "gt"), opt(r, "lte"), opt(r, "lt")))
    if which == "date_range":
        r = f.date_range
        return FilterInput(f.key, which, bounds=(r.gte or None, r.gt or None, r.lte or None, r.lt or None))
    return FilterInput(f.key, None)


def to_search(request: pb.SearchRequest) -> SearchInput:
    if request.mode not in _MODES:
        raise InvalidArgument(f"must be one of {', '.join(pb.SearchMode.keys())} (got {request.mode})", field="mode")
    has_mmr = request.HasField("mmr")
    return SearchInput(
        collection=request.collection,
        query=request.query,
        top_k=opt(request, "top_k"),
        mode=_MODES[request.mode],
        alpha=opt(request, "alpha"),
        filters=[to_filter(f) for f in request.filters],
        min_score=opt(request, "min_score"),
        mmr=has_mmr,
        mmr_lambda=opt(request.mmr, "lambda_mult") if has_mmr else None,
        mmr_fetch_k=opt(request.mmr, "fetch_k") if has_mmr else None,
    )


def to_hit(c: Candidate) -> pb.Hit:
    hit = pb.Hit(
        chunk_id=c.chunk_id, document_id=c.document_id, text=c.text, score=c.score, start_offset=c.start,
        end_offset=c.end, chunk_index=c.index, section=c.section, page=c.page, metadata=c.metadata,
        source=c.source, content_type=c.content_type,
    )
    if c.vector_score is not None:
        hit.vector_score = c.vector_score
    if c.keyword_score is not None:
        hit.keyword_score = c.keyword_score
    return hit


def to_collection(s: CollectionStats) -> pb.CollectionInfo:
    return pb.CollectionInfo(
        name=s.name, document_count=s.document_count, chunk_count=s.chunk_count,
        embedding_model=s.embedding_model, dimension=s.dimension, backend=s.backend,
    )


def to_ingest_response(result: IngestResult) -> pb.IngestDocumentsResponse:
    return pb.IngestDocumentsResponse(
        collection=result.collection,
        chunks_written=result.chunks_written,
        documents=[
            pb.IngestedDocument(document_id=d.document_id, chunks=d.chunks, replaced_chunks=d.replaced_chunks)
            for d in result.documents
        ],
    )


def progress_message(stage: str, done: int, total: int, documents: int, chunks: int) -> pb.IngestProgress:
    return pb.IngestProgress(stage=_STAGES[stage], done=done, total=total, documents=documents, chunks=chunks)


class RetrieverApi(ServiceApi):
    service = "retriever"
    descriptor = pb.DESCRIPTOR.services_by_name["RetrieverService"]
    servicer_base = pb_grpc.RetrieverServiceServicer
    add_to_server = staticmethod(pb_grpc.add_RetrieverServiceServicer_to_server)

    # Tenancy: every collection belongs to the principal that made it. Callers name collections in
    # their own namespace; the stored name carries the tenant's prefix (shared.auth.tenant_collection).
    # Another tenant's collection reads exactly like a missing one.

    def _stored(self, name: str, ctx: CallContext) -> str:
        check_collection(name)
        stored = tenant_collection(ctx.identity, name)
        if stored != name and not COLLECTION_PATTERN.fullmatch(stored):
            room = 63 - (len(stored) - len(name))
            raise InvalidArgument(f"must be at most {room} characters for this principal's collections (the "
                                  f"stored name adds a tenant prefix; got {len(name)})", field="collection")
        return stored

    @staticmethod
    @contextlib.contextmanager
    def _named(stored: str, name: str) -> Iterator[None]:
        """Errors name the collection as the caller does, never by its stored, prefixed name."""
        try:
            yield
        except GenstackError as exc:
            if stored != name and exc.args:
                exc.args = (str(exc.args[0]).replace(stored, name), *exc.args[1:])
            raise

    def IngestDocuments(self, request: pb.IngestDocumentsRequest, ctx: CallContext) -> pb.IngestDocumentsResponse:
        return self.ingest(request, ctx)

    def ingest(
        self,
        request: pb.IngestDocumentsRequest,
        ctx: CallContext,
        *,
        large: bool = False,
        on_progress: Callable[[pb.IngestProgress], None] | None = None,
    ) -> pb.IngestDocumentsResponse:
        """IngestDocuments; `large` applies the retriever.ingest task's larger document cap, and
        `on_progress` receives its progress reports."""
        chunking = request.chunking
        progress = None
        if on_progress is not None:
            progress = lambda *args: on_progress(progress_message(*args))  # noqa: E731
        stored = self._stored(request.collection, ctx)
        with self._named(stored, request.collection):
            result = self.core.ingest(
                stored,
                to_documents(request),
                opt(chunking, "chunk_size_tokens"),
                opt(chunking, "chunk_overlap_tokens"),
                max_documents=self.core.settings.max_documents_per_task if large else None,
                progress=progress,
                check=ctx.check,
            )
        response = to_ingest_response(result)
        response.collection = request.collection
        return response

    def DeleteDocuments(self, request: pb.DeleteDocumentsRequest, ctx: CallContext) -> pb.DeleteDocumentsResponse:
        stored = self._stored(request.collection, ctx)
        with self._named(stored, request.collection):
            deleted, not_found, chunks = self.core.delete_documents(stored, list(request.document_ids))
        return pb.DeleteDocumentsResponse(deleted_ids=deleted, not_found_ids=not_found, chunks_deleted=chunks)

    def ListCollections(self, request: pb.ListCollectionsRequest, ctx: CallContext) -> pb.ListCollectionsResponse:
        out = []
        for stats in self.core.list_collections():
            name = visible_collection(ctx.identity, stats.name)
            if name is not None:
                info = to_collection(stats)
                info.name = name
                out.append(info)
        return pb.ListCollectionsResponse(collections=out)

    def DeleteCollection(self, request: pb.DeleteCollectionRequest, ctx: CallContext) -> pb.DeleteCollectionResponse:
        stored = self._stored(request.collection, ctx)
        with self._named(stored, request.collection):
            stats = self.core.delete_collection(stored)
        return pb.DeleteCollectionResponse(documents_deleted=stats.document_count, chunks_deleted=stats.chunk_count)

    def Search(self, request: pb.SearchRequest, ctx: CallContext) -> pb.SearchResponse:
        started = time.perf_counter()
        query = to_search(request)
        query.collection = self._stored(request.collection, ctx)
        with self._named(query.collection, request.collection):
            result = self.core.search(query)
        hits = [to_hit(h) for h in result.hits]
        took_ms = (time.perf_counter() - started) * 1000
        return pb.SearchResponse(hits=hits, mode=_MODE_ENUM[result.mode], alpha=result.alpha, took_ms=took_ms)

    def Embed(self, request: pb.EmbedRequest, ctx: CallContext) -> pb.EmbedResponse:
        result = self.core.embed(list(request.texts))
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=vec.tolist(), tokens=n, truncated=cut)
                        for vec, n, cut in zip(result.vectors, result.tokens, result.truncated, strict=True)],
            model=result.model, dimension=int(result.vectors.shape[1]), max_tokens=result.max_tokens,
        )


API_CLASS = RetrieverApi


def create_api() -> RetrieverApi:
    return RetrieverApi(RetrieverCore())
