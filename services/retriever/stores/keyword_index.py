"""An in-memory BM25 index that scores exactly as SQLite FTS5's bm25() does, in numpy.

FTS5 scores every chunk that contains any query term, one row at a time through its auxiliary
function API; at 100k chunks a three-word query took 30 ms that way, and hybrid search, which also
needs the BM25 of every vector candidate, 72 ms (bench/retriever.py). This index holds the same
postings as numpy arrays (term -> chunk ids and term frequencies, plus each chunk's token count),
so one query is a few vectorised passes over the postings of its terms.

Exactness: the tokens are FTS5's own. A full build reads the collection's FTS5 index through an
`fts5vocab` table; chunks added later, and query words, go through an in-memory FTS5 table with the
same tokenizer. Scores follow fts5_aux.c's bm25 (k1 = 1.2, b = 0.75, IDF floored at 1e-6, one term
per quoted query word, summed in query order) in float64, in the same order of operations. A query
word that FTS5 would split into a phrase of several tokens (e.g. `foo_bar`) is not handled here:
`phrases()` returns None and the caller asks FTS5.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections import OrderedDict

import numpy as np

TOKENIZE = "porter unicode61 remove_diacritics 2"  # must equal the chunks_fts tokenizer
K1, B = 1.2, 0.75
_WORD_CACHE = 4096

_AGGREGATE = ("SELECT term, group_concat(doc), group_concat(n) FROM "
              "(SELECT term, doc, count(*) AS n FROM {vocab} GROUP BY term, doc) GROUP BY term")
_LENGTHS = "SELECT doc, count(*) FROM {vocab} GROUP BY doc"


class Tokenizer:
    """FTS5's tokenizer, reached through a private in-memory FTS5 table."""

    def __init__(self):
        self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize='{TOKENIZE}')")
        self._conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        self._lock = threading.Lock()
        self._words: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def postings(self, ids: list[int], texts: list[str]):
        """(term -> (ids, frequencies)), {id: token count} for these rows."""
        with self._lock:
            self._conn.execute("DELETE FROM t")
            self._conn.executemany("INSERT INTO t (rowid, text) VALUES (?, ?)", zip(ids, texts, strict=True))
            out = _read(self._conn, "v")
            self._conn.execute("DELETE FROM t")
        return out

    def tokens(self, word: str) -> tuple[str, ...]:
        with self._lock:
            got = self._words.get(word)
            if got is not None:
                self._words.move_to_end(word)
                return got
            self._conn.execute("DELETE FROM t")
            self._conn.execute("INSERT INTO t (rowid, text) VALUES (1, ?)", (word,))
            got = tuple(r[0] for r in self._conn.execute("SELECT term FROM v ORDER BY offset"))
            self._conn.execute("DELETE FROM t")
            self._words[word] = got
            if len(self._words) > _WORD_CACHE:
                self._words.popitem(last=False)
            return got


def _read(conn: sqlite3.Connection, vocab: str):
    terms = {}
    for term, docs, counts in conn.execute(_AGGREGATE.format(vocab=vocab)):
        terms[term] = (np.array(docs.split(","), dtype=np.int64), np.array(counts.split(","), dtype=np.float64))
    lengths = dict(conn.execute(_LENGTHS.format(vocab=vocab)).fetchall())
    return terms, lengths


_tokenizer: Tokenizer | None = None
_tokenizer_lock = threading.Lock()


def tokenizer() -> Tokenizer:
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            _tokenizer = Tokenizer()
        return _tokenizer


class KeywordIndex:
    """BM25 postings keyed by chunk id (SQLite row ids: AUTOINCREMENT, never reused)."""

    def __init__(self):
        self._parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._length = np.zeros(0, np.float64)  # tokens per chunk id
        self._present = np.zeros(0, bool)
        self.rows = 0  # live chunks (FTS5's row count)
        self.tokens = 0  # their tokens in total
        self._stale = 0  # removed chunks whose postings are still held

    # -- building --------------------------------------------------------------------------------

    @classmethod
    def from_fts(cls, conn: sqlite3.Connection, fts_table: str, ids: np.ndarray) -> KeywordIndex:
        """Everything `fts_table` (an FTS5 table of `conn`'s main database) holds, read from its
        index; `ids` are all its row ids (rows without tokens have no postings)."""
        vocab = f"temp.{fts_table}_genstack_vocab"
        conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {vocab} USING fts5vocab(main, {fts_table}, 'instance')")
        index = cls()
        terms, lengths = _read(conn, vocab)
        index._grow(int(ids.max()) + 1 if len(ids) else 0)
        index._mark(ids, lengths)
        index._parts = {t: [p] for t, p in terms.items()}
        return index

    def _grow(self, size: int) -> None:
        if size > len(self._length):
            size = max(size, int(len(self._length) * 1.25))
            self._length = np.concatenate([self._length, np.zeros(size - len(self._length))])
            self._present = np.concatenate([self._present, np.zeros(size - len(self._present), bool)])

    def _mark(self, ids: np.ndarray, lengths: dict[int, int]) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        new = ids[~self._present[ids]]
        counts = np.array([lengths.get(int(i), 0) for i in new], dtype=np.float64)
        self._present[new] = True
        self._length[new] = counts
        self.rows += len(new)
        self.tokens += int(counts.sum())

    def add(self, ids: list[int], texts: list[str]) -> None:
        if not ids:
            return
        terms, lengths = tokenizer().postings(list(map(int, ids)), list(texts))
        self._grow(max(ids) + 1)
        self._mark(np.array(ids, dtype=np.int64), lengths)
        for term, part in terms.items():
            self._parts.setdefault(term, []).append(part)

    def remove(self, ids) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[(ids < len(self._present))]
        ids = ids[self._present[ids]]
        if len(ids) == 0:
            return
        self._present[ids] = False
        self.rows -= len(ids)
        self.tokens -= int(self._length[ids].sum())
        self._length[ids] = 0
        self._stale += len(ids)
        if self._stale > max(1000, self.rows // 4):
            self._compact()

    def ids(self) -> np.ndarray:
        return np.flatnonzero(self._present).astype(np.int64)

    def _compact(self) -> None:
        for term in list(self._parts):
            docs, tfs = self._postings(term)
            if len(docs) == 0:
                del self._parts[term]
        self._stale = 0

    def _postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        parts = self._parts.get(term)
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0)
        if len(parts) > 1:
            parts[:] = [(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))]
        docs, tfs = parts[0]
        if self._stale:
            keep = self._present[docs]
            if not keep.all():
                docs, tfs = docs[keep], tfs[keep]
                parts[0] = (docs, tfs)
        return docs, tfs

    # -- scoring ---------------------------------------------------------------------------------

    @staticmethod
    def phrases(words: list[str]) -> list[str] | None:
        """The term of each query word, or None when a word is not exactly one FTS5 token."""
        tok = tokenizer()
        out = []
        for w in words:
            tokens = tok.tokens(w)
            if len(tokens) != 1:
                return None
            out.append(tokens[0])
        return out

    def score(self, terms: list[str], allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids matching any term, ascending; their BM25 as FTS5 computes it, positive)."""
        if self.rows == 0 or not terms:
            return np.zeros(0, np.int64), np.zeros(0)
        n_rows = float(self.rows)
        avgdl = float(self.tokens) / n_rows
        total = np.zeros(len(self._length))
        hit = np.zeros(len(self._length), bool)
        for term in terms:
            docs, tfs = self._postings(term)
            if len(docs) == 0:
                continue
            n_hit = len(docs)
            idf = math.log((n_rows - n_hit + 0.5) / (n_hit + 0.5))
            if idf <= 0.0:
                idf = 1e-6
            length = self._length[docs]
            total[docs] += idf * ((tfs * (K1 + 1.0)) / (tfs + K1 * (1 - B + B * length / avgdl)))
            hit[docs] = True
        if allowed is not None:
            mask = np.zeros(len(hit), bool)
            allowed = np.asarray(allowed, dtype=np.int64)
            mask[allowed[allowed < len(mask)]] = True
            hit &= mask
        ids = np.flatnonzero(hit)
        return ids.astype(np.int64), total[ids]

    def memory_bytes(self) -> int:
        return sum(d.nbytes + t.nbytes for parts in self._parts.values() for d, t in parts) + \
            self._length.nbytes + self._present.nbytes
