"""Messages a client can read name no internal address, absolute path or file hash: bad inputs to
every service, and a job whose service is down."""

from __future__ import annotations

import re

import pytest

from genstack.common.v1 import common_pb2 as cpb
from genstack.generator.v1 import generator_pb2 as gpb
from genstack.orchestrator.v1 import orchestrator_pb2 as opb
from genstack.retriever.v1 import retriever_pb2 as rpb
from genstack.validator.v1 import validator_pb2 as vpb
from shared.clients import client_for
from shared.errors import GenstackError
from shared.redact import redact

LEAKS = {
    "address": re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\[[0-9a-f:]+\]:\d+"),
    "absolute path": re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*|file://"),
    "hash": re.compile(r"\b[0-9a-f]{40,64}\b"),
}


def _leaks(message: str) -> list[str]:
    return [f"{kind}: {m.group(0)}" for kind, rx in LEAKS.items() for m in [rx.search(message)] if m]


def test_redact_removes_what_a_client_should_not_read():
    for text in ("failed to connect to all addresses; last error: ipv4:10.2.3.4:50053: Connection refused",
                 "no artifact at file:///var/lib/genstack/data/x.png", "cannot open /srv/models/qwen/config.json",
                 "sha256 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 differs",
                 "ipv6:[::1]:50051 unreachable"):
        assert _leaks(text) and not _leaks(redact(text)), redact(text)
    for harmless in ("top_p: must be in (0, 1] (got 2.0)", "response_format.choices[1]: must be 1 to 1024 characters",
                     "documents[0].metadata: key 'a b' is not allowed", "filters[2]: a range needs a bound"):
        assert redact(harmless) == harmless


BAD = [
    ("generator", "Generate", gpb.GenerateRequest(prompt="hi", model="/etc/genstack/models/x")),
    ("generator", "Generate", gpb.GenerateRequest(prompt="hi", model="nosuch")),
    ("generator", "Generate", gpb.GenerateRequest(prompt="hi", sampling=gpb.SamplingParams(top_p=2))),
    ("retriever", "Search", rpb.SearchRequest(collection="no_such_collection", query="x")),
    ("retriever", "IngestDocuments", rpb.IngestDocumentsRequest(collection="c", documents=[rpb.Document(id="")])),
    ("validator", "Validate", vpb.ValidateRequest(
        artifact=vpb.Artifact(ref=cpb.ArtifactRef(uri="file:///etc/passwd", mime_type="image/png")),
        policy="image-default")),
    ("validator", "Validate", vpb.ValidateRequest(artifact=vpb.Artifact(text="x"), policy="no-such-policy")),
    ("orchestrator", "GetJob", opb.GetJobRequest(job_id="f" * 32)),
]


@pytest.mark.parametrize("service, method, request_", BAD,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_bad_inputs_answer_without_leaks(service, method, request_):
    with client_for(service, "inproc") as c:
        with pytest.raises(GenstackError) as e:
            c.call(method, request_, timeout=60)
    assert not _leaks(e.value.message), (e.value.code, e.value.message)


def test_a_job_whose_service_is_down_says_so_without_its_address(monkeypatch):
    from services.orchestrator.core import OrchestratorCore
    from services.orchestrator.settings import OrchestratorSettings
    from shared.config import Settings, get_client_settings

    monkeypatch.setenv("GENSTACK_GENERATOR_ADDRESS", "127.0.0.1:9")  # nothing listens there
    get_client_settings.cache_clear()
    try:
        core = OrchestratorCore(OrchestratorSettings(store="memory", step_transports={"generate": "grpc"}),
                                Settings(transport="inproc"))
        job, _ = core.create(opb.SubmitJobRequest(generate=gpb.GenerateRequest(prompt="hi"), deadline_s=3))
        record = core.run(job)
        core.close()
    finally:
        get_client_settings.cache_clear()
    assert record.state == opb.JOB_STATE_FAILED and record.error_code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    texts = [record.error, *(s.error for s in record.steps), *(e for s in record.steps for e in s.retry_errors)]
    for text in texts:
        assert not _leaks(text), text
