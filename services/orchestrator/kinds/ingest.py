"""The `ingest` kind: documents into the retriever, with progress events."""

from __future__ import annotations

from genstack.retriever.v1 import retriever_pb2 as rpb
from services.orchestrator.kinds import JobKind, register
from services.orchestrator.pipelines import Pipeline, StepDef
from services.orchestrator.steps import slot, step, to_json
from shared.errors import ResourceExhausted, require

INGESTED = slot("ingest", rpb.IngestDocumentsResponse)


def validate(request: rpb.IngestDocumentsRequest, settings) -> None:
    require(bool(request.documents), "ingest.documents", "at least one document")
    # the retriever's own limits, checked before the job is stored (the retriever would refuse it later)
    from services.retriever.settings import RetrieverSettings

    limits = RetrieverSettings()
    require(len(request.documents) <= limits.max_documents_per_task, "ingest.documents",
            f"at most {limits.max_documents_per_task} documents", len(request.documents))
    for i, doc in enumerate(request.documents):
        size = len(doc.text.encode()) if doc.text else len(doc.data)
        if size > limits.max_document_bytes:
            raise ResourceExhausted(f"ingest.documents[{i}]: {size} bytes; the retriever's limit is "
                                    f"{limits.max_document_bytes} (GENSTACK_RETRIEVER_MAX_DOCUMENT_BYTES)")


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
