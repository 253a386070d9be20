"""The NanoGuard prompt-injection classifier, loaded without running code from its package.

`metatronnanoguard` ships a 16.8M-parameter bidirectional transformer (``nanoguard/assets/model.pt``)
and a pickled tiktoken BPE (``nanoguard/assets/tokenizer.pkl``). Importing the package or calling
``pickle.load`` on its files could run arbitrary code, so neither happens here:

* the weights load with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain
  containers; if that refuses the file, the classifier is unavailable and the rule set is used;
* the tokenizer pickle is read by an unpickler that allows exactly one global,
  ``tiktoken.core.Encoding``, replaced by an inert placeholder that only records the state
  (name, split pattern, merge ranks, special tokens); a real ``tiktoken.Encoding`` is then built
  from that data;
* the network is defined here (same layer names as the checkpoint so that its state dict loads
  strictly): RMS-normed token embeddings, 4 bidirectional blocks with rotary attention and a
  ReLU-squared MLP, per-layer mixing with the first layer's input, masked mean pooling, and a
  LayerNorm + linear head with two classes (safe, injection).
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
import pickle
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.model_files import package_file

log = logging.getLogger(__name__)

DISTRIBUTION = "metatronnanoguard"
BOS_TOKEN = "<|reserved_0|>"
PAD_TOKEN = "<|reserved_1|>"


class _EncodingState:
    """Stands in for tiktoken.core.Encoding while unpickling: keeps the state, runs nothing."""

    def __setstate__(self, state):
        self.state = state


class _TokenizerUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise pickle.UnpicklingError(f"tokenizer.pkl refers to {module}.{name}; only tiktoken.core.Encoding is allowed")


def load_tokenizer(path: Path):
    import tiktoken

    obj = _TokenizerUnpickler(io.BytesIO(path.read_bytes())).load()
    state = getattr(obj, "state", None)
    if not isinstance(state, dict) or not isinstance(state.get("mergeable_ranks"), dict):
        raise ValueError("tokenizer.pkl does not hold a tiktoken encoding state")
    ranks = state["mergeable_ranks"]
    specials = state.get("special_tokens") or {}
    if not all(isinstance(k, bytes) and isinstance(v, int) for k, v in ranks.items()):
        raise ValueError("tokenizer.pkl merge ranks are not bytes -> int")
    return tiktoken.Encoding(
        str(state.get("name", "nanoguard")), pat_str=str(state["pat_str"]), mergeable_ranks=ranks,
        special_tokens={str(k): int(v) for k, v in specials.items()},
    )


def _rms(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos + b * sin, b * cos - a * sin], dim=-1)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, key_mask):
        b, t, d = x.shape
        shape = (b, t, self.heads, d // self.heads)
        q = _rms(_rotate(self.c_q(x).view(shape), cos, sin)).transpose(1, 2)
        k = _rms(_rotate(self.c_k(x).view(shape), cos, sin)).transpose(1, 2)
        v = self.c_v(x).view(shape).transpose(1, 2)
        # Padding is masked out of attention, so a padded batch scores each text exactly as if it
        # were run alone at its own length.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], is_causal=False)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.c_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = _Attention(dim, heads)
        self.mlp = _Mlp(dim)

    def forward(self, x, cos, sin, key_mask):
        x = x + self.attn(_rms(x), cos, sin, key_mask)
        return x + self.mlp(_rms(x))


class InjectionClassifier(nn.Module):
    def __init__(self, vocab_size: int, dim: int, layers: int, heads: int, max_len: int, classes: int = 2):
        super().__init__()
        self.max_len = max_len
        self.transformer = nn.ModuleDict(
            {"wte": nn.Embedding(vocab_size, dim), "h": nn.ModuleList(_Block(dim, heads) for _ in range(layers))}
        )
        self.cls_norm = nn.LayerNorm(dim)
        self.cls_head = nn.Linear(dim, classes)
        self.resid_lambdas = nn.Parameter(torch.ones(layers))
        self.x0_lambdas = nn.Parameter(torch.zeros(layers))
        head_dim = dim // heads
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(2 * max_len, dtype=torch.float32), inv_freq)
        # The checkpoint was trained with bfloat16 rotary tables: round the same way.
        self.register_buffer("cos", angles.cos().bfloat16().float()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin().bfloat16().float()[None, :, None, :], persistent=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        cos, sin = self.cos[:, :t], self.sin[:, :t]
        x = _rms(self.transformer.wte(ids))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = block(self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0, cos, sin, mask)
        x = _rms(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return self.cls_head(self.cls_norm(pooled))


class NanoGuard:
    """Scores texts: probability that each is a prompt injection."""

    def __init__(self, weights: Path | None = None, tokenizer: Path | None = None):
        self._lock = threading.Lock()
        #: files to load instead of the package's (tests use this to exercise a refused checkpoint)
        self._weights = weights
        self._tokenizer = tokenizer
        self.model: InjectionClassifier | None = None
        self.encoding = None
        self.version = ""

    def load(self) -> NanoGuard:
        with self._lock:
            if self.model is not None:
                return self
            weights = self._weights or package_file(DISTRIBUTION, "nanoguard/assets/model.pt")
            tokenizer = self._tokenizer or package_file(DISTRIBUTION, "nanoguard/assets/tokenizer.pkl")
            checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
            cfg = checkpoint["config"]
            model = InjectionClassifier(
                vocab_size=int(cfg["vocab_size"]), dim=int(cfg["n_embd"]), layers=int(cfg["n_layer"]),
                heads=int(cfg["n_head"]), max_len=int(cfg["sequence_len"]), classes=int(cfg.get("num_classes", 2)),
            )
            model.load_state_dict(checkpoint["model_state_dict"], strict=True)
            model.eval()
            self.encoding = load_tokenizer(tokenizer)
            self.bos = self.encoding.encode_single_token(BOS_TOKEN)
            self.pad = self.encoding.encode_single_token(PAD_TOKEN)
            self.version = importlib.metadata.version(DISTRIBUTION)
            self.model = model
            log.info("loaded the NanoGuard injection classifier", extra={"fields": {"version": self.version}})
        return self

    def token_ids(self, text: str) -> list[int]:
        return ([self.bos] + self.encoding.encode_ordinary(text))[: self.model.max_len]

    def scores(self, texts: list[str], batch_size: int = 16) -> list[float]:
        """Injection probability per text, each scored at its own length (at most 512 tokens).

        The package's own scanner pads every text to 512 tokens and lets attention see the
        padding; scoring at the text's own length costs a fraction of that for sentence-sized
        windows. Texts are batched by similar length, padding masked out.
        """
        self.load()
        rows_all = [self.token_ids(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(rows_all[i]))
        out = [0.0] * len(texts)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            rows = [rows_all[j] for j in idx]
            length = max(len(r) for r in rows)
            ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.bool)
            for r, row in enumerate(rows):
                ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
                mask[r, : len(row)] = True
            with torch.inference_mode():
                probs = torch.softmax(self.model(ids, mask).float(), dim=-1)[:, 1]
            for j, p in zip(idx, probs.tolist(), strict=True):
                out[j] = float(p)
        return out
