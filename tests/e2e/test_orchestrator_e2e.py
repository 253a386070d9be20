"""The whole stack as real processes: orchestrator, retriever, generator and validator each run as
a gRPC server and a Celery worker on Redis. The orchestrator dispatches retrieval and generation
over gRPC and validation to the validator's Celery queue."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from celery import Celery

from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from genstack.retriever.v1 import retriever_pb2 as rpb
from shared.clients.orchestrator import OrchestratorClient
from shared.config import get_settings
from shared.errors import GenstackError
from tests.conftest import stop_session_processes
from tests.support import ServiceProcess, unique

pytestmark = pytest.mark.slow

SMALL, LARGE = "smollm2-135m", "qwen2.5-0.5b"
DOCS = {
    "paris": "Paris is the capital of France. The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
    "tokyo": "Tokyo is the capital of Japan. Tokyo hosted the Summer Olympic Games in 1964 and again in 2021.",
    "bees": "Honey bees tell each other where flowers are with a waggle dance performed inside the hive.",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_client):
    policies = tmp_path_factory.mktemp("policies") / "policies.yaml"
    policies.write_text("policies:\n  always-fail:\n    description: rejects everything (tests the retry loop)\n"
                        "    checks:\n      - name: regex\n"
                        "        params: {pattern: '^ZZZ-never$', must_match: true}\n")
    stop_session_processes()  # our workers carry a test policy; no other worker may share their queues
    for queue in ("retriever", "generator", "validator", "orchestrator"):
        redis_client.delete(queue)
    procs: list[ServiceProcess] = []
    env = {"GENSTACK_VALIDATOR_POLICIES_FILE": str(policies), "GENSTACK_GENERATOR_PRELOAD": f'["{SMALL}","{LARGE}"]'}
    try:
        addresses = {}
        for name in ("retriever", "generator", "validator"):
            for role in ("grpc", "worker"):
                p = ServiceProcess(name, role, env=env).start()
                procs.append(p)
                if role == "grpc":
                    addresses[f"GENSTACK_{name.upper()}_ADDRESS"] = p.address
        orch_env = {
            **env, **addresses, "GENSTACK_TRANSPORT": "grpc",
            "GENSTACK_ORCHESTRATOR_STEP_TRANSPORTS": json.dumps({"validate_answer": "celery"}),
        }
        server = ServiceProcess("orchestrator", "grpc", env=orch_env).start()
        procs.append(server)
        procs.append(ServiceProcess("orchestrator", "worker", env=orch_env).start())
        client = OrchestratorClient("grpc", address=server.address)
        collection = unique("e2e").replace("-", "_")
        docs = [rpb.Document(id=k, text=v, content_type="text/plain", source=f"{k}.txt") for k, v in DOCS.items()]
        job = client.submit_job(pb.SubmitJobRequest(ingest=rpb.IngestDocumentsRequest(collection=collection,
                                                                                      documents=docs)))
        record = wait(client, job.job_id)
        assert record.state == pb.JOB_STATE_SUCCEEDED, record.error
        yield client, collection
        client.close()
    finally:
        for p in reversed(procs):
            p.stop()


def wait(client, job_id, timeout=300) -> pb.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


def events(client, job_id, after=""):
    return [m.event for m in client.watch_job(job_id, after, timeout=300)]


def answer(collection, question, **kw):
    return pb.SubmitJobRequest(answer=pb.AnswerInput(question=question, collection=collection, top_k=3, **kw))


def test_answer_cites_the_right_document(stack):
    client, collection = stack
    job = client.submit_job(answer(collection, "When was the Eiffel Tower completed?", models=[LARGE]))
    record = wait(client, job.job_id)
    a = record.answer
    assert record.state == pb.JOB_STATE_SUCCEEDED, (record.error, a.answer)
    assert a.verdict.passed and a.answered
    cited = {c.document_id for c in a.citations if c.cited}
    assert cited == {"paris"}, (a.answer, [(c.index, c.document_id) for c in a.citations])
    assert "1889" in a.answer
    # the record keeps every step with its input, output, transport and timing
    screened = [s for s in record.steps if s.name == "screen_sources"]
    assert [(s.service, s.status) for s in screened] == [("validator", "ok")], "sources are screened for injection"
    steps = [(s.name, s.transport, s.status) for s in record.steps if s.name != "screen_sources"]
    assert steps[:3] == [("retrieve", "grpc", "ok"), ("build_context", "", "ok"), ("generate_answer", "grpc", "ok")]
    assert steps[3][:2] == ("cite_answer", "") and steps[3][2] in ("ok", "unchanged")
    assert steps[4] == ("validate_answer", "celery", "ok")
    assert all(s.duration_ms > 0 for s in record.steps)
    by_name = {s.name: s for s in record.steps}
    context = json.loads(by_name["build_context"].output_json)
    assert "[1]" in context["messages"][1]["content"]
    assert json.loads(by_name["validate_answer"].output_json)["passed"] is True


def test_an_unanswerable_question_is_never_answered_with_an_invented_citation(stack):
    client, collection = stack
    record = wait(client, client.submit_job(answer(collection, "What is the boiling point of mercury?",
                                                   models=[LARGE], max_retries=1)).job_id)
    a = record.answer
    if record.state == pb.JOB_STATE_SUCCEEDED:
        assert not a.answered and not any(c.cited for c in a.citations), a.answer
    else:
        assert record.state == pb.JOB_STATE_FAILED and not a.verdict.passed, (record.error, a.answer)


def test_failed_verdicts_retry_with_feedback_and_escalate_the_cascade(stack):
    client, collection = stack
    sampling = gpb.SamplingParams(max_new_tokens=8)
    record = wait(client, client.submit_job(answer(collection, "Where do bees dance?", models=[SMALL, LARGE],
                                                   max_retries=1, policy="always-fail",
                                                   sampling=sampling)).job_id)
    assert record.state == pb.JOB_STATE_FAILED
    assert record.error.startswith("validation failed after all retries")
    gens = [json.loads(s.output_json) for s in record.steps if s.name == "generate_answer"]
    assert [g["model"] for g in gens] == [SMALL, LARGE]
    second_prompt = json.loads([s for s in record.steps if s.name == "generate_answer"][1].input_json)
    assert "Reviewer's feedback" in second_prompt["messages"][1]["content"]
    assert record.answer.model == LARGE and record.answer.attempts == 2
    assert not record.answer.verdict.passed
    kinds = [e.type for e in events(client, record.job_id)]
    assert kinds.count("job.retry") == 1 and kinds[-1] == "job.failed"


def test_idempotent_submit_returns_the_same_job(stack):
    client, collection = stack
    key = unique("idem")
    req = answer(collection, "Where do bees dance?", models=[SMALL], sampling=gpb.SamplingParams(max_new_tokens=4))
    req.idempotency_key = key
    first = client.submit_job(req)
    again = client.submit_job(req)
    assert first.created and not again.created and again.job_id == first.job_id
    wait(client, first.job_id)


def test_watch_resumes_after_a_disconnect_without_losing_events(stack):
    client, collection = stack
    job = client.submit_job(answer(collection, "What did Tokyo host?", models=[SMALL],
                                   sampling=gpb.SamplingParams(max_new_tokens=24)))
    stream = client.watch_job(job.job_id, timeout=300)
    seen = [next(stream).event for _ in range(4)]
    stream.cancel()  # disconnect mid-job
    rest = events(client, job.job_id, after=seen[-1].event_id)
    full = events(client, job.job_id)
    assert [e.event_id for e in seen + rest] == [e.event_id for e in full]
    assert full[0].type == "job.queued" and full[-1].type in ("job.succeeded", "job.failed")
    assert any(e.type == "generate.delta" for e in full)


def test_cancel_during_generation(stack):
    client, collection = stack
    job = client.submit_job(pb.SubmitJobRequest(generate=gpb.GenerateRequest(
        model=SMALL, prompt="Write a very long story.",
        sampling=gpb.SamplingParams(max_new_tokens=1500, temperature=0.8, seed=1))))
    for msg in client.watch_job(job.job_id, timeout=300):
        if msg.event.type == "generate.delta":
            break
    resp = client.cancel_job(job.job_id)
    assert resp.cancelled
    record = wait(client, job.job_id, timeout=30)
    assert record.state == pb.JOB_STATE_CANCELLED
    assert record.steps[-1].status == "cancelled"
    # a second cancel changes nothing
    again = client.cancel_job(job.job_id)
    assert not again.cancelled and again.state == pb.JOB_STATE_CANCELLED


def test_deadline_expiry_fails_the_job(stack):
    client, _ = stack
    job = client.submit_job(pb.SubmitJobRequest(deadline_s=2.0, generate=gpb.GenerateRequest(
        model=SMALL, prompt="Write a very long story.",
        sampling=gpb.SamplingParams(max_new_tokens=1500, temperature=0.8, seed=2))))
    record = wait(client, job.job_id, timeout=60)
    assert record.state == pb.JOB_STATE_FAILED
    assert record.error_code == "DEADLINE_EXCEEDED", record.error


def test_queue_submitted_job_is_the_same_job(stack):
    client, collection = stack
    app = Celery(broker=get_settings().redis_url, backend=get_settings().redis_url)
    payload = {"answer": {"question": "Where do bees dance?", "collection": collection, "models": [SMALL],
                          "sampling": {"maxNewTokens": 6}}, "idempotencyKey": unique("celery")}
    result = app.send_task("orchestrator.submit_job", args=[payload], queue="orchestrator").get(timeout=300)
    job_id = result["jobId"]
    assert result["job"]["state"] in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED")
    record = client.get_job(job_id)
    assert record.request.answer.question == "Where do bees dance?"
    assert pb.JobState.Name(record.state) == result["job"]["state"]
    assert [s.name for s in record.steps][:3] == ["retrieve", "screen_sources", "build_context"], record.error


def test_unknown_job_is_not_found(stack):
    client, _ = stack
    for call in (lambda: client.get_job("nope"), lambda: client.cancel_job("nope"),
                 lambda: list(client.watch_job("nope", timeout=10))):
        with pytest.raises(GenstackError) as err:
            call()
        assert err.value.code == grpc.StatusCode.NOT_FOUND


BAD = [
    (pb.SubmitJobRequest(), "input"),
    (pb.SubmitJobRequest(answer=pb.AnswerInput(question="  ")), "answer.question"),
    (pb.SubmitJobRequest(answer=pb.AnswerInput(question="q", top_k=0)), "answer.top_k"),
    (pb.SubmitJobRequest(answer=pb.AnswerInput(question="q", alpha=1.5)), "answer.alpha"),
    (pb.SubmitJobRequest(answer=pb.AnswerInput(question="q", max_retries=9)), "answer.max_retries"),
    (pb.SubmitJobRequest(answer=pb.AnswerInput(question="q"), deadline_s=-1), "deadline_s"),
    (pb.SubmitJobRequest(answer=pb.AnswerInput(question="q"), pipeline="nope"), "pipeline"),
    (pb.SubmitJobRequest(ingest=rpb.IngestDocumentsRequest(collection="c")), "ingest.documents"),
]


@pytest.mark.parametrize("request_,field", BAD, ids=[f for _, f in BAD])
def test_invalid_job_requests_name_the_field(stack, request_, field):
    client, _ = stack
    before = client.list_jobs(pb.ListJobsRequest(page_size=200)).jobs
    with pytest.raises(GenstackError) as err:
        client.submit_job(request_)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.message
    after = client.list_jobs(pb.ListJobsRequest(page_size=200)).jobs
    assert len(after) == len(before), "a rejected request must not create a job"


def test_list_jobs_filters_and_paginates(stack):
    client, _ = stack
    with pytest.raises(GenstackError) as err:
        client.list_jobs(pb.ListJobsRequest(page_size=500))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in err.value.message
    ingests = client.list_jobs(pb.ListJobsRequest(kinds=["ingest"])).jobs
    assert ingests and all(j.kind == "ingest" for j in ingests)
    done = client.list_jobs(pb.ListJobsRequest(states=[pb.JOB_STATE_SUCCEEDED])).jobs
    assert all(j.state == pb.JOB_STATE_SUCCEEDED for j in done)
    page1 = client.list_jobs(pb.ListJobsRequest(page_size=2))
    page2 = client.list_jobs(pb.ListJobsRequest(page_size=2, page_token=page1.next_page_token))
    assert len(page1.jobs) == 2 and page1.next_page_token
    assert not {j.job_id for j in page1.jobs} & {j.job_id for j in page2.jobs}
