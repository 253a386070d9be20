"""The Celery app's contract: queues per service, JSON only, late acks, retries only for UNAVAILABLE."""

import pytest

from shared.celery_app import make_celery, with_retry
from shared.errors import InvalidArgument, Unavailable
from shared.services import SERVICES


def test_app_settings():
    app = make_celery()
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert not conf.worker_hijack_root_logger
    for name in SERVICES:
        assert conf.task_routes[f"{name}.*"] == {"queue": name}


class _Retry(Exception):
    pass


class FakeTask:
    """Only the two attributes with_retry reads; the task machinery itself is Celery's."""

    def __init__(self, retries):
        self.request = type("R", (), {"retries": retries})()
        self.retried = False

    def retry(self, exc, countdown):
        self.retried = True
        return _Retry(countdown)


def test_only_retryable_errors_are_retried():
    def unavailable(self):
        raise Unavailable("model loading")

    def invalid(self):
        raise InvalidArgument("bad", field="x")

    task = FakeTask(0)
    with pytest.raises(_Retry):
        with_retry(unavailable)(task)
    assert task.retried
    task = FakeTask(0)
    with pytest.raises(InvalidArgument):
        with_retry(invalid)(task)
    assert not task.retried
    task = FakeTask(3)  # retries exhausted: the error itself surfaces
    with pytest.raises(Unavailable):
        with_retry(unavailable)(task)
