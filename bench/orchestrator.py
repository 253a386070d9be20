"""Orchestration overhead: a job's total latency minus the time spent inside model and search
calls (as the services report it), with gRPC dispatch and with Celery dispatch, side by side.

RetrieverCore, generator and validator run as real gRPC servers and Celery workers; the orchestrator
core runs in this process with the Redis job store. Each job is an `answer` job with the small
model, 4 new tokens and no retries, so the measured overhead is not drowned by generation.

    python bench/orchestrator.py [--jobs 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENSTACK_LOG_LEVEL", "WARNING")
os.environ.setdefault("GENSTACK_REDIS_URL", "redis://127.0.0.1:6379/14")
os.environ["GENSTACK_GENERATOR_PRELOAD"] = '["smollm2-135m"]'
os.environ.setdefault("GENSTACK_TORCH_THREADS", "1")  # several model processes share the cores
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shared  # noqa: E402,F401
from genstack.generator.v1 import generator_pb2 as gpb  # noqa: E402
from genstack.orchestrator.v1 import orchestrator_pb2 as pb  # noqa: E402
from genstack.retriever.v1 import retriever_pb2 as rpb  # noqa: E402
from services.orchestrator.core import OrchestratorCore  # noqa: E402
from services.orchestrator.settings import OrchestratorSettings  # noqa: E402
from shared.config import Settings  # noqa: E402
from tests.support import ServiceProcess  # noqa: E402

STEPS = ("retrieve", "generate_answer", "validate_answer")
DOCS = {
    "paris": "Paris is the capital of France. The Eiffel Tower was completed in 1889.",
    "tokyo": "Tokyo is the capital of Japan. It hosted the Summer Olympics in 1964 and 2021.",
    "bees": "Honey bees communicate the location of flowers with a waggle dance.",
}


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_mode(transport: str, jobs: int) -> dict:
    core = OrchestratorCore(
        OrchestratorSettings(store="redis", step_transports={s: transport for s in STEPS}),
        Settings(transport=transport),
    )
    overhead, total, inside = [], [], []
    per_step: dict[str, list[float]] = {}
    for i in range(jobs + 3):
        t0 = time.perf_counter()
        job, _ = core.create(pb.SubmitJobRequest(answer=pb.AnswerInput(
            question="When was the Eiffel Tower completed?", collection="bench_orch", top_k=3,
            models=["smollm2-135m"], max_retries=0, sampling=gpb.SamplingParams(max_new_tokens=4))))
        record = core.run(job)
        wall_ms = (time.perf_counter() - t0) * 1000  # what the caller waits: create, run, final writes
        if record.state not in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED) or record.error_code not in (
                "", "FAILED_PRECONDITION"):
            raise SystemExit(f"job failed: {record.error_code} {record.error}")
        if i < 3:
            continue  # warm-up: connections, caches
        service_ms = sum(s.service_ms for s in record.steps)
        for s in record.steps:  # where the overhead goes: each step's wall time outside its service
            per_step.setdefault(s.name, []).append(s.duration_ms - s.service_ms)
        total.append(wall_ms)
        inside.append(service_ms)
        overhead.append(wall_ms - service_ms)
    core.close()
    steps = {name: statistics.median(v) for name, v in per_step.items()}
    return {"p50": statistics.median(overhead), "p99": percentile(overhead, 99), "total": statistics.median(total),
            "inside": statistics.median(inside), "steps": steps,
            "between": statistics.median(overhead) - sum(steps.values())}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50)
    args = ap.parse_args()
    procs = []
    try:
        for name in ("retriever", "generator", "validator"):
            for role in ("grpc", "worker"):
                p = ServiceProcess(name, role).start()
                procs.append(p)
                if role == "grpc":
                    os.environ[f"GENSTACK_{name.upper()}_ADDRESS"] = p.address
        from shared.config import get_client_settings

        get_client_settings.cache_clear()
        from shared.clients.retriever import RetrieverClient

        with RetrieverClient("grpc") as r:
            r.ingest_documents(rpb.IngestDocumentsRequest(collection="bench_orch", documents=[
                rpb.Document(id=k, text=v, content_type="text/plain") for k, v in DOCS.items()]))
        results = {}
        for transport in ("grpc", "celery"):
            results[transport] = r = run_mode(transport, args.jobs)
            print(f"{transport}: overhead p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms; per step, outside the "
                  "service (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
                  + f"; outside the steps {r['between']:.1f}", flush=True)
            time.sleep(1)
    finally:
        for p in reversed(procs):
            p.stop()
    print(f"\norchestration overhead over {args.jobs} answer jobs per dispatch mode "
          f"(job total minus time inside search/model/validation calls)")
    print(f"{'dispatch':<9} {'overhead p50 ms':>16} {'p99 ms':>8} {'job total p50 ms':>17} {'inside p50 ms':>14}")
    for transport, r in results.items():
        print(f"{transport:<9} {r['p50']:>16.1f} {r['p99']:>8.1f} {r['total']:>17.1f} {r['inside']:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
