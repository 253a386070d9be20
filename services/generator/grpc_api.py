"""Generator API: protobuf <-> core. Used by the gRPC servicer, the Celery tasks and inproc."""

from __future__ import annotations

from collections.abc import Iterator

import shared  # noqa: F401 - puts the generated stubs on sys.path
from genstack.generator.v1 import generator_pb2 as pb
from genstack.generator.v1 import generator_pb2_grpc as pb_grpc
from services.generator.constrained import CHOICES, JSON_SCHEMA, REGEX, ResponseFormat
from services.generator.core import GenerationRequest, GeneratorCore
from services.generator.engine import (
    CONSTRAINT_COMPLETE,
    CONSTRAINT_INCOMPLETE,
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    Delta,
    Finished,
    TokenInfo,
)
from shared import metrics
from shared.rpc import CallContext, ServiceApi, opt

_FINISH = {
    FINISH_STOP: pb.FINISH_REASON_STOP,
    FINISH_LENGTH: pb.FINISH_REASON_LENGTH,
    FINISH_CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_CONSTRAINT = {
    None: pb.CONSTRAINT_STATUS_UNSPECIFIED,
    CONSTRAINT_COMPLETE: pb.CONSTRAINT_STATUS_COMPLETE,
    CONSTRAINT_INCOMPLETE: pb.CONSTRAINT_STATUS_INCOMPLETE,
}


def to_format(request: pb.GenerateRequest | pb.GenerateStreamRequest) -> ResponseFormat | None:
    rf = request.response_format
    which = rf.WhichOneof("format")
    if which == "json_schema":
        return ResponseFormat(JSON_SCHEMA, rf.json_schema)
    if which == "regex":
        return ResponseFormat(REGEX, rf.regex)
    if which == "choices":
        return ResponseFormat(CHOICES, tuple(rf.choices.values))
    return None


def to_core(request: pb.GenerateRequest | pb.GenerateStreamRequest) -> GenerationRequest:
    s = request.sampling
    return GenerationRequest(
        model=request.model,
        prompt=request.prompt,
        messages=[(m.role, m.content) for m in request.messages],
        max_new_tokens=opt(s, "max_new_tokens"),
        temperature=opt(s, "temperature"),
        top_p=opt(s, "top_p"),
        top_k=opt(s, "top_k"),
        repetition_penalty=opt(s, "repetition_penalty"),
        stop=list(s.stop),
        seed=opt(s, "seed"),
        logprobs=request.output.logprobs,
        top_logprobs=request.output.top_logprobs,
        response_format=to_format(request),
    )


def _logprobs(tokens: list[TokenInfo]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=t.token, token_id=t.token_id, logprob=t.logprob, entropy=t.entropy,
            top=[pb.TopLogprob(token=a, token_id=i, logprob=lp) for a, i, lp in t.top],
        )
        for t in tokens
    ]


def _stats(f: Finished) -> pb.GenerationStats:
    return pb.GenerationStats(
        prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens, time_to_first_token_ms=f.ttft_ms,
        tokens_per_second=f.tokens_per_second, total_ms=f.total_ms, queue_ms=f.queue_ms, prepare_ms=f.prepare_ms,
        grammar_compile_ms=f.grammar_compile_ms, grammar_cached=f.grammar_cached, mask_ms=f.mask_ms,
    )



class GeneratorApi(ServiceApi):
    service = "generator"
    descriptor = pb.DESCRIPTOR.services_by_name["GeneratorService"]
    servicer_base = pb_grpc.GeneratorServiceServicer
    add_to_server = staticmethod(pb_grpc.add_GeneratorServiceServicer_to_server)

    def Generate(self, request: pb.GenerateRequest, ctx: CallContext) -> pb.GenerateResponse:
        result = self.core.generate(to_core(request), ctx.stopped)
        if result.finished.reason == FINISH_CANCELLED:
            ctx.check()  # the caller left or its deadline passed: report that, not a partial text
        return pb.GenerateResponse(
            text=result.text, finish_reason=_FINISH[result.finished.reason], stats=_stats(result.finished),
            logprobs=_logprobs(result.tokens), model=result.model, seed=result.seed,
            constraint_status=_CONSTRAINT[result.finished.constraint],
        )

    def GenerateStream(
        self, request: pb.GenerateStreamRequest, ctx: CallContext
    ) -> Iterator[pb.GenerateStreamResponse]:
        er, model, seed = self.core.start(to_core(request), ctx.stopped)
        for event in metrics.watch_generation(er.events(), model):
            if isinstance(event, Delta):
                yield pb.GenerateStreamResponse(
                    delta=event.text, logprobs=_logprobs(event.tokens), model=model, seed=seed
                )
            else:
                yield pb.GenerateStreamResponse(
                    logprobs=_logprobs(event.tokens), finish_reason=_FINISH[event.reason], stats=_stats(event),
                    model=model, seed=seed, constraint_status=_CONSTRAINT[event.constraint],
                )

    def ListModels(self, request: pb.ListModelsRequest, ctx: CallContext) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(name=m.name, source=m.source, loaded=m.loaded, context_length=m.context_length,
                             is_default=m.is_default, batch_size=m.batch_size, queue_depth=m.queue_depth,
                             max_batch_size=m.max_batch_size, max_queue=m.max_queue)
                for m in self.core.list_models()
            ]
        )

    def Tokenize(self, request: pb.TokenizeRequest, ctx: CallContext) -> pb.TokenizeResponse:
        result = self.core.tokenize(request.model, request.text, [(m.role, m.content) for m in request.messages])
        return pb.TokenizeResponse(
            tokens=[pb.Token(id=i, token=piece, text=text, start=start, end=end, special=special)
                    for i, piece, text, start, end, special in result.tokens],
            count=len(result.tokens), text=result.text, model=result.model,
        )


API_CLASS = GeneratorApi


def create_api() -> GeneratorApi:
    return GeneratorApi(GeneratorCore())
