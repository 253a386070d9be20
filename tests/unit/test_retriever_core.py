"""The retriever core with the real embedding model and the embedded store in a temporary folder."""

from __future__ import annotations

import math

import pytest

from services.retriever.core import DocumentInput, FilterInput, RetrieverCore, SearchInput
from services.retriever.settings import RetrieverSettings
from shared.errors import FailedPrecondition, InvalidArgument, NotFound
from tests.unit.test_retriever_parsing import make_pdf

MD = """# Sourdough guide

## Starter

Feed the starter with flour and water every day until it doubles in size.

## Baking

Bake the loaf in a covered dutch oven at 250 degrees for twenty minutes, then uncover it.
"""
HTML = (
    "<html><body><h1>Volcanoes</h1><p>Magma rises through the crust and erupts as lava &amp; ash.</p>"
    "<h2>Safety</h2><p>Stay outside the exclusion zone during an eruption.</p></body></html>"
)
TXT = "Tidal pools host anemones, crabs and starfish that survive the falling tide."


def corpus():
    return [
        DocumentInput("bread", text=MD, content_type="text/markdown", metadata={"topic": "food", "year": "2021"},
                      source="/docs/bread.md"),
        DocumentInput("volcano", text=HTML, content_type="text/html", metadata={"topic": "geology", "year": "2019"}),
        DocumentInput("sea", text=TXT, metadata={"topic": "biology", "year": "2023", "date": "2023-04-02"}),
        DocumentInput("planets", data=make_pdf([["Jupiter is the largest planet."], ["Saturn has bright rings."]]),
                      content_type="application/pdf", metadata={"topic": "astronomy", "year": "2020"}),
    ]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    r = RetrieverCore(RetrieverSettings(data_dir=tmp_path_factory.mktemp("retriever-core")))
    r.warm_up()
    r.ingest("docs", corpus())
    yield r
    r.close()


def counts(r: RetrieverCore, collection: str) -> tuple[int, int] | None:
    for c in r.list_collections():
        if c.name == collection:
            return c.document_count, c.chunk_count
    return None


def top(r, query, **kw):
    kw.setdefault("top_k", 3)
    return r.search(SearchInput("docs", query, **kw)).hits


# -- ingest and search ---------------------------------------------------------------------------------


def test_each_content_type_is_found_with_offsets_into_its_source(retriever):
    bake = top(retriever, "how hot should the oven be for bread?", mode="vector")[0]
    assert bake.document_id == "bread" and bake.section == "Sourdough guide > Baking"
    assert MD[bake.start : bake.end] == bake.text
    assert bake.source == "/docs/bread.md" and bake.content_type == "text/markdown"
    assert bake.metadata == {"topic": "food", "year": "2021"}

    lava = top(retriever, "lava and ash eruption", mode="keyword")[0]
    assert lava.document_id == "volcano" and "lava & ash" in lava.text
    assert "lava &amp; ash" in HTML[lava.start : lava.end]

    rings = top(retriever, "which planet has rings?", mode="hybrid")[0]
    assert rings.document_id == "planets" and rings.page == 2 and "Saturn" in rings.text

    sea = top(retriever, "starfish", mode="keyword")[0]
    assert sea.chunk_id == "sea#0" and sea.text == TXT and (sea.start, sea.end) == (0, len(TXT))


def test_scores_per_mode(retriever):
    vec = top(retriever, "volcanic eruption", mode="vector")
    assert all(h.vector_score == h.score and h.keyword_score is None and -1 <= h.score <= 1 for h in vec)
    kw = top(retriever, "volcanic eruption", mode="keyword")
    assert all(h.keyword_score == h.score and h.vector_score is None and h.score > 0 for h in kw)
    hy = top(retriever, "volcanic eruption", mode="hybrid", alpha=0.3)
    for h in hy:
        assert 0 <= h.score <= 1 and h.vector_score is not None and h.keyword_score is not None
    assert hy[0].document_id == "volcano"
    assert retriever.search(SearchInput("docs", "x", mode="hybrid")).alpha == retriever.settings.default_alpha


def test_alpha_one_is_vector_order_and_alpha_zero_keyword_order(retriever):
    q = "flour water starter"
    vec = [h.chunk_id for h in top(retriever, q, mode="vector", top_k=5)]
    assert [h.chunk_id for h in top(retriever, q, mode="hybrid", alpha=1.0, top_k=5)] == vec
    kw = [h.chunk_id for h in top(retriever, q, mode="keyword", top_k=5)]
    assert [h.chunk_id for h in top(retriever, q, mode="hybrid", alpha=0.0, top_k=len(kw))] == kw


def test_filters_restrict_hits(retriever):
    def docs(*filters, mode="vector"):
        return {h.document_id for h in top(retriever, "nature and science", top_k=10, mode=mode, filters=list(filters))}

    assert docs(FilterInput("topic", "equals", equals="geology")) == {"volcano"}
    assert docs(FilterInput("topic", "any_of", any_of=["food", "biology"]), mode="hybrid") == {"bread", "sea"}
    assert docs(FilterInput("year", "number_range", bounds=(2020, None, None, None))) == {"bread", "sea", "planets"}
    assert docs(FilterInput("year", "number_range", bounds=(None, 2020, 2023, None))) == {"bread", "sea"}
    assert docs(FilterInput("date", "date_range", bounds=("2023-01-01", None, "2023-12-31", None))) == {"sea"}
    assert docs(FilterInput("date", "date_range", bounds=(None, None, None, "2023-04-02T00:00:00+00:00"))) == set()


def test_min_score_drops_weak_hits(retriever):
    everything = top(retriever, "saturn rings", mode="vector", top_k=10)
    threshold = (everything[0].score + everything[-1].score) / 2
    kept = top(retriever, "saturn rings", mode="vector", top_k=10, min_score=threshold)
    assert 0 < len(kept) < len(everything)
    assert all(h.score >= threshold for h in kept)


def test_mmr_trades_relevance_for_diversity(tmp_path):
    r = RetrieverCore(RetrieverSettings(data_dir=tmp_path))
    dup = "Espresso is brewed by forcing hot water through finely ground coffee."
    r.ingest("coffee", [
        DocumentInput("e1", text=dup),
        DocumentInput("e2", text=dup + " It is strong."),
        DocumentInput("e3", text="Espresso is brewed by forcing hot water through finely-ground coffee beans."),
        DocumentInput("tea", text="Green tea is steeped in water that is not quite boiling."),
    ])
    plain = r.search(SearchInput("coffee", "how is espresso brewed with water", top_k=2, mode="vector")).hits
    assert {h.document_id for h in plain} <= {"e1", "e2", "e3"}
    diverse = r.search(SearchInput("coffee", "how is espresso brewed with water", top_k=2, mode="vector", mmr=True,
                                   mmr_lambda=0.3)).hits
    assert diverse[0].document_id == plain[0].document_id
    assert diverse[1].document_id == "tea"
    r.close()


def test_reingest_replaces_and_delete_removes(tmp_path):
    r = RetrieverCore(RetrieverSettings(data_dir=tmp_path))
    long_text = "\n\n".join(f"Paragraph {i} talks about topic {i} at some length." for i in range(30))
    first = r.ingest("re", [DocumentInput("d", text=long_text), DocumentInput("keep", text="Other document.")],
                     chunk_size=32, chunk_overlap=0)
    n = first.documents[0].chunks
    assert n > 3 and first.documents[0].replaced_chunks == 0
    second = r.ingest("re", [DocumentInput("d", text="A much shorter replacement.")])
    assert (second.documents[0].chunks, second.documents[0].replaced_chunks) == (1, n)
    assert counts(r, "re") == (2, 2)
    hits = r.search(SearchInput("re", "paragraph topic", top_k=10, mode="keyword")).hits
    assert all(h.document_id != "d" or h.text == "A much shorter replacement." for h in hits)
    assert r.delete_documents("re", ["d", "ghost"]) == (["d"], ["ghost"], 1)
    assert counts(r, "re") == (1, 1)
    assert r.delete_collection("re").chunk_count == 1
    assert counts(r, "re") is None
    r.close()


def test_collection_survives_a_restart(tmp_path):
    settings = RetrieverSettings(data_dir=tmp_path)
    first = RetrieverCore(settings)
    first.ingest("keep", [DocumentInput("a", text="Persistent facts about lighthouses and their keepers.")])
    first.close()
    second = RetrieverCore(settings)
    (hit,) = second.search(SearchInput("keep", "lighthouse keeper", top_k=1)).hits
    assert hit.document_id == "a"
    assert counts(second, "keep") == (1, 1)
    second.close()


def test_a_different_embedding_model_is_refused(tmp_path, retriever):
    r = RetrieverCore(RetrieverSettings(data_dir=tmp_path))
    r.ingest("m", [DocumentInput("a", text="hello")])
    r.store.write("m", [], "all-minilm-l6-v2", r.dimension)  # same model: fine
    with pytest.raises(FailedPrecondition, match="other-model"):
        r.store.write("m", [], "other-model", r.dimension)
    r.close()


# -- bad input: the error names the field, and nothing is written --------------------------------------


def bad_search(retriever, field, **kw):
    kw.setdefault("collection", "docs")
    kw.setdefault("query", "bread")
    before = counts(retriever, "docs")
    with pytest.raises(InvalidArgument) as err:
        retriever.search(SearchInput(**kw))
    assert err.value.message.startswith(field), err.value.message
    assert counts(retriever, "docs") == before
    return err.value.message


@pytest.mark.parametrize("query", ["", "   \n"])
def test_empty_query(retriever, query):
    assert "must not be empty" in bad_search(retriever, "query", query=query)


def test_overlong_query(retriever):
    assert "at most" in bad_search(retriever, "query", query="x" * (retriever.settings.max_query_chars + 1))


@pytest.mark.parametrize("top_k", [0, -3, 101])
def test_top_k_out_of_range(retriever, top_k):
    assert "between 1 and 100" in bad_search(retriever, "top_k", top_k=top_k)


@pytest.mark.parametrize("name", ["", "Docs", "has space", "1abc", "a-b", "x" * 64, "../etc"])
def test_invalid_collection_names(retriever, name, tmp_path):
    msg = bad_search(retriever, "collection", collection=name)
    assert "lowercase letters" in msg
    with pytest.raises(InvalidArgument, match="^collection"):
        retriever.ingest(name, [DocumentInput("a", text="x")])
    with pytest.raises(InvalidArgument, match="^collection"):
        retriever.delete_documents(name, ["a"])
    assert all(c.name == "docs" for c in retriever.list_collections())


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, math.inf])
def test_alpha_outside_unit_interval(retriever, alpha):
    assert "between 0 and 1" in bad_search(retriever, "alpha", alpha=alpha, mode="hybrid")


@pytest.mark.parametrize(
    "filters, field, words",
    [
        ([FilterInput("topic", None)], "filters[0]", "exactly one condition"),
        ([FilterInput("bad key", "equals", equals="x")], "filters[0].key", "A-Za-z0-9_"),
        ([FilterInput("", "equals", equals="x")], "filters[0].key", "A-Za-z0-9_"),
        ([FilterInput("t", "equals", equals="x"), FilterInput("t", "any_of", any_of=[])], "filters[1].any_of", "1 to"),
        ([FilterInput("t", "any_of", any_of=["v"] * 101)], "filters[0].any_of", "1 to 100"),
        ([FilterInput("year", "number_range", bounds=(None, None, None, None))], "filters[0].number_range", "bound"),
        ([FilterInput("year", "number_range", bounds=(1, 2, None, None))], "filters[0].number_range", "lower"),
        ([FilterInput("year", "number_range", bounds=(None, None, 1, 2))], "filters[0].number_range", "upper"),
        ([FilterInput("year", "number_range", bounds=(5, None, 1, None))], "filters[0].number_range", "above"),
        ([FilterInput("year", "number_range", bounds=(math.nan, None, None, None))], "filters[0].number_range",
         "finite"),
        ([FilterInput("d", "date_range", bounds=("yesterday", None, None, None))], "filters[0].date_range.gte",
         "ISO-8601"),
        ([FilterInput("d", "date_range", bounds=(None, None, None, "2024-13-45"))], "filters[0].date_range.lt",
         "ISO-8601"),
        ([FilterInput("d", "date_range", bounds=("2024-05-01", None, "2024-01-01", None))], "filters[0].date_range",
         "above"),
        ([FilterInput("t", "equals", equals="x")] * 17, "filters", "at most 16"),
    ],
)
def test_malformed_filters(retriever, filters, field, words):
    assert words in bad_search(retriever, field, filters=filters)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"mmr": True, "mmr_lambda": 1.2}, "mmr.lambda_mult"),
        ({"mmr": True, "mmr_fetch_k": 2, "top_k": 5}, "mmr.fetch_k"),
        ({"mmr": True, "mmr_fetch_k": 10_000}, "mmr.fetch_k"),
        ({"min_score": math.nan}, "min_score"),
        ({"mode": "semantic"}, "mode"),
    ],
)
def test_other_bad_search_options(retriever, kw, field):
    bad_search(retriever, field, **kw)


def test_search_on_unknown_collection_is_not_found(retriever):
    with pytest.raises(NotFound, match="nope"):
        retriever.search(SearchInput("nope", "bread"))
    with pytest.raises(NotFound, match="nope"):
        retriever.delete_documents("nope", ["a"])
    with pytest.raises(NotFound, match="nope"):
        retriever.delete_collection("nope")
    assert "nope" not in [c.name for c in retriever.list_collections()]


GOOD = DocumentInput("good", text="A perfectly fine document about gardening.")


@pytest.mark.parametrize(
    "bad, field, words",
    [
        (DocumentInput("x", text="data", content_type="image/png"), "documents[1].content_type", "text/plain"),
        (DocumentInput("x", text="data", content_type="application/msword"), "documents[1].content_type", "pdf"),
        (DocumentInput("x", text="y" * 5000), "documents[1].text", "limit is 4096 bytes"),
        (DocumentInput("x", data=b"z" * 5000, content_type="application/pdf"), "documents[1].data", "limit"),
        (DocumentInput("x", data=b"%PDF-1.4 broken", content_type="application/pdf"), "documents[1].data", "PDF"),
        (DocumentInput("x", text="pdf as text", content_type="application/pdf"), "documents[1].text", "bytes"),
        (DocumentInput("x", data=b"\xff\xfe\xfd"), "documents[1].data", "utf-8"),
        (DocumentInput("x"), "documents[1].text", "set text or data"),
        (DocumentInput("x", text="   \n\n  "), "documents[1].text", "no text"),
        (DocumentInput("", text="no id"), "documents[1].id", "1-256"),
        (DocumentInput("a\nb", text="control char"), "documents[1].id", "control"),
        (DocumentInput("good", text="duplicate id"), "documents[1].id", "documents[0]"),
        (DocumentInput("x", text="t", metadata={"bad-key": "v"}), "documents[1].metadata['bad-key']", "A-Za-z0-9_"),
        (DocumentInput("x", text="t", metadata={"k": "v" * 1025}), "documents[1].metadata['k']", "1024"),
    ],
)
def test_a_bad_document_fails_the_whole_batch_and_is_named(tmp_path, bad, field, words):
    r = RetrieverCore(RetrieverSettings(data_dir=tmp_path, max_document_bytes=4096))
    r.ingest("batch", [DocumentInput("existing", text="Already stored before the bad batch.")])
    tail = DocumentInput("later", text="Would be fine on its own.")
    with pytest.raises(InvalidArgument) as err:
        r.ingest("batch", [GOOD, bad, tail])
    msg = err.value.message
    assert msg.startswith(field), msg
    assert words in msg
    assert "nothing from this batch was written" in msg
    assert counts(r, "batch") == (1, 1)
    assert {h.document_id for h in r.search(SearchInput("batch", "gardening fine", top_k=5)).hits} == {"existing"}
    # a first ingest that fails creates nothing either
    with pytest.raises(InvalidArgument):
        r.ingest("fresh", [GOOD, bad])
    assert counts(r, "fresh") in (None, (0, 0))
    r.close()


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"documents": []}, "documents"),
        ({"documents": [GOOD] * 300}, "documents"),
        ({"chunk_size": 8}, "chunking.chunk_size_tokens"),
        ({"chunk_size": 1000}, "chunking.chunk_size_tokens"),
        ({"chunk_size": 64, "chunk_overlap": 40}, "chunking.chunk_overlap_tokens"),
        ({"chunk_overlap": -1}, "chunking.chunk_overlap_tokens"),
    ],
)
def test_bad_batch_options(tmp_path, kw, field):
    r = RetrieverCore(RetrieverSettings(data_dir=tmp_path))
    kw.setdefault("documents", [GOOD])
    with pytest.raises(InvalidArgument) as err:
        r.ingest("opts", **kw)
    assert err.value.message.startswith(field), err.value.message
    assert counts(r, "opts") is None
    r.close()


def test_delete_needs_ids(retriever):
    with pytest.raises(InvalidArgument, match="^document_ids"):
        retriever.delete_documents("docs", [])


def test_any_sentence_transformers_model_works_by_config(tmp_path):
    """GENSTACK_EMBEDDING_MODEL may name any sentence-transformers folder: here a tiny random BERT
    built from a config (mechanics only), sharing MiniLM's tokenizer."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from shared.embeddings import Embedder, EmbeddingSettings, get_embedder

    bundled = get_embedder().source
    tokenizer = AutoTokenizer.from_pretrained(bundled)
    folder = tmp_path / "tiny-model"
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    word = models.Transformer(str(folder / "hf"), max_seq_length=128)
    SentenceTransformer(modules=[word, models.Pooling(32), models.Normalize()]).save(str(folder / "st"))

    embedder = Embedder(EmbeddingSettings(model=str(folder / "st")))
    r = RetrieverCore(RetrieverSettings(data_dir=tmp_path / "data", chunk_size_tokens=64), embedder=embedder)
    result = r.ingest("tiny", [DocumentInput("a", text="Alpha beta gamma. " * 30), DocumentInput("b", text="Delta.")])
    assert result.chunks_written >= 3  # chunks sized by the configured model's limit (128 - 2 tokens)
    (info,) = r.list_collections()
    assert (info.embedding_model, info.dimension) == (str(folder / "st"), 32)
    assert r.search(SearchInput("tiny", "delta", top_k=1, mode="keyword")).hits[0].document_id == "b"
    with pytest.raises(InvalidArgument, match="between 16 and 126"):
        r.ingest("tiny", [DocumentInput("c", text="x")], chunk_size=200)
    r.close()
    # the default model refuses a collection built with another one
    other = RetrieverCore(RetrieverSettings(data_dir=tmp_path / "data"))
    with pytest.raises(FailedPrecondition, match="tiny-model"):
        other.search(SearchInput("tiny", "delta"))
    other.close()
