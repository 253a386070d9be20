"""`genstack ask`, `genstack jobs ...` and `genstack up`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from google.protobuf import json_format

from shared.timefmt import parse_iso

TRANSPORTS = ["inproc", "grpc", "celery"]
STATES = ["queued", "running", "succeeded", "failed", "cancelled"]
#: a `--state` may also be given by these everyday words
STATE_ALIASES = {"done": "succeeded", "success": "succeeded", "ok": "succeeded", "error": "failed",
                 "canceled": "cancelled", "pending": "queued"}


def _transport(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transport", choices=TRANSPORTS, default=None,
                   help="how to reach the orchestrator (default: GENSTACK_TRANSPORT, inproc = embedded, no server)")


def _state(value: str) -> str:
    v = value.strip().lower().removeprefix("job_state_")
    v = STATE_ALIASES.get(v, v)
    if v not in STATES:
        raise argparse.ArgumentTypeError(f"unknown state {value!r}; choose from {', '.join(STATES)}")
    return v


def _job_kinds() -> list[str]:
    """The kinds a job can have: the fields of SubmitJobRequest's `input` oneof (the contract's list)."""
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    return [f.name for f in pb.SubmitJobRequest.DESCRIPTOR.oneofs_by_name["input"].fields]


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question from the ingested documents, with citations")
    p.add_argument("question", help="the question (ingest documents first: genstack ingest PATH...)")
    p.add_argument("--collection", default="", help="collection to search (default: the configured one, 'default')")
    p.add_argument("--top-k", type=int, default=None, help="chunks to retrieve, 1-50 (default: 4)")
    p.add_argument("--model", action="append", default=[],
                   help="generator model; repeat for a cascade, small model first (default: the configured one)")
    p.add_argument("--max-retries", type=int, default=None,
                   help="re-asks after the validator rejects an answer, 0-5 (default: 2)")
    p.add_argument("--timeout", type=float, default=None, help="job deadline in seconds (default: 600)")
    _transport(p)
    p.add_argument("--json", action="store_true",
                   help="print only the finished job record as JSON on stdout (progress as JSON lines on stderr)")
    p.set_defaults(func=ask)

    jobs = sub.add_parser("jobs", help="list, inspect, follow or cancel jobs").add_subparsers(
        dest="jobs_cmd", required=True, metavar="ACTION")
    j = jobs.add_parser("list", help="the newest jobs first")
    j.add_argument("--state", action="append", default=[], type=_state,
                   help=f"only jobs in this state: {', '.join(STATES)} (repeatable)")
    j.add_argument("--kind", action="append", default=[],
                   help=f"only jobs of this kind: {', '.join(_job_kinds())} (repeatable)")
    j.add_argument("--limit", type=int, default=20, help="at most this many jobs (1-200, default 20)")
    j.add_argument("--json", action="store_true", help="print the ListJobsResponse as JSON")
    j.set_defaults(func=jobs_list)
    for name, fn, text in (("get", jobs_get, "a job's record: state, steps, result"),
                           ("watch", jobs_watch, "follow a job's events until it ends"),
                           ("cancel", jobs_cancel, "ask a queued or running job to stop")):
        j = jobs.add_parser(name, help=text)
        j.add_argument("job_id", help="the id printed by ask, demo or `jobs list`")
        if name == "watch":
            j.add_argument("--after", default="", help="resume after this event id")
        if name in ("get", "watch"):
            j.add_argument("--json", action="store_true", help="print proto JSON (one object per event for watch)")
        j.set_defaults(func=fn)
    for j in jobs.choices.values():
        _transport(j)
        j.add_argument("--timeout", type=float, default=None, help="deadline per call in seconds")

    p = sub.add_parser("up", help="start the whole stack on this machine as separate processes (needs Redis)")
    p.add_argument("--services", nargs="+", default=None, metavar="SERVICE",
                   help="default: every service that has code")
    p.add_argument("--dry-run", action="store_true", help="print the processes it would start, start nothing")
    p.set_defaults(func=up)


def _client(transport):
    from shared.clients.orchestrator import OrchestratorClient

    return OrchestratorClient(transport)


class _JobsClient:
    """The orchestrator client for `jobs ...`: embedded, it reads the job store directly, without the
    warm-up an answer job needs (a listing then takes a second, not eight)."""

    def __init__(self, transport):
        from shared.clients.orchestrator import OrchestratorClient
        from shared.config import get_settings

        self._api = None
        if (transport or get_settings().transport) == "inproc":
            from services.orchestrator.grpc_api import create_api

            self._api = create_api()
            self.client = OrchestratorClient("inproc", api=self._api)
        else:
            self.client = OrchestratorClient(transport)

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        if self._api is not None:
            self._api.close()


def _state_name(state: int) -> str:
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    return pb.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def _parse_time(value: str) -> float | None:
    if not value:
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def elapsed_s(job) -> float:
    """Seconds a job took, or has been running so far."""
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    if job.duration_ms or job.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED):
        return job.duration_ms / 1000
    started = _parse_time(job.created_at)
    return max(0.0, time.time() - started) if started else 0.0


def _missing_collection(error: str) -> bool:
    return "collection" in error and "does not exist" in error


def _ingest_hint(collection: str) -> str:
    return (f"nothing has been ingested into collection {collection!r} yet; run "
            f"`genstack ingest PATH... --collection {collection}` first (e.g. `genstack ingest docs/ README.md "
            f"--collection {collection}`)")


def run_answer(client, request, out=sys.stdout, err=sys.stderr) -> object:
    """Submit an answer job, stream its answer, then print sources and verdict; returns the record.
    `out=None` prints nothing (progress still goes to the progress reporter)."""
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb
    from shared import progress

    submitted = client.submit_job(request)
    attempt = 0
    write = out.write if out is not None else (lambda _s: None)
    flush = out.flush if out is not None else (lambda: None)
    mid_line = False  # the answer stream left the cursor mid-line: end it before a progress line
    failed: list[tuple[str, str]] = []  # step failures not printed yet
    for e in follow(client, submitted.job_id):
        data = json.loads(e.data_json or "{}")
        if e.type == "generate.delta":
            if data.get("attempt", 1) != attempt:
                attempt = data.get("attempt", 1)
                if attempt > 1:
                    write(f"\n\n[retry {attempt - 1}: the validator rejected the answer]\n")
            write(data["delta"])
            mid_line = True
            flush()
        elif e.type == "answer.cited":
            for a in data.get("added", []):
                sentence = " ".join(str(a.get("sentence", "")).split())
                short = sentence if len(sentence) <= 70 else sentence[:67] + "..."
                write(f"\n  [{a['source']}] added after: \"{short}\"")
            if data.get("added"):
                write("\n(the markers above were added where a single source supports the sentence)")
            mid_line = mid_line or bool(data.get("added"))
            flush()
        elif mid_line and e.type in ("step.started", "step.finished", "step.failed"):
            write("\n")  # progress goes to stderr; where both streams share a terminal or file, keep lines whole
            flush()
            mid_line = False
        if e.type == "step.started":
            for name, error in failed:  # the job goes on after a failed step: say what failed now
                (err or sys.stderr).write(f"[{name} failed: {error}]\n")
            failed.clear()
            progress.report(f"step {e.step} …", step=e.step, job_id=submitted.job_id)
        elif e.type == "step.finished" and data.get("duration_ms", 0) >= 500:
            progress.report(f"step {e.step}: done in {data['duration_ms'] / 1000:.1f} s", step=e.step,
                            job_id=submitted.job_id, duration_ms=data["duration_ms"])
        elif e.type == "step.failed":
            error = data.get("error", "")
            if not _missing_collection(error):
                failed.append((e.step, error))
    job = client.get_job(submitted.job_id)
    for name, error in failed:  # the job's own error is printed once, below
        if error != job.error:
            (err or sys.stderr).write(f"[{name} failed: {error}]\n")
    if out is None:
        return job
    a = job.answer
    if job.state == pb.JOB_STATE_FAILED and _missing_collection(job.error):
        collection = request.answer.collection or job.request.answer.collection or "default"
        (err or sys.stderr).write(f"{_ingest_hint(collection)}\n")
        write(f"(job {job.job_id} failed: {job.error})\n")
        return job
    if mid_line:
        write("\n")
    if a.citations:
        write("\nSources (* = cited in the answer):\n")
        for c in a.citations:
            mark = "*" if c.cited else " "
            write(f" {mark}[{c.index}] {c.source or c.document_id}  (score {c.score:.3f})\n")
    verdict = "skipped" if not a.HasField("verdict") else ("passed" if a.verdict.passed else "failed")
    write(f"\nVerdict: {verdict}")
    if a.HasField("verdict"):
        write(f" (score {a.verdict.score:.2f})")
    write(f" · model {a.model or '-'} · attempts {a.attempts} · {_state_name(job.state)} · "
          f"{elapsed_s(job):.1f} s · job {job.job_id}\n")
    flush()
    if job.error:  # why the job failed: a message for the person, on stderr like every error
        (err or sys.stderr).write(f"{job.error}\n")
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
    from shared.errors import InvalidArgument

    if not args.question.strip():
        raise InvalidArgument("must be a non-empty question, e.g. genstack ask \"What does the validator return?\"",
                              field="question")
    a = pb.AnswerInput(question=args.question, collection=args.collection, models=args.model)
    if args.top_k is not None:
        a.top_k = args.top_k
    if args.max_retries is not None:
        a.max_retries = args.max_retries
    request = pb.SubmitJobRequest(answer=a)
    if args.timeout is not None:
        request.deadline_s = args.timeout
    with _client(args.transport) as client:
        job = run_answer(client, request, out=None if args.json else sys.stdout)
    if args.json:
        print(json.dumps(job_document(job), indent=2, ensure_ascii=False))
        if job.state == pb.JOB_STATE_FAILED and _missing_collection(job.error):
            print(_ingest_hint(a.collection or "default"), file=sys.stderr)
    return 0 if job.state == pb.JOB_STATE_SUCCEEDED else 1


def _decode_nested(doc):
    """Proto JSON with the JSON held inside string fields (`inputJson`, `dataJson`, ...) decoded."""
    if isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            if key.endswith("Json") and isinstance(value, str):
                try:
                    out[key.removesuffix("Json")] = json.loads(value) if value else None
                    continue
                except json.JSONDecodeError:
                    pass
            out[key] = _decode_nested(value)
        return out
    if isinstance(doc, list):
        return [_decode_nested(v) for v in doc]
    return doc


def job_document(job) -> dict:
    return _decode_nested(json_format.MessageToDict(job))


def jobs_list(args) -> int:
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    states = [pb.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state]
    with _JobsClient(args.transport) as client:
        resp = client.list_jobs(pb.ListJobsRequest(states=states, kinds=args.kind, page_size=args.limit),
                                timeout=args.timeout)
    if args.json:
        print(json.dumps(json_format.MessageToDict(resp), indent=2, ensure_ascii=False))
        return 0
    if not resp.jobs:
        print("no jobs" + (" matching the filters" if states or args.kind else ""))
        return 0
    print(f"{'job id':<32}  {'kind':<9} {'state':<10} {'created':<24} {'time':>9}  error")
    for job in resp.jobs:
        error = job.error.splitlines()[0] if job.error else ""
        print(f"{job.job_id:<32}  {job.kind:<9} {_state_name(job.state):<10} {job.created_at:<24} "
              f"{elapsed_s(job):7.1f} s  {_summary(error, 60) if error else ''}")
    return 0


def _summary(value, width: int = 100) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_job(job) -> str:
    """A job record for people: what was asked, each step, the result."""
    kind_input = job.request.WhichOneof("input")
    lines = [f"job {job.job_id}", f"  kind      {job.kind} (pipeline {job.pipeline})",
             f"  state     {_state_name(job.state)}" + (f" ({job.error_code})" if job.error_code else ""),
             f"  created   {job.created_at}", f"  time      {elapsed_s(job):.1f} s"
             + ("" if job.duration_ms else " so far" if _state_name(job.state) in ("queued", "running") else "")]
    if job.error:
        lines.append(f"  error     {job.error}")
    if kind_input:
        req = json_format.MessageToDict(getattr(job.request, kind_input))
        for doc in req.get("documents", []):  # ingest: name the documents, not their bytes
            doc.pop("data", None)
            doc.pop("text", None)
        lines.append(f"  request   {_summary(req)}")
    if job.steps:
        lines.append("  steps")
        for st in job.steps:
            extra = f"  {st.error}" if st.error else ""
            lines.append(f"    {st.name:<18} {st.status:<9} {st.duration_ms / 1000:6.2f} s  {st.service or '-'} "
                         f"over {st.transport or '-'} (attempt {st.attempt}){extra}")
            for label, raw in (("in ", st.input_json), ("out", st.output_json)):
                if raw:
                    try:
                        lines.append(f"      {label} {_summary(json.loads(raw), 96)}")
                    except json.JSONDecodeError:
                        lines.append(f"      {label} {_summary(raw, 96)}")
    result = job.WhichOneof("result")
    if result == "answer":
        a = job.answer
        lines.append("  answer")
        lines.extend(f"    {line}" for line in (a.answer or "(none)").splitlines())
        for c in a.citations:
            lines.append(f"    {'*' if c.cited else ' '}[{c.index}] {c.source or c.document_id} (score {c.score:.3f})")
        if a.citations:
            lines.append("    (* = cited in the answer)")
        if a.HasField("verdict"):
            lines.append(f"  verdict   {'passed' if a.verdict.passed else 'failed'} (score {a.verdict.score:.2f}) · "
                         f"model {a.model} · attempts {a.attempts}")
    elif result is not None:
        lines.append(f"  result    {_summary(json_format.MessageToDict(getattr(job, result)), 200)}")
    return "\n".join(lines)


def jobs_get(args) -> int:
    with _JobsClient(args.transport) as client:
        job = client.get_job(args.job_id, timeout=args.timeout)
    if args.json:
        print(json.dumps(job_document(job), indent=2, ensure_ascii=False))
    else:
        print(format_job(job))
    return 0


def jobs_watch(args) -> int:
    with _JobsClient(args.transport) as client:
        events = follow(client, args.job_id) if not args.after else (
            m.event for m in client.watch_job(args.job_id, args.after))
        in_text = False  # inside streamed generate.delta text
        for event in events:
            if args.json:
                print(json.dumps(job_document(event), ensure_ascii=False), flush=True)
                continue
            data = json.loads(event.data_json or "{}")
            if event.type == "generate.delta":
                sys.stdout.write(data.get("delta", ""))
                sys.stdout.flush()
                in_text = True
                continue
            if in_text:
                print()
                in_text = False
            step = f" {event.step}" if event.step else ""
            print(f"{event.time}  {event.type}{step}" + (f"  {_summary(data, 120)}" if data else ""), flush=True)
    return 0


def jobs_cancel(args) -> int:
    from genstack.orchestrator.v1 import orchestrator_pb2 as pb

    with _JobsClient(args.transport) as client:
        resp = client.cancel_job(args.job_id, timeout=args.timeout)
    state = _state_name(resp.state)
    if resp.cancelled and resp.state == pb.JOB_STATE_CANCELLED:
        print(f"job {args.job_id} cancelled")  # nothing was running it: it ended at once
    elif resp.cancelled:
        print(f"job {args.job_id} is {state}: cancel requested; it stops at its next step or token "
              f"(follow it with `genstack jobs watch {args.job_id}`)")
    else:
        print(f"job {args.job_id} already {state}; nothing to cancel")
    return 0


def up(args) -> int:
    import os

    from services.orchestrator.stack import plan, run_stack
    from shared.runtime import default_threads

    planned = plan(args.services)  # InvalidArgument (exit 2) for an unknown or unimplemented service
    # every process gets its share of the cores: on a small machine, one torch thread each
    model_processes = sum(1 for label, _ in planned if not label.startswith("orchestrator"))
    threads = os.environ.setdefault("GENSTACK_TORCH_THREADS", str(default_threads(max(1, model_processes))))
    if args.dry_run:
        for label, argv in planned:
            command = ["genstack", *argv[3:]] if argv[1:3] == ["-m", "shared.cli"] else argv
            print(f"would start {label}: {' '.join(command)}")
        print(f"(GENSTACK_TORCH_THREADS={threads} for each process)")
        return 0
    return run_stack(args.services)
