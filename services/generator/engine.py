"""The decoding engine: one loop thread owns a model and serves requests from a queue.

Requests never share state: each has its own KV cache, RNG and output queue. Only the loop
thread touches the model, so concurrent callers cannot mix; a batching loop can later replace
`_run_one` without changing how callers submit and consume.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from transformers.generation import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from services.generator.constrained import Constraint, GrammarCache
from shared.errors import GenstackError, Internal, ResourceExhausted

log = logging.getLogger(__name__)

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"
CONSTRAINT_COMPLETE = "complete"
CONSTRAINT_INCOMPLETE = "incomplete"


@dataclass
class SamplingConfig:
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stop: list[str]
    seed: int
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class TokenInfo:
    token: str
    token_id: int
    logprob: float
    entropy: float
    top: list[tuple[str, int, float]] = field(default_factory=list)


@dataclass
class Delta:
    text: str
    tokens: list[TokenInfo] = field(default_factory=list)


@dataclass
class Finished:
    reason: str
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float
    ttft_ms: float
    tokens_per_second: float
    total_ms: float
    tokens: list[TokenInfo] = field(default_factory=list)  # per-token info not yet sent with a delta
    prepare_ms: float = 0.0
    #: with a response format: CONSTRAINT_COMPLETE or CONSTRAINT_INCOMPLETE; None without one
    constraint: str | None = None
    grammar_compile_ms: float = 0.0
    grammar_cached: bool = False
    mask_ms: float = 0.0


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object
    context_length: int
    eos_ids: frozenset[int]
    device: torch.device


@dataclass
class EngineRequest:
    prompt_ids: list[int]
    sampling: SamplingConfig
    #: True when the caller has gone away or its deadline passed
    cancelled: Callable[[], bool]
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    enqueued_at: float = field(default_factory=time.perf_counter)
    prepare_ms: float = 0.0
    #: the response format's matcher (services.generator.constrained.Constraint), or None
    constraint: Constraint | None = None
    grammar_compile_ms: float = 0.0
    grammar_cached: bool = False

    def events(self) -> Iterator[Delta | Finished]:
        """Consume the request's events until Finished (errors are re-raised here)."""
        while True:
            event = self.out.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished):
                return


def _processors(s: SamplingConfig) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if s.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if s.temperature > 0:
        if s.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(s.temperature))
        if s.top_k > 0:
            procs.append(TopKLogitsWarper(s.top_k))
        if s.top_p < 1.0:
            procs.append(TopPLogitsWarper(s.top_p))
    return procs


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop sequence."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _logits_width(lm: LoadedModel) -> int:
    """Width of the model's logits (may exceed the tokenizer's vocabulary, e.g. Qwen2.5 pads to 151,936)."""
    head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(getattr(lm.model.config, "vocab_size", 0) or len(lm.tokenizer))


class Engine:
    """Serves one loaded model from a bounded queue on a single thread."""

    def __init__(self, loaded: LoadedModel, max_queue: int = 64):
        self.loaded = loaded
        self.grammars = GrammarCache(loaded.tokenizer, loaded.eos_ids, _logits_width(loaded))
        self._queue: queue.Queue[EngineRequest | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._loop, name=f"engine-{loaded.name}", daemon=True)
        self._thread.start()

    def submit(self, request: EngineRequest) -> EngineRequest:
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise ResourceExhausted(
                f"model {self.loaded.name!r} has {self._queue.maxsize} requests waiting; retry later"
            ) from None
        return request

    def close(self, timeout: float = 5.0) -> None:
        """Finish the running request's current step, then stop the loop thread."""
        self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            try:
                self._run_one(request)
            except GenstackError as exc:
                request.out.put(exc)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, logged with a trace
                log.exception("generation failed")
                request.out.put(Internal(f"generation failed: {type(exc).__name__}"))

    @torch.inference_mode()
    def _run_one(self, req: EngineRequest) -> None:
        lm, s = self.loaded, req.sampling
        tok = lm.tokenizer
        started = time.perf_counter()
        queue_ms = (started - req.enqueued_at) * 1000
        procs = _processors(s)
        rng = torch.Generator(device=lm.device).manual_seed(s.seed)
        all_ids = torch.tensor([req.prompt_ids], dtype=torch.long, device=lm.device)
        step_input = all_ids
        cache = None
        generated: list[int] = []
        pending: list[TokenInfo] = []
        emitted = 0  # characters of the decoded completion already sent
        first_at: float | None = None
        reason = FINISH_LENGTH
        budget = min(s.max_new_tokens, lm.context_length - len(req.prompt_ids))
        constraint = req.constraint
        format_done = False  # the response format allows no further token
        cut_by_stop = False

        for _ in range(budget):
            if req.cancelled():
                reason = FINISH_CANCELLED
                break
            out = lm.model(input_ids=step_input, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            scores = logits
            if constraint is not None:
                # log-probs stay the model's own; only sampling sees the mask
                scores = logits.clone() if s.logprobs else logits
                if not constraint.mask(scores):
                    # a dead end of the grammar (it allows no token and is not complete): stop here
                    log.warning("response format allows no next token", extra={"fields": {"error": constraint.error}})
                    reason = FINISH_STOP
                    break
            scores = procs(all_ids, scores) if procs else scores
            if s.temperature == 0:
                next_id = int(torch.argmax(scores, dim=-1))
            else:
                probs = torch.softmax(scores, dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=rng))
            if first_at is None:
                first_at = time.perf_counter()
            if s.logprobs:
                pending.append(self._token_info(logits[0], next_id, s.top_logprobs))
            if next_id in lm.eos_ids:
                reason = FINISH_STOP
                break
            generated.append(next_id)
            if constraint is not None:
                if not constraint.consume(next_id):
                    raise Internal(f"the response format refused a token it allowed: {constraint.error}")
                if constraint.stopped:
                    format_done = True
                    reason = FINISH_STOP
                    break  # the value is complete: no further forward pass, the text is flushed below
            step_input = torch.tensor([[next_id]], dtype=torch.long, device=lm.device)
            all_ids = torch.cat([all_ids, step_input], dim=1)

            text = tok.decode(generated, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # a multi-byte character is not complete yet
            cut = self._find_stop(text, s.stop, emitted)
            if cut is not None:
                if cut > emitted:
                    req.out.put(Delta(text[emitted:cut], pending))
                    pending = []
                emitted = cut
                reason = FINISH_STOP
                cut_by_stop = True
                break
            safe = len(text) - _held_back(text, s.stop) if s.stop else len(text)
            if safe > emitted:
                req.out.put(Delta(text[emitted:safe], pending))
                pending = []
                emitted = safe

        if reason == FINISH_LENGTH or format_done:  # flush text held back for a stop sequence that never came
            text = tok.decode(generated, skip_special_tokens=True)
            end = len(text)
            if format_done:  # the last token was not checked for stop sequences in the loop
                cut = self._find_stop(text, s.stop, emitted)
                if cut is not None:
                    end, cut_by_stop = cut, True
            if end > emitted:
                req.out.put(Delta(text[emitted:end], pending))
                pending = []
        status = None
        if constraint is not None:
            # complete only if the matcher accepts all of it and no stop sequence cut the text short
            status = CONSTRAINT_COMPLETE if constraint.accepting and not cut_by_stop else CONSTRAINT_INCOMPLETE
        ended = time.perf_counter()
        n = len(generated)
        decode_s = ended - first_at if first_at else 0.0
        req.out.put(
            Finished(
                reason=reason,
                prompt_tokens=len(req.prompt_ids),
                completion_tokens=len(generated),
                queue_ms=queue_ms,
                ttft_ms=((first_at or ended) - started) * 1000 + queue_ms,
                tokens_per_second=(max(n - 1, 0) / decode_s) if decode_s > 0 else 0.0,
                total_ms=(ended - started) * 1000,
                tokens=pending,
                prepare_ms=req.prepare_ms,
                constraint=status,
                grammar_compile_ms=req.grammar_compile_ms,
                grammar_cached=req.grammar_cached,
                mask_ms=constraint.mask_ms if constraint is not None else 0.0,
            )
        )

    @staticmethod
    def _find_stop(text: str, stops: list[str], emitted: int) -> int | None:
        """Index where the earliest stop sequence starts, searching only text not yet sent."""
        best = None
        for stop in stops:
            idx = text.find(stop, max(0, emitted - len(stop) + 1))
            if idx != -1 and (best is None or idx < best):
                best = idx
        return best

    def _token_info(self, logits: torch.Tensor, token_id: int, top_n: int) -> TokenInfo:
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        entropy = float(-(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum())
        tok = self.loaded.tokenizer
        top = []
        if top_n:
            values, ids = torch.topk(logp, top_n)
            top = [(tok.decode([int(i)]), int(i), float(v)) for v, i in zip(values, ids, strict=True)]
        lp = float(logp[token_id])
        return TokenInfo(tok.decode([token_id]), token_id, lp if math.isfinite(lp) else -1e30, entropy, top)
