"""Celery tasks of the agent service.

agent.run_agent, agent.get_agent_run, agent.approve_step, agent.reject_step and
agent.cancel_agent_run mirror the RPCs (run_agent publishes every step on the task's Redis stream).
agent.run is the queued-work entry point: a RunAgentRequest (proto JSON) run to its end in the
worker; the result is the run's record (AgentRun JSON).

Approvals and cancellations reach a running run through the run store (Redis when the transport is
not inproc), so any agent server or worker sharing that Redis can take them, while the run itself
keeps its worker busy.
"""

import redis
from celery import Task
from google.protobuf import json_format

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.agent.v1 import agent_pb2 as pb
from services.agent.grpc_api import API_CLASS
from shared.celery_app import TaskCallContext, make_celery, parse_payload, register_tasks, with_retry
from shared.client import inproc_api
from shared.config import get_settings
from shared.errors import GenstackError
from shared.logging import task_id_var

app = make_celery()
tasks = register_tasks(app, API_CLASS, lambda: inproc_api("agent"))
_redis = redis.Redis.from_url(get_settings().redis_url)


def _run(self: Task, payload: dict | None = None, deadline_s: float | None = None) -> dict:
    task_id_var.set(self.request.id)
    request = parse_payload(payload, pb.RunAgentRequest)
    ctx = TaskCallContext(_redis, self.request.id, deadline_s)
    return json_format.MessageToDict(inproc_api("agent").run_to_end(request, ctx))


run = app.task(name="agent.run", bind=True, autoretry_for=(), throws=(GenstackError,))(with_retry(_run))
tasks["agent.run"] = run
