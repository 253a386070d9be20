"""The embedded backend: one folder per collection holding a SQLite database and a faiss snapshot.

SQLite is the source of truth: documents, their metadata (with number/date shadows for range
filters), chunks with their vectors, and an FTS5 table over the chunk text that ranks keywords with
BM25. Every write is one SQLite transaction, so a batch lands whole or not at all, and a re-ingested
document's old chunks disappear in the same transaction that adds the new ones.

The faiss index lives in memory. Chunk ids are never reused (AUTOINCREMENT) and a chunk never
changes, so any (id, vector) set - a snapshot on disk, or the index another process built - is
brought up to date by diffing its ids against the chunks table. A `generation` counter bumped by
every write tells each process (gRPC server, Celery workers, CLI) when to do that, so they can all
share one data folder. Large collections use an HNSW graph, saved as a snapshot so that a restart
does not rebuild it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from services.retriever.filters import ANY_OF, EQUALS, NUMBER_RANGE, MetadataFilter, as_number, as_timestamp
from services.retriever.ranking import relative_score_fusion
from services.retriever.stores.base import (
    KEYWORD,
    VECTOR,
    Candidate,
    CollectionStats,
    DocumentRecord,
    Store,
    StoreQuery,
    WriteResult,
)
from services.retriever.stores.keyword_index import KeywordIndex
from services.retriever.stores.vector_index import FLAT, HNSW, IndexParams, VectorIndex, set_search_threads
from shared.errors import FailedPrecondition, NotFound

log = logging.getLogger(__name__)

DB_NAME = "chunks.sqlite3"
SNAPSHOT_NAME = "hnsw.faiss"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    source TEXT NOT NULL,
    metadata TEXT NOT NULL,
    chunk_count INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS doc_meta (
    doc_rowid INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    num REAL,
    ts REAL
);
CREATE INDEX IF NOT EXISTS doc_meta_value ON doc_meta (key, value);
CREATE INDEX IF NOT EXISTS doc_meta_num ON doc_meta (key, num);
CREATE INDEX IF NOT EXISTS doc_meta_ts ON doc_meta (key, ts);
CREATE INDEX IF NOT EXISTS doc_meta_doc ON doc_meta (doc_rowid);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_rowid INTEGER NOT NULL,
    chunk_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    start_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    section TEXT NOT NULL,
    page INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (doc_rowid);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""

_WORD = re.compile(r"\w+", re.UNICODE)
_MAX_QUERY_TERMS = 64
_SQL_BATCH = 500
_FILTER_CACHE_SIZE = 32
# Words that carry no topic. BM25 gives them little weight anyway, but FTS5 must still score every
# chunk containing one, which made 100k-chunk keyword searches ten times slower (bench/retriever.py).
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves
""".split())


def query_words(text: str) -> list[str]:
    """The words of `text` a keyword search looks for: lowercased, each once, without stopwords
    unless the query is nothing but stopwords."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    content = [w for w in words if w not in STOPWORDS] or words
    return content[:_MAX_QUERY_TERMS]


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any of `query_words(text)` (each quoted, so no syntax leaks in)."""
    content = query_words(text)
    return " OR ".join(f'"{w}"' for w in content) if content else None


def _filter_sql(filters: list[MetadataFilter]) -> tuple[str, list]:
    """A WHERE clause over `chunks c` admitting the chunks whose document matches every filter."""
    clauses, args = [], []
    for f in filters:
        if f.op == EQUALS:
            cond, vals = "value = ?", [f.values[0]]
        elif f.op == ANY_OF:
            cond, vals = f"value IN ({','.join('?' * len(f.values))})", list(f.values)
        else:
            column = "num" if f.op == NUMBER_RANGE else "ts"
            parts, vals = [], []
            r = f.range
            if r.lower is not None:
                parts.append(f"{column} {'>=' if r.lower_inclusive else '>'} ?")
                vals.append(r.lower)
            if r.upper is not None:
                parts.append(f"{column} {'<=' if r.upper_inclusive else '<'} ?")
                vals.append(r.upper)
            cond = " AND ".join(parts)
        clauses.append(f"c.doc_rowid IN (SELECT doc_rowid FROM doc_meta WHERE key = ? AND {cond})")
        args.extend([f.key, *vals])
    return " AND ".join(clauses) or "1", args


class _Collection:
    """One collection's database connection and in-memory index, used under `lock`."""

    def __init__(self, name: str, folder: Path, params: IndexParams, busy_timeout_s: float, snapshot_every: int):
        self.name = name
        self.folder = folder
        self.db_path = folder / DB_NAME
        self.params = params
        self.busy_timeout_s = busy_timeout_s
        self.snapshot_every = snapshot_every
        self.lock = threading.RLock()
        self.conn: sqlite3.Connection | None = None
        self.inode: int | None = None
        self.index: VectorIndex | None = None
        self.index_generation = -1
        # BM25 postings in memory (keyword_index.py), built on the first keyword or hybrid search
        self.keywords: KeywordIndex | None = None
        self.keywords_generation = -1
        self.unsaved_changes = 0
        # chunk ids admitted by recent filters, valid for one generation (RAG callers tend to repeat
        # the same tenant/source filter, and reading 10k ids from SQLite costs more than the search)
        self._filter_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._filter_cache_generation = -1

    # -- connection ------------------------------------------------------------------------------

    def open(self, create: bool) -> bool:
        """Connect (creating the collection when `create`); False when it does not exist."""
        if self.conn is not None and self._same_file():
            return True
        self._drop_connection()
        if not self.db_path.exists():
            if not create:
                return False
            self.folder.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(_SCHEMA):
                conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0')")
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)", (str(time.time()),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        self.conn = conn
        self.inode = os.stat(self.db_path).st_ino
        return True

    def _same_file(self) -> bool:
        try:
            return os.stat(self.db_path).st_ino == self.inode
        except FileNotFoundError:
            return False

    def _drop_connection(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
        self.conn = None
        self.inode = None
        self.index = None
        self.index_generation = -1
        self.keywords = None
        self.keywords_generation = -1

    def require(self) -> sqlite3.Connection:
        if not self.open(create=False) or self.meta("deleted"):
            self._drop_connection()
            raise NotFound(f"collection {self.name!r} does not exist")
        assert self.conn is not None
        return self.conn

    def meta(self, key: str) -> str | None:
        assert self.conn is not None
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def generation(self) -> int:
        return int(self.meta("generation") or 0)

    def allowed_ids(self, filters: tuple, where: str, args: list) -> np.ndarray:
        gen = self.index_generation
        if gen != self._filter_cache_generation:
            self._filter_cache.clear()
            self._filter_cache_generation = gen
        ids = self._filter_cache.get(filters)
        if ids is None:
            assert self.conn is not None
            rows = self.conn.execute(f"SELECT c.id FROM chunks c WHERE {where}", args).fetchall()
            ids = np.array(rows, dtype=np.int64).reshape(-1)
            self._filter_cache[filters] = ids
            if len(self._filter_cache) > _FILTER_CACHE_SIZE:
                self._filter_cache.popitem(last=False)
        else:
            self._filter_cache.move_to_end(filters)
        return ids

    # -- vector index ------------------------------------------------------------------------------

    def dimension(self) -> int:
        return int(self.meta("dimension") or 0)

    def sync_index(self) -> VectorIndex | None:
        """Bring the in-memory index up to the database's generation; None for an empty collection."""
        conn = self.require()
        gen = self.generation()
        dim = self.dimension()
        if dim == 0:
            return None
        if self.index is not None and self.index_generation == gen:
            return self.index
        if self.index is None:
            self.index = self._load_snapshot(dim) or VectorIndex(dim, self.params)
        self._reconcile(conn)
        self.index_generation = gen
        self._maybe_rebuild(conn)
        return self.index

    def sync_keywords(self, conn: sqlite3.Connection) -> KeywordIndex:
        """The in-memory BM25 index at the database's generation (built from FTS5 on first use)."""
        gen = self.generation()
        if self.keywords is not None and self.keywords_generation == gen:
            return self.keywords
        db_ids = np.fromiter((r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id")), np.int64)
        if self.keywords is None:
            started = time.monotonic()
            self.keywords = KeywordIndex.from_fts(conn, "chunks_fts", db_ids)
            log.info("built keyword index", extra={"fields": {
                "collection": self.name, "chunks": len(db_ids), "seconds": round(time.monotonic() - started, 2),
                "megabytes": round(self.keywords.memory_bytes() / 2**20, 1)}})
        else:  # another process wrote: bring it up to date like the vector index
            have = self.keywords.ids()
            self.keywords.remove(np.setdiff1d(have, db_ids, assume_unique=True))
            new = np.setdiff1d(db_ids, have, assume_unique=True)
            for i in range(0, len(new), 5000):
                part = new[i : i + 5000].tolist()
                rows = conn.execute(f"SELECT id, text FROM chunks WHERE id IN ({','.join('?' * len(part))})",
                                    part).fetchall()
                self.keywords.add([r[0] for r in rows], [r[1] for r in rows])
        self.keywords_generation = gen
        return self.keywords

    def _load_snapshot(self, dim: int) -> VectorIndex | None:
        path = self.folder / SNAPSHOT_NAME
        if not path.exists():
            return None
        try:
            index = VectorIndex.load(path, dim, self.params)
        except Exception as exc:  # noqa: BLE001 - a bad snapshot is rebuilt from the database
            log.warning("ignoring unreadable index snapshot", extra={"fields": {"path": str(path), "error": str(exc)}})
            return None
        log.info("loaded index snapshot", extra={"fields": {"collection": self.name, "vectors": index.index.ntotal}})
        return index

    def _reconcile(self, conn: sqlite3.Connection) -> None:
        """Make the index hold exactly the chunks table's ids."""
        assert self.index is not None
        db_ids = np.fromiter((r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id")), np.int64)
        have = self.index.ids()
        gone = np.setdiff1d(have, db_ids, assume_unique=True)
        new = np.setdiff1d(db_ids, have, assume_unique=True)
        self.index.remove(gone)
        for i in range(0, len(new), 20_000):
            ids, vectors = self._vectors(conn, new[i : i + 20_000])
            self.index.add(ids, vectors)
        self.unsaved_changes += len(gone) + len(new)

    def _vectors(self, conn: sqlite3.Connection, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dim = self.dimension()
        out_ids, blobs = [], []
        lo, hi = int(ids.min()), int(ids.max())
        wanted = set(ids.tolist())
        # one range scan instead of huge IN lists; new ids are usually a contiguous tail
        for row_id, blob in conn.execute("SELECT id, vector FROM chunks WHERE id BETWEEN ? AND ?", (lo, hi)):
            if row_id in wanted:
                out_ids.append(row_id)
                blobs.append(blob)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(out_ids), dim)
        return np.array(out_ids, dtype=np.int64), vectors

    def _maybe_rebuild(self, conn: sqlite3.Connection) -> None:
        assert self.index is not None
        kind = self.index.needs_rebuild()
        if kind is not None:
            started = time.monotonic()
            db_ids = np.fromiter((r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id")), np.int64)
            ids, vectors = self._vectors(conn, db_ids) if len(db_ids) else (db_ids, np.zeros((0, self.dimension())))
            self.index = VectorIndex.build(self.dimension(), self.params, ids, vectors)
            log.info(
                "rebuilt vector index",
                extra={"fields": {"collection": self.name, "kind": self.index.kind, "vectors": len(ids),
                                  "seconds": round(time.monotonic() - started, 2)}},
            )
            self.unsaved_changes = len(ids)
        if self.index.kind == HNSW and self.unsaved_changes >= self.snapshot_every:
            self.save_snapshot()
        elif self.index.kind == FLAT:
            # a flat index rebuilds from the database in well under a second; no snapshot to go stale
            (self.folder / SNAPSHOT_NAME).unlink(missing_ok=True)

    def save_snapshot(self) -> None:
        if self.index is not None and self.index.kind == HNSW and self.folder.exists():
            self.index.save(self.folder / SNAPSHOT_NAME)
            self.unsaved_changes = 0


def _top(ids: np.ndarray, scores: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The best `limit` (all when None) by score, ties in ascending id, as FTS5's sorted output."""
    if limit is not None and limit < len(ids):
        if limit <= 0:
            return ids[:0], scores[:0]
        cut = np.partition(-scores, limit - 1)[limit - 1]  # keep every tie of the last place
        keep = -scores <= cut
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[: limit if limit is not None else None]
    return ids[order], scores[order]


def _split_sql(script: str) -> list[str]:
    """Statements of the schema script (triggers contain ';' inside BEGIN ... END)."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        joined = "\n".join(current).strip()
        if joined.endswith(";") and (not joined.upper().startswith("CREATE TRIGGER") or joined.endswith("END;")):
            statements.append(joined)
            current = []
    return statements


class EmbeddedStore(Store):
    backend = "embedded"

    def __init__(
        self,
        root: Path,
        params: IndexParams | None = None,
        *,
        busy_timeout_s: float = 60.0,
        snapshot_every: int = 5000,
    ):
        self.root = Path(root)
        self.params = params or IndexParams()
        self.busy_timeout_s = busy_timeout_s
        self.snapshot_every = snapshot_every
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()

    @property
    def collections_dir(self) -> Path:
        return self.root / "collections"

    def warm_up(self) -> None:
        self.collections_dir.mkdir(parents=True, exist_ok=True)
        set_search_threads(self.params.search_threads)

    def close(self) -> None:
        with self._lock:
            for coll in self._collections.values():
                with coll.lock:
                    if coll.unsaved_changes and coll.index is not None and coll.index.kind == HNSW:
                        coll.save_snapshot()
                    coll._drop_connection()
            self._collections.clear()

    def _get(self, name: str) -> _Collection:
        with self._lock:
            coll = self._collections.get(name)
            if coll is None:
                coll = _Collection(
                    name, self.collections_dir / name, self.params, self.busy_timeout_s, self.snapshot_every
                )
                self._collections[name] = coll
            return coll

    # -- reads ---------------------------------------------------------------------------------------

    def describe(self, collection: str) -> tuple[str, int] | None:
        coll = self._get(collection)
        with coll.lock:
            try:
                coll.require()
            except NotFound:
                return None
            return coll.meta("embedding_model") or "", coll.dimension()

    def list_collections(self) -> list[CollectionStats]:
        out = []
        if not self.collections_dir.exists():
            return out
        for folder in sorted(self.collections_dir.iterdir()):
            if not (folder / DB_NAME).exists():
                continue
            coll = self._get(folder.name)
            with coll.lock:
                try:
                    out.append(self._stats(coll, coll.require()))
                except NotFound:
                    continue
        return out

    def _stats(self, coll: _Collection, conn: sqlite3.Connection) -> CollectionStats:
        docs = conn.execute("SELECT COUNT(*), COALESCE(SUM(chunk_count), 0) FROM documents").fetchone()
        return CollectionStats(
            name=coll.name,
            document_count=int(docs[0]),
            chunk_count=int(docs[1]),
            embedding_model=coll.meta("embedding_model") or "",
            dimension=coll.dimension(),
            backend=self.backend,
        )

    # -- writes --------------------------------------------------------------------------------------

    def write(self, collection: str, documents: list[DocumentRecord], model: str, dimension: int) -> list[WriteResult]:
        coll = self._get(collection)
        with coll.lock:
            coll.open(create=True)
            conn = coll.conn
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                if coll.meta("deleted"):
                    raise FailedPrecondition(f"collection {collection!r} is being deleted; retry")
                stored_model, stored_dim = coll.meta("embedding_model"), coll.dimension()
                if stored_model is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('embedding_model', ?)", (model,))
                    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dimension', ?)", (str(dimension),))
                elif stored_model != model or stored_dim != dimension:
                    raise FailedPrecondition(
                        f"collection {collection!r} was built with embedding model {stored_model!r} "
                        f"({stored_dim}-d); this service embeds with {model!r} ({dimension}-d). "
                        "Use the same model or another collection"
                    )
                gen_before = coll.generation()
                results, removed, added, texts = [], [], [], []
                for doc in documents:
                    old, new_ids = self._replace_document(conn, doc)
                    removed.extend(old)
                    added.extend(zip(new_ids, (c.vector for c in doc.chunks), strict=True))
                    texts.extend(c.text for c in doc.chunks)
                    results.append(WriteResult(doc.document_id, len(doc.chunks), len(old)))
                conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(gen_before + 1),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._apply(coll, conn, gen_before, removed, added, texts)
            return results

    def _replace_document(self, conn: sqlite3.Connection, doc: DocumentRecord) -> tuple[list[int], list[int]]:
        row = conn.execute("SELECT doc_rowid FROM documents WHERE document_id = ?", (doc.document_id,)).fetchone()
        old: list[int] = []
        if row is not None:
            doc_rowid = row[0]
            old = [r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_rowid = ?", (doc_rowid,))]
            conn.execute("DELETE FROM chunks WHERE doc_rowid = ?", (doc_rowid,))
            conn.execute("DELETE FROM doc_meta WHERE doc_rowid = ?", (doc_rowid,))
            conn.execute(
                "UPDATE documents SET content_type = ?, source = ?, metadata = ?, chunk_count = ?, updated_at = ? "
                "WHERE doc_rowid = ?",
                (doc.content_type, doc.source, json.dumps(doc.metadata), len(doc.chunks), time.time(), doc_rowid),
            )
        else:
            doc_rowid = conn.execute(
                "INSERT INTO documents (document_id, content_type, source, metadata, chunk_count, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (doc.document_id, doc.content_type, doc.source, json.dumps(doc.metadata), len(doc.chunks), time.time()),
            ).lastrowid
        conn.executemany(
            "INSERT INTO doc_meta (doc_rowid, key, value, num, ts) VALUES (?, ?, ?, ?, ?)",
            [(doc_rowid, k, v, as_number(v), as_timestamp(v)) for k, v in doc.metadata.items()],
        )
        new_ids = []
        for c in doc.chunks:
            cur = conn.execute(
                "INSERT INTO chunks (doc_rowid, chunk_index, text, start_offset, end_offset, section, page, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (doc_rowid, c.index, c.text, c.start, c.end, c.section, c.page,
                 np.ascontiguousarray(c.vector, dtype=np.float32).tobytes()),
            )
            new_ids.append(cur.lastrowid)
        return old, new_ids

    def _apply(self, coll: _Collection, conn, gen_before: int, removed: list[int], added: list,
               texts: list[str] | None = None) -> None:
        """Mirror a committed write in the in-memory indexes, or leave them to reconcile lazily."""
        if coll.keywords is not None:
            if coll.keywords_generation != gen_before:
                coll.keywords_generation = -1
            else:
                coll.keywords.remove(np.array(removed, dtype=np.int64))
                coll.keywords.add([i for i, _ in added], texts or [])
                coll.keywords_generation = gen_before + 1
        if coll.index is None:
            return
        if coll.index_generation != gen_before:  # another process wrote in between: reconcile on next use
            coll.index_generation = -1
            return
        coll.index.remove(np.array(removed, dtype=np.int64))
        if added:
            ids = np.array([i for i, _ in added], dtype=np.int64)
            coll.index.add(ids, np.stack([v for _, v in added]))
        coll.index_generation = gen_before + 1
        coll.unsaved_changes += len(removed) + len(added)
        coll._maybe_rebuild(conn)

    def delete_documents(self, collection: str, document_ids: list[str]) -> tuple[list[str], int]:
        coll = self._get(collection)
        with coll.lock:
            conn = coll.require()
            conn.execute("BEGIN IMMEDIATE")
            try:
                gen_before = coll.generation()
                deleted, removed = [], []
                for doc_id in dict.fromkeys(document_ids):
                    row = conn.execute("SELECT doc_rowid FROM documents WHERE document_id = ?", (doc_id,)).fetchone()
                    if row is None:
                        continue
                    removed.extend(r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_rowid = ?", (row[0],)))
                    conn.execute("DELETE FROM chunks WHERE doc_rowid = ?", (row[0],))
                    conn.execute("DELETE FROM doc_meta WHERE doc_rowid = ?", (row[0],))
                    conn.execute("DELETE FROM documents WHERE doc_rowid = ?", (row[0],))
                    deleted.append(doc_id)
                if deleted:
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(gen_before + 1),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if deleted:
                self._apply(coll, conn, gen_before, removed, [])
            return deleted, len(removed)

    def delete_collection(self, collection: str) -> CollectionStats:
        coll = self._get(collection)
        with coll.lock:
            conn = coll.require()
            conn.execute("BEGIN IMMEDIATE")
            try:
                stats = self._stats(coll, conn)
                # other processes holding this database open see the mark and treat it as gone
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('deleted', '1')")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            coll._drop_connection()
            shutil.rmtree(coll.folder, ignore_errors=True)
            return stats

    # -- search --------------------------------------------------------------------------------------

    def search(self, collection: str, query: StoreQuery) -> list[Candidate]:
        coll = self._get(collection)
        with coll.lock:
            conn = coll.require()
            index = coll.sync_index()
            if index is None:
                return []
            where, args = _filter_sql(query.filters)
            allowed = None
            terms = None
            if query.mode != VECTOR and self.params.keyword_index and (words := query_words(query.text)):
                terms = KeywordIndex.phrases(words)  # None: a word FTS5 reads as a phrase; FTS5 answers
            if query.filters and (query.mode != KEYWORD or terms is not None):
                allowed = coll.allowed_ids(tuple(query.filters), where, args)
            q = np.asarray(query.vector, dtype=np.float32)

            if query.mode == VECTOR:
                ids, vs = index.search(q, query.limit, allowed)
                scored = [(int(i), float(s), float(s), None) for i, s in zip(ids, vs, strict=True)]
            elif terms is not None:
                keywords = coll.sync_keywords(conn)
                if query.mode == KEYWORD:
                    ids, scores = _top(*keywords.score(terms, allowed), query.limit)
                    scored = [(i, s, None, s) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)]
                else:
                    scored = self._hybrid_memory(keywords, terms, index, query, q, allowed)
            elif query.mode == KEYWORD:
                kw = self._keyword(conn, query.text, query.limit, where, args)
                scored = [(i, s, None, s) for i, s in kw]
            else:
                scored = self._hybrid(conn, index, query, q, allowed, where, args)
            return self._candidates(conn, index, scored, query.with_vectors)

    def _keyword(self, conn, text: str, limit: int | None, where: str, args: list) -> list[tuple[int, float]]:
        """(chunk id, BM25) best first: the top `limit`, or every matching chunk when `limit` is None."""
        match = fts_query(text)
        if match is None or limit == 0:
            return []
        if args:  # filters need the chunk rows
            sql = ("SELECT f.rowid, -bm25(chunks_fts) FROM chunks_fts f JOIN chunks c ON c.id = f.rowid "
                   f"WHERE chunks_fts MATCH ? AND {where}")
        else:  # the FTS table alone: joining every match to its row made this 2.5x slower
            sql = "SELECT rowid, -bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?"
        params: list = [match, *args]
        if limit is not None:
            sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
            params.append(limit)
        return [(int(r[0]), float(r[1])) for r in conn.execute(sql, params)]

    def _hybrid_memory(self, keywords: KeywordIndex, terms: list[str], index: VectorIndex, query: StoreQuery, q,
                       allowed):
        """`_hybrid` over the in-memory BM25 postings: the same candidates, scores and order."""
        pool = max(query.pool, query.limit)
        v_ids, v_scores = index.search(q, pool, allowed)
        v_ids = v_ids.astype(np.int64)
        matched, bm25 = keywords.score(terms, allowed)
        k_ids, _ = _top(matched, bm25, pool)
        kw_only = k_ids[~np.isin(k_ids, v_ids)]
        union = np.concatenate([v_ids, kw_only])
        v = np.concatenate([v_scores.astype(np.float64), index.vectors(kw_only) @ q if len(kw_only) else []])
        k = np.zeros(len(union))
        if len(matched):  # BM25 of each candidate; 0 where no query term occurs in it
            at = np.minimum(np.searchsorted(matched, union), len(matched) - 1)
            k = np.where(matched[at] == union, bm25[at], 0.0)
        fused = relative_score_fusion(v, k, query.alpha)
        order = np.argsort(-fused, kind="stable")[: query.limit]
        return [(int(union[j]), float(fused[j]), float(v[j]), float(k[j])) for j in order]

    def _hybrid(self, conn, index: VectorIndex, query: StoreQuery, q, allowed, where, args):
        pool = max(query.pool, query.limit)
        v_ids, v_scores = index.search(q, pool, allowed)
        vector = {int(i): float(s) for i, s in zip(v_ids, v_scores, strict=True)}
        # one pass scores every matching chunk: it yields the keyword top `pool` and the exact BM25 of
        # the vector candidates at once (asking FTS5 for specific rowids was slower than this)
        every = self._keyword(conn, query.text, None, where, args)
        every.sort(key=lambda pair: -pair[1])
        bm25 = dict(every)
        keyword = dict(every[:pool])
        # exact cosine for the keyword-only candidates
        kw_only = [i for i in keyword if i not in vector]
        if kw_only:
            vecs = index.vectors(np.array(kw_only, dtype=np.int64))
            vector.update(zip(kw_only, (vecs @ q).tolist(), strict=True))
        union = list(vector)
        v = np.array([vector[i] for i in union])
        k = np.array([bm25.get(i, 0.0) for i in union])
        fused = relative_score_fusion(v, k, query.alpha)
        order = np.argsort(-fused, kind="stable")[: query.limit]
        return [(union[j], float(fused[j]), float(v[j]), float(k[j])) for j in order]

    def _candidates(self, conn, index: VectorIndex, scored: list, with_vectors: bool) -> list[Candidate]:
        if not scored:
            return []
        ids = [s[0] for s in scored]
        rows = {}
        for k in range(0, len(ids), _SQL_BATCH):
            part = ids[k : k + _SQL_BATCH]
            for r in conn.execute(
                "SELECT c.id, c.chunk_index, c.text, c.start_offset, c.end_offset, c.section, c.page, "
                "d.document_id, d.metadata, d.source, d.content_type "
                "FROM chunks c JOIN documents d ON d.doc_rowid = c.doc_rowid "
                f"WHERE c.id IN ({','.join('?' * len(part))})",
                part,
            ):
                rows[r[0]] = r
        vectors = index.vectors(np.array(ids, dtype=np.int64)) if with_vectors else None
        out = []
        for n, (chunk_rowid, score, vscore, kscore) in enumerate(scored):
            r = rows.get(chunk_rowid)
            if r is None:  # removed between the index and the row fetch (cannot happen under the lock)
                continue
            out.append(
                Candidate(
                    chunk_id=f"{r[7]}#{r[1]}", document_id=r[7], index=r[1], text=r[2], start=r[3], end=r[4],
                    section=r[5], page=r[6], metadata=json.loads(r[8]), source=r[9], content_type=r[10],
                    score=score, vector_score=vscore, keyword_score=kscore,
                    vector=None if vectors is None else vectors[n],
                )
            )
        return out
