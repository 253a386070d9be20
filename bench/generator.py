"""Generator throughput and time to first token, side by side in one run.

For each model: direct `model.generate` (transformers, same greedy settings), the engine over the
inproc transport, and the engine over gRPC streaming to a real server process. Runs are
interleaved (direct, inproc, grpc, direct, ...) so drift affects all paths alike; medians reported.

    python bench/generator.py [--models qwen2.5-0.5b smollm2-135m] [--runs 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

import shared  # noqa: E402,F401
from genstack.generator.v1 import generator_pb2 as pb  # noqa: E402
from shared.clients.generator import GeneratorClient  # noqa: E402
from tests.support import ServiceProcess  # noqa: E402

PROMPT = "Write a detailed paragraph about the history of the printing press in Europe."


class FirstTokenTimer(BaseStreamer):
    def __init__(self):
        self.calls = 0
        self.first_at = None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first_at is None:  # call 1 is the prompt itself
            self.first_at = time.perf_counter()

    def end(self):
        pass


def direct(core, model_name: str, tokens: int) -> tuple[float, float, int]:
    lm = core.engine(model_name).loaded
    msgs = [{"role": "user", "content": PROMPT}]
    text = lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    timer = FirstTokenTimer()
    start = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(ids, max_new_tokens=tokens, do_sample=False, streamer=timer,
                                eos_token_id=list(lm.eos_ids), pad_token_id=lm.tokenizer.eos_token_id)
    end = time.perf_counter()
    n = out.shape[1] - ids.shape[1]
    return (timer.first_at - start) * 1000, (n - 1) / (end - timer.first_at), n


def via_client(client: GeneratorClient, model_name: str, tokens: int) -> tuple[float, float, int]:
    request = pb.GenerateStreamRequest(model=model_name, messages=[pb.ChatMessage(role="user", content=PROMPT)],
                                       sampling=pb.SamplingParams(max_new_tokens=tokens, temperature=0))
    start = time.perf_counter()
    first = None
    final = None
    for msg in client.generate_stream(request, timeout=600):
        if first is None and msg.delta:
            first = time.perf_counter()
        final = msg
    end = time.perf_counter()
    n = final.stats.completion_tokens
    # client-side view: first delta to last message, like the direct path
    return (first - start) * 1000, (n - 1) / (end - first), n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["qwen2.5-0.5b", "smollm2-135m"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()

    os.environ["GENSTACK_GENERATOR_PRELOAD"] = '["' + '","'.join(args.models) + '"]'
    inproc = GeneratorClient("inproc")
    core = inproc._inproc().core
    server = ServiceProcess("generator", "grpc").start()
    grpc_client = GeneratorClient("grpc", address=server.address)
    rows = []
    try:
        for model in args.models:
            results = {"direct": [], "inproc": [], "grpc": []}
            via_client(inproc, model, 4)  # warm caches on both sides
            via_client(grpc_client, model, 4)
            for _ in range(args.runs):
                results["direct"].append(direct(core, model, args.tokens))
                results["inproc"].append(via_client(inproc, model, args.tokens))
                results["grpc"].append(via_client(grpc_client, model, args.tokens))
            base = statistics.median(r[1] for r in results["direct"])
            for path, rs in results.items():
                tps = statistics.median(r[1] for r in rs)
                rows.append((model, path, statistics.median(r[0] for r in rs), tps, tps / base, rs[0][2]))
    finally:
        grpc_client.close()
        server.stop()
        inproc.close()

    print(f"\ngenerator benchmark: {args.runs} runs, greedy, {args.tokens} max new tokens, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs")
    print(f"{'model':<14} {'path':<8} {'TTFT ms':>9} {'tok/s':>8} {'vs direct':>10} {'tokens':>7}")
    for model, path, ttft, tps, ratio, n in rows:
        print(f"{model:<14} {path:<8} {ttft:>9.0f} {tps:>8.2f} {ratio:>9.1%} {n:>7}")
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda a: None
    sys.exit(main())
