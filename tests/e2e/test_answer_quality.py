"""An answer job, end to end in one process with the real parts (embedded retriever with MiniLM,
the Qwen2.5-0.5B generator, the validator's rag-answer policy): its first attempt is a scripted
restatement of the question, the validator rejects it as one and points at the passage that holds
the fact, and the retry, written by the real model from that passage, gives the fact."""

from __future__ import annotations

import json

import pytest

from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from genstack.retriever.v1 import retriever_pb2 as rpb
from services.orchestrator.core import OrchestratorCore
from services.orchestrator.pipelines import shipped
from services.orchestrator.settings import OrchestratorSettings
from shared.config import Settings
from tests.support import unique

pytestmark = pytest.mark.slow

MODEL = "qwen2.5-0.5b"
PAGE = """<html><body><h1>Limits In SQLite</h1>
<p>This article defines the limits of SQLite and how they can be customized.</p>
<dl>
<dt>Maximum length of a string or BLOB</dt>
<dd><p>The maximum number of bytes in a string or BLOB is defined by the macro SQLITE_MAX_LENGTH.
The default value of this macro is 1 billion.</p></dd>
<dt>Maximum Number Of Columns</dt>
<dd><p>The SQLITE_MAX_COLUMN compile-time parameter sets an upper bound on the number of columns in a
table. The default setting for SQLITE_MAX_COLUMN is 2000. You can change it at compile time to values
as large as 32767.</p></dd>
<dt>Maximum Number Of Attached Databases</dt>
<dd><p>The number of simultaneously attached databases is limited to SQLITE_MAX_ATTACHED, which is set
to 10 by default.</p></dd>
</dl></body></html>"""
OTHER = "<html><body><h1>VACUUM</h1><p>The VACUUM command rebuilds the database file.</p></body></html>"
QUESTION = "What is the default setting for SQLITE_MAX_COLUMN?"
RESTATEMENT = "SQLITE_MAX_COLUMN has a default setting [1]."


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    pipeline = shipped()["answer"].model_dump()
    for step in pipeline["steps"]:
        if step["name"] == "generate_answer":
            step["params"]["scripted_answers"] = [RESTATEMENT]
    path = tmp_path_factory.mktemp("pipelines") / "pipelines.json"
    path.write_text(json.dumps({"answer-first-restates": pipeline}))
    core = OrchestratorCore(OrchestratorSettings(store="memory", pipelines_file=str(path)),
                            Settings(transport="inproc"))
    collection = unique("aq").replace("-", "_")
    job, _ = core.create(pb.SubmitJobRequest(ingest=rpb.IngestDocumentsRequest(collection=collection, documents=[
        rpb.Document(id="limits.html", text=PAGE, content_type="text/html", source="limits.html"),
        rpb.Document(id="vacuum.html", text=OTHER, content_type="text/html", source="vacuum.html")])))
    assert core.run(job).state == pb.JOB_STATE_SUCCEEDED
    yield core, collection
    core.close()


@pytest.mark.timeout(1500)  # about 2 minutes on a quiet 2-core machine; far more when it is shared and loaded
def test_a_restating_first_attempt_is_rejected_and_the_real_retry_gives_the_fact(core):
    core, collection = core
    job, _ = core.create(pb.SubmitJobRequest(pipeline="answer-first-restates", answer=pb.AnswerInput(
        question=QUESTION, collection=collection, models=[MODEL], max_retries=2)))
    record = core.run(job)
    generated = [s for s in record.steps if s.name == "generate_answer"]
    validated = [s for s in record.steps if s.name == "validate_answer"]
    # attempt 1: the scripted restatement, rejected by answers_question with feedback naming what is missing
    assert generated[0].status == "scripted" and json.loads(generated[0].output_json)["text"] == RESTATEMENT
    first = json.loads(validated[0].output_json)
    assert first.get("passed") is not True
    check = next(r for r in first["results"] if r["name"] == "answers_question")
    assert check.get("passed") is not True and "restates the question" in check["feedback"]
    assert "2000" in check["feedback"]  # it points at the passage that holds the fact
    # attempt 2 is the real model, asked the question over the passage the validator pointed at,
    # alone and under its own source number, and it gives the fact
    assert generated[1].service == "generator"
    prompt = json.loads(generated[1].input_json)["messages"][-1]["content"]
    assert "SQLITE_MAX_COLUMN is 2000" in prompt and "VACUUM" not in prompt and QUESTION in prompt
    assert record.state == pb.JOB_STATE_SUCCEEDED, record.error
    assert "2000" in record.answer.answer and record.answer.model.startswith("qwen")
    assert record.answer.answered and record.answer.attempts >= 2
    assert RESTATEMENT not in record.answer.answer  # the result is one attempt, not a concatenation
    assert any(c.cited and c.source == "limits.html" for c in record.answer.citations)
