"""Retriever benchmark: embedding runtimes, retrieval quality per mode, ingest throughput, and the
embedded backend at 100k chunks.

0. Embedding runtimes side by side (torch = sentence-transformers float32, the reference; onnx;
   onnx-int8): texts/s by wall clock and per CPU-second of this process (the machine is shared, so
   the CPU figure is the steadier one), the lowest and mean cosine of each vector to the reference,
   query-embedding latency, and recall@5 / MRR of vector and hybrid search with each.

1. Quality on bench/retriever_corpus.py (42 documents written for this, 50 labelled queries):
   document-level recall@5 and MRR (first relevant document within the top 20 chunks) for vector,
   keyword (BM25) and hybrid search at several alphas.
2. Ingest throughput of the real pipeline (parse + chunk, embed, write), per stage.
3. The embedded store at --chunks (default 100,000) precomputed vectors: write throughput,
   vector / keyword / hybrid search latency (p50, p99), recall@10 of the index against exact
   search, and the cost of a restart. The vectors are drawn from a Gaussian with the mean and
   covariance of real all-MiniLM-L6-v2 embeddings of Python standard-library docstrings (cached
   after the first run), so they have the model's anisotropy, though not its topical clusters.

    python bench/retriever.py [--chunks 100000] [--queries 300] [--no-write-results]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import statistics
import sys
import sysconfig
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

import shared  # noqa: E402,F401
from bench.retriever_corpus import DOCUMENTS, PARAPHRASES, QUERIES  # noqa: E402
from services.retriever.core import DocumentInput, RetrieverCore, SearchInput  # noqa: E402
from services.retriever.settings import RetrieverSettings  # noqa: E402
from services.retriever.stores.base import HYBRID, KEYWORD, VECTOR, ChunkRecord, DocumentRecord, StoreQuery  # noqa: E402
from services.retriever.stores.embedded import EmbeddedStore  # noqa: E402
from services.retriever.stores.vector_index import IndexParams  # noqa: E402
from shared.embeddings import Embedder, EmbeddingSettings, get_embedder  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Retriever"
ALPHAS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)  # must include the default (0.7)
CACHE = Path(os.environ.get("GENSTACK_HOME", Path.home() / ".cache" / "genstack")) / "bench"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells)])


# -- 1. quality --------------------------------------------------------------------------------------------


def quality(retriever: RetrieverCore, configs: list | None = None) -> tuple[str, dict]:
    docs = [DocumentInput(doc_id, text=text, content_type="text/markdown" if text.startswith("#") else "text/plain")
            for doc_id, text in DOCUMENTS.items()]
    retriever.ingest("quality", docs)
    if configs is None:
        configs = [("vector", VECTOR, None), ("keyword (BM25)", KEYWORD, None)]
        configs += [(f"hybrid alpha={a}", HYBRID, a) for a in ALPHAS]
    n_paraphrase = len(PARAPHRASES)
    rows, summary = [], {}
    for label, mode, alpha in configs:
        recall, rr, recall_para, recall_id = [], [], [], []
        for i, (query, relevant) in enumerate(QUERIES):
            hits = retriever.search(SearchInput("quality", query, top_k=20, mode=mode, alpha=alpha)).hits
            ranked = list(dict.fromkeys(h.document_id for h in hits))
            found = [d for d in ranked[:5] if d in relevant]
            recall.append(len(found) / len(relevant))
            first = next((r for r, d in enumerate(ranked, start=1) if d in relevant), None)
            rr.append(1.0 / first if first else 0.0)
            (recall_para if i < n_paraphrase else recall_id).append(recall[-1])
        summary[label] = (float(np.mean(recall)), float(np.mean(rr)))
        rows.append([label, f"{np.mean(recall):.3f}", f"{np.mean(rr):.3f}", f"{np.mean(recall_para):.3f}",
                     f"{np.mean(recall_id):.3f}"])
    text = table(["mode", "recall@5", "MRR", f"recall@5 paraphrase ({n_paraphrase})",
                  f"recall@5 identifiers ({len(QUERIES) - n_paraphrase})"], rows)
    return text, summary


# -- 0. embedding runtimes ---------------------------------------------------------------------------------


def embedding_texts(n_stdlib: int = 256) -> list[str]:
    """Paragraphs of the quality corpus and of stdlib docstrings: chunk-like texts of mixed length."""
    paragraphs = [p.strip() for text in DOCUMENTS.values() for p in text.split("\n\n") if p.strip()]
    return paragraphs + real_embeddings()[1][:n_stdlib]


def embedding_runtimes(runtimes=("torch", "onnx", "onnx-int8")) -> tuple[str, dict]:
    texts = embedding_texts()
    queries = [q for q, _ in QUERIES]
    reference = None
    rows, out = [], {}
    alpha = RetrieverSettings().default_alpha
    for runtime in runtimes:
        embedder = Embedder(EmbeddingSettings(runtime=runtime))
        embedder.encode(["warm up"])
        if embedder.runtime != runtime:
            rows.append([runtime, f"unavailable (fell back to {embedder.runtime})", "", "", "", "", "", ""])
            continue
        wall, cpu = time.perf_counter(), time.process_time()
        vectors = embedder.encode(texts)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if reference is None:
            reference = embedder.encode_reference(texts)
        cos = (vectors * reference).sum(1)
        latency = []
        for q in queries:
            t = time.perf_counter()
            embedder.encode([q])
            latency.append((time.perf_counter() - t) * 1e3)
        core = RetrieverCore(RetrieverSettings(data_dir=Path(tempfile.mkdtemp(prefix="genstack-bench-rt-"))),
                             embedder=embedder)
        core.warm_up()
        _, summary = quality(core, [("vector", VECTOR, None), ("hybrid", HYBRID, alpha)])
        core.close()
        out[runtime] = {"wall_tps": len(texts) / wall, "cpu_tps": len(texts) / cpu, "min_cos": float(cos.min()),
                        "mean_cos": float(cos.mean()), "query_ms": statistics.median(latency), **{
                            f"{k}_{m}": v[i] for k, v in summary.items() for i, m in enumerate(("recall", "mrr"))}}
        r = out[runtime]
        rows.append([runtime, f"{r['wall_tps']:.1f}", f"{r['cpu_tps']:.1f}", f"{r['min_cos']:.4f}",
                     f"{r['mean_cos']:.4f}", f"{r['query_ms']:.1f}",
                     f"{r['vector_recall']:.3f} / {r['vector_mrr']:.3f}",
                     f"{r['hybrid_recall']:.3f} / {r['hybrid_mrr']:.3f}"])
    text = table([f"runtime ({len(texts)} texts)", "texts/s (wall)", "texts/s per CPU-s", "min cosine",
                  "mean cosine", "query p50 ms", "vector recall@5 / MRR", f"hybrid a={alpha} recall@5 / MRR"],
                 rows)
    return text, out


# -- 2. ingest throughput ----------------------------------------------------------------------------------


def ingest_throughput(retriever: RetrieverCore, copies: int = 6) -> tuple[str, dict]:
    docs = [DocumentInput(f"{doc_id}-{c}", text=text, content_type="text/markdown" if text.startswith("#")
                          else "text/plain") for c in range(copies) for doc_id, text in DOCUMENTS.items()]
    marks: dict[str, float] = {}

    def progress(stage, done, total, documents, chunks):
        marks.setdefault(stage, time.perf_counter())

    start, cpu = time.perf_counter(), time.process_time()
    result = retriever.ingest("throughput", docs, chunk_size=64, chunk_overlap=8, progress=progress,
                              max_documents=len(docs))
    end, cpu = time.perf_counter(), time.process_time() - cpu
    chunks = result.chunks_written
    # the embedding stage as it was before (sentence-transformers, slices of 32 in chunk order, 64 per
    # forward pass), on the same texts, in the same run
    conn = retriever.store._collections["throughput"].conn
    texts = [f"{sec}\n{text}" if sec else text
             for sec, text in conn.execute("SELECT section, text FROM chunks ORDER BY id")]
    before = Embedder(EmbeddingSettings(runtime="torch", batch_size=64))
    before.encode(["warm up"])
    b_wall, b_cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), 32):
        before.encode(texts[i : i + 32])
    b_wall, b_cpu = time.perf_counter() - b_wall, time.process_time() - b_cpu
    parse = marks["embedding"] - start
    embed = marks["writing"] - marks["embedding"]
    write = end - marks["writing"]
    total = end - start
    rows = [
        ["parse + chunk", f"{parse:.2f}", f"{100 * parse / total:.0f}%", f"{chunks / parse:.0f}"],
        ["embed (all-MiniLM-L6-v2, CPU)", f"{embed:.2f}", f"{100 * embed / total:.0f}%", f"{chunks / embed:.0f}"],
        ["write (SQLite + FTS5 + faiss)", f"{write:.2f}", f"{100 * write / total:.0f}%", f"{chunks / write:.0f}"],
        ["total", f"{total:.2f}", "100%", f"{chunks / total:.0f}"],
        [f"before: embed as the previous code did (torch, unsorted slices), {b_cpu:.1f} CPU-s",
         f"{b_wall:.2f}", "", f"{len(texts) / b_wall:.0f}"],
    ]
    runtime = retriever.embedder.runtime
    return table([f"stage ({len(docs)} documents, {chunks} chunks of <= 64 tokens; embedding runtime {runtime})",
                  "seconds", "share", "chunks/s"], rows), {
        "chunks_per_s": chunks / total, "embed_share": embed / total, "write_cps": chunks / write,
        "embed_cps": chunks / embed, "before_embed_cps": len(texts) / b_wall, "cpu_cps": chunks / cpu,
        "before_cpu_cps": len(texts) / b_cpu, "runtime": runtime}


# -- 3. the embedded store at scale ---------------------------------------------------------------------------


def real_embeddings(n: int = 2000) -> tuple[np.ndarray, list[str]]:
    """Embeddings of stdlib docstring paragraphs (cached), and the paragraphs' words."""
    texts: list[str] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for block in re.findall(r'"""(.*?)"""', source, flags=re.S):
            for para in block.split("\n\n"):
                para = " ".join(para.split())
                if 80 <= len(para) <= 600:
                    texts.append(para)
    texts = sorted(set(texts))
    random.Random(0).shuffle(texts)
    texts = texts[:n]
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"minilm-stdlib-{len(texts)}.npy"
    if cached.exists():
        vectors = np.load(cached)
    else:
        print(f"embedding {len(texts)} stdlib docstring paragraphs once (cached in {cached})...", flush=True)
        vectors = get_embedder().encode(texts)
        np.save(cached, vectors)
    return vectors, texts


def synthetic(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    mean = real.mean(0).astype(np.float64)
    cov = np.cov(real.T.astype(np.float64))
    w, v = np.linalg.eigh(cov)
    w = np.clip(w, 0, None)
    out = np.empty((n, real.shape[1]), np.float32)
    for i in range(0, n, 20_000):
        m = min(20_000, n - i)
        x = mean + (rng.standard_normal((m, real.shape[1])) * np.sqrt(w)) @ v.T
        out[i : i + m] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def scale(n_chunks: int, n_queries: int) -> tuple[str, dict]:
    rng = np.random.default_rng(0)
    real, texts = real_embeddings()
    words = re.findall(r"[a-z]{3,}", " ".join(texts).lower())
    vocab, counts = np.unique(words, return_counts=True)
    probs = counts / counts.sum()
    vectors = synthetic(real, n_chunks, rng)
    queries = synthetic(real, n_queries, rng)
    query_texts = [" ".join(rng.choice(vocab, size=3, p=probs)) for _ in range(n_queries)]
    dim = vectors.shape[1]

    folder = Path(tempfile.mkdtemp(prefix="genstack-bench-retriever-"))
    settings = RetrieverSettings(data_dir=folder)
    params = IndexParams(hnsw_threshold=settings.hnsw_threshold, hnsw_m=settings.hnsw_m,
                         ef_construction=settings.hnsw_ef_construction, ef_search=settings.hnsw_ef_search,
                         exact_filter_limit=settings.exact_filter_limit, build_threads=0, search_threads=1)
    store = EmbeddedStore(folder, params, snapshot_every=settings.snapshot_every)
    store.warm_up()
    batch = 2000
    rebuild_s = 0.0
    started = time.perf_counter()
    for b in range(0, n_chunks, batch):
        records = []
        for i in range(b, min(b + batch, n_chunks)):
            text = " ".join(rng.choice(vocab, size=40, p=probs))
            records.append(DocumentRecord(f"doc{i}", "text/plain", "", {"shard": str(i % 10)},
                                          [ChunkRecord(f"doc{i}#0", 0, text, 0, len(text), "", 0, vectors[i])]))
        t = time.perf_counter()
        store.write("scale", records, "bench-gaussian", dim)
        if b == 0:  # a serving process keeps its index live while it ingests
            store.search("scale", StoreQuery(text="", vector=vectors[0], mode=VECTOR, alpha=0.5, limit=1))
        coll = store._collections["scale"]
        if coll.index.kind == "hnsw" and rebuild_s == 0.0:
            rebuild_s = time.perf_counter() - t  # this batch's write included the flat -> HNSW build
    write_s = time.perf_counter() - started
    coll = store._collections["scale"]
    kind = coll.index.kind

    def timed(fn, items):
        out, times = [], []
        for item in items:
            t = time.perf_counter()
            out.append(fn(item))
            times.append((time.perf_counter() - t) * 1e3)
        return out, times

    def q(mode, vec, text="", filters=()):
        return StoreQuery(text=text, vector=vec, mode=mode, alpha=0.5, limit=10, filters=list(filters))

    vec_hits, vec_ms = timed(lambda i: store.search("scale", q(VECTOR, queries[i])), range(n_queries))
    _, raw_ms = timed(lambda i: coll.index.search(queries[i], 10), range(n_queries))
    from services.retriever.filters import EQUALS, MetadataFilter

    t = time.perf_counter()
    store.search("scale", q(KEYWORD, None, query_texts[0]))
    keyword_build_s = time.perf_counter() - t  # the first keyword search builds the in-memory postings
    keyword_mb = coll.keywords.memory_bytes() / 2**20
    # the previous code path (FTS5 ranks every match) on the same open database, side by side
    fts = EmbeddedStore(folder, IndexParams(**{**params.__dict__, "keyword_index": False}),
                        snapshot_every=settings.snapshot_every)
    fts.search("scale", q(VECTOR, queries[0]))
    kw_hits, kw_ms = timed(lambda i: store.search("scale", q(KEYWORD, None, query_texts[i])), range(n_queries))
    kw_old, kw_old_ms = timed(lambda i: fts.search("scale", q(KEYWORD, None, query_texts[i])), range(n_queries))
    hy_hits, hy_ms = timed(lambda i: store.search("scale", q(HYBRID, queries[i], query_texts[i])), range(n_queries))
    hy_old, hy_old_ms = timed(lambda i: fts.search("scale", q(HYBRID, queries[i], query_texts[i])), range(n_queries))
    flt_kw = [MetadataFilter("shard", EQUALS, ("3",))]
    hf_hits, hf_ms = timed(lambda i: store.search("scale", q(HYBRID, queries[i], query_texts[i], flt_kw)),
                           range(n_queries))
    hf_old, hf_old_ms = timed(lambda i: fts.search("scale", q(HYBRID, queries[i], query_texts[i], flt_kw)),
                              range(n_queries))

    def same(a, b):
        return sum([h.chunk_id for h in x] == [h.chunk_id for h in y] for x, y in zip(a, b, strict=True))

    same_kw, same_hy, same_hf = same(kw_hits, kw_old), same(hy_hits, hy_old), same(hf_hits, hf_old)
    fts.close()
    shard = [MetadataFilter("shard", EQUALS, ("3",))]

    def filtered(i: int, first_use: bool):
        if first_use:  # as if this filter had not been seen since the last write
            coll._filter_cache.clear()
        return store.search("scale", q(VECTOR, queries[i], filters=shard))

    _, flt_first_ms = timed(lambda i: filtered(i, True), range(n_queries))
    _, flt_ms = timed(lambda i: filtered(i, False), range(n_queries))

    # exact ground truth and the flat index's own latency, side by side
    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    truth_scores, truth = flat.search(queries, 10)
    _, flat_ms = timed(lambda i: flat.search(queries[i : i + 1], 10), range(min(n_queries, 100)))
    recall = np.mean([len({int(h.chunk_id[3:].split("#")[0]) for h in hits} & set(truth[i].tolist())) / 10
                      for i, hits in enumerate(vec_hits)])
    ef_rows = []
    if kind == "hnsw":
        inner = faiss.downcast_index(coll.index.index.index)
        for ef in (64, 128, 256, 512):
            inner.hnsw.efSearch = ef
            params_ef = faiss.SearchParametersHNSW(efSearch=ef)
            res, ms = timed(lambda i, p=params_ef: coll.index.index.search(queries[i : i + 1], 10, params=p)[1][0],
                            range(n_queries))
            # chunk ids are SQLite row ids 1..n in insertion order, i.e. vector index + 1
            rec = np.mean([len({int(x) - 1 for x in r} & set(truth[i].tolist())) / 10 for i, r in enumerate(res)])
            ef_rows.append([f"HNSW efSearch={ef}", f"{statistics.median(ms):.2f}", f"{pct(ms, 99):.2f}", f"{rec:.3f}"])
        inner.hnsw.efSearch = settings.hnsw_ef_search
    store.close()

    started = time.perf_counter()
    again = EmbeddedStore(folder, params)
    again.search("scale", q(VECTOR, queries[0]))
    restart_s = time.perf_counter() - started
    again.close()

    rows = [
        [f"vector, store.search ({kind}, ef={settings.hnsw_ef_search}, with row fetch)",
         f"{statistics.median(vec_ms):.2f}", f"{pct(vec_ms, 99):.2f}", f"{recall:.3f}"],
        ["vector, index only", f"{statistics.median(raw_ms):.2f}", f"{pct(raw_ms, 99):.2f}", ""],
        *ef_rows,
        ["exact flat scan (faiss IndexFlatIP, 1 thread)", f"{statistics.median(flat_ms):.2f}",
         f"{pct(flat_ms, 99):.2f}", "1.000"],
        ["vector + filter admitting 10% of chunks, first use", f"{statistics.median(flt_first_ms):.2f}",
         f"{pct(flt_first_ms, 99):.2f}", ""],
        ["vector + the same filter again (admitted ids cached)", f"{statistics.median(flt_ms):.2f}",
         f"{pct(flt_ms, 99):.2f}", ""],
        ["keyword BM25, before: SQLite FTS5 ranks every match (3 words drawn by corpus frequency)",
         f"{statistics.median(kw_old_ms):.2f}", f"{pct(kw_old_ms, 99):.2f}", ""],
        [f"keyword BM25, now: in-memory postings (same top-10 on {same_kw}/{n_queries})",
         f"{statistics.median(kw_ms):.2f}", f"{pct(kw_ms, 99):.2f}", ""],
        ["hybrid (100 + 100 candidates, fused), before: FTS5", f"{statistics.median(hy_old_ms):.2f}",
         f"{pct(hy_old_ms, 99):.2f}", ""],
        [f"hybrid, now: in-memory postings (same top-10 on {same_hy}/{n_queries})", f"{statistics.median(hy_ms):.2f}",
         f"{pct(hy_ms, 99):.2f}", ""],
        ["hybrid + filter admitting 10%, before: FTS5", f"{statistics.median(hf_old_ms):.2f}",
         f"{pct(hf_old_ms, 99):.2f}", ""],
        [f"hybrid + filter, now (same top-10 on {same_hf}/{n_queries})", f"{statistics.median(hf_ms):.2f}",
         f"{pct(hf_ms, 99):.2f}", ""],
    ]
    text = table([f"search at {n_chunks:,} chunks ({n_queries} queries)", "p50 ms", "p99 ms", "recall@10 vs exact"],
                 rows)
    text += (f"\n\nWrite of {n_chunks:,} chunks with precomputed vectors: {write_s:.1f} s = "
             f"{n_chunks / write_s:,.0f} chunks/s (batches of {batch}; SQLite rows + FTS5 + the live faiss index, "
             f"which turned from flat into HNSW at {settings.hnsw_threshold:,} chunks in {rebuild_s:.1f} s of that). "
             f"Restart (open, load the HNSW snapshot, reconcile, first search): {restart_s:.2f} s. "
             f"The in-memory BM25 postings were built from the FTS5 index by the first keyword search in "
             f"{keyword_build_s:.1f} s and hold {keyword_mb:.0f} MiB.")
    return text, {"p50": statistics.median(vec_ms), "p99": pct(vec_ms, 99), "recall": recall,
                  "hybrid_p50": statistics.median(hy_ms), "hybrid_old_p50": statistics.median(hy_old_ms),
                  "same_hybrid": same_hy, "queries": n_queries,
                  "write_cps": n_chunks / write_s, "flat_p50": statistics.median(flat_ms)}


def write_results(section: str) -> None:
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(existing):
        updated = pattern.sub(lambda _m: section.rstrip() + "\n\n", existing)
    else:
        updated = existing.rstrip() + "\n\n" + section.rstrip() + "\n"
    RESULTS.write_text(updated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-write-results", action="store_true")
    parser.add_argument("--skip-scale", action="store_true", help="quality and ingest only (nothing is recorded)")
    args = parser.parse_args()

    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
               f"faiss {faiss.__version__}, SQLite {__import__('sqlite3').sqlite_version}")
    print(f"machine: {machine}", flush=True)
    print("\n0. embedding runtimes", flush=True)
    runtime_table, runtimes = embedding_runtimes()
    print(runtime_table, flush=True)
    retriever = RetrieverCore(RetrieverSettings(data_dir=Path(tempfile.mkdtemp(prefix="genstack-bench-q-"))))
    retriever.warm_up()

    print("\n1. retrieval quality", flush=True)
    quality_table, summary = quality(retriever)
    print(quality_table, flush=True)
    print("\n2. ingest throughput", flush=True)
    ingest_table, ingest = ingest_throughput(retriever)
    print(ingest_table, flush=True)
    retriever.close()
    if args.skip_scale:
        return 0
    print(f"\n3. embedded store at {args.chunks:,} chunks", flush=True)
    scale_table, sc = scale(args.chunks, args.queries)
    print(scale_table, flush=True)

    alpha = RetrieverSettings().default_alpha
    best_recall = max(summary["vector"][0], summary["keyword (BM25)"][0])
    best_mrr = max(summary["vector"][1], summary["keyword (BM25)"][1])
    hybrid_recall, hybrid_mrr = summary.get(f"hybrid alpha={alpha}", (float("nan"), float("nan")))
    verdict = ("no worse than" if hybrid_recall >= best_recall and hybrid_mrr >= best_mrr
               else "WORSE than")
    section = f"""{HEADING}

`python bench/retriever.py` on {datetime.now(UTC).strftime('%Y-%m-%d')}, {machine}
(shared machine: other work ran at the same time, so absolute timings are noisy; compare rows of one run).

### Quality: {len(DOCUMENTS)} documents, {len(QUERIES)} labelled queries (bench/retriever_corpus.py)

Document-level recall@5 and MRR over the top 20 chunks. Hybrid at alpha={alpha} (the default) is {verdict}
the better single mode: recall@5 {hybrid_recall:.3f} vs {best_recall:.3f}, MRR {hybrid_mrr:.3f} vs {best_mrr:.3f}.

{quality_table}

### Embedding runtimes (all-MiniLM-L6-v2 on the CPU)

{runtime_table}

"texts/s per CPU-s" divides by the CPU time this process got, which other work on the shared machine does
not change much; the wall-clock column does. Cosines are per vector against the torch float32 reference.
`GENSTACK_EMBEDDING_RUNTIME=auto` uses {get_embedder().runtime}.

### Ingest throughput (real pipeline)

{ingest_table}

Embedding stage: {ingest['embed_cps']:.0f} chunks/s now against {ingest['before_embed_cps']:.0f} chunks/s the way the
previous code embedded (wall clock, same run); per CPU-second of the whole ingest {ingest['cpu_cps']:.0f} chunks/s
against {ingest['before_cpu_cps']:.0f} for the previous embedding loop alone.

Ingest is bound by the embedding model: it takes {100 * ingest['embed_share']:.0f}% of the time on the CPU
(batched, {get_embedder().settings.batch_size} texts per forward pass); parsing, chunking and writing are
small beside it. More CPU cores or a GPU (GENSTACK_EMBEDDING_DEVICE=cuda) raise it. The store alone wrote
{ingest['write_cps']:,.0f} chunks/s into this small collection, and {sc['write_cps']:,.0f} chunks/s on average while
filling {args.chunks:,} chunks (that includes inserting into the growing HNSW graph; below).

### Embedded backend at {args.chunks:,} chunks (precomputed vectors)

{scale_table}

Vector search p50 {sc['p50']:.2f} ms (target < 5 ms) with recall@10 {sc['recall']:.3f} against exact search
(target >= 0.95); an exact flat scan of the same vectors takes {sc['flat_p50']:.2f} ms per query on one thread,
which is why collections above the threshold use HNSW. The vectors follow the mean and covariance of real
all-MiniLM-L6-v2 embeddings but lack their topical clusters, which makes nearest neighbours harder to find
than in real text collections; treat the recall as a lower estimate.
"""
    if not args.no_write_results:
        write_results(section)
        print(f"\nwrote the '{HEADING}' section of {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
