"""Generator weight dtype on this CPU: prefill and decode speed per dtype, side by side.

Loads each bundled model once per dtype and times, interleaved across dtypes so that drift affects
all alike: a prefill of --prompt-tokens tokens, and --decode single-token steps on its cache.
Medians of --runs rounds. It is what `GENSTACK_GENERATOR_DTYPE=auto` decides on (shared.runtime):
CPUs without native bfloat16 arithmetic emulate bf16 matmuls.

    python bench/dtype.py [--models smollm2-135m qwen2.5-0.5b] [--dtypes bfloat16 float32] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from shared.runtime import cpu_has_native_bf16, resolve_dtype  # noqa: E402


def time_once(model, prompt: torch.Tensor, decode: int) -> tuple[float, float]:
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(prompt, use_cache=True)
        prefill = time.perf_counter() - t0
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(decode):
            out = model(token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        step = (time.perf_counter() - t0) / max(1, decode)
    return prefill, step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from services.generator.core import GeneratorCore
    from services.generator.settings import GeneratorSettings

    print(f"CPU native bf16: {cpu_has_native_bf16()}; auto resolves to {resolve_dtype('auto')}; "
          f"torch threads {args.threads}; prompt {args.prompt_tokens} tokens; {args.runs} interleaved rounds")
    print(f"{'model':14} {'dtype':9} {'prefill s':>9} {'prefill tok/s':>13} {'decode ms/token':>15}")
    for name in args.models:
        loaded = {d: GeneratorCore(GeneratorSettings(dtype=d))._load(name).model for d in args.dtypes}
        prompt = torch.arange(1000, 1000 + args.prompt_tokens).unsqueeze(0)
        for model in loaded.values():  # warm-up
            time_once(model, prompt[:, :16], 2)
        times: dict[str, list[tuple[float, float]]] = {d: [] for d in args.dtypes}
        for _ in range(args.runs):
            for d, model in loaded.items():
                times[d].append(time_once(model, prompt, args.decode))
        for d in args.dtypes:
            prefill = statistics.median(t[0] for t in times[d])
            step = statistics.median(t[1] for t in times[d])
            print(f"{name:14} {d:9} {prefill:9.2f} {args.prompt_tokens / prefill:13.0f} {step * 1000:15.0f}",
                  flush=True)
        del loaded
    return 0


if __name__ == "__main__":
    sys.exit(main())
