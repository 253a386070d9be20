"""The tool registry: each tool has a name, a one-line description, a JSON Schema for its arguments
and a function that runs it. Descriptions stay short: a 0.5B model reads all of them every step.

Built in: search (retriever), answer (the orchestrator's RAG answer job), calculator (exact,
ast-based), validate (a validator policy), generate_image / generate_video (only when those
services are implemented in the catalogue) and final_answer. A tools file
(GENSTACK_AGENT_TOOLS_FILE, YAML or JSON) adds tools that call any genstack RPC through its typed
client, or a Python entry point:

    tools:
      collections:
        description: List the document collections.
        parameters: {type: object, properties: {}, additionalProperties: false}
        rpc: {service: retriever, method: ListCollections, request: {}}
      shout:
        description: Upper-case a text.
        parameters: {type: object, properties: {text: {type: string}}, required: [text]}
        entry_point: mypackage.tools:shout        # called as shout(arguments) -> str or JSON-able
        approval: true                            # every call waits for ApproveStep
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from google.protobuf import json_format

from services.agent import calculator
from services.agent.datatypes import FINAL_ANSWER
from services.agent.settings import AgentSettings
from shared.errors import FailedPrecondition, GenstackError, InvalidArgument


@dataclass
class ToolContext:
    """What a tool may use while it runs."""

    #: client(service) -> the typed client of a genstack service
    client: Callable[[str], Any]
    collection: str
    settings: AgentSettings
    #: seconds the call may take
    timeout: float = 60.0
    stopped: Callable[[], bool] = lambda: False


@dataclass
class Tool:
    name: str
    description: str
    #: JSON Schema of the arguments (an object schema)
    parameters: dict
    run: Callable[[dict, ToolContext], str] | None = None
    #: its output comes from documents or other services: screened for prompt injection
    untrusted: bool = True
    #: every call waits for ApproveStep / RejectStep
    approval: bool = False
    #: False when the service it needs is not implemented; `unavailable` says why
    available: bool = True
    unavailable: str = ""
    origin: str = "built-in"
    _validator: Any = field(default=None, repr=False, compare=False)

    def describe(self) -> dict:
        """The entry the model reads in its tool list: parameters as name -> type only (the decoder
        enforces the full schema; a 0.5B model reads the short form better)."""
        props = self.parameters.get("properties", {})
        params = {k: (v.get("type", "value") if isinstance(v, dict) else "value") for k, v in props.items()}
        return {"name": self.name, "description": self.description, "parameters": params}

    def check_arguments(self, arguments: Any) -> None:
        """InvalidArgument naming the argument (e.g. `arguments.query`) unless they match the schema."""
        if not isinstance(arguments, dict):
            raise InvalidArgument(f"must be a JSON object for tool {self.name!r}", field="arguments")
        if self._validator is None:
            self._validator = jsonschema.Draft202012Validator(self.parameters)
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            path = ".".join(str(p) for p in e.absolute_path)
            if e.validator == "required":
                missing = e.message.split("'")[1] if "'" in e.message else ""
                path = missing or path
            elif e.validator == "additionalProperties" and not path:
                extra = sorted(set(arguments) - set(self.parameters.get("properties", {})))
                path = extra[0] if extra else path
            name = f"arguments.{path}" if path else "arguments"
            raise InvalidArgument(f"{e.message} (tool {self.name!r})", field=name)


def _obj(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# -- built-in tools -------------------------------------------------------------------------------

def _search(args: dict, ctx: ToolContext) -> str:
    from genstack.retriever.v1 import retriever_pb2 as rpb

    request = rpb.SearchRequest(collection=ctx.collection, query=args["query"],
                                top_k=int(args.get("top_k") or ctx.settings.search_top_k),
                                mode=rpb.SEARCH_MODE_HYBRID)
    response = ctx.client("retriever").search(request, timeout=ctx.timeout)
    if not response.hits:
        return "No passages found."
    floor = response.hits[0].score * ctx.settings.search_min_relative_score
    hits = [h for h in response.hits if h.score >= floor] or list(response.hits[:1])
    lines = []
    for i, hit in enumerate(hits, 1):
        lines.append(f"[{i}] {_clip(hit.text, ctx.settings.hit_chars)}")
    return "\n".join(lines)


def _answer(args: dict, ctx: ToolContext) -> str:
    from genstack.orchestrator.v1 import orchestrator_pb2 as opb

    client = ctx.client("orchestrator")
    submitted = client.submit_job(opb.SubmitJobRequest(
        answer=opb.AnswerInput(question=args["question"], collection=ctx.collection), deadline_s=max(1.0, ctx.timeout)))
    deadline = time.monotonic() + ctx.timeout
    ended = (opb.JOB_STATE_SUCCEEDED, opb.JOB_STATE_FAILED, opb.JOB_STATE_CANCELLED)
    while True:
        job = client.get_job(submitted.job_id, timeout=min(30.0, max(1.0, deadline - time.monotonic())))
        if job.state in ended:
            break
        if ctx.stopped() or time.monotonic() > deadline:
            client.cancel_job(submitted.job_id)
            raise GenstackError("the answer job did not finish in time")
        time.sleep(0.2)
    if job.HasField("answer") and job.answer.answer:
        return job.answer.answer
    raise GenstackError(f"the answer job failed: {job.error or 'no answer'}")


def _calculator(args: dict, ctx: ToolContext) -> str:
    try:
        return calculator.calculate(args["expression"])
    except calculator.CalculatorError as exc:
        raise GenstackError(str(exc)) from None


DEFAULT_VALIDATE_CHECKS = ("length", "repetition", "pii", "prompt_injection")


def _validate(args: dict, ctx: ToolContext) -> str:
    from google.protobuf import struct_pb2

    from genstack.validator.v1 import validator_pb2 as vpb

    policy = args.get("policy") or ctx.settings.validate_policy
    request = vpb.ValidateRequest(artifact=vpb.Artifact(text=args["text"]), policy=policy)
    if not policy:
        for name in DEFAULT_VALIDATE_CHECKS:
            params = struct_pb2.Struct()
            if name == "prompt_injection":
                params.update({"targets": ["artifact"]})
            request.checks.append(vpb.CheckSpec(name=name, params=params))
    verdict = ctx.client("validator").validate(request, timeout=ctx.timeout)
    failed = [r.name for r in verdict.results if not r.passed and not r.advisory]
    text = f"passed: {'yes' if verdict.passed else 'no'}; score {verdict.score:.2f}"
    if failed:
        text += f"; failed checks: {', '.join(failed)}"
    if verdict.feedback:
        text += f"; feedback: {verdict.feedback}"
    return text


def _generate_image(args: dict, ctx: ToolContext) -> str:
    from genstack.image.v1 import image_pb2 as ipb

    request = ipb.GenerateImageRequest(prompt=args["prompt"], num_images=1, output=ipb.OUTPUT_MODE_ARTIFACT)
    if "seed" in args:
        request.seed = int(args["seed"])
    response = ctx.client("image").generate_image(request, timeout=ctx.timeout)
    image = response.images[0]
    return f"Generated a {image.width}x{image.height} image (seed {image.seed}): {image.artifact.uri}"


def _generate_video(args: dict, ctx: ToolContext) -> str:
    from genstack.video.v1 import video_pb2 as vpb

    request = vpb.GenerateVideoRequest(prompt=args["prompt"])
    response = ctx.client("video").call("GenerateVideo", request, ctx.timeout)
    doc = _summarise(json_format.MessageToDict(response))
    return json.dumps(doc, ensure_ascii=False)


def _builtins(settings: AgentSettings) -> list[Tool]:
    from shared.services import SERVICES

    def implemented(name: str) -> tuple[bool, str]:
        spec = SERVICES.get(name)
        ok = spec is not None and spec.implemented
        return ok, "" if ok else f"the {name} service is not implemented in this deployment"

    image_ok, image_why = implemented("image")
    video_ok, video_why = implemented("video")
    text = {"type": "string", "minLength": 1, "maxLength": 200}
    return [
        Tool("search", "Search the documents; returns numbered passages.",
             _obj({"query": text}, ["query"]), _search),
        Tool("answer", "Answer a question from the documents, with citations.",
             _obj({"question": text}, ["question"]), _answer),
        # no worked example: Qwen2.5-0.5B copied the shape of one ("7*(2+3)") into its calls, as 35*(2+220)
        Tool("calculator", "Exact arithmetic on the numbers found: + - * / and parentheses.",
             _obj({"expression": {"type": "string", "minLength": 1, "maxLength": calculator.MAX_CHARS}},
                  ["expression"]), _calculator, untrusted=False),
        Tool("validate", "Check a text with a validator policy.",
             _obj({"text": {"type": "string", "minLength": 1, "maxLength": 4000}}, ["text"]), _validate,
             untrusted=False),
        Tool("generate_image", "Make an image from a description.", _obj({"prompt": text}, ["prompt"]),
             _generate_image, untrusted=False, available=image_ok, unavailable=image_why),
        Tool("generate_video", "Make a short video from a description.", _obj({"prompt": text}, ["prompt"]),
             _generate_video, untrusted=False, available=video_ok, unavailable=video_why),
        Tool(FINAL_ANSWER, "Give the final answer to the task.",
             _obj({"answer": {"type": "string", "minLength": 1, "maxLength": settings.answer_max_chars}},
                  ["answer"]), None, untrusted=False),
    ]


# -- user tools ------------------------------------------------------------------------------------

_MISSING = object()


def _fill(template: Any, args: dict) -> Any:
    """The request template with "{name}" strings replaced by the arguments (a whole-string
    placeholder keeps the argument's type; a missing optional argument drops the key)."""
    missing = _MISSING
    if isinstance(template, str):
        if template.startswith("{") and template.endswith("}") and template[1:-1].isidentifier():
            return args.get(template[1:-1], missing)
        try:
            return template.format_map(args)
        except (KeyError, IndexError, ValueError):
            return template
    if isinstance(template, dict):
        out = {}
        for k, v in template.items():
            filled = _fill(v, args)
            if filled is not missing:
                out[k] = filled
        return out
    if isinstance(template, list):
        return [x for x in (_fill(v, args) for v in template) if x is not missing]
    return template


def _summarise(doc: Any, limit: int = 300) -> Any:
    """A response without its bulk: long strings (inline bytes, texts) cut to `limit`."""
    if isinstance(doc, dict):
        return {k: _summarise(v, limit) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_summarise(v, limit) for v in doc[:20]]
    if isinstance(doc, str) and len(doc) > limit:
        return doc[:limit] + f"… ({len(doc)} characters)"
    return doc


def _rpc_tool(name: str, service: str, method: str, template: dict) -> Callable[[dict, ToolContext], str]:
    from shared.client import service_methods

    methods = service_methods(service)
    if method not in methods:
        raise FailedPrecondition(f"tool {name!r}: service {service!r} has no RPC {method!r}; it has "
                                 f"{', '.join(methods)}")
    m = methods[method]

    def run(args: dict, ctx: ToolContext) -> str:
        doc = _fill(template, args)
        if service == "retriever" and "collection" in m.request_type.DESCRIPTOR.fields_by_name:
            doc.setdefault("collection", ctx.collection)
        try:
            request = json_format.ParseDict(doc, m.request_type())
        except json_format.ParseError as exc:
            raise GenstackError(f"the request for {service}.{method} is not valid: {exc}") from None
        client = ctx.client(service)
        if m.server_streaming:
            response = m.response_type()
            for response in client.stream(method, request, ctx.timeout):  # noqa: B007 - the last message counts
                pass
        else:
            response = client.call(method, request, ctx.timeout)
        return json.dumps(_summarise(json_format.MessageToDict(response)), ensure_ascii=False)

    return run


def _entry_point_tool(name: str, path: str) -> Callable[[dict, ToolContext], str]:
    from shared.services import load

    try:
        fn = load(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise FailedPrecondition(f"tool {name!r}: entry point {path!r} cannot be loaded ({exc})") from None

    def run(args: dict, ctx: ToolContext) -> str:
        result = fn(args)
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)

    return run


def load_tools_file(path: str) -> list[Tool]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise FailedPrecondition(f"tools file {path}: cannot be read ({exc.strerror})") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - a bad file stops start-up with the reason
        raise FailedPrecondition(f"tools file {path}: not valid YAML/JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tools"), dict):
        raise FailedPrecondition(f"tools file {path}: must be a mapping with a 'tools' mapping (name -> tool)")
    out = []
    for name, body in doc["tools"].items():
        where = f"tools file {path}: tool {name!r}"
        if not isinstance(body, dict):
            raise FailedPrecondition(f"{where}: must be a mapping")
        if not str(name).isidentifier():
            raise FailedPrecondition(f"{where}: names are identifiers (letters, digits, _)")
        params = body.get("parameters") or {"type": "object", "properties": {}, "additionalProperties": False}
        try:
            jsonschema.Draft202012Validator.check_schema(params)
        except jsonschema.SchemaError as exc:
            raise FailedPrecondition(f"{where}: parameters is not a valid JSON Schema ({exc.message})") from None
        if params.get("type") != "object":
            raise FailedPrecondition(f"{where}: parameters must be an object schema")
        if ("rpc" in body) == ("entry_point" in body):
            raise FailedPrecondition(f"{where}: give exactly one of 'rpc' or 'entry_point'")
        if "rpc" in body:
            rpc = body["rpc"] or {}
            if not isinstance(rpc, dict) or not rpc.get("service") or not rpc.get("method"):
                raise FailedPrecondition(f"{where}: rpc needs 'service' and 'method' (and an optional 'request')")
            from shared.services import SERVICES

            if rpc["service"] not in SERVICES:
                raise FailedPrecondition(f"{where}: unknown service {rpc['service']!r}; known: {', '.join(SERVICES)}")
            fn = _rpc_tool(name, rpc["service"], rpc["method"], rpc.get("request") or {})
        else:
            fn = _entry_point_tool(name, str(body["entry_point"]))
        description = str(body.get("description") or "").strip().splitlines()
        out.append(Tool(name, description[0] if description else name, params, fn,
                        untrusted=bool(body.get("untrusted", True)), approval=bool(body.get("approval", False)),
                        origin=path))
    return out


def build_registry(settings: AgentSettings) -> dict[str, Tool]:
    """Built-in tools plus those of the tools file (which may not reuse a built-in name)."""
    tools = {t.name: t for t in _builtins(settings)}
    if settings.tools_file:
        for tool in load_tools_file(settings.tools_file):
            if tool.name in tools:
                raise FailedPrecondition(f"tools file {settings.tools_file}: {tool.name!r} is a built-in tool; "
                                         "pick another name")
            tools[tool.name] = tool
    for name in settings.approval_tools:
        if name not in tools:
            raise FailedPrecondition(f"GENSTACK_AGENT_APPROVAL_TOOLS names unknown tool {name!r}")
        tools[name].approval = True
    return tools
