"""Constrained decoding: a response format (JSON Schema, regular expression or list of choices)
becomes an llguidance grammar, compiled once per model and format, and every request gets its own
matcher that masks the logits before sampling and consumes the sampled token after.

The token mask arrives as a packed bitmask (one bit per vocabulary entry, 32 per int32). It is
expanded with plain torch ops: each mask byte indexes a 256 x 8 table of additive biases (0 for an
allowed token, -inf otherwise), so one `index_select` and one `add_` mask the logits: about 3.5x
faster than a bit-by-bit torch unpack on Qwen's 151,936 logits (`bench/structured.py --mask-only`).
llguidance's own `llguidance.torch` helper is not used: it is `torch.compile`-wrapped and its first
call needs a C compiler and half a minute.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from shared.errors import InvalidArgument

log = logging.getLogger(__name__)

JSON_SCHEMA, REGEX, CHOICES = "json_schema", "regex", "choices"
MAX_SCHEMA_CHARS = 64 * 1024
MAX_REGEX_CHARS = 8 * 1024
MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1024
FIELD = {JSON_SCHEMA: "response_format.json_schema", REGEX: "response_format.regex",
         CHOICES: "response_format.choices"}

#: JSON layout unless the schema has "x-guidance" settings of its own: one line with ", " and ": " separators.
#: llguidance otherwise allows any whitespace, and small models then spend a third of max_new_tokens on
#: newlines and indentation (a pretty-printed answer to the benchmark's schema 10 ran out of its 96 tokens).
COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")


@dataclass(frozen=True)
class ResponseFormat:
    """A request's response format in plain Python. `value` is the schema text, the regex, or a
    tuple of choices."""

    kind: str
    value: str | tuple[str, ...]

    def check(self) -> None:
        """Checks that need no model: sizes, JSON syntax, a schema that is a schema."""
        field = FIELD[self.kind]
        if self.kind == JSON_SCHEMA:
            text = self.value
            if not text.strip():
                raise InvalidArgument("must be a JSON Schema as JSON text (got an empty string)", field=field)
            if len(text) > MAX_SCHEMA_CHARS:
                raise InvalidArgument(f"must be at most {MAX_SCHEMA_CHARS} characters (got {len(text)})", field=field)
            try:
                schema = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"is not valid JSON: {exc}", field=field) from None
            if not isinstance(schema, dict | bool):
                raise InvalidArgument(f"must be a JSON object (a schema), got {type(schema).__name__}", field=field)
            _check_schema(schema, field)
        elif self.kind == REGEX:
            if not self.value:
                raise InvalidArgument("must be a non-empty regular expression", field=field)
            if len(self.value) > MAX_REGEX_CHARS:
                raise InvalidArgument(f"must be at most {MAX_REGEX_CHARS} characters (got {len(self.value)})",
                                      field=field)
        else:
            values = self.value
            if not 1 <= len(values) <= MAX_CHOICES:
                raise InvalidArgument(f"must list 1 to {MAX_CHOICES} choices (got {len(values)})", field=field)
            for i, v in enumerate(values):
                if not v or len(v) > MAX_CHOICE_CHARS:
                    raise InvalidArgument(f"must be 1 to {MAX_CHOICE_CHARS} characters (got {len(v)})",
                                          field=f"{field}[{i}]")

    def grammar(self) -> str:
        """The llguidance grammar (its JSON form) for this format."""
        import llguidance

        if self.kind == JSON_SCHEMA:
            schema = json.loads(self.value)
            own = isinstance(schema, dict) and isinstance(schema.get("x-guidance"), dict)
            return llguidance.LLMatcher.grammar_from_json_schema(self.value, defaults=None if own else COMPACT_JSON)
        if self.kind == REGEX:
            return llguidance.LLMatcher.grammar_from_regex(self.value)
        # Lark string literals take JSON-style escapes, so json.dumps quotes any choice safely.
        return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(v) for v in self.value))


def _check_schema(schema: dict | bool, field: str) -> None:
    """Reject what is not a JSON Schema at all (e.g. {"type": "strin"}) with jsonschema's own
    message, before the engine sees it."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise InvalidArgument(f"is not a valid JSON Schema{f' at {where}' if where else ''}: {exc.message}",
                              field=field) from None


def compile_error(fmt: ResponseFormat, message: str) -> InvalidArgument:
    """An engine error message turned into INVALID_ARGUMENT naming the keyword or the problem."""
    field = FIELD[fmt.kind]
    message = message.strip()
    m = _UNIMPLEMENTED.search(message)
    if m:
        keys = [k.strip().strip('"') for k in m.group(1).split(",") if k.strip()]
        names = ", ".join(f'"{k}"' for k in keys)
        plural = "s" if len(keys) > 1 else ""
        return InvalidArgument(f"unsupported JSON Schema keyword{plural} {names} (constrained decoding supports "
                               "type, properties, required, items, enum, const, anyOf, oneOf, allOf, $ref, pattern, "
                               "format, min/max bounds and lengths)", field=field)
    if len(message) > 600:
        message = message[:600] + " …"
    what = "regular expression does not compile" if fmt.kind == REGEX else "cannot be compiled"
    return InvalidArgument(f"{what}: {message}", field=field)


@dataclass
class Compiled:
    matcher: object  # llguidance.LLMatcher in its initial state; copied per request
    compile_ms: float


class GrammarCache:
    """Per model: the llguidance tokenizer (built on first use) and an LRU of compiled formats."""

    def __init__(self, hf_tokenizer, eos_ids: frozenset[int], logits_width: int, max_entries: int = 64):
        self._hf = hf_tokenizer
        self._eos = sorted(eos_ids)
        self.logits_width = logits_width
        self.max_entries = max_entries
        self._tokenizer = None
        self.tokenizer_ms = 0.0
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._entries: OrderedDict[ResponseFormat, Compiled] = OrderedDict()
        self._compiling: dict[ResponseFormat, threading.Lock] = {}

    @property
    def tokenizer(self):
        with self._tokenizer_lock:  # its own lock: cache hits do not wait for the 1-3 s this takes
            if self._tokenizer is None:
                import llguidance.hf

                started = time.perf_counter()
                # every end-of-sequence id the engine stops on counts as EOS for the grammar too
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf, eos_token=self._eos or None)
                self.tokenizer_ms = (time.perf_counter() - started) * 1000
                log.info("constrained decoding ready", extra={"fields": {"tokenizer_ms": round(self.tokenizer_ms)}})
            return self._tokenizer

    def get(self, fmt: ResponseFormat) -> tuple[Compiled, bool]:
        """The compiled format and whether it came from the cache; INVALID_ARGUMENT if it cannot compile."""
        with self._lock:
            hit = self._entries.get(fmt)
            if hit is not None:
                self._entries.move_to_end(fmt)
                return hit, True
            lock = self._compiling.setdefault(fmt, threading.Lock())
        with lock:  # one compile per format; others wait for it instead of compiling it again
            with self._lock:
                hit = self._entries.get(fmt)
                if hit is not None:
                    return hit, True
            try:
                compiled = self._compile(fmt)
            except BaseException:
                with self._lock:
                    self._compiling.pop(fmt, None)
                raise
            with self._lock:  # cached before the lock goes, so no one compiles it a second time
                self._entries[fmt] = compiled
                self._compiling.pop(fmt, None)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return compiled, False

    def _compile(self, fmt: ResponseFormat) -> Compiled:
        import llguidance

        tokenizer = self.tokenizer
        started = time.perf_counter()
        try:
            grammar = fmt.grammar()
        except ValueError as exc:
            raise compile_error(fmt, str(exc)) from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            raise compile_error(fmt, messages[0] if messages else "unknown error")
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise compile_error(fmt, matcher.get_error())
        # a format that admits no first token can never produce output: say so now, not after max_new_tokens
        probe = Constraint(matcher.deep_copy(), tokenizer.vocab_size, self.logits_width)
        if not probe.fill() and not matcher.is_accepting():
            raise InvalidArgument("admits no output at all (the schema or pattern is unsatisfiable)",
                                  field=FIELD[fmt.kind])
        return Compiled(matcher, (time.perf_counter() - started) * 1000)

    def constraint(self, fmt: ResponseFormat) -> tuple[Constraint, float, bool]:
        """A fresh per-request constraint, the compile time and whether the grammar was cached."""
        compiled, cached = self.get(fmt)
        return (Constraint(compiled.matcher.deep_copy(), self.tokenizer.vocab_size, self.logits_width),
                0.0 if cached else compiled.compile_ms, cached)


def _bias_table() -> torch.Tensor:
    """256 x 8 float table: row b holds, for bit j of byte b, 0 if set and -inf if not."""
    bits = (torch.arange(256, dtype=torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1
    return torch.where(bits.bool(), 0.0, float("-inf")).to(torch.float32)


_TABLE = _bias_table()


class Constraint:
    """One request's matcher plus the buffers that turn its bitmask into a logits bias.

    Use: `mask(logits)` before sampling (False when no token is allowed), then `consume(token)`.
    The vocabulary of the tokenizer may be narrower than the model's logits (Qwen2.5: 151,665
    tokens, 151,936 logits): the extra logits are always masked out.
    """

    def __init__(self, matcher, vocab_size: int, logits_width: int):
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.logits_width = max(logits_width, vocab_size)
        words = (vocab_size + 31) // 32
        self._bitmask = np.full((1, words), -1, dtype=np.int32)
        self._bytes = torch.from_numpy(self._bitmask).view(-1).view(torch.uint8)  # shares memory
        self._index = torch.empty(words * 4, dtype=torch.int64)
        self._bias = torch.empty(words * 4, 8, dtype=torch.float32)
        self.mask_ms = 0.0
        self.steps = 0

    def fill(self) -> bool:
        """Compute the next-token bitmask; False when it allows nothing."""
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask(self.matcher, self._bitmask)
        return bool(self._bitmask.any())

    def mask(self, logits: torch.Tensor) -> bool:
        """Mask `logits` (1 x width, float32) in place. False when no token is allowed."""
        started = time.perf_counter()
        allowed = self.fill()
        if allowed:
            self._index.copy_(self._bytes)
            torch.index_select(_TABLE, 0, self._index, out=self._bias)
            v = min(self.vocab_size, logits.shape[-1])
            logits[0, :v].add_(self._bias.view(-1)[:v])
            if logits.shape[-1] > v:
                logits[0, v:] = float("-inf")
        self.mask_ms += (time.perf_counter() - started) * 1000
        self.steps += 1
        return allowed

    def consume(self, token_id: int) -> bool:
        """Advance past the sampled token; False if the matcher refused it (it then stays in error)."""
        return bool(self.matcher.consume_token(token_id))

    @property
    def accepting(self) -> bool:
        """The text so far is a complete value of the format."""
        return bool(self.matcher.is_accepting()) and not self.matcher.is_error()

    @property
    def stopped(self) -> bool:
        """The format allows no further token (only end-of-sequence)."""
        return bool(self.matcher.is_stopped())

    @property
    def error(self) -> str:
        return self.matcher.get_error() if self.matcher.is_error() else ""
