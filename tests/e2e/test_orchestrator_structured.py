"""Structured output through the orchestrator, embedded: a `generate` job under a JSON Schema is
checked by json-output with that schema (a cut-short one fails, never claimed valid), and an
`extract` job fills a schema from the documents with the sources of each cited field."""

from __future__ import annotations

import json

import jsonschema
import pytest

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from genstack.retriever.v1 import retriever_pb2 as rpb
from services.orchestrator.core import OrchestratorCore
from services.orchestrator.kinds.extract import with_citations
from services.orchestrator.settings import OrchestratorSettings
from shared.config import Settings
from shared.errors import InvalidArgument
from tests.support import unique

pytestmark = pytest.mark.slow

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 130}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def core():
    c = OrchestratorCore(OrchestratorSettings(store="memory"), Settings(transport="inproc"))
    yield c
    c.close()


def _generate(core, max_new_tokens: int) -> pb.Job:
    request = gpb.GenerateRequest(
        prompt="Invent a person and describe them as JSON.",
        sampling=gpb.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
        response_format=gpb.ResponseFormat(json_schema=json.dumps(PERSON)))
    job, _ = core.create(pb.SubmitJobRequest(generate=request))
    return core.run(job)


def test_a_schema_constrained_generate_job_validates(core):
    record = _generate(core, 64)
    assert record.state == pb.JOB_STATE_SUCCEEDED, record.error
    jsonschema.validate(json.loads(record.generate.text), PERSON)
    assert record.generate.constraint_status == gpb.CONSTRAINT_STATUS_COMPLETE
    assert record.generate_verdict.passed and [s.name for s in record.steps] == ["generate", "validate_output"]


def test_a_cut_short_object_fails_and_says_so(core):
    record = _generate(core, 3)
    assert record.generate.constraint_status == gpb.CONSTRAINT_STATUS_INCOMPLETE
    assert record.state == pb.JOB_STATE_FAILED and not record.generate_verdict.passed
    assert "validation failed" in record.error


def test_extract_fills_a_schema_from_the_documents_with_sources_per_field(core):
    collection = unique("extract").replace("-", "_")
    docs = [rpb.Document(id="tower", text="The Eiffel Tower was completed in 1889. Gustave Eiffel's company built it."),
            rpb.Document(id="bees", text="Honey bees dance to show where flowers are.")]
    job, _ = core.create(pb.SubmitJobRequest(ingest=rpb.IngestDocumentsRequest(collection=collection, documents=docs)))
    assert core.run(job).state == pb.JOB_STATE_SUCCEEDED
    schema = {"type": "object", "properties": {
        "monument": {"type": "string", "maxLength": 40, "x-cite": True},
        "year_completed": {"type": "integer", "minimum": 1000, "maximum": 2100, "x-cite": True}},
        "required": ["monument", "year_completed"], "additionalProperties": False}
    job, _ = core.create(pb.SubmitJobRequest(extract=pb.ExtractInput(
        instruction="the monument and the year it was completed", json_schema=json.dumps(schema),
        collection=collection, top_k=2, max_new_tokens=96)))
    record = core.run(job)
    result = record.extract
    assert result.complete, record.error
    doc = json.loads(result.json)
    jsonschema.validate(doc, with_citations(schema, len(result.citations)))  # always valid: constrained
    assert set(doc["year_completed"]) == {"value", "sources"}
    cited = {c.index for c in result.citations if c.cited}
    assert cited and cited <= set(range(1, len(result.citations) + 1))
    assert record.state == pb.JOB_STATE_SUCCEEDED and result.verdict.passed
    assert [s.name for s in record.steps] == ["retrieve_for_extract", "generate_extraction", "validate_extraction"]


def test_extract_refuses_a_schema_that_is_not_json(core):
    with pytest.raises(InvalidArgument, match="extract.json_schema"):
        core.create(pb.SubmitJobRequest(extract=pb.ExtractInput(instruction="x", json_schema="{not json")))
    with pytest.raises(InvalidArgument, match="extract.instruction"):
        core.create(pb.SubmitJobRequest(extract=pb.ExtractInput(instruction=" ", json_schema="{}")))
