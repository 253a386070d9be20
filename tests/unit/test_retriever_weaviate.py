"""The Weaviate backend's pieces that need no server: URL parsing, typed metadata, filter
translation, and how a missing or unreachable server is reported. The backend's behaviour
against a real server is covered by tests/contract/test_retriever_contract.py when
GENSTACK_WEAVIATE_URL is set."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest

from services.retriever.core import RetrieverCore, build_store
from services.retriever.filters import ANY_OF, DATE_RANGE, EQUALS, NUMBER_RANGE, MetadataFilter, Range, as_timestamp
from services.retriever.settings import RetrieverSettings
from services.retriever.stores.weaviate_store import (
    WeaviateStore,
    metadata_properties,
    parse_url,
    translate_filters,
)
from shared.errors import FailedPrecondition, Unavailable


def test_url_parsing():
    assert parse_url("http://weaviate:8080") == ("weaviate", 8080, False)
    assert parse_url("https://example.weaviate.network") == ("example.weaviate.network", 443, True)
    assert parse_url("localhost:9000") == ("localhost", 9000, False)
    with pytest.raises(FailedPrecondition, match="weaviate_url"):
        parse_url("ftp://x")


def test_metadata_gets_typed_filterable_copies():
    props = metadata_properties({"lang": "en", "year": "2021", "when": "2024-05-01", "score": "0.5"})
    assert props["m_lang"] == "en" and "n_lang" not in props and "d_lang" not in props
    assert props["m_year"] == "2021" and props["n_year"] == 2021.0 and "d_year" not in props
    assert props["d_when"] == datetime(2024, 5, 1, tzinfo=UTC) and "n_when" not in props
    assert props["n_score"] == 0.5


def _flat(f):
    if f is None:
        return []
    if hasattr(f, "filters"):
        return [x for sub in f.filters for x in _flat(sub)]
    return [(f.target, f.operator.value, f.value)]


def test_filters_translate_to_weaviate_operators():
    known = {"m_lang", "n_year", "d_when"}
    since = as_timestamp("2024-01-01")
    filters = [
        MetadataFilter("lang", EQUALS, ("en",)),
        MetadataFilter("lang", ANY_OF, ("en", "de")),
        MetadataFilter("year", NUMBER_RANGE, range=Range(2000, True, 2020, False)),
        MetadataFilter("when", DATE_RANGE, range=Range(since, False, None)),
    ]
    where, ok = translate_filters(filters, known)
    assert ok
    assert _flat(where) == [
        ("m_lang", "Equal", "en"),
        ("m_lang", "ContainsAny", ["en", "de"]),
        ("n_year", "GreaterThanEqual", 2000),
        ("n_year", "LessThan", 2020),
        ("d_when", "GreaterThan", datetime(2024, 1, 1, tzinfo=UTC)),
    ]
    single, ok = translate_filters([MetadataFilter("year", NUMBER_RANGE, range=Range(None, True, 5))], known)
    assert ok and _flat(single) == [("n_year", "LessThanEqual", 5)]
    assert translate_filters([], known) == (None, True)


def test_a_filter_on_a_key_the_collection_never_saw_matches_nothing():
    # the property does not exist in the schema, so no object can match (Weaviate would error instead)
    assert translate_filters([MetadataFilter("other", EQUALS, ("x",))], {"m_lang"}) == (None, False)
    assert translate_filters([MetadataFilter("lang", NUMBER_RANGE, range=Range(1))], {"m_lang"}) == (None, False)


def test_backend_is_chosen_by_settings():
    assert isinstance(build_store(RetrieverSettings(backend="weaviate", weaviate_url="http://x:8080")), WeaviateStore)
    assert build_store(RetrieverSettings()).backend == "embedded"


def test_weaviate_url_is_read_from_either_variable(monkeypatch):
    monkeypatch.setenv("GENSTACK_WEAVIATE_URL", "http://a:8080")
    assert RetrieverSettings().weaviate_url == "http://a:8080"
    monkeypatch.setenv("GENSTACK_RETRIEVER_WEAVIATE_URL", "http://b:8080")
    assert RetrieverSettings().weaviate_url == "http://b:8080"


def test_weaviate_without_url_is_a_clear_precondition_failure():
    with pytest.raises(FailedPrecondition, match="GENSTACK_RETRIEVER_WEAVIATE_URL"):
        WeaviateStore(RetrieverSettings(backend="weaviate", weaviate_url=None)).warm_up()


def test_unreachable_weaviate_is_unavailable():
    with socket.socket() as s:  # a free local port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = RetrieverSettings(backend="weaviate", weaviate_url=f"http://127.0.0.1:{port}",
                                 weaviate_grpc_port=port, weaviate_timeout_s=2)
    with pytest.raises(Unavailable, match="cannot reach Weaviate"):
        RetrieverCore(settings).warm_up()
