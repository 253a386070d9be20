"""`genstack demo` / `make demo`: the main job on the embedded defaults, offline.

For now: a streamed generation with the default model, through the inproc transport.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(args: argparse.Namespace) -> int:
    from genstack.generator.v1 import generator_pb2 as pb
    from shared.clients.generator import GeneratorClient

    question = "In two sentences: why do retrieval-augmented generation systems cite their sources?"
    print(f"genstack demo (embedded, offline)\n> {question}\n", flush=True)
    started = time.perf_counter()
    with GeneratorClient("inproc") as client:
        request = pb.GenerateStreamRequest(
            model=args.model or "",
            messages=[pb.ChatMessage(role="user", content=question)],
            sampling=pb.SamplingParams(max_new_tokens=96, temperature=0.3, seed=7),
        )
        final = None
        for msg in client.generate_stream(request):
            sys.stdout.write(msg.delta)
            sys.stdout.flush()
            final = msg
    s = final.stats
    print(
        f"\n\n[{final.model}: {s.completion_tokens} tokens at {s.tokens_per_second:.1f} tok/s, "
        f"first token after {s.time_to_first_token_ms:.0f} ms; total {time.perf_counter() - started:.1f} s "
        "including model load]"
    )
    return 0
