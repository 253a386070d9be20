"""torch threads per model process: decode speed side by side, idle and next to a busy neighbour.

Loads SmolLM2-135M once and greedy-decodes the same prompt with each thread count, interleaved
(1, 2, ..., 1, 2, ...) so that drift affects all alike; medians reported. The "busy" rows run
while a second process does matrix products with torch's default threads, as another model
server or worker on the same machine would. `auto` is what shared.runtime picks for one process.

    python bench/threads.py [--threads 1 2] [--runs 3] [--tokens 48] [--no-busy]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from shared.runtime import available_cores, default_threads  # noqa: E402

PROMPT = "Write a detailed paragraph about the history of the printing press in Europe."
NEIGHBOUR = """
import torch
a = torch.randn(384, 384)
while True:
    a = torch.tanh(a @ a)
"""


def load():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from services.generator import registry
    from shared.config import get_settings

    hf_logging.disable_progress_bar()

    _, folder = registry.resolve("smollm2-135m", get_settings().model_cache_dir, False)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16, local_files_only=True).eval()
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return model, tok, ids


def decode_rate(model, tok, ids, threads: int, tokens: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def measure(model, tok, ids, counts: list[int], runs: int, tokens: int) -> dict[int, float]:
    rates: dict[int, list[float]] = {n: [] for n in counts}
    for i in range(runs):
        for n in counts:
            rates[n].append(decode_rate(model, tok, ids, n, tokens))
            print(f"  run {i + 1}: {n} thread(s) {rates[n][-1]:.1f} tok/s (load {os.getloadavg()[0]:.1f})", flush=True)
    return {n: statistics.median(r) for n, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1..cores)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--no-busy", action="store_true", help="skip the rows with a busy neighbour process")
    args = ap.parse_args()
    cores = available_cores()
    counts = args.threads or list(range(1, cores + 1))
    auto = default_threads(1)
    print(f"cores available to this process: {cores}; auto picks {auto} thread(s) for one model process, "
          f"{default_threads(2 * cores)} for {2 * cores}", flush=True)
    model, tok, ids = load()
    decode_rate(model, tok, ids, 1, 8)  # warm-up
    rows = [("idle", measure(model, tok, ids, counts, args.runs, args.tokens))]
    if not args.no_busy:
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR])
        try:
            time.sleep(2)
            rows.append(("busy neighbour", measure(model, tok, ids, counts, args.runs, args.tokens)))
        finally:
            neighbour.kill()
            neighbour.wait()
    head = " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts)
    print(f"\n| machine state | {head} | best / {counts[-1]} threads |")
    print("| --- | " + " | ".join("---" for _ in counts) + " | --- |")
    for label, r in rows:
        best = max(r.values())
        print(f"| {label} | " + " | ".join(f"{r[n]:.1f} tok/s" for n in counts) + f" | {best / r[counts[-1]]:.2f}x |")
    print(f"\n(median of {args.runs} runs, {args.tokens} greedy tokens, SmolLM2-135M bf16, load average "
          f"{os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
