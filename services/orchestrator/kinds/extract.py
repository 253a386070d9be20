"""The `extract` kind: "fill this schema from my documents". Retrieve, screen the sources, generate
a JSON object under the schema (constrained decoding: the output cannot be invalid), validate it
with json-output; a property marked "x-cite": true is filled as {"value": ..., "sources": [n]}."""

from __future__ import annotations

import copy
import json

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from genstack.retriever.v1 import retriever_pb2 as rpb
from genstack.validator.v1 import validator_pb2 as vpb
from services.orchestrator import context as ctxmod
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.kinds.generate import stream_generation
from services.orchestrator.pipelines import Pipeline, RetryRule, StepDef
from services.orchestrator.steps import slot, step, to_json
from shared.errors import InvalidArgument, require
from shared.rpc import opt

MAX_INSTRUCTION_CHARS = 4000
MAX_SCHEMA_CHARS = 20_000
CITE = "x-cite"

SOURCES = slot("extract_sources", list)
OUTPUT = slot("extract_output", str)
COMPLETE = slot("extract_complete", bool)
MODEL = slot("extract_model", str)
VERDICT = slot("extract_verdict", vpb.ValidateResponse)

SYSTEM = ("You fill a JSON object from the numbered sources you are given, using only what they say. "
          "Where a field asks for sources, list the numbers of the sources that state its value. "
          "Answer with the JSON object only.")


def _user_schema(e: opb.ExtractInput) -> dict:
    try:
        schema = json.loads(e.json_schema)
    except ValueError as exc:
        raise InvalidArgument(f"is not JSON: {exc}", field="extract.json_schema") from None
    require(isinstance(schema, dict), "extract.json_schema", "a JSON object (a JSON Schema)")
    return schema


def with_citations(schema: dict, sources: int) -> dict:
    """The schema the model decodes under: each property marked x-cite becomes {value, sources}."""
    out = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        for name, prop in list((node.get("properties") or {}).items()):
            if isinstance(prop, dict) and prop.pop(CITE, False):
                node["properties"][name] = {
                    "type": "object",
                    "properties": {"value": prop, "sources": {
                        "type": "array", "minItems": 1, "maxItems": 3,
                        "items": {"type": "integer", "minimum": 1, "maximum": max(1, sources)}}},
                    "required": ["value", "sources"], "additionalProperties": False,
                }
            else:
                walk(prop)
        walk(node.get("items"))

    walk(out)
    return out


def cited_sources(doc) -> set[int]:
    found: set[int] = set()
    if isinstance(doc, dict):
        if set(doc) == {"value", "sources"} and isinstance(doc["sources"], list):
            found |= {n for n in doc["sources"] if isinstance(n, int)}
        for v in doc.values():
            found |= cited_sources(v)
    elif isinstance(doc, list):
        for v in doc:
            found |= cited_sources(v)
    return found


def validate(e: opb.ExtractInput, settings) -> None:
    require(bool(e.instruction.strip()), "extract.instruction", "a non-empty instruction")
    require(len(e.instruction) <= MAX_INSTRUCTION_CHARS, "extract.instruction",
            f"at most {MAX_INSTRUCTION_CHARS} characters", len(e.instruction))
    require(len(e.json_schema) <= MAX_SCHEMA_CHARS, "extract.json_schema", f"at most {MAX_SCHEMA_CHARS} characters",
            len(e.json_schema))
    _user_schema(e)
    if e.HasField("top_k"):
        require(1 <= e.top_k <= 50, "extract.top_k", "between 1 and 50", e.top_k)
    if e.HasField("max_new_tokens"):
        require(1 <= e.max_new_tokens <= 2048, "extract.max_new_tokens", "between 1 and 2048", e.max_new_tokens)


@step("retrieve_for_extract", provides=(SOURCES,), input="extract")
def retrieve_for_extract(run, params: dict) -> None:
    e = run.job.request.extract
    request = rpb.SearchRequest(collection=e.collection or run.settings.default_collection, query=e.instruction,
                                top_k=e.top_k if e.HasField("top_k") else params.get("top_k", 4),
                                mode=rpb.SEARCH_MODE_HYBRID)
    with run.step("retrieve_for_extract", "retriever", to_json(request)) as rec:
        response = run.client("retriever", "retrieve_for_extract").search(request, timeout=run.timeout())
        rec.output = to_json(response)
        rec.service_ms = response.took_ms
    run.state[SOURCES] = [ctxmod.Chunk(h.chunk_id, h.document_id, h.source, h.text, h.score) for h in response.hits]


@step("generate_extraction", reads=(SOURCES,), provides=(OUTPUT, COMPLETE, MODEL), input="extract")
def generate_extraction(run, params: dict) -> None:
    e = run.job.request.extract
    sources = run.state[SOURCES]
    schema = with_citations(_user_schema(e), len(sources))
    user = f"Sources:\n{ctxmod.render_sources(sources)}\nFill this from the sources: {e.instruction}"
    request = gpb.GenerateStreamRequest(
        model=e.model, messages=[gpb.ChatMessage(role="system", content=SYSTEM), gpb.ChatMessage(role="user",
                                                                                                  content=user)],
        sampling=gpb.SamplingParams(temperature=0.0, max_new_tokens=opt(e, "max_new_tokens")
                                    or params.get("max_new_tokens", 256)),
        response_format=gpb.ResponseFormat(json_schema=json.dumps(schema)),
    )
    with run.step("generate_extraction", "generator", to_json(request)) as rec:
        text, final = stream_generation(run, "generate_extraction", request, rec)
    complete = final.constraint_status == gpb.CONSTRAINT_STATUS_COMPLETE
    run.state.update(extract_output=text, extract_complete=complete, extract_model=final.model)


@step("validate_extraction", reads=(OUTPUT, COMPLETE, SOURCES), provides=(VERDICT,), input="extract")
def validate_extraction(run, params: dict) -> str | None:
    e = run.job.request.extract
    schema = with_citations(_user_schema(e), len(run.state[SOURCES]))
    request = vpb.ValidateRequest(artifact=vpb.Artifact(text=run.state[OUTPUT]), policy=params.get("policy",
                                                                                                  "json-output"))
    check = request.checks.add(name="json_schema")
    check.params.update({"schema": schema})
    with run.step("validate_extraction", "validator", to_json(request)) as rec:
        verdict = run.client("validator", "validate_extraction").validate(request, timeout=run.timeout())
        rec.output = to_json(verdict)
        rec.service_ms = verdict.duration_ms
    if not run.state[COMPLETE] and verdict.passed:  # never claim valid what was cut short
        verdict.passed = False
        verdict.feedback = "the output stopped before the object was complete; allow more tokens"
    run.state[VERDICT] = verdict
    run.emit("validate.verdict", "validate_extraction", {"passed": verdict.passed, "feedback": verdict.feedback})
    return None if verdict.passed else "failed"


def fill_result(job: opb.Job, state) -> None:
    text = state.get(OUTPUT, "")
    try:
        cited = cited_sources(json.loads(text))
    except ValueError:
        cited = set()
    result = opb.ExtractResult(
        json=text, complete=state.get(COMPLETE, False), model=state.get(MODEL, ""),
        citations=[opb.Citation(index=i, chunk_id=c.chunk_id, document_id=c.document_id, source=c.source,
                                text=c.text, score=c.score, cited=i in cited)
                   for i, c in enumerate(state.get(SOURCES, []), 1)])
    if state.get(VERDICT) is not None:
        result.verdict.CopyFrom(state.get(VERDICT))
    job.extract.CopyFrom(result)


register(JobKind(
    name="extract",
    validate=validate,
    fill_result=fill_result,
    result_needs=(OUTPUT,),
    pipelines={
        "extract": Pipeline(
            kind="extract",
            description="Fill a JSON Schema from the documents: retrieve, generate under the schema (constrained "
            "decoding), validate with json-output; x-cite properties carry the numbers of their sources",
            steps=[StepDef(name="retrieve_for_extract"), StepDef(name="generate_extraction"),
                   StepDef(name="validate_extraction", params={"policy": "json-output"})],
            # a failed verdict fails the job; a pipeline file may allow re-asks
            retry=RetryRule(on="validate_extraction", restart_at="generate_extraction", max_retries=0),
        ),
    },
))
