"""Celery tasks of the orchestrator.

`orchestrator.submit_job` takes a SubmitJobRequest (proto JSON), creates the same job a gRPC
SubmitJob would, runs it to completion in this worker and returns a SubmitJobResponse whose `job`
holds the finished record; GetJob on any orchestrator sharing the Redis store sees it too.

Delivery is at least once (acks_late): a task redelivered after its worker died finds its job by
the idempotency key (`celery:<task id>` when the producer gave none) and runs it from its last
completed step, or waits for the orchestrator that already took it over; it never creates a
second job and never returns an unfinished one while the job's deadline allows it to finish.
"""

from google.protobuf import json_format

from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from services.orchestrator.grpc_api import API_CLASS
from shared.celery_app import check_task_deadline, make_celery, parse_payload, register_tasks, with_retry
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
    check_task_deadline(request.deadline_s or core.settings.default_deadline_s, field="deadline_s")
    if not request.idempotency_key:
        # a redelivered task (acks_late) must not create a second job
        request.idempotency_key = f"celery:{self.request.id}"
    job, created = core.create(request)
    if created:
        job = core.run(job)
    elif job.state not in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
        # Redelivered (the worker that had it died, or the broker restored it): run the job here if
        # nobody holds it (resuming after its last completed step), else wait for whoever does.
        job = core.adopt(job.job_id, wait_s=core.check(job.request)[2])
    return json_format.MessageToDict(pb.SubmitJobResponse(job_id=job.job_id, created=created, state=job.state,
                                                          job=job))
