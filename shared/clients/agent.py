"""Typed agent client over grpc, celery or inproc."""

from __future__ import annotations

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.agent.v1 import agent_pb2 as pb
from shared.client import ServiceClient, Stream


class AgentClient(ServiceClient):
    service = "agent"

    def run_agent(self, request: pb.RunAgentRequest, timeout: float | None = None) -> Stream:
        return self.stream("RunAgent", request, timeout)

    def get_agent_run(self, run_id: str, timeout: float | None = None) -> pb.AgentRun:
        return self.call("GetAgentRun", pb.GetAgentRunRequest(run_id=run_id), timeout).run

    def approve_step(self, run_id: str, step: int, comment: str = "",
                     timeout: float | None = None) -> pb.ApproveStepResponse:
        return self.call("ApproveStep", pb.ApproveStepRequest(run_id=run_id, step=step, comment=comment), timeout)

    def reject_step(self, run_id: str, step: int, reason: str = "",
                    timeout: float | None = None) -> pb.RejectStepResponse:
        return self.call("RejectStep", pb.RejectStepRequest(run_id=run_id, step=step, reason=reason), timeout)

    def cancel_agent_run(self, run_id: str, timeout: float | None = None) -> pb.CancelAgentRunResponse:
        return self.call("CancelAgentRun", pb.CancelAgentRunRequest(run_id=run_id), timeout)
