"""JSON-lines logging with service, job and request ids carried in context variables."""

from __future__ import annotations

import contextvars
import json
import logging
import sys

from shared.timefmt import iso_utc

service_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("service", default=None)
_process_service = "-"  # threads do not inherit context variables; the process's service still applies
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)

_CONTEXT = {"job_id": job_id_var, "request_id": request_id_var, "task_id": task_id_var}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": iso_utc(record.created),
            "level": record.levelname,
            "service": service_var.get() or _process_service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, var in _CONTEXT.items():
            value = var.get()
            if value:
                doc[key] = value
        if "shared.tracing" in sys.modules:  # only once tracing may be on: no cost otherwise
            trace_id, span_id = sys.modules["shared.tracing"].current_ids()
            if trace_id:
                doc["trace_id"], doc["span_id"] = trace_id, span_id
        extra = getattr(record, "fields", None)
        if extra:
            doc.update(extra)
        if record.exc_info:
            doc["trace"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a record is emitted, not to the one set up with: a
    thread that outlives a swapped stream (a test's captured output, a redirected CLI) still logs."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the current sys.stdout wins
        pass


def setup_logging(service: str, level: str = "INFO", json_lines: bool = True) -> None:
    """Configure the root logger once per process (stdout, JSON lines by default)."""
    global _process_service
    _process_service = service
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _StdoutHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

