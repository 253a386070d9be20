"""`genstack console`: the web console, a process of its own in front of the orchestrator."""

from __future__ import annotations

import argparse

DEFAULT_PORT = 8080


def _console(args: argparse.Namespace) -> int:
    from services.console.server import serve
    from shared.config import get_client_settings, get_settings
    from shared.logging import setup_logging

    settings = get_settings()
    setup_logging("console", settings.log_level, settings.log_json)
    orchestrator = args.orchestrator or get_client_settings().address("orchestrator")
    try:
        return serve(args.host or settings.grpc_bind_host, args.port, orchestrator)
    except OSError as exc:
        from shared.cli import CliError

        raise CliError(f"cannot listen on port {args.port}: {exc.strerror or exc}; pass another --port "
                       "(0 = any free port)") from None


def register(sub) -> None:
    p = sub.add_parser("console", help="serve the web console (jobs, live events, results) over HTTP")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0 = any free)")
    p.add_argument("--host", default=None, help="address to bind (default: GENSTACK_GRPC_BIND_HOST)")
    p.add_argument("--orchestrator", default=None, metavar="HOST:PORT",
                   help="the orchestrator's gRPC address (default: GENSTACK_ORCHESTRATOR_ADDRESS)")
    p.set_defaults(func=_console)
