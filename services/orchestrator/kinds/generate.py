"""The `generate` kind: one generation, streamed into the job's events."""

from __future__ import annotations

from genstack.generator.v1 import generator_pb2 as gpb
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.pipelines import Pipeline, StepDef
from services.orchestrator.steps import slot, step, to_json
from shared.errors import Cancelled, ResourceExhausted, Unavailable, require

GENERATION = slot("generate", gpb.GenerateResponse)


def validate(g: gpb.GenerateRequest, settings) -> None:
    # sizes first, in characters: nothing is stripped, stored or tokenized before this
    limit = settings.max_text_chars
    chars = len(g.prompt) + sum(len(m.content) for m in g.messages)
    if chars > limit:
        field = "generate.prompt" if g.prompt else "generate.messages"
        raise ResourceExhausted(f"{field}: {chars} characters; the limit is {limit} "
                                "(GENSTACK_ORCHESTRATOR_MAX_TEXT_CHARS)")
    require(bool(g.prompt.strip()) or bool(g.messages), "generate.prompt", "a non-empty prompt or messages")


def stream_generation(run, name: str, request: gpb.GenerateStreamRequest, rec,
                      attempt: int = 1) -> tuple[str, gpb.GenerateStreamResponse]:
    """Stream one generation into `generate.delta` events; returns (text, the final message).

    A stream cut by a transient error after it started (the generator restarted) is started over,
    inside the job's deadline: a `generate.restarted` event tells watchers to drop the deltas of
    that attempt (generation has no side effects, so running it again is safe)."""
    restarts = 0
    while True:
        parts: list[str] = []
        try:
            final = _stream_once(run, name, request, parts, attempt)
            break
        except Unavailable as exc:
            if not parts or restarts >= run.settings.call_retries:
                raise
            restarts += 1
            run.note_retry(name, "GenerateStream", exc, restarts, 0.0)
            run.emit("generate.restarted", name, {"attempt": attempt, "dropped_chars": len("".join(parts))})
    text = "".join(parts)
    # time inside the generator: prompt preparation, waiting for the model, decoding
    rec.service_ms = final.stats.prepare_ms + final.stats.queue_ms + final.stats.total_ms
    rec.output = {"text": text, "model": final.model, "seed": str(final.seed), "finish_reason":
                  gpb.FinishReason.Name(final.finish_reason), "stats": to_json(final.stats)}
    return text, final


@step("generate", provides=(GENERATION,), input="generate")
def generate(run, params: dict) -> None:
    g = run.job.request.generate
    request = gpb.GenerateStreamRequest(model=g.model, prompt=g.prompt, messages=g.messages, sampling=g.sampling,
                                        output=g.output)
    with run.step("generate", "generator", to_json(request)) as rec:
        text, final = stream_generation(run, "generate", request, rec)
    run.state[GENERATION] = gpb.GenerateResponse(
        text=text, finish_reason=final.finish_reason, stats=final.stats, model=final.model, seed=final.seed
    )


def _stream_once(run, name, request, parts: list[str], attempt: int) -> gpb.GenerateStreamResponse:
    stream = run.client("generator", name).generate_stream(request, timeout=run.timeout())
    final = None
    try:
        for msg in stream:
            if run.cancelled():
                stream.cancel()
                raise Cancelled("job cancelled during generation")
            if msg.delta:
                parts.append(msg.delta)
                run.emit("generate.delta", name, {"delta": msg.delta, "attempt": attempt})
            final = msg
    finally:
        if final is None or final.finish_reason == gpb.FINISH_REASON_UNSPECIFIED:
            stream.cancel()
    if final is None or final.finish_reason == gpb.FINISH_REASON_UNSPECIFIED:
        raise Unavailable("the generator's stream ended before its final message")
    return final


def fill_result(job, state) -> None:
    job.generate.CopyFrom(state.get(GENERATION))


register(JobKind(
    name="generate",
    validate=validate,
    fill_result=fill_result,
    result_needs=(GENERATION,),
    pipelines={"generate": Pipeline(kind="generate", description="One generation", steps=[StepDef(name="generate")])},
))
