"""The web console: a small HTTP server in front of the orchestrator's gRPC API.

    GET  /                          the page (static/index.html, app.js, app.css; no build step)
    GET  /api/info                  job kinds the orchestrator offers (read over gRPC reflection)
    GET  /api/jobs?state=&kind=&page_token=&page_size=
    POST /api/jobs                  {"kind": "answer", "input": {...proto JSON...}, "pipeline": "", "deadline_s": 0}
    GET  /api/jobs/<id>             the full record (proto JSON)
    POST /api/jobs/<id>/cancel
    GET  /api/jobs/<id>/events      server-sent events: one `job` event per JobEvent, then `end`
    GET  /api/artifact?uri=         bytes of a stored image or clip (only inside the artifact store)
    GET  /healthz

The console holds no secret. A browser that sends `Authorization: Bearer <token>` has it passed on
as gRPC metadata; an orchestrator that wants a token answers UNAUTHENTICATED, which the console
returns as 401, and the page asks for one.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import queue
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import grpc
from google.protobuf import json_format

import shared  # noqa: F401 - generated stubs on sys.path
from genstack.orchestrator.v1 import orchestrator_pb2 as pb
from genstack.orchestrator.v1 import orchestrator_pb2_grpc as pb_grpc
from shared import metrics

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
#: kinds the page has a form for (others the orchestrator offers are listed, submitted as JSON)
FORMS = ("answer", "image", "video", "agent", "generate", "ingest")
MAX_BODY = 8 * 1024 * 1024
KEEPALIVE_S = 15.0
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
FINAL_STATES = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
_STATES = {name.removeprefix("JOB_STATE_").lower(): value for name, value in pb.JobState.items() if value}


def _dict(msg) -> dict:
    return json_format.MessageToDict(msg)


class Bridge:
    """The console's one channel to the orchestrator, and what it knows about it."""

    def __init__(self, address: str, timeout_s: float = 30.0):
        self.address = address
        self.timeout_s = timeout_s
        credentials = None
        try:
            from shared.auth import channel_credentials

            credentials = channel_credentials()
        except ImportError:  # pragma: no cover - a checkout without shared/auth.py
            pass
        limit = 64 * 1024 * 1024
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        self.channel = grpc.secure_channel(address, credentials, options) if credentials is not None else \
            grpc.insecure_channel(address, options)
        self.stub = pb_grpc.OrchestratorServiceStub(self.channel)
        self._kinds: tuple[float, list[str], str] | None = None
        self._lock = threading.Lock()

    def kinds(self, metadata) -> tuple[list[str], str]:
        """The SubmitJobRequest inputs the orchestrator's own proto has (gRPC reflection), cached for
        a minute; this console's stubs when reflection is not reachable."""
        with self._lock:
            if self._kinds and time.monotonic() - self._kinds[0] < 60:
                return self._kinds[1], self._kinds[2]
        kinds, source = None, "stubs"
        try:
            from google.protobuf import descriptor_pool
            from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
                ProtoReflectionDescriptorDatabase,
            )

            db = ProtoReflectionDescriptorDatabase(self.channel)
            message = descriptor_pool.DescriptorPool(db).FindMessageTypeByName(pb.SubmitJobRequest.DESCRIPTOR.full_name)
            kinds, source = [f.name for f in message.oneofs_by_name["input"].fields], "orchestrator"
        except Exception as exc:  # noqa: BLE001 - reflection off, or it wants a token
            log.debug("reflection unavailable: %s", exc)
        if kinds is None:
            kinds = [f.name for f in pb.SubmitJobRequest.DESCRIPTOR.oneofs_by_name["input"].fields]
        with self._lock:
            self._kinds = (time.monotonic(), kinds, source)
        return kinds, source


class Handler(BaseHTTPRequestHandler):
    server_version = "genstack-console"
    bridge: Bridge  # set on the class made by make_server
    protocol_version = "HTTP/1.1"

    # -- plumbing ---------------------------------------------------------------------------------

    def log_message(self, fmt, *args) -> None:  # the stdlib prints to stderr; ours is JSON lines
        log.debug("http " + fmt, *args)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        auth = self.headers.get("Authorization", "")
        return (("authorization", auth),) if auth.lower().startswith("bearer ") and len(auth) > 7 else ()

    def _count(self, status: int) -> None:
        path = urlparse(self.path).path
        label = path if path in ("/", "/api/info", "/api/jobs", "/healthz") else \
            "/api/jobs/*/events" if path.endswith("/events") else "/api/jobs/*" if path.startswith("/api/jobs/") else \
            "/static/*" if path.startswith("/static/") else "/api/artifact" if path == "/api/artifact" else "other"
        metrics.CONSOLE_REQUESTS.labels(label, str(status)).inc()

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self._count(status)

    def _json(self, status: int, doc) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _error(self, status: int, message: str, code: str = "") -> None:
        self._json(status, {"error": message, "code": code or HTTPStatus(status).phrase.upper().replace(" ", "_")})

    def _grpc_error(self, exc: grpc.RpcError) -> None:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            details = f"the orchestrator at {self.bridge.address} does not answer: {details}"
        self._error(_HTTP.get(code, 502), details or code.name, code.name)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError(f"the request body is {length} bytes; at most {MAX_BODY}")
        raw = self.rfile.read(length) if length else b"{}"
        doc = json.loads(raw or b"{}")
        if not isinstance(doc, dict):
            raise ValueError("the body must be a JSON object")
        return doc

    # -- routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlparse(self.path)
        query = {k: v for k, v in parse_qs(url.query).items()}
        path = url.path
        try:
            if path in ("/", "/index.html"):
                return self._static("index.html")
            if path.startswith("/static/"):
                return self._static(path.removeprefix("/static/"))
            if path == "/healthz":
                return self._json(200, {"ok": True})
            if path == "/api/info":
                kinds, source = self.bridge.kinds(self._metadata())
                return self._json(200, {"kinds": kinds, "source": source, "forms": list(FORMS),
                                        "orchestrator": self.bridge.address,
                                        "states": list(_STATES)})
            if path == "/api/jobs":
                return self._list(query)
            if path == "/api/artifact":
                return self._artifact((query.get("uri") or [""])[0])
            parts = path.strip("/").split("/")
            if len(parts) == 3 and parts[:2] == ["api", "jobs"]:
                job = self.bridge.stub.GetJob(pb.GetJobRequest(job_id=parts[2]), timeout=self.bridge.timeout_s,
                                              metadata=self._metadata()).job
                return self._json(200, _dict(job))
            if len(parts) == 4 and parts[:2] == ["api", "jobs"] and parts[3] == "events":
                return self._events(parts[2], self.headers.get("Last-Event-ID") or (query.get("after") or [""])[0])
            return self._error(404, f"no such page: {path}")
        except grpc.RpcError as exc:
            return self._grpc_error(exc)
        except (BrokenPipeError, ConnectionResetError):
            return None

    def do_POST(self) -> None:  # noqa: N802
        path = urlparse(self.path).path
        parts = path.strip("/").split("/")
        try:
            if path == "/api/jobs":
                return self._submit(self._body())
            if len(parts) == 4 and parts[:2] == ["api", "jobs"] and parts[3] == "cancel":
                r = self.bridge.stub.CancelJob(pb.CancelJobRequest(job_id=parts[2]), timeout=self.bridge.timeout_s,
                                               metadata=self._metadata())
                return self._json(200, _dict(r) | {"cancelled": r.cancelled})
            return self._error(404, f"no such endpoint: {path}")
        except (ValueError, json_format.ParseError) as exc:
            return self._error(400, str(exc), "INVALID_ARGUMENT")
        except grpc.RpcError as exc:
            return self._grpc_error(exc)

    def _static(self, name: str) -> None:
        target = (STATIC / name).resolve()
        if STATIC.resolve() not in target.parents or not target.is_file():
            return self._error(404, f"no such file: {name}")
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        self._send(200, target.read_bytes(), kind, {"Content-Security-Policy": "default-src 'self'; img-src 'self' "
                                                    "data: blob:; media-src 'self' data: blob:; style-src 'self'"})

    def _list(self, query: dict) -> None:
        states = []
        for s in query.get("state", []):
            for name in filter(None, s.split(",")):
                if name.lower() not in _STATES:
                    return self._error(400, f"state must be one of {', '.join(_STATES)} (got {name!r})",
                                       "INVALID_ARGUMENT")
                states.append(_STATES[name.lower()])
        kinds = [k for value in query.get("kind", []) for k in value.split(",") if k]
        try:
            size = int((query.get("page_size") or ["50"])[0])
        except ValueError:
            return self._error(400, "page_size must be a whole number", "INVALID_ARGUMENT")
        r = self.bridge.stub.ListJobs(pb.ListJobsRequest(states=states, kinds=kinds, page_size=size,
                                                         page_token=(query.get("page_token") or [""])[0]),
                                      timeout=self.bridge.timeout_s, metadata=self._metadata())
        self._json(200, {"jobs": [_dict(j) for j in r.jobs], "next_page_token": r.next_page_token})

    def _submit(self, doc: dict) -> None:
        kind = doc.get("kind")
        if not isinstance(kind, str) or not kind:
            raise ValueError('"kind" is required (answer, image, ...)')
        if kind not in pb.SubmitJobRequest.DESCRIPTOR.fields_by_name or \
                pb.SubmitJobRequest.DESCRIPTOR.fields_by_name[kind].containing_oneof is None:
            raise ValueError(f"this console does not know the job kind {kind!r}")
        request = json_format.ParseDict({kind: doc.get("input") or {}}, pb.SubmitJobRequest())
        if doc.get("pipeline"):
            request.pipeline = str(doc["pipeline"])
        if doc.get("deadline_s"):
            request.deadline_s = float(doc["deadline_s"])
        if doc.get("idempotency_key"):
            request.idempotency_key = str(doc["idempotency_key"])
        r = self.bridge.stub.SubmitJob(request, timeout=self.bridge.timeout_s, metadata=self._metadata())
        self._json(200, {"job_id": r.job_id, "created": r.created, "state": pb.JobState.Name(r.state)})

    def _artifact(self, uri: str) -> None:
        from shared.artifacts import get_store

        store = get_store()
        root = store.fs.unstrip_protocol(store.root).rstrip("/") + "/"
        if not uri.startswith(root) or ".." in uri:
            return self._error(403, "only artifacts inside this console's artifact store can be shown", "FORBIDDEN")
        try:
            data = store.get(uri)
        except Exception as exc:  # noqa: BLE001 - NotFound, or a store on another machine
            return self._error(404, f"cannot read {uri}: {exc}", "NOT_FOUND")
        self._send(200, data, mimetypes.guess_type(uri)[0] or "application/octet-stream")

    def _events(self, job_id: str, after: str) -> None:
        """WatchJob as server-sent events; a comment every KEEPALIVE_S while nothing happens (so a
        closed tab is noticed and the gRPC stream cancelled)."""
        if after:  # resuming: a job that already ended after that event has nothing more to send
            job = self.bridge.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=self.bridge.timeout_s,
                                          metadata=self._metadata()).job
            if job.state in FINAL_STATES and job.last_event_id == after:
                return self._send(200, b"event: end\ndata: {}\n\n", "text/event-stream; charset=utf-8")
        call = self.bridge.stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_event_id=after),
                                         metadata=self._metadata(), timeout=24 * 3600)
        items: queue.Queue = queue.Queue()

        def pump():
            try:
                for msg in call:
                    items.put(msg.event)
                items.put(None)
            except grpc.RpcError as exc:
                items.put(exc)

        threading.Thread(target=pump, name=f"watch-{job_id[:8]}", daemon=True).start()
        try:
            first = items.get(timeout=self.bridge.timeout_s)
        except queue.Empty:
            first = "keepalive"
        if isinstance(first, grpc.RpcError):  # NOT_FOUND, UNAUTHENTICATED, ... before any event
            return self._grpc_error(first)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("Connection", "close")
        self.end_headers()
        self._count(200)
        self.close_connection = True
        item = first
        try:
            while True:
                if item is None:
                    self.wfile.write(b"event: end\ndata: {}\n\n")
                    self.wfile.flush()
                    return
                if isinstance(item, grpc.RpcError):
                    doc = {"error": item.details(), "code": item.code().name}
                    self.wfile.write(f"event: error\ndata: {json.dumps(doc)}\n\n".encode())
                    self.wfile.flush()
                    return
                if item == "keepalive":
                    self.wfile.write(b": keepalive\n\n")
                else:
                    doc = {"event_id": item.event_id, "type": item.type, "step": item.step, "time": item.time,
                           "state": pb.JobState.Name(item.state), "data": json.loads(item.data_json or "{}")}
                    self.wfile.write(f"id: {item.event_id}\nevent: job\ndata: {json.dumps(doc)}\n\n".encode())
                self.wfile.flush()
                try:
                    item = items.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    item = "keepalive"
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            call.cancel()


def make_server(host: str, port: int, orchestrator: str) -> ThreadingHTTPServer:
    bridge = Bridge(orchestrator)
    handler = type("ConsoleHandler", (Handler,), {"bridge": bridge})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(host: str, port: int, orchestrator: str) -> int:
    """Run the console until SIGTERM/SIGINT; prints `GENSTACK_LISTENING console <port>`."""
    import signal

    server = make_server(host, port, orchestrator)
    metrics.start("console")

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    actual = server.server_address[1]
    log.info("console listening", extra={"fields": {"port": actual, "orchestrator": orchestrator}})
    print(f"GENSTACK_LISTENING console {actual}", flush=True)
    print(f"genstack console: http://{host if host not in ('0.0.0.0', '') else '127.0.0.1'}:{actual}/ "
          f"(orchestrator at {orchestrator})", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0
