"""Celery tasks of the retriever.

One task per RPC (retriever.ingest_documents, retriever.delete_documents, retriever.list_collections,
retriever.delete_collection, retriever.search), plus retriever.ingest for large batches: the same
IngestDocumentsRequest payload with a larger document cap, reporting progress as the PROGRESS state
whose meta is an IngestProgress in proto JSON, e.g.

    {"stage": "INGEST_STAGE_EMBEDDING", "done": 256, "total": 1200, "documents": 40, "chunks": 1200}

A producer polls AsyncResult(task_id).state / .info; the result is an IngestDocumentsResponse.
The batch is all or nothing, like IngestDocuments, so a retry after UNAVAILABLE is safe.
"""

from __future__ import annotations

import time

import redis
from google.protobuf import json_format

from genstack.retriever.v1 import retriever_pb2 as pb
from services.retriever.grpc_api import API_CLASS
from shared.celery_app import TaskCallContext, make_celery, parse_payload, register_tasks, with_retry
from shared.client import inproc_api
from shared.config import get_settings
from shared.errors import GenstackError
from shared.logging import task_id_var

INGEST_TASK = "retriever.ingest"
PROGRESS_STATE = "PROGRESS"
# progress updates are Redis writes; within a stage they are spaced at least this far apart
PROGRESS_INTERVAL_S = 0.25

app = make_celery()
tasks = register_tasks(app, API_CLASS, lambda: inproc_api("retriever"))
_redis = redis.Redis.from_url(get_settings().redis_url)


def progress_meta(msg: pb.IngestProgress) -> dict:
    return json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)


def _ingest(self, payload: dict | None = None, deadline_s: float | None = None) -> dict:
    task_id_var.set(self.request.id)
    request = parse_payload(payload, pb.IngestDocumentsRequest)
    ctx = TaskCallContext(_redis, self.request.id, deadline_s)
    last = {"stage": None, "at": 0.0}

    def on_progress(msg: pb.IngestProgress) -> None:
        now = time.monotonic()
        final = msg.done >= msg.total
        if msg.stage != last["stage"] or final or now - last["at"] >= PROGRESS_INTERVAL_S:
            self.update_state(state=PROGRESS_STATE, meta=progress_meta(msg))
            last.update(stage=msg.stage, at=now)

    api = inproc_api("retriever")
    response = api.ingest(request, ctx, large=True, on_progress=on_progress)
    return json_format.MessageToDict(response)


ingest = app.task(name=INGEST_TASK, bind=True, throws=(GenstackError,))(with_retry(_ingest))
