"""`genstack generate`: stream a completion to the terminal."""

from __future__ import annotations

import argparse
import json
import sys

from google.protobuf import json_format

from services.generator import introspect_cli


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text, streamed token by token")
    p.add_argument("prompt", help="the prompt (sent as a user chat message unless --raw)")
    p.add_argument("--model", default="", help="registry name, Hugging Face id or folder (default: configured)")
    p.add_argument("--raw", action="store_true", help="continue the prompt as is, without the chat template")
    p.add_argument("--system", default=None, help="system message for chat models")
    p.add_argument("--max-new-tokens", type=int, default=None, help="most tokens to generate (default 256, cap 2048)")
    p.add_argument("--temperature", type=float, default=None, help=">= 0; 0 = greedy")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the likeliest tokens up to this "
                   "probability mass, in (0, 1]")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeating tokens")
    p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable, at most 16)")
    p.add_argument("--seed", type=int, default=None, help="seed; the same seed and settings give the same text")
    p.add_argument("--logprobs", type=int, nargs="?", const=5, default=None, metavar="N",
                   help="after the text, a table of each token's log-prob and entropy with N alternatives (default 5)")
    introspect_cli.add_format_arguments(p)
    p.add_argument("--transport", choices=["inproc", "grpc", "celery"], default=None,
                   help="how to reach the generator (default: GENSTACK_TRANSPORT, inproc = embedded)")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object per streamed message")
    p.set_defaults(func=run)
    introspect_cli.register_tokenize(sub)


def build_request(args: argparse.Namespace):
    from genstack.generator.v1 import generator_pb2 as pb

    sampling = pb.SamplingParams(stop=args.stop)
    for name in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(sampling, name, value)
    request = pb.GenerateStreamRequest(model=args.model, sampling=sampling)
    if args.logprobs is not None:
        request.output.logprobs = True
        request.output.top_logprobs = args.logprobs
    response_format = introspect_cli.response_format(args)
    if response_format is not None:
        request.response_format.CopyFrom(response_format)
    if args.raw:
        request.prompt = args.prompt
    else:
        if args.system:
            request.messages.add(role="system", content=args.system)
        request.messages.add(role="user", content=args.prompt)
    return request


def run(args: argparse.Namespace) -> int:
    from genstack.generator.v1 import generator_pb2 as pb
    from shared.clients.generator import GeneratorClient
    from shared.errors import InvalidArgument

    if not args.prompt.strip():
        raise InvalidArgument("must be a non-empty prompt, e.g. genstack generate \"Name three colours.\"",
                              field="prompt")

    with GeneratorClient(args.transport) as client:
        final = None
        steps = []  # per-token log-probs for the --logprobs table
        for msg in client.generate_stream(build_request(args), timeout=args.timeout):
            if args.json:
                print(json.dumps(json_format.MessageToDict(msg)), flush=True)
            elif msg.delta:
                sys.stdout.write(msg.delta)
                sys.stdout.flush()
            final = msg
            steps.extend(msg.logprobs)
        if not args.json and final is not None:
            print(flush=True)  # the answer ends with a newline, also when stderr is redirected
            s = final.stats
            reason = pb.FinishReason.Name(final.finish_reason).removeprefix("FINISH_REASON_").lower()
            print(
                f"\n[{final.model} · {s.completion_tokens} tokens · {s.tokens_per_second:.1f} tok/s · "
                f"first token {s.time_to_first_token_ms:.0f} ms · seed {final.seed} · {reason}]",
                file=sys.stderr,
            )
        if not args.json and final is not None:
            note = introspect_cli.constraint_note(final)
            if note:
                print(note, file=sys.stderr)
            if args.logprobs is not None:
                print("\n" + introspect_cli.logprob_table(steps, args.logprobs))
    return 0
