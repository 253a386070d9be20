"""The embedded store on its own (random unit vectors, no model): atomic writes, replacement,
deletion, filters, persistence, several processes on one folder, and the HNSW path."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from services.retriever.filters import ANY_OF, DATE_RANGE, EQUALS, NUMBER_RANGE, MetadataFilter, Range, as_timestamp
from services.retriever.stores.base import HYBRID, KEYWORD, VECTOR, ChunkRecord, DocumentRecord, StoreQuery
from services.retriever.stores.embedded import DB_NAME, SNAPSHOT_NAME, EmbeddedStore, fts_query
from services.retriever.stores.vector_index import FLAT, HNSW, IndexParams, VectorIndex
from shared.errors import FailedPrecondition, NotFound

DIM = 16
MODEL = "test-model"


def unit(rng, n=1):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def doc(rng, doc_id, texts, metadata=None, vectors=None):
    vecs = unit(rng, len(texts)) if vectors is None else vectors
    chunks = [
        ChunkRecord(f"{doc_id}#{i}", i, t, i * 100, i * 100 + len(t), "", 0, vecs[i]) for i, t in enumerate(texts)
    ]
    return DocumentRecord(doc_id, "text/plain", f"/src/{doc_id}.txt", metadata or {}, chunks)


def query(vector, mode=VECTOR, text="", limit=10, filters=(), alpha=0.5):
    return StoreQuery(text=text, vector=vector, mode=mode, alpha=alpha, limit=limit, filters=list(filters))


@pytest.fixture
def store(tmp_path):
    s = EmbeddedStore(tmp_path)
    s.warm_up()
    yield s
    s.close()


def chunk_rows(path, collection):
    with sqlite3.connect(path / "collections" / collection / DB_NAME) as conn:
        return conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0], conn.execute(
            "SELECT COUNT(*) FROM chunks_fts"
        ).fetchone()[0]


def test_write_search_and_exact_scores(store):
    rng = np.random.default_rng(0)
    d = doc(rng, "a", ["alpha text", "beta text", "gamma text"])
    results = store.write("c1", [d], MODEL, DIM)
    assert [(r.document_id, r.chunks, r.replaced_chunks) for r in results] == [("a", 3, 0)]
    hits = store.search("c1", query(d.chunks[1].vector))
    assert hits[0].chunk_id == "a#1" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].text == "beta text" and hits[0].source == "/src/a.txt"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        expected = float(np.dot(d.chunks[h.index].vector, d.chunks[1].vector))
        assert h.vector_score == pytest.approx(expected, abs=1e-5)


def test_reingest_replaces_chunks_without_duplicates(store, tmp_path):
    rng = np.random.default_rng(1)
    store.write("c1", [doc(rng, "a", ["one", "two", "three"]), doc(rng, "b", ["other"])], MODEL, DIM)
    new = doc(rng, "a", ["uno", "dos"], {"v": "2"})
    (res,) = store.write("c1", [new], MODEL, DIM)
    assert (res.chunks, res.replaced_chunks) == (2, 3)
    assert chunk_rows(tmp_path, "c1") == (3, 3)
    hits = store.search("c1", query(new.chunks[0].vector, limit=50))
    assert sorted(h.chunk_id for h in hits) == ["a#0", "a#1", "b#0"]
    assert {h.text for h in hits if h.document_id == "a"} == {"uno", "dos"}
    assert all(h.metadata == {"v": "2"} for h in hits if h.document_id == "a")
    kw = store.search("c1", query(None, KEYWORD, "three"))
    assert kw == []  # the old chunk's words left the keyword index too
    (stats,) = store.list_collections()
    assert (stats.document_count, stats.chunk_count) == (2, 3)


def test_failed_batch_writes_nothing(store, tmp_path):
    rng = np.random.default_rng(2)
    store.write("c1", [doc(rng, "a", ["keep me"])], MODEL, DIM)
    good = doc(rng, "b", ["fine"])
    bad = doc(rng, "c", ["broken"])
    bad.chunks[0].vector = "not a vector"  # fails inside the transaction, after b was inserted
    with pytest.raises(Exception):  # noqa: B017 - any failure; what matters is what is left
        store.write("c1", [good, bad], MODEL, DIM)
    assert chunk_rows(tmp_path, "c1") == (1, 1)
    assert [h.document_id for h in store.search("c1", query(unit(rng)[0], limit=10))] == ["a"]


def test_model_mismatch_is_refused(store):
    rng = np.random.default_rng(3)
    store.write("c1", [doc(rng, "a", ["x"])], MODEL, DIM)
    with pytest.raises(FailedPrecondition, match="test-model"):
        store.write("c1", [doc(rng, "b", ["y"])], "another-model", DIM)
    assert store.describe("c1") == (MODEL, DIM)


def test_delete_documents_and_collection(store, tmp_path):
    rng = np.random.default_rng(4)
    store.write("c1", [doc(rng, "a", ["one", "two"]), doc(rng, "b", ["three"])], MODEL, DIM)
    assert store.delete_documents("c1", ["a", "zzz"]) == (["a"], 2)
    assert chunk_rows(tmp_path, "c1") == (1, 1)
    assert [h.document_id for h in store.search("c1", query(unit(rng)[0]))] == ["b"]
    stats = store.delete_collection("c1")
    assert (stats.document_count, stats.chunk_count) == (1, 1)
    assert not (tmp_path / "collections" / "c1").exists()
    assert store.describe("c1") is None
    for call in (lambda: store.search("c1", query(unit(rng)[0])), lambda: store.delete_documents("c1", ["b"]),
                 lambda: store.delete_collection("c1")):
        with pytest.raises(NotFound, match="c1"):
            call()


def test_keyword_bm25_and_fts_query_quoting(store):
    rng = np.random.default_rng(5)
    texts = ["the quick brown fox", "a lazy dog sleeps", "fox and dog are friends", "weather report for monday"]
    store.write("kw", [doc(rng, f"d{i}", [t]) for i, t in enumerate(texts)], MODEL, DIM)
    hits = store.search("kw", query(None, KEYWORD, 'fox" OR NOT (dog'))  # FTS syntax is inert
    assert {h.document_id for h in hits} == {"d0", "d1", "d2"}
    assert hits[0].document_id == "d2"  # both terms
    assert all(h.keyword_score > 0 and h.vector_score is None for h in hits)
    assert fts_query("  ?!  ") is None
    assert store.search("kw", query(None, KEYWORD, "?!")) == []
    assert [h.document_id for h in store.search("kw", query(None, KEYWORD, "sleeping"))] == ["d1"]  # porter stem


def test_hybrid_reports_both_scores_and_alpha_extremes_match_the_single_modes(store):
    rng = np.random.default_rng(6)
    texts = ["apples and pears", "apples", "car engines", "apples apples pears", "bread"]
    docs = [doc(rng, f"d{i}", [t]) for i, t in enumerate(texts)]
    store.write("hy", docs, MODEL, DIM)
    qv = docs[2].chunks[0].vector
    hybrid = store.search("hy", query(qv, HYBRID, "apples", limit=5, alpha=0.5))
    assert all(h.vector_score is not None and h.keyword_score is not None for h in hybrid)
    assert all(0.0 <= h.score <= 1.0 for h in hybrid)
    for h in hybrid:
        assert h.vector_score == pytest.approx(float(qv @ docs[int(h.document_id[1:])].chunks[0].vector), abs=1e-5)
    vec_order = [h.chunk_id for h in store.search("hy", query(qv, VECTOR, limit=5))]
    assert [h.chunk_id for h in store.search("hy", query(qv, HYBRID, "apples", limit=5, alpha=1.0))] == vec_order
    kw_order = [h.chunk_id for h in store.search("hy", query(qv, KEYWORD, "apples", limit=5))]
    assert [h.chunk_id for h in store.search("hy", query(qv, HYBRID, "apples", limit=3, alpha=0.0))] == kw_order[:3]


def test_filters_equality_membership_number_and_date_ranges(store):
    rng = np.random.default_rng(7)
    meta = [
        {"lang": "en", "year": "2019", "date": "2019-06-01"},
        {"lang": "de", "year": "2021", "date": "2021-01-15T10:00:00Z"},
        {"lang": "fr", "year": "2023.5", "date": "2023-07-01"},
        {"lang": "en", "year": "n/a", "date": "someday"},
    ]
    store.write("f", [doc(rng, f"d{i}", [f"text {i}"], m) for i, m in enumerate(meta)], MODEL, DIM)
    qv = unit(rng)[0]

    def ids(*filters, mode=VECTOR):
        return sorted(h.document_id for h in store.search("f", query(qv, mode, "text", 10, filters)))

    assert ids(MetadataFilter("lang", EQUALS, ("en",))) == ["d0", "d3"]
    assert ids(MetadataFilter("lang", ANY_OF, ("de", "fr")), mode=KEYWORD) == ["d1", "d2"]
    assert ids(MetadataFilter("year", NUMBER_RANGE, range=Range(2020, True, None))) == ["d1", "d2"]
    assert ids(MetadataFilter("year", NUMBER_RANGE, range=Range(None, True, 2021, False))) == ["d0"]
    since = as_timestamp("2021-01-15T10:00:00Z")
    assert ids(MetadataFilter("date", DATE_RANGE, range=Range(since, True, None)), mode=HYBRID) == ["d1", "d2"]
    assert ids(MetadataFilter("date", DATE_RANGE, range=Range(since, False, None))) == ["d2"]
    assert ids(MetadataFilter("lang", EQUALS, ("en",)), MetadataFilter("year", NUMBER_RANGE, range=Range(2000))) == [
        "d0"
    ]
    assert ids(MetadataFilter("missing", EQUALS, ("x",))) == []
    # the SQL agrees with the reference predicate
    for f in (MetadataFilter("year", NUMBER_RANGE, range=Range(2020, True, None)),
              MetadataFilter("lang", ANY_OF, ("en", "fr"))):
        assert ids(f) == sorted(f"d{i}" for i, m in enumerate(meta) if f.matches(m))


def test_data_survives_a_restart(tmp_path):
    rng = np.random.default_rng(8)
    d = doc(rng, "a", ["persisted chunk"], {"k": "v"})
    first = EmbeddedStore(tmp_path)
    first.write("p", [d], MODEL, DIM)
    first.close()
    second = EmbeddedStore(tmp_path)
    (hit,) = second.search("p", query(d.chunks[0].vector))
    assert (hit.chunk_id, hit.text, hit.metadata) == ("a#0", "persisted chunk", {"k": "v"})
    assert [c.name for c in second.list_collections()] == ["p"]
    second.close()


def test_two_processes_sharing_a_folder_see_each_others_writes(tmp_path):
    # Two store objects with their own connections and indexes behave like two processes.
    rng = np.random.default_rng(9)
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    d1 = doc(rng, "one", ["first"])
    a.write("s", [d1], MODEL, DIM)
    assert [h.document_id for h in b.search("s", query(d1.chunks[0].vector))] == ["one"]  # b builds its index
    d2 = doc(rng, "two", ["second"])
    a.write("s", [d2], MODEL, DIM)
    a.delete_documents("s", ["one"])
    assert [h.document_id for h in b.search("s", query(d2.chunks[0].vector))] == ["two"]
    b.write("s", [doc(rng, "three", ["third"])], MODEL, DIM)
    assert sorted(h.document_id for h in a.search("s", query(d2.chunks[0].vector))) == ["three", "two"]
    a.delete_collection("s")
    with pytest.raises(NotFound):
        b.search("s", query(d2.chunks[0].vector))
    a.close()
    b.close()


def test_large_collections_switch_to_hnsw_with_a_snapshot_and_stay_correct(tmp_path):
    rng = np.random.default_rng(10)
    params = IndexParams(hnsw_threshold=300, hnsw_m=16, ef_construction=64, ef_search=128, exact_filter_limit=50)
    store = EmbeddedStore(tmp_path, params, snapshot_every=100)
    vecs = unit(rng, 400)
    docs = [doc(rng, f"d{i}", [f"chunk {i}"], {"group": str(i % 4)}, vecs[i : i + 1]) for i in range(400)]
    store.write("big", docs[:200], MODEL, DIM)
    assert store._collections["big"].index is None or store._collections["big"].index.kind == FLAT
    store.search("big", query(vecs[0]))
    store.write("big", docs[200:], MODEL, DIM)
    coll = store._collections["big"]
    assert coll.index.kind == HNSW
    assert (tmp_path / "collections" / "big" / SNAPSHOT_NAME).exists()
    # recall of the graph against exact search
    exact = vecs @ vecs[:50].T
    recall = []
    for qi in range(50):
        truth = {f"d{i}" for i in np.argsort(-exact[:, qi])[:10]}
        got = {h.document_id for h in store.search("big", query(vecs[qi], limit=10))}
        recall.append(len(truth & got) / 10)
    assert np.mean(recall) >= 0.95
    # deletions become tombstones and never come back
    store.delete_documents("big", ["d0", "d1"])
    assert all(h.document_id not in ("d0", "d1") for h in store.search("big", query(vecs[0], limit=20)))
    # a selective filter is searched exactly
    f = MetadataFilter("group", EQUALS, ("3",))
    hits = store.search("big", query(vecs[3], limit=5, filters=[f]))
    assert hits[0].document_id == "d3" and all(int(h.document_id[1:]) % 4 == 3 for h in hits)
    store.close()
    # a restart loads the snapshot and reconciles it with the database
    again = EmbeddedStore(tmp_path, params, snapshot_every=100)
    hits = again.search("big", query(vecs[5], limit=3))
    assert hits[0].document_id == "d5"
    assert again._collections["big"].index.kind == HNSW
    assert all(h.document_id not in ("d0", "d1") for h in again.search("big", query(vecs[0], limit=20)))
    again.close()


def test_vector_index_flat_and_hnsw_agree_on_exact_subsets():
    rng = np.random.default_rng(11)
    vecs = unit(rng, 200)
    ids = np.arange(1000, 1200, dtype=np.int64)
    params = IndexParams(hnsw_threshold=100, hnsw_m=16, exact_filter_limit=500)
    flat = VectorIndex(DIM, params, FLAT)
    flat.add(ids, vecs)
    graph = VectorIndex.build(DIM, params, ids, vecs)
    assert graph.kind == HNSW
    allowed = ids[::7]
    f_ids, f_scores = flat.search(vecs[3], 5, allowed)
    g_ids, g_scores = graph.search(vecs[3], 5, allowed)
    assert list(f_ids) == list(g_ids)
    assert np.allclose(f_scores, g_scores, atol=1e-5)
    graph.remove(np.array([f_ids[0]]))
    assert f_ids[0] not in graph.search(vecs[3], 5, None)[0]
    assert len(graph) == 199 and graph.needs_rebuild() is None
    assert np.allclose(graph.vectors(ids[:2]), vecs[:2])


def test_cached_filter_results_follow_writes_from_any_process(tmp_path):
    rng = np.random.default_rng(12)
    a, b = EmbeddedStore(tmp_path), EmbeddedStore(tmp_path)
    f = [MetadataFilter("team", EQUALS, ("red",))]
    a.write("fc", [doc(rng, "r1", ["one"], {"team": "red"}), doc(rng, "b1", ["two"], {"team": "blue"})], MODEL, DIM)
    qv = unit(rng)[0]
    assert [h.document_id for h in a.search("fc", query(qv, filters=f))] == ["r1"]
    a.write("fc", [doc(rng, "r2", ["three"], {"team": "red"})], MODEL, DIM)  # same process
    assert sorted(h.document_id for h in a.search("fc", query(qv, filters=f))) == ["r1", "r2"]
    b.write("fc", [doc(rng, "r3", ["four"], {"team": "red"})], MODEL, DIM)  # another process
    b.delete_documents("fc", ["r1"])
    assert sorted(h.document_id for h in a.search("fc", query(qv, filters=f, mode=HYBRID, text="four"))) == ["r2", "r3"]
    a.close()
    b.close()
