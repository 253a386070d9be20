"""Celery tasks of the image service.

image.generate_image and image.generate_image_stream mirror the RPCs. image.generate is the
queued-work entry point: the same GenerateImageRequest JSON, but the images always go to the
artifact store and the result (GenerateImageResponse JSON) carries their URIs, so results in the
Celery backend stay small whatever the image size.
"""

import redis
from celery import Task
from google.protobuf import json_format

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.image.v1 import image_pb2 as pb
from services.image.grpc_api import API_CLASS
from shared.celery_app import TaskCallContext, make_celery, parse_payload, register_tasks, with_retry
from shared.client import inproc_api
from shared.config import get_settings
from shared.errors import GenstackError
from shared.logging import task_id_var

app = make_celery()
tasks = register_tasks(app, API_CLASS, lambda: inproc_api("image"))
_redis = redis.Redis.from_url(get_settings().redis_url)


def _generate(self: Task, payload: dict | None = None, deadline_s: float | None = None) -> dict:
    task_id_var.set(self.request.id)
    request = parse_payload(payload, pb.GenerateImageRequest)
    request.output = pb.OUTPUT_MODE_ARTIFACT
    ctx = TaskCallContext(_redis, self.request.id, deadline_s)
    return json_format.MessageToDict(inproc_api("image").GenerateImage(request, ctx))


generate = app.task(name="image.generate", bind=True, autoretry_for=(), throws=(GenstackError,))(with_retry(_generate))
tasks["image.generate"] = generate
