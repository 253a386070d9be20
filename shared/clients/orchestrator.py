"""Typed orchestrator client over grpc, celery or inproc."""

from __future__ import annotations

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from shared.client import ServiceClient, Stream


class OrchestratorClient(ServiceClient):
    service = "orchestrator"

    def submit_job(self, request: pb.SubmitJobRequest, timeout: float | None = None) -> pb.SubmitJobResponse:
        return self.call("SubmitJob", request, timeout)

    def get_job(self, job_id: str, timeout: float | None = None) -> pb.Job:
        return self.call("GetJob", pb.GetJobRequest(job_id=job_id), timeout).job

    def watch_job(self, job_id: str, after_event_id: str = "", timeout: float | None = None) -> Stream:
        return self.stream("WatchJob", pb.WatchJobRequest(job_id=job_id, after_event_id=after_event_id), timeout)

    def cancel_job(self, job_id: str, timeout: float | None = None) -> pb.CancelJobResponse:
        return self.call("CancelJob", pb.CancelJobRequest(job_id=job_id), timeout)

    def list_jobs(self, request: pb.ListJobsRequest, timeout: float | None = None) -> pb.ListJobsResponse:
        return self.call("ListJobs", request, timeout)
