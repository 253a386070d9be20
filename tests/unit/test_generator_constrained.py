"""Constrained decoding mechanics without a model: the bitmask -> logits bias expansion, padding of
logits wider than the vocabulary, response-format checks and error messages, the CLI tables."""

from __future__ import annotations

import ctypes
import json
import math
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import torch

from services.generator.constrained import (
    CHOICES,
    JSON_SCHEMA,
    REGEX,
    Constraint,
    ResponseFormat,
    compile_error,
)
from shared.errors import InvalidArgument


class FakeMatcher:
    """Writes a fixed bitmask where llguidance would write the next-token mask."""

    def __init__(self, allowed: np.ndarray):
        words = (len(allowed) + 31) // 32
        padded = np.zeros(words * 32, dtype=np.uint8)
        padded[: len(allowed)] = allowed
        self.packed = np.packbits(padded, bitorder="little").view(np.int32).copy()

    def unsafe_compute_mask_ptr(self, ptr: int, size: int) -> None:
        assert size == self.packed.nbytes
        ctypes.memmove(ptr, self.packed.ctypes.data, size)


@pytest.mark.parametrize("vocab,width", [(49152, 49152), (151665, 151936), (1000, 1003), (37, 64)])
def test_mask_keeps_allowed_logits_exactly_and_masks_the_rest(vocab, width):
    rng = np.random.default_rng(vocab)
    allowed = rng.random(vocab) < 0.3
    allowed[:3] = [True, False, True]
    c = Constraint(FakeMatcher(allowed), vocab, width)
    logits = torch.randn(1, width)
    original = logits.clone()
    assert c.mask(logits)
    expected = torch.full((width,), float("-inf"))
    keep = torch.from_numpy(allowed)
    expected[:vocab][keep] = original[0, :vocab][keep]
    assert torch.equal(logits[0], expected)  # bit-exact: allowed logits are untouched
    assert torch.isneginf(logits[0, vocab:]).all()  # logits beyond the tokenizer's vocabulary never win
    assert c.steps == 1 and c.mask_ms > 0


def test_mask_reports_a_dead_end():
    c = Constraint(FakeMatcher(np.zeros(100, dtype=bool)), 100, 128)
    assert not c.mask(torch.zeros(1, 128))


def test_masked_sampling_only_draws_allowed_tokens():
    vocab = 5000
    allowed = np.zeros(vocab, dtype=bool)
    allowed[[7, 99, 4095, 4999]] = True
    c = Constraint(FakeMatcher(allowed), vocab, vocab + 64)
    logits = torch.randn(1, vocab + 64) * 5
    logits[0, 0] = 100.0  # the model's favourite is not allowed
    c.mask(logits)
    probs = torch.softmax(logits, -1)
    draws = set(torch.multinomial(probs, 200, replacement=True, generator=torch.Generator().manual_seed(0))[0].tolist())
    assert draws <= {7, 99, 4095, 4999}
    assert int(torch.argmax(logits)) in {7, 99, 4095, 4999}
    assert not math.isnan(float(probs.sum()))


@pytest.mark.parametrize("fmt,field", [
    (ResponseFormat(JSON_SCHEMA, ""), "response_format.json_schema"),
    (ResponseFormat(JSON_SCHEMA, "[1, 2]"), "response_format.json_schema"),
    (ResponseFormat(JSON_SCHEMA, '{"type": 5}'), "response_format.json_schema"),
    (ResponseFormat(JSON_SCHEMA, json.dumps({"type": "string", "description": "x" * 70000})),
     "response_format.json_schema"),
    (ResponseFormat(REGEX, ""), "response_format.regex"),
    (ResponseFormat(CHOICES, ()), "response_format.choices"),
    (ResponseFormat(CHOICES, tuple(str(i) for i in range(257))), "response_format.choices"),
    (ResponseFormat(CHOICES, ("ok", "x" * 1025)), "response_format.choices[1]"),
])
def test_format_checks_name_the_field(fmt, field):
    with pytest.raises(InvalidArgument) as err:
        fmt.check()
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith(field)


def test_compile_error_names_unsupported_keywords():
    err = compile_error(ResponseFormat(JSON_SCHEMA, "{}"), 'Unimplemented keys: ["if", "then"]')
    assert '"if", "then"' in err.message and "keywords" in err.message
    assert err.message.startswith("response_format.json_schema")
    err = compile_error(ResponseFormat(REGEX, "(("), "regex parse error: unclosed group")
    assert err.message.startswith("response_format.regex: regular expression does not compile")


def test_choices_grammar_quotes_any_text():
    pytest.importorskip("llguidance")
    import llguidance

    grammar = ResponseFormat(CHOICES, ('say "hi"\n', "é ✓", "a|b")).grammar()
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    assert not is_error, messages


def test_logprob_and_token_tables():
    from services.generator.introspect_cli import logprob_table, token_table

    top = [SimpleNamespace(token=" Paris", token_id=1, logprob=-0.1), SimpleNamespace(token=" Lyon", token_id=2,
                                                                                     logprob=-2.5)]
    steps = [SimpleNamespace(token=" Paris", token_id=1, logprob=-0.1, entropy=0.4, top=top)]
    table = logprob_table(steps, 2)
    assert '" Paris"' in table and '" Lyon" -2.50' in table and "90.5%" in table and "perplexity 1.11" in table
    resp = SimpleNamespace(tokens=[SimpleNamespace(id=9, token="Ġhi", text=" hi", start=0, end=3, special=False)],
                           count=1, text=" hi", model="m")
    assert "Ġhi" in token_table(resp) and "0-3" in token_table(resp) and "1 tokens" in token_table(resp)


def test_similarity_table_is_the_dot_product_of_unit_vectors():
    from services.retriever.embed_cli import similarity_table

    v = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    table = similarity_table(["a", "b", "c"], v)
    lines = table.splitlines()
    assert lines[1].split()[-3:] == ["1.000", "0.600", "0.000"]
    assert lines[2].split()[-3:] == ["0.600", "1.000", "0.800"]
