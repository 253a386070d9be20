"""Typed retriever client over grpc, celery or inproc."""

from __future__ import annotations

import time
from collections.abc import Callable

from google.protobuf import json_format

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.retriever.v1 import retriever_pb2 as pb
from shared.auth import task_auth_kwargs
from shared.client import ServiceClient, from_celery_error
from shared.errors import DeadlineExceeded, GenstackError
from shared.services import get_spec

INGEST_TASK = "retriever.ingest"


class RetrieverClient(ServiceClient):
    service = "retriever"

    def ingest_documents(
        self, request: pb.IngestDocumentsRequest, timeout: float | None = None
    ) -> pb.IngestDocumentsResponse:
        return self.call("IngestDocuments", request, timeout)

    def delete_documents(
        self, request: pb.DeleteDocumentsRequest, timeout: float | None = None
    ) -> pb.DeleteDocumentsResponse:
        return self.call("DeleteDocuments", request, timeout)

    def list_collections(self, timeout: float | None = None) -> pb.ListCollectionsResponse:
        return self.call("ListCollections", pb.ListCollectionsRequest(), timeout)

    def delete_collection(
        self, request: pb.DeleteCollectionRequest, timeout: float | None = None
    ) -> pb.DeleteCollectionResponse:
        return self.call("DeleteCollection", request, timeout)

    def search(self, request: pb.SearchRequest, timeout: float | None = None) -> pb.SearchResponse:
        return self.call("Search", request, timeout)

    def embed(self, request: pb.EmbedRequest, timeout: float | None = None) -> pb.EmbedResponse:
        return self.call("Embed", request, timeout)

    def ingest_large(
        self,
        request: pb.IngestDocumentsRequest,
        timeout: float | None = None,
        on_progress: Callable[[pb.IngestProgress], None] | None = None,
        poll_s: float = 0.2,
    ) -> pb.IngestDocumentsResponse:
        """A large batch through the `retriever.ingest` Celery task, reporting its progress.

        With the inproc transport the same code runs in this process (progress included); with
        grpc or celery the task goes to the retriever queue on the configured broker.
        """
        timeout = self.settings.default_deadline_s if timeout is None else timeout
        if self.transport == "inproc":
            from shared.rpc import CallContext

            return self._inproc().ingest(request, CallContext.with_timeout(timeout), large=True,
                                         on_progress=on_progress)
        if self._celery is None:
            from shared.celery_app import make_celery

            self._celery = make_celery(self.settings)
        result = self._celery.send_task(
            INGEST_TASK,
            args=[json_format.MessageToDict(request)],
            kwargs=task_auth_kwargs({"deadline_s": timeout}),
            queue=get_spec(self.service).queue,
            expires=timeout,
        )
        deadline = time.monotonic() + timeout
        seen = None
        try:
            while not result.ready():
                if time.monotonic() > deadline:
                    result.revoke()
                    raise DeadlineExceeded(f"{INGEST_TASK} did not finish within {timeout:.1f}s")
                info = result.info
                if on_progress is not None and result.state == "PROGRESS" and isinstance(info, dict) and info != seen:
                    seen = info
                    on_progress(json_format.ParseDict(info, pb.IngestProgress(), ignore_unknown_fields=True))
                time.sleep(poll_s)
            doc = result.get(timeout=max(1.0, deadline - time.monotonic()), propagate=True)
        except GenstackError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated to our errors
            raise from_celery_error(exc, timeout) from None
        return json_format.ParseDict(doc, pb.IngestDocumentsResponse(), ignore_unknown_fields=True)
