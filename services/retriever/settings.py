"""Retriever settings (prefix GENSTACK_RETRIEVER_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings, get_settings


class RetrieverSettings(ServiceSettings):
    # populate_by_name: weaviate_url has env aliases but can still be passed by name in code
    model_config = SettingsConfigDict(env_prefix="GENSTACK_RETRIEVER_", extra="ignore", populate_by_name=True)

    backend: Literal["embedded", "weaviate"] = Field(
        "embedded", description="Where chunks live: 'embedded' (faiss + SQLite in data_dir) or 'weaviate'"
    )
    data_dir: Path | None = Field(
        None, description="Embedded store folder; defaults to <GENSTACK_DATA_DIR or GENSTACK_HOME/data>/retriever"
    )
    weaviate_url: str | None = Field(
        None,
        validation_alias=AliasChoices("GENSTACK_RETRIEVER_WEAVIATE_URL", "GENSTACK_WEAVIATE_URL"),
        description="Weaviate REST URL, e.g. http://weaviate:8080 (also read from GENSTACK_WEAVIATE_URL)",
    )
    weaviate_grpc_port: int = Field(50051, description="Weaviate's gRPC port (same host as weaviate_url)")
    weaviate_api_key: SecretStr | None = Field(None, description="Weaviate API key, if the server requires one")
    weaviate_prefix: str = Field(
        "Genstack_", description="Prefix of the Weaviate collection that holds each genstack collection"
    )
    weaviate_timeout_s: float = Field(30.0, description="Timeout of each Weaviate call")

    chunk_size_tokens: int = Field(200, description="Default maximum tokens per chunk (embedding tokenizer)")
    chunk_overlap_tokens: int = Field(32, description="Default tokens shared by consecutive chunks of a section")
    max_document_bytes: int = Field(
        8 * 1024 * 1024, description="Largest document accepted (UTF-8 bytes of text, or raw bytes)"
    )
    max_extracted_chars: int = Field(4_000_000, description="Largest text a document may expand to after parsing")
    max_documents_per_request: int = Field(
        256, description="Most documents in one IngestDocuments call (use the retriever.ingest task for more)"
    )
    max_documents_per_task: int = Field(20_000, description="Most documents in one retriever.ingest task")
    max_top_k: int = Field(100, description="Largest top_k a search may ask for")
    default_top_k: int = Field(10, description="top_k when a search sets none")
    default_alpha: float = Field(
        0.7, ge=0.0, le=1.0, description="Hybrid weight when a search sets none (0.7, as Weaviate's server default)"
    )
    hybrid_candidates: int = Field(100, description="Candidates taken from each of vector and keyword search")
    max_fetch_k: int = Field(500, description="Largest MMR candidate pool")
    max_query_chars: int = Field(2000, description="Longest query text accepted")
    max_embed_texts: int = Field(256, description="Most texts in one Embed call")
    max_embed_chars: int = Field(8192, description="Longest text accepted by Embed")
    max_filters: int = Field(16, description="Most metadata filters in one search")
    max_filter_values: int = Field(100, description="Most values in one any_of filter")

    faiss_threads: int = Field(1, description="OpenMP threads faiss uses for searches (1 is fastest for one query)")
    faiss_build_threads: int = Field(0, description="OpenMP threads while building an HNSW index (0: all cores)")
    hnsw_threshold: int = Field(
        20_000, description="Chunks in a collection above which the exact flat index becomes an HNSW graph"
    )
    hnsw_m: int = Field(32, description="HNSW graph degree")
    hnsw_ef_construction: int = Field(80, description="HNSW build-time beam width")
    hnsw_ef_search: int = Field(256, description="HNSW search-time beam width (recall vs. latency)")
    exact_filter_limit: int = Field(
        20_000, description="Filtered vector searches matching at most this many chunks are exact"
    )
    snapshot_every: int = Field(
        5_000, description="Chunks changed since the last on-disk HNSW snapshot that trigger a new one"
    )
    sqlite_busy_timeout_s: float = Field(60.0, description="How long a write waits for another process's write")

    def store_path(self) -> Path:
        return self.data_dir or get_settings().data_path / "retriever"
