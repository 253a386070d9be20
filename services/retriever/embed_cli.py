"""`genstack embed "a" "b" ...`: embed texts with the retriever's model and print their cosine
similarity matrix. Registered from services/retriever/cli.py."""

from __future__ import annotations

import argparse
import json


def register_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed texts with the retriever's model and print their cosine similarities")
    p.add_argument("texts", nargs="+", help="the texts to compare")
    p.add_argument("--vectors", action="store_true", help="also print the first values of each vector")
    p.add_argument("--json", action="store_true", help="print the EmbedResponse as JSON (with the full vectors)")
    p.add_argument("--transport", choices=["inproc", "grpc", "celery"], default=None,
                   help="how to reach the retriever (default: GENSTACK_TRANSPORT, inproc = embedded)")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.set_defaults(func=run_embed)


def _label(text: str, width: int = 24) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def similarity_table(texts: list[str], vectors) -> str:
    """Cosine similarities of unit vectors (their dot products), one row and column per text."""
    import numpy as np

    m = np.asarray(vectors, dtype=np.float64)
    sims = m @ m.T
    labels = [f"[{i}] {_label(t)}" for i, t in enumerate(texts)]
    width = max(len(s) for s in labels)
    rows = [" " * width + "".join(f"{f'[{j}]':>8}" for j in range(len(texts)))]
    for i, label in enumerate(labels):
        rows.append(f"{label:<{width}}" + "".join(f"{sims[i, j]:>8.3f}" for j in range(len(texts))))
    return "\n".join(rows)


def run_embed(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from genstack.retriever.v1 import retriever_pb2 as pb
    from shared.clients.retriever import RetrieverClient

    with RetrieverClient(args.transport) as client:
        resp = client.embed(pb.EmbedRequest(texts=args.texts), timeout=args.timeout)
    if args.json:
        print(json.dumps(json_format.MessageToDict(resp), ensure_ascii=False))
        return 0
    vectors = [list(e.values) for e in resp.embeddings]
    print(similarity_table(args.texts, vectors))
    notes = [f"[{i}] truncated to {resp.max_tokens} tokens (of {e.tokens})"
             for i, e in enumerate(resp.embeddings) if e.truncated]
    print(f"\ncosine similarity · model {resp.model} · {resp.dimension} dimensions"
          + ("".join(f"\n{n}" for n in notes)))
    if args.vectors:
        for i, v in enumerate(vectors):
            print(f"[{i}] " + " ".join(f"{x:+.4f}" for x in v[:8]) + " …")
    return 0
