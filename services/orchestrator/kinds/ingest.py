"""The `ingest` kind: documents into the retriever, with progress events."""

from __future__ import annotations

from genstack.retriever.v1 import retriever_pb2 as rpb
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.pipelines import Pipeline, StepDef
from services.orchestrator.steps import slot, step, to_json
from shared.errors import require

INGESTED = slot("ingest", rpb.IngestDocumentsResponse)


def validate(request: rpb.IngestDocumentsRequest, settings) -> None:
    require(bool(request.documents), "ingest.documents", "at least one document")


@step("ingest", provides=(INGESTED,), input="ingest")
def ingest(run, params: dict) -> None:
    request = run.job.request.ingest
    with run.step("ingest", "retriever", {"collection": request.collection,
                                          "documents": [d.id for d in request.documents]}) as rec:
        client = run.client("retriever", "ingest")

        def progress(p):
            run.emit("ingest.progress", "ingest", to_json(p))

        response = client.ingest_large(request, timeout=run.timeout(), on_progress=progress)
        rec.output = to_json(response)
    run.state[INGESTED] = response


def fill_result(job, state) -> None:
    job.ingest.CopyFrom(state.get(INGESTED))


register(JobKind(
    name="ingest",
    validate=validate,
    fill_result=fill_result,
    result_needs=(INGESTED,),
    pipelines={"ingest": Pipeline(kind="ingest", description="Documents into the retriever",
                                  steps=[StepDef(name="ingest")])},
))
