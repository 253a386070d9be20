"""Structured output: share of valid JSON and decoding speed, constrained vs. unconstrained, side by side.

For 10 JSON Schemas of increasing difficulty and each model, every prompt is answered twice in a
row by the same engine: once with the schema as a response_format (constrained decoding) and once
without (the schema only in the prompt). Both get the same prompt and sampling settings. An
unconstrained answer counts as valid when the first JSON value found in it (code fences and chatter
skipped) validates, which is generous; a constrained answer must parse as it is. Speed is the
engine's tokens/s of each request; the ratio is the median over the pairs of constrained/unconstrained.
Compile time is the first, uncached compile of each schema per model; the tokenizer setup that
constrained decoding needs once per model is reported apart.

    python bench/structured.py [--models smollm2-135m qwen2.5-0.5b] [--prompts 2] [--tokens 96]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
os.environ.setdefault("GENSTACK_TORCH_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jsonschema  # noqa: E402

import shared  # noqa: E402,F401
from genstack.generator.v1 import generator_pb2 as pb  # noqa: E402
from services.generator.core import GeneratorCore  # noqa: E402
from services.generator.grpc_api import GeneratorApi  # noqa: E402
from shared.rpc import CallContext  # noqa: E402

NAME = {"type": "string", "minLength": 1, "maxLength": 30}
SCHEMAS: list[tuple[str, str, dict]] = [
    ("1 flat object", "a book", {
        "type": "object", "properties": {"title": NAME, "author": NAME},
        "required": ["title", "author"], "additionalProperties": False}),
    ("2 enums", "a T-shirt in a shop", {
        "type": "object", "properties": {"colour": {"enum": ["red", "green", "blue", "black"]},
                                          "size": {"enum": ["S", "M", "L", "XL"]}},
        "required": ["colour", "size"], "additionalProperties": False}),
    ("3 nested objects", "a person and where they live", {
        "type": "object", "properties": {
            "name": NAME,
            "address": {"type": "object", "properties": {"street": NAME, "city": NAME},
                        "required": ["street", "city"], "additionalProperties": False}},
        "required": ["name", "address"], "additionalProperties": False}),
    ("4 array with bounds", "a blog post's tags", {
        "type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 15},
                                                  "minItems": 2, "maxItems": 4}},
        "required": ["tags"], "additionalProperties": False}),
    ("5 numbers with ranges", "today's weather in Oslo", {
        "type": "object", "properties": {"temperature_c": {"type": "number", "minimum": -50, "maximum": 60},
                                          "humidity_pct": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["temperature_c", "humidity_pct"], "additionalProperties": False}),
    ("6 required and optional", "a film", {
        "type": "object", "properties": {"title": NAME, "year": {"type": "integer", "minimum": 1880, "maximum": 2030},
                                          "subtitle": NAME, "rating": {"type": "number", "minimum": 0, "maximum": 10}},
        "required": ["title", "year"], "additionalProperties": False}),
    ("7 string pattern", "a product in a warehouse", {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                                          "name": NAME},
        "required": ["sku", "name"], "additionalProperties": False}),
    ("8 const, boolean, anyOf", "a calendar event", {
        "type": "object", "properties": {"kind": {"const": "event"}, "public": {"type": "boolean"},
                                          "ref": {"anyOf": [{"type": "integer", "minimum": 0}, NAME]}},
        "required": ["kind", "public", "ref"], "additionalProperties": False}),
    ("9 array of objects", "a shopping list", {
        "type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {"name": NAME, "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["name", "qty"], "additionalProperties": False}}},
        "required": ["items"], "additionalProperties": False}),
    ("10 all together", "an online order", {
        "type": "object", "properties": {
            "order_id": {"type": "string", "pattern": "^ORD-[0-9]{5}$"},
            "status": {"enum": ["new", "paid", "shipped"]},
            "customer": {"type": "object", "properties": {"name": NAME, "vip": {"type": "boolean"}},
                         "required": ["name", "vip"], "additionalProperties": False},
            "lines": {"type": "array", "minItems": 1, "maxItems": 2, "items": {
                "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                                                 "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                                                 "price": {"type": "number", "minimum": 0, "maximum": 1000}},
                "required": ["sku", "qty", "price"], "additionalProperties": False}},
            "note": {"type": "string", "maxLength": 40}},
        "required": ["order_id", "status", "customer", "lines"], "additionalProperties": False}),
]
PROMPTS = [
    ("Describe {topic} as a JSON object that follows this JSON Schema, and answer with the JSON only.\n"
     "Schema: {schema}", 0.0),
    ("Here is a JSON Schema: {schema}\nWrite one example JSON object for {topic} that is valid under it.", 0.7),
    ("Make up {topic}. Reply with JSON matching {schema}", 0.0),
]


def first_json(text: str):
    """The first JSON value in a free-text answer (skipping code fences and prose), or raise ValueError."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text[i:])[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON value found")


def is_valid(value, schema: dict) -> bool:
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return v.is_valid(value)


def run_model(api: GeneratorApi, model: str, prompts: int, tokens: int, only: set[int] | None = None,
              partial: Path | None = None) -> dict:
    engine = api.core.engine(model)
    warm = pb.GenerateRequest(model=model, prompt="Hello", sampling=pb.SamplingParams(max_new_tokens=4))
    api.Generate(warm, CallContext())
    _ = engine.grammars.tokenizer  # built once per model; reported apart from the per-schema compile
    rows = []
    for number, (label, topic, schema) in enumerate(SCHEMAS, 1):
        if only and number not in only:
            continue
        schema_text = json.dumps(schema)
        row = {"schema": label, "compile_ms": None, "c_valid": 0, "u_valid": 0, "n": 0, "c_tps": [], "u_tps": [],
               "ratios": [], "c_tokens": [], "mask_ms_per_token": [], "incomplete": 0}
        for template, temperature in PROMPTS[:prompts]:
            content = template.format(topic=topic, schema=schema_text)
            sampling = pb.SamplingParams(max_new_tokens=tokens, temperature=temperature, seed=1)
            base = dict(model=model, messages=[pb.ChatMessage(role="user", content=content)], sampling=sampling)
            c = api.Generate(pb.GenerateRequest(**base, response_format=pb.ResponseFormat(json_schema=schema_text)),
                             CallContext())
            u = api.Generate(pb.GenerateRequest(**base), CallContext())
            if not c.stats.grammar_cached:
                row["compile_ms"] = c.stats.grammar_compile_ms
            complete = c.constraint_status == pb.CONSTRAINT_STATUS_COMPLETE
            try:
                c_ok = complete and is_valid(json.loads(c.text), schema)
            except ValueError:
                c_ok = False
            try:
                u_ok = is_valid(first_json(u.text), schema)
            except ValueError:
                u_ok = False
            row["n"] += 1
            row["c_valid"] += c_ok
            row["u_valid"] += u_ok
            row["incomplete"] += not complete
            row["c_tps"].append(c.stats.tokens_per_second)
            row["u_tps"].append(u.stats.tokens_per_second)
            row["ratios"].append(c.stats.tokens_per_second / u.stats.tokens_per_second)
            row["c_tokens"].append(c.stats.completion_tokens)
            row["mask_ms_per_token"].append(c.stats.mask_ms / max(1, c.stats.completion_tokens))
            if not c_ok:
                print(f"  INVALID constrained [{label}]: {c.text!r}", file=sys.stderr)
        rows.append(row)
        if partial is not None:  # a long run on a busy machine keeps what it measured so far
            partial.write_text(json.dumps({"model": model, "tokenizer_ms": engine.grammars.tokenizer_ms,
                                           "rows": rows}, indent=1))
        print(f"  {model:<13} {label:<24} valid {row['c_valid']}/{row['n']} vs {row['u_valid']}/{row['n']}  "
              f"tok/s {statistics.median(row['c_tps']):.1f} vs {statistics.median(row['u_tps']):.1f}  "
              f"compile {row['compile_ms']:.1f} ms", file=sys.stderr, flush=True)
    return {"model": model, "tokenizer_ms": engine.grammars.tokenizer_ms, "rows": rows}


def report(results: list[dict]) -> None:
    print(f"\n{'model':<13} {'schema':<24} {'valid constrained':>17} {'valid free':>10} {'tok/s c':>8} "
          f"{'tok/s free':>10} {'ratio':>6} {'mask ms/tok':>11} {'compile ms':>10}")
    for res in results:
        for r in res["rows"]:
            print(f"{res['model']:<13} {r['schema']:<24} {r['c_valid']:>8}/{r['n']:<8} {r['u_valid']:>5}/{r['n']:<4} "
                  f"{statistics.median(r['c_tps']):>8.1f} {statistics.median(r['u_tps']):>10.1f} "
                  f"{statistics.median(r['ratios']):>6.2f} {statistics.median(r['mask_ms_per_token']):>11.3f} "
                  f"{r['compile_ms']:>10.1f}")
        rows = res["rows"]
        n = sum(r["n"] for r in rows)
        ratios = [x for r in rows for x in r["ratios"]]
        compiles = [r["compile_ms"] for r in rows]
        print(f"{res['model']:<13} {'ALL':<24} {sum(r['c_valid'] for r in rows):>8}/{n:<8} "
              f"{sum(r['u_valid'] for r in rows):>5}/{n:<4} "
              f"{statistics.median([x for r in rows for x in r['c_tps']]):>8.1f} "
              f"{statistics.median([x for r in rows for x in r['u_tps']]):>10.1f} {statistics.median(ratios):>6.2f} "
              f"{statistics.median([x for r in rows for x in r['mask_ms_per_token']]):>11.3f} "
              f"{statistics.median(compiles):>10.1f}")
        print(f"{'':<13} tokenizer setup for constrained decoding (once per model): {res['tokenizer_ms']:.0f} ms; "
              f"schema compile median {statistics.median(compiles):.1f} ms, max {max(compiles):.1f} ms; "
              f"constrained incomplete (hit max_new_tokens): {sum(r['incomplete'] for r in rows)}/{n}")


def mask_speed(vocab: int = 151_665, width: int = 151_936, runs: int = 300) -> None:
    """Applying one step's bitmask to Qwen-sized logits: the engine's table lookup against a
    bit-by-bit torch unpack and llguidance's numpy helper, side by side (random mask, ~50 % allowed)."""
    import llguidance.numpy as lln
    import numpy as np
    import torch

    from services.generator.constrained import Constraint

    torch.set_num_threads(1)
    words = (vocab + 31) // 32
    packed = np.random.default_rng(0).integers(-(2**31), 2**31 - 1, size=(1, words), dtype=np.int64).astype(np.int32)

    class Fixed:  # stands in for the matcher: writes the same mask every step
        def unsafe_compute_mask_ptr(self, ptr, size):
            import ctypes

            ctypes.memmove(ptr, packed.ctypes.data, size)

    c = Constraint(Fixed(), vocab, width)
    shifts = torch.arange(32, dtype=torch.int32)
    mask_t = torch.from_numpy(packed)

    def table(logits):
        c.mask(logits)

    def bitwise(logits):  # unpack every bit with shifts, then masked_fill
        allowed = ((mask_t.view(-1, 1) >> shifts) & 1).view(-1)[:vocab].bool()
        logits[0, :vocab].masked_fill_(~allowed, float("-inf"))
        logits[0, vocab:] = float("-inf")

    def llg_numpy(logits):
        arr = logits.numpy()
        lln.apply_token_bitmask_inplace(arr[:, :vocab], packed)
        arr[:, vocab:] = -np.inf

    base = torch.randn(1, width)
    ways = (("table (engine)", table), ("bitwise torch", bitwise), ("llguidance.numpy", llg_numpy))
    results: dict[str, list[float]] = {name: [] for name, _ in ways}
    for _ in range(3):  # interleaved rounds, median of the per-round means
        for name, fn in ways:
            logits = base.clone()
            fn(logits)
            started = time.perf_counter()
            for _ in range(runs):
                fn(base.clone())
            results[name].append((time.perf_counter() - started) / runs * 1e6)
    clone = time.perf_counter()
    for _ in range(runs):
        base.clone()
    clone_us = (time.perf_counter() - clone) / runs * 1e6
    print(f"\nmask application, vocabulary {vocab:,} / logits {width:,}, 1 torch thread (us per step, "
          f"a logits copy of {clone_us:.0f} us subtracted):")
    for name, values in results.items():
        print(f"  {name:<18} {statistics.median(values) - clone_us:8.0f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    ap.add_argument("--prompts", type=int, default=2, help=f"prompts per schema (1..{len(PROMPTS)})")
    ap.add_argument("--tokens", type=int, default=96, help="max_new_tokens of every request")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    ap.add_argument("--mask-only", action="store_true", help="only time the mask application (no model)")
    ap.add_argument("--schemas", default="", help="only these schema numbers, e.g. 4-10 or 1,7,10 (default: all)")
    args = ap.parse_args()
    if args.mask_only:
        mask_speed()
        return 0
    api = GeneratorApi(GeneratorCore())
    started = time.perf_counter()
    only: set[int] = set()
    for part in filter(None, args.schemas.split(",")):
        lo, _, hi = part.partition("-")
        only.update(range(int(lo), int(hi or lo) + 1))
    partial = args.json.with_suffix(".partial.json") if args.json else None
    results = [run_model(api, m, args.prompts, args.tokens, only, partial) for m in args.models]
    report(results)
    print(f"\n{len(only) or len(SCHEMAS)} schemas x {args.prompts} prompts x {len(args.models)} models, max_new_tokens "
          f"{args.tokens}, {os.environ['GENSTACK_TORCH_THREADS']} torch thread(s); "
          f"{time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
