"""Continuous (iteration-level) batching and prompt-prefix KV reuse for the generator.

`BatchingEngine` has the interface of `engine.Engine` (submit / close / grammars / loaded) and keeps
every per-request promise of it: own sampling parameters, seed and RNG, repetition penalty, stop
sequences, log-probs with top alternatives and entropy, streamed deltas, deadline and cancel
(checked before every step), the response-format constraint, and a `Finished` event with stats.

One loop thread owns the model. Each iteration it
1. admits waiting requests while the batch has a free row and the tokens in flight (prompt plus
   the most it may generate, per request) stay within `max_batch_tokens`;
2. runs at most one prefill chunk (`prefill_chunk` tokens) of one admitted request, alone (batch 1),
   so a long prompt never stalls the running streams for longer than one chunk;
3. runs one decoding step for every running stream together: the rows' KV caches are left-padded
   to one length, with an attention mask and explicit per-row position ids, so each row attends to
   its own tokens only and sees the positions it would see alone.
A request whose prompt is prefilled samples its first token from the prefill's logits and joins
the batch at the next step; a finished, cancelled or expired one leaves it at once (its rows are
dropped from the cache, and left padding no row needs any more is cut off).

Prefix reuse: a prompt's KV cache is computed in chunks aligned to multiples of `prefill_chunk`
from the start of the prompt, and the cache at chunk boundaries is kept in an LRU store keyed by
the token ids (one store per engine, so per model), bounded by `prefix_cache_tokens`. A new prompt
that starts with a stored prefix prefills only the rest. Because prefill is chunked the same way
with and without reuse, the reused K/V are bit-for-bit the ones the request would have computed
itself, and its output is identical.

Detokenization is incremental (a prefix offset and a read offset per stream, as in TGI), so a step
decodes a few tokens, not the whole completion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from services.generator.constrained import GrammarCache
from services.generator.engine import (
    CONSTRAINT_COMPLETE,
    CONSTRAINT_INCOMPLETE,
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    Delta,
    Engine,
    EngineRequest,
    Finished,
    LoadedModel,
    TokenInfo,
    _held_back,
    _logits_width,
    _processors,
)
from shared.errors import GenstackError, Internal, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 8
    max_batch_tokens: int = 16384  # prompt + max new tokens, summed over the running requests
    max_queue: int = 64
    prefill_chunk: int = 64
    prefix_cache_tokens: int = 4096  # tokens of K/V kept for prompt prefixes (0 = off)


# -- the prefix store ---------------------------------------------------------------------------------------


class PrefixCache:
    """K/V of prompt prefixes (whole prefill chunks), keyed by token ids, LRU-evicted beyond
    `max_tokens` tokens in total."""

    def __init__(self, max_tokens: int, chunk: int):
        self.max_tokens = max_tokens
        self.chunk = chunk
        self._entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self.tokens = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """(n, per-layer (K, V) of the first n tokens): the longest run of whole chunks that `ids`
        shares with a stored prompt, leaving at least one token to prefill; (0, None) when none."""
        best_key, best_n = None, 0
        limit = len(ids) - 1
        for key in self._entries:
            m = min(len(key), limit)
            if m < max(best_n, self.chunk):
                continue
            n = _common_prefix(key, ids, m)
            n -= n % self.chunk
            if n > best_n:
                best_key, best_n = key, n
        if best_key is None:
            self.misses += 1
            return 0, None
        self._entries.move_to_end(best_key)
        self.hits += 1
        return best_n, [(k[:, :, :best_n], v[:, :, :best_n]) for k, v in self._entries[best_key]]

    def store(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the K/V of `ids` (a whole number of chunks; each tensor [1, heads, >= len(ids), dim])."""
        key = tuple(ids)
        if self.max_tokens <= 0 or len(key) == 0 or len(key) > self.max_tokens:
            return
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        # a stored prefix of this one adds nothing once this one is here
        for other in [k for k in self._entries if len(k) < len(key) and key[: len(k)] == k]:
            self.tokens -= len(other)
            del self._entries[other]
        self._entries[key] = [(k[:, :, : len(key)].clone(), v[:, :, : len(key)].clone()) for k, v in layers]
        self.tokens += len(key)
        while self.tokens > self.max_tokens:
            old, _ = self._entries.popitem(last=False)
            self.tokens -= len(old)
            self.evictions += 1


def _common_prefix(a: tuple[int, ...], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


# -- one request in flight ---------------------------------------------------------------------------------


@dataclass
class _Stream:
    req: EngineRequest
    started: float
    budget: int
    procs: object
    rng: torch.Generator
    all_ids: torch.Tensor  # [1, prompt + generated]
    cache: DynamicCache | None = None  # its own cache while prefilling
    prefilled: int = 0  # prompt tokens whose K/V exist
    reused: int = 0  # of those, taken from the prefix store
    next_input: int | None = None  # the token this stream feeds to the next decoding step
    generated: list[int] = field(default_factory=list)
    pending: list[TokenInfo] = field(default_factory=list)
    text: str = ""  # decoded completion so far
    emitted: int = 0  # characters of `text` already sent
    prefix_offset: int = 0
    read_offset: int = 0
    first_at: float | None = None
    done: bool = False

    @property
    def tokens_reserved(self) -> int:
        return len(self.req.prompt_ids) + self.budget


class BatchingEngine:
    """Serves one loaded model, decoding all running requests together (see the module docstring)."""

    def __init__(self, loaded: LoadedModel, limits: BatchLimits | None = None):
        self.loaded = loaded
        self.limits = limits or BatchLimits()
        self.grammars = GrammarCache(loaded.tokenizer, loaded.eos_ids, _logits_width(loaded))
        self.prefixes = PrefixCache(self.limits.prefix_cache_tokens, self.limits.prefill_chunk)
        self._waiting: deque[EngineRequest] = deque()
        self._prefilling: deque[_Stream] = deque()
        self._running: list[_Stream] = []
        # the running rows' K/V (left-padded) and attention mask [rows, length]
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._cond = threading.Condition()
        self._closing = False
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name=f"batching-engine-{loaded.name}", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------------------

    def submit(self, request: EngineRequest) -> EngineRequest:
        with self._cond:
            if len(self._waiting) >= self.limits.max_queue:
                raise ResourceExhausted(
                    f"model {self.loaded.name!r} has {len(self._waiting)} requests waiting, the limit "
                    f"(GENSTACK_GENERATOR_MAX_QUEUE={self.limits.max_queue}), behind "
                    f"{len(self._running) + len(self._prefilling)} running (batch limit "
                    f"{self.limits.max_batch_size}); retry later"
                )
            self._waiting.append(request)
            self._cond.notify()
        return request

    def queue_depth(self) -> int:
        return len(self._waiting)

    def batch_size(self) -> int:
        return len(self._running) + len(self._prefilling)

    def stats(self) -> dict:
        return {"batch_size": self.batch_size(), "queue_depth": self.queue_depth(),
                "max_batch_size": self.limits.max_batch_size, "max_queue": self.limits.max_queue,
                "prefix_entries": len(self.prefixes), "prefix_tokens": self.prefixes.tokens,
                "prefix_hits": self.prefixes.hits, "prefix_misses": self.prefixes.misses}

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not (self._waiting or self._prefilling or self._running):
                    self._cond.wait()
                if self._closing:
                    gone = Unavailable(f"model {self.loaded.name!r} was unloaded; retry")
                    for s in self._running + list(self._prefilling):
                        if not s.done:
                            s.req.out.put(gone)
                    for req in self._waiting:
                        req.out.put(gone)
                    self._waiting.clear()
                    return
                self._admit()
            try:
                self._iteration()
            except Exception as exc:  # noqa: BLE001 - every stream in flight gets the error
                log.exception("batched generation failed")
                error = exc if isinstance(exc, GenstackError) else Internal(
                    f"generation failed: {type(exc).__name__}")
                for s in self._running + list(self._prefilling):
                    if not s.done:
                        s.req.out.put(error)
                self._running, self._prefilling = [], deque()
                self._cache = self._mask = None

    def _admit(self) -> None:
        lm, lim = self.loaded, self.limits
        in_flight = sum(s.tokens_reserved for s in self._running) + sum(s.tokens_reserved for s in self._prefilling)
        while self._waiting and len(self._running) + len(self._prefilling) < lim.max_batch_size:
            req = self._waiting[0]
            budget = min(req.sampling.max_new_tokens, lm.context_length - len(req.prompt_ids))
            need = len(req.prompt_ids) + max(budget, 0)
            if in_flight and in_flight + need > lim.max_batch_tokens:
                break  # waits for tokens to free up (a request alone is always admitted)
            self._waiting.popleft()
            in_flight += need
            s = req.sampling
            self._prefilling.append(_Stream(
                req=req, started=time.perf_counter(), budget=max(budget, 0), procs=_processors(s),
                rng=torch.Generator(device=lm.device).manual_seed(s.seed),
                all_ids=torch.tensor([req.prompt_ids], dtype=torch.long, device=lm.device),
            ))

    @torch.inference_mode()
    def _iteration(self) -> None:
        # cancellations and deadlines first: such a stream leaves before any more work is done for it
        for s in list(self._prefilling):
            if s.req.cancelled():
                self._finish(s, FINISH_CANCELLED)
        self._prefilling = deque(s for s in self._prefilling if not s.done)
        if self._prefilling:
            self._prefill_chunk(self._prefilling[0])
        for s in self._running:
            if s.req.cancelled():
                self._finish(s, FINISH_CANCELLED)
        self._drop_finished()
        if self._running:
            self._decode_step()
            self._drop_finished()

    # -- prefill ---------------------------------------------------------------------------------

    def _prefill_chunk(self, s: _Stream) -> None:
        lm, chunk = self.loaded, self.limits.prefill_chunk
        ids = s.req.prompt_ids
        if s.budget <= 0:
            self._prefilling.popleft()
            self._finish(s, FINISH_LENGTH)
            return
        if s.cache is None:
            s.cache = DynamicCache()
            n, layers = self.prefixes.lookup(ids) if self.prefixes.max_tokens > 0 else (0, None)
            if layers is not None:
                for i, (k, v) in enumerate(layers):
                    s.cache.update(k.clone(), v.clone(), i)
                s.prefilled = s.reused = n
        end = min(len(ids), (s.prefilled // chunk + 1) * chunk)
        part = torch.tensor([ids[s.prefilled : end]], dtype=torch.long, device=lm.device)
        positions = torch.arange(s.prefilled, end, device=lm.device).unsqueeze(0)
        out = lm.model(input_ids=part, past_key_values=s.cache, position_ids=positions, use_cache=True)
        s.cache = out.past_key_values
        s.prefilled = end
        if end < len(ids):
            return
        self._prefilling.popleft()
        whole = len(ids) - len(ids) % chunk  # the prompt's whole chunks, for later prompts to share
        if whole > s.reused and self.prefixes.max_tokens > 0:
            self.prefixes.store(ids[:whole], [(layer.keys, layer.values) for layer in s.cache.layers])
        self._guarded(s, out.logits[0, -1, :].float())
        if not s.done:
            self._join(s)
        s.cache = None

    # -- the running batch -----------------------------------------------------------------------

    def _join(self, s: _Stream) -> None:
        """Add a prefilled stream's K/V to the running batch, left-padding whichever is shorter."""
        assert s.cache is not None
        new_len = s.cache.get_seq_length()
        if self._cache is None or not self._running:
            self._cache = s.cache
            self._mask = torch.ones((1, new_len), dtype=torch.long, device=self.loaded.device)
            self._running = [s]
            return
        old_len = self._mask.shape[1]
        width = max(old_len, new_len)
        merged = DynamicCache()
        for i, (old, new) in enumerate(zip(self._cache.layers, s.cache.layers, strict=True)):
            merged.update(torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)]),
                          torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)]), i)
        mask_new = torch.ones((1, new_len), dtype=torch.long, device=self.loaded.device)
        self._mask = torch.cat([_left_pad(self._mask, width, dim=1), _left_pad(mask_new, width, dim=1)])
        self._cache = merged
        self._running.append(s)

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self._running) if not s.done]
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.loaded.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        # cut the left padding that no remaining row needs
        cut = int((self._mask.cumsum(1) == 0).sum(1).min())
        if cut > 0:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, cut:]
                layer.values = layer.values[:, :, cut:]
            self._mask = self._mask[:, cut:]

    def _decode_step(self) -> None:
        lm = self.loaded
        rows = self._running
        inputs = torch.tensor([[s.next_input] for s in rows], dtype=torch.long, device=lm.device)
        positions = torch.tensor([[s.all_ids.shape[1] - 1] for s in rows], dtype=torch.long, device=lm.device)
        self._mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long, device=lm.device)], dim=1)
        out = lm.model(input_ids=inputs, attention_mask=self._mask, position_ids=positions,
                       past_key_values=self._cache, use_cache=True)
        self._cache = out.past_key_values
        self.steps += 1
        logits = out.logits[:, -1, :].float()
        for i, s in enumerate(rows):
            self._guarded(s, logits[i])

    # -- one stream's token ----------------------------------------------------------------------

    def _guarded(self, s: _Stream, logits: torch.Tensor) -> None:
        """`_after_logits`, with an error ending this stream only."""
        try:
            self._after_logits(s, logits)
        except GenstackError as exc:
            s.done = True
            s.req.out.put(exc)

    def _after_logits(self, s: _Stream, logits: torch.Tensor) -> None:
        """Sample the stream's next token from its logits [vocab] and emit what it completes."""
        cfg, constraint = s.req.sampling, s.req.constraint
        scores = logits.unsqueeze(0)
        if constraint is not None:
            scores = scores.clone()
            if not constraint.mask(scores):
                log.warning("response format allows no next token", extra={"fields": {"error": constraint.error}})
                self._finish(s, FINISH_STOP)
                return
        scores = s.procs(s.all_ids, scores) if s.procs else scores
        if cfg.temperature == 0:
            next_id = int(torch.argmax(scores, dim=-1))
        else:
            next_id = int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=s.rng))
        if s.first_at is None:
            s.first_at = time.perf_counter()
        if cfg.logprobs:
            s.pending.append(Engine._token_info(self, logits, next_id, cfg.top_logprobs))
        if next_id in self.loaded.eos_ids:
            self._finish(s, FINISH_STOP)
            return
        s.generated.append(next_id)
        s.all_ids = torch.cat([s.all_ids, torch.tensor([[next_id]], dtype=torch.long, device=s.all_ids.device)], 1)
        if constraint is not None:
            if not constraint.consume(next_id):
                raise Internal(f"the response format refused a token it allowed: {constraint.error}")
            if constraint.stopped:
                self._finish(s, FINISH_STOP, format_done=True)
                return
        if self._detokenize(s):
            return
        if len(s.generated) >= s.budget:
            self._finish(s, FINISH_LENGTH)
            return
        s.next_input = next_id

    def _detokenize(self, s: _Stream) -> bool:
        """Extend the stream's text by its newest token, send what is safe; True when a stop sequence
        ended it."""
        tok = self.loaded.tokenizer
        prefix = tok.decode(s.generated[s.prefix_offset : s.read_offset], skip_special_tokens=True)
        full = tok.decode(s.generated[s.prefix_offset :], skip_special_tokens=True)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return False  # nothing new, or a multi-byte character is not complete yet
        s.text += full[len(prefix) :]
        s.prefix_offset, s.read_offset = s.read_offset, len(s.generated)
        stops = s.req.sampling.stop
        cut = Engine._find_stop(s.text, stops, s.emitted)
        if cut is not None:
            if cut > s.emitted:
                s.req.out.put(Delta(s.text[s.emitted : cut], s.pending))
                s.pending = []
            s.emitted = cut
            self._finish(s, FINISH_STOP, cut_by_stop=True)
            return True
        safe = len(s.text) - _held_back(s.text, stops) if stops else len(s.text)
        if safe > s.emitted:
            s.req.out.put(Delta(s.text[s.emitted : safe], s.pending))
            s.pending = []
            s.emitted = safe
        return False

    def _finish(self, s: _Stream, reason: str, format_done: bool = False, cut_by_stop: bool = False) -> None:
        if s.done:
            return
        s.done = True
        tok = self.loaded.tokenizer
        if reason == FINISH_LENGTH or format_done:  # flush text held back for a stop that never came
            tail = tok.decode(s.generated[s.prefix_offset :], skip_special_tokens=True)
            head = tok.decode(s.generated[s.prefix_offset : s.read_offset], skip_special_tokens=True)
            text = s.text + tail[len(head) :]
            end = len(text)
            if format_done:  # the last token was not checked for stop sequences
                cut = Engine._find_stop(text, s.req.sampling.stop, s.emitted)
                if cut is not None:
                    end, cut_by_stop = cut, True
            if end > s.emitted:
                s.req.out.put(Delta(text[s.emitted : end], s.pending))
                s.pending = []
        constraint = s.req.constraint
        status = None
        if constraint is not None:
            status = CONSTRAINT_COMPLETE if constraint.accepting and not cut_by_stop else CONSTRAINT_INCOMPLETE
        ended = time.perf_counter()
        queue_ms = (s.started - s.req.enqueued_at) * 1000
        n = len(s.generated)
        decode_s = ended - s.first_at if s.first_at else 0.0
        s.req.out.put(Finished(
            reason=reason,
            prompt_tokens=len(s.req.prompt_ids),
            completion_tokens=n,
            queue_ms=queue_ms,
            ttft_ms=((s.first_at or ended) - s.started) * 1000 + queue_ms,
            tokens_per_second=(max(n - 1, 0) / decode_s) if decode_s > 0 else 0.0,
            total_ms=(ended - s.started) * 1000,
            tokens=s.pending,
            prepare_ms=s.req.prepare_ms,
            constraint=status,
            grammar_compile_ms=s.req.grammar_compile_ms,
            grammar_cached=s.req.grammar_cached,
            mask_ms=constraint.mask_ms if constraint is not None else 0.0,
        ))
        s.pending = []


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """`t` with zeros in front along `dim` up to `width`."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)
