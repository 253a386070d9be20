"""Generator core: validates requests, owns one engine per loaded model, renders prompts."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from services.generator import registry
from services.generator.constrained import ResponseFormat
from services.generator.engine import Delta, Engine, EngineRequest, Finished, LoadedModel, SamplingConfig
from services.generator.settings import GeneratorSettings
from shared import metrics
from shared.config import Settings, get_settings
from shared.errors import InvalidArgument, ResourceExhausted, Unavailable, require
from shared.progress import report
from shared.runtime import configure_torch, resolve_dtype

log = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 16
MAX_TOP_LOGPROBS = 20
MAX_TOKENIZE_CHARS = 1_000_000
#: longest prompt (or all messages together) in characters, checked before tokenizing
MAX_PROMPT_CHARS = 400_000
CHAT_ROLES = ("system", "user", "assistant")


@dataclass
class GenerationRequest:
    """A generation request in plain Python; None means "use the default"."""

    model: str = ""
    prompt: str = ""
    messages: list[tuple[str, str]] = field(default_factory=list)
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    #: constrains the output (JSON Schema, regex or choices); None = free text
    response_format: ResponseFormat | None = None


@dataclass
class TokenizeResult:
    """Tokens of a text: (id, vocabulary string, decoded text, start, end, special) each."""

    text: str
    tokens: list[tuple[int, str, str, int, int, bool]]
    model: str


@dataclass
class GenerationResult:
    text: str
    finished: Finished
    tokens: list
    model: str
    seed: int


@dataclass
class ModelStatus:
    name: str
    source: str
    loaded: bool
    context_length: int
    is_default: bool
    batch_size: int = 0
    queue_depth: int = 0
    max_batch_size: int = 0
    max_queue: int = 0


def _live(engine, settings: GeneratorSettings) -> tuple[int, int, int, int]:
    """(batch size, queue depth, max batch size, max queue) of a model's engine; zeros when not loaded."""
    if engine is None:
        return 0, 0, 0, 0
    if hasattr(engine, "batch_size"):
        return engine.batch_size(), engine.queue_depth(), engine.limits.max_batch_size, engine.limits.max_queue
    return 0, engine._queue.qsize(), 1, settings.max_queue  # noqa: SLF001 - the sequential engine


class GeneratorCore:
    def __init__(self, settings: GeneratorSettings | None = None, base: Settings | None = None):
        self.settings = settings or GeneratorSettings()
        self.base = base or get_settings()
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        for name in self.settings.preload or [self.settings.default_model]:
            self.engine(name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()

    # -- models -------------------------------------------------------------------------------

    def engine(self, requested: str) -> Engine:
        name = requested or self.settings.default_model
        with self._lock:
            if self._closed:
                raise Unavailable("the generator is shutting down")
            if name in self._engines:
                self._engines.move_to_end(name)
                return self._engines[name]
            load_lock = self._loading.setdefault(name, threading.Lock())
        with load_lock:  # one load per model; other models keep serving meanwhile
            with self._lock:
                if name in self._engines:
                    return self._engines[name]
            engine = self._make_engine(self._load(name))
            with self._lock:
                if self._closed:
                    engine.close()
                    raise Unavailable("the generator is shutting down")
                self._engines[name] = engine
                while len(self._engines) > self.settings.max_loaded_models:
                    _, old = self._engines.popitem(last=False)
                    old.close()
            return engine

    def _make_engine(self, loaded: LoadedModel):
        s = self.settings
        require(s.engine in ("batching", "sequential"), "GENSTACK_GENERATOR_ENGINE", "batching or sequential")
        if s.engine == "sequential":
            return Engine(loaded, s.max_queue)
        from services.generator.batching import BatchingEngine, BatchLimits

        return BatchingEngine(loaded, BatchLimits(
            max_batch_size=max(1, s.max_batch_size), max_batch_tokens=s.max_batch_tokens, max_queue=s.max_queue,
            prefill_chunk=max(1, s.prefill_chunk), prefix_cache_tokens=max(0, s.prefix_cache_tokens)))

    def _load(self, name: str) -> LoadedModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        configure_torch()

        canonical, source = registry.resolve(name, self.base.model_cache_dir, self.settings.allow_any_model)
        dtype = getattr(torch, resolve_dtype(self.settings.dtype, self.settings.device), None)
        require(isinstance(dtype, torch.dtype), "GENSTACK_GENERATOR_DTYPE", "auto, bfloat16, float16 or float32")
        log.info("loading model", extra={"fields": {"model": canonical, "source": str(source)}})
        report(f"loading model {canonical} …", model=canonical)
        load_started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - whatever fails to load reads alike: no probing of host folders
            log.warning("model %r failed to load from %s: %r", name, source, exc)
            raise InvalidArgument(
                f"model {name!r} is not available offline (not in the registry, the local Hugging Face cache or a "
                "loadable folder)",
                field="model",
            ) from None
        device = torch.device(self.settings.device)
        model.to(device).eval()
        report(f"model {canonical} loaded in {time.perf_counter() - load_started:.1f} s", model=canonical)
        context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        if self.settings.max_context_tokens:
            context = min(context, self.settings.max_context_tokens)
        return LoadedModel(canonical, model, tokenizer, context, self._eos_ids(model, tokenizer), device)

    @staticmethod
    def _eos_ids(model, tokenizer) -> frozenset[int]:
        ids: set[int] = set()
        for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(v for v in value if isinstance(v, int))
        vocab = tokenizer.get_vocab()
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
            if special in vocab:
                ids.add(vocab[special])
        return frozenset(ids)

    def list_models(self) -> list[ModelStatus]:
        with self._lock:
            engines = dict(self._engines)
        loaded = {n: e.loaded for n, e in engines.items()}
        out = [
            ModelStatus(n, m.description, n in loaded, loaded[n].context_length if n in loaded else 0,
                        n == self.settings.default_model, *_live(engines.get(n), self.settings))
            for n, m in registry.REGISTRY.items()
        ]
        out += [ModelStatus(n, n, True, lm.context_length, False, *_live(engines[n], self.settings))
                for n, lm in loaded.items() if n not in registry.REGISTRY]
        return out

    # -- generation ---------------------------------------------------------------------------

    def check(self, req: GenerationRequest) -> SamplingConfig:
        """Validate everything that needs no model, and fill in defaults."""
        s = self.settings
        chars = len(req.prompt) + sum(len(c) for _, c in req.messages)  # before any tokenizing (issue 18)
        if chars > MAX_PROMPT_CHARS:
            raise ResourceExhausted(f"{'messages' if req.messages else 'prompt'}: {chars} characters; the limit is "
                                    f"{MAX_PROMPT_CHARS}")
        has_prompt, has_messages = bool(req.prompt), bool(req.messages)
        if not has_prompt and not has_messages:
            raise InvalidArgument("one of prompt or messages is required (both are empty)", field="prompt")
        if has_prompt and has_messages:
            raise InvalidArgument("give either prompt or messages, not both", field="prompt")
        for i, (role, _content) in enumerate(req.messages):
            require(role in CHAT_ROLES, f"messages[{i}].role", f"one of {', '.join(CHAT_ROLES)}", role)
        max_new = s.default_max_new_tokens if req.max_new_tokens is None else req.max_new_tokens
        require(1 <= max_new <= s.max_new_tokens_cap, "sampling.max_new_tokens",
                f"between 1 and {s.max_new_tokens_cap}", max_new)
        temperature = s.default_temperature if req.temperature is None else req.temperature
        require(temperature >= 0, "sampling.temperature", ">= 0 (0 = greedy)", temperature)
        top_p = 1.0 if req.top_p is None else req.top_p
        require(0 < top_p <= 1, "sampling.top_p", "in (0, 1]", top_p)
        top_k = 0 if req.top_k is None else req.top_k
        require(top_k >= 0, "sampling.top_k", ">= 0 (0 = off)", top_k)
        penalty = 1.0 if req.repetition_penalty is None else req.repetition_penalty
        require(0.01 <= penalty <= 100, "sampling.repetition_penalty", "between 0.01 and 100 (1 = off)", penalty)
        require(len(req.stop) <= MAX_STOP_SEQUENCES, "sampling.stop",
                f"at most {MAX_STOP_SEQUENCES} sequences", len(req.stop))
        require(all(req.stop), "sampling.stop", "non-empty strings")
        require(0 <= req.top_logprobs <= MAX_TOP_LOGPROBS, "output.top_logprobs",
                f"between 0 and {MAX_TOP_LOGPROBS}", req.top_logprobs)
        seed = random.randrange(2**31) if req.seed is None else req.seed
        require(0 <= seed < 2**63, "sampling.seed", "between 0 and 2^63-1", seed)
        if req.response_format is not None:
            req.response_format.check()
        return SamplingConfig(max_new, temperature, top_p, top_k, penalty, list(req.stop), seed,
                              req.logprobs or req.top_logprobs > 0, req.top_logprobs)

    @staticmethod
    def _render(lm: LoadedModel, prompt: str, messages: list[tuple[str, str]]) -> str:
        """The text the model sees: the raw prompt, or the messages in the model's chat template."""
        tok = lm.tokenizer
        if messages:
            if not getattr(tok, "chat_template", None):
                raise InvalidArgument(f"model {lm.name!r} has no chat template; send a raw prompt", field="messages")
            return tok.apply_chat_template(
                [{"role": r, "content": c} for r, c in messages], add_generation_prompt=True, tokenize=False
            )
        return prompt

    def _prompt_ids(self, lm: LoadedModel, req: GenerationRequest) -> list[int]:
        text = self._render(lm, req.prompt, req.messages)
        ids = lm.tokenizer(text, add_special_tokens=not req.messages)["input_ids"]
        field_name = "messages" if req.messages else "prompt"
        require(len(ids) < lm.context_length, field_name,
                f"shorter than the model's context of {lm.context_length} tokens", f"{len(ids)} tokens")
        return ids

    def start(self, req: GenerationRequest, cancelled: Callable[[], bool]) -> tuple[EngineRequest, str, int]:
        sampling = self.check(req)
        engine = self.engine(req.model)
        t0 = time.perf_counter()
        ids = self._prompt_ids(engine.loaded, req)
        prepare_ms = (time.perf_counter() - t0) * 1000
        constraint, compile_ms, cached = None, 0.0, False
        if req.response_format is not None:  # compiled here, in the caller's thread: a bad format fails the call
            constraint, compile_ms, cached = engine.grammars.constraint(req.response_format)
        er = engine.submit(EngineRequest(ids, sampling, cancelled, prepare_ms=prepare_ms, constraint=constraint,
                                         grammar_compile_ms=compile_ms, grammar_cached=cached))
        metrics.observe_engine(engine.loaded.name, engine)
        return er, engine.loaded.name, sampling.seed

    # -- introspection ------------------------------------------------------------------------

    def tokenize(self, model: str, text: str, messages: list[tuple[str, str]]) -> TokenizeResult:
        """Tokens of `text` (as a raw prompt) or of `messages` (rendered as a chat prompt), exactly as
        a generation from the same input would see them."""
        if bool(text) == bool(messages):
            raise InvalidArgument("give exactly one of text or messages", field="text")
        require(len(text) <= MAX_TOKENIZE_CHARS, "text", f"at most {MAX_TOKENIZE_CHARS} characters", len(text))
        for i, (role, _content) in enumerate(messages):
            require(role in CHAT_ROLES, f"messages[{i}].role", f"one of {', '.join(CHAT_ROLES)}", role)
        require(sum(len(c) for _, c in messages) <= MAX_TOKENIZE_CHARS, "messages",
                f"at most {MAX_TOKENIZE_CHARS} characters in all")
        lm = self.engine(model).loaded
        rendered = self._render(lm, text, messages)
        tok = lm.tokenizer
        enc = tok(rendered, add_special_tokens=not messages, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        pieces = tok.convert_ids_to_tokens(ids)
        special = set(getattr(tok, "all_special_ids", []) or [])
        added = getattr(tok, "added_tokens_decoder", {}) or {}
        special |= {i for i, t in added.items() if getattr(t, "special", False)}
        tokens = [
            (i, piece, tok.decode([i]), int(start), int(end), i in special)
            for i, piece, (start, end) in zip(ids, pieces, enc["offset_mapping"], strict=True)
        ]
        return TokenizeResult(rendered, tokens, lm.name)

    def stream(self, req: GenerationRequest, cancelled: Callable[[], bool]) -> Iterator[Delta | Finished]:
        er, model, _ = self.start(req, cancelled)
        yield from metrics.watch_generation(er.events(), model)

    def generate(self, req: GenerationRequest, cancelled: Callable[[], bool] = lambda: False) -> GenerationResult:
        er, model, seed = self.start(req, cancelled)
        parts, tokens = [], []
        for event in metrics.watch_generation(er.events(), model):
            tokens.extend(event.tokens)
            if isinstance(event, Delta):
                parts.append(event.text)
            else:
                return GenerationResult("".join(parts), event, tokens, model, seed)
        raise Unavailable("the engine stopped before finishing")  # pragma: no cover - engine always finishes
