"""Progress reports for work a person waits on: model conversion and loading, ingest, job steps.

Code that does something slow calls `report("loading model smollm2-135m")` or wraps it in
`with step("converting ..."):`. A report is a log record on the logger `genstack.progress`, so a
server writes it as one of its JSON log lines (INFO) and needs nothing else. The `genstack` command
calls `configure("plain" | "json" | "quiet")`: plain prints one short line per report on stderr,
json prints one JSON object per report on stderr (stdout stays for results), quiet prints nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator

LOGGER = "genstack.progress"
log = logging.getLogger(LOGGER)


def report(message: str, **fields) -> None:
    """One progress line: what is happening now (and optional figures, e.g. done=3, total=10)."""
    log.info(message, extra={"fields": fields, "progress": True})


@contextlib.contextmanager
def step(message: str, **fields) -> Iterator[None]:
    """Report `message …` now and `message: done in N s` when the block ends (if it took > 0.5 s)."""
    started = time.perf_counter()
    report(f"{message} …", **fields)
    yield
    took = time.perf_counter() - started
    if took >= 0.5:
        report(f"{message}: done in {took:.1f} s", seconds=round(took, 2), **fields)


class _TerminalHandler(logging.Handler):
    def __init__(self, mode: str, stream) -> None:
        super().__init__(logging.INFO)
        self.mode = mode
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.mode == "json":
                doc = {"progress": record.getMessage(), "time": round(record.created, 3),
                       **getattr(record, "fields", {})}
                self.stream.write(json.dumps(doc, default=str) + "\n")
            else:
                self.stream.write(f"genstack: {record.getMessage()}\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001 - a progress line must never break the work it reports
            self.handleError(record)


def configure(mode: str = "plain", stream=None) -> None:
    """Route progress reports to the terminal: "plain", "json" or "quiet" (nothing)."""
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        if isinstance(h, _TerminalHandler):
            logger.removeHandler(h)
    logger.propagate = False  # not also as a log line on stdout
    if mode == "quiet":
        logger.setLevel(logging.WARNING)
        return
    logger.setLevel(logging.INFO)
    logger.addHandler(_TerminalHandler(mode, stream or sys.stderr))


def enabled() -> bool:
    return logging.getLogger(LOGGER).isEnabledFor(logging.INFO)


def follow_steps(stream, disable: bool = False, desc: str = "denoising"):
    """Read a stream of `progress` / `result` messages (the image and video streams) with a bar per
    step on stderr; returns the `result` (None if the stream ended without one). Ctrl-C cancels
    the stream before it propagates."""
    from tqdm import tqdm

    bar = result = None
    try:
        for msg in stream:
            if msg.HasField("progress"):
                if bar is None:
                    bar = tqdm(total=msg.progress.total_steps, unit="step", desc=desc, disable=disable,
                               file=sys.stderr)
                bar.update(msg.progress.step - bar.n)
            elif msg.HasField("result"):
                result = msg.result
    except KeyboardInterrupt:
        stream.cancel()
        raise
    finally:
        if bar is not None:
            bar.close()
    return result
