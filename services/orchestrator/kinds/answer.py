"""The `answer` kind: retrieve, build a numbered context, generate a cited answer, attach the
citations a small model left out, validate (refusals too); re-ask over the passage the validator
pointed at (or with its feedback when it pointed at none); after the last retry, that passage quoted
or the refusal, if it passes its check. Every attempt is kept; the result is the best one (a passing
attempt, else the highest-scoring), never a concatenation of attempts."""

from __future__ import annotations

import re

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from genstack.retriever.v1 import retriever_pb2 as rpb
from genstack.validator.v1 import validator_pb2 as vpb
from services.orchestrator import context as ctxmod
from services.orchestrator import screening  # noqa: F401 - registers the screen_sources step
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.kinds.generate import stream_generation
from services.orchestrator.pipelines import Pipeline, RetryRule, StepDef
from services.orchestrator.steps import slot, step, to_json
from shared import metrics
from shared.errors import require
from shared.rpc import opt

MAX_QUESTION_CHARS = 4000
# The shipped pipeline's prompt style and answer shape, chosen on bench/answer_quality.py's tuning split
# (2026-12-07, Qwen2.5-0.5B in float32): "sentences" answered 18 of 30 SQLite tuning questions right, the
# "fact" style 8 of 22 (its first attempt was often a bare "[1]." that the validator rightly rejected).
DEFAULT_STYLE = {"style": "sentences"}
DEFAULT_GENERATION = {"max_new_tokens": 64, "max_sentences": 2}

CHUNKS = slot("chunks", list)
SOURCES = slot("sources", list)
MESSAGES = slot("messages", list)
ATTEMPT = slot("attempt", int)
ANSWER = slot("answer", str)
MODEL = slot("model", str)
ANSWERED = slot("answered", bool)
VERDICT = slot("verdict", (vpb.ValidateResponse, type(None)))
FEEDBACK = slot("feedback", str)
ATTEMPTS = slot("attempts", list)


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


def max_new_tokens(run, params: dict | None = None) -> int:
    """The request's cap, else the pipeline's (short-answer styles need few tokens), else the setting."""
    s = run.job.request.answer.sampling
    if s.HasField("max_new_tokens"):
        return s.max_new_tokens
    return int((params or {}).get("max_new_tokens") or run.settings.answer_max_new_tokens)


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
        ctxmod.Chunk(h.chunk_id, h.document_id, h.source or h.metadata.get("source", ""), h.text, h.score, h.section)
        for h in response.hits
    ]


@step("build_context", reads=(CHUNKS,), provides=(SOURCES, MESSAGES), input="answer")
def build_context(run, params: dict) -> None:
    s = run.settings
    question = run.job.request.answer.question
    with run.step("build_context", "", {"chunks": len(run.state[CHUNKS]), "budget_tokens": s.context_tokens}) as rec:
        style = params.get("style", "sentences")
        prompt_cost = ctxmod.count_tokens(ctxmod.system_prompt(style)) + ctxmod.count_tokens(question) + 33
        budget = max(0, params.get("context_tokens", s.context_tokens) - prompt_cost - max_new_tokens(run, params))
        kept, dropped = ctxmod.select_chunks(run.state[CHUNKS], budget)
        kept = kept[: params.get("max_sources", len(kept))]
        messages = ctxmod.answer_messages(question, kept, style, bool(params.get("sections", False)))
        rec.output = {
            "budget_tokens": budget,
            "kept": [c.chunk_id for c in kept],
            "dropped": dropped,
            "messages": [{"role": r, "content": c} for r, c in messages],
        }
    run.state.update(sources=kept, messages=messages)


def _evidence(verdict) -> list[tuple[int, str]]:
    """The source passages a failed verdict pointed at (candidate answers) with their source numbers."""
    if verdict is None:
        return []
    out = []
    for r in verdict.results:
        for e in r.evidence:
            m = re.fullmatch(r"sources? \[?(\d+)\]?", e.where.strip())
            if not r.passed and e.kind == "candidate_answer" and e.text and m:
                out.append((int(m.group(1)), e.text))
    return out


@step("generate_answer", reads=(SOURCES, MESSAGES), optional=(FEEDBACK, VERDICT),
      provides=(ATTEMPT, ANSWER, MODEL, ANSWERED), input="answer")
def generate_answer(run, params: dict) -> None:
    """Params: style (prompt style, see context.PROMPTS), max_new_tokens, max_sentences (answer kept to
    its first sentences; 0 keeps all), pick_sentence (constrain the output to one source sentence and
    its number, or the refusal), models (the cascade when the request names none), focus_retry (on:
    a retry after a verdict that points at a source passage asks the question over that passage
    alone), focus_feedback (off: that retry also shows the rejected answer and the feedback's first
    sentence; it measured no better on the tuning split, and Qwen copied the rejected answer's shape)
    and, for tests and demonstrations only, scripted_answers: texts used instead of the model for the
    first attempts."""
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
    style = params.get("style", "sentences")
    messages = run.state[MESSAGES]
    evidence = _evidence(run.state.get(VERDICT)) if attempt > 1 else []
    if evidence and params.get("focus_retry", True):
        n, passage = evidence[0]
        with_feedback = bool(params.get("focus_feedback", False))
        messages = ctxmod.focused_messages(a.question, passage, n, style, run.state.get(ANSWER, "") if with_feedback
                                           else "", run.state.get(FEEDBACK, "") if with_feedback else "")
    elif attempt > 1 and run.state.get(FEEDBACK):
        messages = ctxmod.retry_messages(a.question, run.state[SOURCES], run.state[ANSWER], run.state[FEEDBACK],
                                         style, [t for _, t in evidence], bool(params.get("sections")))
    if not run.state[SOURCES]:
        with run.step("generate_answer", "", {"reason": "no sources retrieved"}, attempt=attempt) as rec:
            rec.status = "skipped"
            rec.output = {"text": ctxmod.NOT_IN_SOURCES}
        run.state.update(answer=ctxmod.NOT_IN_SOURCES, model="", answered=False)
        return
    scripted = list(params.get("scripted_answers") or [])
    if attempt <= len(scripted):
        with run.step("generate_answer", "", {"scripted": True, "messages": [list(m) for m in messages]},
                      attempt=attempt) as rec:
            rec.status = "scripted"
            rec.output = {"text": scripted[attempt - 1]}
        text = scripted[attempt - 1]
        run.state.update(answer=text, model="scripted", answered=not ctxmod.is_refusal(text))
        return
    if attempt == 1 and params.get("warm_validator", True):
        _warm_validator(run)
    sampling = gpb.SamplingParams(max_new_tokens=max_new_tokens(run, params), temperature=0.0)
    sampling.MergeFrom(a.sampling)
    request = gpb.GenerateStreamRequest(
        model=model, messages=[gpb.ChatMessage(role=r, content=c) for r, c in messages], sampling=sampling
    )
    if params.get("pick_sentence"):
        # extractive by construction: the output can only be one source sentence with its number, or the refusal
        choices = ctxmod.sentence_choices(run.state[SOURCES])
        request.response_format.choices.values.extend(choices)
        request.sampling.max_new_tokens = max(request.sampling.max_new_tokens, 160)
    with run.step("generate_answer", "generator", to_json(request), attempt=attempt) as rec:
        raw, final = stream_generation(run, "generate_answer", request, rec, attempt)
        text = ctxmod.tidy_answer(raw, int(params.get("max_sentences", 0)))
        if text != raw.strip():
            rec.output["tidied"] = text
    run.state.update(answer=text, model=final.model, answered=not ctxmod.is_refusal(text))


@step("cite_answer", reads=(ANSWER, SOURCES), optional=(ATTEMPT, ANSWERED), provides=(ANSWER,), input="answer")
def cite_answer(run, params: dict) -> None:
    """Attach [n] to uncited answer sentences that one source clearly supports (see context.py)."""
    if not run.state.get(ANSWERED, True):
        return
    attempt = run.state.get(ATTEMPT, 1)
    answer = run.state[ANSWER]
    with run.step("cite_answer", "", {"answer": answer}, attempt=attempt) as rec:
        cited, added = ctxmod.attach_citations(answer, run.state[SOURCES], min_support=params.get("min_support", 0.6),
                                               question=run.job.request.answer.question)
        rec.output = {"added": added, "answer": cited}
        if not added:
            rec.status = "unchanged"
    if added:
        run.state[ANSWER] = cited
        run.emit("answer.cited", "cite_answer", {"answer": cited, "added": added, "attempt": attempt})


@step("validate_answer", reads=(ANSWER, SOURCES), optional=(ATTEMPT, ANSWERED, MODEL),
      provides=(VERDICT, FEEDBACK, ATTEMPTS), input="answer")
def validate_answer(run, params: dict) -> str | None:
    """Validate the answer with `policy`, a refusal with `refusal_policy` (empty: refusals pass
    unchecked); every attempt is appended to the attempts slot with its verdict. When the last attempt
    is rejected and `fall_back` is on (the default), the passage the verdict pointed at, quoted, or
    else the refusal can become the result (see _fall_back; the rejected attempts stay in the record)."""
    a = run.job.request.answer
    attempt = run.state.get(ATTEMPT, 1)
    answered = run.state.get(ANSWERED, True)
    attempts = list(run.state.get(ATTEMPTS) or [])
    record = {"attempt": attempt, "answer": run.state[ANSWER], "model": run.state.get(MODEL, ""),
              "answered": answered, "passed": True, "score": 1.0, "feedback": "", "verdict": None}
    # the request's policy, when it names one, judges every attempt; else answers and refusals each get theirs
    policy = a.policy or (params.get("policy", "rag-answer") if answered else params.get("refusal_policy",
                                                                                         "rag-refusal"))
    if not run.state[SOURCES] or not policy:
        # Nothing retrieved: "not in the sources" is the honest answer and there is nothing to check it against.
        with run.step("validate_answer", "", {"reason": "no sources retrieved" if not run.state[SOURCES] else
                                              "refusals are not checked by this pipeline"}, attempt=attempt) as rec:
            rec.status = "skipped"
        run.state.update(verdict=None, attempts=attempts + [record])
        return None
    verdict = _validate(run, "validate_answer", run.state[ANSWER], policy, attempt)
    record.update(passed=verdict.passed, score=verdict.score, feedback=verdict.feedback, verdict=verdict)
    attempts.append(record)
    run.state.update(verdict=verdict, feedback=verdict.feedback, attempts=attempts)
    run.emit("validate.verdict", "validate_answer", {"passed": verdict.passed, "score": verdict.score,
                                                     "feedback": verdict.feedback, "attempt": attempt,
                                                     "refusal": not answered})
    if verdict.passed:
        return None
    # (max_retries 0 asks for the model's one answer, passed or rejected: no fallback either)
    if run.retries_allowed and run.retries_left == 0 and not a.policy and params.get("fall_back", True):
        return _fall_back(run, params, verdict, attempt, attempts)
    return "failed"


def _fall_back(run, params: dict, verdict, attempt: int, attempts: list[dict]) -> str | None:
    """Every attempt was rejected. The passage the validator found holding the question's key terms
    and a candidate answer, quoted with its source number, is the answer if it passes the answer
    policy; else, if the refusal passes its own check (no top source holds a candidate), the refusal
    is the honest result. Neither: the job fails with the best rejected attempt kept for inspection."""
    evidence = _evidence(verdict)
    tries = []
    if evidence:
        n, passage = evidence[0]
        tries.append(("quote_source", ctxmod.quote_passage(passage, n), params.get("policy", "rag-answer"), True))
    if run.state.get(ANSWERED, True):  # (a rejected refusal was already checked with that policy)
        tries.append(("check_refusal", ctxmod.NOT_IN_SOURCES, params.get("refusal_policy", "rag-refusal"), False))
    for step_name, text, policy, answered in tries:
        if not policy:
            continue
        checked = _validate(run, step_name, text, policy, attempt)
        if checked.passed:
            attempts.append({"attempt": attempt, "answer": text, "model": "", "answered": answered, "passed": True,
                             "score": checked.score, "feedback": "", "verdict": checked, "fallback": step_name})
            run.state.update(verdict=checked, feedback="", attempts=attempts)
            run.emit("answer.fallback", step_name, {"attempt": attempt, "answer": text, "answered": answered})
            return None
    return "failed"


def _context(run) -> vpb.ValidationContext:
    return vpb.ValidationContext(
        request=run.job.request.answer.question,
        sources=[vpb.Source(id=str(i), text=c.text) for i, c in enumerate(run.state[SOURCES], 1)],
    )


def _warm_validator(run) -> None:
    """Have the validator embed the sources (every sentence and chunk, for groundedness) while the
    generator writes: the two overlap on separate cores, and the answer's validation finds the
    vectors in the validator's cache (about 1.5 s with four chunks on one thread). Best effort: a
    failure here only means the validation does the work itself."""
    request = vpb.ValidateRequest(artifact=vpb.Artifact(text=run.job.request.answer.question), context=_context(run),
                                  checks=[vpb.CheckSpec(name="groundedness")])
    client = run.core.client("validator", run.core.transport_for("validate_answer"))
    run.side["validator_warmup"] = run.core.in_background(client.validate, request, run.timeout())


def _validate(run, step: str, text: str, policy: str, attempt: int) -> vpb.ValidateResponse:
    warm = run.side.pop("validator_warmup", None)
    if warm is not None:  # (the same embeddings computed twice at once would cost both calls)
        try:
            warm.result(timeout=run.timeout())
        except Exception:  # noqa: BLE001 - best effort, see _warm_validator
            pass
    request = vpb.ValidateRequest(artifact=vpb.Artifact(text=text), context=_context(run), policy=policy)
    with run.step(step, "validator", to_json(request), attempt=attempt) as rec:
        verdict = run.client("validator", step).validate(request, timeout=run.timeout())
        rec.output = to_json(verdict)
        rec.service_ms = verdict.duration_ms
    return verdict


def best_attempt(attempts: list[dict]) -> dict | None:
    """The attempt to report: the first that passed, else the highest score (an answer before a
    refusal when tied, then the later attempt, which had the feedback and perhaps a larger model).
    Never a mix of attempts."""
    if not attempts:
        return None
    passing = [t for t in attempts if t["passed"]]
    if passing:
        return passing[0]
    return max(attempts, key=lambda t: (t["score"], t["answered"], t["attempt"]))


def fill_result(job: opb.Job, state) -> None:
    chosen = best_attempt(state.get(ATTEMPTS) or [])
    if chosen is None:
        answer, model, answered, verdict = (state.get(ANSWER, ""), state.get(MODEL, ""), state.get(ANSWERED, False),
                                            state.get(VERDICT))
    else:
        answer, model, answered, verdict = chosen["answer"], chosen["model"], chosen["answered"], chosen["verdict"]
    cited = ctxmod.cited_numbers(answer)
    result = opb.AnswerResult(
        answer=answer, model=model, attempts=state.get(ATTEMPT, 0),
        answered=answered,
        citations=[
            opb.Citation(index=i, chunk_id=c.chunk_id, document_id=c.document_id, source=c.source,
                         text=c.text, score=c.score, cited=i in cited)
            for i, c in enumerate(state.get(SOURCES, []), 1)
        ],
    )
    if verdict is not None:
        result.verdict.CopyFrom(verdict)
        if not verdict.passed:  # kept for inspection, never returned as the answer
            result.rejected, result.rejected_answer, result.answer = True, result.answer, ""
    job.answer.CopyFrom(result)


register(JobKind(
    name="answer",
    validate=validate,
    fill_result=fill_result,
    max_retries=lambda a: opt(a, "max_retries"),
    pipelines={
        "answer": Pipeline(
            kind="answer",
            description="RAG: retrieve, build a numbered context, generate the fact first in a short cited answer, "
            "attach citations the model left out where one source clearly supports a sentence, validate (a "
            "restatement fails; a refusal fails when a top source holds the answer); re-ask over the passage the "
            "validator points at, or with its feedback (escalating along the model cascade), until it passes or "
            "retries run out; then that passage quoted, or the refusal, if it passes; the result is the best attempt",
            steps=[
                StepDef(name="retrieve"),
                StepDef(name="screen_sources", params={"on_injection": "drop"}),
                StepDef(name="build_context", params=dict(DEFAULT_STYLE)),
                StepDef(name="generate_answer", params={**DEFAULT_STYLE, **DEFAULT_GENERATION}),
                StepDef(name="cite_answer", params={"min_support": 0.6}),
                StepDef(name="validate_answer", params={"policy": "rag-answer", "refusal_policy": "rag-refusal"}),
            ],
            retry=RetryRule(on="validate_answer", restart_at="generate_answer", max_retries=2),
        ),
    },
))
