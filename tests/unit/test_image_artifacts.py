"""The artifact store: local folder by default, any fsspec URL by config, content-addressed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.artifacts import ArtifactSettings, ArtifactStore
from shared.errors import InvalidArgument, NotFound


def test_local_folder_round_trip(tmp_path):
    store = ArtifactStore(tmp_path.as_uri())
    data = b"\x89PNG fake image bytes"
    ref = store.put(data, "image/png", kind="image")
    assert ref.uri.startswith("file://") and ref.uri.endswith(".png")
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.size_bytes == len(data) and ref.mime_type == "image/png"
    assert Path(ref.uri.removeprefix("file://")).read_bytes() == data
    assert store.get(ref.uri) == data
    assert store.exists(ref.uri)
    # same bytes, same object: storing twice neither duplicates nor changes the URI
    assert store.put(data, "image/png", kind="image").uri == ref.uri
    assert store.put(b"other", "image/png", kind="image").uri != ref.uri


def test_default_is_the_data_folder(monkeypatch, tmp_path):
    from shared.config import Settings

    monkeypatch.setattr("shared.artifacts.get_settings", lambda: Settings(data_dir=tmp_path))
    ref = ArtifactStore(settings=ArtifactSettings(url="")).put(b"abc", "video/mp4", kind="video")
    assert ref.uri.startswith((tmp_path / "artifacts" / "video").as_uri())
    assert ref.uri.endswith(".mp4")


def test_any_fsspec_url_by_config(monkeypatch):
    monkeypatch.setenv("GENSTACK_ARTIFACTS_URL", "memory://genstack-test-artifacts")
    store = ArtifactStore()
    ref = store.put(b"in memory", "image/png")
    assert ref.uri.startswith("memory://")
    assert store.get(ref.uri) == b"in memory"


def test_missing_artifact_is_not_found(tmp_path):
    store = ArtifactStore(tmp_path.as_uri())
    with pytest.raises(NotFound):
        store.get((tmp_path / "nope.png").as_uri())


def test_size_cap(tmp_path):
    store = ArtifactStore(tmp_path.as_uri(), settings=ArtifactSettings(max_bytes=10))
    with pytest.raises(InvalidArgument) as err:
        store.put(b"x" * 11, "image/png")
    assert "limit" in err.value.message
