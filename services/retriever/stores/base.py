"""The interface every retriever backend implements, and the records it stores and returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from services.retriever.filters import MetadataFilter

VECTOR, KEYWORD, HYBRID = "vector", "keyword", "hybrid"


@dataclass
class ChunkRecord:
    chunk_id: str
    index: int
    text: str
    start: int
    end: int
    section: str
    page: int
    vector: np.ndarray


@dataclass
class DocumentRecord:
    document_id: str
    content_type: str
    source: str
    metadata: dict[str, str]
    chunks: list[ChunkRecord]


@dataclass
class WriteResult:
    document_id: str
    chunks: int
    replaced_chunks: int


@dataclass
class CollectionStats:
    name: str
    document_count: int
    chunk_count: int
    embedding_model: str
    dimension: int
    backend: str


@dataclass
class StoreQuery:
    text: str
    vector: np.ndarray
    mode: str
    alpha: float
    # candidates to return (the core trims to top_k after min_score and MMR)
    limit: int
    filters: list[MetadataFilter] = field(default_factory=list)
    # hybrid: candidates taken from each of the vector and keyword searches before fusion
    pool: int = 100
    with_vectors: bool = False


@dataclass
class Candidate:
    chunk_id: str
    document_id: str
    index: int
    text: str
    start: int
    end: int
    section: str
    page: int
    metadata: dict[str, str]
    source: str
    content_type: str
    score: float
    vector_score: float | None = None
    keyword_score: float | None = None
    vector: np.ndarray | None = None


class Store(ABC):
    """A backend. Collection names are validated by the core before they reach a store."""

    backend: str

    @abstractmethod
    def describe(self, collection: str) -> tuple[str, int] | None:
        """(embedding model, dimension) of a collection, or None if it does not exist."""

    @abstractmethod
    def list_collections(self) -> list[CollectionStats]: ...

    @abstractmethod
    def write(self, collection: str, documents: list[DocumentRecord], model: str, dimension: int) -> list[WriteResult]:
        """Create the collection if needed and replace every listed document's chunks, all or nothing
        (or raise without leaving any of the batch behind)."""

    @abstractmethod
    def delete_documents(self, collection: str, document_ids: list[str]) -> tuple[list[str], int]:
        """(ids that existed and were removed, chunks removed); NotFound for an unknown collection."""

    @abstractmethod
    def delete_collection(self, collection: str) -> CollectionStats:
        """Drop a collection, returning what it held; NotFound if it does not exist."""

    @abstractmethod
    def search(self, collection: str, query: StoreQuery) -> list[Candidate]:
        """Candidates best first by the mode's score; NotFound for an unknown collection."""

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Connect / open what is needed; raise Unavailable when the backend cannot be reached."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and flush what is worth keeping."""
