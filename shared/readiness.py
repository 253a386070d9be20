"""Wait until gRPC servers report SERVING on grpc.health.v1, saying what is still loading.

`genstack up` starts every server and worker at once; the model services take a while (minutes
on a first run, which converts the bundled models). `wait_until_serving` polls each server's
health and prints a line when one becomes SERVING, a reminder of what is still starting every
`remind_s`, and one line when all are ready.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable


def health_status(address: str, timeout_s: float = 1.0) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN or DOWN (nothing answers)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                              timeout=timeout_s)
        except grpc.RpcError:
            return "DOWN"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_until_serving(services: list[str], timeout_s: float = 1800.0, poll_s: float = 1.0, remind_s: float = 15.0,
                       out=None, stop: Callable[[], bool] = lambda: False,
                       addresses: dict[str, str] | None = None) -> bool:
    """Poll until every service is SERVING (True), or until timeout or `stop()` (False)."""
    from shared.config import get_client_settings

    out = out or sys.stdout
    where = {name: (addresses or {}).get(name) or get_client_settings().address(name) for name in services}
    started = time.monotonic()
    last_remind = started
    pending = list(services)
    while pending:
        if stop():
            return False
        for name in list(pending):
            if health_status(where[name]) == "SERVING":
                pending.remove(name)
                print(f"genstack up: {name} is SERVING on {where[name]} ({time.monotonic() - started:.0f} s)",
                      file=out, flush=True)
        now = time.monotonic()
        if pending and now - started > timeout_s:
            print(f"genstack up: still not SERVING after {timeout_s:.0f} s: {', '.join(pending)}; see their log lines "
                  "above", file=out, flush=True)
            return False
        if pending and now - last_remind >= remind_s:
            last_remind = now
            print(f"genstack up: waiting for {', '.join(pending)} to load their models ({now - started:.0f} s; the "
                  "first run converts the bundled models, a few minutes)", file=out, flush=True)
        if pending:
            time.sleep(poll_s)
    count = f"{len(services)} service{'' if len(services) == 1 else 's'}"
    print(f"genstack up: the stack is ready: {count} SERVING after {time.monotonic() - started:.0f} s."
          " Try: GENSTACK_TRANSPORT=grpc genstack ask \"...\"", file=out, flush=True)
    return True


def report_readiness_in_background(services: list[str], stop: Callable[[], bool] = lambda: False) -> threading.Thread:
    """Run `wait_until_serving` on a daemon thread (for a supervisor loop that must keep watching)."""
    t = threading.Thread(target=wait_until_serving, args=(services,), kwargs={"stop": stop}, name="readiness",
                         daemon=True)
    t.start()
    return t
