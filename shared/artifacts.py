"""Artifact store: large binary results (images, videos) kept outside messages, referenced by URI.

By default a local folder, <data_dir>/artifacts; GENSTACK_ARTIFACTS_URL points it at any fsspec
URL instead (``s3://bucket/prefix`` with s3fs installed, ``gs://...``, ``memory://x`` for tests in
one process, ``file:///shared/volume``). Objects are named by their sha256, so storing the same
bytes twice costs nothing and a URI always names the same content.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import mimetypes
from dataclasses import dataclass

import fsspec
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings, get_settings
from shared.errors import InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)


class ArtifactSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_ARTIFACTS_", extra="ignore")

    url: str = Field("", description="fsspec URL of the artifact store (empty: <data_dir>/artifacts on local disk)")
    max_bytes: int = Field(512 * 1024 * 1024, description="Largest artifact accepted")


@dataclass(frozen=True)
class Artifact:
    """Where an artifact lives and what it is (mirrors genstack.common.v1.ArtifactRef)."""

    uri: str
    mime_type: str
    size_bytes: int
    sha256: str

    def to_proto(self):
        from genstack.common.v1 import common_pb2

        return common_pb2.ArtifactRef(
            uri=self.uri, mime_type=self.mime_type, size_bytes=self.size_bytes, sha256=self.sha256
        )


class ArtifactStore:
    def __init__(self, url: str | None = None, settings: ArtifactSettings | None = None):
        self.settings = settings or ArtifactSettings()
        url = url or self.settings.url or (get_settings().data_path / "artifacts").resolve().as_uri()
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.url = url

    def put(self, data: bytes, mime_type: str, *, kind: str = "misc") -> Artifact:
        """Store bytes under <root>/<kind>/<sha[:2]>/<sha>.<ext> and return their reference."""
        if len(data) > self.settings.max_bytes:
            raise InvalidArgument(
                f"artifact of {len(data)} bytes is over the store's limit of {self.settings.max_bytes}", field="data"
            )
        digest = hashlib.sha256(data).hexdigest()
        ext = mimetypes.guess_extension(mime_type) or ".bin"
        path = f"{self.root}/{kind}/{digest[:2]}/{digest}{ext}"
        try:
            if not self.fs.exists(path):
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                tmp = f"{path}.{digest[:8]}.part"
                with self.fs.open(tmp, "wb") as f:
                    f.write(data)
                self.fs.mv(tmp, path)
        except OSError as exc:
            raise Unavailable(f"artifact store {self.url} is not writable: {exc}") from None
        return Artifact(self.fs.unstrip_protocol(path), mime_type, len(data), digest)

    def get(self, uri: str) -> bytes:
        """The bytes of an artifact; NotFound when the store has nothing at that URI."""
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            with fs.open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"no artifact at {uri}") from None

    def exists(self, uri: str) -> bool:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs.exists(path)


@functools.cache
def get_store() -> ArtifactStore:
    """One store per process, from the settings."""
    return ArtifactStore()
