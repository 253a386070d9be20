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


def test_a_dead_workers_task_comes_back_after_the_longest_deadline_not_an_hour():
    """kombu's default visibility timeout is 3600 s: a task taken by a killed worker stayed invisible
    that long. It follows the longest deadline a queued task may carry, plus a margin, or a setting."""
    from shared.config import Settings

    conf = make_celery(Settings(task_max_deadline_s=120)).conf
    assert conf.broker_transport_options["visibility_timeout"] == 180
    assert conf.broker_transport_options["unacked_restore_interval"] == 10
    assert conf.task_track_started  # a producer can see that a task is running, not only queued
    conf = make_celery(Settings(celery_visibility_timeout_s=12)).conf
    assert conf.broker_transport_options["visibility_timeout"] == 12
    assert conf.broker_transport_options["unacked_restore_interval"] == 3


def test_a_queued_deadline_longer_than_the_cap_is_refused():
    """A task must end before its visibility timeout, or it would be delivered again while it runs."""
    from shared.celery_app import check_task_deadline
    from shared.config import Settings
    from shared.errors import InvalidArgument

    settings = Settings(task_max_deadline_s=120)
    check_task_deadline(None, settings)
    check_task_deadline(120, settings)
    for bad in (121, -1, float("nan")):
        with pytest.raises(InvalidArgument, match="deadline_s: .*between 0 and 120 seconds"):
            check_task_deadline(bad, settings)


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
