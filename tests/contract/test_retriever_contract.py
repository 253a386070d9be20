"""The retriever's contract, run unchanged over every transport (inproc, grpc, celery) and every backend
(embedded; Weaviate when GENSTACK_WEAVIATE_URL points to a server), with the real embedding model.

All transports of one backend share the session's temporary data folder (the gRPC server and the
Celery worker are separate processes on the same embedded store), so each case works in its own
collection.
"""

from __future__ import annotations

import os
import uuid
import warnings

import grpc
import pytest

from genstack.retriever.v1 import retriever_pb2 as pb
from genstack.retriever.v1 import retriever_pb2_grpc as pb_grpc
from services.retriever.settings import RetrieverSettings
from shared.clients.retriever import RetrieverClient
from shared.errors import GenstackError
from tests.conftest import TRANSPORTS
from tests.unit.test_retriever_parsing import make_pdf

pytestmark = pytest.mark.slow

WEAVIATE_URL = os.environ.get("GENSTACK_WEAVIATE_URL") or os.environ.get("GENSTACK_RETRIEVER_WEAVIATE_URL")
BACKENDS = ("embedded", "weaviate")
# the service's defaults (the tests change no setting, so they hold for every process)
CAPS = RetrieverSettings()
WEAVIATE_SKIP = ("retriever contract NOT run against the Weaviate backend: set GENSTACK_WEAVIATE_URL to a Weaviate "
                 ">= 1.27 server (`docker compose up weaviate` provides one); none can run on this machine")
_warned: list[bool] = []


def _weaviate_redis_url() -> str:
    # the Weaviate-backed worker listens on the same queue name, so it gets its own Redis database
    from shared.config import get_settings
    from tests.support import redis_db_url

    return redis_db_url(get_settings().redis_url, 14)


@pytest.fixture(scope="module", params=[(b, t) for b in BACKENDS for t in TRANSPORTS],
                ids=[f"{b}-{t}" for b in BACKENDS for t in TRANSPORTS])
def client(request, client_factory) -> RetrieverClient:
    backend, transport = request.param
    if backend == "embedded":
        c = client_factory(RetrieverClient, transport)
        c.contract_transport = transport
        yield c
        return
    if not WEAVIATE_URL:
        if not _warned:  # once, in the warnings summary that every pytest run prints
            _warned.append(True)
            warnings.warn(WEAVIATE_SKIP, UserWarning, stacklevel=1)
        pytest.skip(WEAVIATE_SKIP)
    yield from _weaviate_client(transport)


def _weaviate_client(transport: str):
    from services.retriever.core import RetrieverCore
    from services.retriever.grpc_api import RetrieverApi
    from services.retriever.settings import RetrieverSettings
    from shared.config import Settings
    from tests.support import ServiceProcess

    env = {"GENSTACK_RETRIEVER_BACKEND": "weaviate", "GENSTACK_RETRIEVER_WEAVIATE_URL": WEAVIATE_URL,
           "GENSTACK_REDIS_URL": _weaviate_redis_url()}
    settings = Settings(redis_url=env["GENSTACK_REDIS_URL"])
    procs = []
    if transport == "inproc":
        api = RetrieverApi(RetrieverCore(RetrieverSettings(backend="weaviate", weaviate_url=WEAVIATE_URL)))
        api.warm_up()
        c = RetrieverClient("inproc", api=api, settings=settings)
    elif transport == "grpc":
        procs.append(ServiceProcess("retriever", "grpc", env=env).start())
        procs.append(ServiceProcess("retriever", "worker", env=env).start())  # for the retriever.ingest task
        c = RetrieverClient("grpc", address=procs[0].address, settings=settings)
    else:
        procs.append(ServiceProcess("retriever", "worker", env=env).start())
        c = RetrieverClient("celery", settings=settings)
    c.contract_transport = transport
    try:
        yield c
    finally:
        c.close()
        for p in procs:
            p.stop()


@pytest.fixture
def ensure_worker(client, service_process):
    """retriever.ingest is a Celery task whatever transport the other calls use."""
    if client.transport != "inproc" and client.settings.redis_url != _weaviate_redis_url():
        service_process("retriever", "worker")


def fresh() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


MD = """# Sourdough guide

## Starter

Feed the starter with flour and water every day until it doubles in size.

## Baking

Bake the loaf in a covered dutch oven at 250 degrees for twenty minutes, then uncover it.
"""
HTML = ("<html><body><h1>Volcanoes</h1><p>Magma rises through the crust and erupts as lava &amp; ash.</p>"
        "<h2>Safety</h2><p>Stay outside the exclusion zone during an eruption.</p></body></html>")
TXT = "Tidal pools host anemones, crabs and starfish that survive the falling tide."


def corpus() -> list[pb.Document]:
    return [
        pb.Document(id="bread", text=MD, content_type="text/markdown", source="/docs/bread.md",
                    metadata={"topic": "food", "year": "2021", "published": "2021-03-01"}),
        pb.Document(id="volcano", text=HTML, content_type="text/html",
                    metadata={"topic": "geology", "year": "2019", "published": "2019-08-20"}),
        pb.Document(id="sea", text=TXT, metadata={"topic": "biology", "year": "2023", "published": "2023-04-02"}),
        pb.Document(id="planets", data=make_pdf([["Jupiter is the largest planet."], ["Saturn has bright rings."]]),
                    content_type="application/pdf", metadata={"topic": "astronomy", "year": "2020"}),
    ]


@pytest.fixture(scope="module")
def docs(client) -> str:
    """A collection holding the corpus, ingested once per transport and backend."""
    name = fresh()
    got = client.ingest_documents(pb.IngestDocumentsRequest(collection=name, documents=corpus()), timeout=300)
    assert got.collection == name
    assert [d.document_id for d in got.documents] == ["bread", "volcano", "sea", "planets"]
    assert got.chunks_written == sum(d.chunks for d in got.documents) and got.chunks_written >= 6
    return name


def counts(client, name):
    for c in client.list_collections(timeout=60).collections:
        if c.name == name:
            return c.document_count, c.chunk_count
    return None


def search(client, collection, query, **kw):
    kw.setdefault("top_k", 3)
    filters = kw.pop("filters", [])
    mmr = kw.pop("mmr", None)
    request = pb.SearchRequest(collection=collection, query=query, filters=filters, **kw)
    if mmr is not None:
        request.mmr.CopyFrom(mmr)
    return client.search(request, timeout=60)


# -- ingest, list, search ----------------------------------------------------------------------------------


def test_collections_are_listed_with_counts(client, docs):
    (info,) = [c for c in client.list_collections(timeout=60).collections if c.name == docs]
    assert info.document_count == 4 and info.chunk_count >= 6
    assert info.embedding_model == "all-minilm-l6-v2" and info.dimension == 384
    assert info.backend in ("embedded", "weaviate")


def test_hits_carry_text_ids_offsets_scores_and_metadata(client, docs):
    res = search(client, docs, "how hot should the oven be for bread?", mode=pb.SEARCH_MODE_VECTOR)
    assert res.mode == pb.SEARCH_MODE_VECTOR
    top = res.hits[0]
    assert top.document_id == "bread" and top.chunk_id == f"bread#{top.chunk_index}"
    assert top.section == "Sourdough guide > Baking" and MD[top.start_offset : top.end_offset] == top.text
    assert top.source == "/docs/bread.md" and top.content_type == "text/markdown"
    assert dict(top.metadata) == {"topic": "food", "year": "2021", "published": "2021-03-01"}
    assert top.HasField("vector_score") and top.score == pytest.approx(top.vector_score)
    assert not top.HasField("keyword_score")

    lava = search(client, docs, "lava ash eruption", mode=pb.SEARCH_MODE_KEYWORD).hits[0]
    assert lava.document_id == "volcano" and "lava & ash" in lava.text
    assert "lava &amp; ash" in HTML[lava.start_offset : lava.end_offset]
    assert lava.HasField("keyword_score") and not lava.HasField("vector_score") and lava.score > 0

    rings = search(client, docs, "which planet has rings?").hits[0]  # hybrid by default
    assert rings.document_id == "planets" and rings.page == 2 and "Saturn" in rings.text
    assert rings.HasField("vector_score") and rings.HasField("keyword_score") and 0 <= rings.score <= 1


def test_hybrid_alpha_follows_weaviate_semantics(client, docs):
    q = "flour and water for the starter"

    def order(**kw):
        return [h.chunk_id for h in search(client, docs, q, top_k=5, **kw).hits]

    assert order(mode=pb.SEARCH_MODE_HYBRID, alpha=1.0) == order(mode=pb.SEARCH_MODE_VECTOR)
    kw = order(mode=pb.SEARCH_MODE_KEYWORD)
    assert order(mode=pb.SEARCH_MODE_HYBRID, alpha=0.0)[: len(kw)] == kw
    res = search(client, docs, q, mode=pb.SEARCH_MODE_HYBRID, alpha=0.25)
    assert res.alpha == pytest.approx(0.25) and res.hits[0].document_id == "bread"


def test_metadata_filters(client, docs):
    def found(*filters, mode=pb.SEARCH_MODE_VECTOR):
        return {h.document_id for h in search(client, docs, "nature and science", top_k=20, mode=mode,
                                              filters=list(filters)).hits}

    assert found(pb.MetadataFilter(key="topic", equals="geology")) == {"volcano"}
    assert found(pb.MetadataFilter(key="topic", any_of=pb.StringList(values=["food", "biology"])),
                 mode=pb.SEARCH_MODE_HYBRID) == {"bread", "sea"}
    assert found(pb.MetadataFilter(key="year", number_range=pb.NumberRange(gte=2020, lt=2023))) == {"bread", "planets"}
    assert found(pb.MetadataFilter(key="published", date_range=pb.DateRange(gt="2021-03-01")),
                 mode=pb.SEARCH_MODE_KEYWORD) | found(pb.MetadataFilter(
                     key="published", date_range=pb.DateRange(gt="2021-03-01"))) == {"sea"}
    assert found(pb.MetadataFilter(key="published", date_range=pb.DateRange(gte="2019-01-01", lte="2021-12-31")),
                 pb.MetadataFilter(key="topic", equals="food")) == {"bread"}
    assert found(pb.MetadataFilter(key="no_such_key", equals="x")) == set()


def test_min_score_and_mmr(client, docs):
    everything = search(client, docs, "saturn rings", mode=pb.SEARCH_MODE_VECTOR, top_k=20).hits
    cut = (everything[0].score + everything[-1].score) / 2
    kept = search(client, docs, "saturn rings", mode=pb.SEARCH_MODE_VECTOR, top_k=20, min_score=cut).hits
    assert 0 < len(kept) < len(everything) and all(h.score >= cut for h in kept)

    name = fresh()
    dup = "Espresso is brewed by forcing hot water through finely ground coffee."
    client.ingest_documents(pb.IngestDocumentsRequest(collection=name, documents=[
        pb.Document(id="e1", text=dup), pb.Document(id="e2", text=dup + " It is strong."),
        pb.Document(id="e3", text=dup.replace("finely ground", "finely-ground")),
        pb.Document(id="tea", text="Green tea is steeped in water that is not quite boiling."),
    ]), timeout=120)
    q = "how is espresso brewed with water"
    plain = search(client, name, q, top_k=2, mode=pb.SEARCH_MODE_VECTOR).hits
    assert {h.document_id for h in plain} <= {"e1", "e2", "e3"}
    diverse = search(client, name, q, top_k=2, mode=pb.SEARCH_MODE_VECTOR, mmr=pb.MmrOptions(lambda_mult=0.3)).hits
    assert [h.document_id for h in diverse] == [plain[0].document_id, "tea"]


def test_reingest_replaces_and_delete_removes_every_chunk(client):
    name = fresh()
    long_text = "\n\n".join(f"Paragraph {i} is about lighthouse number {i} on the coast." for i in range(40))
    first = client.ingest_documents(pb.IngestDocumentsRequest(
        collection=name, chunking=pb.ChunkingOptions(chunk_size_tokens=32, chunk_overlap_tokens=0),
        documents=[pb.Document(id="d", text=long_text), pb.Document(id="keep", text="Another document.")]),
        timeout=120)
    n = first.documents[0].chunks
    assert n > 5 and counts(client, name) == (2, n + 1)
    again = client.ingest_documents(pb.IngestDocumentsRequest(
        collection=name, documents=[pb.Document(id="d", text="A short replacement about lighthouses.")]), timeout=120)
    assert (again.documents[0].chunks, again.documents[0].replaced_chunks) == (1, n)
    assert counts(client, name) == (2, 2)
    hits = search(client, name, "lighthouse paragraph coast", top_k=10, mode=pb.SEARCH_MODE_KEYWORD).hits
    assert sorted(h.chunk_id for h in hits) == ["d#0"]

    gone = client.delete_documents(pb.DeleteDocumentsRequest(collection=name, document_ids=["d", "ghost"]), timeout=60)
    assert list(gone.deleted_ids) == ["d"] and list(gone.not_found_ids) == ["ghost"] and gone.chunks_deleted == 1
    assert counts(client, name) == (1, 1)
    assert [h.document_id for h in search(client, name, "lighthouse", top_k=10).hits] == ["keep"]
    dropped = client.delete_collection(pb.DeleteCollectionRequest(collection=name), timeout=60)
    assert (dropped.documents_deleted, dropped.chunks_deleted) == (1, 1)
    assert counts(client, name) is None


def test_large_batches_go_through_the_ingest_task_with_progress(client, ensure_worker):
    name = fresh()
    over = pb.IngestDocumentsRequest(collection=name, documents=[
        pb.Document(id=f"x{i}", text="tiny") for i in range(CAPS.max_documents_per_request + 1)])
    with pytest.raises(GenstackError) as err:  # above the unary cap: refused before any work
        client.ingest_documents(over, timeout=120)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.message.startswith("documents:")
    assert "retriever.ingest" in err.value.message and counts(client, name) is None
    documents = [pb.Document(id=f"n{i}", text=f"Note {i}: the value of item {i} is {i * 7} units.",
                             metadata={"i": str(i)}) for i in range(60)]
    request = pb.IngestDocumentsRequest(collection=name, documents=documents)
    seen: list[pb.IngestProgress] = []
    got = client.ingest_large(request, timeout=300, on_progress=seen.append, poll_s=0.05)
    assert got.chunks_written == 60 and len(got.documents) == 60
    assert counts(client, name) == (60, 60)
    assert seen, "no progress was reported"
    for p in seen:
        assert p.stage != pb.INGEST_STAGE_UNSPECIFIED and 0 <= p.done <= p.total and p.documents == 60
    if client.transport == "inproc":  # every report arrives synchronously
        stages = [p.stage for p in seen]
        assert stages[0] == pb.INGEST_STAGE_PARSING and stages[-1] == pb.INGEST_STAGE_DONE
        assert pb.INGEST_STAGE_EMBEDDING in stages and pb.INGEST_STAGE_WRITING in stages
    hit = search(client, name, "value of item 42", top_k=1, mode=pb.SEARCH_MODE_KEYWORD).hits[0]
    assert hit.document_id == "n42" and hit.metadata["i"] == "42"


# -- bad input ---------------------------------------------------------------------------------------------

BAD_SEARCHES = [
    ("empty query", dict(query=""), "query"),
    ("blank query", dict(query="   "), "query"),
    ("top_k zero", dict(top_k=0), "top_k"),
    ("top_k negative", dict(top_k=-1), "top_k"),
    ("top_k above cap", dict(top_k=101), "top_k"),
    ("collection uppercase", dict(collection="Docs"), "collection"),
    ("collection with space", dict(collection="my docs"), "collection"),
    ("collection empty", dict(collection=""), "collection"),
    ("filter without condition", dict(filters=[pb.MetadataFilter(key="topic")]), "filters[0]"),
    ("filter bad key", dict(filters=[pb.MetadataFilter(key="a-b", equals="x")]), "filters[0].key"),
    ("filter empty any_of", dict(filters=[pb.MetadataFilter(key="t", any_of=pb.StringList())]), "filters[0].any_of"),
    ("filter range without bounds", dict(filters=[pb.MetadataFilter(key="year", number_range=pb.NumberRange())]),
     "filters[0].number_range"),
    ("filter inverted range", dict(filters=[pb.MetadataFilter(key="year", number_range=pb.NumberRange(gt=5, lt=1))]),
     "filters[0].number_range"),
    ("filter bad date", dict(filters=[pb.MetadataFilter(key="d", date_range=pb.DateRange(gte="last week"))]),
     "filters[0].date_range.gte"),
    ("alpha above one", dict(alpha=1.5), "alpha"),
    ("alpha negative", dict(alpha=-0.01), "alpha"),
    ("mmr lambda", dict(mmr=pb.MmrOptions(lambda_mult=2)), "mmr.lambda_mult"),
]


def _raw_status(client, method: str, request):
    """The gRPC status itself, bypassing the typed client (grpc transport only)."""
    stub = pb_grpc.RetrieverServiceStub(client._channel)
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request, timeout=60)
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("case,change,field", BAD_SEARCHES, ids=[c[0] for c in BAD_SEARCHES])
def test_bad_search_is_invalid_argument_naming_the_field(client, docs, case, change, field):
    before = counts(client, docs)
    args = {"collection": docs, "query": "bread", **change}
    mmr = args.pop("mmr", None)
    request = pb.SearchRequest(**args)
    if mmr is not None:
        request.mmr.CopyFrom(mmr)
    with pytest.raises(GenstackError) as err:
        client.search(request, timeout=60)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert err.value.message.startswith(field), err.value.message
    if client.contract_transport == "grpc":
        code, details = _raw_status(client, "Search", request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field)
    assert counts(client, docs) == before


def test_search_on_an_unknown_collection_is_not_found(client):
    request = pb.SearchRequest(collection="no_such_collection", query="bread")
    with pytest.raises(GenstackError) as err:
        client.search(request, timeout=60)
    assert err.value.code == grpc.StatusCode.NOT_FOUND and "no_such_collection" in err.value.message
    if client.contract_transport == "grpc":
        assert _raw_status(client, "Search", request)[0] == grpc.StatusCode.NOT_FOUND
    with pytest.raises(GenstackError) as err:
        client.delete_documents(pb.DeleteDocumentsRequest(collection="no_such_collection", document_ids=["a"]),
                                timeout=60)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


GOOD = pb.Document(id="good", text="A perfectly fine document about gardening and compost.")
LATER = pb.Document(id="later", text="Another fine document about pruning roses.")
BAD_DOCUMENTS = [
    ("unsupported content type", pb.Document(id="x", text="data", content_type="image/png"),
     "documents[1].content_type"),
    ("document above the size cap", pb.Document(id="x", text="y" * (CAPS.max_document_bytes + 1)), "documents[1].text"),
    ("binary above the size cap", pb.Document(id="x", data=b"%PDF" + b"0" * CAPS.max_document_bytes,
                                              content_type="application/pdf"), "documents[1].data"),
    ("unreadable pdf", pb.Document(id="x", data=b"%PDF-1.4 nope", content_type="application/pdf"),
     "documents[1].data"),
    ("no content", pb.Document(id="x"), "documents[1].text"),
    ("missing id", pb.Document(text="no id"), "documents[1].id"),
    ("duplicate id", pb.Document(id="good", text="again"), "documents[1].id"),
    ("bad metadata key", pb.Document(id="x", text="t", metadata={"a b": "v"}), "documents[1].metadata"),
]


@pytest.mark.parametrize("case,bad,field", BAD_DOCUMENTS, ids=[c[0] for c in BAD_DOCUMENTS])
def test_a_bad_document_fails_its_batch_names_itself_and_writes_nothing(client, case, bad, field):
    name = fresh()
    client.ingest_documents(pb.IngestDocumentsRequest(
        collection=name, documents=[pb.Document(id="existing", text="Stored before the bad batch.")]), timeout=120)
    request = pb.IngestDocumentsRequest(collection=name, documents=[GOOD, bad, LATER])
    with pytest.raises(GenstackError) as err:
        client.ingest_documents(request, timeout=120)
    msg = err.value.message
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert msg.startswith(field) and "nothing from this batch was written" in msg, msg
    if client.contract_transport == "grpc":
        code, details = _raw_status(client, "IngestDocuments", request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field)
    assert counts(client, name) == (1, 1)
    hits = search(client, name, "gardening compost pruning roses", top_k=10).hits
    assert [h.document_id for h in hits] == ["existing"]


@pytest.mark.parametrize("collection", ["Bad", "a/b", "x" * 70])
def test_ingest_into_an_invalid_collection_name(client, collection):
    with pytest.raises(GenstackError) as err:
        client.ingest_documents(pb.IngestDocumentsRequest(collection=collection, documents=[GOOD]), timeout=60)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and err.value.message.startswith("collection")
    assert collection not in [c.name for c in client.list_collections(timeout=60).collections]
