"""The `video` job kind, embedded (inproc): the project's own video model, then video-default,
with a retry on the next seed when the verdict fails."""

from __future__ import annotations

import json

import pytest

from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from genstack.video.v1 import video_pb2 as vpb
from services.orchestrator.core import OrchestratorCore
from services.orchestrator.settings import OrchestratorSettings
from shared.config import Settings
from shared.errors import InvalidArgument

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def core():
    c = OrchestratorCore(OrchestratorSettings(store="memory"), Settings(transport="inproc"))
    yield c
    c.close()


def test_video_job_generates_validates_and_records(core):
    job, created = core.create(pb.SubmitJobRequest(video=vpb.GenerateVideoRequest(
        prompt="a red circle moving right on a blue background", steps=4, seed=5, num_frames=8, fps=8)))
    assert created and job.kind == "video" and job.pipeline == "video"
    record = core.run(job)
    result = record.video
    attempts = [s for s in record.steps if s.name == "generate_video"]
    assert result.attempts == len(attempts) in (1, 2)
    seeds = [json.loads(s.input_json)["seed"] for s in attempts]
    assert seeds == [str(5 + n) for n in range(len(attempts))], "a retry takes the next seed"
    assert [json.loads(s.input_json)["output"] for s in attempts] == ["OUTPUT_MODE_ARTIFACT"] * len(attempts)
    assert result.video.artifact.uri and not result.video.data, "the record holds a reference, not the clip"
    assert result.video.num_frames == 8 and result.video.mime_type == "video/mp4"
    assert result.metadata.seed == 5 + len(attempts) - 1
    assert 0 <= result.coherence.mean_ssim <= 1
    if record.state == pb.JOB_STATE_SUCCEEDED:
        assert result.verdict.passed, "a job succeeds on a passing verdict"
    else:  # both verdicts failed: the job says why
        assert record.state == pb.JOB_STATE_FAILED and len(attempts) == 2 and not result.verdict.passed
        assert record.error.startswith("validation failed")
    assert [s.name for s in record.steps][:2] == ["generate_video", "validate_video"]
    # watchers see the denoising as it goes: a progress event per step, with preview frames
    progress = [e for e in core.store.events(job.job_id, "", 0) if e.type == "video.progress"]
    assert [e.data["step"] for e in progress][:4] == [1, 2, 3, 4]
    assert any(e.data["previews"] for e in progress)


def test_video_job_without_prompt_is_invalid(core):
    with pytest.raises(InvalidArgument, match="video.prompt"):
        core.create(pb.SubmitJobRequest(video=vpb.GenerateVideoRequest(prompt="  ")))


def test_bad_video_parameters_fail_the_job_naming_the_field(core):
    job, _ = core.create(pb.SubmitJobRequest(video=vpb.GenerateVideoRequest(prompt="a square", num_frames=100000)))
    record = core.run(job)
    assert record.state == pb.JOB_STATE_FAILED and record.error_code == "INVALID_ARGUMENT"
    assert "num_frames" in record.error


def test_a_failed_verdict_retries_once_with_the_next_seed(tmp_path):
    """The retry branch, forced: a user policy no clip can pass (consecutive frames identical) on a real
    validator served over gRPC, and a user pipeline that validates with it."""
    from services.validator.core import ValidatorCore
    from services.validator.grpc_api import ValidatorApi
    from services.validator.settings import ValidatorSettings
    from shared.clients.validator import ValidatorClient
    from shared.grpc_server import Server

    policies = tmp_path / "policies.json"
    policies.write_text(json.dumps({"policies": {"video-identical-frames": {
        "extends": "video-default", "checks": [{"name": "video_coherence", "params": {"min_mean_ssim": 1.0}}]}}}))
    pipelines = tmp_path / "pipelines.json"
    pipelines.write_text(json.dumps({"video-strict": {
        "kind": "video", "steps": [{"name": "generate_video"},
                                   {"name": "validate_video", "params": {"policy": "video-identical-frames"}}],
        "retry": {"on": "validate_video", "restart_at": "generate_video", "max_retries": 1}}}))
    server = Server(ValidatorApi(ValidatorCore(ValidatorSettings(policies_file=policies, warm_up_models=False))), 0,
                    host="127.0.0.1").start(warm_up_in_background=False)
    validator = ValidatorClient("grpc", address=f"127.0.0.1:{server.port}")
    orchestrator = OrchestratorCore(OrchestratorSettings(store="memory", pipelines_file=str(pipelines)),
                                    Settings(transport="inproc"))
    real_client = orchestrator.client
    orchestrator.client = lambda service, transport: validator if service == "validator" else real_client(
        service, transport)
    try:
        job, _ = orchestrator.create(pb.SubmitJobRequest(pipeline="video-strict", video=vpb.GenerateVideoRequest(
            prompt="a green square moving up on a white background", steps=2, seed=11, num_frames=8)))
        record = orchestrator.run(job)
    finally:
        orchestrator.close()
        server.stop(grace=0)
    assert record.state == pb.JOB_STATE_FAILED and record.error.startswith("validation failed")
    attempts = [s for s in record.steps if s.name == "generate_video"]
    assert [json.loads(s.input_json)["seed"] for s in attempts] == ["11", "12"]
    assert [s.name for s in record.steps] == ["generate_video", "validate_video"] * 2
    assert record.video.attempts == 2 and record.video.metadata.seed == 12
    verdict = record.video.verdict
    assert not verdict.passed and verdict.policy == "video-identical-frames" and "SSIM" in verdict.feedback
    assert [r.passed for r in verdict.results if r.name == "video_coherence"] == [False]
