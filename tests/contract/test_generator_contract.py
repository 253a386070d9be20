"""The generator's contract, run unchanged over every transport (inproc, grpc, celery) with a real model."""

from __future__ import annotations

import grpc
import pytest

from genstack.generator.v1 import generator_pb2 as pb
from shared.clients.generator import GeneratorClient
from shared.errors import GenstackError
from tests.conftest import TRANSPORTS

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
PROMPT = "The three primary colours are"


@pytest.fixture(scope="module", params=TRANSPORTS)
def client(request, client_factory) -> GeneratorClient:
    return client_factory(GeneratorClient, request.param)


def req(prompt=PROMPT, cls=pb.GenerateRequest, output=None, **sampling):
    sampling.setdefault("max_new_tokens", 16)
    return cls(model=MODEL, prompt=prompt, sampling=pb.SamplingParams(**sampling), output=output)


def stream_text(client, request, timeout=120):
    msgs = list(client.generate_stream(request, timeout=timeout))
    return "".join(m.delta for m in msgs), msgs


@pytest.fixture(scope="module")
def reference():
    """Greedy and seeded results computed in this process, the baseline every transport must match."""
    ref = GeneratorClient("inproc")
    return {
        "greedy": ref.generate(req(temperature=0)),
        "seeded": ref.generate(req(temperature=0.9, top_p=0.95, top_k=50, seed=1234)),
    }


def test_greedy_output_is_identical_across_transports(client, reference):
    got = client.generate(req(temperature=0), timeout=120)
    assert got.text == reference["greedy"].text
    assert got.text.strip(), "the model produced no text"
    assert got.finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
    assert got.model == MODEL
    assert got.stats.prompt_tokens > 0 and got.stats.completion_tokens > 0
    assert got.stats.tokens_per_second > 0 and got.stats.time_to_first_token_ms > 0


def test_seeded_sampling_is_reproducible(client, reference):
    a = client.generate(req(temperature=0.9, top_p=0.95, top_k=50, seed=1234), timeout=120)
    b = client.generate(req(temperature=0.9, top_p=0.95, top_k=50, seed=1234), timeout=120)
    assert a.text == b.text == reference["seeded"].text
    assert a.seed == 1234
    others = {client.generate(req(temperature=1.2, seed=s, max_new_tokens=8), timeout=120).text for s in (1, 2)}
    assert len(others) > 1, "different seeds should explore different continuations"


def test_unseeded_sampling_reports_the_seed_it_drew(client):
    first = client.generate(req(temperature=1.0, max_new_tokens=8), timeout=120)
    again = client.generate(req(temperature=1.0, max_new_tokens=8, seed=first.seed), timeout=120)
    assert again.text == first.text


def test_stop_sequence_is_honoured(client, reference):
    full = reference["greedy"].text
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[2]  # cut before the third word
    got = client.generate(req(temperature=0, stop=[stop]), timeout=120)
    assert got.finish_reason == pb.FINISH_REASON_STOP
    assert got.text == full[: full.index(stop)]
    assert stop not in got.text
    streamed, _ = stream_text(client, req(cls=pb.GenerateStreamRequest, temperature=0, stop=[stop]))
    assert streamed == got.text


def test_streamed_deltas_concatenate_to_the_unary_result(client, reference):
    streamed, msgs = stream_text(client, req(cls=pb.GenerateStreamRequest, temperature=0))
    assert streamed == reference["greedy"].text
    assert len(msgs) >= 3, "expected token-by-token deltas, not one chunk"
    final = msgs[-1]
    assert final.finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in msgs[:-1])
    assert final.stats.completion_tokens == reference["greedy"].stats.completion_tokens
    seeded, _ = stream_text(client, req(cls=pb.GenerateStreamRequest, temperature=0.9, top_p=0.95, top_k=50, seed=1234))
    assert seeded == reference["seeded"].text


def test_logprobs_and_entropy_on_request(client):
    got = client.generate(req(temperature=0, max_new_tokens=6, output=pb.OutputOptions(logprobs=True, top_logprobs=3)),
                          timeout=120)
    assert len(got.logprobs) == got.stats.completion_tokens + (1 if got.finish_reason == pb.FINISH_REASON_STOP else 0)
    for step in got.logprobs:
        assert step.logprob <= 0 and step.entropy >= 0
        assert len(step.top) == 3
        # greedy: the chosen token is the most likely one
        assert step.top[0].token_id == step.token_id
        assert step.top[0].logprob >= step.top[1].logprob >= step.top[2].logprob
    assert "".join(s.token for s in got.logprobs[: got.stats.completion_tokens]).strip() in got.text.strip() or got.text


def test_cancel_stops_generation_and_frees_the_model(client):
    stream = client.generate_stream(req(cls=pb.GenerateStreamRequest, temperature=0.8, seed=7, max_new_tokens=1500),
                                    timeout=300)
    seen = 0
    for msg in stream:
        if msg.delta:
            seen += 1
        if seen >= 3:
            break
    stream.cancel()
    nxt = client.generate(req(temperature=0, max_new_tokens=4), timeout=120)
    # The next request waited in the engine's queue for at most the cancelled request's last step,
    # not for the ~1500 tokens it asked for.
    assert nxt.stats.queue_ms < 2000, nxt.stats
    assert nxt.text


def test_chat_messages_use_the_chat_template(client):
    got = client.generate(
        pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role="user", content="Say hello.")],
                           sampling=pb.SamplingParams(max_new_tokens=12, temperature=0)),
        timeout=120,
    )
    assert got.text.strip()
    assert got.stats.prompt_tokens > 5  # the template adds its own tokens around the message


def test_list_models(client):
    names = {m.name: m for m in client.list_models(timeout=30).models}
    assert {"smollm2-135m", "qwen2.5-0.5b"} <= set(names)
    assert names["smollm2-135m"].is_default and names["smollm2-135m"].loaded
    assert names["smollm2-135m"].context_length == 8192


BAD_INPUTS = [
    ("no prompt or messages", dict(prompt=""), "prompt"),
    ("unknown model", dict(model="no-such-model"), "model"),
    ("negative temperature", dict(temperature=-0.5), "sampling.temperature"),
    ("top_p zero", dict(top_p=0.0), "sampling.top_p"),
    ("top_p above one", dict(top_p=1.5), "sampling.top_p"),
    ("negative top_k", dict(top_k=-1), "sampling.top_k"),
    ("max_new_tokens zero", dict(max_new_tokens=0), "sampling.max_new_tokens"),
    ("max_new_tokens over cap", dict(max_new_tokens=100_000), "sampling.max_new_tokens"),
    ("too many stops", dict(stop=[f"s{i}" for i in range(17)]), "sampling.stop"),
    ("prompt longer than context", dict(prompt="hello " * 9000), "prompt"),
]


@pytest.mark.parametrize("case,change,field", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_invalid_argument_naming_the_field(client, case, change, field):
    change = dict(change)  # the parameter is shared by every transport's run
    model = change.pop("model", MODEL)
    prompt = change.pop("prompt", PROMPT)
    change.setdefault("max_new_tokens", 4)
    for cls in (pb.GenerateRequest, pb.GenerateStreamRequest):
        request = cls(model=model, prompt=prompt, sampling=pb.SamplingParams(**change))
        with pytest.raises(GenstackError) as err:
            if cls is pb.GenerateRequest:
                client.generate(request, timeout=60)
            else:
                list(client.generate_stream(request, timeout=60))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert field in err.value.message, err.value.message
    # nothing is broken afterwards
    assert client.generate(req(temperature=0, max_new_tokens=2), timeout=60).text is not None


def test_deadline_exceeded(client):
    with pytest.raises(GenstackError) as err:
        client.generate(req(temperature=0.8, max_new_tokens=1500, seed=3), timeout=1.5)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    nxt = client.generate(req(temperature=0, max_new_tokens=2), timeout=60)
    assert nxt.stats.queue_ms < 2000


def test_eight_concurrent_requests_keep_their_own_settings(client, reference):
    """Eight requests at once (the default engine decodes them as one batch): greedy equals the request
    alone, seeds reproduce, stop sequences and log-probs hold per request, and nothing mixes."""
    from concurrent.futures import ThreadPoolExecutor

    other = "def fibonacci(n):"
    alone_other = client.generate(req(other, temperature=0), timeout=120).text
    words = reference["greedy"].text.split()
    stop = " " + words[2]
    logprobs = pb.OutputOptions(logprobs=True, top_logprobs=2)
    requests = {
        "greedy-1": req(temperature=0), "greedy-2": req(temperature=0), "greedy-3": req(temperature=0),
        "other-1": req(other, temperature=0), "other-2": req(other, temperature=0),
        "seeded-1": req(temperature=0.9, top_p=0.95, top_k=50, seed=1234),
        "stop": req(temperature=0, stop=[stop]),
        "logprobs": req(temperature=0, output=logprobs),
    }
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = {name: pool.submit(client.generate, r, timeout=300) for name, r in requests.items()}
        got = {name: f.result() for name, f in futures.items()}
    greedy = reference["greedy"].text
    assert [got[f"greedy-{i}"].text for i in (1, 2, 3)] == [greedy] * 3
    assert [got[f"other-{i}"].text for i in (1, 2)] == [alone_other] * 2 and alone_other != greedy
    assert got["seeded-1"].text == reference["seeded"].text and got["seeded-1"].seed == 1234
    assert got["stop"].text == greedy[: greedy.index(stop)] and got["stop"].finish_reason == pb.FINISH_REASON_STOP
    assert got["logprobs"].text == greedy and len(got["logprobs"].logprobs) >= got["logprobs"].stats.completion_tokens
    assert all(len(step.top) == 2 for step in got["logprobs"].logprobs)
    assert not any(r.logprobs for name, r in got.items() if name != "logprobs")  # only the one that asked
