"""Orchestrator API: protobuf <-> core, for gRPC, Celery and inproc alike."""

from __future__ import annotations

from collections.abc import Iterator

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from genstack.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from services.orchestrator.core import OrchestratorCore
from shared.rpc import CallContext, ServiceApi


class OrchestratorApi(ServiceApi):
    service = "orchestrator"
    descriptor = pb.DESCRIPTOR.services_by_name["OrchestratorService"]
    servicer_base = pb_grpc.OrchestratorServiceServicer
    add_to_server = staticmethod(pb_grpc.add_OrchestratorServiceServicer_to_server)

    def SubmitJob(self, request: pb.SubmitJobRequest, ctx: CallContext) -> pb.SubmitJobResponse:
        job, created = self.core.submit(request)
        return pb.SubmitJobResponse(job_id=job.job_id, created=created, state=job.state)

    def GetJob(self, request: pb.GetJobRequest, ctx: CallContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=self.core.get(request.job_id))

    def WatchJob(self, request: pb.WatchJobRequest, ctx: CallContext) -> Iterator[pb.WatchJobResponse]:
        for event in self.core.watch(request.job_id, request.after_event_id, ctx.stopped):
            yield pb.WatchJobResponse(event=event)

    def CancelJob(self, request: pb.CancelJobRequest, ctx: CallContext) -> pb.CancelJobResponse:
        state, cancelled = self.core.cancel(request.job_id)
        return pb.CancelJobResponse(state=state, cancelled=cancelled)

    def ListJobs(self, request: pb.ListJobsRequest, ctx: CallContext) -> pb.ListJobsResponse:
        jobs, token = self.core.list(list(request.states), list(request.kinds), request.page_size, request.page_token)
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)


API_CLASS = OrchestratorApi


def create_api() -> OrchestratorApi:
    return OrchestratorApi(OrchestratorCore())
