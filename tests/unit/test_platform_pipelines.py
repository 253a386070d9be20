"""Pipelines are checked when they load: steps in an order whose inputs exist, known steps, steps
for the pipeline's kind, the kind's result provided, retry rules that name steps of the pipeline.
The run state holds only declared slots of declared types."""

from __future__ import annotations

import json

import pytest

from services.orchestrator.kinds import load_kinds
from services.orchestrator.pipelines import load_pipelines
from services.orchestrator.steps import STEPS, RunState, StepSpec
from shared.errors import FailedPrecondition, Internal


def _load(tmp_path, pipelines: dict):
    f = tmp_path / "pipelines.json"
    f.write_text(json.dumps(pipelines))
    return load_pipelines(str(f))


def _steps(*names):
    return [{"name": n} for n in names]


def test_every_shipped_pipeline_passes_its_checks():
    pipelines = load_pipelines("")
    kinds = load_kinds()
    assert {"answer", "generate", "ingest", "image"} <= set(kinds)
    for name in kinds:
        assert pipelines[name].kind == name, "each kind ships a default pipeline named after it"


def test_a_step_that_reads_what_no_earlier_step_provides_is_refused(tmp_path):
    bad = {"backwards": {"kind": "answer", "steps": _steps("build_context", "retrieve", "generate_answer")}}
    with pytest.raises(FailedPrecondition) as e:
        _load(tmp_path, bad)
    msg = e.value.message
    assert "'backwards'" in msg and "'build_context'" in msg and "'chunks'" in msg
    assert "retrieve provides it, but runs later" in msg


def test_a_missing_input_is_named(tmp_path):
    bad = {"no-context": {"kind": "answer", "steps": _steps("retrieve", "generate_answer")}}
    with pytest.raises(FailedPrecondition, match=r"pipeline 'no-context': step 'generate_answer' reads 'sources'"):
        _load(tmp_path, bad)


def test_an_unknown_step_is_refused(tmp_path):
    with pytest.raises(FailedPrecondition, match=r"pipeline 'typo': unknown step 'retreive'"):
        _load(tmp_path, {"typo": {"kind": "answer", "steps": _steps("retreive")}})


def test_an_unknown_kind_is_refused(tmp_path):
    with pytest.raises(FailedPrecondition, match=r"pipeline 'p': unknown kind 'podcast'"):
        _load(tmp_path, {"p": {"kind": "podcast", "steps": _steps("generate")}})


def test_a_step_of_another_kind_is_refused(tmp_path):
    with pytest.raises(FailedPrecondition, match=r"step 'retrieve' reads the 'answer' job input, but the pipeline "
                                                 r"runs 'generate' jobs"):
        _load(tmp_path, {"mixed": {"kind": "generate", "steps": _steps("retrieve", "generate")}})


def test_a_pipeline_that_never_provides_the_result_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(STEPS, "noop", StepSpec("noop", lambda run, params: None))
    with pytest.raises(FailedPrecondition, match=r"pipeline 'idle': a 'generate' job's result needs 'generate'"):
        _load(tmp_path, {"idle": {"kind": "generate", "steps": _steps("noop")}})
    with pytest.raises(FailedPrecondition, match=r"pipeline 'nothing': no steps"):
        _load(tmp_path, {"nothing": {"kind": "generate", "steps": []}})


@pytest.mark.parametrize("rule, problem", [
    ({"on": "validate_answer", "restart_at": "rewrite"}, "retry restart_at 'rewrite' is not a step"),
    ({"on": "judge", "restart_at": "generate_answer"}, "retry on 'judge' is not a step"),
    ({"on": "generate_answer", "restart_at": "validate_answer"}, "restart_at 'validate_answer' comes after"),
])
def test_a_retry_rule_must_name_steps_of_the_pipeline(tmp_path, rule, problem):
    p = {"kind": "answer", "steps": _steps("retrieve", "build_context", "generate_answer", "validate_answer"),
         "retry": rule}
    with pytest.raises(FailedPrecondition) as e:
        _load(tmp_path, {"retrying": p})
    assert "pipeline 'retrying'" in e.value.message and problem in e.value.message


def test_a_well_formed_user_pipeline_loads(tmp_path):
    p = {"kind": "answer", "steps": _steps("retrieve", "build_context", "generate_answer", "validate_answer"),
         "retry": {"on": "validate_answer", "restart_at": "generate_answer", "max_retries": 1}}
    assert _load(tmp_path, {"no-cite": p})["no-cite"].retry.max_retries == 1


def test_an_unreadable_pipelines_file_says_so(tmp_path):
    with pytest.raises(FailedPrecondition, match="cannot be read"):
        load_pipelines(str(tmp_path / "missing.yaml"))


def test_the_run_state_is_typed_and_steps_stay_within_their_declaration():
    state = RunState()
    retrieve = state.view(STEPS["retrieve"])
    retrieve["chunks"] = []
    with pytest.raises(Internal, match="takes"):
        retrieve["chunks"] = "not a list"
    with pytest.raises(Internal, match="does not declare"):
        retrieve["answer"] = "retrieve does not provide answers"
    build = state.view(STEPS["build_context"])
    assert build["chunks"] == []
    with pytest.raises(Internal, match="does not declare"):
        build["verdict"]  # noqa: B018 - reading is the test
    generate = state.view(STEPS["generate_answer"])
    with pytest.raises(Internal, match="no earlier step provided"):
        generate["sources"]  # noqa: B018
    assert generate.get("feedback") is None  # optional: read when present
