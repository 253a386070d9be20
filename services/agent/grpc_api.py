"""Agent API: protobuf <-> core. Used by the gRPC servicer, the Celery tasks and inproc."""

from __future__ import annotations

import json
from collections.abc import Iterator

from google.protobuf import json_format

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.agent.v1 import agent_pb2 as pb
from genstack.agent.v1 import agent_pb2_grpc as pb_grpc
from services.agent import datatypes as dt
from services.agent.core import AgentCore
from services.agent.datatypes import Event, RunRecord, RunSpec, Step, Usage
from shared.auth import acting_for_var
from shared.rpc import CallContext, ServiceApi, opt, stream_from_thread

STATE_TO_PB = {
    dt.RUNNING: pb.RUN_STATE_RUNNING,
    dt.AWAITING_APPROVAL: pb.RUN_STATE_AWAITING_APPROVAL,
    dt.COMPLETED: pb.RUN_STATE_COMPLETED,
    dt.BUDGET_EXHAUSTED: pb.RUN_STATE_BUDGET_EXHAUSTED,
    dt.CANCELLED: pb.RUN_STATE_CANCELLED,
    dt.FAILED: pb.RUN_STATE_FAILED,
}
STATUS_TO_PB = {
    "": pb.STEP_STATUS_UNSPECIFIED,
    dt.OK: pb.STEP_STATUS_OK,
    dt.TOOL_ERROR: pb.STEP_STATUS_TOOL_ERROR,
    dt.REFUSED: pb.STEP_STATUS_REFUSED,
    dt.AWAITING: pb.STEP_STATUS_AWAITING_APPROVAL,
    dt.REJECTED: pb.STEP_STATUS_REJECTED,
    dt.REPEATED: pb.STEP_STATUS_REPEATED,
    dt.FINAL: pb.STEP_STATUS_FINAL,
    dt.STEP_CANCELLED: pb.STEP_STATUS_CANCELLED,
}


def to_spec(core: AgentCore, request: pb.RunAgentRequest, prefix: str = "") -> RunSpec:
    b = request.budget
    return core.check(
        goal=request.goal, allowed_tools=list(request.allowed_tools), max_steps=b.max_steps,
        max_seconds=b.max_seconds, max_tokens=b.max_tokens, model=request.model, models=list(request.models),
        collection=request.collection, run_id=request.run_id, require_approval=list(request.require_approval),
        temperature=opt(request, "temperature"), seed=opt(request, "seed"), prefix=prefix,
    )


def step_to_proto(s: Step) -> pb.AgentStep:
    return pb.AgentStep(
        index=s.index, status=STATUS_TO_PB[s.status], tool=s.tool,
        arguments_json=json.dumps(s.arguments, ensure_ascii=False) if s.arguments is not None else "",
        observation=s.observation, decision_json=s.decision, model=s.model, prompt_tokens=s.prompt_tokens,
        completion_tokens=s.completion_tokens, decision_ms=s.decision_ms, tool_ms=s.tool_ms,
        injection_flagged=s.injection_flagged, injection_detail=s.injection_detail, note=s.note, forced=s.forced,
        decision_complete=s.decision_complete,
    )


def usage_to_proto(u: Usage) -> pb.Usage:
    return pb.Usage(steps=u.steps, seconds=u.seconds, completion_tokens=u.completion_tokens,
                    prompt_tokens=u.prompt_tokens)


def event_to_proto(e: Event) -> pb.RunAgentResponse:
    return pb.RunAgentResponse(run_id=e.run_id, step=step_to_proto(e.step), state=STATE_TO_PB[e.state],
                               final_answer=e.final_answer, error=e.error, usage=usage_to_proto(e.usage))


def record_to_proto(r: RunRecord) -> pb.AgentRun:
    run = pb.AgentRun(
        run_id=r.run_id, state=STATE_TO_PB[r.state], steps=[step_to_proto(s) for s in r.steps],
        final_answer=r.final_answer, error=r.error, usage=usage_to_proto(r.usage), created_at=r.created_at,
        updated_at=r.updated_at, allowed_tools=r.allowed_tools, approval_tools=r.approval_tools,
    )
    json_format.ParseDict(r.request, run.request, ignore_unknown_fields=True)
    return run


def _acting_for(ctx: CallContext) -> str | None:
    """Whom the run's tool calls act for: the caller, so that `search` sees the caller's collections
    (None for admins and when authentication is off: they call as the agent service itself)."""
    return None if ctx.identity.admin else ctx.identity.principal


class AgentApi(ServiceApi):
    service = "agent"
    descriptor = pb.DESCRIPTOR.services_by_name["AgentService"]
    servicer_base = pb_grpc.AgentServiceServicer
    add_to_server = staticmethod(pb_grpc.add_AgentServiceServicer_to_server)

    def RunAgent(self, request: pb.RunAgentRequest, ctx: CallContext) -> Iterator[pb.RunAgentResponse]:
        spec = to_spec(self.core, request)  # bad input fails before anything is streamed
        doc = json_format.MessageToDict(request)
        doc["runId"] = spec.run_id

        acting = _acting_for(ctx)

        def work(stopped, emit):
            acting_for_var.set(acting)  # this thread's calls to the tools' services act for the caller
            # a cancel is noticed at the next token of a decision, not at the end of the run
            self.core.run(spec, doc, stopped, lambda e: emit(event_to_proto(e)), time_left=ctx.time_remaining())

        yield from stream_from_thread(ctx, work, "agent-run")

    def run_to_end(self, request: pb.RunAgentRequest, ctx: CallContext) -> pb.AgentRun:
        """The whole run without streaming (the queued `agent.run` task)."""
        spec = to_spec(self.core, request)
        doc = json_format.MessageToDict(request)
        doc["runId"] = spec.run_id
        reset = acting_for_var.set(_acting_for(ctx))
        try:
            self.core.run(spec, doc, ctx.stopped, time_left=ctx.time_remaining())
        finally:
            acting_for_var.reset(reset)
        return record_to_proto(self.core.get(spec.run_id))

    def GetAgentRun(self, request: pb.GetAgentRunRequest, ctx: CallContext) -> pb.GetAgentRunResponse:
        return pb.GetAgentRunResponse(run=record_to_proto(self.core.get(request.run_id)))

    def ApproveStep(self, request: pb.ApproveStepRequest, ctx: CallContext) -> pb.ApproveStepResponse:
        return pb.ApproveStepResponse(state=STATE_TO_PB[self.core.approve(request.run_id, request.step,
                                                                          request.comment)])

    def RejectStep(self, request: pb.RejectStepRequest, ctx: CallContext) -> pb.RejectStepResponse:
        return pb.RejectStepResponse(state=STATE_TO_PB[self.core.reject(request.run_id, request.step,
                                                                        request.reason)])

    def CancelAgentRun(self, request: pb.CancelAgentRunRequest, ctx: CallContext) -> pb.CancelAgentRunResponse:
        state, cancelled = self.core.cancel(request.run_id)
        return pb.CancelAgentRunResponse(state=STATE_TO_PB[state], cancelled=cancelled)


API_CLASS = AgentApi


def create_api() -> AgentApi:
    return AgentApi(AgentCore())
