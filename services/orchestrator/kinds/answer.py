"""The `answer` kind: retrieve, build a numbered context, generate a cited answer, attach the
citations a small model left out, validate; re-ask with the validator's feedback."""

from __future__ import annotations

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from genstack.retriever.v1 import retriever_pb2 as rpb
from genstack.validator.v1 import validator_pb2 as vpb
from services.orchestrator import context as ctxmod
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.kinds.generate import stream_generation
from services.orchestrator.pipelines import Pipeline, RetryRule, StepDef
from services.orchestrator.steps import slot, step, to_json
from shared import metrics
from shared.errors import require
from shared.rpc import opt

MAX_QUESTION_CHARS = 4000

CHUNKS = slot("chunks", list)
SOURCES = slot("sources", list)
MESSAGES = slot("messages", list)
ATTEMPT = slot("attempt", int)
ANSWER = slot("answer", str)
MODEL = slot("model", str)
ANSWERED = slot("answered", bool)
VERDICT = slot("verdict", (vpb.ValidateResponse, type(None)))
FEEDBACK = slot("feedback", str)


def validate(a: opb.AnswerInput, settings) -> None:
    require(bool(a.question.strip()), "answer.question", "a non-empty question")
    require(len(a.question) <= MAX_QUESTION_CHARS, "answer.question",
            f"at most {MAX_QUESTION_CHARS} characters", len(a.question))
    if a.HasField("top_k"):
        require(1 <= a.top_k <= 50, "answer.top_k", "between 1 and 50", a.top_k)
    if a.HasField("max_retries"):
        require(0 <= a.max_retries <= 5, "answer.max_retries", "between 0 and 5", a.max_retries)
    if a.HasField("alpha"):
        require(0 <= a.alpha <= 1, "answer.alpha", "in [0, 1]", a.alpha)


def max_new_tokens(run) -> int:
    s = run.job.request.answer.sampling
    return s.max_new_tokens if s.HasField("max_new_tokens") else run.settings.answer_max_new_tokens


@step("retrieve", provides=(CHUNKS,), input="answer")
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
    with run.step("retrieve", "retriever", to_json(request)) as rec:
        response = run.client("retriever", "retrieve").search(request, timeout=run.timeout())
        rec.output = to_json(response)
        rec.service_ms = response.took_ms
    run.state[CHUNKS] = [
        ctxmod.Chunk(h.chunk_id, h.document_id, h.source or h.metadata.get("source", ""), h.text, h.score)
        for h in response.hits
    ]


@step("build_context", reads=(CHUNKS,), provides=(SOURCES, MESSAGES), input="answer")
def build_context(run, params: dict) -> None:
    s = run.settings
    question = run.job.request.answer.question
    with run.step("build_context", "", {"chunks": len(run.state[CHUNKS]), "budget_tokens": s.context_tokens}) as rec:
        prompt_cost = ctxmod.count_tokens(ctxmod.SYSTEM_PROMPT) + ctxmod.count_tokens(question) + 33
        budget = max(0, params.get("context_tokens", s.context_tokens) - prompt_cost - max_new_tokens(run))
        kept, dropped = ctxmod.select_chunks(run.state[CHUNKS], budget)
        messages = ctxmod.answer_messages(question, kept)
        rec.output = {
            "budget_tokens": budget,
            "kept": [c.chunk_id for c in kept],
            "dropped": dropped,
            "messages": [{"role": r, "content": c} for r, c in messages],
        }
    run.state.update(sources=kept, messages=messages)


@step("generate_answer", reads=(SOURCES, MESSAGES), optional=(FEEDBACK,),
      provides=(ATTEMPT, ANSWER, MODEL, ANSWERED), input="answer")
def generate_answer(run, params: dict) -> None:
    a = run.job.request.answer
    attempt = run.state.get(ATTEMPT, 0) + 1
    run.state[ATTEMPT] = attempt
    models = list(a.models) or params.get("models") or run.settings.answer_models or [""]
    model = models[min(attempt - 1, len(models) - 1)]
    if attempt > 1 and model != models[min(attempt - 2, len(models) - 1)]:  # the cascade moves up
        previous = models[min(attempt - 2, len(models) - 1)]
        metrics.ESCALATIONS.labels("answer", previous or "-", model or "-").inc()
        run.emit("cascade.escalated", "generate_answer", {"from_model": previous, "to_model": model,
                                                          "attempt": attempt})
    messages = run.state[MESSAGES]
    if attempt > 1 and run.state.get(FEEDBACK):
        messages = ctxmod.retry_messages(a.question, run.state[SOURCES], run.state[ANSWER], run.state[FEEDBACK])
    if not run.state[SOURCES]:
        with run.step("generate_answer", "", {"reason": "no sources retrieved"}, attempt=attempt) as rec:
            rec.status = "skipped"
            rec.output = {"text": ctxmod.NOT_IN_SOURCES}
        run.state.update(answer=ctxmod.NOT_IN_SOURCES, model="", answered=False)
        return
    sampling = gpb.SamplingParams(max_new_tokens=max_new_tokens(run), temperature=0.0)
    sampling.MergeFrom(a.sampling)
    request = gpb.GenerateStreamRequest(
        model=model, messages=[gpb.ChatMessage(role=r, content=c) for r, c in messages], sampling=sampling
    )
    with run.step("generate_answer", "generator", to_json(request), attempt=attempt) as rec:
        text, final = stream_generation(run, "generate_answer", request, rec, attempt)
    run.state.update(answer=text.strip(), model=final.model, answered=not ctxmod.is_refusal(text))


@step("cite_answer", reads=(ANSWER, SOURCES), optional=(ATTEMPT, ANSWERED), provides=(ANSWER,), input="answer")
def cite_answer(run, params: dict) -> None:
    """Attach [n] to uncited answer sentences that one source clearly supports (see context.py)."""
    if not run.state.get(ANSWERED, True):
        return
    attempt = run.state.get(ATTEMPT, 1)
    answer = run.state[ANSWER]
    with run.step("cite_answer", "", {"answer": answer}, attempt=attempt) as rec:
        cited, added = ctxmod.attach_citations(answer, run.state[SOURCES],
                                               min_support=params.get("min_support", 0.6))
        rec.output = {"added": added, "answer": cited}
        if not added:
            rec.status = "unchanged"
    if added:
        run.state[ANSWER] = cited
        run.emit("answer.cited", "cite_answer", {"answer": cited, "added": added, "attempt": attempt})


@step("validate_answer", reads=(ANSWER, SOURCES), optional=(ATTEMPT, ANSWERED), provides=(VERDICT, FEEDBACK),
      input="answer")
def validate_answer(run, params: dict) -> str | None:
    a = run.job.request.answer
    attempt = run.state.get(ATTEMPT, 1)
    if not run.state.get(ANSWERED, True):
        # An honest "not in the sources" needs no citations; nothing to ground.
        with run.step("validate_answer", "", {"reason": "answer says the sources lack it"}, attempt=attempt) as rec:
            rec.status = "skipped"
        run.state[VERDICT] = None
        return None
    request = vpb.ValidateRequest(
        artifact=vpb.Artifact(text=run.state[ANSWER]),
        context=vpb.ValidationContext(
            request=a.question,
            sources=[vpb.Source(id=str(i), text=c.text) for i, c in enumerate(run.state[SOURCES], 1)],
        ),
        policy=a.policy or params.get("policy", "rag-answer"),
    )
    with run.step("validate_answer", "validator", to_json(request), attempt=attempt) as rec:
        verdict = run.client("validator", "validate_answer").validate(request, timeout=run.timeout())
        rec.output = to_json(verdict)
        rec.service_ms = verdict.duration_ms
    run.state.update(verdict=verdict, feedback=verdict.feedback)
    run.emit("validate.verdict", "validate_answer", {"passed": verdict.passed, "score": verdict.score,
                                                     "feedback": verdict.feedback, "attempt": attempt})
    return None if verdict.passed else "failed"


def fill_result(job: opb.Job, state) -> None:
    answer = state.get(ANSWER, "")
    cited = ctxmod.cited_numbers(answer)
    result = opb.AnswerResult(
        answer=answer, model=state.get(MODEL, ""), attempts=state.get(ATTEMPT, 0),
        answered=state.get(ANSWERED, False),
        citations=[
            opb.Citation(index=i, chunk_id=c.chunk_id, document_id=c.document_id, source=c.source,
                         text=c.text, score=c.score, cited=i in cited)
            for i, c in enumerate(state.get(SOURCES, []), 1)
        ],
    )
    if state.get(VERDICT) is not None:
        result.verdict.CopyFrom(state.get(VERDICT))
    job.answer.CopyFrom(result)


register(JobKind(
    name="answer",
    validate=validate,
    fill_result=fill_result,
    max_retries=lambda a: opt(a, "max_retries"),
    pipelines={
        "answer": Pipeline(
            kind="answer",
            description="RAG: retrieve, build a numbered context, generate a cited answer, attach citations the "
            "model left out where one source clearly supports a sentence, validate; re-ask with the validator's "
            "feedback (escalating along the model cascade) until it passes or retries run out",
            steps=[
                StepDef(name="retrieve"),
                StepDef(name="build_context"),
                StepDef(name="generate_answer"),
                StepDef(name="cite_answer", params={"min_support": 0.6}),
                StepDef(name="validate_answer", params={"policy": "rag-answer"}),
            ],
            retry=RetryRule(on="validate_answer", restart_at="generate_answer", max_retries=2),
        ),
    },
))
