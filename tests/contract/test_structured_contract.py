"""Structured output and introspection, run unchanged over every transport (inproc, grpc, celery):
JSON-Schema-, regex- and choice-constrained generation with the real small model, the Tokenize RPC
of the generator and the Embed RPC of the retriever."""

from __future__ import annotations

import json
import re

import grpc
import jsonschema
import numpy as np
import pytest

from genstack.generator.v1 import generator_pb2 as pb
from genstack.retriever.v1 import retriever_pb2 as rpb
from shared.clients.generator import GeneratorClient
from shared.clients.retriever import RetrieverClient
from shared.errors import GenstackError
from tests.conftest import TRANSPORTS

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "colour"],
    "additionalProperties": False,
}
ASK = "Describe a person as JSON with a name, an age and a favourite colour."
PHONE = r"[0-9]{3}-[0-9]{4}"
CHOICES = ["yes", "no", "not sure"]


@pytest.fixture(scope="module", params=TRANSPORTS)
def gen(request, client_factory) -> GeneratorClient:
    return client_factory(GeneratorClient, request.param)


def req(fmt: pb.ResponseFormat | None, cls=pb.GenerateRequest, content=ASK, output=None, **sampling):
    sampling.setdefault("max_new_tokens", 48)
    sampling.setdefault("temperature", 0)
    return cls(model=MODEL, messages=[pb.ChatMessage(role="user", content=content)],
               sampling=pb.SamplingParams(**sampling), response_format=fmt, output=output)


def schema_format(schema=PERSON) -> pb.ResponseFormat:
    return pb.ResponseFormat(json_schema=json.dumps(schema))


def test_schema_constrained_output_validates(gen):
    got = gen.generate(req(schema_format()), timeout=120)
    jsonschema.validate(json.loads(got.text), PERSON)
    assert got.finish_reason == pb.FINISH_REASON_STOP
    assert got.constraint_status == pb.CONSTRAINT_STATUS_COMPLETE
    assert got.stats.mask_ms > 0
    again = gen.generate(req(schema_format()), timeout=120)
    assert again.text == got.text
    assert again.stats.grammar_cached and again.stats.grammar_compile_ms == 0


def test_schema_constraint_holds_under_every_sampling_setting(gen):
    for seed in (1, 2, 3):
        got = gen.generate(req(schema_format(), temperature=1.3, top_p=0.95, top_k=40, repetition_penalty=1.2,
                               seed=seed, max_new_tokens=64), timeout=120)
        if got.constraint_status == pb.CONSTRAINT_STATUS_COMPLETE:
            jsonschema.validate(json.loads(got.text), PERSON)
            assert got.finish_reason == pb.FINISH_REASON_STOP
        else:  # hot sampling may wander into a long name: then it must say so, never claim validity
            assert got.finish_reason == pb.FINISH_REASON_LENGTH, got
            assert got.constraint_status == pb.CONSTRAINT_STATUS_INCOMPLETE


def test_raw_prompt_with_a_schema(gen):
    request = pb.GenerateRequest(model=MODEL, prompt="A person in JSON: ", response_format=schema_format(),
                                 sampling=pb.SamplingParams(max_new_tokens=48, temperature=0))
    got = gen.generate(request, timeout=120)
    jsonschema.validate(json.loads(got.text), PERSON)


def test_cut_short_output_says_it_is_incomplete(gen):
    got = gen.generate(req(schema_format(), max_new_tokens=5), timeout=120)
    assert got.finish_reason == pb.FINISH_REASON_LENGTH
    assert got.constraint_status == pb.CONSTRAINT_STATUS_INCOMPLETE
    with pytest.raises(json.JSONDecodeError):
        json.loads(got.text)


def test_regex_constrained_output_matches(gen):
    got = gen.generate(req(pb.ResponseFormat(regex=PHONE), content="Give me a phone number."), timeout=120)
    assert re.fullmatch(PHONE, got.text), got.text
    assert got.constraint_status == pb.CONSTRAINT_STATUS_COMPLETE


def test_choice_returns_one_of_the_choices(gen):
    fmt = pb.ResponseFormat(choices=pb.Choices(values=CHOICES))
    got = gen.generate(req(fmt, content="Is the sky blue? Answer yes or no."), timeout=120)
    assert got.text in CHOICES
    assert got.finish_reason == pb.FINISH_REASON_STOP
    for seed in (4, 5):
        sampled = gen.generate(req(fmt, content="Pick one.", temperature=1.5, seed=seed), timeout=120)
        assert sampled.text in CHOICES


def test_constrained_stream_concatenates_to_the_unary_result(gen):
    unary = gen.generate(req(schema_format()), timeout=120)
    msgs = list(gen.generate_stream(req(schema_format(), cls=pb.GenerateStreamRequest), timeout=120))
    assert "".join(m.delta for m in msgs) == unary.text
    assert len(msgs) >= 3
    assert msgs[-1].constraint_status == pb.CONSTRAINT_STATUS_COMPLETE
    assert all(m.constraint_status == pb.CONSTRAINT_STATUS_UNSPECIFIED for m in msgs[:-1])
    assert msgs[-1].stats.completion_tokens == unary.stats.completion_tokens


def test_constrained_logprobs_are_the_models_own(gen):
    got = gen.generate(req(pb.ResponseFormat(choices=pb.Choices(values=CHOICES)), content="Is water wet?",
                           output=pb.OutputOptions(logprobs=True, top_logprobs=3)), timeout=120)
    assert got.text in CHOICES
    assert got.logprobs and all(step.logprob <= 0 and len(step.top) == 3 for step in got.logprobs)


BAD_FORMATS = [
    ("unsupported keyword", pb.ResponseFormat(json_schema='{"type": "array", "uniqueItems": true}'),
     ["response_format.json_schema", "uniqueItems"]),
    ("two unsupported keywords", pb.ResponseFormat(json_schema='{"if": {"type": "string"}, "then": {"minLength": 2}}'),
     ["response_format.json_schema", '"if"', '"then"']),
    ("schema is not JSON", pb.ResponseFormat(json_schema="{type: object"), ["response_format.json_schema", "JSON"]),
    ("not a schema", pb.ResponseFormat(json_schema='{"type": "strin"}'), ["response_format.json_schema", "strin"]),
    ("unsatisfiable schema", pb.ResponseFormat(json_schema='{"type": "array", "minItems": 3, "maxItems": 1}'),
     ["response_format.json_schema", "minItems"]),
    ("broken regex", pb.ResponseFormat(regex="([0-9]+"), ["response_format.regex", "unclosed group"]),
    ("bad repetition", pb.ResponseFormat(regex="a{3,2}"), ["response_format.regex", "repetition"]),
    ("no choices", pb.ResponseFormat(choices=pb.Choices(values=[])), ["response_format.choices"]),
    ("empty choice", pb.ResponseFormat(choices=pb.Choices(values=["a", ""])), ["response_format.choices[1]"]),
]


@pytest.mark.parametrize("case,fmt,names", BAD_FORMATS, ids=[c[0] for c in BAD_FORMATS])
def test_bad_format_is_invalid_argument_naming_it(gen, case, fmt, names):
    for cls in (pb.GenerateRequest, pb.GenerateStreamRequest):
        with pytest.raises(GenstackError) as err:
            if cls is pb.GenerateRequest:
                gen.generate(req(fmt, max_new_tokens=4), timeout=60)
            else:
                list(gen.generate_stream(req(fmt, cls=cls, max_new_tokens=4), timeout=60))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
        for name in names:
            assert name in err.value.message, err.value.message
    # the engine is unharmed
    assert gen.generate(req(pb.ResponseFormat(regex="[a-z]{2}"), max_new_tokens=4), timeout=60).text.isalpha()


# -- Tokenize --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    from services.generator import registry
    from shared.config import get_settings

    _, folder = registry.resolve(MODEL, get_settings().model_cache_dir, False)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


TEXT = "Tokens, embeddings: transformers as behaviours — naïve café ✓ 1234"


def test_tokenize_round_trips_and_offsets_cover_the_text(gen, hf_tokenizer):
    got = gen.tokenize(pb.TokenizeRequest(model=MODEL, text=TEXT), timeout=60)
    assert got.model == MODEL and got.text == TEXT
    assert got.count == len(got.tokens) > 5
    ids = [t.id for t in got.tokens]
    assert hf_tokenizer.decode(ids) == TEXT
    assert [t.token for t in got.tokens] == hf_tokenizer.convert_ids_to_tokens(ids)
    for t in got.tokens:
        assert 0 <= t.start <= t.end <= len(TEXT)
    ascii_tokens = [t for t in got.tokens if t.text.isascii()]
    assert all(TEXT[t.start:t.end] == t.text.strip() or TEXT[t.start:t.end] == t.text for t in ascii_tokens)
    assert got.tokens[0].start == 0 and got.tokens[-1].end == len(TEXT)


def test_tokenize_count_equals_the_generators_prompt_tokens(gen):
    raw = gen.tokenize(pb.TokenizeRequest(model=MODEL, text=TEXT), timeout=60)
    g = gen.generate(pb.GenerateRequest(model=MODEL, prompt=TEXT, sampling=pb.SamplingParams(max_new_tokens=1)),
                     timeout=60)
    assert raw.count == g.stats.prompt_tokens
    chat = gen.tokenize(pb.TokenizeRequest(model=MODEL, messages=[pb.ChatMessage(role="user", content=TEXT)]),
                        timeout=60)
    g = gen.generate(req(None, content=TEXT, max_new_tokens=1), timeout=60)
    assert chat.count == g.stats.prompt_tokens > raw.count
    assert TEXT in chat.text and any(t.special for t in chat.tokens)


@pytest.mark.parametrize("request_kw,field", [
    (dict(text=""), "text"),
    (dict(text="a", messages=[pb.ChatMessage(role="user", content="b")]), "text"),
    (dict(messages=[pb.ChatMessage(role="robot", content="b")]), "messages[0].role"),
    (dict(text="x" * 1_000_001), "text"),
    (dict(text="hi", model="no-such-model"), "model"),
], ids=["empty", "both", "bad role", "too long", "unknown model"])
def test_tokenize_bad_input(gen, request_kw, field):
    request_kw = dict(request_kw)
    request_kw.setdefault("model", MODEL)
    with pytest.raises(GenstackError) as err:
        gen.tokenize(pb.TokenizeRequest(**request_kw), timeout=60)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.message, err.value.message


# -- Embed -----------------------------------------------------------------------------------------------

SENTENCES = ["The cat sat on the mat.", "A kitten rests on a rug.", "Quarterly revenue rose by four percent."]


@pytest.fixture(scope="module", params=TRANSPORTS)
def ret(request, client_factory) -> RetrieverClient:
    return client_factory(RetrieverClient, request.param)


@pytest.fixture(scope="module")
def embed_reference():
    return RetrieverClient("inproc").embed(rpb.EmbedRequest(texts=SENTENCES), timeout=120)


def test_embed_returns_unit_vectors_identical_across_transports(ret, embed_reference):
    got = ret.embed(rpb.EmbedRequest(texts=SENTENCES), timeout=120)
    assert got.dimension == 384 and got.model == "all-minilm-l6-v2" and got.max_tokens > 0
    vecs = np.array([list(e.values) for e in got.embeddings], dtype=np.float32)
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    ref = np.array([list(e.values) for e in embed_reference.embeddings], dtype=np.float32)
    np.testing.assert_array_equal(vecs, ref)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.3, sims  # the two cat sentences are closest
    assert [e.tokens for e in got.embeddings] == [e.tokens for e in embed_reference.embeddings]
    assert not any(e.truncated for e in got.embeddings)
    long = ret.embed(rpb.EmbedRequest(texts=["word " * 600]), timeout=120).embeddings[0]
    assert long.truncated and long.tokens > got.max_tokens


@pytest.mark.parametrize("texts,field", [
    ([], "texts"),
    (["ok", "  "], "texts[1]"),
    (["x" * 8193], "texts[0]"),
    (["a"] * 257, "texts"),
], ids=["none", "blank", "too long", "too many"])
def test_embed_bad_input(ret, texts, field):
    with pytest.raises(GenstackError) as err:
        ret.embed(rpb.EmbedRequest(texts=texts), timeout=60)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.message, err.value.message


# -- JSON layout -----------------------------------------------------------------------------------------


def test_json_schema_output_is_compact_unless_the_schema_asks_for_free_whitespace(hf_tokenizer):
    """Compact one-line JSON by default (small models otherwise spend their token budget on indentation);
    a schema's own "x-guidance" settings win."""
    from services.generator.constrained import JSON_SCHEMA, GrammarCache, ResponseFormat

    cache = GrammarCache(hf_tokenizer, frozenset({hf_tokenizer.eos_token_id}), len(hf_tokenizer))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
              "required": ["a", "b"], "additionalProperties": False}

    def consumed(fmt_schema: dict, text: str) -> bool:
        constraint, _, _ = cache.constraint(ResponseFormat(JSON_SCHEMA, json.dumps(fmt_schema)))
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        return constraint.matcher.try_consume_tokens(ids) == len(ids)

    assert consumed(schema, '{"a": 1, "b": "x"}')
    assert not consumed(schema, '{\n  "a": 1,\n  "b": "x"\n}')
    assert not consumed(schema, '{"a":1,"b":"x"}')
    flexible = dict(schema, **{"x-guidance": {"whitespace_flexible": True}})
    assert consumed(flexible, '{\n  "a": 1,\n  "b": "x"\n}')
