"""What `genstack ask` and `genstack demo` print for an answer job: the answer once (streamed),
the citations the cite step added listed by sentence, a Sources legend, and a hint to ingest when
the collection is missing. A fake orchestrator client replays the events a job produces."""

from __future__ import annotations

import io
import json

from google.protobuf import json_format

import shared  # noqa: F401 - generated stubs on sys.path
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from services.orchestrator.cli import job_document, run_answer

ANSWER = "The validator returns a verdict. It also returns feedback."
CITED = "The validator returns a verdict [1]. It also returns feedback."


class FakeClient:
    def __init__(self, events: list[tuple[str, str, dict]], job: pb.Job):
        self.events = [pb.JobEvent(event_id=str(i + 1), job_id=job.job_id, type=t, step=s, data_json=json.dumps(d))
                       for i, (t, s, d) in enumerate(events)]
        self.job = job

    def submit_job(self, request):
        return pb.SubmitJobResponse(job_id=self.job.job_id, created=True)

    def watch_job(self, job_id, after=""):
        start = int(after or 0)
        return [pb.WatchJobResponse(event=e) for e in self.events[start:]]

    def get_job(self, job_id):
        return self.job


def _answer_job(**kw) -> pb.Job:
    return pb.Job(**{"job_id": "a" * 32, "kind": "answer", "state": pb.JOB_STATE_SUCCEEDED, "duration_ms": 2500, **kw})


def test_the_answer_is_printed_once_and_the_added_citations_by_sentence():
    job = _answer_job(answer=pb.AnswerResult(
        answer=CITED, model="smollm2-135m", attempts=1,
        citations=[pb.Citation(index=1, source="docs/validator.md", score=0.9, cited=True),
                   pb.Citation(index=2, source="README.md", score=0.4, cited=False)]))
    events = [("step.started", "retrieve", {}),
              *[("generate.delta", "generate_answer", {"delta": w + " ", "attempt": 1}) for w in ANSWER.split(" ")],
              ("answer.cited", "cite_answer", {"answer": CITED, "added": [
                  {"sentence": "The validator returns a verdict.", "source": 1, "support": 0.9}], "attempt": 1}),
              ("job.succeeded", "", {})]
    out, err = io.StringIO(), io.StringIO()
    run_answer(FakeClient(events, job), pb.SubmitJobRequest(answer=pb.AnswerInput(question="q?")), out=out, err=err)
    text = out.getvalue()
    assert text.count("The validator returns a verdict") == 2  # streamed once, named once in the added list
    assert text.count("It also returns feedback") == 1
    assert '[1] added after: "The validator returns a verdict."' in text
    assert "Sources (* = cited in the answer):" in text
    assert " *[1] docs/validator.md" in text and "  [2] README.md" in text
    assert f"job {'a' * 32}" in text


def test_a_missing_collection_gets_a_hint_to_ingest_and_no_empty_sources():
    job = _answer_job(state=pb.JOB_STATE_FAILED, error="collection 'default' does not exist", error_code="NOT_FOUND")
    events = [("step.started", "retrieve", {}),
              ("step.failed", "retrieve", {"error": "collection 'default' does not exist"}),
              ("job.failed", "", {"error": "collection 'default' does not exist"})]
    out, err = io.StringIO(), io.StringIO()
    run_answer(FakeClient(events, job), pb.SubmitJobRequest(answer=pb.AnswerInput(question="q?")), out=out, err=err)
    assert "Sources" not in out.getvalue()
    assert err.getvalue().count("does not exist") == 0  # said once, as the hint below, not as a step failure
    assert "run `genstack ingest PATH... --collection default` first" in err.getvalue()


def test_json_held_in_strings_is_decoded_for_jobs_get():
    job = _answer_job(steps=[pb.StepRecord(name="retrieve", input_json='{"query": "q?"}', output_json="")])
    doc = job_document(job)
    assert doc["steps"][0]["input"] == {"query": "q?"}
    assert "inputJson" not in doc["steps"][0]
    assert json_format.MessageToDict(job)["steps"][0]["inputJson"] == '{"query": "q?"}'  # the proto form is kept


def test_a_step_failure_is_said_once_and_in_order():
    """A step that fails and ends the job with the same error: one line (the job's), not two; a step that
    fails and the job goes on (a retry): its line comes before the next step's progress."""
    deadline = "the job's deadline passed"
    job = _answer_job(state=pb.JOB_STATE_FAILED, error=deadline, answer=pb.AnswerResult(attempts=1))
    events = [("step.started", "retrieve", {}), ("step.failed", "retrieve", {"error": deadline}),
              ("job.failed", "", {"error": deadline})]
    out, err = io.StringIO(), io.StringIO()
    run_answer(FakeClient(events, job), pb.SubmitJobRequest(answer=pb.AnswerInput(question="q?")), out=out, err=err)
    assert err.getvalue().count(deadline) == 1, err.getvalue()

    job = _answer_job(answer=pb.AnswerResult(answer="ok", attempts=2))
    events = [("step.started", "generate_answer", {}), ("step.failed", "generate_answer", {"error": "generator busy"}),
              ("step.started", "generate_answer", {}), ("job.succeeded", "", {})]
    out, err = io.StringIO(), io.StringIO()
    run_answer(FakeClient(events, job), pb.SubmitJobRequest(answer=pb.AnswerInput(question="q?")), out=out, err=err)
    assert err.getvalue() == "[generate_answer failed: generator busy]\n"
