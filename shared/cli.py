"""The `genstack` console command.

Common subcommands live here (serve, worker, demo); each service may add its own in
`services/<service>/cli.py` with a `register(subparsers)` function that sets `func` on its parsers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from shared.services import SERVICES, implemented_services


def _offline_defaults() -> None:
    # The embedded defaults never reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _serve(args: argparse.Namespace) -> int:
    from shared.runner import run

    return run(args.service, "grpc", port=args.port)


def _worker(args: argparse.Namespace) -> int:
    from shared.runner import run

    return run(args.service, "worker", concurrency=args.concurrency)


def _demo(args: argparse.Namespace) -> int:
    # the demo is an orchestrator job: its code lives with the orchestrator (found via the catalogue)
    from shared.services import get_spec, load

    return load(f"{get_spec('orchestrator').package}.demo:main")(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genstack", description="The generative-AI stack as services.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one service's gRPC server")
    p.add_argument("service", choices=implemented_services())
    p.add_argument("--port", type=int, default=None, help="port (default: the service's, 0 = any free)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run one service's Celery worker (its own queue)")
    p.add_argument("service", choices=implemented_services())
    p.add_argument("--concurrency", type=int, default=1)
    p.set_defaults(func=_worker)

    p = sub.add_parser("demo", help="run the main job on the embedded defaults")
    p.add_argument("--model", default=None, help="generator model (default: the configured default)")
    p.set_defaults(func=_demo)

    for name in implemented_services():  # each implemented service may add commands in <its package>.cli
        package = SERVICES[name].package
        try:
            module = importlib.import_module(f"{package}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.cli":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    args = build_parser().parse_args(argv)
    if args.command not in ("serve", "worker"):
        # interactive commands: plain, quiet logs on stderr-free stdout; services keep JSON lines
        from shared.config import get_settings
        from shared.logging import setup_logging

        setup_logging("cli", "WARNING" if get_settings().log_level == "INFO" else get_settings().log_level, False)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep the terminal for answers, not weight-loading bars
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI prints errors, not tracebacks
        from shared.errors import GenstackError

        if isinstance(exc, GenstackError):
            print(f"error ({exc.code.name}): {exc.message}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
