"""How often greedy output in a batch differs from the same request alone (continuous batching).

Runs N prompts alone and then in batches of 8 through the batching engine, in the given dtype,
and counts prompts whose greedy completions differ and the first token where they do.

    python bench/batch_agreement.py [--prompts 100] [--tokens 16] [--dtype bfloat16] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shared  # noqa: E402,F401

SUBJECTS = ["the moon", "bread", "rivers", "a violin", "winter", "bees", "trains", "volcanoes", "tea", "glass",
            "maps", "owls", "salt", "bridges", "clocks", "coral", "paper", "wind", "chess", "copper"]
FORMS = ["Tell me one fact about {}.", "Write a sentence about {}.", "Why is {} interesting?",
         "Describe {} in a few words.", "What is {} made of?"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    from services.generator.batching import BatchingEngine, BatchLimits
    from services.generator.core import GeneratorCore
    from services.generator.engine import EngineRequest, SamplingConfig
    from services.generator.settings import GeneratorSettings

    lm = GeneratorCore(GeneratorSettings(dtype=args.dtype))._load(args.model)
    prompts = [FORMS[i % len(FORMS)].format(SUBJECTS[(i // len(FORMS)) % len(SUBJECTS)]) for i in range(args.prompts)]
    cfg = SamplingConfig(max_new_tokens=args.tokens, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                         stop=[], seed=0, logprobs=True)
    engine = BatchingEngine(lm, BatchLimits(max_batch_size=8, prefix_cache_tokens=0))

    def ids(p):
        text = lm.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                tokenize=False)
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokens(er):
        out = []
        for ev in er.events():
            out.extend(t.token_id for t in ev.tokens)
        return out

    alone = [tokens(engine.submit(EngineRequest(ids(p), cfg, lambda: False))) for p in prompts]
    together = []
    for i in range(0, len(prompts), 8):
        ers = [engine.submit(EngineRequest(ids(p), cfg, lambda: False)) for p in prompts[i : i + 8]]
        together += [tokens(er) for er in ers]
    engine.close()
    differ = [(i, next((k for k, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), min(len(x), len(y))))
              for i, (x, y) in enumerate(zip(alone, together, strict=True)) if x != y]
    print(f"{args.model} {args.dtype}: {len(differ)} of {len(prompts)} prompts differ between alone and a batch of 8 "
          f"({args.tokens} greedy tokens); first differing token index: {[k for _, k in differ]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
