"""Finding bundled model files inside installed packages and preparing them for fast loading.

Data-only packages are located through their installed metadata, never imported (some of them
import heavy or unrelated modules). GGUF weights are converted once to a safetensors folder in
the model cache, keyed by the file's sha256, so later loads take seconds instead of a minute.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from shared.errors import FailedPrecondition, Unavailable
from shared.progress import report, step

log = logging.getLogger(__name__)


def package_file(distribution: str, relative_suffix: str) -> Path:
    """Path of a file shipped by an installed distribution, matched by the end of its path."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(
            f"package {distribution!r} is not installed; run `make venv` (it installs requirements-models.txt)"
        ) from None
    for f in dist.files or ():
        if str(f).endswith(relative_suffix):
            return Path(dist.locate_file(f))
    raise Unavailable(f"package {distribution!r} has no file ending in {relative_suffix!r}")


def package_dir(distribution: str, relative_dir: str) -> Path:
    """Folder shipped by an installed distribution (e.g. a sentence-transformers model folder)."""
    marker = package_file(distribution, f"{relative_dir}/config.json")
    return marker.parent


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def assemble_parts(parts: list[Path], expected_sha256: str, cache_dir: Path, filename: str) -> Path:
    """Concatenate split parts in order into cache_dir/<sha>/<filename>, verifying the sha256."""
    target = cache_dir / "files" / expected_sha256 / filename
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target
        h = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with step(f"assembling {filename} from {len(parts)} parts (first run only)", file=filename), \
                os.fdopen(fd, "wb") as out:
            for i, part in enumerate(parts, start=1):
                with open(part, "rb") as f:
                    while block := f.read(8 << 20):
                        h.update(block)
                        out.write(block)
                report(f"assembling {filename}: part {i}/{len(parts)}", file=filename, done=i, total=len(parts))
        if h.hexdigest() != expected_sha256:
            os.unlink(tmp)
            raise FailedPrecondition(
                f"assembled {filename} has sha256 {h.hexdigest()}, expected {expected_sha256}: reinstall the parts"
            )
        os.replace(tmp, target)
    return target


def gguf_to_safetensors(gguf_path: Path, sha256: str, cache_dir: Path) -> Path:
    """Dequantize a GGUF file once into a transformers folder (safetensors + tokenizer)."""
    out = cache_dir / "converted" / sha256
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting GGUF once to safetensors", extra={"fields": {"gguf": str(gguf_path), "to": str(out)}})
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
        try:
            report(f"converting {gguf_path.name} once to safetensors in {out.parent} (first run only; "
                   "up to a minute per model on 2 cores) …", file=gguf_path.name)
            started = time.perf_counter()
            kw = {"gguf_file": gguf_path.name}
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
            # GGUF weights arrive fully dequantized; the quantizer left on the model is only a
            # marker that would make save_pretrained refuse, so drop it before saving.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, out)
            report(f"converted {gguf_path.name} in {time.perf_counter() - started:.0f} s", file=gguf_path.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
