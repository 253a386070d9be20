"""Generator throughput and time to first token, side by side in one run.

For each model: direct `model.generate` (transformers, same greedy settings), the engine over the
inproc transport, and the engine over gRPC streaming to a real server process. Runs are
interleaved (direct, inproc, grpc, direct, ...) so drift affects all paths alike; medians reported.

    python bench/generator.py [--models qwen2.5-0.5b smollm2-135m] [--runs 3] [--tokens 64]

With --concurrency 1,2,4,8: the sequential engine and the continuous-batching engine side by side,
in process, over the same loaded model: N greedy chat requests submitted at once; aggregate
tokens/s, time to first token p50/p99 and inter-token latency p50/p99 (gaps between a stream's
deltas); then prefix reuse: time to first token of the answer pipeline's prompt (its system prompt,
sources, a question) cold and with the system prompt's K/V already cached.

    python bench/generator.py --concurrency 1,2,4,8 [--models smollm2-135m qwen2.5-0.5b] [--tokens 32]
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


CONCURRENT_PROMPTS = [
    "Write a paragraph about the history of the printing press in Europe.",
    "Explain how a refrigerator keeps food cold.",
    "Describe the water cycle for a ten-year-old.",
    "What are the main differences between a violin and a cello?",
    "Give three tips for learning a new language.",
    "Summarise the plot of a detective story you invent.",
    "Why do leaves change colour in autumn?",
    "How does a bicycle stay upright while moving?",
]


def _pct(values, q):
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def _burst(engine, lm, n: int, tokens: int) -> dict:
    from services.generator.engine import Delta, EngineRequest, SamplingConfig

    reqs = []
    start = time.perf_counter()
    for i in range(n):
        msgs = [{"role": "user", "content": CONCURRENT_PROMPTS[i % len(CONCURRENT_PROMPTS)]}]
        text = lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        cfg = SamplingConfig(max_new_tokens=tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                             stop=[], seed=0)
        reqs.append(engine.submit(EngineRequest(ids, cfg, lambda: False)))
    stamps: list[list[float]] = [[] for _ in reqs]
    counts = [0] * n

    def consume(i, er):
        for ev in er.events():
            if isinstance(ev, Delta):
                stamps[i].append(time.perf_counter())
            else:
                counts[i] = ev.completion_tokens

    threads = [threading.Thread(target=consume, args=(i, er)) for i, er in enumerate(reqs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    ttft = [(st[0] - start) * 1000 for st in stamps if st]
    itl = [(b - a) * 1000 for st in stamps for a, b in zip(st, st[1:], strict=False)]
    return {"tps": sum(counts) / (end - start), "ttft_p50": _pct(ttft, 50), "ttft_p99": _pct(ttft, 99),
            "itl_p50": _pct(itl, 50), "itl_p99": _pct(itl, 99), "tokens": sum(counts), "ttft": ttft, "itl": itl}


def _bursts(engine, lm, n: int, tokens: int, runs: int) -> dict:
    """`runs` bursts: the median aggregate tokens/s, latency percentiles over every stream of every run
    (one burst of one stream is a few seconds: too noisy for a ratio on its own)."""
    import statistics

    results = [_burst(engine, lm, n, tokens) for _ in range(max(1, runs))]
    ttft = [v for r in results for v in r["ttft"]]
    itl = [v for r in results for v in r["itl"]]
    return {"tps": statistics.median(r["tps"] for r in results), "ttft_p50": _pct(ttft, 50),
            "ttft_p99": _pct(ttft, 99), "itl_p50": _pct(itl, 50), "itl_p99": _pct(itl, 99)}


def _prefix_reuse(lm, runs: int) -> tuple[float, float, bool]:
    """Median TTFT of the answer prompt cold (empty prefix store) and warm (system prompt cached),
    and whether the outputs were identical."""
    from services.generator.batching import BatchingEngine, BatchLimits
    from services.generator.engine import Delta, EngineRequest, SamplingConfig
    from services.orchestrator.context import SYSTEM_PROMPT

    def prompt(q):
        sources = ("[1] The printing press with movable type was developed by Johannes Gutenberg around 1440.\n"
                   "[2] Paper reached Europe through the Islamic world in the twelfth century.")
        msgs = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Sources:\n{sources}\nUsing the sources, answer: {q}"}]
        text = lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def first(engine, ids):
        cfg = SamplingConfig(max_new_tokens=8, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                             stop=[], seed=0)
        t = time.perf_counter()
        ttft, text = None, ""
        for ev in engine.submit(EngineRequest(ids, cfg, lambda: False)).events():
            if isinstance(ev, Delta):
                ttft = ttft or (time.perf_counter() - t) * 1000
                text += ev.text
        return ttft, text

    cold, warm, same = [], [], True
    for r in range(runs):
        q = ["Who developed the printing press?", "When did paper reach Europe?", "What is movable type?"][r % 3]
        fresh = BatchingEngine(lm, BatchLimits(prefix_cache_tokens=0))
        try:
            c, text_cold = first(fresh, prompt(q))
        finally:
            fresh.close()
        cached = BatchingEngine(lm, BatchLimits(prefix_cache_tokens=4096))
        try:
            first(cached, prompt("What did Gutenberg make?"))  # another job's question fills the store
            w, text_warm = first(cached, prompt(q))
        finally:
            cached.close()
        cold.append(c)
        warm.append(w)
        same &= text_cold == text_warm
    return statistics.median(cold), statistics.median(warm), same


def concurrency(args) -> int:
    from services.generator.batching import BatchingEngine, BatchLimits
    from services.generator.core import GeneratorCore
    from services.generator.engine import Engine

    levels = [int(x) for x in args.concurrency.split(",")]
    core = GeneratorCore()
    print(f"\ngenerator concurrency: greedy, {args.tokens} new tokens per stream, median tokens/s of "
          f"{args.runs} bursts per row, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs (machine shared with other work)", flush=True)
    header = (f"{'model':<14} {'engine':<10} {'N':>2} {'tok/s':>7} {'x N=1':>6} {'TTFT p50':>9} {'p99':>7} "
              f"{'ITL p50':>8} {'p99':>7} {'ITL x N=1':>9}")
    print(header, flush=True)
    for model in args.models:
        lm = core._load(model)
        engines = {"sequential": Engine(lm, 64), "batching": BatchingEngine(lm, BatchLimits(max_batch_size=8))}
        try:
            _burst(engines["batching"], lm, 1, 4)  # warm up
            base = {}
            for n in levels:
                for name, engine in engines.items():
                    r = _bursts(engine, lm, n, args.tokens, args.runs)
                    base.setdefault(name, r)
                    print(f"{model:<14} {name:<10} {n:>2} {r['tps']:>7.2f} {r['tps'] / base[name]['tps']:>6.2f} "
                          f"{r['ttft_p50']:>9.0f} {r['ttft_p99']:>7.0f} {r['itl_p50']:>8.0f} {r['itl_p99']:>7.0f} "
                          f"{r['itl_p50'] / base[name]['itl_p50']:>9.2f}", flush=True)
        finally:
            for e in engines.values():
                e.close()
        cold, warm, same = _prefix_reuse(lm, args.runs)
        print(f"{model:<14} prefix reuse, answer prompt: TTFT cold {cold:.0f} ms, warm {warm:.0f} ms "
              f"({warm / cold:.2f} of cold); identical output: {same}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["qwen2.5-0.5b", "smollm2-135m"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="", help="e.g. 1,2,4,8: sequential vs batching engine, in process")
    args = ap.parse_args()
    if args.concurrency:
        return concurrency(args)

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
