"""Celery tasks of the orchestrator.

`orchestrator.submit_job` takes a SubmitJobRequest (proto JSON), creates the same job a gRPC
SubmitJob would, runs it to completion in this worker and returns a SubmitJobResponse whose `job`
holds the finished record; GetJob on any orchestrator sharing the Redis store sees it too.
"""

from google.protobuf import json_format

from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from services.orchestrator.grpc_api import API_CLASS
from shared.celery_app import make_celery, parse_payload, register_tasks, with_retry
from shared.client import inproc_api
from shared.errors import GenstackError
from shared.logging import task_id_var

app = make_celery()
tasks = register_tasks(app, API_CLASS, lambda: inproc_api("orchestrator"), skip=frozenset({"SubmitJob"}))


@app.task(name="orchestrator.submit_job", bind=True, throws=(GenstackError,))
@with_retry
def submit_job(self, payload: dict | None = None, deadline_s: float | None = None) -> dict:
    task_id_var.set(self.request.id)
    request = parse_payload(payload, pb.SubmitJobRequest)
    core = inproc_api("orchestrator").core
    if not request.idempotency_key:
        # a redelivered task (acks_late) must not create a second job
        request.idempotency_key = f"celery:{self.request.id}"
    job, created = core.create(request)
    if created:
        job = core.run(job)
    elif job.state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING):
        job = core.get(job.job_id)
    return json_format.MessageToDict(pb.SubmitJobResponse(job_id=job.job_id, created=created, state=job.state,
                                                          job=job))
