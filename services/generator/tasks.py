"""Celery tasks of the generator, one per RPC: generator.generate, generator.generate_stream,
generator.list_models, generator.tokenize."""

from services.generator.grpc_api import API_CLASS
from shared.celery_app import make_celery, register_tasks
from shared.client import inproc_api

app = make_celery()
tasks = register_tasks(app, API_CLASS, lambda: inproc_api("generator"))
