"""The `genstack` console command.

Common subcommands live here (serve, worker, demo); each service may add its own in
`services/<service>/cli.py` with a `register(subparsers)` function that sets `func` on its parsers.

Errors are printed here, once for every command: a user error (a missing file, a bad value, a
service that refuses the input or is not running) is one line on stderr that names the problem and
what to do, never a traceback. Exit status: 0 success, 1 failure, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from shared import services as _catalogue
from shared.services import SERVICES

EXIT_FAILURE, EXIT_USAGE = 1, 2
#: the web console's commands (named by string, like the catalogue's: shared/ imports no service code)
CONSOLE_CLI = "services.console.cli"


def _offline_defaults() -> None:
    # The embedded defaults never reach a model hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def runnable_services() -> list[str]:
    """Services that have code in this checkout (the catalogue also lists planned ones)."""
    return list(_catalogue.implemented_services())


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT leftovers are no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _serve(args: argparse.Namespace) -> int:
    from shared.config import get_settings
    from shared.runner import run
    from shared.services import get_spec

    host = get_settings().grpc_bind_host
    port = args.port if args.port is not None else get_spec(args.service).port
    if port and _port_in_use(host, port):  # before loading anything: say so at once
        raise CliError(f"cannot listen on {host}:{port}: the port is in use (is a {args.service} server already "
                       "running?); stop it or pass --port 0 for any free port")
    try:
        return run(args.service, "grpc", port=args.port)
    except RuntimeError as exc:
        if "bind" not in str(exc).lower():
            raise
        raise CliError(f"cannot listen on {host}:{port}: the port is in use (is a {args.service} server already "
                       "running?); stop it or pass --port 0 for any free port") from None


def _worker(args: argparse.Namespace) -> int:
    from shared.runner import run

    return run(args.service, "worker", concurrency=args.concurrency)


def _demo(args: argparse.Namespace) -> int:
    # the demo is an orchestrator job: its code lives with the orchestrator (found via the catalogue)
    from shared.services import get_spec, load

    return load(f"{get_spec('orchestrator').package}.demo:main")(args)


class CliError(Exception):
    """A failure the command explains in one line (exit status 1, or `code`)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genstack")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout without `pip install -e .`
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genstack", description="The generative-AI stack as services.",
        epilog="Every command runs embedded (in this process, offline) unless --transport or GENSTACK_TRANSPORT "
               "says otherwise. `genstack COMMAND --help` describes a command.")
    parser.add_argument("--version", action="version", version=f"genstack {_version()}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = runnable_services()

    p = sub.add_parser("serve", help="run one service's gRPC server")
    p.add_argument("service", choices=names, help="the service to serve")
    p.add_argument("--port", type=int, default=None, help="port (default: the service's, 0 = any free)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run one service's Celery worker (its own queue)")
    p.add_argument("service", choices=names, help="the service whose queue to consume")
    p.add_argument("--concurrency", type=int, default=1,
                   help="tasks run at once (1: solo pool, models loaded before the first task)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("demo", help="run the main job on the embedded defaults")
    p.add_argument("--model", default=None, help="generator model (default: the configured default)")
    p.set_defaults(func=_demo)

    for name in names:  # each implemented service may add commands in <its package>.cli
        package = SERVICES[name].package
        try:
            module = importlib.import_module(f"{package}.cli")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.cli":
                raise
            continue
        module.register(sub)
    importlib.import_module(CONSOLE_CLI).register(sub)  # the web console: a process, not a catalogue service
    _finish_subparsers(parser)
    return parser


def _finish_subparsers(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command: remember its own parser (so that a mistyped flag shows that command's
    usage), accept --quiet after the command name too, and name the command in its usage line."""
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk over subparsers
        if not isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            continue
        for sub in action.choices.values():
            sub.set_defaults(_parser=sub)
            if not any("--quiet" in a.option_strings for a in sub._actions):  # noqa: SLF001
                sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                 help="no progress lines on stderr")
            _finish_subparsers(sub)


def _message(exc: BaseException, args: argparse.Namespace) -> tuple[str, int] | None:
    """The one-line message and exit status for an error a user can fix, or None (a bug)."""
    from shared.errors import GenstackError, InvalidArgument

    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, GenstackError):
        return _service_error(exc, args), EXIT_USAGE if isinstance(exc, InvalidArgument) else EXIT_FAILURE
    if isinstance(exc, FileNotFoundError):
        if exc.filename is None and exc.args and str(exc.args[0]).startswith("no such"):
            return f"{exc.args[0]}; check the path", EXIT_FAILURE
        return f"no such file or folder: {exc.filename}; check the path", EXIT_FAILURE
    if isinstance(exc, IsADirectoryError):
        return f"{exc.filename} is a folder, not a file; give a file", EXIT_FAILURE
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename}; check its permissions", EXIT_FAILURE
    if isinstance(exc, UnicodeDecodeError):
        return f"the file is not UTF-8 text ({exc.reason}); give a text file or the right --kind", EXIT_FAILURE
    if isinstance(exc, ValueError) and exc.__class__.__module__ == "json.decoder":
        return f"not valid JSON: {exc}; fix the file", EXIT_FAILURE
    if isinstance(exc, OSError) and exc.errno == 28:
        return f"no space left on the device ({exc.filename or 'data folder'}); free some space", EXIT_FAILURE
    return None


def _service_error(exc, args: argparse.Namespace) -> str:
    import grpc

    from shared.config import get_settings

    message = exc.message or exc.__class__.__name__
    transport = getattr(args, "transport", None) or get_settings().transport
    hint = ""
    local = exc.local_detail or message  # the address this process dialled is the user's own
    refused = re.search(r"ipv[46]:(\S+?):\s", local) if "connect" in local.lower() else None
    if refused:
        message = f"nothing answers at {refused.group(1)} (connection refused)"
    if exc.code == grpc.StatusCode.UNAVAILABLE and transport != "inproc":
        hint = (f"; is the service running? start the stack with `genstack up` (or `genstack serve SERVICE`), or "
                f"run embedded without --transport {transport} / GENSTACK_TRANSPORT")
    elif exc.code == grpc.StatusCode.NOT_FOUND and "collection" in message and "does not exist" in message:
        hint = "; ingest documents into it first: `genstack ingest PATH... --collection NAME`"
    return f"error ({exc.code.name}): {message}{hint}"


def main(argv: list[str] | None = None) -> int:
    _offline_defaults()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # a mistyped flag: show the usage of the command it was given to, not the top level's
        (getattr(args, "_parser", None) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    json_out = bool(getattr(args, "json", False))
    interactive = args.command not in ("serve", "worker", "console")
    if interactive:
        # interactive commands: plain, quiet logs on stderr-free stdout; services keep JSON lines
        from shared.config import get_settings
        from shared.logging import setup_logging

        setup_logging("cli", "WARNING" if get_settings().log_level == "INFO" else get_settings().log_level, False)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep the terminal for answers, not weight-loading bars
        from shared import progress

        progress.configure("quiet" if args.quiet else "json" if json_out else "plain")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a command's own usage check, e.g. `--meta expects KEY=VALUE`
            print(f"genstack {args.command}: error: {exc.code}", file=sys.stderr)
            return EXIT_USAGE
        raise
    except BrokenPipeError:  # `genstack ... | head`
        sys.stderr.close()
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - a CLI prints errors, not tracebacks
        found = _message(exc, args)
        if found is None:
            raise
        message, code = found
        if json_out:
            import json

            print(json.dumps({"error": message, "exit_code": code}), file=sys.stderr)
        else:
            print(message, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
