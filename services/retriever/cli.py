"""`genstack ingest PATH...`, `genstack search "query"` and `genstack collections`.

`ingest` walks files and folders, sends the supported files (plain text, Markdown, HTML, PDF) in
batches with a progress bar, and says exactly what was written if a batch is refused. `search`
prints the hits with their scores and sources. Both use the configured transport (inproc by
default: the embedded store in GENSTACK_DATA_DIR, no server needed) or --transport.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from shared.timefmt import iso_utc

EXTENSIONS = {
    ".txt": "text/plain", ".text": "text/plain", ".md": "text/markdown", ".markdown": "text/markdown",
    ".html": "text/html", ".htm": "text/html", ".pdf": "application/pdf",
}
_WHERE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|>|<|:in=|=)\s*(?P<value>.*)$")
_BAD_DOC = re.compile(r"^documents\[(\d+)\]")


def register(sub) -> None:
    from services.retriever import embed_cli

    embed_cli.register_embed(sub)  # genstack embed
    p = sub.add_parser("ingest", help="ingest files and folders into a retriever collection")
    p.add_argument("paths", nargs="+", type=Path, help="files or folders (folders are walked recursively)")
    p.add_argument("--collection", "-c", default="default", help="target collection (default: default)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata for every file")
    p.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: the service's)")
    p.add_argument("--chunk-overlap", type=int, default=None, help="tokens shared by consecutive chunks")
    p.add_argument("--batch", type=int, default=16, help="files per request (default 16)")
    p.add_argument("--keep-going", action="store_true", help="skip files the service refuses instead of stopping")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show the progress bar (default: when stderr is a terminal)")
    p.add_argument("--queued", action="store_true",
                   help="send everything as one retriever.ingest task (all or nothing, progress per chunk)")
    p.add_argument("--json", action="store_true",
                   help="print the outcome as one JSON object (progress as JSON lines on stderr)")
    _common(p)
    p.set_defaults(func=run_ingest)

    p = sub.add_parser("search", help="search a retriever collection")
    p.add_argument("query", help="the query text")
    p.add_argument("--collection", "-c", default="default", help="collection (default: default)")
    p.add_argument("--top-k", "-k", type=int, default=None, help="number of hits (default: the service's)")
    p.add_argument("--mode", choices=["hybrid", "vector", "keyword"], default="hybrid",
                   help="hybrid (default): vector and BM25 scores fused by --alpha; vector; keyword (BM25)")
    p.add_argument("--alpha", type=float, default=None, help="hybrid weight: 1 = vector only, 0 = keyword only")
    p.add_argument("--where", action="append", default=[], metavar="COND",
                   help="metadata filter: key=value, key:in=a,b, key>=N, key<DATE (repeatable; all must hold)")
    p.add_argument("--min-score", type=float, default=None, help="drop hits scoring below this")
    p.add_argument("--mmr", type=float, nargs="?", const=0.5, default=None, metavar="LAMBDA",
                   help="diversify with MMR (lambda 0..1, default 0.5)")
    p.add_argument("--full", action="store_true", help="print whole chunks instead of a preview")
    p.add_argument("--json", action="store_true", help="print the SearchResponse as JSON")
    _common(p)
    p.set_defaults(func=run_search)

    p = sub.add_parser("collections", help="list retriever collections with their counts (or delete one)")
    p.add_argument("--json", action="store_true", help="print the ListCollectionsResponse as JSON")
    _common(p)
    p.set_defaults(func=run_collections)
    actions = p.add_subparsers(dest="collections_cmd", required=False, metavar="ACTION")
    d = actions.add_parser("delete", help="delete a collection and every chunk in it")
    d.add_argument("collection", help="the collection to delete")
    d.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    d.add_argument("--json", action="store_true", help="print the DeleteCollectionResponse as JSON")
    _common(d)
    d.set_defaults(func=run_delete_collection)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport", choices=["inproc", "grpc", "celery"], default=None,
                   help="how to reach the retriever (default: GENSTACK_TRANSPORT, inproc = embedded store, no server)")
    p.add_argument("--timeout", type=float, default=None, help="deadline per request in seconds")


# -- ingest --------------------------------------------------------------------------------------------


@dataclass
class _File:
    path: Path
    display: str
    content_type: str
    size: int


def find_files(paths: list[Path]) -> tuple[list[_File], list[Path]]:
    """Supported files under `paths` (sorted, each once) and the files skipped for their type."""
    found: dict[Path, _File] = {}
    skipped: list[Path] = []
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in candidates:
            if root.is_dir() and any(part.startswith(".") for part in path.relative_to(root).parts):
                continue  # hidden files and folders (.git, .venv, ...)
            content_type = EXTENSIONS.get(path.suffix.lower())
            if content_type is None:
                skipped.append(path)
                continue
            resolved = path.resolve()
            if resolved not in found:
                relative = os.path.relpath(resolved)
                display = str(resolved) if relative.startswith("..") else relative
                found[resolved] = _File(resolved, Path(display).as_posix(), content_type, path.stat().st_size)
    return list(found.values()), skipped


def _document(pb, f: _File, extra: dict[str, str]):
    data = f.path.read_bytes()
    meta = {
        "filename": f.path.name,
        "extension": f.path.suffix.lower().lstrip("."),
        "modified": iso_utc(f.path.stat().st_mtime, "seconds"),
        **extra,
    }
    return pb.Document(id=f.display, data=data, content_type=f.content_type, metadata=meta, source=f.display)


def _batches(files: list[_File], count: int, max_bytes: int):
    batch, size = [], 0
    for f in files:
        if batch and (len(batch) >= count or size + f.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += f.size
    if batch:
        yield batch


def _parse_meta(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--meta expects KEY=VALUE (got {item!r})")
        out[key.strip()] = value
    return out


def run_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from genstack.retriever.v1 import retriever_pb2 as pb
    from shared.clients.retriever import RetrieverClient
    from shared.errors import InvalidArgument

    files, skipped = find_files(args.paths)
    extra = _parse_meta(args.meta)
    if not files:
        print(f"no supported files found ({', '.join(sorted(EXTENSIONS))}); {len(skipped)} skipped", file=sys.stderr)
        return 1
    chunking = pb.ChunkingOptions()
    if args.chunk_size is not None:
        chunking.chunk_size_tokens = args.chunk_size
    if args.chunk_overlap is not None:
        chunking.chunk_overlap_tokens = args.chunk_overlap

    from shared import progress as reporter

    written_files, written_chunks, refused = 0, 0, []
    with RetrieverClient(args.transport) as client:
        # a request stays well under the gRPC message limit
        max_bytes = max(1, client.settings.grpc_max_message_bytes // 2)
        quiet = getattr(args, "quiet", False)
        show_bar = (sys.stderr.isatty() if args.progress is None else args.progress) and not quiet
        bar = tqdm(total=len(files), unit="file", desc=f"ingest → {args.collection}", file=sys.stderr,
                   disable=not show_bar)
        last_line = [0.0, ""]

        def progress(p):
            stage = pb.IngestStage.Name(p.stage).removeprefix("INGEST_STAGE_").lower()
            text = f"{stage} {p.done}/{p.total}" + (" chunks" if stage in ("embedding", "writing") else "")
            bar.set_postfix_str(text)
            now = time.monotonic()
            # without a bar: a line per stage and at most one a second within one
            new_stage = not last_line[1].startswith(stage)
            if not show_bar and text != last_line[1] and (new_stage or now - last_line[0] >= 1 or p.done == p.total):
                last_line[:] = [now, text]
                reporter.report(f"ingest → {args.collection}: {text}", stage=stage, done=p.done, total=p.total)

        if args.queued:

            request = pb.IngestDocumentsRequest(collection=args.collection, chunking=chunking,
                                                documents=[_document(pb, f, extra) for f in files])
            try:
                response = client.ingest_large(request, timeout=args.timeout, on_progress=progress)
                bar.update(len(files))
            finally:
                bar.close()
            written_files, written_chunks = len(response.documents), response.chunks_written
        else:
            for batch in _batches(files, max(1, args.batch), max_bytes):
                pending = list(batch)
                while pending:
                    request = pb.IngestDocumentsRequest(collection=args.collection, chunking=chunking,
                                                        documents=[_document(pb, f, extra) for f in pending])
                    try:
                        if client.transport == "inproc":  # same all-or-nothing call, with its progress
                            response = client.ingest_large(request, timeout=args.timeout, on_progress=progress)
                        else:
                            response = client.ingest_documents(request, timeout=args.timeout)
                    except InvalidArgument as exc:
                        m = _BAD_DOC.match(exc.message)
                        bad = pending[int(m.group(1))] if m and int(m.group(1)) < len(pending) else None
                        if bad is None or not args.keep_going:
                            bar.close()
                            where = f" ({bad.display})" if bad else ""
                            print(f"error: the service refused a batch{where}: {exc.message}", file=sys.stderr)
                            print(f"written before the error: {written_files} files, {written_chunks} chunks; "
                                  "nothing of the refused batch", file=sys.stderr)
                            return 2
                        refused.append((bad.display, exc.message))
                        pending.remove(bad)
                        bar.update(1)
                        continue
                    written_files += len(response.documents)
                    written_chunks += response.chunks_written
                    bar.update(len(pending))
                    bar.set_postfix_str(f"{written_chunks} chunks")
                    if not show_bar:
                        done = written_files + len(refused)
                        reporter.report(f"ingest → {args.collection}: {done}/{len(files)} files, {written_chunks} "
                                        "chunks written", files=done, total=len(files), chunks=written_chunks)
                    pending = []
            bar.close()
    if args.json:
        print(json.dumps({"collection": args.collection, "files": written_files, "chunks": written_chunks,
                          "skipped": [str(p) for p in skipped],
                          "refused": [{"file": d, "error": m} for d, m in refused]}))
        return 0 if not refused else 3
    print(f"ingested {written_files} files as {written_chunks} chunks into {args.collection!r}"
          + (f"; {len(skipped)} files of other types skipped" if skipped else ""))
    for display, message in refused:
        print(f"refused {display}: {message}", file=sys.stderr)
    return 0 if not refused else 3


# -- search --------------------------------------------------------------------------------------------


def parse_where(cond: str, pb):
    """One --where condition as a MetadataFilter."""
    m = _WHERE.match(cond.strip())
    if not m:
        raise SystemExit(f"--where expects key=value, key:in=a,b or key>=/>/<=/< bound (got {cond!r})")
    key, op, value = m.group("key"), m.group("op"), m.group("value").strip()
    if op == "=":
        return pb.MetadataFilter(key=key, equals=value)
    if op == ":in=":
        return pb.MetadataFilter(key=key, any_of=pb.StringList(values=[v.strip() for v in value.split(",")]))
    field = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}[op]
    try:
        number = float(value)
    except ValueError:
        return pb.MetadataFilter(key=key, date_range=pb.DateRange(**{field: value}))
    return pb.MetadataFilter(key=key, number_range=pb.NumberRange(**{field: number}))


def build_search(args: argparse.Namespace, pb):
    request = pb.SearchRequest(
        collection=args.collection, query=args.query,
        mode={"hybrid": pb.SEARCH_MODE_HYBRID, "vector": pb.SEARCH_MODE_VECTOR,
              "keyword": pb.SEARCH_MODE_KEYWORD}[args.mode],
        filters=[parse_where(c, pb) for c in args.where],
    )
    if args.top_k is not None:
        request.top_k = args.top_k
    if args.alpha is not None:
        request.alpha = args.alpha
    if args.min_score is not None:
        request.min_score = args.min_score
    if args.mmr is not None:
        request.mmr.lambda_mult = args.mmr
    return request


def format_hit(rank: int, hit, full: bool = False) -> str:
    scores = f"score {hit.score:.4f}"
    parts = []
    if hit.HasField("vector_score"):
        parts.append(f"vector {hit.vector_score:.4f}")
    if hit.HasField("keyword_score"):
        parts.append(f"keyword {hit.keyword_score:.4f}")
    if len(parts) == 2:  # hybrid: show what each side contributed
        scores += f" ({', '.join(parts)})"
    elif parts:
        scores += f" ({parts[0].split()[0]})"
    where = hit.source or hit.document_id
    loc = [f"chars {hit.start_offset}-{hit.end_offset}"]
    if hit.page:
        loc.insert(0, f"page {hit.page}")
    head = f"{rank}. {where} [{', '.join(loc)}]  {scores}"
    lines = [head]
    if hit.section:
        lines.append(f"   § {hit.section}")
    text = " ".join(hit.text.split())
    if not full and len(text) > 300:
        text = text[:297] + "..."
    lines.extend(textwrap.wrap(text, width=100, initial_indent="   ", subsequent_indent="   "))
    return "\n".join(lines)


def run_search(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from genstack.retriever.v1 import retriever_pb2 as pb
    from shared.clients.retriever import RetrieverClient

    with RetrieverClient(args.transport) as client:
        response = client.search(build_search(args, pb), timeout=args.timeout)
    if args.json:
        print(json.dumps(json_format.MessageToDict(response), indent=2, ensure_ascii=False))
        return 0
    if not response.hits:
        print("no hits")
        return 0
    print("\n\n".join(format_hit(i, h, args.full) for i, h in enumerate(response.hits, start=1)))
    return 0


def run_delete_collection(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from genstack.retriever.v1 import retriever_pb2 as pb
    from shared.clients.retriever import RetrieverClient

    if not args.yes:
        if not sys.stdin.isatty():
            raise SystemExit(f"deleting {args.collection!r} cannot be undone: pass --yes to confirm")
        answer = input(f"delete collection {args.collection!r} and all its chunks? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    with RetrieverClient(args.transport) as client:
        response = client.delete_collection(pb.DeleteCollectionRequest(collection=args.collection),
                                            timeout=args.timeout)
    if args.json:
        print(json.dumps(json_format.MessageToDict(response, always_print_fields_with_no_presence=True), indent=2))
    else:
        print(f"deleted collection {args.collection!r}: {response.documents_deleted} documents, "
              f"{response.chunks_deleted} chunks")
    return 0


def run_collections(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from shared.clients.retriever import RetrieverClient

    with RetrieverClient(args.transport) as client:
        response = client.list_collections(timeout=args.timeout)
    if args.json:
        print(json.dumps(json_format.MessageToDict(response), indent=2))
        return 0
    if not response.collections:
        print("no collections")
    for c in response.collections:
        print(f"{c.name}\t{c.document_count} documents\t{c.chunk_count} chunks\t{c.embedding_model} ({c.dimension}-d)"
              f"\t{c.backend}")
    return 0
