"""Celery tasks of the video service.

video.generate_video and video.generate_video_stream mirror the RPCs. video.generate is the
queued-work entry point: the same GenerateVideoRequest JSON, but the clip always goes to the
artifact store and the result (GenerateVideoResponse JSON) carries its URI, so results in the
Celery backend stay small whatever the clip's size.
"""

import redis
from celery import Task
from google.protobuf import json_format

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.video.v1 import video_pb2 as pb
from services.video.grpc_api import API_CLASS
from shared.celery_app import TaskCallContext, make_celery, parse_payload, register_tasks, with_retry
from shared.client import inproc_api
from shared.config import get_settings
from shared.errors import GenstackError
from shared.logging import task_id_var

app = make_celery()
tasks = register_tasks(app, API_CLASS, lambda: inproc_api("video"))
_redis = redis.Redis.from_url(get_settings().redis_url)


def _generate(self: Task, payload: dict | None = None, deadline_s: float | None = None) -> dict:
    task_id_var.set(self.request.id)
    request = parse_payload(payload, pb.GenerateVideoRequest)
    request.output = pb.OUTPUT_MODE_ARTIFACT
    ctx = TaskCallContext(_redis, self.request.id, deadline_s)
    return json_format.MessageToDict(inproc_api("video").GenerateVideo(request, ctx))


generate = app.task(name="video.generate", bind=True, autoretry_for=(), throws=(GenstackError,))(with_retry(_generate))
tasks["video.generate"] = generate
