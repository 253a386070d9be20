"""The `generate` kind: one generation, streamed into the job's events."""

from __future__ import annotations

import json

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.validator.v1 import validator_pb2 as vpb
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.pipelines import Pipeline, RetryRule, StepDef
from services.orchestrator.steps import slot, step, to_json
from shared.errors import Cancelled, ResourceExhausted, Unavailable, require

GENERATION = slot("generate", gpb.GenerateResponse)
OUTPUT_VERDICT = slot("output_verdict", vpb.ValidateResponse)


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
                  gpb.FinishReason.Name(final.finish_reason), "stats": to_json(final.stats),
                  "constraint_status": gpb.ConstraintStatus.Name(final.constraint_status)}
    return text, final


@step("generate", provides=(GENERATION,), input="generate")
def generate(run, params: dict) -> None:
    g = run.job.request.generate
    request = gpb.GenerateStreamRequest(model=g.model, prompt=g.prompt, messages=g.messages, sampling=g.sampling,
                                        output=g.output, response_format=g.response_format)
    with run.step("generate", "generator", to_json(request)) as rec:
        text, final = stream_generation(run, "generate", request, rec)
    run.state[GENERATION] = gpb.GenerateResponse(
        text=text, finish_reason=final.finish_reason, stats=final.stats, model=final.model, seed=final.seed,
        constraint_status=final.constraint_status,
    )


@step("validate_output", reads=(GENERATION,), provides=(OUTPUT_VERDICT,), input="generate")
def validate_output(run, params: dict) -> str | None:
    """With a JSON Schema response format: the json-output policy on the text, with that schema (an
    output cut short is a failure, never claimed valid). Without one there is nothing to check."""
    fmt = run.job.request.generate.response_format
    if fmt.WhichOneof("format") != "json_schema":
        return None
    generation = run.state[GENERATION]
    request = vpb.ValidateRequest(artifact=vpb.Artifact(text=generation.text), policy=params.get("policy",
                                                                                                "json-output"))
    request.checks.add(name="json_schema").params.update({"schema": json.loads(fmt.json_schema)})
    with run.step("validate_output", "validator", {"policy": request.policy}) as rec:
        verdict = run.client("validator", "validate_output").validate(request, timeout=run.timeout())
        if generation.constraint_status == gpb.CONSTRAINT_STATUS_INCOMPLETE and verdict.passed:
            verdict.passed = False
            verdict.feedback = "the output stopped at max_new_tokens before the value was complete; allow more tokens"
        rec.output = to_json(verdict)
        rec.service_ms = verdict.duration_ms
    run.state[OUTPUT_VERDICT] = verdict
    run.emit("validate.verdict", "validate_output", {"passed": verdict.passed, "feedback": verdict.feedback})
    return None if verdict.passed else "failed"


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
    if state.get(OUTPUT_VERDICT) is not None:
        job.generate_verdict.CopyFrom(state.get(OUTPUT_VERDICT))


register(JobKind(
    name="generate",
    validate=validate,
    fill_result=fill_result,
    result_needs=(GENERATION,),
    pipelines={"generate": Pipeline(
        kind="generate", description="One generation; with a JSON Schema response format, the json-output policy "
        "checks the result with that schema",
        steps=[StepDef(name="generate"), StepDef(name="validate_output", params={"policy": "json-output"})],
        # a failed verdict fails the job (no re-ask: the constraint already made the best of the request)
        retry=RetryRule(on="validate_output", restart_at="generate", max_retries=0))},
))
