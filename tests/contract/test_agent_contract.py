"""The agent service's contract over every transport (inproc, grpc, celery), with the real generator
and the bundled small model (smollm2-135m, the test default) making every decision under the JSON
Schema of the allowed tools. Budgets are tiny so that each run takes a few decisions."""

from __future__ import annotations

import os
import threading

import grpc
import pytest

from genstack.agent.v1 import agent_pb2 as pb
from shared.clients.agent import AgentClient
from shared.errors import GenstackError
from tests.conftest import TRANSPORTS

pytestmark = pytest.mark.slow

# short decisions keep each run to seconds on a quiet machine (the agent servers and workers these
# tests start read the same environment)
os.environ.setdefault("GENSTACK_AGENT_DECISION_MAX_TOKENS", "48")
os.environ.setdefault("GENSTACK_AGENT_FINAL_ANSWER_TOKENS", "32")

GOAL = "Use the calculator to compute 17 * 23."


@pytest.fixture(scope="module", params=TRANSPORTS)
def client(request, client_factory) -> AgentClient:
    client = client_factory(AgentClient, request.param)
    if request.param == "inproc":
        from shared.client import inproc_api

        for service in ("generator", "validator", "agent"):  # loaded before the first timed run
            inproc_api(service)
    return client


def run(client, timeout=600, **kw) -> list[pb.RunAgentResponse]:
    kw.setdefault("goal", GOAL)
    kw.setdefault("allowed_tools", ["calculator"])
    return list(client.run_agent(pb.RunAgentRequest(**kw), timeout=timeout))


def test_run_streams_its_steps_and_ends_with_an_answer(client):
    msgs = run(client, budget=pb.Budget(max_steps=1, max_tokens=120))
    run_id = msgs[0].run_id
    assert run_id and all(m.run_id == run_id for m in msgs)
    last = msgs[-1]
    assert last.final_answer.strip()
    assert last.state in (pb.RUN_STATE_COMPLETED, pb.RUN_STATE_BUDGET_EXHAUSTED)
    assert last.step.status == pb.STEP_STATUS_FINAL and last.step.tool == "final_answer"
    assert [m.step.index for m in msgs] == list(range(1, len(msgs) + 1))
    for m in msgs:
        # the decoder kept every decision inside the schema: only allowed tools, complete JSON
        assert m.step.tool in ("calculator", "final_answer")
        assert m.step.decision_complete and m.step.status != pb.STEP_STATUS_REFUSED
        if "ran out of time" not in m.step.note:  # else the loop wrote the answer itself (a loaded machine)
            assert m.step.completion_tokens > 0 and m.step.model == "smollm2-135m"
        if m.step.tool == "calculator" and m.step.status == pb.STEP_STATUS_OK:
            assert m.step.observation  # exact result of whatever expression it wrote
    assert last.usage.completion_tokens == sum(m.step.completion_tokens for m in msgs)
    assert last.usage.steps == len(msgs) - 1
    record = client.get_agent_run(run_id)
    assert record.state == last.state and record.final_answer == last.final_answer
    assert [s.index for s in record.steps] == [m.step.index for m in msgs]
    assert record.request.goal == GOAL and list(record.allowed_tools) == ["calculator", "final_answer"]


def test_exhausted_token_budget_still_ends_with_a_constrained_final_answer(client):
    msgs = run(client, budget=pb.Budget(max_tokens=16))  # below one decision's minimum: forced at once
    assert len(msgs) == 1
    last = msgs[0]
    assert last.state == pb.RUN_STATE_BUDGET_EXHAUSTED and last.error.startswith("budget exhausted: tokens (16)")
    assert last.step.forced and last.step.tool == "final_answer" and last.final_answer.strip()
    # a finished run: nothing to approve or cancel; an unknown one is NOT_FOUND
    with pytest.raises(GenstackError) as err:
        client.approve_step(last.run_id, 1, timeout=30)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    cancel = client.cancel_agent_run(last.run_id, timeout=30)
    assert not cancel.cancelled and cancel.state == pb.RUN_STATE_BUDGET_EXHAUSTED
    assert client.get_agent_run(last.run_id, timeout=30).state == pb.RUN_STATE_BUDGET_EXHAUSTED
    with pytest.raises(GenstackError) as err:
        client.get_agent_run("no-such-run", timeout=30)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("kw, field", [
    (dict(goal="  "), "goal"),
    (dict(allowed_tools=["shell"]), "allowed_tools"),
    (dict(budget=pb.Budget(max_steps=99)), "budget.max_steps"),
    (dict(budget=pb.Budget(max_tokens=-5)), "budget.max_tokens"),
    (dict(require_approval=["search"]), "require_approval"),
])
def test_bad_requests_are_invalid_argument_naming_the_field(client, kw, field):
    with pytest.raises(GenstackError) as err:
        run(client, timeout=60, **kw)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.message.startswith(field)


def _run_in_thread(client, **kw):
    msgs: list = []
    errors: list = []
    waiting = threading.Event()

    def read():
        try:
            for m in client.run_agent(pb.RunAgentRequest(goal=GOAL, allowed_tools=["calculator"], **kw), timeout=600):
                msgs.append(m)
                if m.state == pb.RUN_STATE_AWAITING_APPROVAL:
                    waiting.set()
        except Exception as exc:  # noqa: BLE001 - checked by the test
            errors.append(exc)
        finally:
            waiting.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, msgs, errors, waiting


def test_approval_pauses_until_approved_or_rejected_and_cancel_stops_a_waiting_run(client):
    if client.transport == "celery":
        pytest.skip("a solo worker is busy with the paused run; approvals over celery need a second worker")
    thread, msgs, errors, waiting = _run_in_thread(client, run_id=f"approve-{client.transport}",
                                                   require_approval=["calculator"], budget=pb.Budget(max_steps=1))
    assert waiting.wait(600) and not errors
    if msgs[-1].state != pb.RUN_STATE_AWAITING_APPROVAL:
        pytest.fail(f"the model did not call the calculator: {msgs[-1]}")
    step = msgs[-1].step
    assert step.status == pb.STEP_STATUS_AWAITING_APPROVAL and step.tool == "calculator"
    assert client.get_agent_run(msgs[-1].run_id).state == pb.RUN_STATE_AWAITING_APPROVAL
    assert client.approve_step(msgs[-1].run_id, step.index, "ok", timeout=30).state == pb.RUN_STATE_RUNNING
    thread.join(600)
    done = [m.step for m in msgs if m.step.index == step.index]
    assert done[-1].status == pb.STEP_STATUS_OK and done[-1].note == "approved: ok"
    assert msgs[-1].final_answer.strip() and msgs[-1].state == pb.RUN_STATE_BUDGET_EXHAUSTED

    # a rejected call is not run: the reason becomes the observation the model decides on, and the
    # run still ends with an answer
    thread, msgs, errors, waiting = _run_in_thread(client, run_id=f"reject-{client.transport}",
                                                   require_approval=["calculator"], budget=pb.Budget(max_steps=1))
    assert waiting.wait(600) and not errors and msgs[-1].state == pb.RUN_STATE_AWAITING_APPROVAL
    step = msgs[-1].step
    rejected = client.reject_step(msgs[-1].run_id, step.index, "no arithmetic today", timeout=30)
    assert rejected.state == pb.RUN_STATE_RUNNING
    thread.join(600)
    done = [m.step for m in msgs if m.step.index == step.index]
    assert done[-1].status == pb.STEP_STATUS_REJECTED
    assert done[-1].observation == "A reviewer rejected this call: no arithmetic today"
    assert msgs[-1].final_answer.strip() and msgs[-1].step.tool == "final_answer"
    record = client.get_agent_run(msgs[-1].run_id)
    assert [s.status for s in record.steps if s.index == step.index] == [pb.STEP_STATUS_REJECTED]
    with pytest.raises(GenstackError) as err:  # nothing waits any more
        client.reject_step(msgs[-1].run_id, step.index, timeout=30)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION

    thread, msgs, errors, waiting = _run_in_thread(client, run_id=f"cancel-{client.transport}",
                                                   require_approval=["calculator"])
    assert waiting.wait(600) and msgs[-1].state == pb.RUN_STATE_AWAITING_APPROVAL
    cancel = client.cancel_agent_run(msgs[-1].run_id, timeout=30)
    assert cancel.cancelled
    thread.join(60)
    assert msgs[-1].state == pb.RUN_STATE_CANCELLED and msgs[-1].error
    assert client.get_agent_run(msgs[-1].run_id).state == pb.RUN_STATE_CANCELLED


def test_queued_agent_run_task_returns_the_record(client):
    if client.transport != "celery":
        pytest.skip("agent.run is the Celery entry point")
    from google.protobuf import json_format

    result = client._celery.send_task("agent.run", args=[{"goal": GOAL, "allowedTools": ["calculator"],
                                                          "budget": {"maxTokens": 16}}],
                                      kwargs={"deadline_s": 120}, queue="agent")
    record = json_format.ParseDict(result.get(timeout=180), pb.AgentRun())
    assert record.state == pb.RUN_STATE_BUDGET_EXHAUSTED and record.final_answer.strip()
    assert record.steps[-1].forced and record.request.goal == GOAL
