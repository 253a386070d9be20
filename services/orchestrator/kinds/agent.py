"""The `agent` kind: one agent run as a job. The step streams the run from the agent service (the
job id is the run id), records every agent step in the job's events (`agent.step`, whose data is
the RunAgentResponse JSON), marks the job AWAITING_APPROVAL while a step waits for the agent
service's ApproveStep / RejectStep, and keeps the run's record as the job's result."""

from __future__ import annotations

import threading

from google.protobuf import json_format

from genstack.agent.v1 import agent_pb2 as apb
from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.pipelines import Pipeline, StepDef
from services.orchestrator.steps import slot, step, to_json
from shared.errors import Cancelled, GenstackError, Internal

AGENT_RUN = slot("agent_run", apb.AgentRun)


def validate(request: apb.RunAgentRequest, settings) -> None:
    """The agent service's own request checks (tools, budgets, goal), with fields named agent.*."""
    from services.agent.core import default_registry
    from services.agent.grpc_api import to_spec
    from services.agent.settings import AgentSettings

    class _Checker:  # to_spec needs only `check`
        def check(self, **kw):
            from services.agent.core import check_request

            return check_request(AgentSettings(), default_registry(), **kw)

    to_spec(_Checker(), request, prefix="agent.")


def _watch_cancel(run, client, run_id: str, stream, done: threading.Event) -> None:
    """Cancel the agent run when the job is cancelled, also while it waits for approval."""
    while not done.wait(0.2):
        if run.cancelled():
            try:
                client.cancel_agent_run(run_id, timeout=10)
            except GenstackError:
                pass
            stream.cancel()
            return


def _save(run) -> None:
    """Store the job's state now (GetJob shows AWAITING_APPROVAL while a reviewer is needed)."""
    save = getattr(run, "_save", None)
    if save is not None:
        save()


@step("run_agent", provides=(AGENT_RUN,), input="agent")
def run_agent(run, params: dict) -> None:
    request = apb.RunAgentRequest()
    request.CopyFrom(run.job.request.agent)
    request.run_id = run.job.job_id
    record = apb.AgentRun(run_id=request.run_id, request=request)
    with run.step("run_agent", "agent", to_json(request)) as rec:
        client = run.client("agent", "run_agent")
        stream = client.run_agent(request, timeout=run.timeout())
        done = threading.Event()
        watcher = threading.Thread(target=_watch_cancel, args=(run, client, request.run_id, stream, done),
                                   name="agent-job-cancel", daemon=True)
        watcher.start()
        last = None
        try:
            for msg in stream:
                last = msg
                steps = {s.index: s for s in record.steps}
                steps[msg.step.index] = msg.step
                del record.steps[:]
                record.steps.extend(steps[i] for i in sorted(steps))
                record.state = msg.state
                record.usage.CopyFrom(msg.usage)
                run.emit("agent.step", "run_agent", json_format.MessageToDict(msg))
                if msg.state == apb.RUN_STATE_AWAITING_APPROVAL:
                    run.job.state = opb.JOB_STATE_AWAITING_APPROVAL
                    run.emit("agent.awaiting_approval", "run_agent", {"run_id": request.run_id,
                                                                        "step": msg.step.index,
                                                                        "tool": msg.step.tool})
                    _save(run)
                elif run.job.state == opb.JOB_STATE_AWAITING_APPROVAL:
                    run.job.state = opb.JOB_STATE_RUNNING
                    _save(run)
        except GenstackError:
            if run.cancelled():
                raise Cancelled("job cancelled during the agent run") from None
            raise
        finally:
            done.set()
            if run.job.state == opb.JOB_STATE_AWAITING_APPROVAL:
                run.job.state = opb.JOB_STATE_RUNNING
        if last is None:
            raise Internal("the agent stream ended without a step")
        record.final_answer, record.error = last.final_answer, last.error
        try:  # the agent's own record also has the tools, approvals and times
            full = client.get_agent_run(request.run_id, timeout=min(30.0, run.timeout()))
            if len(full.steps) == len(record.steps):
                record = full
        except GenstackError:
            pass  # e.g. a run store the orchestrator cannot reach: the streamed steps are the record
        rec.output = {"state": apb.RunState.Name(last.state), "final_answer": last.final_answer,
                      "error": last.error, "usage": to_json(last.usage)}
    run.state[AGENT_RUN] = record
    if last.state == apb.RUN_STATE_CANCELLED:
        raise Cancelled(last.error or "the agent run was cancelled")
    if last.state == apb.RUN_STATE_FAILED:
        raise GenstackError(f"the agent run failed: {last.error}")


def fill_result(job, state) -> None:
    if state.get(AGENT_RUN) is not None:
        job.agent.CopyFrom(state.get(AGENT_RUN))


register(JobKind(
    name="agent",
    validate=validate,
    fill_result=fill_result,
    result_needs=(AGENT_RUN,),
    pipelines={
        "agent": Pipeline(
            kind="agent",
            description="One bounded agent run (plan with the model, act with allowed tools, budgets enforced); "
            "every agent step is an agent.step event",
            steps=[StepDef(name="run_agent")],
        ),
    },
))
