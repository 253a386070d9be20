"""The `image` job kind, embedded (inproc): the project's own image model, then image-default."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from genstack.image.v1 import image_pb2 as ipb
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from services.orchestrator.core import OrchestratorCore
from services.orchestrator.settings import OrchestratorSettings
from shared.config import Settings

pytestmark = pytest.mark.slow


def test_image_job_generates_validates_and_records():
    core = OrchestratorCore(OrchestratorSettings(store="memory"), Settings(transport="inproc"))
    job, created = core.create(pb.SubmitJobRequest(image=ipb.GenerateImageRequest(
        prompt="a red circle on a blue background", steps=8, seed=11, width=32, height=32)))
    assert created and job.kind == "image"
    record = core.run(job)
    assert record.state == pb.JOB_STATE_SUCCEEDED, record.error
    result = record.image
    assert len(result.images) == 1 and len(result.verdicts) == 1 and result.attempts == 1
    assert result.verdicts[0].passed
    png = result.images[0].png
    assert Image.open(io.BytesIO(png)).size == (32, 32)
    assert [(s.name, s.status) for s in record.steps] == [("generate_image", "ok"), ("validate_image", "ok")]
    assert json.loads(record.steps[0].input_json)["prompt"] == "a red circle on a blue background"
    core.close()


def test_image_job_without_prompt_is_invalid():
    from shared.errors import InvalidArgument

    core = OrchestratorCore(OrchestratorSettings(store="memory"), Settings(transport="inproc"))
    with pytest.raises(InvalidArgument, match="image.prompt"):
        core.create(pb.SubmitJobRequest(image=ipb.GenerateImageRequest(prompt=" ")))
    core.close()
