"""Step functions that pipelines name. Each reads and writes the run's state and returns
"failed" to trigger the pipeline's retry rule (a failed verdict), anything else to go on."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import json_format

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.image.v1 import image_pb2 as ipb
from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from genstack.retriever.v1 import retriever_pb2 as rpb
from genstack.validator.v1 import validator_pb2 as vpb
from services.orchestrator import context as ctxmod
from shared.errors import Cancelled

StepFn = Callable[["JobRun", dict], str | None]  # noqa: F821 - JobRun lives in runner.py
STEPS: dict[str, StepFn] = {}


def step(name: str):
    def register(fn: StepFn) -> StepFn:
        STEPS[name] = fn
        return fn

    return register


def _j(msg) -> dict:
    return json_format.MessageToDict(msg)


@step("retrieve")
def retrieve(run, params: dict) -> None:
    a: opb.AnswerInput = run.job.request.answer
    s = run.settings
    request = rpb.SearchRequest(
        collection=a.collection or s.default_collection,
        query=a.question,
        top_k=a.top_k if a.HasField("top_k") else params.get("top_k", s.answer_top_k),
        mode=a.search_mode or rpb.SEARCH_MODE_HYBRID,
        filters=a.filters,
    )
    if a.HasField("alpha"):
        request.alpha = a.alpha
    with run.step("retrieve", "retriever", _j(request)) as rec:
        response = run.client("retriever", "retrieve").search(request, timeout=run.timeout())
        rec.output = _j(response)
        rec.service_ms = response.took_ms
    run.state["chunks"] = [
        ctxmod.Chunk(h.chunk_id, h.document_id, h.source or h.metadata.get("source", ""), h.text, h.score)
        for h in response.hits
    ]


@step("build_context")
def build_context(run, params: dict) -> None:
    s = run.settings
    max_new = run.max_new_tokens()
    question = run.job.request.answer.question
    with run.step("build_context", "", {"chunks": len(run.state["chunks"]), "budget_tokens": s.context_tokens}) as rec:
        prompt_cost = ctxmod.count_tokens(ctxmod.SYSTEM_PROMPT) + ctxmod.count_tokens(question) + 33
        budget = max(0, params.get("context_tokens", s.context_tokens) - prompt_cost - max_new)
        kept, dropped = ctxmod.select_chunks(run.state["chunks"], budget)
        messages = ctxmod.answer_messages(question, kept)
        rec.output = {
            "budget_tokens": budget,
            "kept": [c.chunk_id for c in kept],
            "dropped": dropped,
            "messages": [{"role": r, "content": c} for r, c in messages],
        }
    run.state["sources"] = kept
    run.state["messages"] = messages


def _stream_generation(
    run, name: str, request: gpb.GenerateStreamRequest, rec
) -> tuple[str, gpb.GenerateStreamResponse]:
    stream = run.client("generator", name).generate_stream(request, timeout=run.timeout())
    parts: list[str] = []
    final = None
    try:
        for msg in stream:
            if run.cancelled():
                stream.cancel()
                raise Cancelled("job cancelled during generation")
            if msg.delta:
                parts.append(msg.delta)
                run.emit("generate.delta", name, {"delta": msg.delta, "attempt": run.state.get("attempt", 1)})
            final = msg
    finally:
        if final is None or final.finish_reason == gpb.FINISH_REASON_UNSPECIFIED:
            stream.cancel()
    text = "".join(parts)
    # time inside the generator: prompt preparation, waiting for the model, decoding
    rec.service_ms = final.stats.prepare_ms + final.stats.queue_ms + final.stats.total_ms
    rec.output = {"text": text, "model": final.model, "seed": str(final.seed), "finish_reason":
                  gpb.FinishReason.Name(final.finish_reason), "stats": _j(final.stats)}
    return text, final


@step("generate_answer")
def generate_answer(run, params: dict) -> None:
    a = run.job.request.answer
    attempt = run.state.get("attempt", 0) + 1
    run.state["attempt"] = attempt
    models = list(a.models) or params.get("models") or run.settings.answer_models or [""]
    model = models[min(attempt - 1, len(models) - 1)]
    messages = run.state["messages"]
    if attempt > 1 and run.state.get("feedback"):
        messages = ctxmod.retry_messages(a.question, run.state["sources"], run.state["answer"], run.state["feedback"])
    if not run.state["sources"]:
        with run.step("generate_answer", "", {"reason": "no sources retrieved"}, attempt=attempt) as rec:
            rec.status = "skipped"
            rec.output = {"text": ctxmod.NOT_IN_SOURCES}
        run.state.update(answer=ctxmod.NOT_IN_SOURCES, model="", answered=False)
        return
    sampling = gpb.SamplingParams(max_new_tokens=run.max_new_tokens(), temperature=0.0)
    sampling.MergeFrom(a.sampling)
    request = gpb.GenerateStreamRequest(
        model=model, messages=[gpb.ChatMessage(role=r, content=c) for r, c in messages], sampling=sampling
    )
    with run.step("generate_answer", "generator", _j(request), attempt=attempt) as rec:
        text, final = _stream_generation(run, "generate_answer", request, rec)
    run.state.update(answer=text.strip(), model=final.model, answered=not ctxmod.is_refusal(text))


@step("cite_answer")
def cite_answer(run, params: dict) -> None:
    """Attach [n] to uncited answer sentences that one source clearly supports (see context.py)."""
    if not run.state.get("answered", True):
        return
    attempt = run.state.get("attempt", 1)
    answer = run.state["answer"]
    with run.step("cite_answer", "", {"answer": answer}, attempt=attempt) as rec:
        cited, added = ctxmod.attach_citations(answer, run.state["sources"],
                                               min_support=params.get("min_support", 0.6))
        rec.output = {"added": added, "answer": cited}
        if not added:
            rec.status = "unchanged"
    if added:
        run.state["answer"] = cited
        run.emit("answer.cited", "cite_answer", {"answer": cited, "added": added, "attempt": attempt})


@step("validate_answer")
def validate_answer(run, params: dict) -> str | None:
    a = run.job.request.answer
    attempt = run.state.get("attempt", 1)
    if not run.state.get("answered", True):
        # An honest "not in the sources" needs no citations; nothing to ground.
        with run.step("validate_answer", "", {"reason": "answer says the sources lack it"}, attempt=attempt) as rec:
            rec.status = "skipped"
        run.state["verdict"] = None
        return None
    request = vpb.ValidateRequest(
        artifact=vpb.Artifact(text=run.state["answer"]),
        context=vpb.ValidationContext(
            request=a.question,
            sources=[vpb.Source(id=str(i), text=c.text) for i, c in enumerate(run.state["sources"], 1)],
        ),
        policy=a.policy or params.get("policy", "rag-answer"),
    )
    with run.step("validate_answer", "validator", _j(request), attempt=attempt) as rec:
        verdict = run.client("validator", "validate_answer").validate(request, timeout=run.timeout())
        rec.output = _j(verdict)
        rec.service_ms = verdict.duration_ms
    run.state["verdict"] = verdict
    run.state["feedback"] = verdict.feedback
    run.emit("validate.verdict", "validate_answer", {"passed": verdict.passed, "score": verdict.score,
                                                     "feedback": verdict.feedback, "attempt": attempt})
    return None if verdict.passed else "failed"


@step("generate")
def generate(run, params: dict) -> None:
    g = run.job.request.generate
    request = gpb.GenerateStreamRequest(model=g.model, prompt=g.prompt, messages=g.messages, sampling=g.sampling,
                                        output=g.output)
    with run.step("generate", "generator", _j(request)) as rec:
        text, final = _stream_generation(run, "generate", request, rec)
    run.state["generate"] = gpb.GenerateResponse(
        text=text, finish_reason=final.finish_reason, stats=final.stats, model=final.model, seed=final.seed
    )


@step("ingest")
def ingest(run, params: dict) -> None:
    request = run.job.request.ingest
    with run.step("ingest", "retriever", {"collection": request.collection,
                                          "documents": [d.id for d in request.documents]}) as rec:
        client = run.client("retriever", "ingest")

        def progress(p):
            run.emit("ingest.progress", "ingest", _j(p))

        response = client.ingest_large(request, timeout=run.timeout(), on_progress=progress)
        rec.output = _j(response)
    run.state["ingest"] = response


@step("generate_image")
def generate_image(run, params: dict) -> None:
    request = ipb.GenerateImageRequest()
    request.CopyFrom(run.job.request.image)
    attempt = run.state.get("image_attempt", 0) + 1
    run.state["image_attempt"] = attempt
    if attempt > 1 and request.HasField("seed"):
        request.seed = request.seed + attempt - 1  # a retry explores the next seed
    logged = _j(request)
    with run.step("generate_image", "image", logged, attempt=attempt) as rec:
        response = run.client("image", "generate_image").generate_image(request, timeout=run.timeout())
        rec.output = {"images": [{"seed": str(i.seed), "width": i.width, "height": i.height,
                                  "png_bytes": len(i.png), "artifact": i.artifact.uri} for i in response.images],
                      "metadata": _j(response.metadata)}
    run.state["images"] = list(response.images)


@step("validate_image")
def validate_image(run, params: dict) -> str | None:
    verdicts = []
    attempt = run.state.get("image_attempt", 1)
    for n, image in enumerate(run.state["images"]):
        artifact = vpb.Artifact(image=image.png) if image.png else vpb.Artifact(ref=image.artifact)
        request = vpb.ValidateRequest(
            artifact=artifact, policy=params.get("policy", "image-default"),
            context=vpb.ValidationContext(request=run.job.request.image.prompt,
                                          expected=vpb.ExpectedMedia(width=image.width, height=image.height)),
        )
        with run.step("validate_image", "validator", {"image": n, "policy": request.policy}, attempt=attempt) as rec:
            verdict = run.client("validator", "validate_image").validate(request, timeout=run.timeout())
            rec.output = _j(verdict)
            rec.service_ms = verdict.duration_ms
        verdicts.append(verdict)
    run.state["image_verdicts"] = verdicts
    failed = [v for v in verdicts if not v.passed]
    run.state["feedback"] = " ".join(v.feedback for v in failed)
    run.emit("validate.verdict", "validate_image", {"passed": not failed, "attempt": attempt})
    return "failed" if failed else None
