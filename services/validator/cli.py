"""`genstack validate`: run a policy on a file or on text and print the verdict.

    genstack validate --policy json-output --text '{"a": 1}'
    genstack validate --policy rag-answer answer.txt --source chunk1.txt --source chunk2.txt --request "Q?"
    genstack validate --policy image-default out.png --width 64 --height 64
    genstack validate --check 'length={"max_chars": 100}' --text "Hello"
    genstack validate --list

The artifact kind comes from the file (image and video formats by their magic bytes) unless
--kind is given. Exit status: 0 passed, 1 failed, 2 error (bad input, service unreachable).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from google.protobuf import json_format

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".npy"}
_VIDEO_SUFFIXES = {".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif", ".apng"}


def register(sub) -> None:
    p = sub.add_parser("validate", help="validate text, JSON, an image or a video against a policy")
    p.add_argument("file", nargs="?", help="file to validate ('-' reads text from stdin)")
    p.add_argument("--text", help="validate this text instead of a file")
    p.add_argument("--kind", choices=["text", "image", "video"], help="artifact kind (default: from the file)")
    p.add_argument("--policy", default="", help="named policy (see --list)")
    p.add_argument("--check", action="append", default=[], metavar="NAME[=JSON]",
                   help="inline check with JSON params, e.g. 'length={\"max_chars\": 200}' (repeatable)")
    p.add_argument("--schema", metavar="FILE", help="JSON Schema file for the json_schema check")
    p.add_argument("--source", action="append", default=[], metavar="FILE_OR_TEXT",
                   help="a source chunk: a file's contents or the text itself (repeatable, in citation order)")
    p.add_argument("--request", default="", help="the original request or question")
    p.add_argument("--width", type=int, default=0, help="expected image/frame width")
    p.add_argument("--height", type=int, default=0, help="expected image/frame height")
    p.add_argument("--frames", type=int, default=0, help="expected number of video frames")
    p.add_argument("--fps", type=float, default=0.0, help="expected video frames per second")
    p.add_argument("--list", action="store_true", help="list the policies and checks, then exit")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("--transport", choices=["inproc", "grpc", "celery"], default=None,
                   help="how to reach the validator (default: GENSTACK_TRANSPORT, inproc = embedded)")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    p.set_defaults(func=run)


def _kind_of(path: Path, data: bytes) -> str:
    head = data[:16]
    if head.startswith((b"GIF8",)) or path.suffix.lower() in _VIDEO_SUFFIXES or head[4:8] == b"ftyp" or \
            head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"\x93NUMPY", b"II*\x00", b"MM\x00*", b"BM")) or (
            head[:4] == b"RIFF" and head[8:12] == b"WEBP") or path.suffix.lower() in _IMAGE_SUFFIXES:
        return "image"
    return "text"


def _parse_check(arg: str, pb):
    name, sep, raw = arg.partition("=")
    spec = pb.CheckSpec(name=name.strip())
    if sep:
        try:
            params = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--check {arg!r}: params are not JSON ({exc})") from None
        if not isinstance(params, dict):
            raise SystemExit(f"--check {arg!r}: params must be a JSON object")
        spec.params.update(params)
    return spec


def _source_text(value: str) -> str:
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError:
        pass
    return value


def build_request(args: argparse.Namespace):
    from genstack.validator.v1 import validator_pb2 as pb

    request = pb.ValidateRequest(policy=args.policy)
    if args.text is not None:
        request.artifact.text = args.text
    elif args.file == "-":
        request.artifact.text = sys.stdin.read()
    elif args.file:
        path = Path(args.file)
        data = path.read_bytes()
        kind = args.kind or _kind_of(path, data)
        if kind == "text":
            request.artifact.text = data.decode("utf-8")
        elif kind == "image":
            request.artifact.image = data
        else:
            request.artifact.video = data
    else:
        raise SystemExit("give a file, '-' for stdin, or --text")
    for arg in args.check:
        request.checks.append(_parse_check(arg, pb))
    if args.schema:
        try:
            schema = json.loads(Path(args.schema).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--schema {args.schema} is not valid JSON ({exc})") from None
        spec = pb.CheckSpec(name="json_schema")
        spec.params.update({"schema": schema})
        request.checks.append(spec)
    ctx = request.context
    ctx.request = args.request
    for value in args.source:
        ctx.sources.add(id=value if len(value) < 200 and Path(value).is_file() else "", text=_source_text(value))
    ctx.expected.width, ctx.expected.height = args.width, args.height
    ctx.expected.num_frames, ctx.expected.fps = args.frames, args.fps
    return request


def print_verdict(v, out=None) -> None:
    out = out or sys.stdout
    mark = {True: "PASS", False: "FAIL"}
    print(f"{mark[v.passed]}  policy {v.policy}  score {v.score:.2f}  ({v.duration_ms:.0f} ms)", file=out)
    for r in v.results:
        tag = mark[r.passed] + (" (advisory)" if r.advisory else "")
        print(f"  {tag:<15} {r.name:<18} {r.score:.2f}  {r.message}", file=out)
        for e in r.evidence[:5]:
            span = f" [{e.start}:{e.end}]" if e.end > e.start else ""
            print(f"      {e.kind} in {e.where or 'artifact'}{span}: {e.text[:120]}", file=out)
    if v.feedback:
        print("\nfeedback:\n" + v.feedback, file=out)


def _whole_numbers(value):
    """Struct numbers arrive as floats: show 10, not 10.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _print_catalogue(resp) -> None:
    print(f"prompt-injection detector: {resp.injection_detector}\n\npolicies:")
    for p in resp.policies:
        checks = ", ".join(c.label or c.name for c in p.checks)
        print(f"  {p.name:<16} [{p.origin}] {p.description}\n  {'':<16} checks: {checks}")
    print("\nchecks:")
    for c in resp.checks:
        params = json.dumps(_whole_numbers(json_format.MessageToDict(c.default_params)))
        print(f"  {c.name:<18} ({'/'.join(c.artifact_kinds)}) {c.description}\n  {'':<18} params: {params}")


def run(args: argparse.Namespace) -> int:
    from shared.clients.validator import ValidatorClient

    with ValidatorClient(args.transport) as client:
        if args.list:
            _print_catalogue(client.list_policies(timeout=args.timeout))
            return 0
        verdict = client.validate(build_request(args), timeout=args.timeout)
    if args.json:
        print(json.dumps(json_format.MessageToDict(verdict, always_print_fields_with_no_presence=True), indent=2))
    else:
        print_verdict(verdict)
    return 0 if verdict.passed else 1
