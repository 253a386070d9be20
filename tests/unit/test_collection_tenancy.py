"""Every collection belongs to the principal that made it (issue 21): over a real gRPC retriever with
authentication on, two principals each ingest a collection called `docs` and see, search, list and
delete only their own; another tenant's collection reads like a missing one; an admin sees all."""

from __future__ import annotations

import json

import grpc
import pytest

from genstack.retriever.v1 import retriever_pb2 as pb
from genstack.retriever.v1 import retriever_pb2_grpc as pb_grpc
from services.retriever.core import RetrieverCore
from services.retriever.grpc_api import RetrieverApi
from services.retriever.settings import RetrieverSettings
from shared import auth
from shared.grpc_server import Server

TOKENS = {"alice": ("tok-a", ["retriever"]), "bob": ("tok-b", ["retriever"]), "ops": ("tok-ops", ["admin"])}


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tenancy")
    tokens = folder / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"token": t, "principal": p, "scopes": s}
                                             for p, (t, s) in TOKENS.items()]}))
    mp = pytest.MonkeyPatch()
    mp.setenv("GENSTACK_AUTH_TOKENS_FILE", str(tokens))
    auth.get_auth_settings.cache_clear()
    server = Server(RetrieverApi(RetrieverCore(RetrieverSettings(data_dir=folder / "data"))), 0,
                    host="127.0.0.1").start(warm_up_in_background=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.RetrieverServiceStub(channel)
    channel.close()
    server.stop(grace=0)
    mp.undo()
    auth.get_auth_settings.cache_clear()


def md(who: str):
    return (("authorization", f"Bearer {TOKENS[who][0]}"),)


def ingest(stub, who: str, collection: str, text: str):
    return stub.IngestDocuments(pb.IngestDocumentsRequest(collection=collection, documents=[
        pb.Document(id=f"{who}-doc", text=text)]), metadata=md(who), timeout=120)


def test_two_tenants_share_a_collection_name_and_see_only_their_own(retriever):
    assert ingest(retriever, "alice", "docs", "Alice's secret: the vault code is 4417.").collection == "docs"
    ingest(retriever, "bob", "docs", "Bob's note: the garden gate is green.")

    def search(who):
        hits = retriever.Search(pb.SearchRequest(collection="docs", query="vault code", top_k=5),
                                metadata=md(who), timeout=60).hits
        return " ".join(h.text for h in hits)

    assert "4417" in search("alice") and "garden" not in search("alice")
    assert "4417" not in search("bob") and "garden" in search("bob")

    def names(who):
        return sorted(c.name for c in retriever.ListCollections(pb.ListCollectionsRequest(), metadata=md(who),
                                                                 timeout=30).collections)

    assert names("alice") == ["docs"] and names("bob") == ["docs"]
    # an admin sees both, under their stored names, and no tenant's collection under the plain name
    stored = names("ops")
    assert stored == sorted([auth.tenant_prefix("alice") + "docs", auth.tenant_prefix("bob") + "docs"])
    assert all(n.startswith("t_") for n in stored)


def test_another_tenants_collection_reads_like_a_missing_one(retriever):
    ingest(retriever, "alice", "private", "Only Alice may read this.")
    for call in (
        lambda: retriever.Search(pb.SearchRequest(collection="private", query="read"), metadata=md("bob"), timeout=30),
        lambda: retriever.DeleteCollection(pb.DeleteCollectionRequest(collection="private"), metadata=md("bob"),
                                           timeout=30),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # the caller's own name for it, never the stored one with a tenant prefix
        assert "'private'" in err.value.details() and "t_" not in err.value.details()
    # bob cannot reach it through its stored name either: that name lands in bob's own namespace
    with pytest.raises(grpc.RpcError) as err:
        retriever.Search(pb.SearchRequest(collection=auth.tenant_prefix("alice") + "private", query="read"),
                         metadata=md("bob"), timeout=30)
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    # still there for alice
    hits = retriever.Search(pb.SearchRequest(collection="private", query="read"), metadata=md("alice"), timeout=30)
    assert hits.hits


def test_deleting_ones_own_collection_leaves_the_other_tenants(retriever):
    ingest(retriever, "alice", "shared_name", "Alice's copy.")
    ingest(retriever, "bob", "shared_name", "Bob's copy.")
    retriever.DeleteCollection(pb.DeleteCollectionRequest(collection="shared_name"), metadata=md("bob"), timeout=30)
    hits = retriever.Search(pb.SearchRequest(collection="shared_name", query="copy"), metadata=md("alice"),
                            timeout=30).hits
    assert [h.text for h in hits] == ["Alice's copy."]


def test_a_name_too_long_for_the_tenant_prefix_is_invalid_argument_naming_the_room(retriever):
    with pytest.raises(grpc.RpcError) as err:
        ingest(retriever, "alice", "a" * 60, "x")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "collection" in err.value.details() and "at most" in err.value.details()


def test_stored_names_never_collide_between_principals():
    assert auth.tenant_prefix("al-ice") != auth.tenant_prefix("alice")  # same slug, different hash
    assert auth.tenant_prefix("Ünïcode") .startswith("t_") and auth.tenant_prefix("!!!").startswith("t_")
    for p in ("alice", "Bob Smith", "!!!", "x" * 200):
        assert auth.tenant_prefix(p).rstrip("_").replace("_", "").isalnum()


def test_a_job_step_in_process_acts_for_the_jobs_owner(tmp_path):
    """Embedded, the steps of alice's job reach the retriever in process: they see alice's
    collections as over gRPC, not every tenant's."""
    from shared.auth import Identity, acting_for_var, identity_var
    from shared.client import ServiceClient

    api = RetrieverApi(RetrieverCore(RetrieverSettings(data_dir=tmp_path)))
    client = ServiceClient("inproc", service="retriever", api=api)
    alice = Identity("alice", frozenset({"retriever"}))
    reset = identity_var.set(alice)
    try:  # alice ingests through her own (direct) call
        client.call("IngestDocuments", pb.IngestDocumentsRequest(collection="notes", documents=[
            pb.Document(id="n1", text="Alice's note about the harbour.")]), timeout=120)
    finally:
        identity_var.reset(reset)
    reset = acting_for_var.set("alice")
    try:  # a job of alice's, in the orchestrator's process
        hits = client.call("Search", pb.SearchRequest(collection="notes", query="harbour"), timeout=60).hits
        assert hits and "harbour" in hits[0].text
    finally:
        acting_for_var.reset(reset)
    reset = acting_for_var.set("bob")
    try:
        with pytest.raises(Exception) as err:
            client.call("Search", pb.SearchRequest(collection="notes", query="harbour"), timeout=60)
        assert getattr(err.value, "code", None) == grpc.StatusCode.NOT_FOUND
    finally:
        acting_for_var.reset(reset)
