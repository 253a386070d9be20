"""Celery tasks of the validator (queue "validator"): validator.validate, validator.list_policies."""

from services.validator.grpc_api import API_CLASS
from shared.celery_app import make_celery, register_tasks
from shared.client import inproc_api

app = make_celery()


def get_api():
    """One warmed-up API object per worker process."""
    return inproc_api("validator")


tasks = register_tasks(app, API_CLASS, get_api)
