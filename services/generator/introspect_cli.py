"""The generator's introspection on the command line: `genstack tokenize`, the log-prob table of
`genstack generate --logprobs`, and reading `--json-schema` / `--regex` / `--choice` into a
ResponseFormat. Registered from services/generator/cli.py."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_format_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json-schema", metavar="FILE", default=None,
                   help="constrain the output to JSON valid under the schema in FILE ('-' reads stdin)")
    g.add_argument("--regex", default=None, help="constrain the output to match this regular expression")
    g.add_argument("--choice", action="append", default=None, metavar="TEXT",
                   help="constrain the output to one of these strings (repeat: --choice yes --choice no)")


def response_format(args: argparse.Namespace):
    """The ResponseFormat the flags ask for, or None."""
    from genstack.generator.v1 import generator_pb2 as pb
    from shared.errors import InvalidArgument

    if getattr(args, "json_schema", None):
        path = args.json_schema
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}", field="--json-schema") from None
        return pb.ResponseFormat(json_schema=text)
    if getattr(args, "regex", None) is not None:
        return pb.ResponseFormat(regex=args.regex)
    if getattr(args, "choice", None):
        return pb.ResponseFormat(choices=pb.Choices(values=args.choice))
    return None


def _show(text: str, width: int) -> str:
    """A token as a quoted, escaped string, cut to `width` characters."""
    s = json.dumps(text, ensure_ascii=False)
    return s if len(s) <= width else s[: width - 1] + "…"


def logprob_table(steps, alternatives: int) -> str:
    """One row per generated token: its log-prob, probability, entropy and the top alternatives."""
    if not steps:
        return "(no log-probs returned)"
    rows = [f"{'#':>4}  {'token':<16} {'logprob':>8} {'prob':>7} {'entropy':>8}  top alternatives (logprob)"]
    for n, step in enumerate(steps, 1):
        prob = math.exp(step.logprob) if step.logprob > -700 else 0.0
        alts = "  ".join(f"{_show(a.token, 14)} {a.logprob:.2f}" for a in list(step.top)[:alternatives]
                         if a.token_id != step.token_id)
        rows.append(f"{n:>4}  {_show(step.token, 16):<16} {step.logprob:>8.3f} {prob:>6.1%} "
                    f"{step.entropy:>8.3f}  {alts}")
    mean = sum(s.logprob for s in steps) / len(steps)
    rows.append(f"mean logprob {mean:.3f} · perplexity {math.exp(-mean):.2f} · {len(steps)} tokens")
    return "\n".join(rows)


def constraint_note(final) -> str:
    """The footer line about the response format, empty without one."""
    from genstack.generator.v1 import generator_pb2 as pb

    if final.constraint_status == pb.CONSTRAINT_STATUS_UNSPECIFIED:
        return ""
    s = final.stats
    cache = "cached grammar" if s.grammar_cached else f"grammar compiled in {s.grammar_compile_ms:.1f} ms"
    if final.constraint_status == pb.CONSTRAINT_STATUS_COMPLETE:
        return f"[response format: complete · {cache} · masks {s.mask_ms:.1f} ms]"
    return (f"[response format: INCOMPLETE, the output is cut short and does not validate "
            f"(raise --max-new-tokens) · {cache}]")


# -- genstack tokenize ---------------------------------------------------------------------------------


def register_tokenize(sub) -> None:
    p = sub.add_parser("tokenize", help="show how a model splits text into tokens (ids, strings, offsets)")
    p.add_argument("text", help="the text to tokenize")
    p.add_argument("--model", default="", help="registry name, Hugging Face id or folder (default: configured)")
    p.add_argument("--chat", action="store_true",
                   help="tokenize the text as a user message in the model's chat template, as generate does")
    p.add_argument("--transport", choices=["inproc", "grpc", "celery"], default=None,
                   help="how to reach the generator (default: GENSTACK_TRANSPORT, inproc = embedded)")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="print the TokenizeResponse as JSON")
    p.set_defaults(func=run_tokenize)


def token_table(resp) -> str:
    rows = [f"{'#':>5} {'id':>7}  {'token':<20} {'text':<20} {'chars':>11}"]
    for n, t in enumerate(resp.tokens):
        mark = " (special)" if t.special else ""
        rows.append(f"{n:>5} {t.id:>7}  {_show(t.token, 20):<20} {_show(t.text, 20):<20} {t.start:>5}-{t.end:<5}{mark}")
    rows.append(f"{resp.count} tokens · {len(resp.text)} characters · model {resp.model}")
    return "\n".join(rows)


def run_tokenize(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from genstack.generator.v1 import generator_pb2 as pb
    from shared.clients.generator import GeneratorClient

    request = pb.TokenizeRequest(model=args.model)
    if args.chat:
        request.messages.add(role="user", content=args.text)
    else:
        request.text = args.text
    with GeneratorClient(args.transport) as client:
        resp = client.tokenize(request, timeout=args.timeout)
    if args.json:
        print(json.dumps(json_format.MessageToDict(resp), ensure_ascii=False, indent=2))
    else:
        print(token_table(resp))
    return 0
