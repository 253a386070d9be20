"""A task message the worker refuses fails at its sender instead of staying PENDING forever."""

from __future__ import annotations

import pytest

from shared.celery_app import make_celery

pytestmark = pytest.mark.slow


def test_a_pickled_task_is_refused_and_its_sender_hears_why(service_process):
    service_process("orchestrator", "worker")  # a real worker, accepting JSON only
    app = make_celery()
    try:
        result = app.send_task("orchestrator.list_jobs", args=[{}], kwargs={"deadline_s": 30.0},
                               queue="orchestrator", serializer="pickle")
        with pytest.raises(Exception) as e:  # noqa: B017 - the class name is what a sender sees
            result.get(timeout=60)
        assert type(e.value).__name__ == "Unauthenticated" and "refused the task message" in str(e.value)
        assert result.state == "FAILURE"
        # the same task as JSON goes through
        ok = app.send_task("orchestrator.list_jobs", args=[{}], kwargs={"deadline_s": 30.0}, queue="orchestrator")
        assert isinstance(ok.get(timeout=60), dict)  # a ListJobsResponse (empty: {})
    finally:
        app.close()
