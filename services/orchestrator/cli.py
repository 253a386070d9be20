"""`genstack ask`, `genstack jobs ...` and `genstack up`."""

from __future__ import annotations

import argparse
import json
import sys

from google.protobuf import json_format


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question from the ingested documents, with citations")
    p.add_argument("question")
    p.add_argument("--collection", default="", help="collection to search (default: the configured one)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--model", action="append", default=[], help="cascade: repeat, small model first")
    p.add_argument("--max-retries", type=int, default=None)
    p.add_argument("--transport", choices=["inproc", "grpc", "celery"], default=None)
    p.add_argument("--json", action="store_true", help="print the job record as JSON at the end")
    p.set_defaults(func=ask)

    jobs = sub.add_parser("jobs", help="list, inspect, follow or cancel jobs").add_subparsers(dest="jobs_cmd",
                                                                                              required=True)
    j = jobs.add_parser("list")
    j.add_argument("--state", action="append", default=[], help="queued, running, succeeded, failed, cancelled")
    j.add_argument("--kind", action="append", default=[])
    j.add_argument("--limit", type=int, default=20)
    j.set_defaults(func=jobs_list)
    for name, fn in (("get", jobs_get), ("watch", jobs_watch), ("cancel", jobs_cancel)):
        j = jobs.add_parser(name)
        j.add_argument("job_id")
        if name == "watch":
            j.add_argument("--after", default="", help="resume after this event id")
        j.set_defaults(func=fn)
    for j in jobs.choices.values():
        j.add_argument("--transport", choices=["inproc", "grpc", "celery"], default="grpc")

    p = sub.add_parser("up", help="start the whole stack on this machine as separate processes (needs Redis)")
    p.add_argument("--services", nargs="+", default=None, help="default: every service that exists")
    p.set_defaults(func=up)


def _client(transport):
    from shared.clients.orchestrator import OrchestratorClient

    return OrchestratorClient(transport)


def run_answer(client, request, out=sys.stdout) -> object:
    """Submit an answer job, stream its answer, then print sources and verdict; returns the record."""
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    submitted = client.submit_job(request)
    attempt = 0
    for e in follow(client, submitted.job_id):
        data = json.loads(e.data_json or "{}")
        if e.type == "generate.delta":
            if data.get("attempt", 1) != attempt:
                attempt = data.get("attempt", 1)
                if attempt > 1:
                    out.write(f"\n\n[retry {attempt - 1}: the validator rejected the answer]\n")
            out.write(data["delta"])
            out.flush()
        elif e.type == "answer.cited":
            marks = ", ".join(f"[{a['source']}]" for a in data.get("added", []))
            out.write(f"\n[citations attached where one source supports the sentence: {marks}]\n{data['answer']}")
            out.flush()
        elif e.type == "step.failed":
            out.write(f"\n[{e.step} failed: {data.get('error')}]\n")
    job = client.get_job(submitted.job_id)
    a = job.answer
    out.write("\n\nSources:\n")
    for c in a.citations:
        mark = "*" if c.cited else " "
        out.write(f" {mark}[{c.index}] {c.source or c.document_id}  (score {c.score:.3f})\n")
    verdict = "skipped" if not a.HasField("verdict") else ("passed" if a.verdict.passed else "failed")
    out.write(f"\nVerdict: {verdict}")
    if a.HasField("verdict"):
        out.write(f" (score {a.verdict.score:.2f})")
    out.write(f" · model {a.model or '-'} · attempts {a.attempts} · {pb.JobState.Name(job.state)} · "
              f"{job.duration_ms / 1000:.1f} s · job {job.job_id}\n")
    if job.error:
        out.write(f"{job.error}\n")
    return job


def follow(client, job_id: str):
    """Yield a job's events until it ends, resuming after the last seen event when a watch
    stream ends early (deadline, disconnect): no event is lost or repeated."""
    from services.orchestrator.store import TERMINAL_EVENTS
    from shared.errors import DeadlineExceeded, Unavailable

    last = ""
    while True:
        try:
            for msg in client.watch_job(job_id, last):
                last = msg.event.event_id
                yield msg.event
                if msg.event.type in TERMINAL_EVENTS:
                    return
        except (DeadlineExceeded, Unavailable):
            pass


def ask(args: argparse.Namespace) -> int:
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    a = pb.AnswerInput(question=args.question, collection=args.collection, models=args.model)
    if args.top_k is not None:
        a.top_k = args.top_k
    if args.max_retries is not None:
        a.max_retries = args.max_retries
    with _client(args.transport) as client:
        job = run_answer(client, pb.SubmitJobRequest(answer=a))
    if args.json:
        print(json.dumps(json_format.MessageToDict(job), indent=2))
    return 0 if job.state == pb.JOB_STATE_SUCCEEDED else 1


def jobs_list(args) -> int:
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    states = [pb.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
    with _client(args.transport) as client:
        resp = client.list_jobs(pb.ListJobsRequest(states=states, kinds=args.kind, page_size=args.limit))
    for job in resp.jobs:
        state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        print(f"{job.job_id}  {job.kind:<9} {state:<10} {job.created_at}  {job.duration_ms / 1000:7.1f} s  {job.error}")
    return 0


def jobs_get(args) -> int:
    with _client(args.transport) as client:
        print(json.dumps(json_format.MessageToDict(client.get_job(args.job_id)), indent=2))
    return 0


def jobs_watch(args) -> int:
    with _client(args.transport) as client:
        for event in follow(client, args.job_id) if not args.after else (
                m.event for m in client.watch_job(args.job_id, args.after)):
            print(json.dumps(json_format.MessageToDict(event)), flush=True)
    return 0


def jobs_cancel(args) -> int:
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    with _client(args.transport) as client:
        resp = client.cancel_job(args.job_id)
    print(f"{pb.JobState.Name(resp.state)} (cancelled by this request: {resp.cancelled})")
    return 0


def up(args) -> int:
    from services.orchestrator.stack import run_stack

    return run_stack(args.services)
